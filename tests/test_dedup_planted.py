"""Planted duplicates through exact + near dedup, English and Chinese, two band settings."""

from __future__ import annotations

import numpy as np
import pytest

from dedup_corpus import Corpus, chinese_bases, english_bases, plant
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


def scores(corpus: Corpus, roots: np.ndarray) -> tuple[float, float, int]:
    """(recall on planted pairs, pair precision, merged pairs of distinct base documents)."""
    recall = np.mean([roots[base] == roots[copy] for base, copy in corpus.planted])
    group = np.asarray(corpus.group)
    upper = np.triu_indices(len(group), k=1)
    same_cluster = (roots[:, None] == roots[None, :])[upper]
    same_group = (group[:, None] == group[None, :])[upper]
    false_merges = int((same_cluster & ~same_group).sum())
    precision = 1 - false_merges / max(int(same_cluster.sum()), 1)
    return float(recall), precision, false_merges


@pytest.fixture(scope="module")
def corpora() -> dict[str, Corpus]:
    return {"en": plant(english_bases(), chinese=False), "zh": plant(chinese_bases(), chinese=True)}


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
