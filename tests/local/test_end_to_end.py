"""The offline cloud end to end: uploads -> preprocess -> the synthesized pipeline -> endpoint -> predictions.

Tiny generated datasets and a few training epochs keep it fast. Every AWS call each principal makes
is recorded and checked against the IAM policies the CDK app synthesized (:mod:`cxr.local.iam_trace`,
:mod:`cxr.local.iam_deployment`); the last test proves each permission the runs used is needed.
"""

import json
from pathlib import Path

import boto3
import pytest
from recorded import recorded_cloud

import corpus
from cxr import operations, source_names
from cxr.local import cloud as local_cloud
from cxr.local import iam_trace
from cxr.local.iam_deployment import summary
from infra import wiring
from infra.config import Config

pytestmark = pytest.mark.slow
QUICK = {"architecture": "compact", "image-size": "64", "epochs": "4", "batch-size": "16"}
ANY_MODEL = {"accuracy": 0.0}


@pytest.fixture(scope="module")
def dataset(module_dir):
    from training import synthetic

    root = synthetic.write_dataset(module_dir("data") / "synth", per_class=14)
    (root / "NORMAL" / "IM-9999-0001-broken.jpeg").write_bytes(corpus.truncated(corpus.jpeg(), 0.5))
    return root


@pytest.fixture(scope="module")
def traces() -> list:
    """(deployment, calls) of each run in this module, for the permission mutation test."""
    return []


@pytest.fixture
def cloud(synthesized, tmp_path, traces):
    """An offline cloud whose principals' calls must all be allowed by the synthesized policies."""
    config = Config.demo(stage="e2e", quality_gate=ANY_MODEL, prediction_retention_days=7,  # as conftest
                         review_sample_rate=1.0, review_dataset="synth")  # every prediction queued for review
    checked = []
    with recorded_cloud(synthesized, config, tmp_path / "local", checked) as running:
        yield running
    deployment, calls, events = checked
    iam_trace.save(tmp_path / "iam-trace.json", calls, events)
    traces.append((deployment, calls))
    print(f"IAM trace ({tmp_path / 'iam-trace.json'}): distinct actions per role {summary(calls)}")
    denials = deployment.check(calls)
    assert not denials, "the synthesized policies refuse:\n" + "\n".join(map(str, denials))


def notifications(cloud, queue: str = "notifications") -> str:
    """An SQS queue subscribed to the pipeline's topic, to read what it announced (from now on: a new ``queue``)."""
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=cloud.names.topic_arn, Protocol="sqs", Endpoint=arn)
    return url


def messages(url: str) -> list[dict]:
    received = boto3.client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(json.loads(m["Body"])["Message"]) for m in received]


