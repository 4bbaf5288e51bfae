"""Exact keys, shingles, exact MinHash arithmetic, band choice, candidates and clusters."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from dedup_corpus import chinese_bases, english_bases, jaccard, word_shingles
from lmforge.data.dedup.clusters import (
    ANCHORS,
    candidate_pairs,
    cluster_size_histogram,
    components,
    pair_similarity,
    representatives,
    split_views,
    verified_pairs,
)
from lmforge.data.dedup.exact import exact_keys, first_occurrence
from lmforge.data.dedup.minhash import (
    MERSENNE_61,
    MinHasher,
    band_keys,
    candidate_probability,
    choose_bands,
    permutation_hashes,
    permutation_parameters,
)
from lmforge.data.dedup.shingles import cjk_share, shingle_hashes, simplify

# ---------------------------------------------------------------- exact dedup


def test_exact_keys_ignore_whitespace_case_and_unicode_form():
    base = "The quick brown fox\njumps over the lazy dog."
    same = [
        "the  quick brown fox jumps\n\n over the LAZY dog.  ",
        "\tThe quick brown fox jumps over the lazy dog.",
        "Ｔｈｅ quick brown fox jumps over the lazy dog.",
    ]
    different = [
        "The quick brown fox jumps over the lazy cat.",
        "The quick brown fox jumps over the lazy dog",
    ]
    keys = exact_keys([base, *same, *different])
    assert keys.shape == (6, 2) and keys.dtype == np.uint64
    for k in (1, 2, 3):
        assert (keys[k] == keys[0]).all()
    for k in (4, 5):
        assert (keys[k] != keys[0]).any()


def test_exact_keys_chinese_and_surrogates():
    texts = ["天气很好，\n我们去公园。", "天气很\n好，我们去 公园。", "天气很好，我们去公园！",
             "안녕 하세요", "안녕하세요", "bad \udcff"]  # fmt: skip
    keys = exact_keys(texts)
    assert (keys[0] == keys[1]).all() and (keys[0] != keys[2]).any()
    assert (keys[3] != keys[4]).any()  # Korean spaces its words: a space is content


def test_first_occurrence_matches_a_dict_reference():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 40, size=(2000, 2)).astype(np.uint64)  # many repeats
    seen: dict[tuple[int, int], int] = {}
    expected = [seen.setdefault((int(a), int(b)), k) for k, (a, b) in enumerate(keys)]
    assert first_occurrence(keys).tolist() == expected
    assert first_occurrence(np.zeros((0, 2), np.uint64)).shape == (0,)


# ---------------------------------------------------------------- shingles


def test_simplify_is_datatrove_like():
    assert simplify("Hello,  WORLD!\nIt's 2024-05-17; café\u200b\tnaïve 3.14") == (
        "hello world it s 0 0 0 cafe naive 0 0"
    )
    assert simplify("价格：１２３元，“很好”。") == "价格 0元 很好"


def test_cjk_documents_use_character_shingles():
    zh = "今天天气很好，我们一起去公园散步吧。"
    assert cjk_share(simplify(zh)) > 0.9
    assert cjk_share(simplify("An English text that quotes 你好 once.")) < 0.3
    # spaces or line breaks inserted between Chinese characters change no character shingle
    spaced = "今天天气 很好，我们一起\n去公园散步吧。"
    hashes, offsets = shingle_hashes([zh, spaced], ngram=5, cjk_ngram=3)
    first, second = hashes[offsets[0] : offsets[1]], hashes[offsets[1] : offsets[2]]
    assert set(first.tolist()) == set(second.tolist())
    assert len(first) == len(simplify(zh).replace(" ", "")) - 2


def test_word_shingle_counts_and_short_documents():
    texts = ["one two three four five six seven", "one two", "", "One, TWO!"]
    hashes, offsets = shingle_hashes(texts, ngram=5, cjk_ngram=5)
    assert np.diff(offsets).tolist() == [3, 1, 1, 1]
    assert hashes.max() < 2**32
    assert hashes[offsets[1]] == hashes[offsets[3]]  # same simplified short text
    assert len({hashes[offsets[1]], hashes[offsets[2]], *hashes[:3].tolist()}) == 5


# ---------------------------------------------------------------- MinHash arithmetic


def test_permutations_are_exact_against_python_big_integers():
    rng = np.random.default_rng(1)
    a, b = permutation_parameters(64, seed=7)
    a = np.r_[a, np.uint64(MERSENNE_61 - 1), np.uint64(1)]
    b = np.r_[b, np.uint64(MERSENNE_61 - 1), np.uint64(0)]
    x = np.r_[rng.integers(0, 2**32, 500, dtype=np.uint64), np.uint64(2**32 - 1), np.uint64(0)]
    got = permutation_hashes(x, a, b)
    expected = [
        [(int(ai) * int(xj) + int(bi)) % MERSENNE_61 for xj in x]
        for ai, bi in zip(a, b, strict=True)
    ]
    assert got.tolist() == expected
    with pytest.raises(ValueError):
        permutation_hashes(np.array([2**32], dtype=np.uint64), a, b)


def test_parameters_are_full_range_and_seeded():
    a, b = permutation_parameters(256, seed=1)
    assert a.min() >= 1 and a.max() < MERSENNE_61 and b.max() < MERSENNE_61
    assert a.max() > 2**60 and b.max() > 2**60  # not restricted to 32 bits
    assert (permutation_parameters(256, seed=1)[0] == a).all()
    assert (permutation_parameters(256, seed=2)[0] != a).all()


def test_signatures_are_minima_of_the_permutations():
    texts = ["alpha beta gamma delta epsilon zeta eta theta", "天地玄黄宇宙洪荒日月盈昃"]
    hasher = MinHasher(num_perm=32, ngram=3, cjk_ngram=2, seed=5)
    hashes, offsets = shingle_hashes(texts, 3, 2)
    for d, signature in enumerate(hasher.signatures(texts)):
        values = permutation_hashes(hashes[offsets[d] : offsets[d + 1]], hasher.a, hasher.b)
        assert (signature == (values.min(axis=1) & 0xFFFFFFFF)).all()


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(3)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=7)) for _ in range(5000)]
    pairs, truth = [], []
    for _ in range(150):
        words = rng.sample(vocabulary, 200)
        edited = list(words)
        for at in rng.sample(range(200), rng.randint(1, 12)):
            edited[at] = rng.choice(vocabulary)
        pairs += [" ".join(words), " ".join(edited)]
        truth.append(jaccard(word_shingles(pairs[-2]), word_shingles(pairs[-1])))
    signatures = MinHasher(num_perm=128).signatures(pairs)
    estimate = pair_similarity(np.arange(0, 300, 2), np.arange(1, 300, 2), signatures)
    error = estimate - np.array(truth)
    assert abs(error.mean()) < 0.01  # unbiased
    assert 0.02 < error.std() < 0.05  # binomial: sqrt(J(1-J)/128) ~ 0.03 around J ~ 0.7


def test_signatures_do_not_depend_on_batch_or_process():
    texts = english_bases()[:40] + chinese_bases()[:20]
    hasher = MinHasher(num_perm=64, seed=3, batch_docs=7)
    hasher.chunk = 300  # documents straddle chunks
    whole = hasher.signatures(texts)
    assert whole.shape == (60, 64) and whole.dtype == np.uint32
    reordered = MinHasher(num_perm=64, seed=3).signatures(texts[::-1])[::-1]
    singles = np.vstack([MinHasher(num_perm=64, seed=3).signatures([t]) for t in texts[:5]])
    assert (whole == reordered).all() and (whole[:5] == singles).all()
    code = (
        "import sys; from lmforge.data.dedup.minhash import MinHasher; "
        "print(MinHasher(num_perm=64, seed=3).signatures([sys.argv[1]])[0].tolist())"
    )
    for hash_seed in ("1", "2"):
        env = {"PYTHONHASHSEED": hash_seed, "PATH": ""}
        command = [sys.executable, "-c", code, texts[41]]
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        assert json.loads(out.stdout) == whole[41].tolist()
    assert MinHasher(num_perm=64, seed=3).signatures([]).shape == (0, 64)


# ---------------------------------------------------------------- bands


def test_choose_bands_follows_the_documented_rule():
    for threshold, num_perm in [(0.8, 128), (0.8, 112), (0.7, 256), (0.9, 64), (0.5, 128)]:
        bands, rows = choose_bands(threshold, num_perm)
        assert bands * rows <= num_perm
        assert candidate_probability(threshold, bands, rows) >= 0.95
        best_low = candidate_probability(threshold - 0.1, bands, rows)
        for r in range(1, num_perm + 1):
            for b in range(1, num_perm // r + 1):
                if candidate_probability(threshold, b, r) >= 0.95:
                    assert candidate_probability(threshold - 0.1, b, r) >= best_low - 1e-12
    assert choose_bands(0.8, 128) == (13, 7)
    assert choose_bands(0.1, 8) == (8, 1)  # 0.95 unreachable: highest recall instead


def test_candidate_probability_matches_published_table():
    # FineWeb's 14 x 8: "56%, 77%, 92% and 98.8%" at 0.7, 0.75, 0.8, 0.85
    got = candidate_probability(np.array([0.7, 0.75, 0.8, 0.85]), 14, 8)
    assert np.round(got, 3).tolist() == [0.565, 0.772, 0.924, 0.988]


def test_band_keys_equal_exactly_where_bands_are_equal():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, size=(3, 24), dtype=np.uint32)
    sig[1, :8] = sig[0, :8]  # band 0 shared by documents 0 and 1
    sig[2] = sig[0]
    sig[2, 23] ^= 1  # document 2 differs from 0 only in the last band
    keys = band_keys(sig, bands=3, rows=8)
    assert keys.shape == (3, 3) and keys.dtype == np.uint64
    assert (keys[0] == keys[1]).tolist() == [True, False, False]
    assert (keys[0] == keys[2]).tolist() == [True, True, False]
    with pytest.raises(ValueError):
        band_keys(sig, bands=4, rows=8)


# ---------------------------------------------------------------- candidates and clusters


def test_candidate_pairs_small_buckets_give_all_pairs():
    keys = np.array([[5, 1], [7, 1], [5, 2], [9, 3], [5, 3], [8, 9]], dtype=np.uint64)
    i, j = candidate_pairs(keys)
    pairs = sorted(zip(i.tolist(), j.tolist(), strict=True))
    assert pairs == [(0, 1), (0, 2), (0, 4), (2, 4), (3, 4)]
    assert i.dtype == np.int64


def test_big_bucket_is_linked_without_quadratic_pairs():
    n = 500
    keys = np.zeros((n, 2), dtype=np.uint64)
    keys[:, 1] = np.arange(n)  # band 1: all different
    i, j = candidate_pairs(keys)
    assert len(i) < ANCHORS * n and (i < j).all()
    assert (components(n, i, j) == 0).all()


def test_verification_rejects_a_chance_member_and_keeps_the_rest():
    rng = np.random.default_rng(4)
    base = rng.integers(0, 2**32, size=64, dtype=np.uint32)
    sig = np.tile(base, (40, 1))
    sig[0, 8:] = rng.integers(0, 2**32, size=56, dtype=np.uint32)  # shares band 0 only
    for row in sig[1:]:
        row[rng.integers(8, 64, size=3)] ^= 1  # near copies of each other
    i, j = candidate_pairs(band_keys(sig, 8, 8))

    class Rows:  # what the lead passes: fancy indexing only
        fetched = 0

        def __getitem__(self, index):
            Rows.fetched += len(index)
            return sig[index]

    vi, vj = verified_pairs(i, j, Rows(), threshold=0.8)
    assert Rows.fetched <= 40
    roots = components(40, vi, vj)
    assert roots[0] == 0 and (roots[1:] == 1).all()


def test_components_roots_are_the_earliest_member_and_histogram():
    i = np.array([3, 5, 7, 2], dtype=np.int64)
    j = np.array([9, 7, 8, 9], dtype=np.int64)
    roots = components(10, i, j)
    assert roots.tolist() == [0, 1, 2, 2, 4, 5, 6, 5, 5, 2]
    assert cluster_size_histogram(roots) == {3: 2}
    assert components(0, i[:0], j[:0]).shape == (0,)


def test_representatives_skip_a_copy_cut_to_a_fraction():
    groups = np.array([0, 0, 0, 3, 3, 5, 9, 9, 9, 12, 12])
    kept = np.array([20, 100, 96, 100, 100, 50, 74, 100, 75, 0, 0])
    chosen = representatives(groups, kept)
    # group 0: the hard-wrapped first copy (20%) gives way to the earliest whole one;
    # 96% is within KEEP_SHARE of 100%, so input order decides; 75 is in, 74 is out
    assert chosen.tolist() == [1, 1, 1, 3, 3, 5, 7, 7, 7, 9, 9]
    assert representatives(np.array([7, 2, 7, 2]), np.array([10, 90, 40, 90])).tolist() == [
        2, 1, 2, 1]  # fmt: skip
    assert representatives(np.zeros(0, np.int64), np.zeros(0, np.uint8)).shape == (0,)


def test_dedup_views_are_taken_before_the_first_editing_step(tmp_path):
    from lmforge.data.config import DataConfig
    from lmforge.data.document import Doc
    from lmforge.data.layout import QUARANTINE_SCHEMA, PartWriter
    from lmforge.data.process import Features, _run_steps, kept_percent
    from lmforge.data.stats import Stats

    halves = [(f"Sentence number {n} of this page", "says something plain and true.")
              for n in ("one", "two", "three", "four")]  # fmt: skip
    lines = [line for pair in halves for line in pair]
    wrapped = "\n".join([*lines, "Write to me at a.b@example.com any time."])
    raw = "Plain\u00a0start  of\tthe page   \n" + wrapped
    docs = [Doc("a", raw, "s", "s:1")]
    steps = ["normalize", "length", "quality", "pii", "exact_dedup", "near_dedup"]
    gopher_off = {"enabled": False}
    quality = {"gopher_quality": gopher_off, "gopher_repetition": gopher_off}
    cfg = DataConfig(steps=steps, length={"min": 1}, quality=quality)
    drops = PartWriter(tmp_path / "drops.parquet", QUARANTINE_SCHEMA)
    kept, views = _run_steps(docs, Features(cfg), Stats(), "s", drops)
    assert kept == docs and views == ["Plain start of\tthe page\n" + wrapped]  # normalized only
    assert kept[0].text.startswith("says something")  # C4 cut the first halves
    assert "a.b@example.com" in views[0] and "a.b@example.com" not in kept[0].text  # PII too
    assert kept_percent([kept[0].text], views)[0] == 100 * len(kept[0].text) // len(views[0])
    no_edits = DataConfig(steps=["normalize", "exact_dedup"])
    kept, views = _run_steps([Doc("b", raw, "s", "s:2")], Features(no_edits), Stats(), "s", drops)
    assert views == [kept[0].text]
    assert kept_percent(["longer <EMAIL> text", "x"], ["a@b.c text", ""]).tolist() == [100, 100]


def test_pair_similarity_of_two_views_is_that_of_the_closest_two():
    rng = np.random.default_rng(5)
    before = rng.integers(0, 2**32, size=(4, 64), dtype=np.uint32)
    after = before.copy()
    before[1, :40] = before[0, :40]  # documents 0 and 1: 40/64 alike before the edits
    after[1, :60] = after[0, :60]  # ... and 60/64 after them
    after[2] = rng.integers(0, 2**32, size=64, dtype=np.uint32)
    before[3, :56] = after[2, :56]  # 3 before the edits is 56/64 like 2 after them
    sig = np.hstack([before, after])
    i, j = np.array([0, 0, 2]), np.array([1, 2, 3])
    assert pair_similarity(i, j, sig, views=2).tolist() == [60 / 64, 0.0, 56 / 64]
    assert pair_similarity(i, j, before).tolist() == [40 / 64, 0.0, 0.0]
    vi, vj = verified_pairs(i, j, sig, threshold=0.9, views=2)
    assert vi.tolist() == [0] and vj.tolist() == [1]


def test_candidate_pairs_match_any_view_of_one_with_any_view_of_the_other():
    before = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]], dtype=np.uint64)
    after = before.copy()  # documents 0 and 1: nothing edited
    after[2] = [11, 4]  # 2 after the edits shares a band with 1
    after[3] = [12, 13]
    before[4], after[4] = [12, 99], [98, 97]  # 3 after the edits shares one with 4 before
    keys = np.hstack([before, after])
    i, j = candidate_pairs(keys, views=2)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(1, 2), (3, 4)]
    assert candidate_pairs(before)[0].size == 0 and candidate_pairs(after)[0].tolist() == [1]
    rows, owner = split_views(keys, views=2)
    assert owner.tolist() == [0, 1, 2, 2, 3, 3, 4, 4]  # a view equal to the first is left out
    assert rows[3].tolist() == [11, 4]


def test_a_shard_done_with_another_feature_layout_is_redone(tmp_path):
    """`--resume` after an upgrade: feature files of the old layout (one view) are not read."""
    from types import SimpleNamespace

    from lmforge.data import layout
    from lmforge.data.process import FEATURE_LAYOUT, ShardTask, is_done
    from lmforge.io import atomic_write_json

    task = ShardTask(SimpleNamespace(index=3), None, tmp_path, "fp")
    marker = layout.work_file(tmp_path, "done", 3, ".json")
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"fingerprint": "fp", "docs": 5})
    assert not is_done(task)
    atomic_write_json(marker, {"fingerprint": "fp", "layout": FEATURE_LAYOUT, "docs": 5})
    assert is_done(task)
