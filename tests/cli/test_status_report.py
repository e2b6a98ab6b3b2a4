"""`cxr status` points at the serving model's evaluation report: a presigned URL on AWS, a local copy offline."""

from urllib.parse import parse_qs, urlparse

import boto3
import pytest

from cxr import target
from cxr.commands import status

PAGE = b"<!DOCTYPE html><html><body>evaluation report</body></html>"


def deployment(endpoint_url: str | None = None) -> target.Target:
    return target.Target(session=boto3.Session(), stage="dev", account="123456789012", region="us-east-1",
                         endpoint_url=endpoint_url)


@pytest.fixture
def published(aws):
    bucket = deployment().bucket("data")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="reports/run-1/report.html", Body=PAGE, ContentType="text/html")
    return bucket


def test_on_aws_the_report_is_a_presigned_signature_v4_url(published):
    url = status.model_report(deployment(), "run-1")
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    assert published in url and parsed.path.endswith("/reports/run-1/report.html")
    # the data bucket is SSE-KMS: a Signature Version 2 URL could not read the object
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["3600"]
    assert status.model_report(deployment(), "run-without-report") is None


def test_offline_the_report_is_copied_to_a_local_path(published, tmp_path, monkeypatch):
    monkeypatch.setattr(target, "LOCAL_DIR", tmp_path)
    # an endpoint URL makes the target the offline cloud; moto answers it in process
    offline = deployment("https://s3.us-east-1.amazonaws.com")
    path = status.model_report(offline, "run-1")
    assert path == str(tmp_path / "reports" / "run-1" / "report.html")
    assert open(path, "rb").read() == PAGE
    assert status.model_report(offline, "run-2") is None
