"""The cost model behind `cxr cost`: prices times measured durations and configured sizes, nothing invented.

Pure arithmetic on three inputs, each carrying where it came from: the prices file
(``cxr/prices.json``, every price with its date and source), the deployment configuration
(``infra/config.py`` via cdk.json) and the latency benchmark's result file
(``bench/results/latency.json``, written by ``bench/latency.py --json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cxr.errors import UserError

PRICES_FILE = Path(__file__).with_name("prices.json")
HOURS_PER_MONTH = 730
"""AWS's and Google's billing month for always-on resources (8,760 h / 12)."""
GB = 1024**3

S3_PUTS_PER_PREDICTION = 3
"""The client's upload to ``incoming/``, the pointer from its opaque name back to its key (``incoming/.names/``,
issue 17) and the prediction JSON (``lambdas/predict.py``)."""
LAMBDA_INVOCATIONS_PER_PREDICTION = 2
"""The upload's event and the pointer object's (S3 notification filters cannot exclude ``incoming/.names/``; the
function skips it)."""
S3_GETS_PER_PREDICTION = 2
"""The key's current version (HeadObject, billed as a GET) and its download."""
DYNAMODB_WRITE_UNITS = 2 + 2 + 3
"""Powertools idempotency writes its in-progress record, then the completion (small items: one unit each); the
predictions item took 986 bytes in the offline demo with short keys, so two units once keys are longer; the
key's source-state record: the event's conditional write (one unit for a new key), then the outcome, which
carries the prediction (two units)."""


NOT_COUNTED = ("S3 storage (GB-months of uploads and predictions)", "CloudWatch logs, metrics and alarms",
               "the KMS key (a monthly fee) and its requests (bucket keys make them rare)",
               "S3, DynamoDB and network round-trip time in the predict Lambda's duration", "free tiers",
               "serverless cold starts, and a lambda-mode cold start's model download and load")
"""What the estimates leave out: small or unmeasured here; the report lists it."""


@dataclass(frozen=True)
class Price:
    value: float
    unit: str
    as_of: str
    source: str
    note: str | None = None


def load_prices(override: Path | None = None) -> dict[str, Price]:
    """The bundled prices, with the entries of ``override`` (same shape, any subset) replacing theirs."""
    prices = _read_prices(PRICES_FILE)
    if override is not None:
        prices |= _read_prices(override)
    return prices


def _read_prices(path: Path) -> dict[str, Price]:
    try:
        entries = json.loads(path.read_text())["prices"]
        return {name: Price(**{k: entry.get(k) for k in ("value", "unit", "as_of", "source", "note")})
                for name, entry in entries.items()}
    except FileNotFoundError:
        raise UserError(f"prices file {path} not found") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"prices file {path}: expected {{\"prices\": {{name: {{value, unit, as_of, source}}}}}} "
                        f"({exc})") from None


def price(prices: dict[str, Price], name: str) -> float:
    if name not in prices or not isinstance(prices[name].value, int | float):
        raise UserError(f"no price {name!r}: add it to a prices file and pass --prices FILE")
    return float(prices[name].value)


@dataclass(frozen=True)
class Latency:
    """The benchmark's medians (``bench/latency.py --json``): what a deployed request costs in time and bytes."""

    endpoint_ms: float
    """One endpoint request: the stored PNG through ``input_fn`` and ``predict_fn``."""
    normalise_ms: float
    """The predict Lambda's own compute: decoding and normalising the upload, and the endpoint request's PNG."""
    request_bytes: int
    response_bytes: int
    source: str
    in_function_ms: float | None = None
    """``endpoint_mode=lambda``: the model on the pixels the predict function has decoded (``predict_fn``, no
    request); a result file from before the mode has none, and the endpoint request's time stands in for it."""

    @classmethod
    def from_file(cls, path: Path) -> Latency:
        try:
            result = json.loads(path.read_text())
            return cls(
                endpoint_ms=float(result["endpoint_ms"]),
                normalise_ms=float(result["normalise_ms"]),
                request_bytes=int(result["endpoint_request_bytes"]),
                response_bytes=int(result["endpoint_response_bytes"]),
                source=(f"{_shown(path)}: {result['architecture']} {result['input']} px, median of {result['runs']} "
                        f"runs on {result['threads']} CPU thread, load average {result['load_average']:.1f}, "
                        f"measured {result.get('measured_at', '?')}"),
                in_function_ms=float(result["in_function_ms"]) if "in_function_ms" in result else None,
            )
        except FileNotFoundError:
            raise UserError(f"no latency measurement at {path}: run `python bench/latency.py MODEL_DIR --json {path}` "
                            "(or pass --latency FILE)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a bench/latency.py --json result (missing {exc})") from None


