"""Names and wiring of the deployed system: the single source that the CDK stacks and the local mode both read.

Pure data (no ``aws_cdk`` import) so that the offline cloud builds the same buckets, tables,
triggers, function environments and state names as a deployment, and a test can prove it.
Prefixes come from :mod:`lambdas.domain.layout`, never retyped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lambdas.domain import audit, layout

# Bucket roles: construct ids are the role names in CamelCase (see ``Bucket.construct_id``).
DATA = "data"
INFERENCE = "inference"
ACCESS_LOGS = "access-logs"

# Environment variable names the functions read.
ENV_DATA_BUCKET = "DATA_BUCKET"
ENV_INFERENCE_BUCKET = "INFERENCE_BUCKET"
ENV_PREDICTIONS_TABLE = "PREDICTIONS_TABLE"
ENV_IDEMPOTENCY_TABLE = "IDEMPOTENCY_TABLE"
ENV_ENDPOINT_PARAMETER = "ENDPOINT_PARAMETER"
"""Name of the SSM parameter holding the serving endpoint's name (not the endpoint name itself)."""
ENV_EXPLAIN_REFERRALS = "EXPLAIN_REFERRALS"
ENV_DICOM_SR_OUTPUT = "DICOM_SR_OUTPUT"
"""``true``: the predict function keeps the class-activation overlay of every referred prediction."""
ENV_QUALITY_GATE = "QUALITY_GATE"
"""JSON object: ``metrics.json`` field (dotted path) -> minimum value."""
ENV_SAGEMAKER_ROLE_ARN = "SAGEMAKER_ROLE_ARN"
ENV_KMS_KEY_ARN = "KMS_KEY_ARN"
ENV_INFERENCE_IMAGE = "INFERENCE_IMAGE"
ENV_ENDPOINT_NAME = "ENDPOINT_NAME"
ENV_ENDPOINT_MODE = "ENDPOINT_MODE"
ENV_SERVERLESS_MEMORY_MB = "SERVERLESS_MEMORY_MB"
ENV_SERVERLESS_MAX_CONCURRENCY = "SERVERLESS_MAX_CONCURRENCY"
ENV_ENDPOINT_INSTANCE_TYPE = "ENDPOINT_INSTANCE_TYPE"
ENV_ASYNC_OUTPUT_URI = "ASYNC_OUTPUT_URI"
ENV_RESOURCE_PREFIX = "RESOURCE_PREFIX"
"""The stage's SageMaker name prefix (:func:`resource_prefix`): the only models and configurations touched."""
ENV_SOURCE_STATE_TABLE = "SOURCE_STATE_TABLE"
ENV_CODE_VERSION = audit.CODE_VERSION_VARIABLE
"""The project version and git commit the app was synthesized from (``infra.version.code_version``)."""
ENV_MODEL_PACKAGE_GROUP = "MODEL_PACKAGE_GROUP"
"""The stage's model package group in the SageMaker Model Registry (:func:`model_package_group`)."""
ENV_APPROVAL_MODE = "APPROVAL_MODE"
"""``auto`` or ``manual`` (``Config.approval``): whether a model that passes every gate is approved at once."""
ENV_CHAMPION_MARGIN = "CHAMPION_MARGIN"
"""How much worse than the champion a challenger may be (``Config.champion_margin``)."""
ENV_RESCORE_DAYS = "RESCORE_DAYS"
"""After a deployment, re-score the ``incoming/`` X-rays of this many days with the new model (0: off)."""
ENV_PREDICTION_RETENTION_DAYS = "PREDICTION_RETENTION_DAYS"
ENV_REVIEW_TASKS_TABLE = "REVIEW_TASKS_TABLE"
ENV_REVIEW_DATASET = "REVIEW_DATASET"
"""The dataset under ``raw/`` that reviewed X-rays are copied into (``review_dataset``)."""
ENV_REVIEW_SAMPLE_RATE = "REVIEW_SAMPLE_RATE"
"""Share of unreferred predictions drawn for quality-control review (``review_sample_rate``)."""
ENV_PSEUDONYM_SECRET = "PSEUDONYM_SECRET_ARN"
"""The retained Secrets Manager secret keying DICOM pseudonyms and uploads' opaque names (``lambdas/pseudonyms.py``)."""
PSEUDONYM_SECRET_NAME = "cxr-{stage}/dicom-pseudonym-key"
"""Days of S3 Object Lock retention (governance mode) on each prediction JSON; 0: none."""
POWERTOOLS_ENV = ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL")
METRICS_NAMESPACE = "CxrServerless"


