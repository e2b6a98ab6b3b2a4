"""Patient-grouped, stratified train/validation/test splits (pure: no AWS, no file system).

Rules (ARCHITECTURE.md, "Labels"): a user's own ``test/`` split is honoured; a user's ``val/``
is honoured only when it is large enough to measure anything (Kaggle's has 16 images), otherwise
its images go back into the pool and a patient-grouped split of that pool replaces it. No patient
is ever in two splits, and images with identical pixels count as one patient, so a duplicate
cannot leak from train into validation. Within each class the groups are shuffled with a fixed
seed and dealt out until each split holds its share of that class's images.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)

MIN_USER_VALIDATION = 100
"""A user ``val/`` smaller than this (or than 5 % of the training pool) is replaced."""


@dataclass(frozen=True, slots=True)
class Item:
    """One image as the split sees it (slots: a run holds one per image, 200,000 of them at scale)."""

    key: str
    label: str
    patient_id: str | None
    content_hash: str
    user_split: str | None = None  # "train" | "val" | "test" | None, from the upload's folders


@dataclass
class SplitResult:
    splits: dict[str, list[Item]]
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: dict(sorted(Counter(i.label for i in items).items())) for name, items in self.splits.items()}


def split_items(
    items: Iterable[Item],
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> SplitResult:
    """Assign every item to train, validation or test; deterministic for a given input set and seed."""
    if not (0 < validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError("fractions must be in (0, 1) and sum to less than 1")
    items = sorted(set(items), key=_by_pixels)
    notes: list[str] = []
    user_test = [i for i in items if i.user_split == "test"]
    user_val = [i for i in items if i.user_split == "val"]
    pool = [i for i in items if i.user_split not in ("test", "val")]

    fractions = {VALIDATION: validation_fraction}
    if user_test:
        notes.append(f"test: the dataset's own test/ split ({len(user_test)} images) is used as is")
    elif test_fraction > 0:
        fractions[TEST] = test_fraction
    if user_val and len(user_val) >= max(MIN_USER_VALIDATION, 0.05 * len(pool)):
        notes.append(f"validation: the dataset's own val/ split ({len(user_val)} images) is used as is")
        fractions.pop(VALIDATION)
    elif user_val:
        notes.append(
            f"validation: the dataset's val/ split has only {len(user_val)} images, too few to measure; "
            "it was merged into train and replaced by a patient-grouped split"
        )
        pool += user_val
        user_val = []

    dealt = _grouped_stratified(pool, fractions, seed)
    splits = {
        TRAIN: dealt[TRAIN],
        VALIDATION: user_val or dealt.get(VALIDATION, []),
        TEST: user_test or dealt.get(TEST, []),
    }
    splits = _remove_cross_split_groups(splits, notes)
    made = ", ".join(f"{name} {fraction:.0%}" for name, fraction in fractions.items())
    if fractions:
        notes.append(f"{made} of the pool, grouped by patient and stratified by class (seed {seed})")
    return SplitResult(splits={name: sorted(v, key=_by_pixels) for name, v in splits.items()}, notes=notes)


def carve(pool: Iterable[Item], fraction: float, seed: int) -> list[Item]:
    """A patient-grouped, stratified ``fraction`` of the pool (identical pixels kept together), as the
    splits are dealt: what the fixed benchmark set (``lambdas.domain.benchmark``) is drawn with."""
    return sorted(_grouped_stratified(sorted(set(pool), key=_by_pixels), {"carved": fraction}, seed)["carved"],
                  key=_by_pixels)


def group_of(item: Item) -> str:
    """The unit that must not be divided: the patient, or the image itself when no patient is known."""
    return f"patient:{item.patient_id}" if item.patient_id else f"image:{item.content_hash}"


def _by_pixels(item: Item) -> tuple[str, str]:
    """The order splits are dealt in: by content, not by key, since processed keys derive from the deployment's
    secret (issue 17's names); the same images split the same way in every deployment."""
    return item.content_hash, item.key


def _grouped_stratified(pool: list[Item], fractions: dict[str, float], seed: int) -> dict[str, list[Item]]:
    groups = merge_groups(pool)
    by_class: dict[str, list[list[Item]]] = defaultdict(list)
    for members in groups:
        by_class[majority_label(members)].append(members)
    out: dict[str, list[Item]] = {TRAIN: [], **{name: [] for name in fractions}}
    rng = random.Random(seed)
    for label in sorted(by_class):
        class_groups = sorted(by_class[label], key=lambda g: min(map(_by_pixels, g)))
        rng.shuffle(class_groups)
        total = sum(len(g) for g in class_groups)
        targets = {name: fraction * total for name, fraction in fractions.items()}
        filled = dict.fromkeys(fractions, 0)
        for members in class_groups:
            # The split furthest below its target takes the next group; train takes the rest.
            gaps = {name: targets[name] - filled[name] for name in fractions}
            name = max(gaps, key=lambda n: (gaps[n], n)) if gaps else TRAIN
            if not gaps or gaps[name] < len(members) / 2:
                name = TRAIN
            else:
                filled[name] += len(members)
            out[name].extend(members)
    return out


def majority_label(members: list[Item]) -> str:
    """The label a group is stratified under: its most common, ties to the first by name."""
    majority = Counter(i.label for i in members).most_common()
    return min(label for label, n in majority if n == majority[0][1])


def merge_groups(pool: list[Item]) -> list[list[Item]]:
    """The units no split may divide: union of patient groups and identical-pixel groups (union-find)."""
    parent = list(range(len(pool)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for index, item in enumerate(pool):
        for token in (group_of(item), f"image:{item.content_hash}"):
            if token in first:
                parent[find(index)] = find(first[token])
            else:
                first[token] = index
    merged: dict[int, list[Item]] = defaultdict(list)
    for index, item in enumerate(pool):
        merged[find(index)].append(item)
    return list(merged.values())


def _remove_cross_split_groups(splits: dict[str, list[Item]], notes: list[str]) -> dict[str, list[Item]]:
    """A user's test/ or val/ may share patients with train: drop those from train, never from test."""
    order = (TEST, VALIDATION, TRAIN)  # the first split a patient appears in keeps it
    seen: dict[str, str] = {}
    cleaned: dict[str, list[Item]] = {}
    for name in order:
        kept = []
        for item in splits[name]:
            owner = seen.setdefault(group_of(item), name)
            hash_owner = seen.setdefault(f"image:{item.content_hash}", name)
            if owner == name and hash_owner == name:
                kept.append(item)
        if dropped := len(splits[name]) - len(kept):
            notes.append(f"{name}: {dropped} images dropped because their patient is in an earlier split")
        cleaned[name] = kept
    return {name: cleaned[name] for name in SPLITS}
