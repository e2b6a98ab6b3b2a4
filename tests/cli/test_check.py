"""`cxr check` on the bundled X-rays and on a folder of broken files."""

import json
import os
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


def sample(name: str = "NORMAL2-IM-1427-0001.jpeg") -> Path:
    return SAMPLES / "NORMAL" / name


def test_a_linked_file_is_labelled_by_the_folder_it_sits_in(tmp_path, capsys):
    """Ingest labels the key it is uploaded under, which is the link's path, not its target's."""
    (tmp_path / "PNEUMONIA").mkdir()
    (tmp_path / "PNEUMONIA" / "person7_virus_1.jpeg").symlink_to(sample())
    status, [record] = run_json(capsys, tmp_path)
    assert status == 0 and record["label"] == "viral" and record["patient_id"] == "7"
    assert record["path"] == str(tmp_path / "PNEUMONIA" / "person7_virus_1.jpeg")


def test_linked_folders_are_followed_and_labelled_by_the_link(tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    (store / "IM-0001-0001.jpeg").write_bytes(sample().read_bytes())
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "NORMAL").symlink_to(store, target_is_directory=True)
    status, [record] = run_json(capsys, dataset)
    assert status == 0 and record["label"] == "normal" and record["path"].endswith("dataset/NORMAL/IM-0001-0001.jpeg")


def test_link_loops_and_dangling_links_get_verdicts_and_the_rest_is_still_checked(tmp_path, capsys):
    normal = tmp_path / "NORMAL"
    normal.mkdir()
    (normal / "IM-0001-0001.jpeg").symlink_to(sample())
    (normal / "up").symlink_to(tmp_path, target_is_directory=True)  # a folder loop: NORMAL/up/NORMAL/up/...
    (normal / "self.jpeg").symlink_to(normal / "self.jpeg")  # a link to itself: ELOOP
    (normal / "gone.jpeg").symlink_to(tmp_path / "deleted.jpeg")
    status, records = run_json(capsys, tmp_path)
    verdicts = {Path(r["path"]).name: (r["status"], r["code"]) for r in records}
    assert status == 1 and verdicts == {
        "IM-0001-0001.jpeg": ("accepted", None),
        "up": ("rejected", "symlink_loop"),
        "self.jpeg": ("rejected", "symlink_loop"),
        "gone.jpeg": ("rejected", "broken_symlink"),
    }
    assert all(r["reason"] for r in records if r["status"] == "rejected")
    status, [record] = run_json(capsys, normal / "self.jpeg")  # named as an argument: a verdict, not "no such file"
    assert status == 1 and record["code"] == "symlink_loop"


def test_unreadable_folders_and_files_get_verdicts(tmp_path, capsys, monkeypatch):
    """chmod 000 stops a normal user; root reads through it, so as root the listing is refused by hand."""
    for label in ("NORMAL", "PNEUMONIA", "BACTERIAL"):
        (tmp_path / label).mkdir()
    (tmp_path / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(sample().read_bytes())
    (tmp_path / "PNEUMONIA" / "person1_virus_1.jpeg").write_bytes(sample().read_bytes())
    locked_file = tmp_path / "BACTERIAL" / "person2_bacteria_2.jpeg"
    locked_file.write_bytes(sample().read_bytes())
    locked = tmp_path / "PNEUMONIA"
    locked.chmod(0)
    locked_file.chmod(0)
    try:
        if os.geteuid() == 0:  # root: permission bits do not apply
            scandir, read_bytes = os.scandir, Path.read_bytes

            def refusing_scandir(path):
                if Path(path) == locked:
                    raise PermissionError(13, "Permission denied", str(path))
                return scandir(path)

            def refusing_read_bytes(self):
                if self == locked_file:
                    raise PermissionError(13, "Permission denied", str(self))
                return read_bytes(self)

            monkeypatch.setattr(os, "scandir", refusing_scandir)
            monkeypatch.setattr(Path, "read_bytes", refusing_read_bytes)
        status, records = run_json(capsys, tmp_path)
    finally:
        locked.chmod(0o755)
        locked_file.chmod(0o644)
    verdicts = {Path(r["path"]).name: r for r in records}
    assert status == 1 and set(verdicts) == {"IM-0001-0001.jpeg", "PNEUMONIA", "person2_bacteria_2.jpeg"}
    assert verdicts["IM-0001-0001.jpeg"]["status"] == "accepted"
    for name in ("PNEUMONIA", "person2_bacteria_2.jpeg"):
        assert verdicts[name]["code"] == "unreadable" and "Permission denied" in verdicts[name]["reason"]