@dataclass(frozen=True)
class Bucket:
    role: str
    env_var: str | None
    """Environment variable that hands the bucket's name to functions (None: no function reads it)."""

    @property
    def construct_id(self) -> str:
        return "".join(part.capitalize() for part in self.role.split("-")) + "Bucket"

    def name(self, stage: str, account: str, region: str) -> str:
        """The bucket's physical name: fixed, so stacks and tools derive it instead of passing exports around."""
        return f"cxr-{stage}-{self.role}-{account}-{region}"


BUCKETS: dict[str, Bucket] = {
    b.role: b
    for b in (
        Bucket(DATA, ENV_DATA_BUCKET),
        Bucket(INFERENCE, ENV_INFERENCE_BUCKET),
        Bucket(ACCESS_LOGS, None),
    )
}

PREDICTIONS_BUCKET = INFERENCE
"""The bucket holding ``predictions/``: created with S3 Object Lock enabled (no default retention), so each
prediction JSON can be written with a retention period of its own (``PREDICTION_RETENTION_DAYS``)."""

KEY_SERVICE_STATEMENTS = ("CloudWatchLogs", "CloudWatchAlarms")
"""Sids of the stage key's policy statements that let CloudWatch Logs and alarms use the key: written by
the storage stack, required of a key a deployment adopts from an earlier teardown (no stack rewrites it)."""


@dataclass(frozen=True)
class Index:
    """A global secondary index (string keys, every attribute projected)."""

    name: str
    partition_key: str
    sort_key: str | None = None


@dataclass(frozen=True)
class Table:
    id: str
    env_var: str
    partition_key: str
    sort_key: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[Index, ...] = ()


CONTENT_HASH_INDEX = Index("ContentHash", partition_key="content_hash", sort_key="predicted_at")
"""Every prediction of one image (its normalised pixels' hash), oldest first: what `cxr audit HASH` queries."""
PREDICTIONS_TABLE = Table("PredictionsTable", ENV_PREDICTIONS_TABLE, partition_key="pk", sort_key="sk",
                          indexes=(CONTENT_HASH_INDEX,))
"""Generic key names so the predict Lambda shapes its records (source object / version) freely; one item per
version, the audit trail (retained on teardown, unlike the source-state table, which is derived and rebuilt)."""
IDEMPOTENCY_TABLE = Table("IdempotencyTable", ENV_IDEMPOTENCY_TABLE, partition_key="id", ttl_attribute="expiration")
"""The key and TTL attribute names Powertools' DynamoDB idempotency layer uses by default."""
SOURCE_STATE_TABLE = Table("SourceStateTable", ENV_SOURCE_STATE_TABLE, partition_key="pk", sort_key="sk")
"""One current outcome per source key, and identical-pixel groups (lambdas.domain.source_state)."""
REVIEW_QUEUE_INDEX = Index("Queue", partition_key="queue", sort_key="created_at")
"""Sparse: only queued tasks carry ``queue`` (their status), oldest first (``lambdas.review_queue``)."""
REVIEW_TASKS_TABLE = Table("ReviewTasksTable", ENV_REVIEW_TASKS_TABLE, partition_key="pk", sort_key="sk",
                           indexes=(REVIEW_QUEUE_INDEX,))
"""Review tasks, their verdicts and every view (``lambdas.review_queue``): retained, as verdicts are clinical
records and training labels."""
TABLES: dict[str, Table] = {t.id: t for t in (PREDICTIONS_TABLE, IDEMPOTENCY_TABLE, SOURCE_STATE_TABLE,
                                              REVIEW_TASKS_TABLE)}


