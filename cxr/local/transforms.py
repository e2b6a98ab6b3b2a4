"""Local SageMaker Batch Transform jobs: every object under the input prefix through the model's real handler.

What SageMaker does for a job with an ``S3Prefix`` or ``ManifestFile`` input, ``SplitType: None`` and
``SingleRecord``: each object is one request (the job's ``ContentType``, answer ``Accept``), the answer is
written to ``S3OutputPath`` under the object's path below the input prefix (or the manifest's ``prefix``)
plus ``.out``, with the output KMS key;
the container runs with the model's environment plus the job's ``Environment``; the job is ``InProgress``
while it runs, then ``Completed``, or ``Failed`` with the reason when a record fails ("If a batch
transform job fails to process an input file because of a problem with the dataset, SageMaker marks the
job as failed", SageMaker Developer Guide, "Batch transform"). moto 5.2.5 records the job as
``Completed`` at once and writes nothing.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import boto3

from cxr.local.endpoints import EndpointError, LocalEndpoints
from cxr.local.iam_trace import acting_as
from lambdas.domain.layout import BATCH_OUTPUT_SUFFIX, split_s3_uri


class LocalTransformJobs:
    def __init__(self, endpoints: LocalEndpoints):
        self.endpoints = endpoints

    def start(self, job: Any) -> None:
        """Run the job moto has just recorded on a worker thread, as SageMaker runs it apart from the call."""
        job.transform_job_status = "InProgress"
        job.transform_end_time = None
        threading.Thread(target=self._run, args=(job,), name=f"transform-{job.transform_job_name}",
                         daemon=True).start()

    def _run(self, job: Any) -> None:
        try:
            self._transform(job)
            job.transform_job_status = "Completed"
        except Exception as exc:  # the job fails with the reason, as SageMaker reports it
            job.transform_job_status, job.failure_reason = "Failed", f"{type(exc).__name__}: {exc}"[:1024]
        from moto.core.utils import utcnow

        job.transform_end_time = job.last_modified_time = utcnow()

    def _transform(self, job: Any) -> None:
        source = job.transform_input["DataSource"]["S3DataSource"]
        model = boto3.client("sagemaker").describe_model(ModelName=job.model_name)
        out_bucket, out_prefix = split_s3_uri(job.transform_output["S3OutputPath"])
        out_prefix = out_prefix if not out_prefix or out_prefix.endswith("/") else out_prefix + "/"
        kms = job.transform_output.get("KmsKeyId")
        encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms} if kms else {}
        s3 = boto3.client("s3")
        with acting_as(model["ExecutionRoleArn"]):  # the container reads its input and writes as the model's role
            bucket, folder, keys = self._inputs(s3, source)
            for key in keys:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                try:
                    payload, _ = self.endpoints.serve_model(
                        model, body, job.transform_input.get("ContentType", "application/octet-stream"),
                        job.transform_output.get("Accept", "application/json"), job.environment or {})
                except EndpointError as exc:
                    raise RuntimeError(f"{key}: {exc}") from None
                s3.put_object(Bucket=out_bucket, Key=f"{out_prefix}{key[len(folder):]}{BATCH_OUTPUT_SUFFIX}",
                              Body=payload, **encryption)

    @staticmethod
    def _inputs(s3, source: dict) -> tuple[str, str, list[str]]:
        """The bucket, the folder whose path below is kept in the output names, and the input keys."""
        bucket, key = split_s3_uri(source["S3Uri"])
        if source.get("S3DataType", "S3Prefix") == "ManifestFile":  # [{"prefix": "s3://b/p/"}, "relative", ...]
            manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            bucket, folder = split_s3_uri(manifest[0]["prefix"])
            return bucket, folder, [folder + relative for relative in manifest[1:]]
        if source.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise ValueError(f"the offline cloud runs S3Prefix and ManifestFile inputs, not {source['S3DataType']}")
        keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
                for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
        return bucket, key[: key.rfind("/") + 1], keys
