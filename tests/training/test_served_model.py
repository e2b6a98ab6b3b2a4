"""``endpoint_mode=lambda``: the predict function serves the registry's approved model itself, from a real artifact.

A tiny trained model packed as SageMaker packs ``model.tar.gz``, registered in moto's Model Registry, and the real
predict handler on an ``incoming/`` upload: no endpoint, no SSM lookup, the artifact checked against its digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import boto3
import numpy as np
import pytest
from handlers.test_predict import BUCKET, counts, inference, invoke, prediction_key, read_json, upload  # noqa: F401,E501
from synthetic import encode, xray

from lambdas import evaluate_model, register_model, served_model
from lambdas.domain import imaging, promotion, serving_copy

GROUP = "cxr-test-models"
ARTIFACTS = "cxr-artifacts"


def pack(model_dir) -> bytes:
    """``model.tar.gz`` as the training job leaves it, plus a ``code/lib`` the Lambda must not unpack."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(model_dir, arcname=".")
        for name, text in (("code/lib/python-version.txt", b"3.1\n"), ("code/lib/numpy/__init__.py", b"raise 1\n")):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def register(key: str, body: bytes, approved_at: str, digest: str | None = None, serving: dict | None = None) -> str:
    boto3.client("s3").put_object(Bucket=ARTIFACTS, Key=key, Body=body)
    spec = register_model.inference_specification("image", f"s3://{ARTIFACTS}/{key}",
                                                  digest or hashlib.sha256(body).hexdigest(), "0.1.0+gtest")
    metadata = {promotion.APPROVED_AT: approved_at}
    if serving:
        metadata.update({promotion.SERVING_ARTIFACT: serving["serving_artifact"],
                         promotion.SERVING_SHA256: serving["serving_sha256"]})
    return boto3.client("sagemaker").create_model_package(
        ModelPackageGroupName=GROUP, InferenceSpecification=spec, ModelApprovalStatus=promotion.APPROVED,
        CustomerMetadataProperties=metadata)["ModelPackageArn"]


def serving_copy_of(archive: bytes, run_id: str) -> dict:
    """What the Evaluate step writes for ``archive``: its serving copy in S3, with the copy's URI and SHA-256."""
    boto3.client("s3").put_object(Bucket=ARTIFACTS, Key=f"{run_id}/model.tar.gz", Body=archive)
    *_, members = evaluate_model.read_artifact(ARTIFACTS, f"{run_id}/model.tar.gz")
    return evaluate_model.write_serving_copy(ARTIFACTS, run_id, members)


@pytest.fixture
def lambda_mode(inference, trained, monkeypatch, tmp_path):  # noqa: F811 (the predict tests' fixture)
    monkeypatch.setenv("ENDPOINT_MODE", "lambda")
    monkeypatch.setenv(served_model.MODEL_PACKAGE_GROUP_VARIABLE, GROUP)
    monkeypatch.setattr(served_model, "WORK", tmp_path / "served")
    monkeypatch.setattr(served_model, "_served", None)
    monkeypatch.setattr(served_model, "_checked_at", float("-inf"))
    boto3.client("s3").create_bucket(Bucket=ARTIFACTS)
    boto3.client("sagemaker").create_model_package_group(ModelPackageGroupName=GROUP)
    return pack(trained / "model")


def test_the_predict_function_serves_the_approved_model_itself(lambda_mode, lambda_context, monkeypatch):
    register("old/model.tar.gz", lambda_mode, "2026-11-01T00:00:00+00:00")
    arn = register("new/model.tar.gz", lambda_mode, "2026-11-02T00:00:00+00:00")  # approved last: the champion
    boto3.client("ssm").delete_parameter(Name="/cxr/endpoint")  # nothing reads the endpoint parameter
    body = encode(xray("bacterial", np.random.default_rng(4), size=(700, 560)), "JPEG")
    assert invoke(lambda_context, upload("incoming/a.jpeg", body)) == counts(predicted=1)

    record = read_json(prediction_key("incoming/a.jpeg"))  # predictions are named, never keyed (issue 17)
    assert record["endpoint"] == f"lambda:{arn}"
    assert record["label"] in ("bacterial", "normal", "viral") and record["model_id"]
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert record["audit"]["artifact_sha256"] == hashlib.sha256(lambda_mode).hexdigest()
    assert record["audit"]["content_hash"] == imaging.normalise(body).content_hash
    extracted = served_model.WORK / hashlib.sha256(f"s3://{ARTIFACTS}/new/model.tar.gz".encode()).hexdigest()[:16]
    assert (extracted / "model.onnx").is_file() and (extracted / "code" / "inference.py").is_file()
    assert not (extracted / "code" / "lib").exists() and not (extracted / "model.pt").exists()

    # the registry is asked again after a minute: a rollback (the champion rejected) serves the previous one
    boto3.client("sagemaker").update_model_package(ModelPackageArn=arn, ModelApprovalStatus=promotion.REJECTED)
    monkeypatch.setattr(served_model, "REGISTRY_CACHE_SECONDS", 0)
    invoke(lambda_context, upload("incoming/b.jpeg", body))
    assert read_json(prediction_key("incoming/b.jpeg"))["endpoint"] != f"lambda:{arn}"


def test_an_artifact_that_is_not_the_registered_one_is_not_served(lambda_mode, lambda_context):
    register("bad/model.tar.gz", lambda_mode, "2026-11-02T00:00:00+00:00", digest="0" * 64)
    with pytest.raises(served_model.ArtifactDigestMismatch):
        invoke(lambda_context, upload("incoming/a.png", encode(xray("normal", np.random.default_rng(5)), "PNG")))
    assert not boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="predictions/").get("Contents")


