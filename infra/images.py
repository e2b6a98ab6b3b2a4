"""SageMaker PyTorch container images for every region, from the SageMaker SDK's own image table.

Stacks are environment-agnostic, so the image URI is looked up at deploy time with
``Fn::FindInMap`` on ``AWS::Region`` from a ``CfnMapping`` built here at synthesis; no URI is typed
by hand. The SDK is imported only while synthesizing (never in a Lambda bundle).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from importlib import metadata
from pathlib import Path

from aws_cdk import Aws, CfnMapping, Fn, Stack
from constructs import Construct

FRAMEWORK = "pytorch"
TRAINING_VERSION = "2.8.0"
INFERENCE_VERSION = "2.6.0"
PY_VERSION = "py312"
MAPPING_ID = "PyTorchImages"
TRAINING_GPU = "trainingGpu"
INFERENCE_CPU = "inferenceCpu"
INFERENCE_GPU = "inferenceGpu"


def _sdk():
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
    import sagemaker
    from sagemaker import image_uris

    return sagemaker, image_uris


CACHE = Path(__file__).resolve().parent.parent / ".cache" / "images"


@functools.cache
def image_table() -> dict[str, dict[str, str]]:
    """Region -> {training GPU, inference CPU, inference GPU} URIs, for every region serving all three.

    The SDK's lookups take ~15 s for all regions, so the table is kept under ``.cache/`` per SDK version.
    """
    versions = f"{FRAMEWORK}-{TRAINING_VERSION}-{INFERENCE_VERSION}-{PY_VERSION}"
    cached = CACHE / f"sagemaker-{metadata.version('sagemaker')}-{versions}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    table = _image_table()
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(table, indent=1, sort_keys=True))
    partial.replace(cached)
    return table


def _image_table() -> dict[str, dict[str, str]]:
    sagemaker, image_uris = _sdk()
    config = json.loads((Path(sagemaker.__file__).parent / "image_uri_config" / f"{FRAMEWORK}.json").read_text())
    training = set(config["training"]["versions"][TRAINING_VERSION]["registries"])
    inference = set(config["inference"]["versions"][INFERENCE_VERSION]["registries"])
    table = {}
    for region in sorted(training & inference):
        table[region] = {
            TRAINING_GPU: image_uris.retrieve(FRAMEWORK, region, version=TRAINING_VERSION, py_version=PY_VERSION,
                                              instance_type="ml.g4dn.xlarge", image_scope="training"),
            INFERENCE_CPU: image_uris.retrieve(FRAMEWORK, region, version=INFERENCE_VERSION, py_version=PY_VERSION,
                                               instance_type="ml.m5.xlarge", image_scope="inference"),
            INFERENCE_GPU: image_uris.retrieve(FRAMEWORK, region, version=INFERENCE_VERSION, py_version=PY_VERSION,
                                               instance_type="ml.g4dn.xlarge", image_scope="inference"),
        }
    return table


def is_gpu_instance(instance_type: str) -> bool:
    return instance_type.split(".")[1][:1] in {"g", "p"}


class PyTorchImages(Construct):
    """The mapping, and deploy-time lookups into it."""

    def __init__(self, scope: Construct, construct_id: str = MAPPING_ID):
        super().__init__(scope, construct_id)
        self.mapping = CfnMapping(self, "Table", mapping=image_table())

    def uri(self, column: str) -> str:
        return self.mapping.find_in_map(Aws.REGION, column)

    def inference(self, endpoint_mode: str, instance_type: str) -> str:
        """Serverless endpoints run on CPU; instance endpoints use the GPU image on GPU instances."""
        gpu = endpoint_mode != "serverless" and is_gpu_instance(instance_type)
        return self.uri(INFERENCE_GPU if gpu else INFERENCE_CPU)

    def repository_arn(self, column: str) -> str:
        """The ECR repository of one column in the deploying region (for the pull permission)."""
        uri = self.uri(column)
        return Stack.of(self).format_arn(
            service="ecr", account=Fn.select(0, Fn.split(".", uri)), resource="repository",
            resource_name=Fn.select(0, Fn.split(":", Fn.select(1, Fn.split("/", uri)))),
        )
