"""endpoint_mode=lambda on the offline cloud: the predict function serves the registry's approved model itself.

A tiny model (seconds of CPU training) goes through the pipeline's real Evaluate and Register functions, as
its last steps would take it; an upload under ``incoming/`` is then predicted with no SageMaker endpoint
anywhere, from the lean serving copy the Evaluate step wrote (never ``model.tar.gz``), and every call of every
principal is checked against the policies this mode synthesizes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile

import boto3
import pytest
from recorded import recorded_cloud
from test_async_endpoint import XRAY, invoke, model_archive  # noqa: F401 (a fixture)

from cxr import operations, source_names
from cxr.batch_scoring import BatchScoring
from cxr.errors import UserError
from cxr.local import pipeline
from cxr.model_registry import ModelRegistry
from infra import wiring
from infra.config import Config
from lambdas.domain import promotion

pytestmark = pytest.mark.slow
STAGE = "lam"


def test_an_upload_is_predicted_by_the_approved_model_in_the_predict_function(model_archive, tmp_path):  # noqa: F811
    config = Config.demo(stage=STAGE, endpoint_mode="lambda", quality_gate={"accuracy": 0.0}, rescore_days=1)
    synthesized = pipeline.synthesize(config, tmp_path / "cdk.out")
    checked = []
    with recorded_cloud(synthesized, config, tmp_path / "local", checked) as cloud:
        data = cloud.names.bucket(wiring.DATA)
        artifact = f"s3://{data}/models/run-1/job/output/model.tar.gz"
        boto3.client("s3").upload_file(str(model_archive), data, artifact.removeprefix(f"s3://{data}/"))
        evaluation = invoke(wiring.EVALUATE_MODEL, cloud, {"run_id": "run-1", "model_artifact": artifact})
        registration = invoke(wiring.REGISTER_MODEL, cloud, {
            "run_id": "run-1", "dataset": "synth", "training_job_name": f"{wiring.resource_prefix(STAGE)}0-tiny",
            "model_artifact": artifact, "summary_uri": None, "evaluation": evaluation})
        assert registration["approved"] is True, registration
        serving_key = evaluation["serving_artifact"].removeprefix(f"s3://{data}/")
        copy = boto3.client("s3").get_object(Bucket=data, Key=serving_key)["Body"].read()
        assert hashlib.sha256(copy).hexdigest() == evaluation["serving_sha256"]
        metadata = boto3.client("sagemaker").describe_model_package(
            ModelPackageName=registration["model_package_arn"])["CustomerMetadataProperties"]
        assert metadata[promotion.SERVING_ARTIFACT] == evaluation["serving_artifact"]
        assert metadata[promotion.SERVING_SHA256] == evaluation["serving_sha256"]
        with tarfile.open(fileobj=io.BytesIO(copy)) as lean:
            names = set(lean.getnames())
            served = json.loads(lean.extractfile("model.json").read())
        assert names == {"model.json", served["onnx"], served["out_of_distribution"]["file"], "code/inference.py",
                         "code/imaging.py", "code/decision.py", "code/ood.py"}, names
        assert len(copy) < model_archive.stat().st_size

        inference = cloud.names.bucket(wiring.INFERENCE)
        name_of = source_names.namer(boto3.client("secretsmanager"), STAGE, inference)
        [prediction] = operations.predict_files(boto3.client("s3"), inference, [XRAY], name_of, timeout_s=60).values()
        assert prediction["status"] == "predicted", prediction
        assert prediction["endpoint"] == f"lambda:{registration['model_package_arn']}"
        assert prediction["label"] in ("bacterial", "normal", "viral")
        assert prediction["audit"]["artifact_sha256"] == evaluation["artifact_sha256"]
        assert boto3.client("sagemaker").list_endpoints()["Endpoints"] == []

        # `cxr batch-predict`: no SageMaker model in this mode, so the predict function scores each staged object
        folder = tmp_path / "batch"
        (folder / "ward 7").mkdir(parents=True)
        (folder / "ward 7" / "Jane Doe chest.jpeg").write_bytes(XRAY.read_bytes())
        (folder / "notes.txt").write_text("not an image")
        scoring = BatchScoring(boto3.client("sagemaker"), boto3.client("s3"), STAGE, inference, poll_seconds=0.1,
                               functions=boto3.client("lambda"), predict_function=cloud.names.function(wiring.PREDICT))
        scored = scoring.run(str(folder), tmp_path / "scored", log=lambda _: None)
        assert scored["files"] == 2 and scored["counts"] == {"predicted": 1, "rejected": 1}, scored
        answer = json.loads((tmp_path / "scored" / "ward 7" / "Jane Doe chest.jpeg.json").read_text())
        assert answer["label"] in ("bacterial", "normal", "viral") and answer["lambda_batch"] == scored["lambda_batch"]
        assert answer["artifact_sha256"] == evaluation["artifact_sha256"]
        refused = json.loads((tmp_path / "scored" / "notes.txt.json").read_text())
        assert refused["status"] == "rejected" and refused["error"].startswith("not_an_image: ")
        assert refused["artifact_sha256"] == evaluation["artifact_sha256"]
        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=inference)["Contents"]]
        assert not any("Jane" in key or "notes" in key for key in keys), keys
        assert boto3.client("sagemaker").list_transform_jobs()["TransformJobSummaries"] == []
        with pytest.raises(UserError, match="--model"):
            scoring.run(str(folder), tmp_path / "again", model="some-model", log=lambda _: None)

        # the re-score after the approval: the approved package, loaded in RescoreBatch, answers the day's uploads
        started = invoke(wiring.START_RESCORE, cloud, {"run_id": "run-1",
                                                       "model_package_arn": registration["model_package_arn"]})
        assert started["started"] and started["images"] == 1 and len(started["batches"]) == 1, started
        for batch in started["batches"]:
            assert invoke(wiring.RESCORE_BATCH, cloud, {"package": started["package"], "input": started["input"],
                                                        **batch}) == {"answered": 1, "rejected": 0}
        report = invoke(wiring.RESCORE_STATUS, cloud, {**{k: started[k] for k in (
            "job", "output", "input", "images", "scorer")}, "run_id": "run-1", "started": True})
        assert report["done"] and report["scored"] == 1 and report["changed"] == 0, report
        [row] = list(csv.DictReader(io.StringIO(boto3.client("s3").get_object(
            Bucket=data, Key="reports/run-1/rescore.csv")["Body"].read().decode())))
        assert row["new_label"] == row["previous_label"] == prediction["label"] and not row["error"], row
        [answer_key] = [o["Key"] for o in boto3.client("s3").list_objects_v2(
            Bucket=inference, Prefix=f"batch-output/{started['job']}/")["Contents"]]
        rescored = json.loads(boto3.client("s3").get_object(Bucket=inference, Key=answer_key)["Body"].read())
        assert rescored["artifact_sha256"] == evaluation["artifact_sha256"]
        assert boto3.client("sagemaker").list_transform_jobs()["TransformJobSummaries"] == []

        # `cxr models promote` changes the registry, which is the whole deployment here: no Deploy call, no endpoint
        models = ModelRegistry(boto3.client("sagemaker"), boto3.client("s3"), boto3.client("lambda"),
                               wiring.model_package_group(STAGE), cloud.names.function(wiring.DEPLOY_MODEL),
                               cloud.names.function(wiring.ENDPOINT_STATUS), poll_seconds=0.1)
        promoted = models.promote(str(registration["version"]), log=lambda _: None)
        assert promoted["package"] == registration["model_package_arn"] and "predict function" in promoted[
            "endpoint_name"]
        assert boto3.client("sagemaker").list_endpoints()["Endpoints"] == []
    deployment, calls, _ = checked
    denials = deployment.check(calls)
    assert not denials, "the synthesized policies refuse:\n" + "\n".join(map(str, denials))
    predict_role = next(call.principal for call in calls if call.action == "sagemaker:DescribeModelPackage"
                        and "Predict" in call.principal)
    assert {call.action for call in calls if call.principal == predict_role} >= {
        "sagemaker:ListModelPackages", "sagemaker:DescribeModelPackage", "s3:GetObject"}
    read = {call.resource.split(":::", 1)[-1] for call in calls
            if call.principal == predict_role and call.action == "s3:GetObject"}
    assert f"{data}/{serving_key}" in read and not any(key.endswith("model.tar.gz") for key in read), read
