"""Evaluate Lambda (training pipeline): the quality gate on the trained model's own ``metrics.json``.

Reads ``metrics.json`` straight out of ``model.tar.gz`` on S3 (streamed: the archive also holds the
weights), compares the configured metrics with their minimums, writes the metrics, the verdict and
the model's HTML evaluation report (``report/report.html`` in the archive) to ``reports/<run>/``
and returns the verdict for the state machine's Choice state. A model that misses the gate is a
result, not an error; an artifact without metrics is an error.

The same stream gives the archive's SHA-256 (``artifact_sha256``): this is the first step that sees
the packed artifact whole (the training script writes what goes into it, SageMaker packs it), so the
digest is taken here, recorded in the report and handed to the deploy step, which stamps it on the
SageMaker model; every prediction then names the exact bytes that produced it. The same pass keeps the few
members a predict function serves from and writes them as the artifact's lean serving copy
(``serving/<run>/model.tar``, ``lambdas.domain.serving_copy``), whose digest the register step records.

Whatever the configured minimums, a model must record the decision rule its endpoint applies
(``metrics.json`` ``decision``, written by ``training_job/decision.py``): a positive log-odds margin
and, with a binary view, a threshold inside (0, 1) lying in its referral band. A model that
records none (trained before the rule) or a band apart from its threshold is refused, since its
labels could contradict its probabilities unreferred. How often it may refer is a gate entry like
any other: ``decision.coverage``, the share of evaluated images decided without referral.
"""

from __future__ import annotations

import json
import math
import os
import tarfile
from collections.abc import Mapping

from aws_lambda_powertools import Logger

from lambdas import aws
from lambdas.domain import audit, layout, serving_copy

logger = Logger(service="cxr-evaluate-model")

METRICS_FILE = "metrics.json"
REPORT_MEMBER = f"report/{layout.REPORT_HTML}"
"""Written by ``training_job/train.py`` into the model directory (``report.REPORT_FILE``)."""
BENCHMARK_FILE = "benchmark.json"
"""The model's answers on the dataset's benchmark set (``training_job/benchmark.py``); absent in older archives."""


