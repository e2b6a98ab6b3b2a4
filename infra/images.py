"""The container images the pipeline pins, their URIs in every region, and how long AWS patches them.

``PYTHON_VERSION`` is the one Python of both images: the serving image is looked up for it, the
training image's release notes state it (a test holds the two together), and ``infra/packaging.py``
downloads the vendored wheels for it, so a move to an image of another Python moves the wheels too.

The URIs live in ``infra/images.json``, a table generated with the SageMaker SDK's public
``image_uris.retrieve`` and ``config_for_framework`` (``python -m infra.images``): the pinned
sagemaker 2.x SDK knows the serving image but no training image that AWS still patches, so the
table is written with SDK v3 (``sagemaker-core``) in a scratch environment and checked in; a test
compares its serving rows with the installed SDK. Stacks are environment-agnostic, so the URI is
chosen at deploy time by ``Fn::FindInMap`` on ``AWS::Region`` (``PyTorchImages``, the CDK side).

This module imports no CDK: ``infra/packaging.py`` and ``cxr doctor`` read it without the CDK app.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PYTHON_VERSION = "3.12"
"""The Python of every pinned image, and so of the wheels vendored for the training job and endpoint."""
PY_TAG = "py" + PYTHON_VERSION.replace(".", "")

TABLE = Path(__file__).with_name("images.json")
MAPPING_ID = "PyTorchImages"
TRAINING_GPU = "trainingGpu"
INFERENCE_CPU = "inferenceCpu"
ACCELERATED_FAMILIES = ("g", "p", "inf", "trn", "dl")
"""Instance families with GPUs or AWS accelerators (ml.g4dn, ml.p3, ml.inf2, ml.trn1, ml.dl1)."""

POLICY = "https://aws.github.io/deep-learning-containers/reference/support_policy"
"""AWS Deep Learning Containers framework support policy (GA and end-of-patch dates, extensions)."""
RELEASES = "https://github.com/aws/deep-learning-containers/blob/master/docs/src/data/"
"""The DLC release data the support policy and available-images pages are generated from (ga, eop, python)."""


@dataclass(frozen=True)
class Support:
    """One row of AWS's DLC framework support policy: patched until ``end_of_patch`` (inclusive)."""

    framework: str
    scope: str
    version: str
    end_of_patch: datetime.date
    source: str


SUPPORT: tuple[Support, ...] = (
    Support("PyTorch", "training", "2.8", datetime.date(2026, 8, 6), POLICY),
    Support("PyTorch", "training", "2.9", datetime.date(2026, 10, 15), POLICY),
    Support("PyTorch", "training", "2.10", datetime.date(2027, 1, 21), POLICY),
    Support("PyTorch", "training", "2.12", datetime.date(2027, 7, 2), RELEASES + "pytorch/2.12-cuda-sagemaker.yml"),
    Support("PyTorch", "training", "2.13", datetime.date(2027, 7, 20), RELEASES + "pytorch/2.13-cuda-sagemaker.yml"),
    Support("PyTorch", "training", "2.14", datetime.date(2027, 9, 28), RELEASES + "pytorch/2.14-cuda-sagemaker.yml"),
    Support("PyTorch", "inference", "2.6", datetime.date(2026, 6, 30), POLICY),
)
"""AWS's end-of-patch dates for the pinned images and their successors, each with the page it was read from.

2.8 to 2.10 are the Ubuntu ``pytorch-training`` images (2.10 runs Python 3.13); from 2.11 the training
images are the Amazon Linux 2023 ``pytorch`` family (Python 3.12), training only: their SageMaker
page says "this image is not configured for serving" (docs/pytorch/deployment/sagemaker.md in the
same repository). Inference 2.6 is the last PyTorch inference image (TorchServe with the
``sagemaker-pytorch-inference`` handler contract); the policy extended it to 2026-06-30 for that
reason, and neither the policy, the release data nor the SDK's table (sagemaker-core 2.27.0,
2026-10) lists a later PyTorch inference image for SageMaker.
"""


@dataclass(frozen=True)
class PinnedImage:
    role: str
    """What runs in it: ``training`` (train.py under the training toolkit) or ``serving`` (inference.py)."""
    column: str
    sdk_framework: str
    scope: str
    version: str
    instance_type: str
    """Any instance of the wanted processor: the SDK picks the GPU or CPU variant from it."""
    python: str
    """The image's Python as its release data states it; must be ``PY_TAG`` (tests)."""
    release: str
    """The DLC release data the tag, the Python and the dates were read from."""

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    def retrieve_arguments(self, region: str) -> dict:
        """``image_uris.retrieve`` keyword arguments; Python-tagged families get ``py_version``."""
        arguments = dict(framework=self.sdk_framework, region=region, version=self.version,
                         instance_type=self.instance_type, image_scope=self.scope)
        return arguments | ({"py_version": PY_TAG} if self.sdk_framework == "pytorch" else {})