ASYNC_RETRIES = 2
"""Lambda's own retries of an S3 event (0-2); the handlers raise only for transient errors."""
MAX_EVENT_AGE_S = 6 * 3600
"""How long Lambda keeps retrying an S3 event before it goes to the function's dead-letter queue."""
LOG_LEVEL = "INFO"


OBJECT_CREATED = "s3:ObjectCreated:*"
OBJECT_REMOVED = "s3:ObjectRemoved:*"


@dataclass(frozen=True)
class Trigger:
    """S3 notifications for every object under ``prefix`` (no suffix filter), one configuration per event type."""

    bucket: str
    prefix: str
    events: tuple[str, ...] = (OBJECT_CREATED,)


@dataclass(frozen=True)
class Function:
    id: str
    """CDK construct id, and the function name in the local mode."""
    handler: str
    memory_mb: int
    timeout_s: int
    environment: tuple[str, ...]
    """Names of the environment variables the stacks set (Powertools' are added to every function)."""
    trigger: Trigger | None = None
    service: str = ""
    """Powertools service name, also the metrics dimension the dashboard reads."""
    endpoint_modes: tuple[str, ...] | None = None
    """The ``endpoint_mode`` values it is deployed in; None: every mode."""
    schedule_hours: int | None = None
    """Invoked by an EventBridge schedule every this many hours (asynchronously, like an S3 trigger)."""

    @property
    def asynchronous(self) -> bool:
        """Invoked by an event source that does not wait (S3, EventBridge): bounded retries, a dead-letter queue."""
        return self.trigger is not None or self.schedule_hours is not None

    @property
    def module(self) -> str:
        return self.handler.rsplit(".", 1)[0]

    @property
    def attribute(self) -> str:
        return self.handler.rsplit(".", 1)[1]


