"""The predict path end to end, today's code against the new, per mode: upload event in, prediction JSON out.

Usage: ``python bench/predict_path.py MODEL_DIR [--baseline REV] [--repeats 3] [--warm 100] [--only TEXT]
[--json PATH]``.

``MODEL_DIR`` is a trained model (``cxr train-local --out DIR`` leaves it at ``DIR/model``; with the new code it
holds ``model.int8.onnx`` and both accuracies in ``metrics.json``). ``--baseline`` is today's code (a git
revision, unpacked with ``git archive``); the same weights are packed by each tree's own ``artifact.py``, so
today's ``code/`` has its ``requirements.txt`` and wheels and the new one its ``code/lib``. Each repeat runs, in
fresh processes on one thread, ``bench/predict_path_run.py`` under each tree: the real predict handler on moto,
an ``incoming/`` upload event per call, the prediction JSON written. Figures: cold start (process start to the
first prediction, dependencies included), warm p50/p99 of the handler, the compute part (normalise + model:
the function's normaliser, the PNG it encodes and the endpoint's handling of it, or the model in the function)
in wall-clock and in the thread's CPU time, each with its speed-up over today's repeat by repeat, peak RSS.
The endpoint's own container start is measured apart: the inference toolkit's
``pip install -r code/requirements.txt`` (what today's artifact makes it run at every start, here with
``--target`` into a scratch folder), then a fresh
process that imports the handler, loads the model and answers the first request. Ranges are min-max over
the repeats; the CPU's VNNI / AMX flags are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = min((ROOT / "samples" / "kermany-val16" / "PNEUMONIA").glob("*.jpeg"))
RUN = Path(__file__).with_name("predict_path_run.py")
ENDPOINT_COLD = """
import sys, time
sys.path.insert(0, sys.argv[1] + "/code")
import inference
model = inference.model_fn(sys.argv[1])
inference.predict_fn(inference.input_fn(open(sys.argv[2], "rb").read(), "image/png"), model)
print(time.time())
"""
CONFIGS = (("today", "serverless", "fp32"), ("new", "serverless", "fp32"), ("new", "serverless", "int8"),
           ("new", "lambda-tar", "fp32"), ("new", "lambda", "fp32"), ("new", "lambda-tar", "int8"),
           ("new", "lambda", "int8"))
"""``lambda-tar``: lambda mode streaming the whole ``model.tar.gz`` (the previous stop's cold start), beside
``lambda``, which loads the lean serving copy (``lambdas.domain.serving_copy``). ``serverless int8``: the endpoint
serving the file ``model.json`` names when training chose INT8, as a deployed endpoint does."""


def cpu_flags() -> dict:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    return {"model": model, "cores": os.cpu_count(),
            **{name: name in flags for name in ("avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512f")}}


def code_tree(revision: str, work: Path) -> Path:
    """Today's code: ``git archive`` of the revision."""
    tree = work / "today"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def package(tree: Path, model_dir: Path, out: Path, onnx: str) -> Path:
    """``model_dir``'s weights with ``tree``'s ``code/`` (its own ``write_code_dir``, wheels for this Python)."""
    sys.path.insert(0, str(ROOT))
    from cxr import jobcode
    from infra import packaging

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    serving = [line for line in packaging.requirement_lines() if line.split("==")[0].lower() in packaging.SERVING]
    wheels = packaging.download_wheels(serving, constraints=packaging.requirement_lines(), python_version=version)
    source = out.parent / f"{out.name}-source"
    shutil.copytree(tree / "training_job", source)
    shutil.copytree(wheels, source / "wheels", ignore=shutil.ignore_patterns("constraints.txt", ".complete"))
    (source / "serving-wheels.txt").write_text("\n".join(serving + sorted(w.name for w in wheels.glob("*.whl"))))
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("code", "model.pt", "report"))
    jobcode.load("artifact", source).write_code_dir(source, out)
    config = json.loads((out / "model.json").read_text())
    config["onnx"] = onnx
    (out / "model.json").write_text(json.dumps(config, indent=1))
    if (tree / "lambdas" / "domain" / "serving_copy.py").is_file():  # the lean copy lambda mode loads, as Evaluate
        serving_copy = jobcode.load("serving_copy", tree / "lambdas" / "domain")  # builds it from the archive
        names = (p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        copy, _ = serving_copy.build({n: (out / n).read_bytes() for n in names if serving_copy.candidate(n)})
        out.with_name(f"{out.name}.serving.tar").write_bytes(copy)
    return out


def endpoint_cold_start(model: Path, stored_png: Path, scratch: Path) -> dict:
    """The endpoint container's start as the toolkit makes it: pip (if code/requirements.txt), then the handler."""
    requirements = model / "code" / "requirements.txt"
    pip_s = 0.0
    if requirements.exists():
        started = time.time()
        target = scratch / f"site-{time.time_ns()}"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
                        str(target), "-r", str(requirements)], check=True, cwd=model / "code")
        pip_s = time.time() - started
        shutil.rmtree(target, ignore_errors=True)
    spawned = time.time()
    out = subprocess.run([sys.executable, "-c", ENDPOINT_COLD, str(model), str(stored_png)], check=True,
                         capture_output=True, text=True, env={**os.environ, "CXR_ONNX_THREADS": "1",
                                                              "OMP_NUM_THREADS": "1"})
    handler_s = float(out.stdout.strip().splitlines()[-1]) - spawned
    return {"pip_s": round(pip_s, 2), "handler_s": round(handler_s, 3), "total_s": round(pip_s + handler_s, 3)}


