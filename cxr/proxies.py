"""Validation proxies that hold out what changes between acquisitions (issue 21), as pure split logic.

A split cut at random from the training data shares its acquisitions with training, so it cannot
predict how a model does on another hospital's X-rays (the official Kermany test split: specificity
0.71 where every random-split proxy said above 0.93). The proxies here hold out, instead:

* an **appearance cluster**: each class's images are clustered by image statistics an acquisition
  leaves behind (intensity histogram, field of view, borders, burned-in markers, noise; the
  aspect ratio when the stored images kept theirs), the clusters of each class are put in one
  order along the first principal axis of those statistics, and fold ``j`` holds out the ``j``-th
  cluster of every class at once, so the model meets an appearance it was not trained on;
* an **acquisition**: named images (e.g. Kermany's ``NORMAL2-IM-*`` normals) with the pneumonias
  of a patient-grouped test split beside them;
* the **ends of the patient sequence**: where patients are numbered as they arrive (Kermany's
  ``personN_*``, ``IM-NNNN-*``, presumably), the lowest-numbered patients of each patient series
  (and, in a second fold, the highest) are the ones farthest in time from the rest: a temporal
  hold-out, for the drift of equipment, protocol and the readers who labelled them;
* beside them, the usual **split cut from train** (the one ``cxr train-local`` makes), for comparison.

Every proxy keeps whole patient groups (:func:`splits.merge_groups`: the patient, or identical
pixels) on one side: a held-out cluster takes every group most of whose images fall in it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from lambdas.domain import labels, splits

FEATURES = (
    "q05", "q25", "q50", "q75", "q95", "mean", "std",  # intensity histogram (exposure, contrast curve)
    "log_aspect",  # field of view as stored (0 when the images were squashed to a square)
    "border_minus_centre", "border_std", "dark_border",  # collimation, black or white frames
    "dark_fraction",  # field of view: share of the image outside the body
    "bright_fraction",  # burned-in markers and text are near-white
    "noise",  # high-frequency residual relative to contrast (detector noise, compression)
)
FEATURE_SIDE = 64
"""Images larger than this are reduced (area mean) to this side before the statistics."""


def appearance_features(pixels: np.ndarray) -> np.ndarray:
    """Acquisition statistics of one grey image ``(H, W)`` (uint8 0-255 or float 0-1), in FEATURES' order."""
    image = np.asarray(pixels, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 4:
        raise ValueError(f"expected a 2-D image of at least 4x4 pixels, got shape {image.shape}")
    if np.issubdtype(np.asarray(pixels).dtype, np.integer):
        image = image / 255.0
    height, width = image.shape
    image = _reduce(image, FEATURE_SIDE)
    h, w = image.shape
    frame = max(1, round(0.08 * min(h, w)))
    border = np.concatenate([image[:frame].ravel(), image[-frame:].ravel(),
                             image[frame:-frame, :frame].ravel(), image[frame:-frame, -frame:].ravel()])
    centre = image[h // 4: h - h // 4, w // 4: w - w // 4]
    quantiles = np.quantile(image, [0.05, 0.25, 0.5, 0.75, 0.95])
    std = image.std()
    laplacian = (4 * image[1:-1, 1:-1] - image[:-2, 1:-1] - image[2:, 1:-1] - image[1:-1, :-2] - image[1:-1, 2:])
    return np.array([
        *quantiles, image.mean(), std,
        np.log(width / height),
        border.mean() - centre.mean(), border.std(), float((border < 0.08).mean()),
        float((image < 0.08).mean()),
        float((image > 0.96).mean()),
        float(np.median(np.abs(laplacian)) / (std + 1e-3)),
    ])


def _reduce(image: np.ndarray, side: int) -> np.ndarray:
    """Block-mean the image so that its longer side is at most ``side`` (keeps the aspect)."""
    step = max(1, int(np.ceil(max(image.shape) / side)))
    if step == 1:
        return image
    h, w = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    return image[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))


def appearance_clusters(features: dict[str, np.ndarray], labels: dict[str, str], k: int,
                        seed: int = 0) -> dict[str, int]:
    """Cluster rank (0..k-1) of every key: k-means within each class on robustly standardised,
    clipped features, clusters ranked by their centre's position on the first principal axis of all images,
    so rank ``j`` means the same end of the appearance range in every class."""
    from sklearn.cluster import KMeans

    keys = sorted(features)
    if set(keys) != set(labels):
        raise ValueError("features and labels must cover the same keys")
    matrix = np.stack([features[key] for key in keys])
    centre = np.median(matrix, axis=0)
    spread = np.subtract(*np.quantile(matrix, [0.75, 0.25], axis=0))
    spread = np.where(spread > 1e-9, spread, matrix.std(axis=0) + 1e-9)
    # clipped: share-of-pixel features (dark borders, markers) have long tails that would otherwise make
    # k-means spend its clusters on a few dozen outliers (PneumoniaMNIST: 1048 / 64 / 236 normals unclipped)
    z = np.clip((matrix - centre) / spread, -3, 3)
    axis = _first_axis(z)
    ranks: dict[str, int] = {}
    for label in sorted(set(labels.values())):
        rows = [i for i, key in enumerate(keys) if labels[key] == label]
        if len(rows) < k:
            raise ValueError(f"class {label!r} has {len(rows)} images, fewer than {k} clusters")
        fitted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z[rows])
        order = np.argsort(fitted.cluster_centers_ @ axis, kind="stable")
        rank_of = {int(cluster): rank for rank, cluster in enumerate(order)}
        for row, cluster in zip(rows, fitted.labels_, strict=True):
            ranks[keys[row]] = rank_of[int(cluster)]
    return ranks


