"""The HTML evaluation report, from training and from `cxr evaluate --report`, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr import cli, jobcode

pytestmark = pytest.mark.slow

SECTIONS = ("summary", "per-class", "confusion", "curves", "reliability", "cases")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""Debian's package (``make setup`` installs it): Playwright cannot download its own browsers offline."""
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".pytest_cache" / "report-screenshots"


def file_names(folder: Path) -> set[str]:
    """The names a report must never show: Kermany-style names hold patient ids (person1000_bacteria_0)."""
    return {p.stem for p in folder.rglob("*") if p.is_file()} | {p.name for p in folder.rglob("*") if p.is_file()}


def test_training_writes_the_report_beside_the_metrics(trained):
    page = (trained / "model" / "report" / "report.html").read_text()
    assert (trained / "output" / "data" / "report" / "report.html").read_text() == page
    config = json.loads((trained / "model" / "model.json").read_text())
    assert config["model_id"] in page and "test split" in page
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing fetched: every image is inline


def test_evaluate_report_shows_the_errors_by_content_hash_never_by_name(trained, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli.main(["evaluate", "--model", str(trained / "model"), "--data", str(tiny_dataset), "--report",
                     str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    page = out.read_text()
    names = file_names(tiny_dataset)
    assert names and not [n for n in names if n in page]
    shown = len(re.findall(r"<figure", page))
    wrong = result["n"] - sum(result["confusion_matrix"][i][i] for i in range(len(result["classes"])))
    assert 0 < wrong <= 50  # the tiny model errs, and its errors fit the page's cap: each one has a thumbnail
    assert page.count('<span class="tag wrong">') == wrong
    hashes = re.findall(r"<figcaption><code>([0-9a-f]{16})</code>", page)
    assert len(hashes) == shown


def test_referral_band_follows_the_threshold_and_refers_a_label_that_disagrees():
    report = jobcode.load("report")
    classes = ["bacterial", "normal", "viral"]
    probs = np.array([[0.05, 0.90, 0.05], [0.30, 0.45, 0.25], [0.02, 0.97, 0.01]])
    referred, band = report.referrals(probs, classes, {"classes": classes, "threshold": 0.55})
    assert band[0] < 0.55 < band[1] and band[0] > 0.1 and band[1] < 0.97
    # p(pneumonia) 0.10 is outside; 0.55 is at the threshold, labelled bacterial while normal is most probable
    assert referred.tolist() == [False, True, False]
    # a high threshold keeps a band short of 1: a confident pneumonia is not referred
    _, high = report.referrals(probs, classes, {"classes": classes, "threshold": 0.834})
    assert 0.5 < high[0] < 0.834 < high[1] < 0.97
    _, default = report.referrals(probs, classes, {"classes": classes, "threshold": None})
    assert default == pytest.approx((0.2, 0.8))


def test_a_class_without_images_shows_no_recall_rather_than_zero():
    report = jobcode.load("report")
    per_class = {"normal": {"precision": 1.0, "recall": 0.9, "f1": 0.947, "support": 10},
                 "viral": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}}
    rows = re.findall(r"<tr><th>(\w+)</th>(<td>.*?)</tr>", report._per_class({"per_class": per_class}))
    assert [name for name, _ in rows] == ["normal", "viral"]
    assert "0.900" in rows[0][1] and "0.000</td><td><span" in rows[1][1]  # precision kept, recall and F1 "-"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs Debian's chromium)")
def test_report_renders_in_headless_chromium(trained, tiny_dataset, tmp_path):
    out = tmp_path / "report.html"
    assert cli.main(["evaluate", "--model", str(trained / "model"), "--data", str(tiny_dataset),
                     "--report", str(out)]) == 0
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for page, screenshot in ((out, "tiny-model-evaluate.png"),
                             (trained / "model" / "report" / "report.html", "tiny-model-training.png")):
        checked = check_in_browser(page, SCREENSHOTS / screenshot)
        assert checked["images"] >= 1 and checked["broken"] == [], page
        assert checked["console_errors"] == [] and checked["failed_requests"] == [] and checked["requests"] == []
        assert checked["missing_sections"] == [] and checked["charts"] >= 4


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs Debian's chromium)")
def test_the_browser_check_sees_broken_images_requests_and_console_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><section id="summary"></section>'
                    '<img alt="bad" src="data:image/png;base64,AAAA"><img alt="remote" src="http://127.0.0.1:9/x.png">'
                    "<script>console.error('boom')</script></body></html>")
    checked = check_in_browser(page, tmp_path / "broken.png")
    assert checked["broken"] == ["bad", "remote"] and checked["requests"] == ["http://127.0.0.1:9/x.png"]
    assert checked["failed_requests"] == ["http://127.0.0.1:9/x.png"] and "boom" in checked["console_errors"]
    assert "summary" not in checked["missing_sections"] and "cases" in checked["missing_sections"]


def check_in_browser(page_path: Path, screenshot: Path) -> dict:
    """Open the page in headless Chromium: what loaded, what failed, what the console said; a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        console, failed, requests = [], [], []
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        broken = page.eval_on_selector_all("img", "els => els.filter(e => !e.complete || e.naturalWidth === 0)"
                                                  ".map(e => e.alt)")
        found = {
            "images": page.eval_on_selector_all("img", "els => els.length"),
            "broken": broken,
            "charts": page.eval_on_selector_all("svg", "els => els.filter(e => e.getBBox().width > 0).length"),
            "missing_sections": [s for s in SECTIONS if page.query_selector(f"section#{s}") is None],
            "console_errors": console, "failed_requests": failed, "requests": requests,
        }
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return found
