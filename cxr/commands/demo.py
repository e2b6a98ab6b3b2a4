"""`cxr demo`: the whole event-driven system, for real, on the offline cloud (no AWS account).

Uploads trigger preprocessing, the synthesized training state machine runs (real CPU training),
the gated model is deployed to a local endpoint, and the bundled full-resolution X-rays dropped
into ``incoming/`` come back as predictions. Exit status 1 if any stage fails.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

import boto3

from cxr import operations, source_names
from cxr.commands import train
from cxr.commands.predict import probability, referral, rule_text
from cxr.local import names as local_names
from infra import wiring
from infra.config import Config
from lambdas.domain import labels, layout

ROOT = Path(__file__).resolve().parents[2]
TRAINING_SET = ROOT / "samples" / "kermany-demo"
TEST_XRAYS = ROOT / "samples" / "kermany-val16"
DEMO_DATASET = "kermany-demo"
DEMO_HYPERPARAMETERS = {"architecture": "efficientnet_lite0", "image-size": "128", "epochs": "4", "intensity": "linear",
                        "precision": "fp32", "threads": "2", "deterministic": "1", "cpu-kernels": "baseline"}
"""The default recipe from ImageNet weights (the pipeline's ``pretrained`` channel), cut to a minute of CPU:
the lighter Lite0 at 128 px for 4 epochs on 208 images, grey levels as stored (measured on the 16 X-rays:
Lite2 at 128 px 8/16 against 14/16; equalised input 10/16, which needs the full training set to pay off).

Pinned so that every clean run trains the same weights: fp32 (``auto`` picks bfloat16 on CPUs with AMX or
AVX512-BF16 and fp32 elsewhere, two different models), 2 threads (the summation order of a reduction follows
the thread count, and so the weights do, 4 epochs later), torch's deterministic kernels, held to the baseline
x86-64 instruction set (``train.PORTABLE_CPU_KERNELS``: each CPU's widest kernels round differently, and two
machines trained two different demo models), seed 0. The split is already a function of the uploaded files
(processed names derive from source key and pixels)."""
FLOOR_BINARY = 14
"""Of the 16 X-rays, at least this many right on normal vs pneumonia in every clean run (README, demo)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the whole system end to end on the offline cloud",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo", help="where results are written")
    parser.add_argument("--training-set", type=Path, default=TRAINING_SET)
    parser.add_argument("--xrays", type=Path, default=TEST_XRAYS, help="X-rays to predict after deployment")
    parser.add_argument("--review", action="store_true",
                        help="at the end, serve the review page on localhost with the referred X-rays waiting")
    parser.set_defaults(run=run)


def run(args) -> int:
    from cxr.local import cloud as local_cloud  # moto and the CDK app: loaded only when the demo runs
    from cxr.local import pipeline

    say = train.Progress()
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = Config.demo(stage="demo")
    say(f"synthesizing the CDK app ({len(wiring.STACK_PARTS)} stacks, cdk-nag checks) for the offline cloud")
    synthesized = pipeline.synthesize(config, out / "cdk.out")
    with local_cloud.start(config, out / "local") as cloud:
        cloud.install_pipeline(synthesized)
        functions = wiring.deployed_functions(config.endpoint_mode)
        say(f"offline cloud up: buckets, tables, {len(functions)} Lambda functions, S3 triggers, "
            f"state machine {cloud.names.state_machine}")
        s3, sfn = boto3.client("s3", region_name=local_cloud.REGION), boto3.client(
            "stepfunctions", region_name=local_cloud.REGION)
        if not ingest(say, s3, cloud, args.training_set):
            return 1
        run_id = time.strftime("demo-%Y%m%d-%H%M%S")
        execution = train.start_and_follow(say, sfn, cloud.state_machine_arn, run_id, DEMO_DATASET,
                                           DEMO_HYPERPARAMETERS, cloud.training_jobs.workdir)
        if not execution["deployed"]:
            train.print_outcome(execution)
            return 1
        rows = predict(say, s3, cloud, args.xrays, out)
        artifact = execution["output"]["training"]["ModelArtifacts"]["S3ModelArtifacts"]
        metrics = collect_model(s3, artifact, out)
        trail = audit_first(cloud, rows, out)
        print_results(rows, metrics, execution["output"], out)
        print_audit(trail, out)
        review_queue(cloud, args.review)
    say("done")
    return 0 if all(r["status"] == "predicted" for r in rows) else 1


