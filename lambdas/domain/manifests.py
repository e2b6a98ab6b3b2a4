"""Names and contents of PrepareDataset's manifests: pure, so local staging (``cxr train-local``) writes the very
records and summary the Lambda writes without importing the AWS SDK."""

from __future__ import annotations

from collections.abc import Iterator

from lambdas.domain import layout, splits


def manifest_records(items: list[splits.Item], dataset: str) -> Iterator[dict]:
    return (
        {"key": i.key, "label": i.label, "patient_id": i.patient_id, "dataset": dataset, "content_hash": i.content_hash}
        for i in items
    )


def jsonl_key(run_id: str, split: str) -> str:
    return f"{layout.MANIFESTS}{run_id}/{split}.jsonl"


def manifest_key(run_id: str, split: str) -> str:
    return f"{layout.MANIFESTS}{run_id}/{split}.manifest"


def summary_key(run_id: str) -> str:
    return f"{layout.MANIFESTS}{run_id}/summary.json"


def build_summary(result: splits.SplitResult, dataset: str, run_id: str, classes: list[str], params: dict) -> dict:
    return {
        "run_id": run_id,
        "dataset": dataset,
        "classes": classes,
        "counts": result.counts(),
        "images": {name: len(items) for name, items in result.splits.items()},
        "patients": {name: len({splits.group_of(i) for i in items}) for name, items in result.splits.items()},
        "split_method": result.notes,
        "parameters": params,
    }