PREPROCESS = Function(
    id="Preprocess",
    handler="lambdas.preprocess.handler",
    memory_mb=1769,  # one full vCPU: decoding a 30 MB upload is CPU-bound
    timeout_s=60,
    environment=(ENV_DATA_BUCKET, ENV_SOURCE_STATE_TABLE, ENV_PSEUDONYM_SECRET),
    trigger=Trigger(DATA, layout.RAW, events=(OBJECT_CREATED, OBJECT_REMOVED)),  # deletes retire outputs too
    service="cxr-preprocess",
)
PREDICT = Function(
    id="Predict",
    handler="lambdas.predict.handler",
    memory_mb=1769,
    timeout_s=360,  # the endpoint call's worst case with retries (lambdas.aws.endpoint_call_budget_s), plus a minute
    environment=(ENV_INFERENCE_BUCKET, ENV_ENDPOINT_PARAMETER, ENV_PREDICTIONS_TABLE, ENV_IDEMPOTENCY_TABLE,
                 ENV_ENDPOINT_MODE, ENV_SOURCE_STATE_TABLE, ENV_CODE_VERSION,
                 ENV_PREDICTION_RETENTION_DAYS, ENV_EXPLAIN_REFERRALS, ENV_DICOM_SR_OUTPUT, ENV_REVIEW_TASKS_TABLE,
                 ENV_REVIEW_SAMPLE_RATE, ENV_MODEL_PACKAGE_GROUP,  # lambda mode serves its champion
                 ENV_PSEUDONYM_SECRET),
    trigger=Trigger(INFERENCE, layout.INCOMING, events=(OBJECT_CREATED, OBJECT_REMOVED)),  # a delete retires it
    service="cxr-predict",
)
COMPLETE_PREDICTION = Function(
    id="CompletePrediction",
    handler="lambdas.complete_prediction.handler",
    memory_mb=512,
    timeout_s=60,
    environment=(ENV_PREDICTIONS_TABLE, ENV_SOURCE_STATE_TABLE, ENV_CODE_VERSION,
                 ENV_PREDICTION_RETENTION_DAYS, ENV_REVIEW_TASKS_TABLE, ENV_REVIEW_SAMPLE_RATE),
    trigger=Trigger(INFERENCE, layout.ASYNC_OUTPUT),
    service="cxr-predict",  # the same predictions, so the same metrics the dashboard reads
)
"""Asynchronous endpoints (endpoint_mode=async) write each result under ``async-output/``: this finishes the
prediction the predict function submitted. Deployed in every mode (it costs nothing while idle), so the
stacks and the offline cloud have one set of functions."""
PREPARE_DATASET = Function(
    id="PrepareDataset",
    handler="lambdas.prepare_dataset.handler",
    memory_mb=1024,
    timeout_s=600,  # lists and splits every processed image of a dataset
    environment=(ENV_DATA_BUCKET, ENV_SOURCE_STATE_TABLE),
    service="cxr-prepare-dataset",
)
PACK_SHARDS = Function(
    id="PackShards",
    handler="lambdas.pack_shards.handler",
    memory_mb=1024,  # one shard (about 50 MB) in /tmp and 16 PNGs in flight; network-bound, not CPU-bound
    timeout_s=600,  # one packing item: at most lambdas.domain.packing.IMAGES_PER_ITEM images, whatever the dataset
    environment=(ENV_DATA_BUCKET,),
    service="cxr-pack-shards",
)
EVALUATE_MODEL = Function(
    id="EvaluateModel",
    handler="lambdas.evaluate_model.handler",
    memory_mb=512,
    timeout_s=120,
    environment=(ENV_DATA_BUCKET, ENV_QUALITY_GATE, ENV_CODE_VERSION),
    service="cxr-evaluate-model",
)
DEPLOY_MODEL = Function(
    id="DeployModel",
    handler="lambdas.deploy_model.handler",
    memory_mb=256,
    timeout_s=60,
    environment=(ENV_SAGEMAKER_ROLE_ARN, ENV_KMS_KEY_ARN, ENV_INFERENCE_IMAGE, ENV_ENDPOINT_NAME, ENV_ENDPOINT_MODE,
                 ENV_SERVERLESS_MEMORY_MB, ENV_SERVERLESS_MAX_CONCURRENCY, ENV_ENDPOINT_INSTANCE_TYPE,
                 ENV_ASYNC_OUTPUT_URI, ENV_CODE_VERSION),
    service="cxr-deploy-model",
)
REGISTER_MODEL = Function(
    id="RegisterModel",
    handler="lambdas.register_model.handler",
    memory_mb=1024,  # the paired bootstrap: resamples x benchmark images
    timeout_s=120,
    environment=(ENV_DATA_BUCKET, ENV_MODEL_PACKAGE_GROUP, ENV_APPROVAL_MODE, ENV_CHAMPION_MARGIN, ENV_INFERENCE_IMAGE,
                 ENV_CODE_VERSION),
    service="cxr-register-model",
)
START_RESCORE = Function(
    id="StartRescore",
    handler="lambdas.rescore.start_handler",
    memory_mb=512,
    timeout_s=300,  # lists incoming/ and copies each recent upload under its name (16 copies in flight)
    environment=(ENV_INFERENCE_BUCKET, ENV_RESCORE_DAYS, ENV_RESOURCE_PREFIX, ENV_PSEUDONYM_SECRET, ENV_ENDPOINT_MODE),
    service="cxr-rescore",
)
RESCORE_BATCH = Function(
    id="RescoreBatch",
    handler="lambdas.rescore.batch_handler",
    memory_mb=1769,  # one full vCPU, as the predict function: the approved model runs here (endpoint_mode=lambda)
    timeout_s=600,  # a batch of lambdas.rescore.BATCH_IMAGES copies, 10 to 40 s, with room for large uploads
    environment=(ENV_INFERENCE_BUCKET,),
    service="cxr-rescore",
    endpoint_modes=("lambda",),
)
"""The re-score's model runner with ``endpoint_mode=lambda``, where a Batch Transform job does this part in the
other modes."""
RESCORE_STATUS = Function(
    id="RescoreStatus",
    handler="lambdas.rescore.status_handler",
    memory_mb=512,
    timeout_s=300,  # reads one answer and one prediction per re-scored X-ray
    environment=(ENV_INFERENCE_BUCKET, ENV_DATA_BUCKET),
    service="cxr-rescore",
)
ENDPOINT_STATUS = Function(
    id="EndpointStatus",
    handler="lambdas.deploy_model.status_handler",
    memory_mb=256,
    timeout_s=30,
    environment=(ENV_ENDPOINT_PARAMETER, ENV_RESOURCE_PREFIX),
    service="cxr-endpoint-status",
)
REVIEW_API = Function(
    id="ReviewApi",
    handler="lambdas.review_api.handler",
    memory_mb=512,
    timeout_s=29,  # an HTTP API integration waits at most 30 s
    environment=(ENV_REVIEW_TASKS_TABLE, ENV_INFERENCE_BUCKET, ENV_DATA_BUCKET, ENV_REVIEW_DATASET),
    service="cxr-review-api",
)
"""Behind the review page's HTTP API (``infra.stacks.review``); the offline server calls it the same way."""
FIELD_MONITOR = Function(
    id="FieldMonitor",
    handler="lambdas.field_monitor.handler",
    memory_mb=1024,
    timeout_s=300,  # one consistent scan of the review table and one metrics.json per training run
    environment=(ENV_REVIEW_TASKS_TABLE, ENV_REVIEW_SAMPLE_RATE, ENV_DATA_BUCKET),
    service="cxr-field-monitor",
    schedule_hours=24,
)
"""The models' figures on the site's patients from the weighted review verdicts, once a day (``infra.stacks.review``);
the monitoring stack alarms on its ``FieldMeasuresBelowModelFigure``."""
REVIEW_PAGE_DIR = Path(__file__).resolve().parent / "review_page"
"""The review page: one HTML file, no build step (CloudFront in AWS, ``cxr.local.review_server`` offline)."""
REVIEW_PAGE_CONFIG = "config.json"
"""What the page reads at start, beside it: the API's URL, the Cognito endpoint, region and client id."""
FUNCTIONS: dict[str, Function] = {
    f.id: f for f in (PREPROCESS, PREDICT, COMPLETE_PREDICTION, PREPARE_DATASET, EVALUATE_MODEL, REGISTER_MODEL,
                      DEPLOY_MODEL, ENDPOINT_STATUS, START_RESCORE, RESCORE_BATCH, RESCORE_STATUS, REVIEW_API,
                      PACK_SHARDS, FIELD_MONITOR)
}


