"""A staged ``ManifestFile`` channel repacked as PrepareDataset's tar shards (the same writer, the same order)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lambdas.domain import shards


def pack_channel(channel: Path, out: Path, images_per_shard: int, min_shards: int = 1) -> Path:
    """``out/NNNNNN.tar`` from ``channel``'s jsonl records and PNGs, as an ``S3Prefix`` channel of shards lands."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    records = [json.loads(line) for path in sorted(channel.rglob("*.jsonl"))
               for line in path.read_text().splitlines() if line.strip()]
    for index, block in enumerate(shards.plan(len(records), images_per_shard, min_shards)):
        with (out / shards.name(index)).open("wb") as stream:
            shards.write(stream, records[block.start: block.stop], lambda key: (channel / key).read_bytes())
    return out


def pack_channels(channels: dict[str, Path], out: Path, images_per_shard: int) -> dict[str, Path]:
    """Train, validation and test as shards (the Train state's channels); any other channel as it is."""
    return {name: pack_channel(path, out / name, images_per_shard) if name in ("train", "validation", "test")
            else path for name, path in channels.items()}
