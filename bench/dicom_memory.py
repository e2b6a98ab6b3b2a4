"""Peak memory and time of decoding a DICOM X-ray at the 60 MP pixel cap (7700 x 7700, 12 bits, JPEG-LS).

Run: `.venv/bin/python bench/dicom_memory.py [--json bench/results/dicom-memory.json]`. The file is made
with the test corpus's encoder (tests/dicom_corpus.py: rescale and a window, so the whole display
pipeline runs), then decoded in a fresh process: peak resident set (``ru_maxrss``, what Lambda's memory
limit sees) and wall time of ``uploads.normalise``. The preprocess and predict functions have 1,769 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIDE = 7700
MEASURE = """
import resource, sys, time
sys.path.insert(0, {root!r})
from lambdas.domain import uploads
data = open({path!r}, "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
image, _ = uploads.normalise(data)
print(before / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - started)
"""


def make(path: Path) -> None:
    """Write the test image (run in its own process: Linux keeps a peak RSS across fork and exec)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from pydicom import uid  # noqa: PLC0415

    import dicom_corpus  # noqa: PLC0415 (the tests' encoder)

    y, x = np.mgrid[0:SIDE, 0:SIDE]
    pixels = ((x * 7 + y * 3) % 4096 // 64 * 64).astype(np.uint16)
    data = dicom_corpus.to_bytes(dicom_corpus.dataset(pixels, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                                                      WindowCenter=2000, WindowWidth=4000), uid.JPEGLSLossless)
    path.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        return make(args.make)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "big.dcm")
        subprocess.run([sys.executable, __file__, "--make", str(path)], check=True)
        out = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT), path=str(path))],
                             capture_output=True, text=True, check=True).stdout.split()
        size = path.stat().st_size
    before, peak, seconds = map(float, out)
    result = {"image": f"{SIDE}x{SIDE} 12-bit JPEG-LS lossless, rescale and window", "file_mib": round(size / 2**20, 1),
              "rss_before_mb": round(before), "peak_rss_mb": round(peak), "seconds": round(seconds, 2)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