class ModelArtifactError(RuntimeError):
    """The artifact is not a model archive with a readable ``metrics.json``: nothing to judge."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    try:
        bucket, key = layout.split_s3_uri(uri)
    except ValueError:
        key = ""
    if not key:
        raise ModelArtifactError(f"not an S3 object URI: {uri!r}")
    return bucket, key


def read_artifact(bucket: str, key: str) -> tuple[dict, bytes | None, str, bytes | None, dict[str, bytes]]:
    """``metrics.json``, the HTML evaluation report (None in archives older than it), the SHA-256 of
    the whole object, ``benchmark.json`` (None in older archives) and the serving copy's candidate members
    from a gzipped tar on S3, in one streamed read: the weights and ``code/lib`` are never held in memory."""
    body = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    stream, found, serving = audit.DigestingReader(body), {}, {}
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name in (METRICS_FILE, REPORT_MEMBER, BENCHMARK_FILE):
                    found[name] = archive.extractfile(member).read()
                elif member.isfile() and serving_copy.candidate(name):
                    serving[name] = archive.extractfile(member).read()
        metrics = json.loads(found[METRICS_FILE]) if METRICS_FILE in found else None
        digest = stream.drain()
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"cannot read {METRICS_FILE} from the model archive: {exc}") from exc
    finally:
        body.close()
    if metrics is None:
        raise ModelArtifactError(f"the model archive has no {METRICS_FILE}")
    return metrics, found.get(REPORT_MEMBER), digest, found.get(BENCHMARK_FILE), serving


def write_serving_copy(bucket: str, run_id: str, members: dict[str, bytes]) -> dict:
    """``serving/<run>/model.tar`` and its SHA-256, or None for both when the archive holds no ``model.json``
    (archives made by hand, as the tests' are): the predict function then streams ``model.tar.gz`` itself."""
    if serving_copy.CONFIG not in members:
        return {"serving_artifact": None, "serving_sha256": None}
    try:
        data, _ = serving_copy.build(members)
    except serving_copy.IncompleteArtifact as exc:
        raise ModelArtifactError(str(exc)) from exc
    key = layout.serving_key(run_id)
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/x-tar")
    return {"serving_artifact": f"s3://{bucket}/{key}", "serving_sha256": serving_copy.sha256(data)}


def metric(metrics: Mapping, path: str) -> float | None:
    """A number at a dotted path (``binary.roc_auc``), or None when absent or not a number."""
    value: object = metrics
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return _number(value)


def _number(value: object) -> float | None:
    return None if isinstance(value, bool) or not isinstance(value, int | float) else float(value)


def decision_rule_problem(metrics: Mapping) -> str | None:
    """Why the recorded decision rule cannot be served, or None when it can."""
    rule = metrics.get("decision")
    if not isinstance(rule, Mapping):
        return f"{METRICS_FILE} records no decision rule (a model trained before the referral rule): retrain it"
    margin, threshold, band = _number(rule.get("margin")), rule.get("threshold"), rule.get("band")
    if margin is None or not 0 < margin < math.inf:
        return f"decision.margin {rule.get('margin')!r} is not a positive number of log-odds"
    if threshold is None and band is None and "binary" not in metrics:
        return None  # no normal class: the margin applies between the two most probable classes
    if _number(threshold) is None or not 0 < threshold < 1:
        return f"decision.threshold {threshold!r} is not inside (0, 1)"
    low, high = (_number(v) for v in band) if isinstance(band, list) and len(band) == 2 else (None, None)
    if low is None or high is None or not 0 <= low <= threshold <= high <= 1 or low == high:
        return f"decision.band {band!r} does not contain the threshold {threshold} inside [0, 1]"
    return None


def judge(metrics: Mapping, gate: Mapping[str, float]) -> dict:
    """The verdict: a decision rule the endpoint can serve, and every gated metric present and at or above
    its minimum."""
    problem = decision_rule_problem(metrics)
    checks = []
    for path, minimum in sorted(gate.items()):
        value = metric(metrics, path)
        passed = value is not None and value >= minimum
        checks.append({"metric": path, "minimum": minimum, "value": value, "passed": passed})
    failures = [problem] if problem else []
    failures += [
        f"{c['metric']} is missing from {METRICS_FILE}" if c["value"] is None
        else f"{c['metric']} {c['value']:.4f} < {c['minimum']:.4f}"
        for c in checks if not c["passed"]
    ]
    return {"passed": not failures, "decision_rule": {"passed": problem is None, "problem": problem},
            "checks": checks, "failures": failures}


def load_gate(env: Mapping[str, str]) -> dict[str, float]:
    gate = json.loads(env["QUALITY_GATE"])
    if not isinstance(gate, dict) or not gate:
        raise ValueError("QUALITY_GATE must be a non-empty JSON object of metric path -> minimum")
    return {str(k): float(v) for k, v in gate.items()}


@logger.inject_lambda_context(log_event=False)
def handler(event: dict, context) -> dict:
    """Input ``{"run_id", "model_artifact": "s3://.../model.tar.gz"}``; output the verdict and the artifact's digest."""
    run_id = str(event["run_id"])
    bucket, key = parse_s3_uri(event["model_artifact"])
    gate = load_gate(os.environ)
    metrics, report_html, digest, benchmark_answers, serving = read_artifact(bucket, key)
    verdict = judge(metrics, gate)
    data_bucket = os.environ["DATA_BUCKET"]
    report = {"run_id": run_id, "model_artifact": event["model_artifact"], "artifact_sha256": digest,
              **write_serving_copy(data_bucket, run_id, serving),
              "code_version": os.environ.get(audit.CODE_VERSION_VARIABLE, audit.UNKNOWN), **verdict}
    s3 = aws.client("s3")
    s3.put_object(Bucket=data_bucket, Key=layout.report_key(run_id, METRICS_FILE),
                  Body=json.dumps(metrics, indent=2).encode(), ContentType="application/json")
    s3.put_object(Bucket=data_bucket, Key=layout.report_key(run_id, "gate.json"),
                  Body=json.dumps(report, indent=2).encode(), ContentType="application/json")
    if benchmark_answers is not None:  # the champion gate pairs these with the champion's (lambdas.register_model)
        s3.put_object(Bucket=data_bucket, Key=layout.report_key(run_id, BENCHMARK_FILE), Body=benchmark_answers,
                      ContentType="application/json")
    if report_html is not None:
        s3.put_object(Bucket=data_bucket, Key=layout.report_key(run_id, layout.REPORT_HTML), Body=report_html,
                      ContentType="text/html; charset=utf-8")
    logger.info("quality gate", extra={"run_id": run_id, "passed": verdict["passed"], "failures": verdict["failures"],
                                       "artifact_sha256": digest})
    return {**report, "report_uri": f"s3://{data_bucket}/{layout.REPORTS}{run_id}/",
            "benchmark_uri": (f"s3://{data_bucket}/{layout.report_key(run_id, BENCHMARK_FILE)}"
                              if benchmark_answers is not None else None)}
