"""Packing work items: a split's shards (:func:`lambdas.domain.shards.plan`) in groups of bounded size, each packed
by one PackShards invocation (the pipeline's Map state), so no invocation's time grows with the dataset.

An item names the byte range of the split's jsonl that holds its records: PrepareDataset notes the offsets while it
spools the jsonl (:class:`Offsets`), and the packing function reads only its lines with a ranged GET pinned to the
jsonl's ETag (a rewritten jsonl fails the read: ``If-Match``) instead of the whole manifest or an object per item.
The items are small and few (24 at 200,000 images), so they travel in the state machine's payload.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

IMAGES_PER_ITEM = 8000
"""At most this many images per invocation (8 full shards): 12.3 s of CPU and 7,904 GETs for 7,903 images here
(bench/pipeline_scale.py at 50,000), far inside the function's timeout whatever the dataset's size; a small split
(up to 128 one-image shards) is one item."""


def group(blocks: list[range], images_per_item: int = IMAGES_PER_ITEM) -> list[range]:
    """Consecutive shard indices of ``blocks`` (a split's shard plan) in groups of at most ``images_per_item``
    images (a shard larger than that is a group of its own)."""
    groups, first, images = [], 0, 0
    for index, block in enumerate(blocks):
        if index > first and images + len(block) > images_per_item:
            groups.append(range(first, index))
            first, images = index, 0
        images += len(block)
    return [*groups, range(first, len(blocks))] if blocks else []


class Offsets:
    """Byte offsets of chosen records in a stream of lines: :meth:`lines` passes the lines through and notes where
    each chosen record starts (and where the stream ends), as PrepareDataset spools a jsonl."""

    def __init__(self, records: Iterable[int]):
        self.wanted = set(records)
        self.at: dict[int, int] = {}
        self.end = 0

    def lines(self, lines: Iterable[str]) -> Iterator[str]:
        for index, line in enumerate(lines):
            if index in self.wanted:
                self.at[index] = self.end
            self.end += len(line.encode())
            yield line


def items(run_id: str, split: str, jsonl_key: str, etag: str, blocks: list[range], groups: list[range],
          offsets: Offsets) -> list[dict]:
    """One work item per group: its first shard's index, the number of records in each of its shards, and the bytes
    of the jsonl holding their records."""
    def start(shard: int) -> int:
        return offsets.at[blocks[shard].start] if shard < len(blocks) else offsets.end

    return [{"run_id": run_id, "split": split, "jsonl": jsonl_key, "etag": etag, "first_shard": g.start,
             "sizes": [len(blocks[i]) for i in g], "bytes": [start(g.start), start(g.stop)]} for g in groups]


def first_records(blocks: list[range], groups: list[range]) -> list[int]:
    """The index of each group's first record: where :class:`Offsets` must note the byte offset."""
    return [blocks[g.start].start for g in groups]
