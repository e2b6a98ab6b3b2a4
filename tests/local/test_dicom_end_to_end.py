"""A folder of DICOM X-rays with fake identifiers through the offline cloud: upload, ingest, training, prediction.

Every AWS call is checked against the synthesized policies (the ``cloud`` fixture of the end-to-end test),
and a byte search of everything written finds no identifier outside ``raw/``, ``incoming/`` and
``results-dicom/``: object keys, metadata and bodies (archives opened), every table, every log. The
file names carry identifiers too, and nothing is taken out of the search but the local paths given.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import boto3
import highdicom
import numpy as np
import pydicom
import pytest
from PIL import Image
from test_end_to_end import cloud, name_of, run_pipeline, traces  # noqa: F401

import dicom_corpus
from cxr import operations
from infra import wiring
from lambdas.domain import labels, layout

pytestmark = pytest.mark.slow
QUICK = {"architecture": "compact", "image-size": "64", "epochs": "3", "batch-size": "16"}
ALLOWED = (layout.RAW, layout.INCOMING, layout.RESULTS_DICOM)


@pytest.fixture(scope="module")
def dicom_folder(module_dir) -> Path:
    """The synthetic three-class dataset as DICOM: one fake PatientID per synthetic patient, named in the files."""
    from training import synthetic

    source = synthetic.write_dataset(module_dir("jpeg") / "synth", per_class=14)
    root = module_dir("dicom") / "synth"
    folders = {"NORMAL": "NORMAL", "PNEUMONIA": None}
    for number, path in enumerate(sorted(source.rglob("*.jpeg")), 1):
        label = path.parent.name if folders.get(path.parent.name) else (
            "BACTERIAL" if "bacteria" in path.name else "VIRAL")
        patient = f"{dicom_corpus.PATIENT_ID}-{labels.patient_id(path.name)}"
        grey = np.asarray(Image.open(path).convert("L"))
        ds = dicom_corpus.dataset(grey, number=number, PatientID=patient)
        target = root / label / f"{dicom_corpus.FILE_NAME_IDENTIFIER}-{patient}-{number}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(dicom_corpus.to_bytes(ds, pydicom.uid.JPEGLSLossless if number % 2 else
                                                 pydicom.uid.ExplicitVRLittleEndian))
    return root


def everything_written(cloud) -> str:  # noqa: F811 (the imported fixture)
    """Keys, metadata and bodies of every object version outside the allowed prefixes, every table, every log."""
    s3, ddb, found = boto3.client("s3"), boto3.client("dynamodb"), []
    for bucket in (cloud.names.bucket(role) for role in wiring.BUCKETS):
        for version in s3.list_object_versions(Bucket=bucket).get("Versions", []):
            if version["Key"].startswith(ALLOWED):
                continue
            obj = s3.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
            body = obj["Body"].read()
            found += [version["Key"], json.dumps(obj.get("Metadata", {})), body.decode("latin-1")]
            if version["Key"].endswith((".tar.gz", ".tgz")):
                with tarfile.open(fileobj=io.BytesIO(body)) as archive:
                    # code/lib is the serving wheels unpacked (issue 20), the same bytes whatever the data: its
                    # 180 MB of binaries hold any six digits by chance (the StudyTime 101112 is in ONNX Runtime's)
                    found += [archive.extractfile(m).read().decode("latin-1") for m in archive
                              if m.isfile() and not m.name.startswith("code/lib/")]
            if version["Key"].endswith(".png"):
                image = Image.open(io.BytesIO(body))
                found.append(json.dumps({k: str(v) for k, v in image.info.items()}))
    for table in ddb.list_tables()["TableNames"]:
        found += [json.dumps(item) for item in ddb.scan(TableName=table)["Items"]]
    found += [p.read_bytes().decode("latin-1") for p in Path(cloud.workdir).rglob("*")
              if p.is_file() and p.stat().st_size < 50_000_000 and "/code/lib/" not in str(p)]  # as above
    return "\n".join(found)


def test_dicom_dataset_trains_and_predicts_with_no_identifier_outside_raw(cloud, dicom_folder, capsys):  # noqa: F811
    s3 = boto3.client("s3")
    data = cloud.names.bucket(wiring.DATA)
    keys = operations.upload_dataset(s3, data, dicom_folder, "synth")
    summary = operations.ingest_summary(s3, data, "synth", keys, name_of(cloud))
    assert summary.processed == 42 and not summary.quarantined

    run = run_pipeline(cloud, "dicom-1", QUICK)
    assert run["status"] == "SUCCEEDED", run
    summary = json.loads(s3.get_object(Bucket=data, Key="manifests/dicom-1/summary.json")["Body"].read())
    assert sum(summary["patients"].values()) == 14 + 7 + 7  # split by the pseudonymous PatientID, none divided

    xray = min(dicom_folder.rglob("*.dcm"))
    inference = cloud.names.bucket(wiring.INFERENCE)
    [prediction] = operations.predict_files(s3, inference, [xray], name_of(cloud, wiring.INFERENCE)).values()
    assert prediction["status"] == "predicted", prediction
    report = s3.get_object(Bucket=cloud.names.bucket(wiring.INFERENCE), Key=prediction["dicom_sr"]["key"])
    sr = highdicom.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(io.BytesIO(report["Body"].read())))
    assert sr.StudyInstanceUID == dicom_corpus.STUDY_UID

    # the file names carry the fake PatientID and a name: only the local paths the user passed may be echoed
    text = everything_written(cloud) + capsys.readouterr().out
    for path in sorted((str(p) for p in dicom_folder.rglob("*.dcm")), key=len, reverse=True):
        text = text.replace(path, "<path given>")
    leaked = [identifier for identifier in dicom_corpus.IDENTIFIERS if identifier in text]
    assert not leaked, leaked
