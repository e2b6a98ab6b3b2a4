"""The PackShards Map state and the packing function's grants, as synthesized (infra/components/packing.py)."""

from __future__ import annotations

from test_stacks import as_list, state_machine_definition
from test_variants import function_statements

from infra import wiring
from infra.components import packing


def test_pack_shards_is_an_inline_map_over_the_items_between_prepare_and_train(synth):
    states = state_machine_definition(synth)["States"]
    assert states[wiring.PREPARE_DATASET_STATE]["Next"] == wiring.PACK_SHARDS_STATE
    pack = states[wiring.PACK_SHARDS_STATE]
    assert pack["Type"] == "Map" and pack["Next"] == wiring.TRAIN_STATE
    assert pack["ItemsPath"] == "$.dataset.packing" and pack["MaxConcurrency"] == packing.MAX_CONCURRENCY
    assert pack["ResultPath"] is None  # the state's output is its input: the payload does not grow with the items
    assert pack["ItemProcessor"]["ProcessorConfig"] == {"Mode": "INLINE"}
    (catch,) = pack["Catch"]
    assert catch == {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": wiring.NOTIFY_FAILURE_STATE}
    assert "Retry" not in pack  # a failed item is retried alone, inside
    processor = pack["ItemProcessor"]
    assert processor["StartAt"] == wiring.PACK_SHARD_STATE
    task = processor["States"][wiring.PACK_SHARD_STATE]
    assert task["Type"] == "Task" and task["End"] and "Parameters" not in task  # the event is the item
    (retry,) = task["Retry"]
    assert {"Lambda.ServiceException", "Lambda.TooManyRequestsException", "TransientError"} <= set(
        retry["ErrorEquals"])


def object_grants(template: dict, handler: str) -> dict[str, set[str]]:
    """Action -> the object patterns (after the bucket's ARN) a function's role is granted."""
    grants: dict[str, set[str]] = {}
    for statement in function_statements(template, handler):
        for resource in as_list(statement["Resource"]):
            text = resource["Fn::Join"][1][-1] if isinstance(resource, dict) and "Fn::Join" in resource else None
            if isinstance(text, str) and text.startswith("/"):
                for action in as_list(statement["Action"]):
                    grants.setdefault(action, set()).add(text[1:])
    return grants


def test_packing_reads_pngs_and_jsonl_writes_only_shards_and_prepare_reads_no_png(synth):
    template = synth.template("pipeline")
    pack = object_grants(template, wiring.PACK_SHARDS.handler)
    assert pack["s3:PutObject"] == {"manifests/*/shards/*"}
    assert set(pack) == {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"}
    assert pack["s3:GetObject"] == {"processed/*", "manifests/*.jsonl"}
    prepare = object_grants(template, wiring.PREPARE_DATASET.handler)
    assert not any(pattern.startswith("processed/") for patterns in prepare.values() for pattern in patterns)
