"""Where the warm predict path's milliseconds go, stage by stage, for a JPEG, a PNG and a DICOM upload.

Usage: ``python bench/predict_path_profile.py MODEL_DIR [--image JPEG] [--runs 60] [--json PATH]``.

In one process on one thread, each stage's median CPU time (``time.thread_time``: another process's load does
not inflate it): the normaliser (decode, DICOM's display pipeline) and its shrink to the stored size, the
stored copy's PNG encode that ingest makes (level 6) against the request's (``wire_png``), the endpoint reading
that request back, the model input, the ONNX session (the served file's, and FP32's when INT8 serves), and the
answer (guard, decision rule, JSON). The PNG and the DICOM hold the same X-ray as the JPEG at its full
resolution (the DICOM uncompressed, explicit VR little endian, as ``tests/dicom_corpus.py`` writes it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "training_job"), str(ROOT / "tests")]
os.environ.setdefault("CXR_ONNX_THREADS", "1")

import inference  # noqa: E402

import dicom_corpus  # noqa: E402
from bench.latency import cpu_ms  # noqa: E402
from bench.predict_path import IMAGE  # noqa: E402
from lambdas.domain import imaging, uploads  # noqa: E402


def uploads_of(jpeg: Path) -> dict[str, tuple[bytes, Image.Image]]:
    """Each upload, and the grey image the normaliser shrinks to the stored size (a JPEG's is decoded drafted)."""
    data = jpeg.read_bytes()
    grey = Image.open(jpeg).convert("L")
    png = io.BytesIO()
    grey.save(png, format="PNG")
    dicom = dicom_corpus.to_bytes(dicom_corpus.dataset(np.asarray(grey)))
    drafted = imaging._decode(data, "JPEG", imaging._walk_jpeg(data))[0]
    return {"JPEG": (data, drafted), "PNG": (png.getvalue(), grey), "DICOM": (dicom, grey)}


def profile(data: bytes, decoded: Image.Image, model: inference.Model, fp32: inference.Model | None,
            runs: int) -> dict:
    image, _ = uploads.normalise(data)
    wire = image.wire_png
    request = inference.input_fn(wire, "image/png")
    x = inference.model_input(image.stored, model.config)
    stages = {
        "normalise (all)": lambda: uploads.normalise(data),
        "  of which shrink to stored size": lambda: imaging._shrink(decoded),
        "stored PNG, level 6 (ingest; the request before)": lambda: imaging._png(image.stored, 6),
        "request PNG, wire_png": lambda: imaging._png(image.stored, imaging.WIRE_PNG_LEVEL),
        "endpoint input_fn of the request": lambda: inference.input_fn(wire, "image/png"),
        "endpoint input_fn of a level-6 PNG": lambda: inference.input_fn(image.png, "image/png"),
        "model input (resize to the model's size)": lambda: inference.model_input(image.stored, model.config),
        f"ONNX session ({model.config['onnx']})": lambda: model.session.run(None, {"image": x}),
        **({f"ONNX session ({fp32.config['onnx']})": lambda: fp32.session.run(None, {"image": x})} if fp32 else {}),
        "predict_fn + output_fn (all of the model's side)": lambda: inference.output_fn(
            inference.predict_fn(request, model), "application/json"),
    }
    with contextlib.redirect_stdout(io.StringIO()):  # predict_fn logs a line per call
        return {"stored_size": list(image.stored.size), "request_bytes": len(wire), "stored_png_bytes": len(image.png),
                **{name: cpu_ms(fn, runs) for name, fn in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args()
    model = inference.model_fn(str(args.model_dir))
    fp32 = None
    if model.config.get("onnx_fp32", model.config["onnx"]) != model.config["onnx"]:  # INT8 serves: FP32 beside it
        config = {**model.config, "onnx": model.config["onnx_fp32"]}
        with tempfile.TemporaryDirectory() as folder:
            for name in (config["onnx"], model.config["out_of_distribution"]["file"]):
                os.symlink(args.model_dir.resolve() / name, Path(folder) / name)
            (Path(folder) / "model.json").write_text(json.dumps(config))
            fp32 = inference.model_fn(folder)
    result = {"model": model.model_id, "onnx": model.config["onnx"], "image": args.image.name,
              "load_average": os.getloadavg(), "cpu_ms": {kind: profile(*upload, model, fp32, args.runs)
                                                          for kind, upload in uploads_of(args.image).items()}}
    for kind, stages in result["cpu_ms"].items():
        print(f"{kind} ({stages['stored_size'][0]}x{stages['stored_size'][1]} stored; request "
              f"{stages['request_bytes']:,} bytes, stored PNG {stages['stored_png_bytes']:,})")
        for name, value in stages.items():
            if not name.endswith(("_size", "_bytes")):
                print(f"  {name:<52} {value:>8.3f} ms CPU")
    print(f"load average {[round(v, 1) for v in result['load_average']]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