def review_queue(cloud, serve: bool) -> None:
    """How many predictions wait for a radiologist; with ``serve``, the review page over them until Ctrl-C."""
    from cxr import reviews, target
    from cxr.local import review_server

    deployment = target.Target(session=boto3.Session(), stage=cloud.names.stage, account=local_names.ACCOUNT,
                               region=local_names.REGION)
    tasks = reviews.summary(reviews.items(deployment, cloud.names.table(wiring.REVIEW_TASKS_TABLE)))["tasks"]
    print(f"\nreview queue: {tasks.get('open', 0)} X-ray(s) waiting for a radiologist"
          + ("" if serve else " (`cxr demo --review` ends by serving them on the review page)"))
    if not serve:
        return
    with review_server.for_cloud(cloud, "reviewer@example.org", port=8765) as server:
        print(f"review page: {server.url}  (sign in as reviewer@example.org, first password "
              f"{review_server.LOCAL_TEMPORARY_PASSWORD}; any 6-digit authenticator code); Ctrl-C ends the demo",
              flush=True)
        try:
            while server.thread.is_alive():
                server.thread.join(0.5)
        except KeyboardInterrupt:
            pass


def ingest(say, s3, cloud, folder: Path) -> bool:
    bucket = cloud.names.bucket(wiring.DATA)
    files = operations.dataset_files(folder)
    say(f"uploading {len(files)} files from {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder} "
        f"to s3://{bucket}/raw/{DEMO_DATASET}/ (each upload triggers the preprocess Lambda)")

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            say(f"  uploaded {done}/{total}")

    keys = operations.upload_dataset(s3, bucket, folder, DEMO_DATASET, progress=progress)
    name_of = source_names.namer(boto3.client("secretsmanager", region_name=s3.meta.region_name), cloud.config.stage,
                                 bucket)
    summary = operations.ingest_summary(s3, bucket, DEMO_DATASET, keys, name_of)
    say(f"ingest: {summary.processed} images processed, {len(summary.quarantined)} quarantined "
        f"(originals kept in raw/)")
    for key, reason in summary.quarantined.items():
        say(f"  {key}  {reason}")
    return summary.processed > 0


def predict(say, s3, cloud, folder: Path, out: Path) -> list[dict]:
    bucket = cloud.names.bucket(wiring.INFERENCE)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    say(f"dropping {len(files)} X-rays into s3://{bucket}/incoming/ (each upload triggers the predict Lambda)")
    name_of = source_names.namer(boto3.client("secretsmanager", region_name=s3.meta.region_name), cloud.config.stage,
                                 bucket)
    results = operations.predict_files(s3, bucket, files, name_of)
    (out / "predictions").mkdir()
    rows = []
    for path, result in results.items():
        (out / "predictions" / f"{path.name}.json").write_text(json.dumps(result, indent=1))
        truth = labels.describe(path.parts[-2:]).label
        rows.append({"file": path.name, "truth": truth, **result})
    return rows


def audit_first(cloud, rows: list[dict], out: Path) -> dict | None:
    """``cxr audit`` of the first X-ray predicted: its full trail written to ``out/audit.txt``."""
    from cxr import target
    from cxr.commands import audit

    predicted = [r for r in rows if r["status"] == "predicted"]
    if not predicted:
        return None
    deployment = target.Target(session=boto3.Session(), stage=cloud.names.stage, account=local_names.ACCOUNT,
                               region=local_names.REGION)
    trail = audit.Trail(deployment, cloud.names.table(wiring.PREDICTIONS_TABLE),
                        cloud.names.table(wiring.SOURCE_STATE_TABLE)).collect(predicted[0]["audit"]["content_hash"])
    with (out / "audit.txt").open("w") as file, contextlib.redirect_stdout(file):
        audit.print_trail(trail)
    return trail


