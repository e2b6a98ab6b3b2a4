"""The preprocess Lambda on moto S3 and DynamoDB with real S3 event JSON: one current outcome per key."""

import io
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corpus
from cxr.local import s3_events
from ingested import name_of, quarantine_key
from lambdas import aws, preprocess, s3io
from lambdas.domain import imaging, source_state
from lambdas.state_store import StateStore

BUCKET = "cxr-data"


@pytest.fixture(autouse=True)
def _state(state_table):
    """Every test here runs with the source-state table."""


def upload(key: str, body: bytes, **extra) -> dict:
    """Put an object and return the S3 notification record for it (sequencers increase with each call)."""
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key=key, Body=body, **extra)
    return s3_events.record_for_object(s3, BUCKET, key)


def delete(key: str) -> dict:
    """Delete without a version id (a delete marker) and return S3's notification for it."""
    marker = boto3.client("s3").delete_object(Bucket=BUCKET, Key=key)["VersionId"]
    return s3_events.object_created_record(BUCKET, key, 0, version_id=marker,
                                           event_name="ObjectRemoved:DeleteMarkerCreated")


def invoke(lambda_context, *records):
    return preprocess.handler(s3_events.event(*records), lambda_context)


def keys(prefix: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def read_text(key: str) -> str:
    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def read_json(key: str) -> dict:
    return json.loads(read_text(key))


def sidecars() -> list[dict]:
    """The current processed sidecars (tombstoned ones are hidden by their delete markers)."""
    return [read_json(k) for k in keys("processed/") if k.endswith(".json")]


def records(dataset: str = "ds") -> dict[str, dict]:
    partition = source_state.dataset_partition(BUCKET, dataset)
    return {r["source"]["name"]: r for r in StateStore("cxr-source-state").records(partition)}


def counts(**nonzero) -> dict:
    return {"accepted": 0, "rejected": 0, "removed": 0, "duplicate": 0, "superseded": 0, "deferred": 0,
            "skipped": 0, "transient": 0, **nonzero}


def test_happy_path_writes_png_and_metadata(data_bucket, lambda_context):
    key = "raw/kermany/train/PNEUMONIA/person1946_bacteria_4874.jpeg"
    body = corpus.jpeg(600, 480)
    result = invoke(lambda_context, upload(key, body))
    assert result == counts(accepted=1)
    expected = imaging.normalise(body)
    png_key = f"processed/kermany/bacterial/{source_state.output_id(name_of(key), expected.content_hash)}.png"
    assert keys("processed/") == [png_key.replace(".png", ".json"), png_key]
    stored = boto3.client("s3").get_object(Bucket=BUCKET, Key=png_key)
    assert stored["ContentType"] == "image/png" and stored["Body"].read() == expected.png
    record = read_json(png_key.replace(".png", ".json"))
    assert record["source"]["name"] == name_of(key) and record["source"]["version_id"]
    assert (record["label"], record["patient_id"], record["split"]) == ("bacterial", "1946", "train")
    assert record["original"] == {"width": 600, "height": 480, "format": "JPEG", "mode": "L"}
    assert record["content_hash"] == expected.content_hash
    assert keys("quarantine/") == []
    # beside the upload, the one place that maps its name back to it
    assert keys("raw/") == [f"raw/.names/{name_of(key)}", key] and read_text(f"raw/.names/{name_of(key)}") == key
    [state] = records("kermany").values()
    assert state["outcome"] == "processed" and not state["pending"]
    assert state["source"]["version_id"] == record["source"]["version_id"]


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
    assert read_json(metadata_key)["source"]["name"] == name_of(key)


def test_duplicate_delivery_is_counted_as_duplicate_and_writes_nothing(data_bucket, lambda_context, capsys):
    record = upload("raw/ds/NORMAL/a.png", corpus.png())
    assert invoke(lambda_context, record) == counts(accepted=1)
    capsys.readouterr()
    assert invoke(lambda_context, record, record) == counts(duplicate=2)
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert metrics[-1]["DuplicateEvents"] == [2.0] and metrics[-1]["ImagesAccepted"] == [0.0]
    versions = boto3.client("s3").list_object_versions(Bucket=BUCKET, Prefix="processed/")["Versions"]
    assert len(versions) == 2  # the duplicates wrote nothing


@pytest.mark.parametrize("order", ["in order", "newest first"])
def test_reupload_with_other_content_keeps_only_the_newest_image(data_bucket, lambda_context, order):
    key = "raw/ds/NORMAL/scan.png"
    older, newer = upload(key, corpus.png(seed=1)), upload(key, corpus.png(seed=2))
    invoke(lambda_context, *((older, newer) if order == "in order" else (newer, older)))
    [sidecar] = sidecars()
    assert sidecar["source"]["version_id"] == newer["s3"]["object"]["versionId"]
    assert sidecar["content_hash"] == imaging.normalise(corpus.png(seed=2)).content_hash
    assert len(keys("processed/")) == 2 and keys("quarantine/") == []
    assert records()[name_of(key)]["source"]["version_id"] == newer["s3"]["object"]["versionId"]


@pytest.mark.parametrize("order", ["in order", "newest first"])
def test_valid_then_pdf_retires_the_image(data_bucket, lambda_context, order):
    key = "raw/ds/NORMAL/scan.png"
    valid, pdf = upload(key, corpus.png()), upload(key, corpus.minimal_pdf())
    invoke(lambda_context, *((valid, pdf) if order == "in order" else (pdf, valid)))
    assert keys("processed/") == []
    assert read_json(quarantine_key(key))["reason"] == "unsupported_format"
    assert records()[name_of(key)]["outcome"] == "quarantined"
    assert len(boto3.client("s3").list_object_versions(Bucket=BUCKET, Prefix="raw/")["Versions"]) == 2


@pytest.mark.parametrize("order", ["in order", "newest first"])
def test_empty_then_valid_retires_the_quarantine_record(data_bucket, lambda_context, order):
    key = "raw/ds/NORMAL/scan.png"
    empty, valid = upload(key, b""), upload(key, corpus.png())
    invoke(lambda_context, *((empty, valid) if order == "in order" else (valid, empty)))
    assert keys("quarantine/") == []
    [sidecar] = sidecars()
    assert sidecar["source"]["version_id"] == valid["s3"]["object"]["versionId"]


def test_a_delete_retires_the_processed_image_and_keeps_every_version(data_bucket, lambda_context):
    key = "raw/ds/NORMAL/scan.png"
    invoke(lambda_context, upload(key, corpus.png()))
    assert invoke(lambda_context, delete(key)) == counts(removed=1)
    assert keys("processed/") == [] and keys("quarantine/") == []
    assert records()[name_of(key)]["outcome"] == "deleted"
    listing = boto3.client("s3").list_object_versions(Bucket=BUCKET)
    assert len([v for v in listing["Versions"] if v["Key"] == key]) == 1  # the original is still there
    assert len([v for v in listing["Versions"] if v["Key"].startswith("processed/")]) == 2  # tombstoned, not erased


def test_identical_pixels_under_normal_and_pneumonia_train_neither(data_bucket, lambda_context):
    body = corpus.png(seed=7)
    normal, pneumonia = "raw/ds/NORMAL/a.png", "raw/ds/PNEUMONIA/b.png"
    invoke(lambda_context, upload(normal, body))
    invoke(lambda_context, upload(pneumonia, body))
    assert keys("processed/") == []
    for key, other, label in ((normal, pneumonia, "pneumonia"), (pneumonia, normal, "normal")):
        error = read_json(quarantine_key(key))
        assert error["reason"] == "conflicting_labels" and name_of(other) in error["message"]
        assert error["conflicts_with"] == [{"name": name_of(other), "label": label}]
    assert source_state.training_view(records().values()) == []
    invoke(lambda_context, delete(pneumonia))  # the user removes the wrong upload: the other one trains
    assert [s["source"]["name"] for s in sidecars()] == [name_of(normal)] and keys("quarantine/") == []


def test_identical_pixels_with_one_label_train_once(data_bucket, lambda_context):
    body = corpus.png(seed=7)
    invoke(lambda_context, upload("raw/ds/NORMAL/b.png", body), upload("raw/ds/NORMAL/a.png", body))
    names = sorted(map(name_of, ["raw/ds/NORMAL/a.png", "raw/ds/NORMAL/b.png"]))
    assert sorted(s["source"]["name"] for s in sidecars()) == names
    [item] = source_state.training_view(records().values())
    assert item.source_name == names[0]


def test_a_reviewed_verdict_overrules_the_folder_label(data_bucket, lambda_context):
    body = corpus.png(seed=7)
    invoke(lambda_context, upload("raw/ds/NORMAL/a.png", body))
    invoke(lambda_context, upload("raw/ds/PNEUMONIA/verdict.png", body,
                                  Metadata={source_state.REVIEW_METADATA: "reviewer-1"}))
    assert [s["source"]["name"] for s in sidecars()] == [name_of("raw/ds/PNEUMONIA/verdict.png")]
    assert read_json(quarantine_key("raw/ds/NORMAL/a.png"))["reason"] == "overruled_by_review"


def test_an_older_event_handled_concurrently_cannot_write_last(data_bucket, lambda_context, monkeypatch):
    """While the older event decodes its version, a PDF replaces it and that event is handled in full."""
    key = "raw/ds/NORMAL/scan.png"
    older = upload(key, corpus.png(seed=1))
    real_normalise, interleaved = imaging.normalise, []

    def normalise_while_replaced(data):
        if not interleaved:
            interleaved.append("replacing")
            interleaved[0] = invoke(lambda_context, upload(key, corpus.minimal_pdf()))
        return real_normalise(data)

    monkeypatch.setattr(imaging, "normalise", normalise_while_replaced)
    invoke(lambda_context, older)
    assert keys("processed/") == [] and read_json(quarantine_key(key))["reason"] == "unsupported_format"
    assert interleaved == [counts(deferred=1)]  # the newer event found the key held and left it to the holder
    assert not records()[name_of(key)]["pending"]


def test_batch_mixing_good_and_bad_objects(data_bucket, lambda_context):
    broken = corpus.broken_corpus()
    records_ = [upload("raw/ds/NORMAL/good.jpeg", corpus.jpeg())]
    records_ += [upload(f"raw/ds/PNEUMONIA/{name}", data) for name, (data, _) in broken.items() if data]
    records_.append(upload("raw/ds/loose.png", corpus.png()))  # no label folder
    result = invoke(lambda_context, *records_)
    assert result["accepted"] == 1 and result["rejected"] == len(records_) - 1
    for name, (data, code) in broken.items():
        if data:
            assert read_json(quarantine_key(f"raw/ds/PNEUMONIA/{name}"))["reason"] == code
    error = read_json(quarantine_key("raw/ds/loose.png"))
    assert error["reason"] == "unlabelled" and "label folder" in error["message"]
    originals = [k for k in keys("raw/") if not k.startswith("raw/.names/")]
    assert len(originals) == len(records_)  # every original untouched


def test_an_event_for_a_key_that_is_gone_records_it_as_deleted(data_bucket, lambda_context):
    record = s3_events.object_created_record(BUCKET, "raw/ds/NORMAL/gone.png", 1234, version_id="v-missing")
    assert invoke(lambda_context, record) == counts(removed=1)
    assert keys("quarantine/") == [] and records()[name_of("raw/ds/NORMAL/gone.png")]["outcome"] == "deleted"


def test_size_cap_is_checked_before_the_body_is_read(data_bucket, lambda_context, monkeypatch):
    record = upload("raw/ds/NORMAL/huge.png", corpus.png())
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setattr(s3io.CurrentObject, "read", lambda self: pytest.fail("read an oversized object"))
    assert invoke(lambda_context, record)["rejected"] == 1
    assert read_json(quarantine_key("raw/ds/NORMAL/huge.png"))["reason"] == "too_large"


def test_throttling_raises_so_lambda_retries(data_bucket, lambda_context, monkeypatch):
    good = upload("raw/ds/NORMAL/good.png", corpus.png(seed=3))
    throttled = upload("raw/ds/NORMAL/throttled.png", corpus.png(seed=4))
    real_current = s3io.current_object

    def flaky(bucket, key):
        if key.endswith("throttled.png"):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Reduce your request rate"}}, "GetObject")
        return real_current(bucket, key)

    monkeypatch.setattr(preprocess.s3io, "current_object", flaky)
    with pytest.raises(aws.TransientError):
        invoke(lambda_context, good, throttled)
    assert len(keys("processed/")) == 2 and keys("quarantine/") == []  # good one done, nothing quarantined
    monkeypatch.setattr(preprocess.s3io, "current_object", real_current)
    # Lambda's retry: the finished record is a duplicate, the failed one is still to do
    assert invoke(lambda_context, good, throttled) == counts(accepted=1, duplicate=1)
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
    assert {entry["outcome"] for entry in logs} == {"processed", "quarantined"}
    # the keyed name, never an unkeyed hash of the key (a guessable MRN in a name could be confirmed by hashing)
    assert {entry["source"] for entry in logs} == {name_of(key), name_of("raw/ds/NORMAL/person4243_x.txt")}
    text = json.dumps(lines)
    assert "person4242" not in text and "person4243" not in text and "4242" not in text


def test_other_events_and_folder_markers_are_skipped(data_bucket, lambda_context):
    restored = s3_events.object_created_record(BUCKET, "raw/ds/NORMAL/x.png", 10, event_name="ObjectRestore:Completed")
    marker = s3_events.object_created_record(BUCKET, "raw/ds/NORMAL/", 0)
    assert invoke(lambda_context, restored, marker) == counts(skipped=2)
    assert keys("quarantine/") == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=2048))
def test_random_bytes_never_crash_the_handler(data_bucket, lambda_context, data):
    result = invoke(lambda_context, upload("raw/fuzz/NORMAL/blob.jpeg", data))
    assert result["accepted"] + result["rejected"] == 1
