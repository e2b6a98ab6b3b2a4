"""Split rules: patients never straddle splits, classes stay balanced, user splits are honoured or replaced."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdas.domain.splits import MIN_USER_VALIDATION, Item, group_of, split_items


def kermany_like(n_patients: int = 200, seed_label: int = 0, user_split: str | None = None, prefix: str = "") -> list:
    items = []
    for p in range(n_patients):
        label = ("normal", "bacterial", "viral")[(p + seed_label) % 3]
        for i in range(1 + p % 3):  # 1-3 images per patient
            items.append(Item(f"{prefix}{label}/{p}-{i}.png", label, f"{prefix}{p}", f"h{prefix}{p}-{i}", user_split))
    return items


def patients(items: list[Item]) -> set[str]:
    return {group_of(i) for i in items}


def test_patients_never_straddle_splits_and_every_item_is_placed_once():
    items = kermany_like()
    result = split_items(items, 0.15, 0.15, seed=3)
    placed = [i for split in result.splits.values() for i in split]
    assert sorted(placed, key=lambda i: i.key) == sorted(items, key=lambda i: i.key)
    train, val, test = (patients(result.splits[s]) for s in ("train", "validation", "test"))
    assert not (train & val) and not (train & test) and not (val & test)


def test_each_class_gets_its_share_in_each_split():
    result = split_items(kermany_like(600), 0.15, 0.15, seed=0)
    total = Counter(i.label for i in kermany_like(600))
    for split, fraction in (("validation", 0.15), ("test", 0.15)):
        counts = Counter(i.label for i in result.splits[split])
        for label, n in total.items():
            assert abs(counts[label] / n - fraction) < 0.03, (split, label, counts[label], n)


def test_deterministic_for_a_seed_and_input_order_and_different_for_another_seed():
    items = kermany_like()
    a = split_items(items, seed=1).splits
    b = split_items(list(reversed(items)), seed=1).splits
    c = split_items(items, seed=2).splits
    assert a == b
    assert a != c


def test_identical_pixels_from_two_patients_stay_together():
    items = [Item(f"n/{p}.png", "normal", str(p), f"h{p}") for p in range(40)]
    items.append(Item("n/dup.png", "normal", "999", "h7"))  # same pixels as patient 7, another patient id
    result = split_items(items, 0.3, 0.3, seed=0)
    where = {i.key: name for name, split in result.splits.items() for i in split}
    assert where["n/dup.png"] == where["n/7.png"]


def test_small_user_validation_is_replaced_and_the_summary_says_so():
    train = kermany_like(200, user_split="train")
    val = kermany_like(6, user_split="val", prefix="v")  # Kaggle's val/ has 16 images
    result = split_items(train + val, 0.15, 0.0)
    assert any("too few" in note for note in result.notes)
    assert {i.key for i in val} <= {i.key for s in result.splits.values() for i in s}
    assert len(result.splits["validation"]) > len(val)
    assert result.splits["test"] == []


def test_large_user_validation_and_test_are_honoured():
    train = kermany_like(300, user_split="train")
    val = kermany_like(MIN_USER_VALIDATION, user_split="val", prefix="v")
    test = kermany_like(50, user_split="test", prefix="t")
    result = split_items(train + val + test)
    assert sorted(result.splits["validation"], key=lambda i: i.key) == sorted(val, key=lambda i: i.key)
    assert sorted(result.splits["test"], key=lambda i: i.key) == sorted(test, key=lambda i: i.key)
    assert len(result.splits["train"]) == len(train)


def test_a_patient_in_the_users_test_split_is_dropped_from_train():
    test = [Item("t/a.png", "normal", "42", "ha", "test")]
    train = [Item("n/b.png", "normal", "42", "hb", "train")] + kermany_like(30, user_split="train")
    result = split_items(test + train)
    assert "n/b.png" not in {i.key for s in ("train", "validation") for i in result.splits[s]}
    assert any("dropped" in note for note in result.notes)


def test_fractions_are_checked():
    with pytest.raises(ValueError):
        split_items(kermany_like(10), 0.6, 0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["normal", "bacterial", "viral"]), st.integers(0, 30),
                          st.booleans(), st.integers(0, 60)), min_size=1, max_size=120))
def test_property_no_patient_or_image_in_two_splits(rows):
    items = [Item(f"{label}/{n}-{p}-{h}.png", label, str(p) if known else None, f"h{h}")
             for n, (label, p, known, h) in enumerate(rows)]
    result = split_items(items, 0.2, 0.2, seed=0)
    seen: dict[str, str] = {}
    for name, split in result.splits.items():
        for item in split:
            for token in (group_of(item), item.content_hash):
                assert seen.setdefault(token, name) == name
