"""`cxr upload-dataset` at scale: memory that does not grow with the dataset's size, and a progress bar only on
a terminal. The checksum pass runs against a fake S3 client here (thousands of objects, no moto), so what
tracemalloc sees is the command's own memory."""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import struct
import sys
import termios
import tracemalloc
from pathlib import Path

import pytest

import corpus
from cxr import operations, progress
from cxr.commands import upload_dataset

COUNT = 5000


class FakeS3:
    """ListObjectsV2 pages of 1,000 keys in S3's order and HeadObject with the stored checksum; PutObject kept."""

    def __init__(self, objects: dict[str, tuple[int, str]]):
        self.objects = objects
        self.put = 0

    def get_paginator(self, operation: str):
        assert operation == "list_objects_v2"
        objects = self.objects

        class Paginator:
            @staticmethod
            def paginate(Bucket: str, Prefix: str):
                keys = sorted(k for k in objects if k.startswith(Prefix))
                for start in range(0, len(keys), 1000):
                    yield {"Contents": [{"Key": k, "Size": objects[k][0]} for k in keys[start:start + 1000]]}

        return Paginator()

    def head_object(self, Bucket: str, Key: str, ChecksumMode: str) -> dict:
        return {"ContentLength": self.objects[Key][0], "ChecksumSHA256": self.objects[Key][1],
                "ChecksumType": "FULL_OBJECT"}

    def put_object(self, **kwargs) -> dict:
        self.put += 1
        return {}


def items(count: int) -> list[upload_dataset.Item]:
    return [upload_dataset.Item(f"raw/big/train/NORMAL/IM-{n:06d}-0001.jpeg", Path(f"/nowhere/{n}.jpeg"),
                                1000 + n % 7, f"digest-{n}") for n in range(count)]


def peak_bytes(call) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_checksum_pass_streams_the_listing_and_keeps_few_requests_in_flight():
    """A resumed upload of 5,000 files, 4,000 of them there already (1,000 with another checksum). The pass once
    held a dict of every listed key and a future per candidate (about 1.6 KB each, 320 MB at 200,000)."""
    wanted = items(COUNT)
    s3 = FakeS3({i.key: (i.size, i.fingerprint if n % 4 else "other") for n, i in enumerate(wanted[:4000])})
    held, peak = peak_bytes(lambda: upload_dataset.already_there(s3, "data", "raw/big/", wanted, workers=8))
    assert held == {i.key for n, i in enumerate(wanted[:4000]) if n % 4}
    assert peak < 300 * COUNT, f"{peak / COUNT:.0f} bytes per file"


def test_the_merge_matches_what_a_lookup_would_and_refuses_an_unordered_listing():
    wanted = items(50)
    listing = [(i.key, i.size + (n % 3 == 0)) for n, i in enumerate(wanted) if n % 2] + [("raw/big/zzz", 1)]
    assert upload_dataset.same_size(iter(listing), list(reversed(wanted))) == [
        i for n, i in enumerate(wanted) if n % 2 and n % 3]
    with pytest.raises(RuntimeError, match="out of order"):
        upload_dataset.same_size(iter(reversed(listing)), wanted)


def test_uploads_keep_few_requests_in_flight(tmp_path):
    count = 2000
    (tmp_path / "x.jpeg").write_bytes(b"x")
    paths = [(tmp_path / "x.jpeg", f"raw/big/NORMAL/{n}.jpeg") for n in range(count)]
    s3 = FakeS3({})
    _, peak = peak_bytes(lambda: operations.upload_files(s3, "data", paths, workers=8))
    assert s3.put == count
    assert peak < 300 * count, f"{peak / count:.0f} bytes per file"


def test_bounded_map_draws_items_only_as_results_are_taken():
    drawn = []

    def source():
        for n in range(100):
            drawn.append(n)
            yield n

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        for taken, result in enumerate(operations.bounded_map(pool, lambda n: n * n, source(), window=6)):
            assert result == taken * taken and len(drawn) - taken <= 6


def folder_args(folder: Path) -> argparse.Namespace:
    return argparse.Namespace(folder=folder, manifest=None, dataset=None, workers=2, dry_run=False)


@pytest.fixture
def wards(tmp_path, monkeypatch):
    """Three X-rays and a deployment whose S3 is the fake one."""
    folder = tmp_path / "wards"
    for label, seed in (("NORMAL", 1), ("NORMAL", 2), ("PNEUMONIA", 3)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"IM-000{seed}-0001.jpeg").write_bytes(corpus.jpeg(seed=seed))
    s3 = FakeS3({})

    class Deployment:
        @staticmethod
        def client(name):
            return s3

        @staticmethod
        def bucket(role):
            return "data"

    monkeypatch.setattr(upload_dataset.target, "resolve", lambda args: Deployment)
    return folder


def test_progress_bars_are_drawn_on_a_terminal(wards, monkeypatch, capsys):
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty has 0 columns
    with os.fdopen(terminal, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        assert upload_dataset.run(folder_args(wards)) == 0
        stream.flush()
        drawn = b""
        while select.select([controller], [], [], 0.2)[0]:
            drawn += os.read(controller, 65536)
    os.close(controller)
    text = drawn.decode()
    assert "checking: 100%" in text and "uploading: 100%" in text and "3/3" in text
    assert "3 to send" in capsys.readouterr().out  # the summary lines stay on stdout


def test_no_progress_output_when_stderr_is_not_a_terminal(wards, capsys):
    """A log gets the summary lines only: no bar, no carriage returns (the hand-drawn bar wrote one per file)."""
    assert upload_dataset.run(folder_args(wards)) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "\r" not in captured.out
    assert "3 files: 3 valid" in captured.out


def test_the_bar_follows_its_stream():
    class Log:
        written = ""

        def write(self, text):
            self.written += text

        def flush(self):
            pass

        def isatty(self):
            return False

    log = Log()
    with progress.bar(10, "checking", stream=log) as bar:
        bar.update(10)
    assert log.written == ""
