"""The normaliser over every provided X-ray: how many it rejects (expected: none) and how long it takes.

Run: `.venv/bin/python bench/normalise_provided.py [--data ../shared/data/kermany-224/train]
[--json bench/results/normalise-provided.json]`. Folders: the bundled samples (the 16 full-resolution
X-rays and the 300 of the demo) and, when present, the 5,216 Kermany training X-rays. The demo's four
files broken on purpose are expected to be rejected, each with its own reason, or, for the one
outside a label folder (a valid image), accepted. Also reports how far the X-rays sit above the
JPEG scan-data floor and whether any has bottom rows at the decoder's fill value.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

from PIL import Image

from lambdas.domain import imaging

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = [ROOT / "samples" / "kermany-val16", ROOT / "samples" / "kermany-demo"]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kermany-224" / "train"
BROKEN_ON_PURPOSE = {  # samples/README.md: the demo's deliberately broken files
    "person9001_bacteria_9001-truncated.jpeg": "truncated",
    "IM-9002-0001-actually-a-pdf.jpeg": "unsupported_format",
    "IM-9003-0001-empty.jpeg": "empty",
}


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def fill_rows(data: bytes) -> int:
    """Bottom rows exactly at the JPEG decoder's fill value, in the image as the normaliser decodes it."""
    image = Image.open(io.BytesIO(data))
    image.draft("L", (2 * imaging.STORED_MAX_SIDE, 2 * imaging.STORED_MAX_SIDE))
    image = image.convert("L")
    rows = 0
    while rows < image.height and image.crop((0, image.height - rows - 1, image.width, image.height - rows)) \
            .getextrema() == (128, 128):
        rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Kermany 224 px training folder")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    folders = FOLDERS + ([args.data] if args.data.is_dir() else [])
    files = [path for folder in folders for path in sorted(folder.rglob("*.jpeg"))]
    blobs = [path.read_bytes() for path in files]

    start, cpu_start = time.perf_counter(), time.process_time()
    outcomes = []
    for blob in blobs:
        try:
            imaging.normalise(blob)
            outcomes.append(None)
        except imaging.RejectedImage as exc:
            outcomes.append((exc.code, exc.message))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    unexpected, deliberate, margins, filled = [], {}, [], 0
    for path, blob, outcome in zip(files, blobs, outcomes, strict=True):
        if path.name in BROKEN_ON_PURPOSE:
            deliberate[path.name] = outcome[0] if outcome else "accepted"
            continue
        if outcome:
            unexpected.append({"path": shown(path), "code": outcome[0], "reason": outcome[1]})
            continue
        payload = imaging._walk_jpeg(blob)  # the same walk the floor is checked on
        margins.append((payload.size / payload.minimum, path.name))
        filled += fill_rows(blob) > 0
    x_rays = len(files) - len(deliberate)
    result = {
        "folders": {shown(folder): len(list(folder.rglob("*.jpeg"))) for folder in folders},
        "x_rays": x_rays,
        "rejected": len(unexpected),
        "rejections": unexpected,
        "broken_on_purpose": deliberate,
        "broken_on_purpose_as_expected": deliberate == BROKEN_ON_PURPOSE,
        "seconds": round(seconds, 2),
        "ms_per_file": round(1000 * seconds / len(files), 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "load_average": round(os.getloadavg()[0], 2),
        "least_scan_data_over_floor": round(min(margins)[0], 1),
        "least_scan_data_over_floor_file": min(margins)[1],
        "x_rays_with_bottom_rows_at_fill_value": filled,
    }
    print(f"{len(files)} files in {', '.join(f'{k} ({v})' for k, v in result['folders'].items())}")
    print(f"  X-rays rejected: {len(unexpected)} of {x_rays}")
    for item in unexpected:
        print(f"    {item['path']}: {item['code']}: {item['reason']}")
    print(f"  broken on purpose: {deliberate} ({'as expected' if result['broken_on_purpose_as_expected'] else 'NOT'})")
    print(f"  time: {seconds:.1f} s ({cpu_seconds:.1f} s CPU), {result['ms_per_file']} ms per file, "
          f"load average {result['load_average']}")
    print(f"  scan data over the JPEG floor: at least {result['least_scan_data_over_floor']}x "
          f"({result['least_scan_data_over_floor_file']}); X-rays with bottom rows at the fill value: {filled}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
