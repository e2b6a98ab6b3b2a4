"""What a function that runs an approved model itself needs (``endpoint_mode=lambda``): ONNX Runtime as a layer,
the registry's packages and their serving copies readable, and the batch prefixes it answers in.

Two functions do: the predict function (``lambdas/served_model.py``: the champion, for uploads and `cxr
batch-predict`) and the re-score's ``RescoreBatch`` (the package a run just approved, over recent uploads).
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_

from infra import bundling, wiring
from infra.config import Config
from lambdas.domain import layout

from .access import allow_objects
from .nag import acknowledge


def serve_in_function(stack: Stack, function: lambda_.IFunction, config: Config, key: kms.IKey, *,
                      champion: bool) -> None:
    """The layer and the reads; ``champion``: the function also looks the champion up (ListModelPackages)."""
    function.add_layers(lambda_.LayerVersion(
        stack, "ServingLayer", code=bundling.serving_layer_code(config.lambda_architecture),
        compatible_runtimes=[bundling.RUNTIME],
        compatible_architectures=[bundling.ARCHITECTURES[config.lambda_architecture]],
        description="ONNX Runtime for the functions that run the approved model (endpoint_mode=lambda)"))
    group = wiring.model_package_group(config.stage)
    function.add_to_role_policy(iam.PolicyStatement(actions=["sagemaker:DescribeModelPackage"], resources=[
        stack.format_arn(service="sagemaker", resource="model-package", resource_name=f"{group}/*")]))
    if champion:
        function.add_to_role_policy(iam.PolicyStatement(  # no resource-level permissions (it lists by group name)
            actions=["sagemaker:ListModelPackages"], resources=["*"]))
    # the serving copy; model.tar.gz for packages registered before it
    allow_objects(function, wiring.DATA, config.stage, key, read=[layout.SERVING, layout.MODELS])
    # staged objects and their answers (lambdas/batch_requests.py); the re-score lists its batch's
    allow_objects(function, wiring.INFERENCE, config.stage, key, read=[layout.BATCH_INPUT],
                  write=[layout.BATCH_OUTPUT], list_=[] if champion else [layout.BATCH_INPUT])
    package = ("AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
               f"model-package/{group}/*]")
    acknowledge(function.role, "Versioned model packages are named <group>/<version>, the version assigned by "
                "SageMaker" + ("; ListModelPackages has no resource-level permissions (it lists one group by name)."
                               if champion else "."), *(["AwsSolutions-IAM5[Resource::*]"] if champion else []),
                package)
