"""The out-of-distribution benchmark's corpus (``bench/ood_guard.py``): enough images, in every category it can make."""

from __future__ import annotations

from collections import Counter

from bench import ood_guard


def test_the_drawn_corpus_alone_has_over_200_images_in_three_categories():
    items = ood_guard.drawn_items()
    counts = Counter(item.category for item in items)
    assert sum(counts.values()) >= 200
    assert set(counts) == {"documents_screenshots", "synthetic", "transformed_xrays"}
    assert min(counts.values()) >= 40
    assert len({item.name for item in items}) == len(items)  # no image counted twice
    summary = ood_guard.summary(items)
    assert summary["transformed_xrays"]["distinct_sources"] == 16  # the 16 samples, five transforms each
    assert summary["synthetic"]["distinct_sources"] == summary["synthetic"]["images"]


def test_package_images_fill_the_other_categories_as_variants_of_their_sources():
    files = {"sklearn/china.jpg": ood_guard.encode(ood_guard.screenshot(1), "JPEG")}
    items = ood_guard.package_items(files | {"scikit-image/cell.png": ood_guard.encode(ood_guard.document(2))})
    by_category = Counter(item.category for item in items)
    assert by_category["natural_photographs"] == 4  # grey, colour, two crops of the one source
    assert by_category["other_medical"] == 5  # grey and four crops of a grey source: no colour copy
    assert {item.source for item in items} == {"sklearn/china.jpg", "scikit-image/cell.png"}
