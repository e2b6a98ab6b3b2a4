"""Scoring a whole folder or S3 prefix with SageMaker Batch Transform (`cxr batch-predict`).

The job runs the serving model (the same ``model.tar.gz`` and ``inference.py`` as the endpoint) over every
object under the input prefix, one object a request, with ``CXR_PER_RECORD_ERRORS=1`` so that an X-ray the
model cannot take is answered with its error rather than failing the job (``inference.py``). A local
folder's files are first uploaded to ``batch-input/<job>/``, an S3 prefix's objects copied there (server-side),
each under its position (``000000``, ``000001``...): Batch Transform names every answer after its input, and
file names in hospital exports carry patient names and MRNs, so none goes into the inference bucket's keys; the
position-to-file map stays on this machine. Answers land in ``batch-output/<job>/`` and are written to ``--out``
as one JSON per image and ``predictions.csv``, each under its own file name.

With ``endpoint_mode=lambda`` there is no SageMaker model to run: the same staged objects are sent to the predict
function, one invocation an object and a few at a time, which answers with the registry's champion and writes
each answer where Batch Transform would (``lambdas/batch_requests.py``); the answers are collected the same way.
"""

from __future__ import annotations

import csv
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.errors import UserError
from infra import wiring
from lambdas import batch_requests
from lambdas.domain import layout

PER_RECORD_ERRORS = {"CXR_PER_RECORD_ERRORS": "1"}
"""The job's container environment (``training_job/inference.py``, ``PER_RECORD_ERRORS_VARIABLE``)."""
CSV_FIELDS = ("file", "status", "label", "confidence", "pneumonia_probability", "refer_to_radiologist", "error",
              "model_id", "artifact_sha256")


