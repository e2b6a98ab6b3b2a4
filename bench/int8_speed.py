"""INT8 against FP32 ONNX Runtime on one thread, interleaved call by call so that both see the same machine load.

Usage: ``python bench/int8_speed.py MODEL_DIR [--calibrate DIR] [--runs 300] [--json PATH]``. Uses the model's own
``model.int8.onnx``, or quantizes ``model.onnx`` with ``training_job/quantize.py`` on 64 images of ``--calibrate``
(a labelled folder of training X-rays) for a model trained before INT8. Reports each model's median, the median
of the per-call ratios, top-1 agreement on the calibration folder's other images, and the CPU's VNNI / AMX flags.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training_job"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import imaging  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import quantize  # noqa: E402
from predict_path import IMAGE, cpu_flags  # noqa: E402


def accepted(path: Path) -> bool:
    """What ingest accepts (the demo folder holds broken files on purpose)."""
    try:
        imaging.normalise(path.read_bytes())
    except imaging.RejectedImage:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--calibrate", type=Path, help="training X-rays, for a model without model.int8.onnx")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args()
    config = json.loads((args.model_dir / "model.json").read_text())

    def model_input(path: Path) -> np.ndarray:
        stored = imaging.normalise(path.read_bytes()).stored
        return imaging.to_model_input(stored, config["image_size"], config["resize_policy"],
                                      config.get("intensity", "linear"))[None, None]

    int8 = args.model_dir / quantize.INT8_FILE
    others: list[Path] = []
    if args.calibrate:
        files = sorted(p for p in args.calibrate.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")
                       and accepted(p))
        random.Random(0).shuffle(files)
        calibration, others = files[:quantize.CALIBRATION_IMAGES], files[quantize.CALIBRATION_IMAGES:][:300]
        if not int8.is_file():
            int8 = Path(os.environ.get("TMPDIR", "/tmp")) / f"int8-{os.getpid()}.onnx"
            quantize.quantize(args.model_dir / config.get("onnx_fp32", "model.onnx"), int8,
                              np.concatenate([model_input(p) for p in calibration]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in (("fp32", args.model_dir / config.get("onnx_fp32", "model.onnx")), ("int8", int8))}
    x = model_input(IMAGE)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for i in range(args.runs + 20):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, {"image": x})
            if i >= 20:
                times[name].append(time.perf_counter() - started)
    ratios = [a / b for a, b in zip(times["fp32"], times["int8"], strict=True)]
    agreement = None
    if others:
        inputs = [model_input(p) for p in others]
        agreement = statistics.mean(float(sessions["fp32"].run(["logits"], {"image": v})[0].argmax()
                                          == sessions["int8"].run(["logits"], {"image": v})[0].argmax())
                                    for v in inputs)
    result = {"model": config.get("model_id"), "architecture": config["architecture"], "input": config["image_size"],
              "cpu": cpu_flags(), "load_average": os.getloadavg(), "runs": args.runs,
              "fp32_ms": round(1000 * statistics.median(times["fp32"]), 2),
              "int8_ms": round(1000 * statistics.median(times["int8"]), 2),
              "speedup_median_of_ratios": round(statistics.median(ratios), 2),
              "top1_agreement": agreement, "agreement_images": len(others),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
