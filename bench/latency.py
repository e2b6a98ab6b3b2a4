"""Predict-path latency of a trained model: ONNX Runtime (what the endpoint serves) against torch eager.

Usage: ``python bench/latency.py MODEL_DIR [--runs 100] [--json PATH]``. Both paths run on ONE thread on the same
weights and the same full-resolution X-ray, and include the normaliser (decode, grayscale, resize to
the stored PNG) and the model-input resize; the model-only time gives achieved GFLOP/s from the
network's counted FLOPs. Cold start is measured in a fresh process: import the handler, load the
model, answer the first request, as an endpoint worker does. What ``cxr cost`` bills: ``normalise_ms``, the
predict function's own work before it calls an endpoint (the normaliser, then the request's uncompressed PNG,
``wire_png``); ``endpoint_ms``, one deployed request (that PNG through ``input_fn`` and ``predict_fn``); and
``in_function_ms``, the model in the predict function itself (``endpoint_mode=lambda``: ``predict_fn`` and
``output_fn`` on the pixels already normalised, no request).
``--json PATH`` also writes the result to PATH (``cxr cost`` reads ``bench/results/latency.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = min((ROOT / "samples" / "kermany-val16" / "PNEUMONIA").glob("*.jpeg"))

COLD = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1] + "/code")
import inference
model = inference.model_fn(sys.argv[1])
t1 = time.perf_counter()
inference.predict_fn(inference.input_fn(open(sys.argv[2], "rb").read(), "image/jpeg"), model)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, t2 - t0)
"""


def median_ms(fn, runs: int, warmup: int = 10, clock=time.perf_counter) -> float:
    """The median of ``runs`` calls after ``warmup`` untimed ones, in ms of ``clock`` (wall by default)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = clock()
        fn()
        times.append(clock() - started)
    return statistics.median(times) * 1000


def cpu_ms(fn, runs: int) -> float:
    """This thread's CPU time per call (``time.thread_time``: another process's load hardly moves it), in ms."""
    return round(median_ms(fn, runs, warmup=1, clock=time.thread_time), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--image", type=Path, default=SAMPLE)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result to this file")
    args = parser.parse_args()
    os.environ["CXR_ONNX_THREADS"] = "1"
    model_dir = args.model_dir.resolve()

    colds = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", COLD, str(model_dir), str(args.image)],
                             capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        colds.append([float(v) for v in out.stdout.splitlines()[-1].split()])  # after the handler's log line
    cold = {name: statistics.median(c[i] for c in colds)
            for i, name in enumerate(("load_s", "first_prediction_s", "total_s"))}

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "training_job"))
    import artifact
    import imaging
    import inference

    model, config = artifact.load_torch_model(model_dir)
    handler = inference.model_fn(str(model_dir))
    data = args.image.read_bytes()
    request_png = imaging.normalise(data).wire_png

    def model_input():
        stored = imaging.open_stored(imaging.normalise(data).png)
        return inference.model_input(stored, config)

    x = model_input()
    tensor = torch.from_numpy(x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tensor)
    flops = counter.get_total_flops()

    def torch_model():
        with torch.no_grad():
            model(tensor)

    def onnx_model():
        handler.session.run(["logits"], {"image": x})

    def torch_path():
        with torch.no_grad():
            model(torch.from_numpy(model_input()))

    def predict_function_work():
        _ = imaging.normalise(data).wire_png  # a new image each call: the encode is timed too

    normalised = imaging.normalise(data)

    def in_function():
        inference.output_fn(inference.predict_fn(inference.Request(normalised, False), handler), "application/json")

    def onnx_path():
        inference.predict_fn(inference.input_fn(data, "image/jpeg"), handler)

    def endpoint_request():
        inference.predict_fn(inference.input_fn(request_png, "image/png"), handler)

    result = {
        "model": config.get("model_id"), "architecture": config["architecture"], "input": config["image_size"],
        "image": args.image.name, "threads": 1, "runs": args.runs,
        "gflop_per_image": round(flops / 1e9, 3),
        "normalise_ms": round(median_ms(predict_function_work, args.runs), 2),
        "in_function_ms": round(median_ms(in_function, args.runs), 2),
        "torch_model_ms": round(median_ms(torch_model, args.runs), 2),
        "onnx_model_ms": round(median_ms(onnx_model, args.runs), 2),
        "torch_path_ms": round(median_ms(torch_path, args.runs), 2),
        "onnx_path_ms": round(median_ms(onnx_path, args.runs), 2),
        "endpoint_ms": round(median_ms(endpoint_request, args.runs), 2),
        "endpoint_request_bytes": len(request_png),
        "endpoint_response_bytes": len(inference.output_fn(
            inference.predict_fn(inference.input_fn(request_png, "image/png"), handler), "application/json"
        )[0].encode()),
        "cold_start": {k: round(v, 3) for k, v in cold.items()},
        "load_average": os.getloadavg()[0],
    }
    result["onnx_speedup_model"] = round(result["torch_model_ms"] / result["onnx_model_ms"], 2)
    result["onnx_speedup_path"] = round(result["torch_path_ms"] / result["onnx_path_ms"], 2)
    result["onnx_gflops"] = round(flops / 1e9 / (result["onnx_model_ms"] / 1000), 1)
    result["torch_gflops"] = round(flops / 1e9 / (result["torch_model_ms"] / 1000), 1)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