NO_ENDPOINT = "none"
"""The endpoint parameter's value until the first model is deployed."""


def stack_name(stage: str, part: str) -> str:
    """``Cxr<Stage><Part>``, e.g. ``CxrDevTrainingPipeline``: what the CDK app deploys and the CLI looks up."""
    return f"Cxr{stage.replace('-', ' ').title().replace(' ', '')}{part}"


STACK_PARTS = ("Storage", "Ingest", "Inference", "TrainingPipeline", "Monitoring", "Review")


def endpoint_parameter_name(stage: str) -> str:
    """The SSM parameter the pipeline writes and the predict Lambda reads."""
    return f"/cxr/{stage}/endpoint-name"


def endpoint_name(stage: str) -> str:
    """One endpoint per stage, updated in place by each deployment."""
    return f"cxr-{stage}"


TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
"""Where SageMaker training containers log (https://docs.aws.amazon.com/sagemaker/latest/dg/logging-cloudwatch.html)."""


def model_package_group(stage: str) -> str:
    """The stage's model package group: one versioned package per trained model (named with the stage's
    :func:`resource_prefix`, so the stage's grants cover it and no other stage's)."""
    return f"{resource_prefix(stage)}models"


def endpoint_log_group(endpoint_name: str) -> str:
    """Where an endpoint's containers log: one group per endpoint, a stream per variant and instance."""
    return f"/aws/sagemaker/Endpoints/{endpoint_name}"


