"""`cxr check` and `cxr deid` on a folder of DICOM files with fake identifiers: verdicts, and no identifier out."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from test_predict_explain import Deployment

import dicom_corpus
from cxr import target
from cxr.cli import main
from cxr.commands import deid as deid_command
from lambdas.domain import uploads


@functools.cache
def corpus() -> list[dicom_corpus.Case]:
    return dicom_corpus.corpus()


@pytest.fixture
def folder(tmp_path) -> Path:
    """The corpus as an export would lay it out: one label folder of .dcm files named after the patient."""
    (tmp_path / "NORMAL").mkdir()
    for case in corpus():
        (tmp_path / "NORMAL" / case.name).write_bytes(case.data)
    return tmp_path


def leaked(output: str, paths) -> list[str]:
    """Identifiers in the output once the paths the user passed are taken out of it."""
    for path in sorted(map(str, paths), key=len, reverse=True):
        output = output.replace(path, "<path>")
    return [identifier for identifier in dicom_corpus.IDENTIFIERS if identifier in output]


def test_check_gives_each_dicom_file_its_label_or_reason(folder, capsys):
    status = main(["check", "--json", str(folder)])
    output = capsys.readouterr().out
    verdicts = {Path(v["path"]).name: v for v in json.loads(output)}
    assert status == 1 and len(verdicts) == len(corpus())
    for case in corpus():
        verdict = verdicts[case.name]
        if case.reason is None:
            assert (verdict["status"], verdict["label"], verdict["original_format"]) == ("accepted", "normal", "DICOM")
        else:
            assert (verdict["status"], verdict["code"]) == ("rejected", case.reason), case.name
    assert not leaked(output, [folder / "NORMAL" / case.name for case in corpus()])


@pytest.mark.parametrize("as_json", [True, False])
def test_deid_names_what_is_kept_and_removed_without_values(folder, capsys, as_json):
    case = next(c for c in corpus() if c.reason is None)
    path = folder / "NORMAL" / case.name
    assert main(["deid", str(path), *(["--json"] if as_json else [])]) == 0
    output = capsys.readouterr().out
    assert not leaked(output, [path])
    if as_json:
        report = json.loads(output)
        assert report["kept"]["patient_id"] == deid_command.PSEUDONYM and report["kept"]["modality"] == "DX"
        assert report["kept"]["age_years"] == 45 and report["kept"]["view_position"] == "PA"
        removed = {element["keyword"] for element in report["removed"]}
        assert set(dicom_corpus.PHI) - {"PatientID", "StudyInstanceUID", "SeriesInstanceUID"} <= removed
        assert "private" in removed
    else:
        assert "PatientName" in output and "accepted" in output


def test_deid_exits_1_for_a_file_ingest_would_reject(folder, capsys):
    case = next(c for c in corpus() if c.reason == "dicom_lateral")
    assert main(["deid", str(folder / "NORMAL" / case.name)]) == 1
    assert "dicom_lateral" in capsys.readouterr().out


def test_predict_direct_sends_the_endpoint_the_normalised_png_of_a_dicom_file(folder, monkeypatch, capsys):
    """`cxr predict --direct` decodes DICOM here, as the predict function does: the endpoint never sees DICOM."""
    case = next(c for c in corpus() if c.reason is None and "JPEG2000" in c.name)
    path = folder / "NORMAL" / case.name
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    payload = json.dumps({"label": "normal", "confidence": 0.9, "probabilities": {"normal": 0.9, "pneumonia": 0.1},
                          "pneumonia_probability": 0.1, "model_id": "m"}).encode()
    monkeypatch.setattr(target, "resolve", lambda args: Deployment(**{"sagemaker-runtime": runtime}))
    with Stubber(runtime) as stubber:
        stubber.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(payload), len(payload))},
                             {"EndpointName": "cxr-test", "ContentType": "image/png", "Accept": "application/json",
                              "Body": uploads.normalise(case.data)[0].png})
        assert main(["predict", str(path), "--direct", "--json"]) == 0
    output = capsys.readouterr().out
    assert '"normal"' in output and not leaked(output, [path])
