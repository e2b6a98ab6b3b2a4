"""`cxr status`: pipeline runs, endpoint state, the serving model and its metrics, image counts."""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from cxr import target
from infra import wiring
from lambdas.domain import layout


def register(subparsers) -> None:
    parser = subparsers.add_parser("status", help="show pipeline runs, the endpoint, the model and counts",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=5, help="how many recent pipeline runs to show")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    deployment = target.resolve(args)
    report = collect(deployment, args.runs)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print_report(report)
    return 0


def collect(deployment: target.Target, runs: int) -> dict:
    sfn = deployment.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=deployment.state_machine_arn(), maxResults=runs)["executions"]
    report = {
        "stage": deployment.stage,
        "target": deployment.endpoint_url or f"aws {deployment.account} {deployment.region}",
        "runs": [{"run_id": e["name"], "status": e["status"], "started": e["startDate"],
                  "stopped": e.get("stopDate")} for e in executions],
        "endpoint": endpoint_state(deployment),
        "counts": counts(deployment),
    }
    if report["endpoint"].get("run_id"):
        report["model_metrics"] = model_metrics(deployment, report["endpoint"]["run_id"])
    return report


def endpoint_state(deployment: target.Target) -> dict:
    sagemaker = deployment.client("sagemaker")
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=deployment.endpoint_name)
    except ClientError:
        return {"name": deployment.endpoint_name, "status": "not deployed"}
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    artifact = model["PrimaryContainer"]["ModelDataUrl"]
    return {
        "name": deployment.endpoint_name,
        "status": endpoint["EndpointStatus"],
        "model": variant["ModelName"],
        "mode": "serverless" if "ServerlessConfig" in variant else variant.get("InstanceType", "instances"),
        "artifact": artifact,
        "run_id": run_of(artifact),
    }


def run_of(artifact: str) -> str | None:
    """``s3://<bucket>/models/<run>/<job>/output/model.tar.gz`` -> ``<run>`` (the pipeline's output layout)."""
    key = layout.split_s3_uri(artifact)[1]
    parts = key.split("/")
    return parts[1] if key.startswith(layout.MODELS) and len(parts) > 2 else None


def model_metrics(deployment: target.Target, run_id: str) -> dict | None:
    """What the Evaluate step recorded for the serving model's run (``reports/<run>/metrics.json``)."""
    s3 = deployment.client("s3")
    try:
        body = s3.get_object(Bucket=deployment.bucket(wiring.DATA), Key=f"{layout.REPORTS}{run_id}/metrics.json")
    except ClientError:
        return None
    metrics = json.loads(body["Body"].read())
    summary = {k: metrics.get(k) for k in ("evaluated_on", "n", "accuracy", "macro_f1", "roc_auc")}
    if "binary" in metrics:
        summary["binary"] = {k: metrics["binary"].get(k) for k in ("accuracy", "roc_auc", "sensitivity",
                                                                    "specificity")}
    return summary


def counts(deployment: target.Target) -> dict[str, int]:
    s3 = deployment.client("s3")
    wanted = {"processed images": (wiring.DATA, layout.PROCESSED, ".png"),
              "quarantined uploads": (wiring.DATA, layout.QUARANTINE, ".error.json"),
              "predictions": (wiring.INFERENCE, layout.PREDICTIONS, ".json"),
              "rejected for prediction": (wiring.INFERENCE, layout.REJECTED, ".error.json")}
    result = {}
    for name, (role, prefix, suffix) in wanted.items():
        paginator = s3.get_paginator("list_objects_v2")
        result[name] = sum(obj["Key"].endswith(suffix) for page in paginator.paginate(
            Bucket=deployment.bucket(role), Prefix=prefix) for obj in page.get("Contents", []))
    return result


def print_report(report: dict) -> None:
    print(f"stage {report['stage']} on {report['target']}")
    print("pipeline runs:" if report["runs"] else "pipeline runs: none yet (`cxr train`)")
    for run in report["runs"]:
        print(f"  {run['run_id']:<40} {run['status']:<10} started {run['started']}")
    endpoint = report["endpoint"]
    print(f"endpoint {endpoint['name']}: {endpoint['status']}"
          + (f", model {endpoint['model']} ({endpoint['mode']}), run {endpoint['run_id']}" if "model" in endpoint
             else ""))
    metrics = report.get("model_metrics")
    if metrics:
        line = (f"  metrics on the {metrics['evaluated_on']} split ({metrics['n']} images): accuracy "
                f"{metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, ROC-AUC {metrics['roc_auc']:.3f}")
        if "binary" in metrics:
            b = metrics["binary"]
            line += (f"; normal vs pneumonia AUC {b['roc_auc']:.3f}, sensitivity {b['sensitivity']:.3f}, "
                     f"specificity {b['specificity']:.3f}")
        print(line)
    print("counts: " + ", ".join(f"{n} {name}" for name, n in report["counts"].items()))
