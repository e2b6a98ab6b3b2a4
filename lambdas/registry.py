"""The stage's model package group in the SageMaker Model Registry: read it, approve and reject in it.

Shared by the RegisterModel step and `cxr models`. ``ListModelPackages`` summaries carry no metadata,
so each package is described; groups hold one package per training run, a few hundred at most.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from lambdas import aws
from lambdas.domain import layout, promotion


def packages(group: str, client=None) -> list[dict]:
    """Every package of the group, described, oldest first."""
    sagemaker = client or aws.client("sagemaker")
    arns = [summary["ModelPackageArn"]
            for page in sagemaker.get_paginator("list_model_packages").paginate(
                ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Ascending")
            for summary in page["ModelPackageSummaryList"]]
    described = [sagemaker.describe_model_package(ModelPackageName=arn) for arn in arns]
    return sorted(described, key=lambda p: p.get("ModelPackageVersion", 0))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def set_status(arn: str, status: str, reason: str, client=None, **properties: str) -> None:
    """UpdateModelPackage with the reason as ``ApprovalDescription``; approving stamps ``APPROVED_AT``."""
    if status not in promotion.STATUSES:
        raise ValueError(f"approval status must be one of {promotion.STATUSES}")
    if status == promotion.APPROVED:
        properties[promotion.APPROVED_AT] = now()
    properties = {key: promotion.metadata_value(value) for key, value in properties.items()}
    (client or aws.client("sagemaker")).update_model_package(
        ModelPackageArn=arn, ModelApprovalStatus=status, ApprovalDescription=reason[:promotion.MAX_DESCRIPTION],
        **({"CustomerMetadataProperties": properties} if properties else {}))


def read_json(uri: str | None, client=None) -> dict | None:
    """A JSON object at an ``s3://`` URI (None for no URI)."""
    if not uri:
        return None
    bucket, key = layout.split_s3_uri(uri)
    return json.loads((client or aws.client("s3")).get_object(Bucket=bucket, Key=key)["Body"].read())
