"""Planted duplicates through exact + near dedup, English and Chinese, two band settings.

The web corpora add copies with changed line breaks, edits and boilerplate, combined, and
distinct-but-similar documents (one template with different facts, shared site boilerplate).
These tests run the dedup functions on the texts themselves; test_dedup_pipeline.py runs the
same corpora through `data prepare` with its line filters.
"""

from __future__ import annotations

import numpy as np
import pytest

from dedup_corpus import (
    FILTERED_ONLY,
    WEB_KINDS,
    Corpus,
    chinese_bases,
    english_bases,
    plant,
    scores,
    web_corpus,
)
from lmforge.data.dedup.clusters import candidate_pairs, components, verified_pairs
from lmforge.data.dedup.exact import exact_keys, first_occurrence
from lmforge.data.dedup.minhash import MinHasher, band_keys, choose_bands

THRESHOLD = 0.8


def dedup_roots(texts: list[str], num_perm: int, bands: int, rows: int) -> np.ndarray:
    """Cluster root of every document: exact dedup first, then MinHash on the survivors."""
    first = first_occurrence(exact_keys(texts))
    survivors = np.flatnonzero(first == np.arange(len(texts)))
    signatures = MinHasher(num_perm=num_perm).signatures([texts[k] for k in survivors])
    i, j = candidate_pairs(band_keys(signatures, bands, rows))
    i, j = verified_pairs(i, j, signatures, THRESHOLD)
    near_roots = survivors[components(len(survivors), i, j)]
    return near_roots[np.searchsorted(survivors, first)]


@pytest.fixture(scope="module")
def corpora() -> dict[str, Corpus]:
    return {"en": plant(english_bases(), chinese=False), "zh": plant(chinese_bases(), chinese=True)}


@pytest.fixture(scope="module")
def web_corpora() -> dict[str, Corpus]:
    return {"en": web_corpus(chinese=False), "zh": web_corpus(chinese=True)}


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize(
    "num_perm,bands,rows",
    [(128, *choose_bands(THRESHOLD, 128)), (112, 14, 8)],
    ids=["default", "14x8"],
)
def test_planted_duplicates_found(corpora, language, num_perm, bands, rows):
    corpus = corpora[language]
    assert len(corpus.planted) >= 50 and len(set(corpus.group)) >= 100
    roots = dedup_roots(corpus.texts, num_perm, bands, rows)
    recall, precision, false_merges = scores(corpus, roots)
    print(f"{language} {bands}x{rows}: recall={recall:.3f} precision={precision:.3f} "
          f"false merges={false_merges}")  # fmt: skip
    assert recall >= 0.95
    assert precision >= 0.95


def test_every_plant_kind_is_present_and_reflow_is_exact(corpora):
    for language, corpus in corpora.items():
        assert set(corpus.kinds) == {"exact", "reflow", "edit1", "edit2", "footer"}, language
        keys = exact_keys(corpus.texts)
        for (base, copy), kind in zip(corpus.planted, corpus.kinds, strict=True):
            if kind in ("exact", "reflow"):
                assert (keys[base] == keys[copy]).all(), (language, kind)
            else:
                assert (keys[base] != keys[copy]).any(), (language, kind)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_web_copies_found_and_similar_documents_kept_apart(web_corpora, language):
    """Copies that only the line filters make duplicates (FILTERED_ONLY) do not count here:
    these texts are the unfiltered ones."""
    corpus = web_corpora[language]
    assert set(corpus.kinds) == set(WEB_KINDS) and len(corpus.planted) >= 70
    bands, rows = choose_bands(THRESHOLD, 128)
    roots = dedup_roots(corpus.texts, 128, bands, rows)
    for (_, copy), kind in zip(corpus.planted, corpus.kinds, strict=True):
        if kind in FILTERED_ONLY:
            roots[copy] = -1
    recall, precision, false_merges = scores(corpus, roots)
    print(f"{language} web: recall={recall:.3f} precision={precision:.3f} "
          f"false merges={false_merges}")  # fmt: skip
    assert recall >= 0.97
    assert precision >= 0.99


def test_changed_line_breaks_are_exact_duplicates(web_corpora):
    for language, corpus in web_corpora.items():
        keys = exact_keys(corpus.texts)
        for (base, copy), kind in zip(corpus.planted, corpus.kinds, strict=True):
            if kind in ("exact", "wrap", "join"):
                assert (keys[base] == keys[copy]).all(), (language, kind)
