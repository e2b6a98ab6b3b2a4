"""The one typed configuration of a deployment, read from CDK context (pure: the local mode reads it too).

Values come from ``cdk.json``'s ``context.cxr`` object, then from top-level context keys of the
same name (``cdk synth -c endpoint_mode=async``), strings coerced to each field's type.
``profile=demo`` selects the demo profile's quality gate, which the local mode uses.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra import wiring
from infra.images import is_accelerated, is_arm, is_gpu

ENDPOINT_MODES = ("serverless", "realtime", "async", "lambda")
"""``lambda``: no SageMaker endpoint; the predict function runs the approved model (``lambdas/served_model.py``)."""
PROFILES = ("default", "demo")
ARCHITECTURES = ("x86_64", "arm64")
APPROVAL_MODES = ("auto", "manual")

DEFAULT_GATE: dict[str, float] = {
    "accuracy": 0.83,
    "macro_f1": 0.80,
    "binary.roc_auc": 0.94,
    "binary.sensitivity": 0.90,
    "binary.specificity": 0.75,
}
"""Minimum values of ``metrics.json`` fields (dotted paths) a model needs to be deployed.

The three-class and binary floors are issue 3's accuracy targets on the held-out Kermany test split."""

DEMO_GATE: dict[str, float] = {"accuracy": 0.50, "binary.roc_auc": 0.70}
"""The demo trains for minutes on a small subset on a CPU: it must beat chance clearly, no more."""

PROD_RETENTION_DAYS = 2192
"""Six years (HIPAA keeps required documentation six years, 45 CFR 164.316(b)(2)); governance mode, so an
administrator with ``s3:BypassGovernanceRetention`` can still remove a record on purpose."""

RETIRED: dict[str, str] = {
    "uncertainty_band": "the referral band now follows each model's own threshold: set the training "
                        "hyperparameter referral-margin (log-odds around the threshold) instead",
}
"""Settings that existed once, and what replaces them, so an older ``cdk.json`` is told why it is refused."""

MAX_TRAINING_INSTANCES = 16
"""Upper bound of ``training_instance_count`` (a typo guard; the account's SageMaker quota is the real limit)."""

_STAGE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATASET = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
"""A dataset folder under ``raw/``: one path segment."""


class ConfigError(ValueError):
    """A context value that cannot make a valid deployment."""


