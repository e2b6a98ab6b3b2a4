"""The preprocess Lambda on moto S3 with real S3 event JSON."""

import io
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corpus
from cxr.local import s3_events
from lambdas import aws, preprocess
from lambdas.domain import imaging, layout

BUCKET = "cxr-data"


def upload(key: str, body: bytes) -> dict:
    """Put an object and return the S3 notification record for it."""
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return s3_events.record_for_object(s3, BUCKET, key)


def invoke(lambda_context, *records):
    return preprocess.handler(s3_events.event(*records), lambda_context)


def keys(prefix: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def read_json(key: str) -> dict:
    return json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_happy_path_writes_png_and_metadata(data_bucket, lambda_context):
    key = "raw/kermany/train/PNEUMONIA/person1946_bacteria_4874.jpeg"
    body = corpus.jpeg(600, 480)
    result = invoke(lambda_context, upload(key, body))
    assert result == {"accepted": 1, "rejected": 0, "skipped": 0, "transient": 0}
    expected = imaging.normalise(body)
    png_key = f"processed/kermany/bacterial/{expected.image_id}.png"
    assert keys("processed/") == [png_key.replace(".png", ".json"), png_key]
    stored = boto3.client("s3").get_object(Bucket=BUCKET, Key=png_key)
    assert stored["ContentType"] == "image/png" and stored["Body"].read() == expected.png
    record = read_json(png_key.replace(".png", ".json"))
    assert record["source"]["key"] == key and record["source"]["version_id"]
    assert (record["label"], record["patient_id"], record["split"]) == ("bacterial", "1946", "train")
    assert record["original"] == {"width": 600, "height": 480, "format": "JPEG", "mode": "L"}
    assert record["content_hash"] == expected.content_hash
    assert keys("raw/") == [key] and keys("quarantine/") == []


@pytest.mark.parametrize(
    "key",
    [
        "raw/my dataset/NORMAL/scan 01.png",
        "raw/ds/NORMAL/a+b=c&d.png",
        "raw/ds/PNEUMONIA/patiënt_röntgen_virus_ü.png",
        "raw/ds/NORMAL/IM-0001-0001 (copy).png",
    ],
)
def test_form_encoded_keys_are_decoded_once(data_bucket, lambda_context, key):
    record = upload(key, corpus.png())
    assert "%" in record["s3"]["object"]["key"] or "+" in record["s3"]["object"]["key"]
    assert invoke(lambda_context, record)["accepted"] == 1
    [metadata_key] = [k for k in keys("processed/") if k.endswith(".json")]
    assert read_json(metadata_key)["source"]["key"] == key


def test_duplicate_delivery_leaves_the_same_state(data_bucket, lambda_context):
    record = upload("raw/ds/NORMAL/a.png", corpus.png())
    invoke(lambda_context, record)
    before = {k: boto3.client("s3").get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys("processed/")}
    invoke(lambda_context, record, record)
    after = {k: boto3.client("s3").get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys("processed/")}
    assert before == after
    versions = boto3.client("s3").list_object_versions(Bucket=BUCKET, Prefix="processed/")["Versions"]
    assert len(versions) == 2  # the duplicate wrote nothing


def test_identical_pixels_under_two_keys_converge_in_any_order(data_bucket, lambda_context):
    body = corpus.png(seed=7)
    first, second = upload("raw/ds/NORMAL/b.png", body), upload("raw/ds/NORMAL/a.png", body)
    invoke(lambda_context, first, second)
    [metadata_key] = [k for k in keys("processed/") if k.endswith(".json")]
    assert read_json(metadata_key)["source"]["key"] == "raw/ds/NORMAL/a.png"
    invoke(lambda_context, second, first)
    assert read_json(metadata_key)["source"]["key"] == "raw/ds/NORMAL/a.png"


def test_reordered_versions_keep_the_newest_rejection(data_bucket, lambda_context):
    key = "raw/ds/NORMAL/scan.png"
    older = upload(key, b"")  # empty
    newer = upload(key, corpus.minimal_pdf())
    invoke(lambda_context, newer)
    invoke(lambda_context, older)  # arrives late
    assert read_json(layout.quarantine_key(key))["reason"] == "unsupported_format"
    versions = boto3.client("s3").list_object_versions(Bucket=BUCKET, Prefix="raw/")["Versions"]
    assert len(versions) == 2  # both originals kept


def test_batch_mixing_good_and_bad_objects(data_bucket, lambda_context):
    broken = corpus.broken_corpus()
    records = [upload("raw/ds/NORMAL/good.jpeg", corpus.jpeg())]
    records += [upload(f"raw/ds/PNEUMONIA/{name}", data) for name, (data, _) in broken.items() if data]
    records.append(upload("raw/ds/loose.png", corpus.png()))  # no label folder
    result = invoke(lambda_context, *records)
    assert result["accepted"] == 1 and result["rejected"] == len(records) - 1
    for name, (data, code) in broken.items():
        if data:
            assert read_json(f"quarantine/raw/ds/PNEUMONIA/{name}.error.json")["reason"] == code
    error = read_json("quarantine/raw/ds/loose.png.error.json")
    assert error["reason"] == "unlabelled" and "label folder" in error["message"]
    assert len(keys("raw/")) == len(records)  # every original untouched


def test_missing_object_is_recorded_not_raised(data_bucket, lambda_context):
    record = s3_events.object_created_record(BUCKET, "raw/ds/NORMAL/gone.png", 1234, version_id="v-missing")
    assert invoke(lambda_context, record)["rejected"] == 1
    assert read_json("quarantine/raw/ds/NORMAL/gone.png.error.json")["reason"] == "source_missing"


def test_size_cap_is_checked_from_the_event_before_download(data_bucket, lambda_context, monkeypatch):
    record = upload("raw/ds/NORMAL/huge.png", corpus.png())
    record["s3"]["object"]["size"] = imaging.MAX_UPLOAD_BYTES + 1
    monkeypatch.setattr(preprocess.s3io, "download", lambda *a: pytest.fail("downloaded an oversized object"))
    assert invoke(lambda_context, record)["rejected"] == 1
    assert read_json("quarantine/raw/ds/NORMAL/huge.png.error.json")["reason"] == "too_large"


def test_throttling_raises_so_lambda_retries(data_bucket, lambda_context, monkeypatch):
    good = upload("raw/ds/NORMAL/good.png", corpus.png(seed=3))
    throttled = upload("raw/ds/NORMAL/throttled.png", corpus.png(seed=4))
    real_download = preprocess.s3io.download

    def flaky(bucket, key, version_id):
        if key.endswith("throttled.png"):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Reduce your request rate"}}, "GetObject")
        return real_download(bucket, key, version_id)

    monkeypatch.setattr(preprocess.s3io, "download", flaky)
    with pytest.raises(aws.TransientError):
        invoke(lambda_context, good, throttled)
    assert len(keys("processed/")) == 2 and keys("quarantine/") == []  # good one done, nothing quarantined
    monkeypatch.setattr(preprocess.s3io, "download", real_download)
    assert invoke(lambda_context, good, throttled)["accepted"] == 2  # the retry completes the batch
    assert len(keys("processed/")) == 4


def test_logs_are_json_and_carry_no_key(data_bucket, lambda_context):
    key = "raw/ds/PNEUMONIA/person4242_virus_99.jpeg"
    buffer, handler = io.StringIO(), preprocess.logger.registered_handler
    previous = handler.setStream(buffer)
    try:
        invoke(lambda_context, upload(key, corpus.jpeg()), upload("raw/ds/NORMAL/person4243_x.txt", b"hello"))
    finally:
        handler.setStream(previous)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    logs = [entry for entry in lines if "outcome" in entry]
    assert {entry["outcome"] for entry in logs} == {"accepted", "rejected"}
    assert all(len(entry["key_ref"]) == 16 for entry in logs)
    text = json.dumps(lines)
    assert "person4242" not in text and "person4243" not in text and "4242" not in text


def test_non_creation_events_and_folder_markers_are_skipped(data_bucket, lambda_context):
    removed = s3_events.object_created_record(BUCKET, "raw/ds/NORMAL/x.png", 10, event_name="ObjectRemoved:Delete")
    marker = s3_events.object_created_record(BUCKET, "raw/ds/NORMAL/", 0)
    assert invoke(lambda_context, removed, marker)["skipped"] == 2
    assert keys("quarantine/") == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=2048))
def test_random_bytes_never_crash_the_handler(data_bucket, lambda_context, data):
    result = invoke(lambda_context, upload("raw/fuzz/NORMAL/blob.jpeg", data))
    assert result["accepted"] + result["rejected"] == 1
