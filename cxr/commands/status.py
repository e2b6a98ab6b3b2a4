"""`cxr status`: pipeline runs, endpoint state, the serving model, its metrics and evaluation report, image counts."""

from __future__ import annotations

import json

from botocore.config import Config
from botocore.exceptions import ClientError

from cxr import reviews, target
from infra import wiring
from lambdas.domain import field_performance, layout, site_threshold, threshold_amendment

REPORT_URL_SECONDS = 3600
ADOPT, RETRAIN = "adopt", "retrain"
"""How the serving model can take the site's threshold (``print_threshold``)."""


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
    references, metrics = {}, None
    if report["endpoint"].get("run_id"):
        metrics = serving_metrics(deployment, report["endpoint"]["run_id"])
        report["endpoint"]["threshold_servable"] = threshold_amendment.servable((metrics or {}).get("decision") or {})
        report["model_metrics"] = summarise_metrics(metrics) if metrics else None
        report["model_report"] = model_report(deployment, report["endpoint"]["run_id"])
        threshold = report["endpoint"].get("threshold")
        if threshold:  # a site's adopted threshold: the amendment's own figures, under the id its answers give
            metrics = serving_metrics(deployment, threshold_amendment.run_id(report["endpoint"]["run_id"],
                                                                             float(threshold)))
        if metrics and metrics.get("model_id"):  # models trained before metrics.json named them have no figures here
            report["endpoint"]["model_id"] = metrics["model_id"]
            references[metrics["model_id"]] = field_performance.reference_figures(metrics)
    table, sample_rate = reviews.review_settings(deployment)
    report["review"] = reviews.summary(reviews.items(deployment, table), sample_rate, references,
                                       threshold_amendment.bands(metrics or {}))
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
        "threshold": model["PrimaryContainer"].get("Environment", {}).get(threshold_amendment.THRESHOLD_VARIABLE),
    }


def run_of(artifact: str) -> str | None:
    """``s3://<bucket>/models/<run>/<job>/output/model.tar.gz`` -> ``<run>`` (the pipeline's output layout)."""
    key = layout.split_s3_uri(artifact)[1]
    parts = key.split("/")
    return parts[1] if key.startswith(layout.MODELS) and len(parts) > 2 else None


def serving_metrics(deployment: target.Target, run_id: str) -> dict | None:
    """What the Evaluate step recorded for the serving model's run (``reports/<run>/metrics.json``)."""
    s3 = deployment.client("s3")
    try:
        body = s3.get_object(Bucket=deployment.bucket(wiring.DATA), Key=layout.report_key(run_id, "metrics.json"))
    except ClientError:
        return None
    return json.loads(body["Body"].read())


def summarise_metrics(metrics: dict) -> dict:
    """The serving model's headline figures."""
    summary = {k: metrics.get(k) for k in ("evaluated_on", "n", "accuracy", "macro_f1", "roc_auc")}
    if "binary" in metrics:
        summary["binary"] = {k: metrics["binary"].get(k) for k in ("accuracy", "roc_auc", "sensitivity",
                                                                    "specificity")}
    return summary


def model_report(deployment: target.Target, run_id: str) -> str | None:
    """Where to read the serving model's HTML evaluation report (``reports/<run>/report.html``, put there by the
    Evaluate step): on AWS a presigned URL, on the offline cloud a local copy's path; None when there is none."""
    bucket, key = deployment.bucket(wiring.DATA), layout.report_key(run_id, layout.REPORT_HTML)
    s3 = deployment.client("s3")
    if deployment.is_local:
        path = target.LOCAL_DIR / "reports" / run_id / layout.REPORT_HTML
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3.download_file(bucket, key, str(path))
        except ClientError:
            return None
        return str(path)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return None
    # The data bucket is SSE-KMS: only a Signature Version 4 URL can read its objects (AWS knowledge center,
    # "s3-kms-signature-version-error"); the URL lasts at most as long as the credentials that sign it.
    signer = deployment.client("s3", config=Config(signature_version="s3v4"))
    return signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                         ExpiresIn=REPORT_URL_SECONDS)


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
             else "")
          + (f", at the site's adopted threshold {endpoint['threshold']} (the figures below are the model's own)"
             if endpoint.get("threshold") else ""))
    metrics = report.get("model_metrics")
    if metrics:
        line = (f"  metrics on the {metrics['evaluated_on']} split ({metrics['n']} images): accuracy "
                f"{metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, ROC-AUC {metrics['roc_auc']:.3f}")
        if "binary" in metrics:
            b = metrics["binary"]
            line += (f"; normal vs pneumonia AUC {b['roc_auc']:.3f}, sensitivity {b['sensitivity']:.3f}, "
                     f"specificity {b['specificity']:.3f}")
        print(line)
    if report.get("model_report"):
        where = "valid for an hour" if report["model_report"].startswith("http") else "local copy"
        print(f"  evaluation report ({where}): {report['model_report']}")
    print("counts: " + ", ".join(f"{n} {name}" for name, n in report["counts"].items()))
    print_review(report["review"])
    print_field(report["review"]["field"], report["endpoint"].get("model_id"),
                report["endpoint"].get("threshold_servable", False))


