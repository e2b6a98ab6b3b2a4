"""`cxr predict FILE...`: upload to ``incoming/`` and wait for each prediction, or call the endpoint directly.

``--explain DIR`` writes each prediction as ``DIR/<file>.json`` and the class-activation overlay beside it as
``DIR/<file>.overlay.png``: through the bucket the upload asks the predict function for it (S3 user metadata),
with ``--direct`` the endpoint is sent inference.py's JSON request with ``"explain": true``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cxr import operations, source_names, target
from cxr.errors import UsageError, UserError
from infra import wiring
from infra.version import code_version
from lambdas.domain import audit, imaging, layout, uploads
from lambdas.predict import endpoint_request


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify X-rays with the deployed model",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--direct", action="store_true",
                        help="invoke the endpoint directly (normalised here) instead of going through the bucket")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--explain", type=Path, metavar="DIR",
                        help="write each prediction's JSON and its class-activation overlay PNG into DIR")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for predictions")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    names = [f.name for f in args.files]
    if args.explain and len(set(names)) < len(names):
        raise UsageError("--explain names its files after the inputs: give files with distinct names")
    deployment = target.resolve(args)
    if args.direct:
        results = {path: predict_direct(deployment, path, explain=bool(args.explain)) for path in args.files}
    else:
        bucket = deployment.bucket(wiring.INFERENCE)
        name_of = source_names.namer(deployment.client("secretsmanager"), deployment.stage, bucket)
        results = operations.predict_files(deployment.client("s3"), bucket, args.files, name_of,
                                           timeout_s=args.timeout, prefix=run_prefix(), explain=bool(args.explain))
        for result in results.values() if args.explain else ():  # referred cases have one under explain_referrals
            overlay = operations.read_overlay(deployment.client("s3"), bucket, result)
            if overlay is not None:
                result["overlay_png"] = overlay
    if args.explain:
        write_explained(args.explain, results)
    if args.json:
        print(json.dumps([{"file": str(path), **result} for path, result in results.items()], indent=1))
    else:
        print_table(results)
    return 0 if all(r["status"] == "predicted" for r in results.values()) else 1


def run_prefix() -> str:
    """This run's own folder under ``incoming/``: the time for people, a random part so two runs never meet."""
    return time.strftime("cli-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8] + "/"


def predict_direct(deployment: target.Target, path: Path, explain: bool = False) -> dict:
    """The same normaliser as the predict Lambda, then InvokeEndpoint with the stored PNG (and the explain flag)."""
    try:
        image, _ = uploads.normalise(path.read_bytes())
    except imaging.RejectedImage as exc:
        return {"status": "rejected", "reason": exc.code, "message": exc.message}
    runtime = deployment.client("sagemaker-runtime")
    content_type, body = endpoint_request(image.png, explain)
    try:
        response = runtime.invoke_endpoint(EndpointName=deployment.endpoint_name, ContentType=content_type,
                                           Accept="application/json", Body=body)
    except runtime.exceptions.ClientError as exc:
        raise UserError(f"endpoint {deployment.endpoint_name}: {exc.response['Error'].get('Message', exc)} "
                        "(is a model deployed? see `cxr status`)") from None
    answer = json.loads(response["Body"].read())
    result = {"status": "predicted", "endpoint": deployment.endpoint_name, **answer,
              "audit": audit.fields(answer, code_version=code_version()),
              "predicted_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
    if "explanation" in result:
        explanation = result.pop("explanation")
        result["explanation"] = {"method": explanation["method"]}
        result["overlay_png"] = base64.b64decode(explanation["overlay_png"])
    return result


def write_explained(folder: Path, results: dict[Path, dict]) -> None:
    """``<file>.json`` and, when the prediction has one, ``<file>.overlay.png`` beside it (the PNG's bytes leave
    the result, which is printed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path, result in results.items():
        overlay = result.pop("overlay_png", None)
        if overlay is not None:
            target_path = folder / f"{path.name}{layout.OVERLAY_SUFFIX}"
            target_path.write_bytes(overlay)
            result.setdefault("explanation", {})["overlay"] = str(target_path)
        (folder / f"{path.name}.json").write_text(json.dumps(result, indent=1))


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
