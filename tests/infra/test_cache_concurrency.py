"""`make test` runs test files in parallel processes, and two syntheses can share one checkout: the
build caches under ``.cache/`` must survive two builders of the same thing at once."""

from __future__ import annotations

import tarfile
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infra import packaging


def test_two_concurrent_sourcedir_builds_into_one_folder_both_give_the_same_whole_archive(monkeypatch, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "tiny-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    monkeypatch.setattr(packaging, "download_wheels", lambda *a, **k: wheels)
    both_staged = threading.Barrier(2, timeout=30)
    real_stage = packaging.stage_sources

    def stage_then_wait(folder: Path) -> None:  # both builders hold a staged folder before either goes on
        real_stage(folder)
        both_staged.wait()

    monkeypatch.setattr(packaging, "stage_sources", stage_then_wait)
    out = tmp_path / "out"
    with ThreadPoolExecutor(2) as pool:
        archives = list(pool.map(lambda _: packaging.build_sourcedir(out), range(2)))
    assert archives[0] == archives[1] == out / "sourcedir.tar.gz"
    with tarfile.open(archives[0]) as archive:
        names = archive.getnames()
    assert "train.py" in names and "wheels/tiny-1.0-py3-none-any.whl" in names and "requirements.txt" in names
    assert [p.name for p in out.iterdir()] == ["sourcedir.tar.gz"]  # no staging folder or partial file left
    monkeypatch.setattr(packaging, "stage_sources", real_stage)
    again = packaging.build_sourcedir(tmp_path / "again")  # the private paths leave no trace in the bytes
    assert again.read_bytes() == archives[0].read_bytes()


def test_concurrent_pretrained_bundles_are_one_whole_zip(monkeypatch, tmp_path):
    weights = tmp_path / "efficientnet-lite0-0000.pth"
    weights.write_bytes(b"w" * 1_000_000)
    monkeypatch.setattr(packaging, "pretrained_weights", lambda architecture: weights)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        bundles = set(pool.map(lambda _: packaging.pretrained_bundle(cache), range(8)))
    (bundle,) = bundles
    with zipfile.ZipFile(bundle) as archive:
        assert archive.testzip() is None
        assert [i.file_size for i in archive.infolist()] == [1_000_000] * len(packaging.PRETRAINED_PACKAGES)
    assert not list(cache.rglob("*.partial"))
