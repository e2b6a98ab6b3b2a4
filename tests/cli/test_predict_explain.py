"""`cxr predict --explain DIR`: the prediction JSON and its overlay PNG side by side, through the bucket or direct."""

from __future__ import annotations

import base64
import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from PIL import Image

import corpus
from cxr import cli, operations, target
from infra import wiring
from ingested import PSEUDONYM_SECRET, name_of
from lambdas.domain import imaging, layout

BUCKET = "cxr-inference"


def png_of(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (shade, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


class Deployment:
    """What `cxr predict` needs of a target: clients, the inference bucket, the endpoint's name."""

    endpoint_name, stage = "cxr-test", "test"

    def __init__(self, **clients):
        self.clients = clients

    def client(self, service: str):
        return self.clients.get(service) or boto3.client(service)

    def bucket(self, role: str) -> str:
        return BUCKET


def test_direct_sends_the_explain_request_and_writes_the_overlay_beside_the_json(tmp_path, monkeypatch, capsys):
    xray = tmp_path / "chest.png"
    xray.write_bytes(corpus.png(seed=5))
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    answer = {"label": "normal", "confidence": 0.9, "probabilities": {"normal": 0.9, "pneumonia": 0.1},
              "pneumonia_probability": 0.1, "model_id": "m",
              "explanation": {"method": "cam", "overlay_png": base64.b64encode(png_of(77)).decode()}}
    payload = json.dumps(answer).encode()
    request = json.dumps({"image": base64.b64encode(imaging.normalise(xray.read_bytes()).png).decode(),
                          "explain": True}).encode()
    monkeypatch.setattr(target, "resolve", lambda args: Deployment(**{"sagemaker-runtime": runtime}))
    with Stubber(runtime) as stubber:
        stubber.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(payload), len(payload))},
                             {"EndpointName": "cxr-test", "ContentType": "application/json",
                              "Accept": "application/json", "Body": request})
        assert cli.main(["predict", str(xray), "--direct", "--explain", str(tmp_path / "out"), "--json"]) == 0
    written = json.loads((tmp_path / "out" / "chest.png.json").read_text())
    assert written["label"] == "normal" and "overlay_png" not in json.dumps(written)
    assert written["explanation"] == {"method": "cam", "overlay": str(tmp_path / "out" / "chest.png.overlay.png")}
    assert Image.open(tmp_path / "out" / "chest.png.overlay.png").getpixel((0, 0))[0] == 77
    assert "overlay_png" not in capsys.readouterr().out


def test_through_the_bucket_the_upload_asks_and_the_overlay_is_fetched(aws, tmp_path, monkeypatch):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    boto3.client("secretsmanager").create_secret(Name=wiring.PSEUDONYM_SECRET_NAME.format(stage=Deployment.stage),
                                                 SecretString=PSEUDONYM_SECRET)

    def predict_lambda(seconds):
        """Explains only an upload that asks through its metadata, as the predict function does."""
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=layout.INCOMING).get("Contents", []):
            current, name = s3.get_object(Bucket=BUCKET, Key=obj["Key"]), name_of(obj["Key"], BUCKET)
            record = {"source": {"name": name, "version_id": current["VersionId"]}, "label": "normal",
                      "confidence": 0.9, "pneumonia_probability": 0.1, "refer_to_radiologist": False}
            if current["Metadata"].get(layout.EXPLAIN_METADATA) == "true":
                s3.put_object(Bucket=BUCKET, Key=layout.overlay_key(name), Body=png_of(33))
                record["explanation"] = {"overlay_key": layout.overlay_key(name), "method": "cam"}
            s3.put_object(Bucket=BUCKET, Key=layout.prediction_key(name), Body=json.dumps(record))

    monkeypatch.setattr(operations.time, "sleep", predict_lambda)
    monkeypatch.setattr(target, "resolve", lambda args: Deployment())
    xray = tmp_path / "ward" / "a.jpeg"
    xray.parent.mkdir()
    xray.write_bytes(b"any bytes: the stand-in Lambda does not read them")
    assert cli.main(["predict", str(xray), "--explain", str(tmp_path / "out"), "--timeout", "5"]) == 0
    written = json.loads((tmp_path / "out" / "a.jpeg.json").read_text())
    assert written["explanation"]["overlay"] == str(tmp_path / "out" / "a.jpeg.overlay.png")
    assert Image.open(tmp_path / "out" / "a.jpeg.overlay.png").getpixel((0, 0))[0] == 33


def test_two_inputs_with_one_name_are_refused_before_anything_is_sent(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(target, "resolve", lambda args: pytest.fail("nothing may be sent"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(b"x")
    with pytest.raises(SystemExit) as exited:
        cli.main(["predict", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--explain",
                  str(tmp_path / "out")])
    assert exited.value.code == 2 and "distinct names" in capsys.readouterr().err
