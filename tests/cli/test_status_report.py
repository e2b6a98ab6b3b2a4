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


def test_figures_on_the_sites_patients_are_printed_with_a_warning_where_they_fall_short(capsys):
    field = {
        "cxr-old": {"measures": {"sensitivity": {"cases": 4, "estimate": None, "note": "fewer than 10 reviewed cases"}},
                    "below_model_figure": []},
        "cxr-new": {"measures": {
            "sensitivity": {"cases": 120, "estimate": 0.97, "interval": [0.94, 0.99], "model_figure": 0.979,
                            "model_figure_lower": 0.97, "below_model_figure": False},
            "specificity": {"cases": 130, "estimate": 0.71, "interval": [0.62, 0.8], "model_figure": 0.985,
                            "model_figure_lower": 0.962, "below_model_figure": True},
            "subtype_accuracy": {"cases": 90, "estimate": 0.8, "interval": [0.7, 0.88]}},
            "below_model_figure": ["specificity"]},
    }
    status.print_field(field, "cxr-new")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:5] == [
        "  cxr-new (serving):",
        "    sensitivity 0.970 (0.940-0.990, 120 cases); measured 0.979 (at least 0.970)",
        "    specificity 0.710 (0.620-0.800, 130 cases); measured 0.985 (at least 0.962): BELOW",
        "    bacterial vs viral accuracy 0.800 (0.700-0.880, 90 cases)"]
    assert lines[5].startswith("  WARNING: specificity on this site's patients is below what this model was measured")
    assert lines[6:] == ["  cxr-old:", "    sensitivity: fewer than 10 reviewed cases (4 reviewed)"]
    status.print_field({}, None)
    assert capsys.readouterr().out == ""
