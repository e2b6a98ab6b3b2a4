"""Normalisation throughput on the 16 full-resolution sample X-rays, and the predict-path budget it leaves.

Run: `make bench` (or `.venv/bin/python bench/normalise_throughput.py [--runs N]`).
Prints the median over N timed passes (after one warm-up pass), single process, one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from PIL import JpegImagePlugin

from lambdas.domain import imaging

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "kermany-val16"
PREDICT_PATH_BUDGET_MS = 1000.0
"""Target for a warm predict Lambda: event in, prediction JSON written, within one second."""


def timed_pass(blobs: list[bytes]) -> float:
    start = time.perf_counter()
    for blob in blobs:
        imaging.normalise(blob)
    return time.perf_counter() - start


def median_pass(blobs: list[bytes], runs: int) -> float:
    timed_pass(blobs)  # warm-up: imports, allocator, page cache
    return statistics.median(timed_pass(blobs) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    blobs = [path.read_bytes() for path in sorted(SAMPLES.rglob("*.jpeg"))]
    results = [imaging.normalise(blob) for blob in blobs]
    megapixels = sum(r.original_width * r.original_height for r in results) / 1e6

    seconds = median_pass(blobs, args.runs)
    draft = JpegImagePlugin.JpegImageFile.draft
    JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None  # ablation: full-size JPEG decode
    try:
        full_decode = median_pass(blobs, args.runs)
    finally:
        JpegImagePlugin.JpegImageFile.draft = draft

    per_image_ms = 1000 * seconds / len(blobs)
    print(f"normalise: {len(blobs)} full-resolution JPEGs ({megapixels:.1f} MP), median of {args.runs} passes, "
          f"1 process, load {os.getloadavg()[0]:.2f}")
    print(f"  throughput        {len(blobs) / seconds:8.1f} images/s   ({per_image_ms:.1f} ms/image)")
    full_ms = 1000 * full_decode / len(blobs)
    print(f"  without JPEG draft{len(blobs) / full_decode:8.1f} images/s   ({full_ms:.1f} ms/image)"
          f"  -> draft decoding is {full_decode / seconds:.2f}x faster")
    print(f"  predict-path budget {PREDICT_PATH_BUDGET_MS:.0f} ms: normalisation uses {per_image_ms:.1f} ms, "
          f"leaving {PREDICT_PATH_BUDGET_MS - per_image_ms:.0f} ms for S3 I/O, the endpoint call and the record")


if __name__ == "__main__":
    main()
