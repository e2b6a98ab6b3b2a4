"""Fine-grained assertions on the synthesized templates: what a deployment promises, checked offline."""

from __future__ import annotations

import email.parser
import json

import pytest
from aws_cdk.assertions import Match, Template

from infra import asl, images, wiring
from infra.stacks import monitoring
from lambdas.domain import layout

pytestmark = pytest.mark.slow
DEPLOYED = wiring.deployed_functions("serverless")
"""The functions of the default synthesis (cdk.json's endpoint_mode)."""

NO_RESOURCE_LEVEL = {
    "xray:PutTraceSegments": "X-Ray has no resource-level permissions",
    "xray:PutTelemetryRecords": "X-Ray has no resource-level permissions",
    "xray:GetSamplingRules": "X-Ray has no resource-level permissions",
    "xray:GetSamplingTargets": "X-Ray has no resource-level permissions",
    "ecr:GetAuthorizationToken": "ECR log-in has no resource-level permissions",
    "cloudwatch:PutMetricData": "no resource-level permissions (limited by a namespace condition)",
    "sagemaker:ListEndpointConfigs": "SageMaker list actions have no resource-level permissions",
    "sagemaker:ListModelPackages": "SageMaker list actions have no resource-level permissions",
    "sagemaker:ListTags": "AWS's documented policy for createTrainingJob.sync grants it on * (the integration's "
                          "own call, on resources it does not name)",
    "logs:CreateLogDelivery": "Step Functions log delivery",
    "logs:GetLogDelivery": "Step Functions log delivery",
    "logs:UpdateLogDelivery": "Step Functions log delivery",
    "logs:DeleteLogDelivery": "Step Functions log delivery",
    "logs:ListLogDeliveries": "Step Functions log delivery",
    "logs:PutResourcePolicy": "Step Functions log delivery",
    "logs:DescribeResourcePolicies": "Step Functions log delivery",
    "logs:DescribeLogGroups": "Step Functions log delivery",
    "cloudfront:CreateInvalidation": "CDK's BucketDeployment provider invalidates the review page's distribution",
    "cloudfront:GetInvalidation": "CDK's BucketDeployment provider invalidates the review page's distribution",
}
"""Every action allowed on Resource "*", with why it cannot be scoped."""


def statements(synth):
    for policy in synth.resources("AWS::IAM::Policy").values():
        yield from policy["Properties"]["PolicyDocument"]["Statement"]


def as_list(value):
    return value if isinstance(value, list) else [value]


def state_machine_definition(synth) -> dict:
    """The ASL with every reference replaced by a readable placeholder."""
    templates = list(synth.templates.values())
    expression = asl.definition_expression(templates, wiring.STATE_MACHINE_ID)
    values = {r.name: f"<{r.name}>" for r in asl.references(templates, expression)}
    values.update({"AWS::Region": "eu-west-1", "AWS::Partition": "aws", "AWS::AccountId": "123456789012"})
    return json.loads(asl.definition(templates, values, wiring.STATE_MACHINE_ID))


def test_every_stack_passes_cdk_nag_with_no_unacknowledged_finding(synth):
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    violations = [v["ruleName"] for plugin in report.get("pluginReports", []) for v in plugin.get("violations", [])]
    assert violations == []
    assert set(synth.stacks) == {"storage", "ingest", "inference", "pipeline", "monitoring", "review"}


def test_cdk_nag_does_fail_synthesis_on_a_finding(tmp_path):
    """The packs are live: an unencrypted, unlogged bucket must stop synthesis."""
    from aws_cdk import Stack, Validations
    from aws_cdk import aws_s3 as s3
    from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

    from infra.app import make_app

    app = make_app(outdir=str(tmp_path))
    s3.Bucket(Stack(app, "Bad"), "Plain")
    Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
    with pytest.raises(RuntimeError, match=r"ValidationFailed(.|\n)*AwsSolutions-S1"):
        app.synth()


@pytest.mark.parametrize("part", ["storage", "ingest", "inference", "pipeline", "monitoring", "review"])
def test_cfn_lint_finds_no_error(synth, part):
    from cfnlint.api import lint_file

    matches = lint_file(synth.outdir / synth.stacks[part].template_file)
    errors = [f"{m.rule.id} {m.message} ({m.linenumber})" for m in matches if m.rule.id.startswith("E")]
    assert errors == []
    assert all(m.rule.id == "W3005" for m in matches)  # CDK's explicit DependsOn beside a GetAtt, harmless