def span(values: list[float]) -> str:
    return f"{min(values):g}" if min(values) == max(values) else f"{min(values):g}-{max(values):g}"


def speed_up(today: list[dict], measured: list[dict], figure: str) -> str:
    """Today's normalise + model over this configuration's, repeat by repeat (each pair ran minutes apart at
    most): the range of the ratios, the warm target's figure, in wall-clock time and in the thread's CPU time
    (which another process's load on a shared machine does not inflate)."""
    ratios = [t[figure] / m[figure] for t, m in zip(today, measured, strict=False) if figure in t and figure in m]
    return span([round(r, 2) for r in ratios]) if ratios else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--baseline", default="5573cf5", help="today's code (git revision)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="predict-path-"))
    trees = {"today": code_tree(args.baseline, work), "new": ROOT}
    has_int8 = (args.model_dir / "model.int8.onnx").is_file()
    models = {("today", "fp32"): package(trees["today"], args.model_dir, work / "today-fp32", "model.onnx"),
              ("new", "fp32"): package(trees["new"], args.model_dir, work / "new-fp32", "model.onnx")}
    if has_int8:
        models[("new", "int8")] = package(trees["new"], args.model_dir, work / "new-int8", "model.int8.onnx")
    sys.path.insert(0, str(ROOT / "lambdas" / "domain"))
    import imaging

    stored = work / "stored.png"
    stored.write_bytes(imaging.normalise(args.image.read_bytes()).png)
    runs: dict[str, list[dict]] = {}
    endpoints: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for tree, mode, precision in CONFIGS:
            name = f"{tree} {mode} {precision}"
            if (tree, precision) not in models or args.only not in name:
                continue
            env = {**os.environ, "PYTHONPATH": str(trees[tree]), "OMP_NUM_THREADS": "1", "CXR_ONNX_THREADS": "1"}
            spawned = time.time()
            out = subprocess.run([sys.executable, str(RUN), mode, str(models[(tree, precision)]), str(args.image),
                                  str(args.warm), repr(spawned)], cwd=trees[tree], env=env, check=True,
                                 capture_output=True, text=True)
            runs.setdefault(name, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
            if mode == "serverless":
                endpoints.setdefault(name, []).append(endpoint_cold_start(models[(tree, precision)], stored, work))
    metrics = json.loads((args.model_dir / "metrics.json").read_text())
    config = json.loads((args.model_dir / "model.json").read_text())
    result = {"cpu": cpu_flags(), "load_average": os.getloadavg(), "baseline": args.baseline,
              "model": {k: config.get(k) for k in ("model_id", "architecture", "image_size", "intensity")},
              "int8": metrics.get("int8"), "image": args.image.name, "warm_calls": args.warm,
              "repeats": args.repeats, "runs": runs, "endpoint_cold_start": endpoints,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"CPU {result['cpu']}\nload average {[round(v, 1) for v in result['load_average']]}, model "
          f"{result['model']}, {args.warm} warm calls, {args.repeats} repeats (ranges: min-max)\n")
    print(f"{'code, mode, model':<26} {'cold s':>11} {'cold CPU s':>11} {'warm p50 ms':>13} {'p99 ms':>13} "
          f"{'norm+model ms':>15} {'x today':>11} {'CPU ms':>11} {'x today':>11} {'model ms':>11} {'RSS MB':>11}")
    today = runs.get(f"today {CONFIGS[0][1]} {CONFIGS[0][2]}", [])
    for name, measured in runs.items():
        cell = {key: span([m[key] for m in measured]) for key in measured[0] if key.endswith(("_s", "_ms", "_mb"))}
        print(f"{name:<26} {cell['cold_start_s']:>11} {cell.get('cold_start_cpu_s', '-'):>11} "
              f"{cell['warm_p50_ms']:>13} {cell['warm_p99_ms']:>13} {cell['compute_p50_ms']:>15} "
              f"{speed_up(today, measured, 'compute_p50_ms'):>11} {cell.get('compute_cpu_p50_ms', '-'):>11} "
              f"{speed_up(today, measured, 'compute_cpu_p50_ms'):>11} {cell['model_p50_ms']:>11} "
              f"{cell['peak_rss_mb']:>11}")
    for name, measured in endpoints.items():
        print(f"endpoint container start, {name}: pip {span([m['pip_s'] for m in measured])} s + handler "
              f"{span([m['handler_s'] for m in measured])} s = {span([m['total_s'] for m in measured])} s")
    if result["int8"]:
        i8 = result["int8"]
        print(f"INT8: validation accuracy {i8['validation_accuracy']:.3f} against FP32 "
              f"{i8['fp32_validation_accuracy']:.3f} (served: {i8['served']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
