"""Settings read from the environment (names in infra/wiring.py), validated once per cold start."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import audit, imaging, review


@dataclass(frozen=True)
class Settings:
    data_bucket: str | None
    inference_bucket: str | None
    predictions_table: str | None
    idempotency_table: str | None
    endpoint_parameter: str | None
    max_upload_bytes: int
    source_state_table: str | None
    code_version: str = ""
    """The code the function was packaged from (``CXR_CODE_VERSION``), recorded in each prediction."""
    prediction_retention_days: int = 0
    """Object Lock retention of each prediction JSON (``PREDICTION_RETENTION_DAYS``); 0: none."""
    explain_referrals: bool = False
    """Ask the endpoint for the class-activation overlay and keep it beside a referred prediction (the stacks
    set it from the configuration, on by default; unset, as in a bare test, it is off)."""
    review_tasks_table: str | None = None
    """The review queue (``REVIEW_TASKS_TABLE``): referred and sampled predictions become tasks; unset, none do."""
    review_sample_rate: float = review.DEFAULT_SAMPLE_RATE
    """Share of unreferred predictions drawn for quality-control review (``REVIEW_SAMPLE_RATE``)."""
    dicom_sr_output: bool = True
    """Write a DICOM SR of each prediction on DICOM input under ``results-dicom/`` (``DICOM_SR_OUTPUT``; unset: on)."""
    pseudonym_secret: str | None = None
    """The Secrets Manager secret keying DICOM pseudonyms (``PSEUDONYM_SECRET_ARN``; :mod:`lambdas.pseudonyms`)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        max_bytes = int(env.get("MAX_UPLOAD_BYTES", imaging.MAX_UPLOAD_BYTES))
        if not 0 < max_bytes <= imaging.MAX_UPLOAD_BYTES:
            raise ValueError(f"MAX_UPLOAD_BYTES must be in 1..{imaging.MAX_UPLOAD_BYTES}, got {max_bytes}")
        return cls(
            data_bucket=env.get("DATA_BUCKET"),
            inference_bucket=env.get("INFERENCE_BUCKET"),
            predictions_table=env.get("PREDICTIONS_TABLE"),
            idempotency_table=env.get("IDEMPOTENCY_TABLE"),
            endpoint_parameter=env.get("ENDPOINT_PARAMETER"),
            max_upload_bytes=max_bytes,
            source_state_table=env.get("SOURCE_STATE_TABLE"),
            code_version=env.get(audit.CODE_VERSION_VARIABLE, ""),
            prediction_retention_days=int(env.get("PREDICTION_RETENTION_DAYS") or 0),
            explain_referrals=parse_flag("EXPLAIN_REFERRALS", env.get("EXPLAIN_REFERRALS")),
            review_tasks_table=env.get("REVIEW_TASKS_TABLE") or None,
            review_sample_rate=review.parse_sample_rate(env.get("REVIEW_SAMPLE_RATE")),
            pseudonym_secret=env.get("PSEUDONYM_SECRET_ARN"),
            dicom_sr_output=parse_flag("DICOM_SR_OUTPUT", env.get("DICOM_SR_OUTPUT", "true")),
        )

    def require(self, *names: str) -> None:
        """Fail the cold start with the missing variable's name, not later with a None."""
        missing = [name for name in names if getattr(self, name) in (None, "")]
        if missing:
            raise RuntimeError(f"missing environment configuration: {', '.join(n.upper() for n in missing)}")


def parse_flag(name: str, text: str | None) -> bool:
    """``true`` / ``false`` (unset: false); anything else fails the cold start with the variable's name."""
    value = (text or "false").strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{name} must be 'true' or 'false', got {text!r}")
    return value == "true"

