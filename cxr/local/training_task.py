"""The local form of the state machine's ``sagemaker:createTrainingJob.sync`` task.

moto's Step Functions engine refuses SageMaker integrations, so the one allowed ASL rewrite
(:func:`cxr.local.pipeline.localize_training_task`) points that task at this function, with the
task's own ``Parameters`` as the event. It does what ``.sync`` does: CreateTrainingJob, wait for
a terminal status, return DescribeTrainingJob's output, or fail with ``States.TaskFailed``.
"""

from __future__ import annotations

import json
import time

from lambdas import aws

POLL_SECONDS = 1.0
TERMINAL = ("Completed", "Failed", "Stopped")


class TrainingJobFailed(RuntimeError):
    """What ``.sync`` raises when the job ends in Failed or Stopped."""

    error_type = "States.TaskFailed"


def handler(event: dict, context) -> dict:
    sagemaker = aws.client("sagemaker")
    sagemaker.create_training_job(**event)
    name = event["TrainingJobName"]
    while (job := sagemaker.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] not in TERMINAL:
        time.sleep(POLL_SECONDS)
    described = json.loads(json.dumps(job, default=str))  # datetimes as Step Functions would serialise them
    described.pop("ResponseMetadata", None)
    if described["TrainingJobStatus"] != "Completed":
        raise TrainingJobFailed(json.dumps({k: described.get(k) for k in
                                            ("TrainingJobName", "TrainingJobStatus", "FailureReason")}))
    return described
