"""The pure rules of one current outcome per source key (lambdas/domain/source_state.py)."""

import tracemalloc

import pytest

import seeded
from lambdas.domain import source_state
from lambdas.domain.source_state import Claim


def test_sequencers_compare_after_left_padding_as_s3_documents():
    """S3: "left-pad the shorter value with zeros, and then do a lexicographical comparison"."""
    assert source_state.sequencer_rank("F") < source_state.sequencer_rank("10")  # 15 < 16
    assert source_state.sequencer_rank("0055AED6DCD90281E5") < source_state.sequencer_rank("0055AED6DCD90281E6")
    assert source_state.sequencer_rank("00a1") == source_state.sequencer_rank("A1")  # case and padding agnostic
    with pytest.raises(ValueError):
        source_state.sequencer_rank("not-hex")


@pytest.mark.parametrize(("key", "scope"), [
    ("raw/kermany/train/NORMAL/a.png", "raw/kermany"),
    ("raw/loose.png", "raw"),
    ("incoming/cli-1/0000/x.png", "incoming"),
])
def test_records_live_in_their_datasets_partition(key, scope):
    assert source_state.scope(key) == scope
    assert source_state.partition("b", key) == f"b/{scope}"


def test_each_upload_owns_its_image_name():
    assert source_state.output_id("raw/d/NORMAL/a.png", "h") != source_state.output_id("raw/d/NORMAL/b.png", "h")
    assert source_state.output_id("raw/d/NORMAL/a.png", "h") == source_state.output_id("raw/d/NORMAL/a.png", "h")


def test_one_label_trains_two_labels_conflict():
    assert source_state.resolve_group({"a": Claim("normal"), "b": Claim("normal")}) == {
        "a": source_state.GroupVerdict(True), "b": source_state.GroupVerdict(True)}
    verdicts = source_state.resolve_group({"a": Claim("normal"), "b": Claim("bacterial"), "c": Claim("normal")})
    assert not any(v.trains for v in verdicts.values())
    assert verdicts["a"] == source_state.GroupVerdict(False, source_state.CONFLICTING_LABELS, (("b", "bacterial"),))
    assert verdicts["b"].others == (("a", "normal"), ("c", "normal"))
    assert "b (bacterial)" in verdicts["a"].message("normal")


def test_a_reviewed_verdict_decides_its_group():
    verdicts = source_state.resolve_group({"a": Claim("normal"), "b": Claim("bacterial"),
                                           "r": Claim("bacterial", source_state.REVIEW)})
    assert verdicts["r"].trains and verdicts["b"].trains
    assert verdicts["a"] == source_state.GroupVerdict(False, source_state.OVERRULED, (("r", "bacterial"),))
    split = source_state.resolve_group({"r1": Claim("normal", source_state.REVIEW),
                                        "r2": Claim("viral", source_state.REVIEW), "a": Claim("normal")})
    assert not any(v.trains for v in split.values())  # two reviews that disagree: a conflict again


def processed(key: str, content_hash: str, label: str = "normal") -> dict:
    return {"outcome": "processed", "source": {"name": key, "version_id": "v1"},
            "image": {"content_hash": content_hash, "label": label, "processed_key": f"processed/{key}.png",
                      "metadata_key": f"processed/{key}.json", "patient_id": None, "split": None}}


def test_training_sees_current_images_once_and_no_conflict():
    records = [processed("raw/d/NORMAL/b", "h1"), processed("raw/d/NORMAL/a", "h1"), processed("raw/d/NORMAL/c", "h2"),
               processed("raw/d/NORMAL/x", "h3"), processed("raw/d/VIRAL/y", "h3", "viral"),
               {"outcome": "quarantined", "source": {"name": "raw/d/NORMAL/q"}}, {"outcome": "deleted", "source": {}}]
    assert [i.source_name for i in source_state.training_view(records)] == ["raw/d/NORMAL/a", "raw/d/NORMAL/c"]


def test_check_names_missing_stale_and_duplicated_keys():
    a, b, c, d, e = (f"raw/d/NORMAL/{n}" for n in "abcde")
    records = {a: processed(a, "h1"), b: processed(b, "h2"), c: processed(c, "h3"), e: {**processed(e, "h5"),
                                                                                          "pending": True}}
    present = {*source_state.outputs(records[b]), *source_state.outputs(records[c]), "processed/old.json",
               *source_state.outputs(records[e])}
    current = {a: "v1", b: "v2", c: "v1", d: "v1", e: "v1"}
    findings = source_state.check_dataset(current, {key: source_state.checked(r) for key, r in records.items()},
                                          present, {"processed/old.json": c})
    assert {(f.key, f.problem) for f in findings} == {
        (a, "missing"),  # its image and sidecar are gone
        (b, "stale"),  # recorded for v1, v2 is current
        (c, "duplicated"),  # a second, older sidecar beside its current one
        (d, "missing"),  # no record at all
        (e, "stale"),  # events not handled yet
    }


def test_training_view_keeps_a_compact_item_per_image_not_the_records():
    """PrepareDataset streams a dataset's records through the view (200,000 at scale): what it holds grows by a
    small item per image, not by the records (about 2 KB each as Python objects), which it never lists."""
    count = 4000
    tracemalloc.start()
    try:
        view = source_state.training_view(seeded.records("cxr-data", "big", count))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(view) == count and view == sorted(view, key=lambda item: (item.content_hash, item.source_name))
    assert peak < count * 700, f"{peak / count:.0f} bytes held per record"