@pytest.mark.parametrize("spec", [f for f in wiring.FUNCTIONS.values() if f.trigger], ids=lambda f: f.id)
def test_s3_triggers_filter_on_the_prefix_only(synth, spec):
    part = "ingest" if spec is wiring.PREPROCESS else "inference"
    notifications = synth.resources("Custom::S3BucketNotifications", part)
    assert len(notifications) == 1
    (props,) = (n["Properties"] for n in notifications.values())
    [function_id] = [lid for lid, f in synth.resources("AWS::Lambda::Function", part).items()
                     if f["Properties"].get("Handler") == spec.handler]
    configs = [c for c in props["NotificationConfiguration"]["LambdaFunctionConfigurations"]
               if c["LambdaFunctionArn"] == {"Fn::GetAtt": [function_id, "Arn"]}]
    assert [c["Events"] for c in configs] == [[event] for event in spec.trigger.events]
    for config in configs:
        assert config["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": spec.trigger.prefix}]
    assert spec.trigger.prefix in (layout.RAW, layout.INCOMING, layout.ASYNC_OUTPUT)
    assert wiring.OBJECT_CREATED in spec.trigger.events
    if spec is wiring.PREPROCESS:  # a deleted upload retires its outputs
        assert wiring.OBJECT_REMOVED in spec.trigger.events
    assert props["BucketName"] == {"Fn::Join": ["", [f"cxr-dev-{spec.trigger.bucket}-", {"Ref": "AWS::AccountId"}, "-",
                                                      {"Ref": "AWS::Region"}]]}