# The training pipeline (Step Functions).
STATE_MACHINE_ID = "TrainingPipeline"
READ_REQUEST_STATE = "ReadRequest"
VALID_REQUEST_STATE = "RequestComplete"
INVALID_REQUEST_STATE = "InvalidRequest"
NOTIFY_INVALID_REQUEST_STATE = "NotifyInvalidRequest"
APPLY_DEFAULTS_STATE = "ApplyDefaults"
PREPARE_DATASET_STATE = "PrepareDataset"
PACK_SHARDS_STATE = "PackShards"
"""The Map state over PrepareDataset's packing items; each iteration is the ``PackShard`` task."""
PACK_SHARD_STATE = "PackShard"
TRAIN_STATE = "Train"
TRAINING_RETRYABLE_STATE = "TrainingRetryable"
COUNT_TRAINING_RETRY_STATE = "CountTrainingRetry"
WAIT_TO_RETRY_TRAINING_STATE = "WaitToRetryTraining"
EVALUATE_STATE = "Evaluate"
REGISTER_STATE = "Register"
GATE_STATE = "PassesGate"
DEPLOY_STATE = "Deploy"
WAIT_STATE = "WaitForEndpoint"
ENDPOINT_STATUS_STATE = "EndpointStatus"
ENDPOINT_READY_STATE = "EndpointReady"
START_RESCORE_STATE = "StartRescore"
RESCORE_STARTED_STATE = "RescoreStarted"
WAIT_FOR_RESCORE_STATE = "WaitForRescore"
RESCORE_STATUS_STATE = "RescoreStatus"
RESCORE_DONE_STATE = "RescoreDone"
SCORE_RECENT_STATE = "ScoreRecent"
"""With ``endpoint_mode=lambda``: the Map state over ``StartRescore``'s batches; each iteration is ``ScoreBatch``."""
SCORE_BATCH_STATE = "ScoreBatch"
NOTIFY_DEPLOYED_STATE = "NotifyDeployed"
NOTIFY_REJECTED_STATE = "NotifyRejected"
NOT_DEPLOYED_STATE = "NotDeployed"
NOTIFY_FAILURE_STATE = "NotifyFailure"
FAILED_STATE = "PipelineFailed"
STATE_ORDER = (
    READ_REQUEST_STATE,
    VALID_REQUEST_STATE,
    APPLY_DEFAULTS_STATE,
    PREPARE_DATASET_STATE,
    PACK_SHARDS_STATE,
    TRAIN_STATE,
    EVALUATE_STATE,
    REGISTER_STATE,
    GATE_STATE,
    DEPLOY_STATE,
    ENDPOINT_STATUS_STATE,
    ENDPOINT_READY_STATE,
    START_RESCORE_STATE,
    RESCORE_STARTED_STATE,
    NOTIFY_DEPLOYED_STATE,
)
"""The success path, in order; while the endpoint is not serving, ``EndpointReady`` -> ``WaitForEndpoint``
-> ``EndpointStatus`` loops (checked first, so an instant deployment waits for nothing). ``StartRescore`` starts a
Batch Transform re-score of the last ``rescore_days`` of ``incoming/`` when that is above 0; then
``RescoreStarted`` -> ``WaitForRescore`` -> ``RescoreStatus`` -> ``RescoreDone`` loops until
``reports/<run>/rescore.csv`` is written (a re-score failure is reported in ``NotifyDeployed``, not a failure).
With ``endpoint_mode=lambda`` the approval is the deployment: ``PassesGate`` -> ``StartRescore`` ->
``RescoreStarted`` -> ``ScoreRecent`` (``ScoreBatch`` per batch) -> ``RescoreStatus`` -> ``NotifyDeployed``.

``Register`` puts every model in the stage's model package group with its approval status (the minimums,
then the champion gate); a package not ``Approved`` (rejected, or pending with ``approval=manual``) goes
``PassesGate`` -> ``NotifyRejected`` -> ``NotDeployed`` (succeeds: the previous endpoint keeps serving);
any error goes to ``NotifyFailure`` -> ``PipelineFailed``.
Execution input: ``{"run_id": string, "dataset": string, "hyperparameters"?: {name: string}}``; any
other shape goes ``RequestComplete`` -> ``NotifyInvalidRequest`` -> ``InvalidRequest`` (error
``InvalidRequest``) before anything runs. A transient training failure (throttling, service
unavailable, capacity) goes ``Train`` -> ``TrainingRetryable`` -> ``CountTrainingRetry`` ->
``WaitToRetryTraining`` -> ``Train``, a bounded number of times; any other goes to ``NotifyFailure``."""
TASK_FUNCTIONS = {
    PREPARE_DATASET_STATE: PREPARE_DATASET.id,
    PACK_SHARD_STATE: PACK_SHARDS.id,  # inside the PackShards Map state
    EVALUATE_STATE: EVALUATE_MODEL.id,
    REGISTER_STATE: REGISTER_MODEL.id,
    DEPLOY_STATE: DEPLOY_MODEL.id,
    ENDPOINT_STATUS_STATE: ENDPOINT_STATUS.id,
    START_RESCORE_STATE: START_RESCORE.id,
    RESCORE_STATUS_STATE: RESCORE_STATUS.id,
    SCORE_BATCH_STATE: RESCORE_BATCH.id,  # inside the ScoreRecent Map state (endpoint_mode=lambda only)
}
"""Which function each Lambda task state invokes."""


