"""The model's answers on the dataset's fixed benchmark set (``SM_CHANNEL_BENCHMARK``), for the champion gate.

Written into the model directory as ``benchmark.json``: per image its content hash, patient, binary truth,
p(pneumonia) and whether the model's own decision rule calls pneumonia, plus the set's version. The
Evaluate step reads it out of ``model.tar.gz``; the gate pairs it with the champion's answers on the
same version (``lambdas/domain/champion.py``). The answers are taken here, once, by the final model
in fp32 as ONNX serves it: a package's artifact never changes, so they stay its answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import decision
import numpy as np

FILE = "benchmark.json"
NORMAL = "normal"


def answers(records: list[dict], probs: np.ndarray, classes: list[str], rule: decision.Rule) -> dict:
    """``benchmark.json``'s body for the benchmark records and their calibrated probabilities."""
    versions = {r.get("benchmark_version") for r in records}
    if len(versions) > 1:
        raise ValueError(f"the benchmark channel mixes set versions {sorted(map(str, versions))}")
    if not records or NORMAL not in classes:  # no set yet, or no binary view to compare on
        return {"version": None, "records": [],
                "note": "no benchmark set" if not records else "no normal class: no binary view to compare"}
    made = decision.decide_all(probs, classes, rule)
    score = decision.pneumonia_probability(probs, classes)
    normal = classes.index(NORMAL)
    return {"version": versions.pop(), "records": [
        {"content_hash": r["content_hash"], "patient": r.get("patient_id") or f"image:{r['content_hash']}",
         "truth": r["label"] != NORMAL, "score": round(float(s), 6), "called": bool(i != normal),
         "referred": bool(ref)}
        for r, s, i, ref in zip(records, score, made.index, made.refer, strict=True)]}


def write(model_dir: Path, body: dict) -> None:
    (model_dir / FILE).write_text(json.dumps(body, indent=0))
