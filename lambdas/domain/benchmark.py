"""The fixed benchmark set of a dataset: the X-rays every model of that dataset is judged on (pure).

Created once, by the first training run that finds none (``manifests/benchmarks/<dataset>.json``,
written with S3's create-only condition so two racing runs agree on one), drawn patient-grouped and
stratified by label from the dataset's images outside a user's own ``test/`` split. From then on
every run excludes from train, validation and test (hence from threshold fitting and calibration)
each image that shares a patient or identical pixels with a benchmark image, whatever key it was
uploaded under later; the set itself never grows. Its ``version`` is a digest of its members, so
a model package that records it says exactly which images its benchmark answers are on.

A benchmark image that is no longer current (deleted, or quarantined after a re-upload) is left out
of the channel of later runs; champion and challenger are compared on the images both answered
(:func:`lambdas.domain.champion.pair`), and the count is in the report.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping

from lambdas.domain import labels, layout, splits

FRACTION = 0.15
SEED = 17
"""Not the splits' seed: the benchmark draw is its own, made once."""
MIN_PATIENTS_PER_LABEL = 20
"""A label with fewer patient groups than this in the pool: no benchmark set yet (it would hold one or two
patients of that label, too few to tell two models apart); the gate keeps to the minimums and says so."""
METHOD = (f"{FRACTION:.0%} of the dataset's patients outside test/, grouped by patient and identical pixels, "
          f"stratified by label (seed {SEED}); excluded from every later run's train, validation and test")


def key(dataset: str) -> str:
    return f"{layout.BENCHMARKS}{dataset}.json"


def draw(items: Iterable[splits.Item], dataset: str, run_id: str, created_at: str) -> tuple[dict | None, str]:
    """A new benchmark set from the dataset's current images, or None and why not."""
    pool = [i for i in items if i.user_split != "test"]
    groups = Counter(splits.majority_label(members) for members in splits.merge_groups(pool))
    small = {label: n for label, n in groups.items() if n < MIN_PATIENTS_PER_LABEL}
    if len(groups) < 2 or small:
        return None, (f"no benchmark set yet: {dict(sorted(groups.items()))} patients per label, at least "
                      f"{MIN_PATIENTS_PER_LABEL} of each of two labels needed")
    members = splits.carve(pool, FRACTION, SEED)
    records = [{"key": i.key, "label": i.label, "patient_id": i.patient_id, "content_hash": i.content_hash}
               for i in members]
    return {"dataset": dataset, "version": version(records), "created_at": created_at, "created_by_run": run_id,
            "method": METHOD, "images": len(records), "patients": len({splits.group_of(i) for i in members}),
            "counts": dict(sorted(Counter(i.label for i in members).items())), "members": records}, "drawn"


def version(records: Iterable[Mapping]) -> str:
    """Digest of the members (content hash and label): equal sets, equal versions."""
    lines = sorted(f"{r['content_hash']}:{r['label']}" for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _tokens(item: splits.Item) -> set[str]:
    return {splits.group_of(item), f"image:{item.content_hash}"}


def _member_items(benchmark: Mapping) -> list[splits.Item]:
    return [splits.Item(r["key"], r["label"], r.get("patient_id"), r["content_hash"]) for r in benchmark["members"]]


def exclude(items: Iterable[splits.Item], benchmark: Mapping) -> tuple[list[splits.Item], int]:
    """The items no benchmark patient or pixel-identical image is among, and how many were left out."""
    taken = set().union(*(_tokens(i) for i in _member_items(benchmark)))
    items = list(items)
    kept = [i for i in items if not _tokens(i) & taken]
    return kept, len(items) - len(kept)


def current_members(items: Iterable[splits.Item], benchmark: Mapping) -> list[splits.Item]:
    """The benchmark images still current in the dataset, under their current key, with the benchmark's label."""
    current = {i.content_hash: i for i in items}
    return sorted((splits.Item(current[m.content_hash].key, m.label, m.patient_id, m.content_hash)
                   for m in _member_items(benchmark) if m.content_hash in current), key=lambda i: i.key)


def truth(label: str) -> bool:
    """The binary truth the comparison uses: pneumonia (any sub-type) or not."""
    return label != labels.NORMAL