TRAINING = PinnedImage("training", TRAINING_GPU, "pytorch-amzn2023", "training", "2.13", "ml.g4dn.xlarge",
                       "py312", RELEASES + "pytorch/2.13-cuda-sagemaker.yml")
"""PyTorch 2.13 (the torch of requirements/constraints.txt, which the tests train with), CUDA 13.3, AL2023."""
SERVING = PinnedImage("serving", INFERENCE_CPU, "pytorch", "inference", "2.6.0", "ml.c6i.large",
                      "py312", RELEASES + "pytorch-inference/2.6-cpu-sagemaker.yml")
"""The CPU image on every endpoint: inference.py runs ONNX Runtime on its CPU provider only."""
PINNED = (TRAINING, SERVING)


def _family(instance_type: str) -> str:
    """``c6i`` of ``ml.c6i.large`` ("" for a malformed type)."""
    return instance_type.split(".")[1] if instance_type.count(".") >= 2 else ""


def is_accelerated(instance_type: str) -> bool:
    """True for GPU and AWS-accelerator instance types (``ml.g4dn.xlarge``, ``ml.inf2.xlarge``)."""
    return _family(instance_type).startswith(ACCELERATED_FAMILIES)


def is_gpu(instance_type: str) -> bool:
    """True for NVIDIA GPU instance types (``ml.g5.12xlarge``, ``ml.p4d.24xlarge``): the SageMaker SDK's test for
    ``torch_distributed`` (``sagemaker.fw_utils._is_gpu_instance``: family starting with ``p`` or ``g``)."""
    return _family(instance_type).startswith(("g", "p"))


def is_arm(instance_type: str) -> bool:
    """True for Graviton instance types (``ml.c7g.large``, ``ml.m6gd.xlarge``): the serving image is x86_64 only."""
    return bool(re.fullmatch(r"[a-z]+\d+g[a-z]*", _family(instance_type)))


def support(image: PinnedImage) -> Support:
    """The support row of a pinned image (a pinned image without one is a bug in this table)."""
    for row in SUPPORT:
        if (row.scope, row.version) == (image.scope, image.minor):
            return row
    raise LookupError(f"no support row for {image.role} image {image.sdk_framework} {image.version}")


def past_end_of_patch(today: datetime.date) -> list[str]:
    """One line per pinned image that AWS no longer patches on ``today``, with what to move to."""
    lines = []
    for image in PINNED:
        row = support(image)
        if today > row.end_of_patch:
            lines.append(f"{image.role} image {image.sdk_framework} {image.version} ({image.python}) passed its end "
                         f"of patch on {row.end_of_patch.isoformat()}; {_successor(image, row, today)}")
    return lines


def _successor(image: PinnedImage, row: Support, today: datetime.date) -> str:
    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    newer = [r for r in SUPPORT
             if r.scope == row.scope and key(r.version) > key(row.version) and r.end_of_patch >= today]
    if newer:
        best = max(newer, key=lambda r: key(r.version))
        return (f"move to PyTorch {best.version} (patched until {best.end_of_patch.isoformat()}): change "
                f"{image.role.upper()} in infra/images.py, then regenerate the table (python -m infra.images)")
    if image.role == "serving":
        return ("AWS publishes no later PyTorch inference image with inference.py's handler contract: "
                "see 'Container images' in infra/README.md")
    return f"no patched successor in infra/images.py's SUPPORT table: check {POLICY}"


def image_table(path: Path = TABLE) -> dict[str, dict[str, str]]:
    """Region -> {column: URI} of the pinned images, from the generated table."""
    return json.loads(path.read_text())["regions"]


def generate(image_uris) -> dict:
    """The table from an SDK's public ``image_uris`` module: every region that serves every pinned image."""
    regions = None
    for image in PINNED:
        config = image_uris.config_for_framework(image.sdk_framework)[image.scope]["versions"][image.version]
        known = set(config["registries"])
        regions = known if regions is None else regions & known
    return {
        "generated_by": "python -m infra.images (the SageMaker SDK's image_uris.retrieve)",
        "images": {image.column: {k: v for k, v in image.retrieve_arguments("<region>").items() if k != "region"}
                   for image in PINNED},
        "regions": {region: {image.column: image_uris.retrieve(**image.retrieve_arguments(region))
                             for image in PINNED}
                    for region in sorted(regions)},
    }


def _sdk_image_uris():
    """SDK v3's module (``sagemaker-core``), else v2's: the same public functions."""
    try:
        from sagemaker.core import image_uris
    except ImportError:
        from sagemaker import image_uris
    return image_uris


def main() -> None:
    """``python -m infra.images``: rewrite ``infra/images.json`` with the installed SDK."""
    table = generate(_sdk_image_uris())
    TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{TABLE}: {len(table['regions'])} regions", file=sys.stderr)


def __getattr__(name: str):
    """The CDK construct, imported on first use so that this module stays importable without the CDK."""
    if name == "PyTorchImages":
        from infra.components.container_images import PyTorchImages

        return PyTorchImages
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
