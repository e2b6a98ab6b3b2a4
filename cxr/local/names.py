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

    def generated(self, *construct_ids: str) -> str:
        """The name of a resource the stacks leave unnamed, from its construct path below the stack."""
        return "-".join((f"cxr-{self.stage}", *construct_ids))

    def role_arn(self, *construct_ids: str) -> str:
        """One role per synthesized role (``("Preprocess", "Role")``): each principal keeps its own ARN,
        so the IAM trace (:mod:`cxr.local.iam_trace`) tells them apart."""
        return f"arn:aws:iam::{ACCOUNT}:role/{self.generated(*construct_ids)}"

    def function_role_arn(self, function: wiring.Function) -> str:
        return self.role_arn(function.id, "Role")

    @property
    def state_machine_role_arn(self) -> str:
        return self.role_arn(wiring.STATE_MACHINE_ID, "Role")

    @property
    def training_role_arn(self) -> str:
        return self.role_arn(wiring.TRAINING_ROLE_ID)

    @property
    def model_role_arn(self) -> str:
        return self.role_arn(wiring.MODEL_ROLE_ID)

    @property
    def roles(self) -> list[str]:
        """Every role the offline cloud creates: the functions', the state machine's and SageMaker's two."""
        return [*(self.function_role_arn(f) for f in wiring.FUNCTIONS.values()), self.state_machine_role_arn,
                self.training_role_arn, self.model_role_arn]