def run_pipeline(cloud, run_id: str, hyperparameters: dict) -> dict:
    sfn = boto3.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=cloud.state_machine_arn, name=run_id, input=json.dumps(
        {"run_id": run_id, "dataset": "synth", "hyperparameters": hyperparameters}))["executionArn"]
    events = list(operations.follow_execution(sfn, arn, poll_seconds=0.2))
    described = sfn.describe_execution(executionArn=arn)
    states = [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
    return {"status": described["status"], "states": states, "output": json.loads(described.get("output") or "{}")}


def upload(cloud, dataset: Path) -> operations.IngestSummary:
    s3 = boto3.client("s3")
    keys = operations.upload_dataset(s3, cloud.names.bucket(wiring.DATA), dataset, "synth")
    return operations.ingest_summary(s3, cloud.names.bucket(wiring.DATA), "synth", keys, name_of(cloud))


def name_of(cloud, role: str = wiring.DATA):
    """The offline cloud's names of a bucket's uploads (``cxr.source_names``)."""
    return source_names.namer(boto3.client("secretsmanager"), cloud.config.stage, cloud.names.bucket(role))


def test_upload_train_deploy_predict(cloud, dataset):
    summary = upload(cloud, dataset)
    assert summary.processed == 42  # a broken upload is quarantined while the rest of the batch proceeds
    [(key, reason)] = summary.quarantined.items()
    assert key.endswith("IM-9999-0001-broken.jpeg") and reason.startswith("truncated")
    inbox = notifications(cloud)

    run = run_pipeline(cloud, "run-1", QUICK)

    assert run["status"] == "SUCCEEDED", run
    packing = run["output"]["dataset"]["packing"]  # one item a split at this size, each packed by its own invocation
    assert run["states"][:7 + len(packing)] == [
        wiring.READ_REQUEST_STATE, wiring.VALID_REQUEST_STATE, wiring.APPLY_DEFAULTS_STATE,
        wiring.PREPARE_DATASET_STATE, wiring.PACK_SHARDS_STATE, *[wiring.PACK_SHARD_STATE] * len(packing),
        wiring.TRAIN_STATE, wiring.EVALUATE_STATE]
    assert [item["split"] for item in packing] == ["train", "validation", "test"]
    assert run["states"][-1] == wiring.NOTIFY_DEPLOYED_STATE
    [message] = messages(inbox)
    assert message["outcome"] == "deployed" and message["run_id"] == "run-1"
    model = run["output"]["training"]["TrainingJobName"]
    endpoint = boto3.client("sagemaker").describe_endpoint(EndpointName=wiring.endpoint_name("e2e"))
    assert endpoint["EndpointConfigName"] == model

    s3 = boto3.client("s3")
    xrays = sorted(Path("samples/kermany-val16").rglob("*.jpeg"))[:2]
    inference = name_of(cloud, wiring.INFERENCE)
    results = operations.predict_files(s3, cloud.names.bucket(wiring.INFERENCE), [*xrays, Path("README.md")],
                                       inference)
    assert len({results[path]["model_id"] for path in xrays}) == 1
    for path in xrays:
        prediction = results[path]
        assert prediction["status"] == "predicted" and prediction["endpoint"] == wiring.endpoint_name("e2e")
        assert prediction["label"] in ("bacterial", "normal", "viral")
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-4
        assert path.stem not in json.dumps(prediction)  # the upload is named, never keyed
        assert prediction["source"]["name"] in {inference(f"incoming/{n:04d}/{path.name}") for n in range(3)}
    assert results[Path("README.md")]["status"] == "rejected"
    items = boto3.client("dynamodb").scan(TableName=cloud.names.table(wiring.PREDICTIONS_TABLE))["Items"]
    assert len(items) == 2
    check_audit_trail(cloud, run, message, results[xrays[0]], xrays[0])
    second = check_review_loop(cloud, results[xrays[0]], xrays[0])
    check_field_monitor(cloud, results[xrays[0]])
    check_a_better_model_replaces_the_endpoint_one_below_the_gate_does_not(cloud, run, second)


def check_review_loop(cloud, prediction: dict, xray: Path) -> dict:
    """The prediction's review task, judged on the review page (headless Chromium, the offline review server, the
    ReviewApi function's role checked like every other), becomes data: the copy lands in raw/synth/NORMAL/,
    ingest keeps the reviewed label and the patient id, and the next pipeline run's manifests list it (returned)."""
    from cxr.local import review_server
    from lambdas import prepare_dataset
    from lambdas.domain import layout, review, source_state
    from lambdas.state_store import StateStore

    source = prediction["source"]
    task = review.task_id(source["bucket"], source["name"], source["version_id"])
    with review_server.for_cloud(cloud, "reader@example.org") as server:
        review_on_the_page(server.url, task)
    data = cloud.names.bucket(wiring.DATA)
    copy = f"{layout.RAW}synth/NORMAL/{prediction['audit']['content_hash']}{xray.suffix}"
    records = {r["source"]["name"]: r for r in StateStore(cloud.names.table(wiring.SOURCE_STATE_TABLE)).records(
        source_state.dataset_partition(data, "synth"))}
    reviewed = records[name_of(cloud)(copy)]  # the copy's S3 event ran ingest
    assert reviewed["outcome"] == source_state.PROCESSED
    assert (reviewed["image"]["label"], reviewed["image"]["patient_id"]) == ("normal", "1427")
    run = run_pipeline(cloud, "run-after-review", QUICK)
    assert run["status"] == "SUCCEEDED", run
    s3 = boto3.client("s3")
    manifests = [json.loads(s3.get_object(Bucket=data, Key=prepare_dataset.manifest_key("run-after-review", split))[
        "Body"].read()) for split in ("train", "validation", "test")]
    assert reviewed["image"]["processed_key"] in [key for manifest in manifests for key in manifest[1:]]
    return run


def check_field_monitor(cloud, prediction: dict) -> None:
    """The daily FieldMonitor, invoked as its schedule would (its role's calls checked like every other): it finds
    the reviewed model's tasks and its run's metrics.json by the model id, and one verdict is too few to alarm on."""
    from lambdas import field_monitor

    answer = boto3.client("lambda").invoke(
        FunctionName=cloud.names.function(wiring.FIELD_MONITOR),
        Payload=json.dumps({"source": "aws.events", "detail-type": "Scheduled Event"}).encode())
    result = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, result
    model = prediction["model_id"]
    assert model in result["models"] and model in result["recent"] and model in result["measured_against"]
    assert result["below"] == {} and result[field_monitor.METRIC] == 0


def review_on_the_page(url: str, task: str) -> None:
    """Sign in, open the task, give `normal` with the keyboard, see it leave the queue."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    import reviewing
    from cxr.local.review_server import LOCAL_TEMPORARY_PASSWORD

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (make setup installs Debian's chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        reviewing.sign_in(page, url, "reader@example.org", LOCAL_TEMPORARY_PASSWORD, "Chosen-Pass-2026!")
        expect(page.locator(f'#queue li[data-id="{task}"]')).to_have_count(1)
        page.click(f'#queue li[data-id="{task}"]')
        expect(page.locator("#details")).to_have_attribute("data-task", task)  # loaded, image and all
        page.locator("#viewer").click()
        page.keyboard.press("1")
        page.keyboard.press("Enter")
        expect(page.locator(f'#queue li[data-id="{task}"]')).to_have_count(0)
        browser.close()


def check_audit_trail(cloud, run: dict, message: dict, prediction: dict, xray: Path) -> None:
    """The packed artifact's digest, taken by Evaluate, reaches the endpoint's answer and the prediction record;
    the record's JSON is under Object Lock; `cxr audit` traces it back to the run's gate report."""
    import hashlib

    from cxr import target
    from cxr.commands import audit
    from infra.version import code_version
    from lambdas.domain import imaging, layout

    s3 = boto3.client("s3")
    bucket, key = layout.split_s3_uri(run["output"]["training"]["ModelArtifacts"]["S3ModelArtifacts"])
    digest = hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
    assert run["output"]["evaluation"]["artifact_sha256"] == digest == message["artifact_sha256"]
    assert run["output"]["deployment"]["artifact_sha256"] == digest
    trail = prediction["audit"]
    assert trail["artifact_sha256"] == digest and trail["code_version"] == code_version()
    assert trail["content_hash"] == imaging.normalise(xray.read_bytes()).content_hash
    assert trail["model_id"] == prediction["model_id"] and len(trail["referral_band"]) == 2
    locked = s3.head_object(Bucket=cloud.names.bucket(wiring.INFERENCE),
                            Key=layout.prediction_key(prediction["source"]["name"]))
    assert locked["ObjectLockMode"] == "GOVERNANCE"
    deployment = target.Target(session=boto3.Session(), stage="e2e", account=local_cloud.ACCOUNT,
                               region=local_cloud.REGION)
    audited = audit.Trail(deployment, cloud.names.table(wiring.PREDICTIONS_TABLE),
                          cloud.names.table(wiring.SOURCE_STATE_TABLE)).collect(trail["content_hash"])
    [model] = audited["models"]
    assert model["run"]["run_id"] == "run-1" and model["run"]["digest_matches"] and model["run"]["passed"]
    assert model["sagemaker_model"]["artifact_sha256"] == digest


def test_failed_training_notifies_and_deploys_nothing(cloud, dataset):
    upload(cloud, dataset)
    inbox = notifications(cloud)
    run = run_pipeline(cloud, "run-bad", {**QUICK, "architecture": "no-such-network"})
    assert run["status"] == "FAILED"
    assert wiring.TRAIN_STATE in run["states"] and run["states"][-2:] == [wiring.NOTIFY_FAILURE_STATE,
                                                                          wiring.FAILED_STATE]
    [message] = messages(inbox)
    assert message["outcome"] == "failed" and message["error"]["Error"] == "SageMaker.TrainingJobFailed"
    assert "no-such-network" in message["error"]["Cause"]
    assert boto3.client("sagemaker").list_endpoints()["Endpoints"] == []


def check_a_better_model_replaces_the_endpoint_one_below_the_gate_does_not(cloud, first: dict, second: dict) -> None:
    """``first`` deployed, ``second`` passed too and updated the endpoint in place; then the operator tightens the
    gate and a weak run is rejected, the endpoint still serving ``second`` (runs of the upload test's cloud, which
    has already trained twice: no cloud and no runs of its own)."""
    sagemaker = boto3.client("sagemaker")
    xray = min(Path("samples/kermany-val16").rglob("*.jpeg"))
    inference_bucket = cloud.names.bucket(wiring.INFERENCE)
    assert [r["states"][-1] for r in (first, second)] == [wiring.NOTIFY_DEPLOYED_STATE] * 2
    assert second["output"]["deployment"]["action"] == "updated"
    serving = second["output"]["training"]["TrainingJobName"]
    assert sagemaker.describe_endpoint(EndpointName=wiring.endpoint_name("e2e"))["EndpointConfigName"] == serving
    names = name_of(cloud, wiring.INFERENCE)
    before = operations.predict_files(boto3.client("s3"), inference_bucket, [xray], names, prefix="before/")[xray]

    lambda_client = boto3.client("lambda")  # the operator tightens the gate beyond what one epoch can reach
    function = cloud.names.function(wiring.EVALUATE_MODEL)
    environment = lambda_client.get_function_configuration(FunctionName=function)["Environment"]["Variables"]
    environment[wiring.ENV_QUALITY_GATE] = json.dumps({"accuracy": 1.0, "macro_f1": 1.0})
    lambda_client.update_function_configuration(FunctionName=function, Environment={"Variables": environment})
    inbox = notifications(cloud, "gate-notifications")  # the upload test's queue holds the earlier runs' news

    weak = run_pipeline(cloud, "run-weak", {**QUICK, "epochs": "1"})

    assert weak["status"] == "SUCCEEDED"
    assert weak["states"][-2:] == [wiring.NOTIFY_REJECTED_STATE, wiring.NOT_DEPLOYED_STATE]
    assert wiring.DEPLOY_STATE not in weak["states"]
    [message] = messages(inbox)
    assert message["outcome"] == "rejected" and message["failures"]
    assert sagemaker.describe_endpoint(EndpointName=wiring.endpoint_name("e2e"))["EndpointConfigName"] == serving
    after = operations.predict_files(boto3.client("s3"), inference_bucket, [xray], names, prefix="after/")[xray]
    assert after["status"] == "predicted" and after["model_id"] == before["model_id"]


@pytest.fixture(scope="module")
def two_instances(module_dir, synthesized) -> tuple[Config, object]:
    """The app with ``training_instance_count=2`` (after the session's synthesis, reusing its caches)."""
    from cxr.local import pipeline

    config = Config.demo(stage="e2e", quality_gate=ANY_MODEL, prediction_retention_days=7, training_instance_count=2)
    return config, pipeline.synthesize(config, module_dir("cdk-2") / "cdk.out")


def test_two_training_instances_train_through_the_toolkit_launch_and_deploy(two_instances, dataset, tmp_path):
    """The Train state asks for two instances: the offline cloud runs the PyTorch container's entry on algo-1 and
    algo-2, which start train.py through torchrun (one rank each, gloo); rank 0's artifact deploys and predicts."""
    config, synthesized = two_instances
    checked = []
    with recorded_cloud(synthesized, config, tmp_path / "local", checked) as cloud:
        upload(cloud, dataset)
        run = run_pipeline(cloud, "run-2x", QUICK)
        assert run["status"] == "SUCCEEDED", run
        assert run["states"][-1] == wiring.NOTIFY_DEPLOYED_STATE
        job = run["output"]["training"]["TrainingJobName"]
        assert boto3.client("sagemaker").describe_training_job(TrainingJobName=job)["ResourceConfig"][
            "InstanceCount"] == 2
        hosts = cloud.training_jobs.workdir / job / "hosts"
        assert "torchrun --nnodes 2 --nproc_per_node 1 --master_addr algo-1 --master_port 7777 --node_rank 1" in (
            hosts / "algo-2" / "train.log").read_text()
        assert json.loads((hosts / "algo-1" / "model" / "model.json").read_text())["distributed"]["world_size"] == 2
        # the training shards dealt by ShardedByS3Key (FastFile: linked in place of a mount): disjoint, all of them
        shares = [{p.name for p in (hosts / h / "input" / "data" / "train").rglob("*.tar")}
                  for h in ("algo-1", "algo-2")]
        prefix = run["output"]["dataset"]["shards"]["train"].split("/", 3)[3]
        every = {o["Key"].rsplit("/", 1)[1] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(
            Bucket=cloud.names.bucket(wiring.DATA), Prefix=prefix) for o in page.get("Contents", [])}
        assert shares[0] and shares[1] and not shares[0] & shares[1] and shares[0] | shares[1] == every
        config_of = json.loads((hosts / "algo-2" / "input" / "config" / "inputdataconfig.json").read_text())
        assert (config_of["train"]["TrainingInputMode"], config_of["train"]["S3DistributionType"]) == (
            "FastFile", "ShardedByS3Key")
        xray = min(Path("samples/kermany-val16").rglob("*.jpeg"))
        results = operations.predict_files(boto3.client("s3"), cloud.names.bucket(wiring.INFERENCE), [xray],
                                           name_of(cloud, wiring.INFERENCE))
        assert results[xray]["status"] == "predicted"
    deployment, calls, _ = checked
    denials = deployment.check(calls)
    assert not denials, "the synthesized policies refuse:\n" + "\n".join(map(str, denials))


def test_every_permission_the_runs_used_is_needed(traces):
    """Taking any one (role, action) the runs needed out of the synthesized policies fails the check, naming it."""
    if not traces:
        pytest.skip("needs this module's end-to-end runs (run the whole module)")
    needed = {(c.principal, c.action) for _, calls in traces for c in calls
              if c.principal.startswith("arn:aws:iam::")}
    for principal, action in sorted(needed):
        denied = []
        for deployment, calls in traces:
            denied += [d for d in deployment.without(principal, action).check(calls)
                       if (d.call.principal, d.call.action) == (principal, action)]
        assert denied, f"{principal} keeps working without {action}"
        assert action in str(denied[0]) and principal.rsplit("/", 1)[1] in str(denied[0])
    print(f"{len(needed)} (role, action) pairs, each needed")