@dataclass(frozen=True)
class Config:
    stage: str = "dev"
    profile: str = "default"
    endpoint_mode: str = "serverless"
    serverless_memory_mb: int = 3072
    serverless_max_concurrency: int = 5
    endpoint_instance_type: str = "ml.c6i.large"
    """Realtime and async endpoints: a CPU instance (2 vCPU, 4 GiB), as inference.py runs ONNX Runtime on the CPU."""
    training_instance_type: str = "ml.g4dn.xlarge"
    training_instance_count: int = 1
    """Instances of the training job; with a GPU type every job runs through torchrun, one rank per GPU of each
    instance (``ml.g5.12xlarge``: 4), so a multi-GPU type or a count above 1 trains data-parallel."""
    training_spot: bool = True
    training_pretrained: bool = True
    """Ship the ImageNet EfficientNet-Lite weights (one zip) as the job's ``pretrained`` channel."""
    training_max_runtime_s: int = 4 * 3600
    training_volume_gb: int = 50
    quality_gate: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_GATE))
    explain_referrals: bool = True
    approval: str = "auto"
    """``auto``: a challenger that clears the minimums and the champion gate is approved and deployed;
    ``manual``: it waits as ``PendingManualApproval`` until `cxr models promote` approves it."""
    rescore_days: int = 0
    """After a deployment, re-score this many days of ``incoming/`` with the new model (Batch Transform) and write
    which labels changed to ``reports/<run>/rescore.csv``; 0: off."""
    champion_margin: float = 0.02
    """How much worse than the champion (accuracy, sensitivity, specificity, AUC on the benchmark set) the lower
    end of the paired bootstrap's 95 % interval may reach (``lambdas.domain.champion``)."""
    """Keep the class-activation overlay PNG beside every referred prediction: the cases a radiologist reads,
    for a few milliseconds and about 0.3 MB more per endpoint answer (the predict function cannot know the
    referral before the answer, so it asks every time) and one PNG of at most 0.2 MB per referral."""
    dicom_sr_output: bool = True
    """Write each prediction on a DICOM input as a DICOM Comprehensive SR under ``results-dicom/`` as well."""
    notification_email: str | None = None
    reserved_concurrency: int | None = None
    lambda_architecture: str = "x86_64"
    log_retention_days: int = 365
    quarantine_expiry_days: int = 90
    checkpoint_expiry_days: int = 14
    async_expiry_days: int = 7
    """Asynchronous endpoints' request copies and results (``async-*/``), kept for inspection after use."""
    prediction_retention_days: int | None = None
    """S3 Object Lock retention (governance mode) of each prediction JSON, in days; 0 turns it off. Unset:
    :data:`PROD_RETENTION_DAYS` for stage ``prod``, 0 for any other (``Config.retention_days``)."""
    review_sample_rate: float = 0.02
    """Share of the predictions the model did not refer that still become review tasks (quality control)."""
    review_dataset: str = "reviewed"
    """The dataset (``raw/<dataset>/``) reviewed X-rays are copied into: set it to the dataset you train on."""
    adopt_key_arn: str | None = None
    """A KMS key an earlier teardown retained: the stacks use it instead of creating one (`cxr deploy` sets it)."""
    adopt_buckets: tuple[str, ...] = ()
    """Bucket roles (``infra.wiring.BUCKETS``) whose retained buckets are referenced instead of created."""
    adopt_pseudonym_secret: bool = False
    """The DICOM pseudonym key an earlier teardown retained is referenced by name instead of created (`cxr deploy`
    sets it): patients keep their pseudonyms across deployments."""

    def __post_init__(self) -> None:
        problems = []
        if not _STAGE.match(self.stage):
            problems.append(f"stage {self.stage!r} must be 1-16 lower-case letters, digits or '-'")
        for name, allowed in (
            ("profile", PROFILES),
            ("endpoint_mode", ENDPOINT_MODES),
            ("lambda_architecture", ARCHITECTURES),
            ("approval", APPROVAL_MODES),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}")
        if self.serverless_memory_mb not in range(1024, 6145, 1024):
            problems.append("serverless_memory_mb must be 1024, 2048, ... 6144 (SageMaker's sizes)")
        if not 1 <= self.serverless_max_concurrency <= 200:
            problems.append("serverless_max_concurrency must be in 1..200")
        for name in ("endpoint_instance_type", "training_instance_type"):
            if not getattr(self, name).startswith("ml."):
                problems.append(f"{name} must be a SageMaker instance type (ml.*)")
        if is_accelerated(self.endpoint_instance_type):
            problems.append(f"endpoint_instance_type {self.endpoint_instance_type} pays for a GPU or accelerator the "
                            "model never uses (inference.py runs ONNX Runtime on the CPU): choose a CPU type such as "
                            "ml.c6i.large")
        if is_arm(self.endpoint_instance_type):
            problems.append(f"endpoint_instance_type {self.endpoint_instance_type} is a Graviton (arm64) type; the "
                            "serving image is built for x86_64: choose an x86 CPU type such as ml.c6i.large")
        if not 1 <= self.training_instance_count <= MAX_TRAINING_INSTANCES:
            problems.append(f"training_instance_count must be in 1..{MAX_TRAINING_INSTANCES}")
        elif self.training_instance_count > 1 and not is_gpu(self.training_instance_type):
            problems.append(f"training_instance_count {self.training_instance_count} needs a GPU "
                            "training_instance_type (ml.g*, ml.p*): SageMaker's torch_distributed launcher, which "
                            "multi-instance training runs through, is for GPU instances")
        if not 600 <= self.training_max_runtime_s <= 28 * 24 * 3600:
            problems.append("training_max_runtime_s must be in 600..2419200")
        if not 1 <= self.training_volume_gb <= 16384:
            problems.append("training_volume_gb must be in 1..16384")
        if not self.quality_gate or not all(0.0 <= v <= 1.0 for v in self.quality_gate.values()):
            problems.append("quality_gate must map metric paths to minimums in [0, 1]")
        if not 0 <= self.rescore_days <= 365:
            problems.append("rescore_days must be in 0..365")
        if not 0 <= self.champion_margin < 1:
            problems.append("champion_margin must be in [0, 1)")
        if self.notification_email is not None and not _EMAIL.match(self.notification_email):
            problems.append("notification_email is not an e-mail address")
        if self.reserved_concurrency is not None and self.reserved_concurrency < 1:
            problems.append("reserved_concurrency must be a positive number or unset")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            problems.append(f"log_retention_days must be one of CloudWatch's {LOG_RETENTION_DAYS}")
        if min(self.quarantine_expiry_days, self.checkpoint_expiry_days, self.async_expiry_days) < 1:
            problems.append("expiry days must be positive")
        if self.prediction_retention_days is not None and not 0 <= self.prediction_retention_days <= 36500:
            problems.append("prediction_retention_days must be in 0..36500 (S3 Object Lock allows up to 100 years)")
        if not 0.0 <= self.review_sample_rate <= 1.0:
            problems.append("review_sample_rate must be in [0, 1]")
        if not _DATASET.match(self.review_dataset):
            problems.append("review_dataset must be a dataset folder name (letters, digits, '.', '_', '-')")
        if self.adopt_key_arn is not None and not _KEY_ARN.match(self.adopt_key_arn):
            problems.append("adopt_key_arn must be a KMS key ARN")
        unknown = set(self.adopt_buckets) - set(wiring.BUCKETS)
        if unknown:
            problems.append(f"adopt_buckets must name bucket roles among {', '.join(wiring.BUCKETS)}")
        if set(self.adopt_buckets) - {wiring.ACCESS_LOGS} and self.adopt_key_arn is None:
            problems.append("adopting the data or inference bucket needs adopt_key_arn: its objects stay "
                            "encrypted under their key")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def retention_days(self) -> int:
        """Object Lock days in force for prediction JSON: the setting, else on for ``prod`` only."""
        if self.prediction_retention_days is not None:
            return self.prediction_retention_days
        return PROD_RETENTION_DAYS if self.stage == "prod" else 0

    @property
    def spot_max_wait_s(self) -> int:
        """Spot jobs wait for capacity at most as long again as they may run."""
        return 2 * self.training_max_runtime_s

    @classmethod
    def demo(cls, **overrides: Any) -> Config:
        return cls.from_values({"profile": "demo", **overrides})

    @classmethod
    def from_context(cls, get: Callable[[str], Any]) -> Config:
        """From a CDK node's ``try_get_context``: the ``cxr`` object, then top-level overrides."""
        values = dict(get("cxr") or {})
        for f in dataclasses.fields(cls):
            override = get(f.name)
            if override is not None:
                values[f.name] = override
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Config:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            others = sorted(unknown - RETIRED.keys())
            raise ConfigError("; ".join([f"{name}: {RETIRED[name]}" for name in sorted(unknown & RETIRED.keys())]
                                        + ([f"unknown settings: {', '.join(others)}"] if others else [])))
        kwargs = {name: _coerce(name, value) for name, value in values.items()}
        if kwargs.get("profile") == "demo":
            kwargs.setdefault("quality_gate", dict(DEMO_GATE))
        return cls(**kwargs)


LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
                      3288, 3653)
_INTS = {"serverless_memory_mb", "serverless_max_concurrency", "training_max_runtime_s", "training_volume_gb",
         "training_instance_count",
         "reserved_concurrency", "log_retention_days", "quarantine_expiry_days", "checkpoint_expiry_days",
         "async_expiry_days", "prediction_retention_days", "rescore_days"}


def _coerce(name: str, value: Any) -> Any:
    """Context given on the command line arrives as strings; cdk.json gives JSON types."""
    if value in ("", "none", "null") and name in {"notification_email", "reserved_concurrency", "adopt_key_arn",
                                                     "prediction_retention_days"}:
        return None
    try:
        if name in _INTS:
            return int(value)
        if name in ("training_spot", "training_pretrained", "explain_referrals", "dicom_sr_output",
                    "adopt_pseudonym_secret"):
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                return value.lower() in {"true", "1", "yes"}
            return bool(value)
        if name in ("review_sample_rate", "champion_margin"):
            return float(value)
        if name == "quality_gate":
            gate = json.loads(value) if isinstance(value, str) else value
            return {str(k): float(v) for k, v in gate.items()}
        if name == "adopt_buckets":
            roles = value.split(",") if isinstance(value, str) else value
            return tuple(sorted(str(role) for role in roles if role))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{name}: cannot read {value!r}") from exc
    return value
