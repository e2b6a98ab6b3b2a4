"""Container images: one Python for images and wheels, a generated URI table, support dates, CPU endpoints."""

from __future__ import annotations

import ast
import datetime
import os
import subprocess
from pathlib import Path

import pytest

from infra import images, packaging
from infra.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]
BEFORE_ANY = datetime.date(2026, 6, 30)  # the serving image's last patched day
SERVING_PAST = datetime.date(2026, 7, 1)
TRAINING_PAST = datetime.date(2027, 7, 21)


def test_infra_imports_nothing_from_the_console_package():
    """Layers point down (cxr -> infra): the CDK app must synthesize without the console package."""
    offenders = []
    for path in sorted((ROOT / "infra").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {name}" for name in names
                          if name == "cxr" or name.startswith("cxr.")]
    assert not offenders, offenders


def test_images_and_vendored_wheels_share_one_python(monkeypatch, tmp_path):
    """The serving URIs, the training image's documented Python and pip's download tags all derive from one value."""
    assert images.PY_TAG == "py" + images.PYTHON_VERSION.replace(".", "")
    assert all(image.python == images.PY_TAG for image in images.PINNED)
    for region, row in images.image_table().items():
        assert row[images.INFERENCE_CPU].endswith(f"-cpu-{images.PY_TAG}"), region
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: calls.append(cmd))
    packaging.download_wheels(["onnxruntime==1.32.0"], cache=tmp_path)
    (cmd,) = calls
    assert cmd[cmd.index("--python-version") + 1] == images.PYTHON_VERSION


def test_the_table_holds_the_pinned_images_in_every_region():
    table = images.image_table()
    assert len(table) >= 38 and {"us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"} <= set(table)
    for region, row in table.items():
        training, serving = row[images.TRAINING_GPU], row[images.INFERENCE_CPU]
        suffix = ".amazonaws.com.cn" if region.startswith("cn-") else ".amazonaws.com"
        assert training.split("/")[0].endswith(f".dkr.ecr.{region}{suffix}"), region
        assert training.endswith(f"/pytorch:{images.TRAINING.version}-cu133-amzn2023-sagemaker"), region
        assert serving.endswith(f"/pytorch-inference:{images.SERVING.version}-cpu-{images.PY_TAG}"), region
        assert training.split(".")[0] == serving.split(".")[0], region  # the DLC registry account of the region


def test_serving_rows_match_the_installed_sdks_public_lookup():
    """The pinned sagemaker 2.x SDK knows the serving image: its public API gives the same URIs."""
    pytest.importorskip("sagemaker")
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    image_uris = images._sdk_image_uris()
    table = images.image_table()
    known = set(image_uris.config_for_framework("pytorch")["inference"]["versions"][images.SERVING.version]
                ["registries"])
    assert len(known & set(table)) >= 38
    for region in sorted(known & set(table)):
        assert image_uris.retrieve(**images.SERVING.retrieve_arguments(region)) == table[region][images.INFERENCE_CPU]


def test_the_training_image_is_patched_and_runs_the_torch_the_tests_train_with():
    assert images.support(images.TRAINING).end_of_patch > datetime.date(2026, 11, 30)  # the day this pin was chosen
    constraints = (ROOT / "requirements" / "constraints.txt").read_text()
    assert f"torch=={images.TRAINING.version}.0" in constraints


def test_every_pinned_image_has_a_dated_support_row_with_its_source():
    for image in images.PINNED:
        row = images.support(image)
        assert row.source.startswith("https://") and row.end_of_patch.year >= 2026


def test_past_end_of_patch_names_each_image_from_its_date_on():
    assert images.past_end_of_patch(BEFORE_ANY) == []
    (serving,) = images.past_end_of_patch(SERVING_PAST)
    assert serving.startswith("serving image pytorch 2.6.0 (py312) passed its end of patch on 2026-06-30")
    assert "infra/README.md" in serving
    training, _ = images.past_end_of_patch(TRAINING_PAST)
    assert training.startswith("training image pytorch-amzn2023 2.13 (py312) passed its end of patch on 2027-07-20")
    assert "move to PyTorch 2.14" in training
    training, _ = images.past_end_of_patch(datetime.date(2027, 9, 29))  # 2.14 past too: nothing to move to
    assert "no patched successor" in training


@pytest.mark.parametrize(("today", "warned"), [(BEFORE_ANY, []), (SERVING_PAST, ["serving image pytorch 2.6.0"])])
def test_synthesis_warns_for_an_image_past_its_end_of_patch(today, warned):
    from aws_cdk import App, Stack
    from aws_cdk.assertions import Annotations, Match

    from infra.components.container_images import TODAY_CONTEXT, PyTorchImages

    app = App(context={TODAY_CONTEXT: today.isoformat()})
    stack = Stack(app, "Images")
    PyTorchImages(stack)
    found = Annotations.from_stack(stack).find_warning("*", Match.any_value())
    texts = [str(message.entry.data) for message in found]
    assert len(texts) == len(warned) and all(w in t for w, t in zip(warned, texts, strict=True)), texts


def test_endpoints_default_to_a_cpu_instance_and_refuse_accelerators():
    from lambdas.deploy_model import DeploySettings

    default = Config().endpoint_instance_type
    assert not images.is_accelerated(default)
    env = {"SAGEMAKER_ROLE_ARN": "r", "KMS_KEY_ARN": "k", "INFERENCE_IMAGE": "i", "ENDPOINT_NAME": "e",
           "ENDPOINT_MODE": "realtime"}
    assert DeploySettings.from_env(env).instance_type == default  # the Lambda's fallback agrees
    for accelerated in ("ml.g4dn.xlarge", "ml.g5.xlarge", "ml.p3.2xlarge", "ml.inf2.xlarge", "ml.trn1.2xlarge"):
        with pytest.raises(ConfigError, match="endpoint_instance_type"):
            Config.from_values({"endpoint_mode": "realtime", "endpoint_instance_type": accelerated})
    assert Config.from_values({"endpoint_instance_type": "ml.m5.xlarge"}).endpoint_instance_type == "ml.m5.xlarge"
    for graviton in ("ml.c7g.large", "ml.m6gd.xlarge", "ml.c6gn.large"):  # the serving image is x86_64 only
        with pytest.raises(ConfigError, match="Graviton"):
            Config.from_values({"endpoint_mode": "realtime", "endpoint_instance_type": graviton})
    assert not any(images.is_arm(t) for t in ("ml.g4dn.xlarge", "ml.c6i.large", "ml.m5d.xlarge", "ml.inf2.xlarge"))
