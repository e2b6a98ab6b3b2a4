"""Physical names of the offline cloud's resources (CloudFormation would generate them in an account).

Light on purpose (no moto import): the CLI uses it to find resources on a running offline cloud.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra import wiring

ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass(frozen=True)
class LocalNames:
    """Physical names of the local resources (CloudFormation would generate these in an account)."""

    stage: str

    def bucket(self, role: str) -> str:
        return wiring.BUCKETS[role].name(self.stage, ACCOUNT, REGION)

    def table(self, table: wiring.Table) -> str:
        return f"cxr-{self.stage}-{table.id}"

    def function(self, function: wiring.Function) -> str:
        return f"cxr-{self.stage}-{function.id}"

    def function_arn(self, function: wiring.Function) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function(function)}"

    def dead_letter_queue(self, function: wiring.Function) -> str:
        return f"cxr-{self.stage}-{function.id}-failures"

    @property
    def training_task(self) -> str:
        return f"cxr-{self.stage}-LocalTrainingJobSync"

    @property
    def training_task_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.training_task}"

    @property
    def state_machine(self) -> str:
        return f"cxr-{self.stage}-{wiring.STATE_MACHINE_ID}"

    @property
    def topic(self) -> str:
        return f"cxr-{self.stage}-notifications"

    @property
    def topic_arn(self) -> str:
        return f"arn:aws:sns:{REGION}:{ACCOUNT}:{self.topic}"

    @property
    def lambda_role_arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT}:role/cxr-{self.stage}-lambda"

    @property
    def sagemaker_role_arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT}:role/cxr-{self.stage}-sagemaker"