def print_review(summary: dict) -> None:
    """The review queue and model-vs-reviewer agreement (``cxr.reviews``)."""
    tasks = ", ".join(f"{n} {status}" for status, n in summary["tasks"].items()) or "none"
    agreement = summary["agreement"]
    print(f"review: tasks {tasks}; {summary['verdicts']} verdict(s)")
    if agreement["overall"]["n"]:
        def rate(r: dict) -> str:
            return f"{r['agree']}/{r['n']} ({r['rate']:.0%})"
        print(f"  model agrees with the reviewer: {rate(agreement['overall'])}; per class: "
              + ", ".join(f"{name} {rate(r)}" for name, r in agreement["per_class"].items())
              + (f"; quality-control sample {rate(agreement['quality_control'])}"
                 if agreement["quality_control"]["n"] else ""))
        print("  per month: " + ", ".join(f"{month} {rate(r)}" for month, r in agreement["per_month"].items()))


MEASURE_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity",
                 "subtype_accuracy": "bacterial vs viral accuracy"}


def print_field(field: dict, serving: str | None, servable: bool = False) -> None:
    """Each reviewed model's figures on this site's patients (``field_performance``), the serving model first,
    and a warning for every measure whose whole interval lies below the model's own; how to serve the site's
    threshold only for the serving model (``servable``: its artifact can), which ``adopt-threshold`` amends."""
    if not field:
        return
    print("on this site's patients (radiologists' verdicts, each weighted by how its task was drawn; 95 % intervals):")
    for model in sorted(field, key=lambda m: (m != serving, m)):
        found = field[model]
        print(f"  {model}{' (serving)' if model == serving else ''}:")
        for name, figure in found["measures"].items():
            label = MEASURE_NAMES[name]
            if figure["estimate"] is None:
                print(f"    {label}: {figure['note']} ({figure['cases']} reviewed)")
                continue
            text = (f"    {label} {figure['estimate']:.3f} ({figure['interval'][0]:.3f}-{figure['interval'][1]:.3f}, "
                    f"{figure['cases']} cases)")
            if "model_figure" in figure:
                text += (f"; measured {figure['model_figure']:.3f} (at least {figure['model_figure_lower']:.3f})"
                         + (": BELOW" if figure["below_model_figure"] else ""))
            print(text)
        print_threshold(found.get("threshold"), (ADOPT if servable else RETRAIN) if model == serving else None)
        for name in found["below_model_figure"]:
            print(f"  WARNING: {MEASURE_NAMES[name]} on this site's patients is below what this model was measured at: "
                  "its figures do not describe these X-rays. Plan by the figure above, and train on the reviewed "
                  "X-rays (the review_dataset setting) before relying on this call.")


def print_threshold(fitted: dict | None, serve: str | None = None) -> None:
    """The threshold this site's verdicts call for (``site_threshold``), beside the model's own, and how to serve
    it: ``ADOPT`` (``cxr models adopt-threshold``), ``RETRAIN`` (a model trained before it could be), None."""
    if not fitted or "model_threshold" not in fitted:
        return
    if fitted["threshold"] is None:
        print(f"    threshold: {fitted['note']}")
        return

    def figures(at: dict) -> str:
        sensitivity, specificity = at["sensitivity"], at["specificity"]
        return (f"sensitivity {sensitivity['estimate']:.3f} (at least {sensitivity['lower_bound']:.3f}), "
                f"specificity {specificity['estimate']:.3f} ({specificity['interval'][0]:.3f}-"
                f"{specificity['interval'][1]:.3f})")

    target, model = fitted["target_sensitivity"], fitted["model_threshold"]
    if "at_threshold" not in fitted:  # kept: not yet shown either way
        at_model = figures(fitted["at_model_threshold"])
        print(f"    threshold: keep the model's {model:.3f} ({at_model}): {fitted['note']}")
        return
    if fitted["move"] == site_threshold.KEEP:
        print(f"    threshold: the model's {model:.3f} gives the most specificity in its referral band shown to keep "
              f"sensitivity >= {target} here: {figures(fitted['at_model_threshold'])}")
        return
    change = fitted["specificity_change"]
    print(f"    threshold for this site: {fitted['threshold']:.3f}, the most specificity in the model's referral band "
          f"shown to keep sensitivity >= {target} here: {figures(fitted['at_threshold'])}")
    print(f"      at the model's {model:.3f}: {figures(fitted['at_model_threshold'])}; the site's threshold changes "
          f"specificity by {change['estimate']:+.3f} ({change['interval'][0]:+.3f} to {change['interval'][1]:+.3f})")
    if serve == ADOPT:
        print(f"      to serve it: `cxr models adopt-threshold {fitted['threshold']:.3f}`, then `cxr models promote` "
              "the package it registers")
    elif serve == RETRAIN:
        print("      to serve it: train the model again; this one was trained before a model could serve an adopted "
              "threshold")
