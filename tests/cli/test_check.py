"""`cxr check` on the bundled X-rays and on a folder of broken files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import corpus
from cxr.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / corpus.SAMPLES


def run_json(capsys, *paths) -> tuple[int, list[dict]]:
    status = main(["check", "--json", *map(str, paths)])
    return status, json.loads(capsys.readouterr().out)


def test_bundled_samples_are_all_accepted_with_labels_and_patients(capsys):
    status, records = run_json(capsys, SAMPLES)
    assert status == 0 and len(records) == 16
    for record in records:
        name = Path(record["path"]).name
        assert record["status"] == "accepted" and record["reason"] is None
        if name.startswith("NORMAL2-IM-"):
            assert record["label"] == "normal" and record["patient_id"] == name.split("-")[2]
        else:
            assert record["label"] == "bacterial" and record["patient_id"] == name.split("_")[0][len("person"):]
        assert max(record["width"], record["height"]) == 256


def test_broken_files_are_each_rejected_with_their_reason(tmp_path, capsys):
    folder = tmp_path / "PNEUMONIA"
    folder.mkdir()
    expected = {}
    for name, (data, code) in corpus.broken_corpus().items():
        (folder / name).write_bytes(data)
        expected[name] = code
    (folder / "fine.jpg").write_bytes(corpus.png())  # a PNG with the wrong extension is fine
    status, records = run_json(capsys, tmp_path)
    assert status == 1
    verdicts = {Path(r["path"]).name: r for r in records}
    assert verdicts.pop("fine.jpg")["status"] == "accepted"
    for name, record in verdicts.items():
        assert record["status"] == "rejected" and record["code"] == expected[name], record
        assert record["reason"]


def test_table_output_and_summary(capsys, tmp_path):
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "NORMAL" / "x.png").write_bytes(b"")
    assert main(["check", str(SAMPLES / "NORMAL"), str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "9 files: 8 accepted (normal 8), 1 rejected" in out
    assert "empty: the file is empty" in out


def test_usage_errors_exit_2(tmp_path):
    script = [sys.executable, "-m", "cxr.cli"]
    missing = subprocess.run([*script, "check", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    assert subprocess.run([*script, "check"], capture_output=True).returncode == 2
    empty = subprocess.run([*script, "check", str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode == 2 and "no files found" in empty.stderr


def test_console_script_is_installed():
    cxr = Path(sys.executable).parent / "cxr"
    result = subprocess.run([str(cxr), "check", str(SAMPLES / "PNEUMONIA")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "8 files: 8 accepted (bacterial 8), 0 rejected" in result.stdout


@pytest.mark.parametrize("depth", ["file", "folder"])
def test_unlabelled_file_reports_reason(tmp_path, capsys, depth):
    path = tmp_path / "train"
    path.mkdir()
    (path / "x.png").write_bytes(corpus.png())
    status, [record] = run_json(capsys, path / "x.png" if depth == "file" else path)
    assert status == 1 and record["code"] == "unlabelled"