@dataclass
class BatchScoring:
    sagemaker: Any
    s3: Any
    stage: str
    inference_bucket: str
    instance_type: str = "ml.c6i.large"
    poll_seconds: float = 15.0
    functions: Any = None
    predict_function: str | None = None
    """With ``endpoint_mode=lambda``: the Lambda client and the predict function that scores each object."""
    workers: int = 8
    """Invocations in flight in lambda mode: well under the function's reserved concurrency (10 at least)."""

    def serving_model(self) -> str:
        """The SageMaker model the stage's endpoint serves."""
        try:
            endpoint = self.sagemaker.describe_endpoint(EndpointName=wiring.endpoint_name(self.stage))
        except self.sagemaker.exceptions.ClientError:
            raise UserError(f"no endpoint {wiring.endpoint_name(self.stage)}: train and deploy a model first") from None
        config = self.sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        return config["ProductionVariants"][0]["ModelName"]

    def upload(self, folder: Path, job: str) -> tuple[str, dict[str, str]]:
        """A folder's files under ``batch-input/<job>/<position>``: the input prefix and position -> file name."""
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise UserError(f"no files under {folder}")
        prefix, staged = f"{layout.BATCH_INPUT}{job}/", {}
        for position, path in enumerate(files):
            staged[f"{position:06d}"] = path.relative_to(folder).as_posix()
            self.s3.put_object(Bucket=self.inference_bucket, Key=f"{prefix}{position:06d}", Body=path.read_bytes())
        return f"s3://{self.inference_bucket}/{prefix}", staged

    def copy(self, uri: str, job: str) -> tuple[str, dict[str, str]]:
        """An S3 prefix's objects copied to ``batch-input/<job>/<position>``: the prefix and position -> name."""
        bucket, prefix = layout.split_s3_uri(uri)
        target, staged = f"{layout.BATCH_INPUT}{job}/", {}
        for position, name in enumerate(self.listed(uri)):
            staged[f"{position:06d}"] = name
            self.s3.copy_object(Bucket=self.inference_bucket, Key=f"{target}{position:06d}",
                                CopySource={"Bucket": bucket, "Key": prefix[: prefix.rfind("/") + 1] + name},
                                MetadataDirective="REPLACE", ContentType="application/x-image")
        return f"s3://{self.inference_bucket}/{target}", staged

    def listed(self, uri: str, suffix: str = "") -> list[str]:
        bucket, prefix = layout.split_s3_uri(uri)
        folder = prefix[: prefix.rfind("/") + 1]
        return [obj["Key"][len(folder):] for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])
            if obj["Key"].endswith(suffix) and not obj["Key"].endswith("/")]

    def run(self, source: str, out: Path, model: str | None = None,
            log: Callable[[str], None] = print) -> dict:
        job = f"{wiring.resource_prefix(self.stage)}batch-{uuid.uuid4().hex[:12]}"
        if source.startswith("s3://"):
            input_uri, names = self.copy(source if source.endswith("/") else source + "/", job)
            if not names:
                raise UserError(f"nothing to score under {source}")
        else:
            folder = Path(source)
            if not folder.is_dir():
                raise UserError(f"{source} is neither an s3:// prefix nor a folder")
            input_uri, names = self.upload(folder, job)
        output_uri = f"s3://{self.inference_bucket}/{layout.BATCH_OUTPUT}{job}/"
        if self.predict_function:
            if model:
                raise UserError("--model names a SageMaker model; with endpoint_mode=lambda the predict function "
                                "scores with the registry's champion")
            self.invoke_each(input_uri, names, log)
            return self.collect(job, output_uri, names, out, kind="lambda_batch")
        model_name = model or self.serving_model()
        self.sagemaker.create_transform_job(
            TransformJobName=job, ModelName=model_name, BatchStrategy="SingleRecord", MaxPayloadInMB=32,
            Environment=PER_RECORD_ERRORS,
            TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                            "ContentType": "application/x-image", "SplitType": "None"},
            TransformOutput={"S3OutputPath": output_uri, "Accept": "application/json", "AssembleWith": "None"},
            TransformResources={"InstanceType": self.instance_type, "InstanceCount": 1})
        log(f"transform job {job}: {len(names)} file(s) from {source} with model {model_name}")
        status = self.wait(job, output_uri, len(names), log)
        if status["TransformJobStatus"] != "Completed":
            raise UserError(f"transform job {job} {status['TransformJobStatus'].lower()}: "
                            f"{status.get('FailureReason', '')}")
        return self.collect(job, output_uri, names, out)

    def invoke_each(self, input_uri: str, names: dict[str, str], log: Callable[[str], None]) -> None:
        """Each staged object through the predict function (:func:`lambdas.batch_requests.request`), ``workers`` at
        a time."""
        _, prefix = layout.split_s3_uri(input_uri)
        log(f"batch of {len(names)} file(s) through the predict function {self.predict_function}")

        def invoke(staged: str) -> str | None:
            response = self.functions.invoke(FunctionName=self.predict_function, Payload=json.dumps(
                batch_requests.request(f"{prefix}{staged}")).encode())
            payload = response["Payload"].read().decode()
            return payload[:500] if response.get("FunctionError") else None

        with ThreadPoolExecutor(self.workers) as pool:
            for done, failure in enumerate(pool.map(invoke, names), 1):
                if failure:
                    raise UserError(f"the predict function failed: {failure}")
                if done % 100 == 0 or done == len(names):
                    log(f"  {done}/{len(names)} scored")

    def wait(self, job: str, output_uri: str, total: int, log: Callable[[str], None]) -> dict:
        seen = -1
        while True:
            described = self.sagemaker.describe_transform_job(TransformJobName=job)
            done = len(self.listed(output_uri, layout.BATCH_OUTPUT_SUFFIX))
            if done != seen:
                log(f"  {described['TransformJobStatus']}: {done}/{total} scored")
                seen = done
            if described["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
                return described
            time.sleep(self.poll_seconds)

    def collect(self, job: str, output_uri: str, names: dict[str, str], out: Path, kind: str = "transform_job") -> dict:
        """One JSON per input and ``predictions.csv`` in ``out``; an input with no answer is listed as missing."""
        bucket, prefix = layout.split_s3_uri(output_uri)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for staged, name in names.items():
            try:
                key = f"{prefix}{staged}{layout.BATCH_OUTPUT_SUFFIX}"
                body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                answer = json.loads(body)
            except self.s3.exceptions.NoSuchKey:
                answer = {"status": "missing", "error": "the job wrote no answer for this input"}
            answer.setdefault("status", "predicted")
            target = out / f"{name}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({"file": name, kind: job, **answer}, indent=1))
            rows.append({"file": name, **{k: answer.get(k) for k in CSV_FIELDS if k != "file"}})
        with (out / "predictions.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return {kind: job, "output": output_uri, "files": len(rows), "counts": counts,
                "csv": str(out / "predictions.csv")}
