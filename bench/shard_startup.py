"""Training start-up from a channel of one file an image (``ManifestFile``) against PrepareDataset's tar shards.

For each count, synthetic stored PNGs are written once as both channel layouts; then, each in a fresh process
(so memory is the load's own: peak resident set less the resident set after imports), ``data.load_split`` reads:
the manifest channel whole, the shards whole (one instance, one rank), and one rank's own shards of four
(``ShardedByS3Key`` on four instances: every fourth shard). Printed per row: files opened, seconds, MB.

    nice -n 10 .venv/bin/python bench/shard_startup.py --counts 5000 50000 --json bench/results/shard-startup.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "training_job")]


def stored_png(rng: np.random.Generator, side: int) -> bytes:
    """A chest-X-ray-like stored PNG: a smooth body with two darker fields and noise (compresses like one)."""
    import io
    yy, xx = np.mgrid[0:side, 0:side] / side
    image = 170 - 30 * yy + rng.normal(0, 6, (side, side))
    for cx in (0.3, 0.7):
        image = np.where(((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1, image - 110, image)
    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def write_channels(root: Path, count: int, side: int) -> tuple[Path, Path]:
    """``root/files`` (a ManifestFile channel as it lands) and ``root/shards`` (PrepareDataset's layout)."""
    from lambdas.domain import shards

    files, packed = root / "files", root / "shards"
    rng = np.random.default_rng(0)
    pngs = [stored_png(rng, side) for _ in range(64)]  # 64 distinct images, reused: the bench reads, not learns
    records = [{"key": f"processed/bench/{label}/{i:07d}.png", "label": label, "content_hash": f"{i:064x}",
                "patient_id": str(i), "dataset": "bench"} for i, label in
               ((i, ("normal", "pneumonia")[i % 2]) for i in range(count))]
    for i, record in enumerate(records):
        path = files / record["key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pngs[i % len(pngs)])
    (files / "manifests" / "bench").mkdir(parents=True)
    (files / "manifests" / "bench" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    packed.mkdir()
    for index, block in enumerate(shards.plan(count)):
        with (packed / shards.name(index)).open("wb") as out:
            shards.write(out, records[block.start: block.stop], lambda key: (files / key).read_bytes())
    return files, packed


def measure(channel: str, size: int, every: int) -> dict:
    """One load in this process (run as a child): files opened, seconds, MB above the post-import resident set."""
    import builtins
    import io

    import data
    import torch

    torch.set_num_threads(1)
    opened = []
    real_open = io.open

    def counting(file, *args, **kwargs):
        opened.append(file)
        return real_open(file, *args, **kwargs)
    builtins.open = io.open = counting
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    packed = data.shard_files(Path(channel))
    split = data.load_split(Path(channel), ["normal", "pneumonia"], size, "squash", 1, intensity="linear",
                            only=packed[::every] if packed else None)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images": len(split), "opened": len(opened), "seconds": round(seconds, 1),
            "mb": round((peak - before) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--stored-px", type=int, default=128, help="side of the synthetic stored PNGs")
    parser.add_argument("--size", type=int, default=64, help="the model's input size (memory grows with its square)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    rows = []
    for count in args.counts:
        root = Path(tempfile.mkdtemp(prefix="cxr-shard-bench-"))
        try:
            files, packed = write_channels(root, count, args.stored_px)
            for layout, channel, every in (("one file an image", files, 1), ("shards, whole", packed, 1),
                                           ("shards, one rank of four", packed, 4)):
                out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--child", str(channel),
                                      str(args.size), str(every)], capture_output=True, text=True, check=True)
                row = {"count": count, "layout": layout, **json.loads(out.stdout.splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            shutil.rmtree(root)
    if args.json:
        args.json.write_text(json.dumps({"stored_px": args.stored_px, "size": args.size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
