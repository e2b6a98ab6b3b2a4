"""Packed shards of a split: the processed PNGs and their records in a few large tar objects.

Why: a ``File`` channel of 200,000 PNGs is 200,000 GETs before the first step, and reading them is
200,000 opens; a shard of about a thousand images is one object read front to back, which is what
SageMaker's ``FastFile`` mode streams best and what ``ShardedByS3Key`` deals out to instances (by
object, so there must be at least as many shards as ranks).

Layout of ``manifests/<run>/shards/<split>/NNNNNN.tar`` (zero-padded, so S3 key order is shard order):
the first member is ``records.jsonl`` (the shard's manifest records, the very lines of the split's
``<split>.jsonl``, in its order), then one member per record named by its ``key`` (the processed PNG).
A reader knows every label before the first image and never seeks. Shards are consecutive blocks of the
split's jsonl, so reading them in key order gives back the jsonl's order.

Standard library only: ``training_job/shards.py`` is a link to this file (as ``imaging.py`` is), so the
writer and the reader are one implementation.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

RECORDS = "records.jsonl"
IMAGES_PER_SHARD = 1000
"""About 50 MB of 256 px PNGs: large enough for S3's per-object throughput, small enough for Lambda's /tmp."""
MIN_SHARDS = 128
"""Enough for every rank to hold its own shards at the largest world the configuration allows (16 instances of
8 GPUs); a split with fewer images gets one image a shard."""


def name(index: int) -> str:
    return f"{index:06d}.tar"


def plan(count: int, images_per_shard: int = IMAGES_PER_SHARD, min_shards: int = MIN_SHARDS) -> list[range]:
    """Consecutive blocks of ``count`` items, sizes differing by at most one: ``ceil(count / images_per_shard)``
    rounded up to a multiple of ``min_shards`` (one item a shard when there are fewer items). Every world size
    that divides ``min_shards`` then holds equal shares: ranks take the same number of steps an epoch, so a rank
    with a larger share would leave its surplus unread."""
    if count == 0:
        return []
    shards = min(count, math.ceil(math.ceil(count / images_per_shard) / min_shards) * min_shards)
    bounds = [count * i // shards for i in range(shards + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(shards)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write(out: BinaryIO, records: list[dict], read_image: Callable[[str], bytes] | Iterable[bytes]) -> None:
    """One shard into ``out``: its records, then each record's image (``read_image(key)``, or an iterable of the
    images in record order, so a caller can fetch them concurrently)."""
    images = (read_image(r["key"]) for r in records) if callable(read_image) else iter(read_image)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, RECORDS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
        for record, image in zip(records, images, strict=True):
            _add(tar, record["key"], image)


def records(stream: BinaryIO) -> list[dict]:
    """A shard's records alone: its first member, nothing further read."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        first = tar.next()
        if first is None or first.name != RECORDS:
            raise ValueError(f"a shard begins with {RECORDS}, not {first.name if first else 'nothing'}")
        return _parse(tar.extractfile(first).read())


def _parse(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line]


def read(stream: BinaryIO) -> Iterator[tuple[dict, bytes]]:
    """Each (record, PNG) of a shard, read front to back (``tarfile``'s stream mode: no seeking)."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        records: dict[str, dict] = {}
        for member in tar:
            data = tar.extractfile(member).read()
            if member.name == RECORDS:
                records = {r["key"]: r for r in _parse(data)}
            else:
                yield records.pop(member.name), data
        if records:
            raise ValueError(f"shard lacks the images of {len(records)} of its records")
