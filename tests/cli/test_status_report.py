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


def test_the_sites_threshold_is_printed_beside_the_models(capsys):
    def at(sensitivity, lower, specificity, interval):
        return {"sensitivity": {"estimate": sensitivity, "interval": [0, 1], "lower_bound": lower},
                "specificity": {"estimate": specificity, "interval": interval}}
    fitted = {"model_threshold": 0.181, "band": [0.052, 0.47], "target_sensitivity": 0.95, "threshold": 0.412,
              "move": "raise",
              "at_model_threshold": at(0.991, 0.981, 0.741, [0.70, 0.78]), "at_threshold": at(0.962, 0.951, 0.874,
                                                                                          [0.85, 0.89]),
              "specificity_change": {"estimate": 0.133, "interval": [0.11, 0.15]}}
    status.print_threshold(fitted, status.ADOPT)
    assert capsys.readouterr().out.splitlines() == [
        "    threshold for this site: 0.412, the most specificity in the model's referral band shown to keep "
        "sensitivity >= 0.95 here: sensitivity 0.962 (at least 0.951), specificity 0.874 (0.850-0.890)",
        "      at the model's 0.181: sensitivity 0.991 (at least 0.981), specificity 0.741 (0.700-0.780); the site's "
        "threshold changes specificity by +0.133 (+0.110 to +0.150)",
        "      to serve it: `cxr models adopt-threshold 0.412`, then `cxr models promote` the package it registers"]
    status.print_threshold(fitted, status.RETRAIN)  # trained before its handler read the variable
    assert capsys.readouterr().out.splitlines()[-1] == (
        "      to serve it: train the model again; this one was trained before a model could serve an adopted "
        "threshold")
    status.print_threshold(fitted)  # a model no longer serving: adopt-threshold amends the serving one
    assert len(capsys.readouterr().out.splitlines()) == 2
    status.print_threshold({**fitted, "threshold": 0.181, "move": "keep"})
    assert capsys.readouterr().out.startswith("    threshold: the model's 0.181 gives the most specificity")
    kept = {k: v for k, v in fitted.items() if k not in ("at_threshold", "specificity_change")}
    status.print_threshold({**kept, "threshold": 0.181, "move": "keep", "note": "more verdicts will tell"})
    assert capsys.readouterr().out == ("    threshold: keep the model's 0.181 (sensitivity 0.991 (at least 0.981), "
                                       "specificity 0.741 (0.700-0.780)): more verdicts will tell\n")
    status.print_threshold({**fitted, "threshold": None, "note": "fewer than 10 reviewed normals"})
    assert capsys.readouterr().out == "    threshold: fewer than 10 reviewed normals\n"
    status.print_threshold({"threshold": None, "note": "its tasks record no threshold and p(pneumonia)"})
    assert capsys.readouterr().out == ""
