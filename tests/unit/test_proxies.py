"""Shift proxies (cxr/proxies.py): appearance statistics, clusters and patient-grouped hold-outs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr import proxies
from lambdas.domain import splits


def _item(index: int, label: str, patient: int | None) -> splits.Item:
    return splits.Item(f"k{index:04d}", label, None if patient is None else f"p{patient}", f"h{index:04d}")


def test_features_see_borders_markers_and_aspect():
    rng = np.random.default_rng(0)
    plain = (rng.uniform(0.3, 0.7, (120, 100)) * 255).astype(np.uint8)
    framed = plain.copy()
    framed[:12], framed[-12:], framed[:, :12], framed[:, -12:] = 0, 0, 0, 0
    marked = plain.copy()
    marked[10:30, 10:40] = 255
    wide = (rng.uniform(0.3, 0.7, (100, 160)) * 255).astype(np.uint8)
    f = {name: dict(zip(proxies.FEATURES, proxies.appearance_features(x), strict=True))
         for name, x in (("plain", plain), ("framed", framed), ("marked", marked), ("wide", wide))}
    assert f["framed"]["dark_border"] > 0.9 > f["plain"]["dark_border"] + 0.8
    assert f["framed"]["border_minus_centre"] < f["plain"]["border_minus_centre"] - 0.3
    assert f["marked"]["bright_fraction"] > f["plain"]["bright_fraction"] + 0.03
    assert f["wide"]["log_aspect"] == pytest.approx(np.log(1.6))
    assert f["plain"]["log_aspect"] == pytest.approx(np.log(100 / 120))
    # the same picture as floats in [0, 1] gives the same statistics
    np.testing.assert_allclose(proxies.appearance_features(plain / 255.0), proxies.appearance_features(plain))


def test_clusters_recover_two_acquisitions_in_each_class_with_one_ranking():
    rng = np.random.default_rng(1)
    features, labels = {}, {}
    for c, label in enumerate(("normal", "pneumonia")):
        for i in range(40):
            dark = i % 2 == 0  # two acquisitions per class: a dark and a bright one
            base = (0.2 if dark else 0.7) + 0.05 * c
            image = np.clip(rng.normal(base, 0.05, (32, 32)), 0, 1)
            features[f"{label}{i}"], labels[f"{label}{i}"] = proxies.appearance_features(image), label
    ranks = proxies.appearance_clusters(features, labels, k=2)
    for label in ("normal", "pneumonia"):
        dark = {ranks[f"{label}{i}"] for i in range(0, 40, 2)}
        bright = {ranks[f"{label}{i}"] for i in range(1, 40, 2)}
        assert len(dark) == len(bright) == 1 and dark != bright
    # rank j is the same end of the appearance range in both classes
    assert ranks["normal0"] == ranks["pneumonia0"]


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.sampled_from(["normal", "bacterial", "viral"]), min_size=12, max_size=60),
    patients=st.lists(st.integers(0, 15) | st.none(), min_size=60, max_size=60),
    held_fraction=st.floats(0.1, 0.6),
    seed=st.integers(0, 3),
)
def test_held_out_proxies_never_split_a_patient_and_use_every_image_once(labels, patients, held_fraction, seed):
    items = [_item(i, label, patients[i]) for i, label in enumerate(labels)]
    held = {i.key for i in items[: max(1, int(held_fraction * len(items)))]}
    majority_held = [m for m in splits.merge_groups(items) if sum(i.key in held for i in m) * 2 > len(m)]
    if not majority_held:  # one patient holds most of the held images and more besides: refused
        with pytest.raises(ValueError, match="nothing held out"):
            proxies.held_out("p", "d", items, held, seed)
        return
    proxy = proxies.held_out("p", "d", items, held, seed)
    assert proxies.leaked_groups(proxy) == set()
    used = proxy.train + proxy.validation + proxy.test
    assert len(used) == len({i.key for i in used})
    assert {i.key for i in used} <= {i.key for i in items}
    # a held-out group is never trained or validated on
    trained = {i.key for i in proxy.train + proxy.validation}
    for members in majority_held:
        assert not trained & {i.key for i in members}


def test_acquisition_hold_out_scores_unseen_normals_beside_unseen_pneumonias():
    items = ([_item(i, "normal", 1000 + i) for i in range(30)]  # the held-out acquisition
             + [_item(100 + i, "normal", 2000 + i) for i in range(30)]
             + [_item(200 + i, "bacterial", 3000 + i // 2) for i in range(60)])
    held = {f"k{i:04d}" for i in range(30)}
    proxy = proxies.held_out("acquisition", "d", items, held)
    test_normals = {i.key for i in proxy.test if i.label == "normal"}
    assert test_normals == held  # the other normals are trained on, not scored
    assert 5 <= sum(i.label == "bacterial" for i in proxy.test) <= 15
    assert proxies.leaked_groups(proxy) == set()


def test_cluster_proxies_hold_out_each_rank_once():
    items = [_item(i, "normal" if (i // 2) % 2 else "pneumonia", i // 2) for i in range(90)]  # 2 images a patient
    ranks = {i.key: int(i.patient_id[1:]) % 3 for i in items}
    folds = proxies.cluster_proxies(items, ranks)
    assert [p.name for p in folds] == ["cluster0", "cluster1", "cluster2"]
    tested = [i.key for p in folds for i in p.test]
    assert sorted(tested) == sorted(i.key for i in items)  # every image is held out exactly once
    for p in folds:
        assert {ranks[i.key] for i in p.test} == {int(p.name[-1])}
        assert proxies.leaked_groups(p) == set()


def test_acquisition_hold_out_can_score_every_held_image_and_set_aside_their_group_mates():
    # held image k0000 shares patient p7 with two unheld images: by majority it would be trained on
    items = [_item(0, "normal", 7), _item(1, "normal", 7), _item(2, "normal", 7), _item(3, "viral", 7)]
    items += [_item(10 + i, "normal", 100 + i) for i in range(20)]
    items += [_item(40 + i, "viral", 200 + i) for i in range(40)]
    majority = proxies.held_out("a", "d", items, {"k0000", "k0010"})
    assert "k0000" in {i.key for i in majority.train + majority.validation}
    every = proxies.held_out("a", "d", items, {"k0000", "k0010"}, every_held_image=True)
    assert {"k0000", "k0010"} <= {i.key for i in every.test}
    used = {i.key for i in every.train + every.validation + every.test}
    assert not used & {"k0001", "k0002"}  # the group mates of a held class are set aside, not trained on
    assert "k0003" in {i.key for i in every.test}  # the pneumonia of the same patient is scored
    assert proxies.leaked_groups(every) == set()


def _named(name: str, label: str, patient: str | None) -> splits.Item:
    return splits.Item(f"stored/{label}/{name}.png", label, patient, f"h-{name}")


def _names(items: list[splits.Item]) -> dict[str, str]:
    """Stored keys are content names; the original file name is the key's stem here."""
    return {i.key: i.key.rsplit("/", 1)[1].removesuffix(".png") for i in items}


