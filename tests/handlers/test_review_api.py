"""The review API's handler against moto: who may call it, what a reviewer sees, and what a verdict writes.

The JWT authorizer (signature, issuer, audience, expiry) runs in API Gateway before the handler; the
handler's own checks (a signed-in subject, the ``reviewers`` group, expiry again) are tested here.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import numpy as np
import pytest
from PIL import Image

import dicom_corpus
import reviewing
from cxr.local import s3_events
from cxr.local.context import LambdaContext
from ingested import name_of
from lambdas import prepare_dataset, preprocess, review_api, review_queue
from lambdas.domain import review, source_state

ROOT = Path(__file__).resolve().parents[2]
XRAY = ROOT / "samples/kermany-val16/NORMAL/NORMAL2-IM-1436-0001.jpeg"
INCOMING, DATA, TABLE, DATASET = "cxr-inference", "cxr-data", "cxr-review-tasks", "ds"
REVIEW_COPIES = INCOMING  # under review/
HASH = "c0ffee" * 10 + "beef"
THREE = {"normal": 0.55, "bacterial": 0.15, "viral": 0.30}


@pytest.fixture
def loop(aws, state_table, monkeypatch):
    s3 = boto3.client("s3")
    for bucket in (INCOMING, DATA):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    reviewing.create_review_table(TABLE)
    for name, value in ((review_api.ENV_TABLE, TABLE), (review_api.ENV_REVIEW_BUCKET, REVIEW_COPIES),
                        (review_api.ENV_DATA_BUCKET, DATA), (review_api.ENV_DATASET, DATASET)):
        monkeypatch.setenv(name, value)
    review_api._presigner.cache_clear()
    return s3


def referred_task(s3, probabilities=THREE, overlay=True) -> str:
    return reviewing.referred_task(s3, INCOMING, TABLE, XRAY, HASH, probabilities, overlay=overlay)


def call(route: str, task: str | None = None, body: dict | None = None, sub: str | None = "r1",
         groups: object = "[reviewers]", expires: float | None = None, token_use: str = "access") -> tuple[int, dict]:
    claims = {} if sub is None else {"sub": sub, "cognito:groups": groups, "token_use": token_use,
                                     "exp": str(int(expires if expires is not None else time.time() + 3600))}
    event = {"routeKey": route, "pathParameters": {"id": task} if task else None,
             "requestContext": {"authorizer": {"jwt": {"claims": claims}}},
             "body": None if body is None else json.dumps(body), "isBase64Encoded": False}
    response = review_api.handler(event, LambdaContext(function_name="review-api"))
    assert response["headers"]["cache-control"] == "no-store"
    return response["statusCode"], json.loads(response["body"])


@pytest.mark.parametrize(("claims", "status"), [
    ({"sub": None}, 401),                                            # no token reached the handler
    ({"groups": "[radiographers]"}, 403),                            # signed in, wrong group
    ({"groups": "[]"}, 403),
    ({"expires": time.time() - 5}, 401),                             # expired
    ({"token_use": "id"}, 401),                                      # an ID token: the API takes access tokens
])
def test_only_signed_in_reviewers_with_a_live_token_get_in(loop, claims, status):
    assert call("GET /tasks", **claims)[0] == status


def test_groups_arrive_as_http_apis_string_or_as_a_list():
    assert review_api.groups({"cognito:groups": "[admins reviewers]"}) == {"admins", "reviewers"}
    assert review_api.groups({"cognito:groups": ["reviewers"]}) == {"reviewers"}
    assert review_api.groups({}) == set()


def test_a_view_gives_short_lived_urls_of_content_named_copies_and_is_logged(loop):
    task = referred_task(loop)
    status, listing = call("GET /tasks")
    assert status == 200 and [t["id"] for t in listing["tasks"]] == [task]
    assert "IM-1436" not in json.dumps(listing) and "ward" not in json.dumps(listing)
    status, seen = call("GET /tasks/{id}", task)
    assert status == 200 and seen["has_overlay"] and seen["referral_reasons"] == ["near_threshold"]
    for role, suffix in (("image_url", f"review/{HASH}.jpeg"), ("overlay_url", f"review/{HASH}.overlay.png")):
        url = urlsplit(seen[role])
        query = parse_qs(url.query)
        assert url.path.endswith("/" + suffix) and "IM-1436" not in seen[role] and "ward" not in seen[role]
        assert query["X-Amz-Expires"] == [str(review_api.PRESIGN_SECONDS)] and query["X-Amz-Algorithm"]
        assert query["response-cache-control"] == ["no-store"]
    copy = loop.head_object(Bucket=REVIEW_COPIES, Key=f"review/{HASH}.jpeg")
    assert copy["CacheControl"] == "no-store" and copy["ContentLength"] == XRAY.stat().st_size
    assert copy["Metadata"] == {}  # the original's metadata does not travel
    views = [i for i in loop_items() if i["sk"].startswith(review.VIEW_PREFIX)]
    assert [(v["pk"], v["reviewer"]) for v in views] == [(task, "r1")]
    assert call("GET /tasks/{id}", "nope")[0] == 404


def test_a_dicom_original_is_reviewed_as_a_rendered_png_that_names_no_one(loop, tmp_path):
    pixels = dicom_corpus.source_grey()
    original = tmp_path / "original.dcm"
    original.write_bytes(dicom_corpus.to_bytes(dicom_corpus.dataset(pixels)))
    key = f"incoming/ward/{dicom_corpus.FILE_NAME_IDENTIFIER}.dcm"
    task = reviewing.referred_task(loop, INCOMING, TABLE, original, HASH, THREE, key=key, overlay=False)
    status, seen = call("GET /tasks/{id}", task)
    assert status == 200 and urlsplit(seen["image_url"]).path.endswith(f"/review/{HASH}.png")
    assert dicom_corpus.FILE_NAME_IDENTIFIER not in seen["image_url"]
    copy = loop.get_object(Bucket=REVIEW_COPIES, Key=f"review/{HASH}.png")
    body = copy["Body"].read()
    assert body.startswith(b"\x89PNG") and copy["CacheControl"] == "no-store"  # what a browser shows, not the DICOM
    assert not [i for i in dicom_corpus.IDENTIFIERS if i.encode() in body]
    with Image.open(io.BytesIO(body)) as shown:
        assert shown.size == pixels.shape[::-1]
        assert np.abs(np.asarray(shown).astype(int) - pixels.astype(int)).max() <= 1


def loop_items() -> list[dict]:
    return [review_queue.decode(i) for i in boto3.client("dynamodb").scan(TableName=TABLE)["Items"]]


def test_a_verdict_is_immutable_idempotent_and_takes_the_task_out_of_the_queue(loop):
    task = referred_task(loop)
    status, first = call("POST /tasks/{id}/verdict", task, {"verdict": "viral", "comment": "patchy"})
    assert status == 201 and first["status"] == review.REVIEWED and first["training_copy"]
    assert call("POST /tasks/{id}/verdict", task, {"verdict": "viral", "comment": "patchy"})[0] == 200
    status, refused = call("POST /tasks/{id}/verdict", task, {"verdict": "normal"})
    assert status == 409 and "cannot be changed" in refused["message"]
    assert call("GET /tasks")[1]["tasks"] == []
    assert call("POST /tasks/{id}/verdict", task, {"verdict": "maybe"})[0] == 400
    (verdict,) = [i for i in loop_items() if i["sk"].startswith(review.VERDICT_PREFIX)]
    assert (verdict["reviewer"], verdict["verdict"], verdict["model_label"], verdict["agrees"]) == (
        "r1", "viral", "normal", False)
    # a second reviewer disagrees: adjudication, back in the queue for a third (not for these two)
    status, second = call("POST /tasks/{id}/verdict", task, {"verdict": "normal"}, sub="r2")
    assert second["status"] == review.ADJUDICATION
    assert call("GET /tasks", sub="r2")[1]["tasks"] == [] and call("GET /tasks", sub="r3")[1]["tasks"][0]["id"] == task


def test_a_withdrawn_task_takes_no_verdict(loop):
    task = referred_task(loop)
    assert review_queue.withdraw(TABLE, task)
    assert call("POST /tasks/{id}/verdict", task, {"verdict": "normal"})[0] == 409


def raw_keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=DATA, Prefix="raw/").get("Contents", []))


@pytest.mark.parametrize(("verdict", "probabilities", "folder"), [
    ("normal", THREE, "NORMAL"), ("bacterial", THREE, "BACTERIAL"), ("viral", THREE, "VIRAL"),
    ("pneumonia_unspecified", {"normal": 0.6, "pneumonia": 0.4}, "PNEUMONIA"),
    ("pneumonia_unspecified", THREE, None),  # would fold a three-class dataset into two
    ("not_assessable", THREE, None),
])
def test_the_verdict_maps_onto_the_datasets_folders(loop, verdict, probabilities, folder):
    task = referred_task(loop, probabilities)
    call("POST /tasks/{id}/verdict", task, {"verdict": verdict})
    assert raw_keys(loop) == ([f"raw/{DATASET}/{folder}/{HASH}.jpeg"] if folder else [])
    assert loop.list_object_versions(Bucket=INCOMING, Prefix="incoming/")["Versions"]  # copied, never moved


def test_ingest_trains_on_the_reviewed_label_with_the_patient_id_and_overrules_the_folder(loop):
    task = referred_task(loop)
    call("POST /tasks/{id}/verdict", task, {"verdict": "bacterial"})
    # the same pixels uploaded before under a folder that says otherwise
    folder_key = f"raw/{DATASET}/NORMAL/NORMAL2-IM-1436-0001.jpeg"
    loop.put_object(Bucket=DATA, Key=folder_key, Body=XRAY.read_bytes())
    records = [s3_events.record_for_object(loop, DATA, key) for key in raw_keys(loop)]
    preprocess.handler(s3_events.event(*records), LambdaContext(function_name="preprocess"))
    state = {r["source"]["name"]: r for r in preprocess.StateStore(
        review_api.os.environ["SOURCE_STATE_TABLE"]).records(source_state.dataset_partition(DATA, DATASET))}
    reviewed = state[name_of(f"raw/{DATASET}/BACTERIAL/{HASH}.jpeg", DATA)]
    assert reviewed["outcome"] == source_state.PROCESSED
    assert (reviewed["image"]["label"], reviewed["image"]["patient_id"]) == ("bacterial", "1436")
    folder = state[name_of(folder_key, DATA)]
    assert (folder["outcome"], folder["reason"]) == (source_state.QUARANTINED, source_state.OVERRULED)
    items = prepare_dataset.load_items(review_api.os.environ["SOURCE_STATE_TABLE"], DATA, DATASET)
    assert [(i.label, i.patient_id) for i in items] == [("bacterial", "1436")]


def test_a_new_verdict_is_one_metric_of_agreement_per_class(loop, capsys):
    task = referred_task(loop)
    capsys.readouterr()
    call("POST /tasks/{id}/verdict", task, {"verdict": "normal"})
    call("POST /tasks/{id}/verdict", task, {"verdict": "normal"})  # a retry: nothing new to count
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    (emf,) = documents
    assert (emf["verdict"], emf["service"]) == ("normal", "cxr-review-api")
    assert (emf["ReviewVerdicts"], emf["ReviewComparable"], emf["ReviewAgreements"]) == ([1.0], [1.0], [1.0])