def _first_axis(z: np.ndarray) -> np.ndarray:
    """First principal direction, its sign fixed so that the largest loading is positive (deterministic)."""
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    axis = vt[0]
    return axis if axis[np.argmax(np.abs(axis))] > 0 else -axis


@dataclass(frozen=True)
class Proxy:
    """One validation protocol: train on ``train``, choose epoch and calibration on ``validation``,
    score on ``test`` (never trained on)."""

    name: str
    description: str
    train: list[splits.Item]
    validation: list[splits.Item]
    test: list[splits.Item]

    def parts(self) -> dict[str, list[splits.Item]]:
        return {splits.TRAIN: self.train, splits.VALIDATION: self.validation, splits.TEST: self.test}


def held_out(name: str, description: str, items: Iterable[splits.Item], held: set[str], seed: int = 0,
             companion_fraction: float = 0.15, every_held_image: bool = False) -> Proxy:
    """Hold out the groups most of whose images are in ``held`` (keys); train and validate on the rest.

    With ``every_held_image``, every held image is scored instead: a group with any held image
    leaves training; its other images are scored too when their class is not a held class, else set
    aside (neither trained nor scored). Kermany's ``NORMAL2-IM-0383`` shares patient id 0383 with
    ``IM-0383`` and ``person0383_...``: the normal is set aside, the pneumonia scored.
    The test part is the held-out groups plus, for the classes they lack, a patient-grouped
    ``companion_fraction`` of the rest (an acquisition of normals is scored beside unseen pneumonias).
    """
    items = sorted(set(items), key=lambda i: i.key)
    held_labels = {i.label for i in items if i.key in held}
    held_groups, rest = [], []
    for members in splits.merge_groups(items):
        inside = sum(i.key in held for i in members)
        if every_held_image and inside:
            held_groups.append([i for i in members if i.key in held or i.label not in held_labels])
        else:
            (held_groups if inside * 2 > len(members) else rest).append(members)
    test = [i for members in held_groups for i in members]
    if not test:
        raise ValueError(f"proxy {name}: nothing held out")
    rest_items = [i for members in rest for i in members]
    missing = {i.label for i in rest_items} - held_labels
    # The rest's own val/ or test/ folders play no part: the proxy decides every split.
    pool = [splits.Item(i.key, i.label, i.patient_id, i.content_hash) for i in rest_items]
    dealt = splits.split_items(pool, 0.15, companion_fraction if missing else 0.0, seed).splits
    train = list(dealt[splits.TRAIN])
    for members in splits.merge_groups(dealt[splits.TEST]):
        # companions only for the missing classes; groups wholly of held classes go back to training
        (test if any(i.label in missing for i in members) else train).extend(members)
    return Proxy(name, description, sorted(train, key=lambda i: i.key), dealt[splits.VALIDATION],
                 sorted(test, key=lambda i: i.key))