def test_sequence_folds_hold_out_each_series_lowest_then_highest_patients():
    items = [_named(f"IM-{n:04d}-0001.jpeg", "normal", f"{n:04d}") for n in range(100, 150)]
    items += [_named(f"NORMAL2-IM-{n:04d}-0001.jpeg", "normal", f"{n:04d}") for n in range(400, 450)]
    items += [_named(f"person{n}_bacteria_{k}.jpeg", "bacterial", str(n)) for n in range(1, 51) for k in (1, 2)]
    early, late = proxies.sequence_proxies(items, _names(items))
    assert (early.name, late.name) == ("sequence-early", "sequence-late")
    held_normals = sorted(_names(items)[i.key] for i in early.test if i.label == "normal")
    # the first 20 % of each series, not the 20 % lowest numbers overall (which would all be IM-01xx)
    assert held_normals == sorted([f"IM-{n:04d}-0001.jpeg" for n in range(100, 110)]
                                  + [f"NORMAL2-IM-{n:04d}-0001.jpeg" for n in range(400, 410)])
    assert {int(i.patient_id) for i in early.test if i.label == "bacterial"} == set(range(1, 11))
    assert {int(i.patient_id) for i in late.test if i.label == "bacterial"} == set(range(41, 51))
    for fold in (early, late):
        assert proxies.leaked_groups(fold) == set()
        assert not {i.key for i in fold.test} & {i.key for i in fold.train + fold.validation}


def test_sequence_folds_need_numbered_patients():
    unnumbered = [_item(i, "normal", None) for i in range(40)]
    assert proxies.sequence_proxies(unnumbered, {i.key: f"x{n}.png" for n, i in enumerate(unnumbered)}) == []
    numbered = [_named(f"IM-{n:04d}-0001.jpeg", "normal", f"{n:04d}") for n in range(40)]
    assert proxies.sequence_proxies(numbered, {}) == []  # no original names: no series
    with pytest.raises(ValueError):
        proxies.sequence_proxies([], {}, fraction=0.5)


@settings(max_examples=30, deadline=None)
@given(patients=st.lists(st.integers(1, 40), min_size=20, max_size=80), fraction=st.floats(0.05, 0.45))
def test_sequence_folds_take_whole_patients_from_the_ends(patients, fraction):
    items = [_named(f"person{n}_virus_{k}.jpeg", "viral", str(n)) for k, n in enumerate(patients)]
    items += [_named(f"IM-{n:04d}-{k:04d}.jpeg", "normal", f"{n:04d}") for k, n in enumerate(patients)]
    early, late = proxies.sequence_proxies(items, _names(items), fraction)
    for fold, pick in ((early, min), (late, max)):
        for label in ("viral", "normal"):
            held = {int(i.patient_id) for i in fold.test if i.label == label}
            rest = {int(i.patient_id) for i in fold.train + fold.validation if i.label == label}
            assert held and pick(patients) in held
            assert not held & rest  # whole patients
            assert all(h < r for h in held for r in rest) if pick is min else all(h > r for h in held for r in rest)