def deployed_functions(endpoint_mode: str) -> list[Function]:
    """The functions a deployment in ``endpoint_mode`` has."""
    return [f for f in FUNCTIONS.values() if f.endpoint_modes is None or endpoint_mode in f.endpoint_modes]
TRAINING_JOB_PREFIX = "cxr"
"""What every stage's SageMaker names begin with (``cxr-``); a stage's own names begin with :func:`resource_prefix`."""
SAGEMAKER_NAME_MAX = 63
"""SageMaker's limit on training job, model and endpoint configuration names (``[a-zA-Z0-9](-*[a-zA-Z0-9])*``)."""


def resource_prefix(stage: str) -> str:
    """``cxr-<length of stage><stage>-``: what this stage's training jobs, models and configurations are named with.

    Training jobs are ``<prefix><attempt>-<uuid>`` (unique per attempt, as SageMaker requires); the deployed
    model and endpoint configuration take the job's name. IAM grants ``<prefix>*``, so no stage's prefix may
    begin another stage's names: ``cxr-<stage>-`` would not do, since stages may contain ``-`` and ``cxr-dev-*``
    would match stage ``dev-x``'s ``cxr-dev-x-...``. The length makes the prefix self-delimiting: the digits end
    where the stage begins (stages start with a letter) and say where it ends, so two stages' prefixes are never
    one the start of the other. A separator stages cannot contain is not available: SageMaker names allow only
    letters, digits and ``-``, stages use all but upper case, and SageMaker lower-cases names in its ARNs.
    """
    return f"{TRAINING_JOB_PREFIX}-{len(stage)}{stage}-"


ASYNC_OUTPUT_PREFIX = layout.ASYNC_OUTPUT
"""Inference bucket prefix for asynchronous endpoint outputs (endpoint_mode=async)."""
TRAINING_ROLE_ID = "TrainingRole"
"""Construct id of the role SageMaker training jobs run as (the offline cloud names its stand-in after it)."""
MODEL_ROLE_ID = "ModelRole"
"""Construct id of the role deployed models run as."""
TRAINING_CODE_CHANNEL = "code"
TRAINING_INTEGRATION = "arn:aws:states:::sagemaker:createTrainingJob.sync"
"""The Train state's resource: SageMaker CreateTrainingJob with the RUN_JOB (``.sync``) pattern."""
"""With network isolation the job cannot fetch its code: ``sourcedir.tar.gz`` arrives as this input channel."""