@pytest.mark.parametrize("spec", DEPLOYED, ids=lambda f: f.id)
def test_functions_match_the_shared_wiring(synth, spec):
    matches = [f["Properties"] for f in synth.resources("AWS::Lambda::Function").values()
               if f["Properties"].get("Handler") == spec.handler]
    assert len(matches) == 1
    props = matches[0]
    assert props["MemorySize"] == spec.memory_mb and props["Timeout"] == spec.timeout_s
    assert props["Runtime"] == "python3.14" and props["Architectures"] == ["x86_64"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert "KmsKeyArn" in props
    names = set(props["Environment"]["Variables"])
    assert names == set(spec.environment) | set(wiring.POWERTOOLS_ENV)
    assert props["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == spec.service


def test_asynchronous_functions_bound_retries_and_keep_failed_events(synth):
    configs = synth.resources("AWS::Lambda::EventInvokeConfig")
    triggered = [spec for spec in wiring.FUNCTIONS.values() if spec.asynchronous]
    # preprocess, predict and the asynchronous endpoint's completion (S3 events), the field monitor (a schedule)
    assert len(configs) == len(triggered) == 4
    for config in configs.values():
        assert config["Properties"]["MaximumRetryAttempts"] == 2
        assert 60 <= config["Properties"]["MaximumEventAgeInSeconds"] <= 6 * 3600
    for spec in triggered:
        (props,) = [f["Properties"] for f in synth.resources("AWS::Lambda::Function").values()
                    if f["Properties"]["Handler"] == spec.handler]
        assert "TargetArn" in props["DeadLetterConfig"]
        assert "ReservedConcurrentExecutions" not in props  # a setting, off by default


def test_everything_at_rest_is_encrypted_with_the_customer_key(synth):
    key = synth.resources("AWS::KMS::Key", "storage")
    assert len(key) == 1 and next(iter(key.values()))["Properties"]["EnableKeyRotation"] is True
    for lid, bucket in synth.resources("AWS::S3::Bucket").items():
        (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        sse = rule["ServerSideEncryptionByDefault"]
        if lid.startswith("AccessLogsBucket"):
            assert sse == {"SSEAlgorithm": "AES256"}  # S3 log delivery cannot write to SSE-KMS
        elif lid.startswith("PageBucket"):  # the review page's code only (no data), read through CloudFront OAC
            assert sse == {"SSEAlgorithm": "AES256"}
            continue
        else:
            assert sse["SSEAlgorithm"] == "aws:kms" and "KMSMasterKeyID" in sse
        assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
        assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
    for queue in synth.resources("AWS::SQS::Queue").values():
        assert "KmsMasterKeyId" in queue["Properties"]
    for topic in synth.resources("AWS::SNS::Topic").values():
        assert "KmsMasterKeyId" in topic["Properties"]
    for group in synth.resources("AWS::Logs::LogGroup").values():
        assert "KmsKeyId" in group["Properties"]
    for table in synth.resources("AWS::DynamoDB::Table").values():
        sse = table["Properties"]["SSESpecification"]
        assert sse["SSEEnabled"] is True and sse["SSEType"] == "KMS" and "KMSMasterKeyId" in sse
        assert table["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_buckets_refuse_plain_http(synth):
    for policy in synth.resources("AWS::S3::BucketPolicy").values():
        denies = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)
    assert len(synth.resources("AWS::S3::BucketPolicy")) == 4  # the review page's bucket too


def test_lifecycle_expires_quarantine_and_checkpoints(synth):
    (data,) = [b for lid, b in synth.resources("AWS::S3::Bucket").items() if lid.startswith("DataBucket")]
    rules = {r["Id"]: r for r in data["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["ExpireQuarantine"]["Prefix"] == layout.QUARANTINE
    assert rules["ExpireCheckpoints"]["Prefix"] == layout.CHECKPOINTS
    assert rules["ExpireQuarantine"]["ExpirationInDays"] == 90
    (inference,) = [b for lid, b in synth.resources("AWS::S3::Bucket").items() if lid.startswith("InferenceBucket")]
    expiring = {r["Prefix"]: r["ExpirationInDays"] for r in inference["Properties"]["LifecycleConfiguration"]["Rules"]
                if "Prefix" in r}
    assert expiring == {**dict.fromkeys((layout.ASYNC_INPUT, layout.ASYNC_REQUESTS, layout.ASYNC_OUTPUT), 7),
                        layout.REVIEW: 1}


def test_tables_and_parameter_match_the_shared_wiring(synth):
    template = Template.from_json(synth.template("inference"))
    template.has_resource_properties("AWS::DynamoDB::Table", {
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "BillingMode": "PAY_PER_REQUEST",
    })
    template.has_resource_properties("AWS::DynamoDB::Table", {
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "TimeToLiveSpecification": {"AttributeName": "expiration", "Enabled": True},
    })
    template.has_resource_properties("AWS::SSM::Parameter", {
        "Name": wiring.endpoint_parameter_name("dev"), "Value": wiring.NO_ENDPOINT})


def test_train_state_runs_the_job_to_completion_isolated_and_encrypted(synth):
    train = state_machine_definition(synth)["States"][wiring.TRAIN_STATE]
    assert train["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob.sync"  # RUN_JOB
    params = train["Parameters"]
    assert params["EnableNetworkIsolation"] is True
    assert params["EnableInterContainerTrafficEncryption"] is True
    assert params["EnableManagedSpotTraining"] is True
    assert params["StoppingCondition"]["MaxWaitTimeInSeconds"] >= params["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert params["CheckpointConfig"]["S3Uri.$"].startswith(f"States.Format('s3://cxr-dev-data-123456789012-eu-west-1/{layout.CHECKPOINTS}")
    assert params["OutputDataConfig"]["S3OutputPath.$"].startswith(f"States.Format('s3://cxr-dev-data-123456789012-eu-west-1/{layout.MODELS}")
    assert params["OutputDataConfig"]["KmsKeyId"].startswith("<Key")
    # g4dn has NVMe storage encrypted by hardware, where SageMaker refuses a volume key
    assert params["ResourceConfig"] == {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert "States.UUID()" in params["TrainingJobName.$"] and "$$.State.RetryCount" in params["TrainingJobName.$"]
    assert params["AlgorithmSpecification"]["TrainingImage"] == images.image_table()["eu-west-1"][images.TRAINING_GPU]
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in params["InputDataConfig"]}
    assert {name: c["S3DataType"] for name, c in channels.items()} == {
        "train": "S3Prefix", "validation": "S3Prefix", "test": "S3Prefix", "benchmark": "ManifestFile",
        "code": "S3Prefix", "pretrained": "S3Prefix"}
    # one instance: the shards downloaded whole (a few hundred objects, not one an image)
    assert {(c["InputMode"], c["DataSource"]["S3DataSource"]["S3DataDistributionType"])
            for c in params["InputDataConfig"]} == {("File", "FullyReplicated")}
    assert channels["train"]["S3Uri.$"] == "$.dataset.shards.train"
    assert channels["pretrained"]["S3Uri"].endswith(".zip")  # the EfficientNet-Lite networks start from ImageNet
    code = state_machine_definition(synth)["States"][wiring.READ_REQUEST_STATE]["Parameters"]["code"]
    assert json.loads(code["sagemaker_program"]) == "train.py"
    submit = json.loads(code["sagemaker_submit_directory"])
    assert submit == f"/opt/ml/input/data/code/{channels['code']['S3Uri'].rsplit('/', 1)[1]}"


def test_training_image_comes_from_a_region_mapping_not_a_literal(synth):
    template = synth.template("pipeline")
    (mapping,) = template["Mappings"].values()
    assert len(mapping) >= 30 and "us-east-1" in mapping and "cn-north-1" in mapping
    assert mapping == images.image_table()  # the generated table, every region
    training = mapping["cn-north-1"][images.TRAINING_GPU]
    assert training.endswith(".amazonaws.com.cn/pytorch:2.13-cu133-amzn2023-sagemaker")
    text = json.dumps(template["Resources"])
    assert "763104351884" not in text  # no URI typed into a resource: every use goes through Fn::FindInMap
    assert '"Fn::FindInMap"' in text


def test_every_task_retries_and_catches_into_the_failure_notification(synth):
    states = state_machine_definition(synth)["States"]
    tasks = {name: s for name, s in states.items() if s["Type"] == "Task"}
    assert set(tasks) >= {wiring.PREPARE_DATASET_STATE, wiring.TRAIN_STATE, wiring.EVALUATE_STATE,
                          wiring.DEPLOY_STATE, wiring.ENDPOINT_STATUS_STATE, wiring.NOTIFY_DEPLOYED_STATE,
                          wiring.NOTIFY_REJECTED_STATE, wiring.NOTIFY_FAILURE_STATE}
    for name, task in tasks.items():
        assert task["Retry"], name
        (catch,) = task["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"]
        expected = {wiring.NOTIFY_FAILURE_STATE: wiring.FAILED_STATE,  # Train's failures decide on a retry first
                    wiring.TRAIN_STATE: wiring.TRAINING_RETRYABLE_STATE,
                    # after the deployment a failed re-score is reported with it: the new model serves either way
                    wiring.START_RESCORE_STATE: wiring.NOTIFY_DEPLOYED_STATE,
                    wiring.RESCORE_STATUS_STATE: wiring.NOTIFY_DEPLOYED_STATE}.get(name, wiring.NOTIFY_FAILURE_STATE)
        assert catch["Next"] == expected
    assert states[wiring.TRAINING_RETRYABLE_STATE]["Default"] == wiring.NOTIFY_FAILURE_STATE
    assert states[wiring.FAILED_STATE]["Type"] == "Fail"
    assert any("EndpointBusy" in r["ErrorEquals"] for r in tasks[wiring.DEPLOY_STATE]["Retry"])


def test_state_names_and_task_functions_match_the_shared_wiring(synth):
    definition = state_machine_definition(synth)
    states = definition["States"]
    assert definition["StartAt"] == wiring.STATE_ORDER[0]
    path, name = [], wiring.STATE_ORDER[0]
    while name not in path and name in states:  # follow the success path: Next, the gate's pass, the loop's exit
        path.append(name)
        state = states[name]
        name = state.get("Next") or next((c["Next"] for c in state.get("Choices", [])
                                          if c["Next"] in wiring.STATE_ORDER), state.get("Default"))
    assert tuple(path) == wiring.STATE_ORDER
    assert states[wiring.ENDPOINT_READY_STATE]["Default"] == wiring.WAIT_STATE
    assert states[wiring.WAIT_STATE]["Next"] == wiring.ENDPOINT_STATUS_STATE
    assert states[wiring.RESCORE_STARTED_STATE]["Choices"][0]["Next"] == wiring.WAIT_FOR_RESCORE_STATE
    assert states[wiring.WAIT_FOR_RESCORE_STATE]["Next"] == wiring.RESCORE_STATUS_STATE
    assert states[wiring.RESCORE_DONE_STATE]["Default"] == wiring.WAIT_FOR_RESCORE_STATE
    functions = {lid: f["Properties"]["Handler"]
                 for lid, f in synth.resources("AWS::Lambda::Function", "pipeline").items()}
    nested = {name: state for map_state in states.values() if "ItemProcessor" in map_state
              for name, state in map_state["ItemProcessor"]["States"].items()}
    present = {**states, **nested}
    assert set(wiring.TASK_FUNCTIONS) - set(present) == {wiring.SCORE_BATCH_STATE}  # endpoint_mode=lambda only
    for state, function_id in ((s, f) for s, f in wiring.TASK_FUNCTIONS.items() if s in present):
        resource = present[state]["Resource"]
        logical_id = resource.strip("<>").removesuffix(".Arn")
        assert functions[logical_id] == wiring.FUNCTIONS[function_id].handler


def test_state_machine_logs_everything_and_traces(synth):
    Template.from_json(synth.template("pipeline")).has_resource_properties("AWS::StepFunctions::StateMachine", {
        "LoggingConfiguration": {"Level": "ALL", "IncludeExecutionData": True, "Destinations": Match.any_value()},
        "TracingConfiguration": {"Enabled": True},
    })


def test_pass_role_is_scoped_to_one_role_and_to_sagemaker(synth):
    passes = [s for s in statements(synth) if "iam:PassRole" in as_list(s["Action"])]
    assert len(passes) == 2  # the state machine passes the training role; the deploy function the model role
    for statement in passes:
        (resource,) = as_list(statement["Resource"])
        logical_id, attribute = resource["Fn::GetAtt"]
        assert attribute == "Arn" and logical_id.startswith(("TrainingRole", "ModelRole"))
        assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_no_wildcard_actions_and_star_resources_only_where_unscopable(synth):
    for statement in statements(synth):
        actions = as_list(statement["Action"])
        assert not any(a == "*" or a.endswith(":*") for a in actions), statement
        if "*" in as_list(statement["Resource"]):
            assert set(actions) <= set(NO_RESOURCE_LEVEL), statement
    for role in synth.resources("AWS::IAM::Role").values():
        managed = json.dumps(role["Properties"].get("ManagedPolicyArns", []))
        assert "FullAccess" not in managed


def test_every_role_that_touches_encrypted_data_may_use_the_key(synth):
    """Encrypted environment, topic and queues fail at run time, not at deployment, without these grants."""
    key_users = {}
    for lid, policy in synth.resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "Fn::ImportValue" in json.dumps(statement["Resource"]) and "Key" in json.dumps(statement["Resource"]):
                key_users.setdefault(lid, set()).update(as_list(statement["Action"]))
    for spec in DEPLOYED:
        (actions,) = [a for lid, a in key_users.items() if lid.startswith(f"{spec.id}Role")]
        assert "kms:Decrypt" in actions, spec.id
        if spec.trigger:
            assert "kms:GenerateDataKey" in actions, spec.id  # dead-letter queue
    (machine,) = [a for lid, a in key_users.items() if lid.startswith(f"{wiring.STATE_MACHINE_ID}Role")]
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= machine  # notifications go to an encrypted topic


def test_deploy_defaults_to_a_serverless_endpoint(synth):
    (props,) = [f["Properties"] for f in synth.resources("AWS::Lambda::Function", "pipeline").values()
                if f["Properties"]["Handler"] == wiring.DEPLOY_MODEL.handler]
    env = props["Environment"]["Variables"]
    assert env[wiring.ENV_ENDPOINT_MODE] == "serverless"
    assert env[wiring.ENV_SERVERLESS_MEMORY_MB] == "3072" and env[wiring.ENV_SERVERLESS_MAX_CONCURRENCY] == "5"
    assert env[wiring.ENV_ENDPOINT_NAME] == wiring.endpoint_name("dev")
    assert env[wiring.ENV_INFERENCE_IMAGE]["Fn::FindInMap"][2] == images.INFERENCE_CPU  # serverless runs on CPU


def test_monitoring_alarms_notify_and_the_dashboard_covers_the_flow(synth):
    alarms = synth.resources("AWS::CloudWatch::Alarm")
    assert len(alarms) >= 3 + len(DEPLOYED) + 2
    assert all(a["Properties"]["AlarmActions"] for a in alarms.values())
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard", "monitoring").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in ("ImagesRejected", "ImagesRemoved", "DuplicateEvents", "SupersededEvents", "Predictions",
                   "PredictLatency", "Invocation5XXErrors", "ExecutionsFailed"):
        assert metric in body


def test_out_of_distribution_rate_alarms_over_an_hour_of_enough_predictions(synth):
    alarms = synth.resources("AWS::CloudWatch::Alarm", "monitoring")
    (alarm,) = [a["Properties"] for a in alarms.values() if "OutOfDistribution" in json.dumps(a)]
    assert alarm["Threshold"] == monitoring.OOD_RATE_ALARM and alarm["AlarmActions"]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    assert queries[next(i for i, q in queries.items() if "Expression" in q)]["Expression"] == (
        f"IF(predictions >= {monitoring.OOD_MIN_PREDICTIONS}, ood / predictions, 0)")
    for query_id, name in (("ood", "OutOfDistribution"), ("predictions", "Predictions")):
        stat = queries[query_id]["MetricStat"]
        assert stat["Metric"]["MetricName"] == name and stat["Period"] == 3600 and stat["Stat"] == "Sum"
        assert stat["Metric"]["Dimensions"] == [{"Name": "service", "Value": wiring.PREDICT.service}]


def page_deployment_assets(synth) -> set[str]:
    """The review page and CDK's BucketDeployment provider (its code and AWS CLI layer): CDK's, not a function's."""
    review = json.dumps(synth.template("review"))
    ours = {r["Properties"]["Code"]["S3Key"].removesuffix(".zip") for r in synth.resources("AWS::Lambda::Function")
            .values() if r["Properties"].get("Handler", "").startswith("lambdas.")}
    return {a.name.removeprefix("asset.").removesuffix(".zip") for a in synth.outdir.glob("asset.*")
            if a.name.removeprefix("asset.").removesuffix(".zip") in review} - ours


def test_lambda_asset_is_far_below_the_250_mb_limit(synth, capsys):
    """Prints each asset's unpacked size (the Lambda limit is 250 MB unzipped), past pytest's capture."""
    sizes = {}
    page = page_deployment_assets(synth)
    for asset in (a for a in synth.outdir.glob("asset.*") if a.name[6:].removesuffix(".zip") not in page):
        files = [asset] if asset.is_file() else [p for p in asset.rglob("*") if p.is_file()]
        sizes[asset.name] = sum(p.stat().st_size for p in files)
    lambda_assets = {name: size for name, size in sizes.items() if (synth.outdir / name).is_dir()}
    with capsys.disabled():
        for name, size in sorted(sizes.items()):
            kind = ("lambda bundle (unzipped)" if name in lambda_assets else
                    "pretrained weights" if name.endswith(".zip") else "training sourcedir.tar.gz")
            print(f"\n  asset {name[6:18]}: {kind}, {size / 1e6:.1f} MB", end="")
    assert len(lambda_assets) == 1  # one bundle shared by every function
    assert len(sizes) == 3  # and the training code and the pretrained weights
    assert all(size < 150e6 for size in lambda_assets.values())
    (bundle,) = (synth.outdir / name for name in lambda_assets)
    assert (bundle / "lambdas" / "preprocess.py").is_file() and (bundle / "PIL").is_dir()
    assert not (bundle / "boto3").exists() and not (bundle / "sagemaker").exists()
    native = [p.name for p in (bundle / "numpy").rglob("*.so")]
    assert native and all("cpython-314-x86_64" in name for name in native if "cpython" in name)  # the runtime's
    # DICOM: pydicom and GDCM (bench/dicom_plugins.py), and nothing under a GPL licence in a permissive project
    assert (bundle / "pydicom").is_dir() and (bundle / "_gdcm" / "_gdcmswig.so").is_file()
    licences = {}
    for metadata in bundle.glob("*.dist-info/METADATA"):
        fields = email.parser.Parser().parsestr(metadata.read_text(errors="replace"), headersonly=True)
        licences[metadata.parent.name] = " ".join(
            [fields.get("License-Expression") or "", fields.get("License") or "",
             *(c for c in fields.get_all("Classifier") or [] if c.startswith("License"))])
    assert len(licences) >= 5 and not [name for name, text in licences.items() if "GPL" in text and "LGPL" not in text]
