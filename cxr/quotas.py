"""The SageMaker Service Quotas a deployment needs, looked up by quota name.

SageMaker names its per-instance-type quotas ``<type> for training job usage``, ``<type> for spot
training job usage`` and ``<type> for endpoint usage`` (the names its ``ResourceLimitExceeded``
errors quote); quota codes (``L-...``) are read from the listing, never typed here. Fresh accounts
often hold 0 for GPU types, spot training above all, and a job or endpoint on such a type fails
only when the pipeline reaches it.

Where the values come from is a :class:`QuotaSource`: the Service Quotas API on AWS, or a saved
``aws service-quotas list-service-quotas`` listing (``cxr doctor --quotas FILE``; also how the
tests seed quotas, since moto serves Service Quotas for VPC only). Both yield botocore's
``ServiceQuota`` shape.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cxr.errors import UsageError
from infra.config import Config

SERVICE_CODE = "sagemaker"
SERVERLESS_CONCURRENCY = "Maximum total concurrency that can be allocated across all serverless endpoints"
"""Account-wide and per region: every serverless endpoint's MaxConcurrency counts against it."""


@dataclass(frozen=True)
class Need:
    """One quota the configuration uses: below ``minimum`` the deployment fails, below ``recommended`` later."""

    name: str
    minimum: int
    recommended: int
    why: str
    later: str = ""
    """What fails between ``minimum`` and ``recommended``."""


def needs(config: Config) -> list[Need]:
    """The quotas the configured training and endpoint use, with the amounts the pipeline asks for."""
    spot = "spot " if config.training_spot else ""
    result = [Need(f"{config.training_instance_type} for {spot}training job usage", 1, 1,
                   f"each pipeline run trains on one {config.training_instance_type}"
                   f"{' (managed spot)' if config.training_spot else ''}")]
    if config.endpoint_mode == "serverless":
        concurrency = config.serverless_max_concurrency
        result.append(Need(SERVERLESS_CONCURRENCY, concurrency, concurrency,
                           f"the serverless endpoint asks for serverless_max_concurrency={concurrency}"))
    else:
        # UpdateEndpoint is blue/green by default: the new fleet starts before the old one stops
        # (SageMaker API reference, BlueGreenUpdatePolicy), so the second model needs two instances.
        result.append(Need(f"{config.endpoint_instance_type} for endpoint usage", 1, 2,
                           f"the {config.endpoint_mode} endpoint runs one {config.endpoint_instance_type}",
                           later="the next model's in-place update (blue/green: the new instance starts "
                                 "before the old one stops)"))
    return result


class QuotaSource(Protocol):
    def lookup(self, names: Collection[str]) -> dict[str, dict]:
        """``ServiceQuota`` dicts (botocore's shape) by ``QuotaName``, for the names that exist with a value."""


class ServiceQuotasApi:
    """The account's applied values, falling back to AWS's defaults.

    ListServiceQuotas returns applied values only and leaves out a quota whose applied value is
    not available (Service Quotas API reference), as on an account that never changed it; its
    value is then ListAWSDefaultServiceQuotas's.
    """

    def __init__(self, client):
        self.client = client

    def lookup(self, names: Collection[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for operation in ("list_service_quotas", "list_aws_default_service_quotas"):
            pages = self.client.get_paginator(operation).paginate(ServiceCode=SERVICE_CODE,
                                                                  PaginationConfig={"PageSize": 100})
            for page in pages:
                for quota in page["Quotas"]:
                    if quota["QuotaName"] in names and "Value" in quota:
                        found.setdefault(quota["QuotaName"], quota)
                if found.keys() >= set(names):
                    return found
        return found


class SavedListing:
    """The JSON that ``aws service-quotas list-service-quotas --service-code sagemaker`` prints."""

    def __init__(self, path: Path):
        try:
            listing = json.loads(path.read_text())
            quotas = listing["Quotas"]
            self.quotas = {q["QuotaName"]: q for q in quotas if q["ServiceCode"] == SERVICE_CODE and "Value" in q}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--quotas {path}: not a saved `aws service-quotas list-service-quotas "
                             f"--service-code {SERVICE_CODE}` listing ({exc})") from None

    def lookup(self, names: Collection[str]) -> dict[str, dict]:
        return {name: self.quotas[name] for name in names if name in self.quotas}