def _shown(path: Path) -> str:
    """Relative to the project when inside it, as the user would type it."""
    try:
        return str(path.resolve().relative_to(PRICES_FILE.parent.parent))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Inputs:
    per_month: int
    endpoint_mode: str
    serverless_memory_mb: int
    endpoint_instance_type: str
    training_instance_type: str
    training_hours: float
    training_spot: bool
    lambda_memory_mb: int
    lambda_architecture: str
    latency: Latency


@dataclass
class Estimate:
    """One way to serve (or train): a monthly and a per-1,000 figure, its line items and its basis."""

    name: str
    per_month: float
    per_1000: float
    basis: str
    items: dict[str, float] = field(default_factory=dict)
    """Per-prediction costs for pay-per-use options, monthly costs for always-on ones."""
    configured: bool = False
    """The option this deployment's ``endpoint_mode`` runs."""


def serverless_per_prediction(prices: dict[str, Price], memory_mb: int, latency: Latency) -> dict[str, float]:
    """SageMaker Serverless Inference: configured memory x measured duration, plus the bytes in and out."""
    return {
        "endpoint compute": price(prices, "sagemaker_serverless_gb_second") * memory_mb / 1024
        * latency.endpoint_ms / 1000,
        "endpoint data": price(prices, "sagemaker_serverless_data_gb")
        * (latency.request_bytes + latency.response_bytes) / GB,
    }


def predict_path_per_prediction(prices: dict[str, Price], inputs: Inputs, model_ms: float | None = None
                                ) -> dict[str, float]:
    """The event path around the endpoint: the predict Lambda, its S3 requests and DynamoDB writes.

    The Lambda is billed while it normalises and while it waits for the endpoint, or, with ``model_ms``
    (``endpoint_mode=lambda``), while it runs the model itself; S3, DynamoDB and network round trips are
    not measured and not counted in its duration.
    """
    lambda_seconds = (inputs.latency.normalise_ms + (inputs.latency.endpoint_ms if model_ms is None else model_ms)
                      ) / 1000
    return {
        "lambda requests": LAMBDA_INVOCATIONS_PER_PREDICTION * price(prices, "lambda_request"),
        "lambda compute": price(prices, f"lambda_gb_second.{inputs.lambda_architecture}")
        * inputs.lambda_memory_mb / 1024 * lambda_seconds,
        "s3 requests": S3_PUTS_PER_PREDICTION * price(prices, "s3_put_request")
        + S3_GETS_PER_PREDICTION * price(prices, "s3_get_request"),
        "dynamodb writes": DYNAMODB_WRITE_UNITS * price(prices, "dynamodb_write_request_unit"),
    }


def pay_per_use(name: str, per_prediction: dict[str, float], per_month: int, basis: str,
                configured: bool = False) -> Estimate:
    each = sum(per_prediction.values())
    return Estimate(name, per_month=each * per_month, per_1000=each * 1000, basis=basis, items=per_prediction,
                    configured=configured)


def always_on(name: str, monthly: dict[str, float], per_month: int, basis: str, configured: bool = False) -> Estimate:
    """A resource billed by the hour whatever the volume: its month spread over the predictions."""
    total = sum(monthly.values())
    return Estimate(name, per_month=total, per_1000=total / per_month * 1000, basis=basis, items=monthly,
                    configured=configured)