def cluster_proxies(items: Iterable[splits.Item], ranks: dict[str, int], seed: int = 0) -> list[Proxy]:
    """One proxy per cluster rank: that rank of every class held out (see :func:`appearance_clusters`)."""
    items = list(items)
    proxies = []
    for rank in sorted(set(ranks.values())):
        held = {key for key, r in ranks.items() if r == rank}
        counts = Counter(i.label for i in items if i.key in held)
        described = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        proxies.append(held_out(f"cluster{rank}", f"appearance cluster {rank} of each class held out ({described})",
                                items, held, seed))
    return proxies


SEQUENCE_FRACTION = 0.2
"""Share of each patient series' images (whole patients) a sequence fold holds out."""


def sequence_proxies(items: Iterable[splits.Item], names: Mapping[str, str], fraction: float = SEQUENCE_FRACTION,
                     seed: int = 0) -> list[Proxy]:
    """``sequence-early`` and ``sequence-late``: the lowest- and highest-numbered patients of every
    class and patient series (:func:`labels.patient_series`) held out, about ``fraction`` of its images
    each. ``names`` gives each key's original file name (stored keys are content names); none when
    fewer than half the images have a numbered patient in a known series (PneumoniaMNIST's own names)."""
    if not 0 < fraction < 0.5:
        raise ValueError("fraction must be in (0, 0.5)")
    items = list(items)
    series_of = {i.key: labels.patient_series(names[i.key]) for i in items if i.key in names}
    numbered = [i for i in items if series_of.get(i.key) and i.patient_id and i.patient_id.isdigit()]
    if len(numbered) * 2 < len(items):
        return []
    series: dict[tuple[str, str], list[splits.Item]] = {}
    for item in numbered:
        series.setdefault((item.label, series_of[item.key]), []).append(item)
    folds = []
    for name, from_end in (("sequence-early", False), ("sequence-late", True)):
        held: set[str] = set()
        for members in series.values():
            per_patient = Counter(int(i.patient_id) for i in members)
            taken: set[int] = set()
            count, budget = 0, fraction * len(members)
            for number in sorted(per_patient, reverse=from_end):  # whole patients, up to the series' share
                if taken and count + per_patient[number] > budget:
                    break
                taken.add(number)
                count += per_patient[number]
            held |= {i.key for i in members if int(i.patient_id) in taken}
        end = "highest" if from_end else "lowest"
        # every held image is scored: patient numbers are shared across series (Kermany's IM-0383 and
        # NORMAL2-IM-0383), and such a group's images of the other series are set aside, not trained on
        folds.append(held_out(name, f"the {end}-numbered patients of each class and patient series held out "
                              f"({len(held)} images, about {fraction:.0%} of each series)", items, held, seed,
                              every_held_image=True))
    return folds


def leaked_groups(proxy: Proxy) -> set[str]:
    """Patient or identical-pixel groups found on more than one side of a proxy (must be empty)."""
    sides: dict[str, set[str]] = {}
    for part, members in proxy.parts().items():
        for item in members:
            for token in (splits.group_of(item), f"image:{item.content_hash}"):
                sides.setdefault(token, set()).add(part)
    return {token for token, parts in sides.items() if len(parts) > 1}