def print_audit(trail: dict | None, out: Path) -> None:
    if not trail or not trail["predictions"] or not trail["models"]:
        print("\naudit: MISSING (no prediction record traced to a model)")
        return
    prediction, model = trail["predictions"][-1], trail["models"][0]
    run = model["run"] or {}
    content_hash = prediction["audit"].get("content_hash") or "-"
    print(f"\naudit of {prediction['name']} (cxr audit, full trail in {out / 'audit.txt'}): content hash "
          f"{content_hash[:16]}..., artifact sha256 {model['artifact_sha256'][:16]}..., "
          f"run {run.get('run_id', '-')} gate {'passed' if run.get('passed') else 'not found/failed'}, digest "
          f"{'matches' if run.get('digest_matches') else 'DOES NOT MATCH'} the prediction's")


def collect_model(s3, artifact_uri: str, out: Path) -> dict:
    bucket, key = layout.split_s3_uri(artifact_uri)
    archive = out / "model.tar.gz"
    s3.download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        tar.extractall(out / "model", filter="data")
    shutil.copytree(out / "model" / "report", out / "report")
    shutil.copyfile(out / "model" / "metrics.json", out / "metrics.json")
    return json.loads((out / "metrics.json").read_text())


def referrals(rows: list[dict]) -> str:
    """How many the model's rule referred, how the others fared, and the rule's threshold and band."""
    predicted = [r for r in rows if r["status"] == "predicted"]
    kept = [r for r in predicted if not r["refer_to_radiologist"]]
    rule = rule_text(predicted[0].get("threshold"), predicted[0].get("referral_band")) if predicted else "-"
    return (f"{len(predicted) - len(kept)} referred to a radiologist, {sum(r['label'] == r['truth'] for r in kept)}/"
            f"{len(kept)} of the others correct (referred: label not the most probable class, or {rule})")

def unreferred_contradiction(row: dict) -> bool:
    """A label other than the most probable class, not referred to a radiologist: what must never happen."""
    if row["status"] != "predicted" or row["refer_to_radiologist"]:
        return False
    probabilities = row["probabilities"]
    return row["label"] != max(probabilities, key=probabilities.get)


def print_results(rows: list[dict], metrics: dict, output: dict, out: Path) -> None:
    print()
    print(f"{'file':<34} {'true':<10} {'predicted':<10} {'confidence':>10}  {'p(pneumonia)':>12}  refer")
    correct = 0
    for row in rows:
        if row["status"] != "predicted":
            print(f"{row['file']:<34} {row['truth']:<10} {row['status']}: {row.get('reason', '')}")
            continue
        predicted = row["label"]
        correct += predicted == row["truth"]
        print(f"{row['file']:<34} {row['truth']:<10} {predicted:<10} {row['confidence']:>10.3f}  "
              f"{probability(row['pneumonia_probability'])}  {referral(row)}")
    binary = sum(r["status"] == "predicted" and (r["label"] == "normal") == (r["truth"] == "normal") for r in rows)
    print(f"\n{correct}/{len(rows)} correct ({binary}/{len(rows)} on normal vs pneumonia); {referrals(rows)}")
    contradictions = sum(unreferred_contradiction(r) for r in rows)
    met = binary >= FLOOR_BINARY and not contradictions
    print(f"floor {'met' if met else 'MISSED'}: {binary}/{len(rows)} on normal vs pneumonia (at least "
          f"{FLOOR_BINARY}), {contradictions} unreferred label(s) contradicting their own probabilities (none allowed)")
    split = output.get("dataset", {}).get("images", {})
    print(f"\nmodel {output['training']['TrainingJobName']}, trained on {split.get('train')} images, "
          f"scored on the held-out {metrics.get('evaluated_on')} split ({metrics.get('n')} images):")
    print(f"  accuracy {metrics['accuracy']:.3f}   macro-F1 {metrics['macro_f1']:.3f}   "
          f"ROC-AUC {metrics['roc_auc']:.3f}")
    if "binary" in metrics:
        b = metrics["binary"]
        print(f"  normal vs pneumonia: accuracy {b['accuracy']:.3f}  AUC {b['roc_auc']:.3f}  "
              f"sensitivity {b['sensitivity']:.3f}  specificity {b['specificity']:.3f}")
    calibration = metrics.get("calibration", {})
    if calibration:
        print(f"  calibration error (ECE) {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f} "
              f"after temperature scaling (T={calibration['temperature']:.2f})")
    print(f"\noutputs in {out}: predictions/ (one JSON per X-ray), metrics.json, report/ "
          f"({', '.join(sorted(p.name for p in (out / 'report').iterdir()))}), model.tar.gz", file=sys.stdout)
