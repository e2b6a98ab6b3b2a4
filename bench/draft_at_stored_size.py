"""What the warm path's last lever would buy: decoding JPEGs at the stored size (issue 20).

Usage: ``python bench/draft_at_stored_size.py [--runs 40] [--json PATH]``.

The normaliser decodes a JPEG in the DCT domain at a scale still at least twice the stored size
(``draft("L", (2 * STORED_MAX_SIDE,) * 2)``), then shrinks it with LANCZOS; that shrink is most of its time.
Drafting down to the stored size itself would leave LANCZOS less to do, but it changes the stored pixels, and
so every JPEG's content hash, which names its split group and its place in a frozen benchmark set: a change of
normaliser version with a re-ingest. For each of the 16 full-resolution samples this prints both
normalisers' median CPU time (``time.thread_time``, one thread) and how far the stored pixels would move.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import cpu_ms  # noqa: E402
from lambdas.domain import imaging  # noqa: E402

SAMPLES = sorted((ROOT / "samples" / "kermany-val16").glob("*/*.jpeg"))


def drafted_at_stored_size(data: bytes) -> Image.Image:
    """The alternative: the same normaliser steps with the DCT-domain draft aimed at the stored size itself."""
    image = Image.open(io.BytesIO(data), formats=["JPEG"])
    image.draft("L", (imaging.STORED_MAX_SIDE, imaging.STORED_MAX_SIDE))
    image.load()
    return imaging._shrink(image.convert("L"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for path in SAMPLES:
        data = path.read_bytes()
        now, drafted = imaging.normalise(data).stored, drafted_at_stored_size(data)
        moved = (np.abs(np.asarray(now, dtype=np.int16) - np.asarray(drafted, dtype=np.int16))
                 if now.size == drafted.size else None)
        rows.append({"image": path.name, "original": list(Image.open(path).size), "stored": list(now.size),
                     "normalise_ms": round(cpu_ms(functools.partial(imaging.normalise, data), args.runs), 2),
                     "drafted_ms": round(cpu_ms(functools.partial(drafted_at_stored_size, data), args.runs), 2),
                     "stored_size_changes": moved is None,
                     "mean_abs_grey_change": None if moved is None else round(float(moved.mean()), 3),
                     "max_abs_grey_change": None if moved is None else int(moved.max())})
        print(json.dumps(rows[-1]))
    saved = [r["normalise_ms"] - r["drafted_ms"] for r in rows]
    ratio = [r["normalise_ms"] / r["drafted_ms"] for r in rows]
    moved = [r for r in rows if not r["stored_size_changes"]]
    summary = {"images": len(rows), "saved_ms": [round(min(saved), 2), round(max(saved), 2)],
               "speedup": [round(min(ratio), 2), round(max(ratio), 2)],
               "stored_size_changes": len(rows) - len(moved),
               "mean_abs_grey_change": [min(r["mean_abs_grey_change"] for r in moved),
                                        max(r["mean_abs_grey_change"] for r in moved)],
               "max_abs_grey_change": max(r["max_abs_grey_change"] for r in moved)}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "images": rows,
                                         "load_average": [round(v, 2) for v in os.getloadavg()],
                                         "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
