"""The issue's "done when" on the offline cloud: the demo dataset, three runs, the champion gate, a rollback.

Run 1 is the first champion (the benchmark set is drawn by its PrepareDataset); run 2, trained one epoch at a
learning rate that barely moves the weights, is rejected by the paired test on that set; run 3, trained as
run 1 (deterministic), is approved as not worse and deployed; `cxr models rollback` brings run 1 back and the
next prediction names its artifact. Run 3's deployment re-scores the X-rays predicted before it
(``reports/run-3/rescore.csv``). Slow: it preprocesses 300 X-rays and trains three small models.
"""

import csv
import io
import json
from pathlib import Path

import boto3
import pytest
from recorded import recorded_cloud

from cxr import operations, source_names
from cxr.commands import status
from cxr.local import names as local_names
from cxr.model_registry import ModelRegistry
from cxr.target import Target
from infra import wiring
from infra.config import Config
from lambdas.domain import benchmark, promotion

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "samples" / "kermany-demo"
GOOD = {"architecture": "compact", "image-size": "64", "epochs": "4", "batch-size": "16", "deterministic": "1",
        "threads": "1", "seed": "0"}
DEGRADED = {**GOOD, "epochs": "1", "lr": "0.0000001"}


@pytest.fixture(scope="module")
def cloud(synthesized, module_dir):
    """The offline cloud with the demo dataset ingested; every call of the deployment's principals (functions,
    state machine, training job, model: the transform jobs too) checked against the synthesized policies."""
    config = Config.demo(stage="e2e", quality_gate={"accuracy": 0.0}, prediction_retention_days=7)
    checked = []
    with recorded_cloud(synthesized, config, module_dir("local"), checked) as running:
        s3 = boto3.client("s3")
        keys = operations.upload_dataset(s3, running.names.bucket(wiring.DATA), DEMO / "train", "demo")
        assert operations.ingest_summary(s3, running.names.bucket(wiring.DATA), "demo", keys,
                                         source_names.namer(boto3.client("secretsmanager"), config.stage,
                                                            running.names.bucket(wiring.DATA))).processed == 300
        yield running
    deployment, calls, _ = checked
    denials = deployment.check(calls)
    assert not denials, "the synthesized policies refuse:\n" + "\n".join(map(str, denials))


def run_pipeline(cloud, run_id: str, hyperparameters: dict) -> dict:
    sfn = boto3.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=cloud.state_machine_arn, name=run_id, input=json.dumps(
        {"run_id": run_id, "dataset": "demo", "hyperparameters": hyperparameters}))["executionArn"]
    list(operations.follow_execution(sfn, arn, poll_seconds=0.2))
    described = sfn.describe_execution(executionArn=arn)
    assert described["status"] == "SUCCEEDED", described
    return json.loads(described["output"])


def registry_of(cloud) -> ModelRegistry:
    return ModelRegistry(boto3.client("sagemaker"), boto3.client("s3"), boto3.client("lambda"),
                         wiring.model_package_group("e2e"), cloud.names.function(wiring.DEPLOY_MODEL),
                         cloud.names.function(wiring.ENDPOINT_STATUS), poll_seconds=0.1)


class Deployment(Target):
    """`cxr status`'s target on the recorded cloud: its state machine and functions by their local names."""

    def __init__(self, cloud):
        super().__init__(boto3.Session(region_name=local_names.REGION), "e2e", local_names.ACCOUNT, local_names.REGION)
        self.cloud = cloud

    def state_machine_arn(self) -> str:
        return self.cloud.state_machine_arn

    def function_name(self, spec, part: str) -> str:
        return self.cloud.names.function(spec)


def serving(cloud) -> str:
    return boto3.client("sagemaker").describe_endpoint(EndpointName=wiring.endpoint_name("e2e"))["EndpointConfigName"]