def serving_estimates(prices: dict[str, Price], inputs: Inputs) -> list[Estimate]:
    path = predict_path_per_prediction(prices, inputs)
    path_monthly = {name: value * inputs.per_month for name, value in path.items()}
    hosting = price(prices, f"sagemaker_hosting_hour.{inputs.endpoint_instance_type}")
    in_function = inputs.latency.in_function_ms or inputs.latency.endpoint_ms
    return [
        pay_per_use(
            "cxr, serverless endpoint",
            serverless_per_prediction(prices, inputs.serverless_memory_mb, inputs.latency) | path,
            inputs.per_month,
            f"{inputs.serverless_memory_mb} MB x {inputs.latency.endpoint_ms:g} ms per request, plus the predict "
            f"Lambda ({inputs.lambda_memory_mb} MB x {inputs.latency.normalise_ms + inputs.latency.endpoint_ms:g} ms), "
            "S3 and DynamoDB requests",
            configured=inputs.endpoint_mode == "serverless",
        ),
        pay_per_use(
            "cxr, lambda mode (no endpoint)",
            predict_path_per_prediction(prices, inputs, in_function),
            inputs.per_month,
            f"the predict Lambda running the model ({inputs.lambda_memory_mb} MB x "
            f"{inputs.latency.normalise_ms + in_function:g} ms: normalise and model), S3 and DynamoDB requests",
            configured=inputs.endpoint_mode == "lambda",
        ),
        always_on(
            f"cxr, realtime endpoint {inputs.endpoint_instance_type}",
            {"instance": hosting * HOURS_PER_MONTH} | path_monthly,
            inputs.per_month,
            f"1 instance x {HOURS_PER_MONTH} h at {hosting:g}/h, plus the same predict path"
            + (" (async mode: the same instance billing)" if inputs.endpoint_mode == "async" else ""),
            configured=inputs.endpoint_mode in ("realtime", "async"),
        ),
        always_on(
            "Rekognition Custom Labels",
            {"inference unit": price(prices, "rekognition_custom_labels_inference_unit_hour") * HOURS_PER_MONTH},
            inputs.per_month,
            f"1 inference unit running {HOURS_PER_MONTH} h (billed while the model runs)",
        ),
        always_on(
            "Vertex AI AutoML image",
            {"node": price(prices, "vertex_automl_image_node_hour") * HOURS_PER_MONTH},
            inputs.per_month,
            f"1 node deployed {HOURS_PER_MONTH} h (billed while deployed)",
        ),
    ]


@dataclass(frozen=True)
class MeasuredTraining:
    """A finished training job's own figures (``DescribeTrainingJob``): what a run really took and was billed."""

    name: str
    instance_type: str
    training_s: float
    billable_s: float | None
    """SageMaker's billable seconds: below the training seconds when spot saved money."""
    spot: bool

    @classmethod
    def from_description(cls, job: dict) -> MeasuredTraining:
        if job["TrainingJobStatus"] not in ("Completed", "Stopped"):
            raise UserError(f"training job {job['TrainingJobName']} is {job['TrainingJobStatus']}: "
                            "measure a finished one")
        seconds = job.get("TrainingTimeInSeconds")
        if seconds is None:  # the offline cloud reports start and end only
            seconds = (job["TrainingEndTime"] - job["TrainingStartTime"]).total_seconds()
        return cls(job["TrainingJobName"], job["ResourceConfig"]["InstanceType"], float(seconds),
                   job.get("BillableTimeInSeconds"), bool(job.get("EnableManagedSpotTraining")))

    @property
    def spot_saving(self) -> float | None:
        """The saving this job got from spot, when SageMaker reported its billable time."""
        if not self.spot or self.billable_s is None or self.training_s <= 0:
            return None
        return 1 - self.billable_s / self.training_s


@dataclass(frozen=True)
class TrainingCost:
    instance_type: str
    hours: float
    on_demand: float
    spot: float
    spot_saving: float
    configured: str
    """Which of the two the deployment uses (``training_spot``)."""


def training_cost(prices: dict[str, Price], inputs: Inputs) -> TrainingCost:
    hourly = price(prices, f"sagemaker_training_hour.{inputs.training_instance_type}")
    saving = price(prices, "sagemaker_spot_saving")
    if not 0 <= saving < 1:
        raise UserError(f"sagemaker_spot_saving must be a fraction in [0, 1), not {saving}")
    on_demand = hourly * inputs.training_hours
    return TrainingCost(inputs.training_instance_type, inputs.training_hours, on_demand, on_demand * (1 - saving),
                        saving, "spot" if inputs.training_spot else "on demand")


def price_names(inputs: Inputs) -> set[str]:
    """Every price the estimates for ``inputs`` read: what the report lists with its date and source."""
    return {
        "sagemaker_serverless_gb_second", "sagemaker_serverless_data_gb",
        f"sagemaker_hosting_hour.{inputs.endpoint_instance_type}",
        f"sagemaker_training_hour.{inputs.training_instance_type}", "sagemaker_spot_saving",
        "lambda_request", f"lambda_gb_second.{inputs.lambda_architecture}", "s3_put_request", "s3_get_request",
        "dynamodb_write_request_unit", "rekognition_custom_labels_inference_unit_hour",
        "vertex_automl_image_node_hour",
    }
