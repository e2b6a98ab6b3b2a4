"""The local form of the state machine's ``sagemaker:createTrainingJob.sync`` task.

moto's Step Functions engine refuses SageMaker integrations, so the one allowed ASL rewrite
(:func:`cxr.local.pipeline.localize_training_task`) points that task at this function, with the
task's own ``Parameters`` as the event. It does what ``.sync`` does: CreateTrainingJob, wait for
a terminal status, return DescribeTrainingJob's output, or fail. Error names follow the real
integration where a Lambda task can: API errors are ``SageMaker.AmazonSageMakerException`` (the
state's Retry matches them); a failed job, which AWS reports as ``States.TaskFailed`` (a name
reserved to Step Functions itself), is ``SageMaker.TrainingJobFailed`` (``States.ALL`` catches both).
"""

from __future__ import annotations

import json
import time

from botocore.exceptions import ClientError

from lambdas import aws

POLL_SECONDS = 1.0
TERMINAL = ("Completed", "Failed", "Stopped")


class TrainingJobFailed(RuntimeError):
    """The job ended in Failed or Stopped."""

    error_type = "SageMaker.TrainingJobFailed"


class SageMakerApiError(RuntimeError):
    """CreateTrainingJob refused (throttling, limits, validation)."""

    error_type = "SageMaker.AmazonSageMakerException"


def handler(event: dict, context) -> dict:
    sagemaker = aws.client("sagemaker")
    try:
        sagemaker.create_training_job(**event)
    except ClientError as exc:
        raise SageMakerApiError(f"{aws.error_code(exc)}: {exc}") from None
    name = event["TrainingJobName"]
    while (job := sagemaker.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] not in TERMINAL:
        time.sleep(POLL_SECONDS)
    described = json.loads(json.dumps(job, default=str))  # datetimes as Step Functions would serialise them
    described.pop("ResponseMetadata", None)
    if described["TrainingJobStatus"] != "Completed":
        raise TrainingJobFailed(json.dumps({k: described.get(k) for k in
                                            ("TrainingJobName", "TrainingJobStatus", "FailureReason")}))
    return described
