"""Peak memory of the normaliser on the largest images it accepts (7700x7700, under the 60 MP cap).

Run: `.venv/bin/python bench/normaliser_memory.py [--imaging FILE] [--label NAME] [--json FILE]`.
Each case runs in a fresh subprocess: the peak resident set (``ru_maxrss``, what Lambda's memory
limit sees: Pillow's buffers included), its growth during ``normalise``, and the peak of
numpy's and Python's own allocations (``tracemalloc``). ``--imaging`` measures another version of
the module, e.g. the one before the strip-wise conversion:
`git show b7bafc7:lambdas/domain/imaging.py > /tmp/imaging_before.py`, then `--imaging /tmp/imaging_before.py
--label before`. With ``--json`` the figures are merged into that file under ``--label``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SIDE = 7700


def sixteen_bit_png(path: Path) -> None:
    """A 16-bit grayscale PNG that deflates to about 141 KB: identical rows, and a small textured patch."""
    row = np.linspace(200, 3800, SIDE).astype(np.uint16)
    values = np.broadcast_to(row, (SIDE, SIDE)).copy()
    values[:100, :100] = np.random.default_rng(0).integers(0, 4096, (100, 100), dtype=np.uint16)
    Image.fromarray(values).save(path, compress_level=9)


def rgba_png(path: Path) -> None:
    """8-bit RGBA, the alpha path (composited on black): four bytes a pixel once decoded."""
    gray = np.broadcast_to(np.linspace(0, 255, SIDE).astype(np.uint8), (SIDE, SIDE))
    alpha = np.full((SIDE, SIDE), 255, np.uint8)
    alpha[:, : SIDE // 4] = 0
    Image.fromarray(np.dstack([gray, gray, gray, alpha])).save(path, compress_level=1)


def cmyk_jpeg(path: Path) -> None:
    """CMYK JPEG: decoded at full size (JPEG draft scaling applies to grayscale and YCbCr only)."""
    gray = np.broadcast_to(np.linspace(0, 255, SIDE).astype(np.uint8), (SIDE, SIDE))
    Image.fromarray(np.ascontiguousarray(gray)).convert("CMYK").save(path, quality=90)


def gray_jpeg(path: Path) -> None:
    """Grayscale JPEG, the common X-ray export: decoded at 1/8 scale in the DCT domain."""
    gray = np.broadcast_to(np.linspace(0, 255, SIDE).astype(np.uint8), (SIDE, SIDE))
    Image.fromarray(np.ascontiguousarray(gray)).save(path, quality=90)


CASES = {
    "png-16bit-7700": (sixteen_bit_png, "png"),
    "png-rgba-7700": (rgba_png, "png"),
    "jpeg-cmyk-7700": (cmyk_jpeg, "jpeg"),
    "jpeg-gray-7700": (gray_jpeg, "jpeg"),
}


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("imaging_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def child(path: Path, imaging_file: Path) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    imaging = load_module(imaging_file)
    data = path.read_bytes()
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        result = imaging.normalise(data)
        outcome = f"accepted {result.original_mode} -> {result.width}x{result.height}"
    except imaging.RejectedImage as exc:
        outcome = f"rejected {exc.code}"
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "file_kb": round(len(data) / 1024, 1),
                      "peak_rss_mb": round(peak_kb / 1024, 1), "rss_growth_mb": round((peak_kb - before_kb) / 1024, 1),
                      "tracemalloc_peak_mb": round(traced / 2**20, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imaging", type=Path, default=ROOT / "lambdas" / "domain" / "imaging.py")
    parser.add_argument("--label", default="current")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench-memory",
                        help="where the test images are made once and kept")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--make", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        return CASES[args.make][0](args.child)
    if args.child:
        return child(args.child, args.imaging)

    args.work.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, (_, suffix) in CASES.items():
        path = args.work / f"{name}.{suffix}"
        if not path.exists():  # made in a subprocess: a child inherits this process's peak RSS
            subprocess.run([sys.executable, __file__, "--make", name, "--child", str(path)], check=True)
        run = subprocess.run([sys.executable, __file__, "--child", str(path), "--imaging", str(args.imaging)],
                             capture_output=True, text=True, check=True)
        figures[name] = json.loads(run.stdout)
        f = figures[name]
        print(f"{args.label:>8}  {name:<15} {f['file_kb']:>9,.1f} KB  peak RSS {f['peak_rss_mb']:7.1f} MB  "
              f"growth {f['rss_growth_mb']:7.1f} MB  tracemalloc {f['tracemalloc_peak_mb']:7.1f} MB  {f['outcome']}")
    if args.json:
        merged = json.loads(args.json.read_text()) if args.json.exists() else {}
        merged[args.label] = figures
        args.json.write_text(json.dumps(merged, indent=1) + "\n")


if __name__ == "__main__":
    main()
