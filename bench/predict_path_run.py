"""One measured process of ``bench/predict_path.py``: the real predict handler, upload events in, prediction JSON out.

Run by the driver with ``PYTHONPATH`` set to one code tree (today's or the new), so the same script measures
both. Usage: ``python predict_path_run.py MODE MODEL_DIR IMAGE WARM SPAWNED_AT``; prints one JSON line. ``MODE``
is an ``endpoint_mode``, or ``lambda-tar``: lambda mode on a package with no serving copy, whose whole
``model.tar.gz`` the function streams (the previous stop's path, kept for packages registered before copies).

Scaffolding that is not the function's (moto, its buckets and tables, the endpoint's own model load) is timed
and subtracted from the cold start: cold start = process start (``SPAWNED_AT``, wall clock) to the first
prediction JSON, dependencies and, in ``lambda`` mode, the model's download and load included. ``cold_start_cpu_s``
is the CPU time the process spent on it (user + system, interpreter start included, scaffolding's subtracted):
what a core of its own would take, where a shared machine's load inflates the wall clock. With an
endpoint (``serverless``), the endpoint answers in this process through a botocore hook running the artifact's
own ``inference.py``; its container start is measured apart by the driver.
"""

from __future__ import annotations

import time

STARTED = time.time()

import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import boto3  # noqa: E402  (the function imports it too: counted in the cold start)

SCAFFOLD_STARTED, SCAFFOLD_CPU = time.time(), time.process_time()
from moto import mock_aws  # noqa: E402

BUCKET, GROUP = "bench-inference", "bench-models"


def scaffold(mode: str, model_dir: Path):
    """moto's account with the predict function's bucket, tables and parameter; the model in S3 and the registry."""
    os.environ.update({"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "INFERENCE_BUCKET": BUCKET, "PREDICTIONS_TABLE": "predictions", "IDEMPOTENCY_TABLE": "idem",
                       "ENDPOINT_PARAMETER": "/bench/endpoint", "SOURCE_STATE_TABLE": "state",
                       "ENDPOINT_MODE": mode.removesuffix("-tar"), "MODEL_PACKAGE_GROUP": GROUP,
                       "CXR_ONNX_THREADS": "1",
                       "POWERTOOLS_METRICS_NAMESPACE": "bench", "POWERTOOLS_LOG_LEVEL": "WARNING",
                       "EXPLAIN_REFERRALS": "false", "PSEUDONYM_SECRET_ARN": "bench-pseudonyms"})
    s3, ddb = boto3.client("s3"), boto3.client("dynamodb")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for name, keys in (("predictions", [("pk", "HASH"), ("sk", "RANGE")]), ("idem", [("id", "HASH")]),
                       ("state", [("pk", "HASH"), ("sk", "RANGE")])):
        ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": n, "KeyType": t} for n, t in keys],
                         AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n, _ in keys])
    boto3.client("ssm").put_parameter(Name="/bench/endpoint", Value="bench-endpoint", Type="String")
    boto3.client("secretsmanager").create_secret(Name="bench-pseudonyms", SecretString="k" * 40)  # upload names
    if mode.startswith("lambda"):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(model_dir, arcname=".")
        body = buffer.getvalue()
        s3.put_object(Bucket=BUCKET, Key="models/bench/model.tar.gz", Body=body)
        metadata = {"cxr:approved-at": "2026-11-30T00:00:00+00:00"}
        if mode == "lambda":  # the serving copy the driver built as the Evaluate step does, recorded as Register does
            copy = model_dir.with_name(f"{model_dir.name}.serving.tar").read_bytes()
            s3.put_object(Bucket=BUCKET, Key="serving/bench/model.tar", Body=copy)
            metadata.update({"cxr:serving-artifact": f"s3://{BUCKET}/serving/bench/model.tar",
                             "cxr:serving-sha256": hashlib.sha256(copy).hexdigest()})
        sagemaker = boto3.client("sagemaker")
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        sagemaker.create_model_package(
            ModelPackageGroupName=GROUP, ModelApprovalStatus="Approved", CustomerMetadataProperties=metadata,
            InferenceSpecification={"Containers": [{
                "Image": "bench", "ModelDataUrl": f"s3://{BUCKET}/models/bench/model.tar.gz",
                "Environment": {"CXR_ARTIFACT_SHA256": hashlib.sha256(body).hexdigest()}}],
                "SupportedContentTypes": ["image/png"], "SupportedResponseMIMETypes": ["application/json"]})
        return None
    code = model_dir / "code"
    sys.path.insert(0, str(code))
    spec = importlib.util.spec_from_file_location("bench_endpoint", code / "inference.py")
    handler = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = handler
    spec.loader.exec_module(handler)
    return handler, handler.model_fn(str(model_dir))