def test_the_lean_serving_copy_is_served_and_model_tar_gz_is_never_read(lambda_mode, lambda_context):
    serving = serving_copy_of(lambda_mode, "run-1")
    arn = register("lean/model.tar.gz", lambda_mode, "2026-11-02T00:00:00+00:00", serving=serving)
    boto3.client("s3").delete_object(Bucket=ARTIFACTS, Key="lean/model.tar.gz")  # streaming it would now fail
    assert invoke(lambda_context, upload("incoming/a.png", encode(xray("normal", np.random.default_rng(6)), "PNG"))
                  ) == counts(predicted=1)
    record = read_json(prediction_key("incoming/a.png"))
    assert record["endpoint"] == f"lambda:{arn}"
    assert record["audit"]["artifact_sha256"] == hashlib.sha256(lambda_mode).hexdigest()  # the registered artifact's
    extracted = served_model.WORK / hashlib.sha256(f"s3://{ARTIFACTS}/lean/model.tar.gz".encode()).hexdigest()[:16]
    config = json.loads((extracted / "model.json").read_text())
    assert sorted(p.relative_to(extracted).as_posix() for p in extracted.rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts) == sorted(
        ["model.json", config["onnx"], config["out_of_distribution"]["file"],
         *(f"code/{name}" for name in ("inference.py", "imaging.py", "decision.py", "ood.py"))])


def test_a_serving_copy_that_is_not_the_registered_one_is_not_served(lambda_mode, lambda_context):
    serving = serving_copy_of(lambda_mode, "run-1")
    register("lean/model.tar.gz", lambda_mode, "2026-11-02T00:00:00+00:00",
             serving={**serving, "serving_sha256": "0" * 64})
    with pytest.raises(served_model.ArtifactDigestMismatch, match="serving"):
        invoke(lambda_context, upload("incoming/a.png", encode(xray("normal", np.random.default_rng(5)), "PNG")))
    assert not served_model.WORK.exists() or not any(served_model.WORK.iterdir())


def test_the_serving_copy_keeps_only_the_served_files_and_is_the_same_bytes_twice():
    config = {"onnx": "model.int8.onnx", "out_of_distribution": {"file": "ood.npz"}}
    members = {name: name.encode() for name in ("model.onnx", "model.int8.onnx", "ood.npz", "code/inference.py")}
    members["model.json"] = json.dumps(config).encode()
    assert not serving_copy.candidate("code/lib/numpy/__init__.py") and not serving_copy.candidate("model.pt")
    data, names = serving_copy.build(members)
    assert names == ["code/inference.py", "model.int8.onnx", "model.json", "ood.npz"]
    assert serving_copy.build(dict(reversed(members.items())))[0] == data
    with pytest.raises(serving_copy.IncompleteArtifact, match="model.int8.onnx"):
        serving_copy.build({k: v for k, v in members.items() if k != "model.int8.onnx"})


def test_a_package_that_adopts_a_threshold_is_served_at_it_and_one_outside_the_band_is_not(
        lambda_mode, lambda_context, trained, monkeypatch):
    """The same artifact registered twice, the second with a site's threshold in its container's environment: the
    predict function answers at that threshold, and reloads when the champion changes though the artifact does not."""
    from lambdas.domain import threshold_amendment

    config = json.loads((trained / "model" / "model.json").read_text())
    own = config.get("threshold") or 0.5
    adopted = round(own + 0.5 * (1 / (1 + (1 - own) / own / 4) - own), 3)  # halfway to the band's top
    plain = register("same/model.tar.gz", lambda_mode, "2026-11-01T00:00:00+00:00")
    spec = register_model.inference_specification("image", f"s3://{ARTIFACTS}/same/model.tar.gz",
                                                  hashlib.sha256(lambda_mode).hexdigest(), "0.1.0+gtest")
    spec["Containers"][0]["Environment"][threshold_amendment.THRESHOLD_VARIABLE] = str(adopted)
    amended = boto3.client("sagemaker").create_model_package(
        ModelPackageGroupName=GROUP, InferenceSpecification=spec, ModelApprovalStatus=promotion.APPROVED,
        CustomerMetadataProperties={promotion.APPROVED_AT: "2026-11-02T00:00:00+00:00"})["ModelPackageArn"]
    body = encode(xray("normal", np.random.default_rng(7)), "PNG")
    assert invoke(lambda_context, upload("incoming/a.png", body)) == counts(predicted=1)
    record = read_json(prediction_key("incoming/a.png"))
    assert record["endpoint"] == f"lambda:{amended}" and record["threshold"] == adopted != own
    low, high = record["referral_band"]
    assert low < adopted < high

    boto3.client("sagemaker").update_model_package(ModelPackageArn=amended, ModelApprovalStatus=promotion.REJECTED)
    monkeypatch.setattr(served_model, "REGISTRY_CACHE_SECONDS", 0)  # rolled back: the model's own threshold again
    invoke(lambda_context, upload("incoming/b.png", body))
    again = read_json(prediction_key("incoming/b.png"))
    assert again["endpoint"] == f"lambda:{plain}" and again["threshold"] == own

    spec["Containers"][0]["Environment"][threshold_amendment.THRESHOLD_VARIABLE] = "0.999"
    boto3.client("sagemaker").create_model_package(
        ModelPackageGroupName=GROUP, InferenceSpecification=spec, ModelApprovalStatus=promotion.APPROVED,
        CustomerMetadataProperties={promotion.APPROVED_AT: "2026-11-03T00:00:00+00:00"})
    with pytest.raises(ValueError, match="outside the model's referral band"):
        invoke(lambda_context, upload("incoming/c.png", body))
