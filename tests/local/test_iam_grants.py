"""The synthesized roles allow what the pipeline's SageMaker steps make AWS do (the offline cloud's IAM check).

One synthesis of a deployment whose training instance has no NVMe storage (so the job gets a
volume KMS key), then the requests the pipeline makes, built from the synthesized definition and
the deploy function's own code, recorded (:mod:`cxr.local.iam_trace`) and checked against the
synthesized policies (:mod:`cxr.local.iam_deployment`) — no training run needed.
"""

import json

import boto3
import pytest
from moto import mock_aws

from cxr.local import iam_trace, pipeline
from cxr.local.iam_deployment import Deployment
from cxr.local.names import ACCOUNT, REGION, LocalNames
from cxr.local.references import LocalValues
from cxr.local.training import download_channel
from infra import asl, wiring
from infra.config import Config
from lambdas import deploy_model
from lambdas.domain.layout import split_s3_uri

pytestmark = pytest.mark.slow
CONFIG = Config(stage="iam", training_instance_type="ml.m5.xlarge")
NAMES = LocalNames(CONFIG.stage)
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"
JOB = f"{wiring.resource_prefix(CONFIG.stage)}0-3f1c2b61-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def synthesized(module_dir):
    return pipeline.synthesize(CONFIG, module_dir("cdk") / "cdk.out")


@pytest.fixture(scope="module")
def deployment(synthesized):
    return Deployment.from_templates(synthesized.templates, NAMES, KEY)


@pytest.fixture(scope="module")
def train_request(synthesized) -> dict:
    """The Train state's CreateTrainingJob request, as the state machine sends it for one run."""
    values = pipeline.reference_values(synthesized, NAMES, ACCOUNT, REGION, KEY)
    definition = json.loads(asl.definition(synthesized.templates, values, wiring.STATE_MACHINE_ID))
    data = NAMES.bucket(wiring.DATA)
    paths = {"TrainingJobName": JOB, "HyperParameters": {}, "S3Uri": f"s3://{data}/manifests/run-1/shards/train/",
             "S3OutputPath": f"s3://{data}/models/run-1/", "Value": "run-1"}

    def concrete(node):  # each JSONPath / intrinsic field takes what it evaluates to in one run
        if isinstance(node, list):
            return [concrete(n) for n in node]
        if not isinstance(node, dict):
            return node
        return {k.removesuffix(".$"): paths[k.removesuffix(".$")] if k.endswith(".$") else concrete(v)
                for k, v in node.items()}

    return concrete(definition["States"][wiring.TRAIN_STATE]["Parameters"])


def check(deployment, recorder) -> tuple[list, list[str]]:
    calls = deployment.expand(recorder.calls, recorder.events)
    return calls, [str(d) for d in deployment.check(calls)]


def test_the_training_job_reads_its_code_and_weights_channels(deployment, train_request, tmp_path):
    """S3Prefix channels are listed, then read: the job's role needs s3:ListBucket on CDK's asset bucket, and on
    the data bucket under the run's shard prefixes."""
    prefixed = [c for c in train_request["InputDataConfig"]
                if c["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"]
    assert {c["ChannelName"] for c in prefixed} == {wiring.TRAINING_CODE_CHANNEL, "pretrained", "train", "validation",
                                                    "test"}
    with mock_aws(), iam_trace.recording() as recorder:
        s3 = boto3.client("s3", region_name=REGION)
        for channel in prefixed:
            bucket, key = split_s3_uri(channel["DataSource"]["S3DataSource"]["S3Uri"])
            if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
                s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key=key + ("000000.tar" if key.endswith("/") else ""), Body=b"asset")
        with iam_trace.acting_as(train_request["RoleArn"]):
            for channel in prefixed:
                assert download_channel(channel, tmp_path / channel["ChannelName"]) == 1
    calls, denials = check(deployment, recorder)
    assert {(c.action, dict(c.context).get("s3:prefix")) for c in calls if c.action == "s3:ListBucket"} == {
        ("s3:ListBucket", split_s3_uri(c["DataSource"]["S3DataSource"]["S3Uri"])[1]) for c in prefixed}
    assert denials == []


def test_a_volume_key_needs_a_grant_from_the_training_role(deployment, train_request):
    """SageMaker: "If you specify a volume KMS key in the resource configuration of your training job, add
    kms:CreateGrant" to the execution role (CreateTrainingJob API: Execution Role Permissions)."""
    assert train_request["ResourceConfig"]["VolumeKmsKeyId"] == KEY  # ml.m5 has no NVMe storage
    recorder = iam_trace.Recorder(sync_callers=frozenset({NAMES.state_machine_role_arn}))
    recorder.api_call(NAMES.state_machine_role_arn, "sagemaker", REGION, "CreateTrainingJob", train_request)
    calls, denials = check(deployment, recorder)
    assert (NAMES.training_role_arn, "kms:CreateGrant", KEY) in {(c.principal, c.action, c.resource) for c in calls}
    assert [d for d in denials if "TrainingRole" in d.split(" ", 1)[0]] == []


def test_the_sync_integration_gets_what_aws_documents_for_it(deployment, train_request):
    """The state machine's role: createTrainingJob.sync's documented policy (ListTags included), PassRole, tags."""
    recorder = iam_trace.Recorder(sync_callers=frozenset({NAMES.state_machine_role_arn}))
    recorder.api_call(NAMES.state_machine_role_arn, "sagemaker", REGION, "CreateTrainingJob", train_request)
    calls, denials = check(deployment, recorder)
    needed = {c.action for c in calls if c.principal == NAMES.state_machine_role_arn}
    assert {"sagemaker:CreateTrainingJob", "sagemaker:ListTags", "sagemaker:AddTags", "iam:PassRole",
            "events:PutRule", "events:PutTargets", "events:DescribeRule"} <= needed
    assert [d for d in denials if d.startswith(NAMES.state_machine_role_arn.rsplit("/", 1)[1])] == []


def test_a_deployed_model_may_log_to_its_endpoints_log_group(synthesized, deployment):
    """Endpoints log to /aws/sagemaker/Endpoints/<endpoint-name> (SageMaker's log groups), as the model's role."""
    values = LocalValues(synthesized.templates, NAMES, KEY)
    [deploy] = [r["Properties"] for r in values.resources.values() if r["Type"] == "AWS::Lambda::Function"
                and r["Properties"].get("Handler") == wiring.DEPLOY_MODEL.handler]
    settings = deploy_model.DeploySettings.from_env(values.resolve(deploy["Environment"]["Variables"]))
    artifact = f"s3://{NAMES.bucket(wiring.DATA)}/models/run-1/{JOB}/output/model.tar.gz"
    deployer = NAMES.function_role_arn(wiring.DEPLOY_MODEL)
    recorder = iam_trace.Recorder()
    recorder.api_call(deployer, "sagemaker", REGION, "CreateModel",
                      deploy_model.model_definition(settings, JOB, artifact))
    recorder.api_call(deployer, "sagemaker", REGION, "CreateEndpointConfig",
                      deploy_model.endpoint_config_definition(settings, JOB, JOB))
    recorder.api_call(deployer, "sagemaker", REGION, "CreateEndpoint",
                      {"EndpointName": settings.endpoint_name, "EndpointConfigName": JOB})
    calls, denials = check(deployment, recorder)
    logs = {c.resource for c in calls if c.principal == NAMES.model_role_arn and c.action.startswith("logs:")}
    assert logs and all(f"log-group:/aws/sagemaker/Endpoints/{wiring.endpoint_name(CONFIG.stage)}:" in r for r in logs)
    assert denials == []
