"""`cxr predict FILE...`: upload to ``incoming/`` and wait for each prediction, or call the endpoint directly."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cxr import operations, target
from cxr.errors import UsageError, UserError
from infra import wiring
from infra.version import code_version
from lambdas.domain import audit, imaging


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify X-rays with the deployed model",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--direct", action="store_true",
                        help="invoke the endpoint directly (normalised here) instead of going through the bucket")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for predictions")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    deployment = target.resolve(args)
    if args.direct:
        results = {path: predict_direct(deployment, path) for path in args.files}
    else:
        results = operations.predict_files(deployment.client("s3"), deployment.bucket(wiring.INFERENCE),
                                           args.files, timeout_s=args.timeout, prefix=run_prefix())
    if args.json:
        print(json.dumps([{"file": str(path), **result} for path, result in results.items()], indent=1))
    else:
        print_table(results)
    return 0 if all(r["status"] == "predicted" for r in results.values()) else 1


def run_prefix() -> str:
    """This run's own folder under ``incoming/``: the time for people, a random part so two runs never meet."""
    return time.strftime("cli-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8] + "/"


def predict_direct(deployment: target.Target, path: Path) -> dict:
    """The same normaliser as the predict Lambda, then InvokeEndpoint with the stored PNG."""
    try:
        image = imaging.normalise(path.read_bytes())
    except imaging.RejectedImage as exc:
        return {"status": "rejected", "reason": exc.code, "message": exc.message}
    runtime = deployment.client("sagemaker-runtime")
    try:
        response = runtime.invoke_endpoint(EndpointName=deployment.endpoint_name, ContentType="image/png",
                                           Accept="application/json", Body=image.png)
    except runtime.exceptions.ClientError as exc:
        raise UserError(f"endpoint {deployment.endpoint_name}: {exc.response['Error'].get('Message', exc)} "
                        "(is a model deployed? see `cxr status`)") from None
    answer = json.loads(response["Body"].read())
    return {"status": "predicted", "endpoint": deployment.endpoint_name, **answer,
            "audit": audit.fields(answer, code_version=code_version()),
            "predicted_at": datetime.now(UTC).isoformat(timespec="milliseconds")}


def print_table(results: dict[Path, dict]) -> None:
    print(f"{'file':<36} {'label':<10} {'confidence':>10} {'p(pneumonia)':>12}  refer")
    for path, r in results.items():
        if r["status"] != "predicted":
            print(f"{path.name:<36} {r['status']}: {r.get('reason', '')} {r.get('message', '')}")
            continue
        print(f"{path.name:<36} {r['label']:<10} {r['confidence']:>10.3f} {probability(r['pneumonia_probability'])}  "
              f"{referral(r)}")


def probability(value: float | None) -> str:
    """p(pneumonia), which a model without a normal class does not have."""
    return f"{'-':>12}" if value is None else f"{value:>12.3f}"


def rule_text(threshold: float | None, band: list[float] | None) -> str:
    """The model's threshold on p(pneumonia) and the band around it that is referred."""
    if threshold is None or band is None:
        return "no binary threshold"
    return f"p(pneumonia) in [{band[0]:.3f}, {band[1]:.3f}] around the threshold {threshold:.3f}"


def referral(record: dict) -> str:
    """``yes (near_threshold, ...)`` with the rules that fired, or ``no``: the model's own decision rule."""
    if record.get("refer_to_radiologist") is None:
        return "-"
    reasons = record.get("referral_reasons") or []
    return f"yes ({', '.join(reasons)})" if record["refer_to_radiologist"] else "no"
