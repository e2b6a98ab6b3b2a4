"""Shared fixtures: offline AWS credentials, moto, and a versioned data bucket."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# Never reach AWS: fake credentials and a fixed region before boto3 is imported anywhere.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_METRICS_NAMESPACE": "CxrServerless",
        "POWERTOOLS_DEV": "false",
    }
)
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture
def aws():
    """An in-process moto account; handler clients are re-created inside it."""
    from moto import mock_aws

    from lambdas import aws as lambda_aws

    with mock_aws():
        lambda_aws.reset_clients()
        yield
    lambda_aws.reset_clients()


@pytest.fixture
def data_bucket(aws):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="cxr-data")
    s3.put_bucket_versioning(Bucket="cxr-data", VersioningConfiguration={"Status": "Enabled"})
    return "cxr-data"


@pytest.fixture
def lambda_context():
    from cxr.local.context import LambdaContext

    return LambdaContext(function_name="preprocess")


@pytest.fixture
def state_table(aws, monkeypatch):
    """The source-state table and the pseudonym secret that names its records, in the handlers' environment."""
    import boto3

    from infra import wiring
    from ingested import PSEUDONYM_SECRET, create_state_table

    secret = boto3.client("secretsmanager").create_secret(Name="cxr-test/source-names", SecretString=PSEUDONYM_SECRET)
    monkeypatch.setenv(wiring.ENV_PSEUDONYM_SECRET, secret["ARN"])
    monkeypatch.setenv(wiring.ENV_SOURCE_STATE_TABLE, create_state_table("cxr-source-state"))
    return "cxr-source-state"


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory):
    """``mktemp`` for module fixtures, removed when the module ends unless one of its tests failed.

    Module fixtures hold CDK synths (300 MB each) and offline clouds (up to 2 GB); kept to the end of the run
    they filled CI's disk. With ``tmp_path_retention_policy = "failed"`` a run's disk now peaks near one
    module's worth per worker.
    """
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Files with a slow test first, each file's tests in their own order. `make test` hands whole files to its
    workers in this order (`--dist loadfile --no-loadscope-reorder`), so they start on the end-to-end files and
    finish on the many short ones; xdist's own order, most tests first, left a five-minute file to run alone
    at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