def test_champion_challenger_and_rollback_on_the_demo_dataset(cloud):
    first = run_pipeline(cloud, "run-1", GOOD)
    set_version = first["dataset"]["benchmark_version"]
    stored = json.loads(boto3.client("s3").get_object(Bucket=cloud.names.bucket(wiring.DATA),
                                                      Key=benchmark.key("demo"))["Body"].read())
    assert set_version == stored["version"] and set(stored["counts"]) == {"bacterial", "normal", "viral"}
    assert all(14 <= n <= 16 for n in stored["counts"].values())  # 15 % of each label's 100 patients
    assert first["registration"]["decision"] == "first-model" and first["registration"]["approved"]

    sqs, sns = boto3.client("sqs"), boto3.client("sns")  # what the pipeline announces
    inbox = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    sns.subscribe(TopicArn=cloud.names.topic_arn, Protocol="sqs", Endpoint=sqs.get_queue_attributes(
        QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])
    degraded = run_pipeline(cloud, "run-2", DEGRADED)
    [notice] = [json.loads(json.loads(m["Body"])["Message"]) for m in sqs.receive_message(
        QueueUrl=inbox, MaxNumberOfMessages=10).get("Messages", [])]
    assert notice["outcome"] == "rejected" and notice["registration"] == degraded["registration"]
    registration = degraded["registration"]
    assert registration["status"] == promotion.REJECTED and registration["decision"] == "worse-than-champion"
    assert "deployment" not in degraded and serving(cloud) == first["training"]["TrainingJobName"]
    failed = [name for name, stats in registration["statistics"].items() if not stats["passed"]]
    assert failed and all(registration["statistics"][name]["interval"][0] < -0.02 for name in failed)

    ward = sorted(Path("samples/kermany-val16").rglob("*.jpeg"))[:3]  # X-rays seen by the first champion
    inference_bucket = cloud.names.bucket(wiring.INFERENCE)
    names = source_names.namer(boto3.client("secretsmanager"), cloud.config.stage, inference_bucket)
    seen = operations.predict_files(boto3.client("s3"), inference_bucket, ward, names, prefix="ward/")
    lambda_client, function = boto3.client("lambda"), cloud.names.function(wiring.START_RESCORE)
    environment = lambda_client.get_function_configuration(FunctionName=function)["Environment"]["Variables"]
    lambda_client.update_function_configuration(FunctionName=function, Environment={"Variables": {
        **environment, wiring.ENV_RESCORE_DAYS: "7"}})  # the operator turns the re-score on

    equal = run_pipeline(cloud, "run-3", GOOD)
    assert equal["registration"]["decision"] == "not-worse" and equal["registration"]["approved"]
    rescore = equal["rescore"]
    assert rescore["done"] and rescore["scored"] == 3 and rescore["report"].endswith("reports/run-3/rescore.csv")
    bucket, key = rescore["report"][len("s3://"):].split("/", 1)
    rows = list(csv.DictReader(io.StringIO(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
                                           .decode())))
    by_name = {row["name"]: row for row in rows}
    for path in ward:  # the same weights through Batch Transform tell each X-ray what the endpoint told it
        row = by_name[seen[path]["source"]["name"]]
        assert row["previous_label"] == seen[path]["label"] == row["new_label"] and row["changed"] == "false"
        assert row["previous_model"] == seen[path]["model_id"]
    assert equal["dataset"]["benchmark_version"] == set_version
    assert serving(cloud) == equal["training"]["TrainingJobName"]

    models = registry_of(cloud)
    listed = models.list()
    assert [(r["version"], r["status"], r["champion"]) for r in listed] == [
        (1, promotion.APPROVED, False), (2, promotion.REJECTED, False), (3, promotion.APPROVED, True)]
    comparison = models.compare("1", "2")
    assert comparison["benchmark"] == set_version and not comparison["passed"]
    assert comparison["patients"] == stored["patients"]

    rolled = models.rollback(log=lambda _: None)
    assert rolled["version"] == 1 and serving(cloud) == first["training"]["TrainingJobName"]
    assert [r["status"] for r in models.list()] == [promotion.APPROVED, promotion.REJECTED, promotion.REJECTED]
    xray = min(Path("samples/kermany-val16").rglob("*.jpeg"))
    after = operations.predict_files(boto3.client("s3"), inference_bucket, [xray], names)[xray]
    assert after["status"] == "predicted"
    assert after["audit"]["artifact_sha256"] == first["evaluation"]["artifact_sha256"]

    promoted = models.promote("3", log=lambda _: None)  # and forward again, by hand
    assert promoted["version"] == 3 and serving(cloud) == equal["training"]["TrainingJobName"]
    assert models.champion()["ModelPackageVersion"] == 3


