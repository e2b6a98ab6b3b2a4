"""Packing in bounded work items (lambdas/domain/packing.py, lambdas/pack_shards.py): the items' shards are the very
objects one pass over the split wrote, each item's work is bounded whatever the split's size, and a child reads
only its own lines of the jsonl, pinned to the version PrepareDataset wrote."""

from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas import pack_shards, prepare_dataset
from lambdas.domain import packing, shards


def test_groups_are_consecutive_bounded_and_small_splits_stay_whole():
    for count in (1, 5, 127, 128, 5_000, 140_000, 200_000, 400_000):
        blocks = shards.plan(count)
        groups = packing.group(blocks)
        assert [i for g in groups for i in g] == list(range(len(blocks)))
        assert all(sum(len(blocks[i]) for i in g) <= packing.IMAGES_PER_ITEM for g in groups)
    assert len(packing.group(shards.plan(127))) == 1  # a demo split: up to 128 one-image shards, one item
    assert len(packing.group(shards.plan(200_000))) == 26  # one split of 200,000: 256 shards of about 781, 10 a group
    assert len(packing.group(shards.plan(119_008))) == 16  # 200,000 X-rays' train split: 128 shards of 930, 8 a group
    assert packing.group([range(0, 5), range(5, 6)], images_per_item=3) == [range(0, 1), range(1, 2)]
    assert packing.group([]) == []


def test_the_items_of_200000_xrays_are_a_small_payload():
    """The items travel in the execution's state (Step Functions: 256 KiB at most a payload)."""
    work = []
    for split, count in (("train", 119_008), ("validation", 25_496), ("test", 25_496)):
        blocks = shards.plan(count)
        groups = packing.group(blocks)
        offsets = packing.Offsets(packing.first_records(blocks, groups))
        for _ in offsets.lines(f'{{"key": "processed/x/normal/{n:032x}.png"}}\n' for n in range(count)):
            pass
        work += packing.items("run", split, f"manifests/run/{split}.jsonl", '"0123456789abcdef0123456789abcdef"',
                              blocks, groups, offsets)
    assert len(work) == 24 and len(json.dumps(work)) < 16 * 1024
    assert work[-1]["bytes"][1] == offsets.end


def one_pass(records: list[dict], blocks: list[range], pngs: dict[str, bytes]) -> list[bytes]:
    """What the single-invocation writer (before the work items) put in each shard."""
    out = []
    for block in blocks:
        buffer = io.BytesIO()
        shards.write(buffer, records[block.start:block.stop], lambda key: pngs[key])
        out.append(buffer.getvalue())
    return out


def planned_items(s3, bucket: str, run_id: str, records: list[dict], blocks: list[range], per_item: int) -> list[dict]:
    """PrepareDataset's part for one split: spool the jsonl noting the offsets, then the items."""
    groups = packing.group(blocks, per_item)
    offsets = packing.Offsets(packing.first_records(blocks, groups))
    key = f"manifests/{run_id}/train.jsonl"
    etag = prepare_dataset.put_spooled(s3, bucket, key, "application/jsonl",
                                       offsets.lines(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return packing.items(run_id, "train", key, etag, blocks, groups, offsets)


def stored_shards(s3, bucket: str, run_id: str) -> list[bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"manifests/{run_id}/shards/train/").get("Contents", [])
    return [s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed]


@pytest.fixture
def packing_bucket(data_bucket, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", data_bucket)
    s3 = boto3.client("s3")
    pngs = {f"processed/t/normal/{n:03d}.png": f"png {n} ".encode() * (n % 7 + 1) for n in range(60)}
    for key, body in pngs.items():
        s3.put_object(Bucket=data_bucket, Key=key, Body=body)
    return data_bucket, pngs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 60), images_per_shard=st.integers(1, 9), min_shards=st.integers(1, 8),
       per_item=st.integers(1, 20), data=st.data())
def test_the_items_shards_are_byte_for_byte_the_one_pass_shards(packing_bucket, lambda_context, count,
                                                                 images_per_shard, min_shards, per_item, data):
    """For any split size, shard plan and item size, the children's shards, in key order, are the one-pass writer's
    (same names, same bytes), whatever order the children run in; a retried child rewrites the same objects."""
    bucket, pngs = packing_bucket
    s3 = boto3.client("s3")
    run_id = f"p{count}-{images_per_shard}-{min_shards}-{per_item}"
    records = [{"key": key, "label": "normal", "patient_id": str(n // 2), "dataset": "t", "content_hash": f"h{n}"}
               for n, key in enumerate(list(pngs)[:count])]
    blocks = shards.plan(count, images_per_shard, min_shards)
    work = planned_items(s3, bucket, run_id, records, blocks, per_item)
    assert len(work) == len(packing.group(blocks, per_item))
    for item in data.draw(st.permutations(work)):
        assert pack_shards.handler(json.loads(json.dumps(item)), lambda_context)["images"] == sum(item["sizes"])
    expected = one_pass(records, blocks, pngs)
    assert stored_shards(s3, bucket, run_id) == expected
    pack_shards.handler(work[-1], lambda_context)  # a retry
    assert stored_shards(s3, bucket, run_id) == expected


def test_a_child_reads_only_its_bytes_and_fails_on_a_rewritten_jsonl(packing_bucket, lambda_context):
    bucket, pngs = packing_bucket
    s3 = boto3.client("s3")
    records = [{"key": key, "label": "normal", "patient_id": "1", "dataset": "t", "content_hash": key}
               for key in pngs]
    work = planned_items(s3, bucket, "r", records, shards.plan(60, 5, 1), per_item=20)
    assert [item["sizes"] for item in work] == [[5] * 4] * 3
    middle = pack_shards.item_records(s3, bucket, work[1])
    assert middle == records[20:40]
    s3.put_object(Bucket=bucket, Key=work[1]["jsonl"], Body=b"rewritten\n")
    with pytest.raises(ClientError, match="PreconditionFailed|Precondition"):
        pack_shards.handler(work[1], lambda_context)