def request_made(normalise, to_endpoint: bool):
    """The normaliser, and with an endpoint the PNG the function then sends it, so that both are timed.

    Today's normaliser encodes the PNG itself; since it became lazy the function encodes it just before the
    call (``wire_png`` now, ``png`` in the trees between), outside both the normaliser and the endpoint."""
    def made(data):
        image, data_set = normalise(data)
        if to_endpoint:
            _ = image.wire_png if hasattr(type(image), "wire_png") else image.png  # cached: sent, not made again
        return image, data_set
    return made


def main() -> None:
    mode, model_dir, image, warm, spawned_at = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), \
        float(sys.argv[5])
    data = image.read_bytes()
    with mock_aws():
        endpoint = scaffold(mode, model_dir)
        scaffold_s, scaffold_cpu_s = time.time() - SCAFFOLD_STARTED, time.process_time() - SCAFFOLD_CPU
        rss_scaffold = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        from cxr.local import s3_events
        from lambdas import aws, predict

        compute = {"normalise": [], "model": []}
        cpu = {"normalise": [], "model": []}  # this thread's CPU time: what another process's load does not inflate

        def timed(kind, fn):
            def wrapper(*args, **kwargs):
                started, started_cpu = time.perf_counter(), time.thread_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    compute[kind].append(time.perf_counter() - started)
                    cpu[kind].append(time.thread_time() - started_cpu)
            return wrapper

        predict.uploads.normalise = timed("normalise", request_made(predict.uploads.normalise, endpoint is not None))
        if endpoint is not None:
            handler, model = endpoint

            def answer(params, **_):
                started, started_cpu = time.perf_counter(), time.thread_time()
                request = handler.input_fn(params["body"], params["headers"]["Content-Type"])  # the wire request
                body, _ = handler.output_fn(handler.predict_fn(request, model), "application/json")
                compute["model"].append(time.perf_counter() - started)
                cpu["model"].append(time.thread_time() - started_cpu)
                payload = body.encode()
                from botocore.response import StreamingBody

                return (types.SimpleNamespace(status_code=200, headers={}), {
                    "Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"})

            aws.client("sagemaker-runtime").meta.events.register(
                "before-call.sagemaker-runtime.InvokeEndpoint", answer)
        else:
            from lambdas import served_model

            served_model.answer = timed("model", served_model.answer)
        context = types.SimpleNamespace(function_name="predict", memory_limit_in_mb=1769, aws_request_id="r",
                                        invoked_function_arn="arn:aws:lambda:us-east-1:1:function:predict",
                                        get_remaining_time_in_millis=lambda: 300000)
        s3 = boto3.client("s3")
        latencies = []
        for i in range(warm + 1):
            key = f"incoming/bench/{i}.jpeg"
            s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            event = s3_events.event(s3_events.record_for_object(s3, BUCKET, key))
            started = time.perf_counter()
            outcome = predict.handler(event, context)
            latencies.append(time.perf_counter() - started)
            assert outcome["predicted"] == 1, outcome
            if i == 0:
                first_at, first_cpu = time.time(), time.process_time()
                [written] = s3.list_objects_v2(Bucket=BUCKET, Prefix="predictions/")["Contents"]  # named, not keyed
                prediction = json.loads(s3.get_object(Bucket=BUCKET, Key=written["Key"])["Body"].read())
    warm_ms = sorted(1000 * t for t in latencies[1:])
    path_ms = sorted(1000 * (a + b) for a, b in zip(compute["normalise"][1:], compute["model"][1:], strict=True))
    path_cpu_ms = sorted(1000 * (a + b) for a, b in zip(cpu["normalise"][1:], cpu["model"][1:], strict=True))
    print(json.dumps({
        "mode": mode, "cold_start_s": round(first_at - spawned_at - scaffold_s, 3),
        "cold_start_cpu_s": round(first_cpu - scaffold_cpu_s, 3),
        "first_invocation_ms": round(1000 * latencies[0], 1),
        "warm_p50_ms": round(statistics.median(warm_ms), 2),
        "warm_p99_ms": round(warm_ms[min(len(warm_ms) - 1, int(0.99 * len(warm_ms)))], 2),
        "compute_p50_ms": round(statistics.median(path_ms), 2),
        "compute_cpu_p50_ms": round(statistics.median(path_cpu_ms), 2),
        "normalise_p50_ms": round(1000 * statistics.median(compute["normalise"][1:]), 2),
        "model_p50_ms": round(1000 * statistics.median(compute["model"][1:]), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "scaffold_rss_mb": round(rss_scaffold / 1024, 1), "label": prediction["label"],
        "endpoint": prediction["endpoint"], "process_started_s": round(STARTED - spawned_at, 3)}))


if __name__ == "__main__":
    main()