def test_batch_predict_scores_a_folder_with_one_bad_file(cloud, tmp_path):
    """Batch Transform through the serving model's own inference.py: 16 X-rays and a PDF in, 17 answers out."""
    import shutil

    from cxr.batch_scoring import BatchScoring

    folder = tmp_path / "ward"
    shutil.copytree("samples/kermany-val16", folder)
    (folder / "not-an-xray.jpeg").write_bytes(b"%PDF-1.4 not an image")
    scoring = BatchScoring(boto3.client("sagemaker"), boto3.client("s3"), "e2e", cloud.names.bucket(wiring.INFERENCE),
                           poll_seconds=0.2)
    progress = []
    result = scoring.run(str(folder), tmp_path / "out", log=progress.append)
    assert result["counts"] == {"predicted": 16, "rejected": 1} and any("17/17 scored" in line for line in progress)
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert len(rows) == 17 and {r["status"] for r in rows} == {"predicted", "rejected"}
    served = boto3.client("sagemaker").describe_model(ModelName=scoring.serving_model())
    digest = served["PrimaryContainer"]["Environment"]["CXR_ARTIFACT_SHA256"]
    for row in rows:
        answer = json.loads((tmp_path / "out" / f"{row['file']}.json").read_text())
        assert answer["artifact_sha256"] == digest == row["artifact_sha256"]
        if row["file"] == "not-an-xray.jpeg":
            assert answer["status"] == "rejected" and answer["error"] and not answer.get("label")
        else:
            assert answer["label"] in ("bacterial", "normal", "viral") and 0 <= float(row["confidence"]) <= 1
    bucket = cloud.names.bucket(wiring.INFERENCE)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="wards/a/DOE_JOHN_MRN1234567.jpeg",
                  Body=min(Path("samples/kermany-val16").rglob("*.jpeg")).read_bytes())
    again = scoring.run(f"s3://{bucket}/wards/a", tmp_path / "again", log=lambda _: None)
    assert again["counts"] == {"predicted": 1}  # an s3:// prefix, copied under positions
    assert json.loads((tmp_path / "again" / "DOE_JOHN_MRN1234567.jpeg.json").read_text())["status"] == "predicted"
    keys = [o["Key"] for prefix in ("batch-input/", "batch-output/")
            for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    ours = [k for k in keys if result["transform_job"] in k or again["transform_job"] in k]
    assert len(ours) == 2 * (17 + 1)  # each input and its answer, under positions
    assert not [k for k in keys if "MRN" in k or "person" in k or "NORMAL" in k]


def test_a_site_threshold_is_adopted_pending_then_served_and_rolled_back(cloud):
    """`cxr models adopt-threshold`: the serving model registered again at a threshold inside its band, pending
    until promoted; then the endpoint answers at it from the same artifact, and a rollback restores the model's own."""
    from cxr.errors import UserError
    from lambdas.domain import threshold_amendment

    models = registry_of(cloud)
    trained = models.champion()
    meta = trained["CustomerMetadataProperties"]
    rule = models.show(str(trained["ModelPackageVersion"]))["metrics"]["decision"]
    own, high = rule["threshold"], rule["band"][1]
    with pytest.raises(UserError, match="outside the model's referral band"):
        models.adopt_threshold(round(min(high + 0.01, 0.999), 3))
    adopted = round((own + high) / 2, 3)
    result = models.adopt_threshold(adopted)
    assert result["created"] and result["status"] == promotion.PENDING and result["threshold"] == f"{adopted:.3f}"
    statistics = result["promotion"]["comparison"]["metrics"]
    assert statistics["roc_auc"]["difference"] == 0  # the same p(pneumonia), called at another threshold
    assert statistics["sensitivity"]["difference"] <= 0 <= statistics["specificity"]["difference"]
    again = models.adopt_threshold(adopted)
    assert again["version"] == result["version"] and not again["created"]
    assert models.champion()["ModelPackageArn"] == trained["ModelPackageArn"]  # pending serves nothing

    models.promote(str(result["version"]), log=lambda _: None)
    assert serving(cloud) == threshold_amendment.model_name(meta[promotion.TRAINING_JOB], adopted)
    xray = min(Path("samples/kermany-val16").rglob("*.jpeg"))
    inference_bucket = cloud.names.bucket(wiring.INFERENCE)
    names = source_names.namer(boto3.client("secretsmanager"), cloud.config.stage, inference_bucket)
    served = operations.predict_files(boto3.client("s3"), inference_bucket, [xray], names, prefix="site/")[xray]
    assert served["threshold"] == adopted and served["audit"]["artifact_sha256"] == meta[promotion.ARTIFACT_SHA256]
    assert served["referral_band"][0] < adopted < served["referral_band"][1]
    report = status.collect(Deployment(cloud), runs=5)  # `cxr status`: the served id, figures at its threshold
    assert report["endpoint"]["threshold"] == str(adopted) and report["endpoint"]["run_id"] == meta[promotion.RUN_ID]
    assert report["endpoint"]["threshold_servable"]  # the trained artifact's metrics.json says its handler can
    assert report["endpoint"]["model_id"] == served["model_id"] == threshold_amendment.served_model_id(
        models.show(str(trained["ModelPackageVersion"]))["metrics"]["model_id"], adopted)
    shown = models.show(str(result["version"]))
    assert shown["metrics"]["threshold"] == adopted and shown["metrics"]["evaluated_on"].startswith("benchmark set")
    assert shown["metrics"]["binary"]["specificity"] == statistics["specificity"]["challenger"]

    models.rollback(log=lambda _: None)
    assert serving(cloud) == meta[promotion.TRAINING_JOB]
    back = operations.predict_files(boto3.client("s3"), inference_bucket, [xray], names, prefix="back/")[xray]
    assert back["threshold"] == own and back["audit"]["artifact_sha256"] == meta[promotion.ARTIFACT_SHA256]
