"""Streaming input: tar shards written and read, one file a shard at start-up, a one-instance job from shards
training exactly as from a ManifestFile channel, and the ranks' walks over their own shards resuming on any world
size (gloo on the CPU)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sharded import pack_channel, pack_channels
from synthetic import TINY_HPS

from lambdas.domain import shards

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_job"))
import data  # noqa: E402
import imaging  # noqa: E402

PROBE = Path(__file__).with_name("walk_probe.py")


def test_a_shard_holds_its_records_first_then_each_image_in_order():
    records = [{"key": f"processed/d/normal/{i}.png", "label": "normal"} for i in range(5)]
    out = io.BytesIO()
    shards.write(out, records, lambda key: key.encode() * 3)
    out.seek(0)
    assert shards.records(io.BytesIO(out.getvalue())) == records
    assert list(shards.read(out)) == [(r, r["key"].encode() * 3) for r in records]
    assert [len(b) for b in shards.plan(10, images_per_shard=4, min_shards=1)] == [3, 3, 4]
    assert [len(b) for b in shards.plan(5, images_per_shard=1000, min_shards=128)] == [1] * 5  # one image a shard
    assert len(shards.plan(200_000)) == 256 and {len(b) for b in shards.plan(200_000)} == {781, 782}
    assert shards.plan(0) == [] and shards.name(7) == "000007.tar"


def test_start_up_opens_each_shard_twice_not_each_image(staged, tmp_path, monkeypatch):
    """36 training images in 4 shards: 8 opens (each shard's records, then the shard front to back); the
    ManifestFile channel opens each PNG and its jsonl (37)."""
    packed = pack_channel(staged.channels["train"], tmp_path / "train", images_per_shard=10)
    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self.name) or real_open(self, *a, **k))
    from_shards = data.load_split(packed, staged.classes, 16, "squash", 1, intensity="linear")
    assert sorted(opened) == sorted(2 * ["000000.tar", "000001.tar", "000002.tar", "000003.tar"])
    opened.clear()
    from_files = data.load_split(staged.channels["train"], staged.classes, 16, "squash", 1, intensity="linear")
    assert len(opened) == len(from_files) + 1 == 37
    assert from_shards.records == from_files.records and bool((from_shards.pixels == from_files.pixels).all())
    assert [n for _, n in from_shards.parts] == [9, 9, 9, 9]
    assert from_shards.stored_png(packed, 20) == (staged.channels["train"] / from_files.records[20]["key"]).read_bytes()


def test_a_split_holds_one_byte_a_pixel_and_gives_the_inputs_serving_computes(staged):
    """Held as float16 it took two bytes a pixel (10.2 GB at 200,000 images of 160 px on one rank) and rounded
    every grey level (level 200: 0.7842 against serving's float32 0.78431). Now the grey levels are held and the
    inputs are exactly :func:`imaging.to_model_input`'s values."""
    split = data.load_split(staged.channels["train"], staged.classes, 16, "pad", 1, intensity="equalize")
    assert split.pixels.dtype == torch.uint8 and split.pixels.element_size() == 1
    for index in (0, len(split) - 1):
        stored = imaging.open_stored((staged.channels["train"] / split.records[index]["key"]).read_bytes())
        expected = imaging.to_model_input(stored, 16, "pad", "equalize")
        assert split.inputs[index].dtype == torch.float32
        assert np.array_equal(split.inputs[index][0].numpy(), expected)
    assert split.inputs[torch.tensor([2, 0])].shape == (2, 1, 16, 16) and len(split.inputs) == len(split)


def test_one_instance_trains_from_shards_exactly_as_from_the_manifest(staged, trained, tmp_path):
    """One rank holding every shard walks the ManifestFile channel's very permutation: the same losses to the bit,
    the same data fingerprint."""
    from cxr import training_run

    model_dir = training_run.run_training_job(pack_channels(staged.channels, tmp_path / "packed", 5), TINY_HPS,
                                              tmp_path / "job")
    from_shards, from_manifest = (json.loads((d / "metrics.json").read_text())["training"]["history"]
                                  for d in (model_dir, trained / "model"))
    assert [(e["train_loss"], e["validation_loss"]) for e in from_shards] == \
        [(e["train_loss"], e["validation_loss"]) for e in from_manifest]
    fingerprints = {json.loads((d / "model.json").read_text())["data_fingerprint"]
                    for d in (model_dir, trained / "model")}
    assert len(fingerprints) == 1


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def walk(channel: Path, out: Path, ranks: int, *options: str) -> dict[int, dict]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(free_port())] if ranks > 1 else [sys.executable])
    done = subprocess.run([*launch, str(PROBE), str(channel), str(out), *options], capture_output=True, text=True,
                          timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return {r: json.loads((out / f"taken-{r}-of-{ranks}.json").read_text()) for r in range(ranks)}


def ids(parts: dict[int, dict]) -> list[tuple]:
    return [tuple(i) for p in parts.values() for i in p["taken"]]


@pytest.mark.slow
def test_ranks_walk_their_own_shards_and_resume_exactly_or_on_another_world_size(staged, tmp_path):
    """36 images in 9 shards, batches of 2 a rank. Two ranks stopped after 3 steps: resumed on two they take the
    uninterrupted run's very sequence; on one or three they take each remaining image at most once, none of those
    the stopped run took, all ranks the same number of steps."""
    channel = pack_channel(staged.channels["train"], tmp_path / "train", images_per_shard=4)
    whole = walk(channel, tmp_path / "whole", 2)
    assert not set(whole[0]["shards"]) & set(whole[1]["shards"])
    assert sorted(whole[0]["shards"] + whole[1]["shards"]) == sorted(p.name for p in channel.iterdir())
    stopped = walk(channel, tmp_path / "stopped", 2, "--stop", "3")
    state = tmp_path / "stopped" / "state-of-2.pt"
    again = walk(channel, tmp_path / "again", 2, "--resume", str(state))
    for r in (0, 1):
        assert again[r]["exact"] and stopped[r]["taken"] + again[r]["taken"] == whole[r]["taken"]
    before = set(ids(stopped))
    assert len(before) == 12
    for ranks in (1, 3):
        after = walk(channel, tmp_path / f"on-{ranks}", ranks, "--resume", str(state))
        rest = ids(after)
        assert not any(p["exact"] for p in after.values())
        assert len(rest) == len(set(rest)) and not set(rest) & before
        # every rank takes the same number of steps: the fewest whole batches any rank has left of its own images
        left = [len({(s, o) for s in after[r]["shards"] for o in range(4)} - before) for r in range(ranks)]
        assert {len(p["taken"]) for p in after.values()} == {2 * min(n // 2 for n in left)}
