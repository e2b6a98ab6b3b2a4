"""The review page in headless Chromium against the offline review server (moto's Cognito, the real handler).

A reviewer invited with a temporary password signs in, sets a new password and an authenticator (TOTP,
checked by moto), sees the referred X-ray, toggles the overlay, moves the window, gives a verdict with the
keyboard and sees the task leave the queue; the verdict, its view log and the training copy are checked in
moto. A screenshot is saved to ``.pytest_cache/review-screenshots/``.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import boto3
import pytest
import requests
from PIL import Image

import reviewing
from cxr.local.review_server import ReviewServer, Unauthorized, authorize, moto_key_set
from infra import wiring
from lambdas import review_queue
from lambdas.domain import review

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / ".pytest_cache" / "review-screenshots"
XRAY = ROOT / "samples/kermany-val16/PNEUMONIA/person1952_bacteria_4883.jpeg"
INCOMING, DATA, TABLE, DATASET, REGION = "cxr-inference", "cxr-data", "cxr-review-tasks", "kermany-demo", "us-east-1"
HASH = "ab12" * 16
EMAIL, TEMPORARY, PASSWORD = "reader@example.org", "Temporary-Pass-1", "Chosen-Pass-2026!"


def heat_map(size: tuple[int, int]) -> bytes:
    """A red blob with alpha, as the endpoint's overlay looks."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    w, h = size
    image.paste((255, 40, 0, 200), (w // 4, h // 3, w // 2, 2 * h // 3))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def served(aws, monkeypatch):
    monkeypatch.setenv("MOTO_COGNITO_IDP_USER_POOL_ENABLE_TOTP", "true")  # moto checks the TOTP codes
    s3 = boto3.client("s3")
    for bucket in (INCOMING, DATA):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    reviewing.create_review_table(TABLE)
    task = reviewing.referred_task(s3, INCOMING, TABLE, XRAY, HASH, {"normal": 0.35, "bacterial": 0.25, "viral": 0.40},
                                   key="incoming/2026/person1952_bacteria_4883.jpeg",
                                   overlay=heat_map(Image.open(XRAY).size))
    idp = boto3.client("cognito-idp", region_name=REGION)
    pool = idp.create_user_pool(PoolName="reviewers", MfaConfiguration="ON",
                                AdminCreateUserConfig={"AllowAdminCreateUserOnly": True})["UserPool"]["Id"]
    idp.set_user_pool_mfa_config(UserPoolId=pool, MfaConfiguration="ON",
                                 SoftwareTokenMfaConfiguration={"Enabled": True})
    client = idp.create_user_pool_client(UserPoolId=pool, ClientName="page", GenerateSecret=False,
                                         ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"])["UserPoolClient"]["ClientId"]
    idp.create_group(UserPoolId=pool, GroupName=review.REVIEWERS_GROUP)
    for user, group in ((EMAIL, review.REVIEWERS_GROUP), ("outsider@example.org", None)):
        idp.admin_create_user(UserPoolId=pool, Username=user, TemporaryPassword=TEMPORARY)
        if group:
            idp.admin_add_user_to_group(UserPoolId=pool, Username=user, GroupName=group)
    environment = {wiring.ENV_REVIEW_TASKS_TABLE: TABLE, wiring.ENV_INFERENCE_BUCKET: INCOMING,
                   wiring.ENV_DATA_BUCKET: DATA, wiring.ENV_REVIEW_DATASET: DATASET}
    with ReviewServer(environment, pool, client, REGION, io.StringIO()) as server:
        yield server, task, pool, client


def test_the_api_refuses_no_token_a_forged_one_and_other_groups(served):
    server, _, pool, client = served
    assert requests.get(f"{server.url}/tasks", timeout=10).status_code == 401
    forged = requests.get(f"{server.url}/tasks", headers={"Authorization": "Bearer e30.e30.x"}, timeout=10)
    assert forged.status_code == 401
    idp = boto3.client("cognito-idp", region_name=REGION)
    idp.admin_set_user_password(UserPoolId=pool, Username="outsider@example.org", Password=PASSWORD, Permanent=True)
    idp.admin_set_user_mfa_preference(UserPoolId=pool, Username="outsider@example.org",
                                      SoftwareTokenMfaSettings={"Enabled": False, "PreferredMfa": False})
    answer = idp.initiate_auth(AuthFlow="USER_PASSWORD_AUTH", ClientId=client,
                               AuthParameters={"USERNAME": "outsider@example.org", "PASSWORD": PASSWORD})
    token = answer["AuthenticationResult"]["AccessToken"]
    refused = requests.get(f"{server.url}/tasks", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert refused.status_code == 403 and "reviewers" in refused.json()["message"]
    issuer = f"https://cognito-idp.{REGION}.amazonaws.com/{pool}"
    for wrong in ({"issuer": issuer + "x"}, {"audience": "another-client"}, {"now": time.time() + 7200}):
        with pytest.raises(Unauthorized):
            authorize(f"Bearer {token}", wrong.get("issuer", issuer), wrong.get("audience", client), moto_key_set(),
                      now=wrong.get("now"))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs Debian's chromium)")
def test_a_reviewer_signs_in_reads_the_xray_and_gives_a_verdict_with_the_keyboard(served):
    from playwright.sync_api import expect, sync_playwright

    server, task, _, _ = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        reviewing.sign_in(page, server.url, EMAIL, TEMPORARY, PASSWORD)
        expect(page.locator("#queue li")).to_have_count(1)
        expect(page.locator("#details")).to_contain_text("Model: viral")
        expect(page.locator("#details")).to_contain_text("near threshold")
        redness = ("() => { const c = document.getElementById('image'); const d = c.getContext('2d')"
                   ".getImageData(0, 0, c.width, c.height).data; let r = 0, g = 0;"
                   " for (let i = 0; i < d.length; i += 4) { r += d[i]; g += d[i + 1]; } return [r, g]; }")
        page.wait_for_function(f"({redness})()[0] > 0")
        red, green = page.evaluate(redness)
        assert red == green  # a grey X-ray on the canvas
        page.locator("#viewer").click()  # focus off the form
        page.keyboard.press("o")
        expect(page.locator("#overlay")).to_be_checked()
        red_on, green_on = page.evaluate(redness)
        assert red_on > green_on * 1.02  # the heat map is drawn over it (a quarter of the width, a third of the height)
        page.locator("#level").fill("90")
        assert page.evaluate(redness)[1] > green_on  # a lower level brightens the image
        page.screenshot(path=str(SCREENSHOTS / "review-page.png"))
        assert "person1952" not in page.content()  # the key holds a patient id: never on the page
        page.keyboard.press("2")
        expect(page.locator('[data-verdict="bacterial"]')).to_have_attribute("aria-pressed", "true")
        page.keyboard.press("Enter")
        expect(page.locator("#queue li")).to_have_count(0)
        expect(page.locator("#status")).to_contain_text("saved: bacterial")
        page.screenshot(path=str(SCREENSHOTS / "review-page-done.png"))
        browser.close()
    assert errors == []
    items = [review_queue.decode(i) for i in boto3.client("dynamodb").scan(TableName=TABLE)["Items"]]
    (verdict,) = [i for i in items if i["sk"].startswith(review.VERDICT_PREFIX)]
    assert (verdict["pk"], verdict["verdict"], verdict["model_label"]) == (task, "bacterial", "viral")
    assert [i for i in items if i["sk"].startswith(review.VIEW_PREFIX)]
    (copy,) = boto3.client("s3").list_objects_v2(Bucket=DATA, Prefix="raw/")["Contents"]
    assert copy["Key"] == f"raw/{DATASET}/BACTERIAL/{HASH}.jpeg"
    head = boto3.client("s3").head_object(Bucket=DATA, Key=copy["Key"])
    assert head["Metadata"] == {"cxr-review-verdict": task, review.PATIENT_METADATA: "1952"}
    assert "person1952" not in json.dumps([i for i in items if i["sk"] != "task"])  # only the task keeps the key


def test_the_offline_pool_is_made_once_and_invites_the_reviewer(aws):
    from cxr.local.review_server import local_pool

    idp = boto3.client("cognito-idp", region_name=REGION)
    first = local_pool(idp, "local", EMAIL)
    assert local_pool(idp, "local", EMAIL) == first  # a second `cxr review serve` finds them
    pool, client = first
    assert idp.describe_user_pool(UserPoolId=pool)["UserPool"]["MfaConfiguration"] == "ON"
    assert [u["Username"] for u in idp.list_users_in_group(UserPoolId=pool, GroupName=review.REVIEWERS_GROUP)[
        "Users"]] == [EMAIL]
    assert idp.describe_user_pool_client(UserPoolId=pool, ClientId=client)["UserPoolClient"]["ExplicitAuthFlows"]
