"""KenLM perplexity scoring against a bigram ARPA model the test builds itself."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest

from dedup_corpus import zh_paragraphs
from lmforge.data.perplexity import (
    BACKENDS,
    Backend,
    kenlm_sentences,
    load_scorer,
    register_backend,
)
from lmforge.errors import UserError

DISCOUNT = 0.5


def bigram_probabilities(sentences: list[str]) -> tuple[dict, dict, dict]:
    """Absolute-discount bigrams backing off to add-one unigrams: (unigram, bigram, backoff)."""
    unigram_counts: Counter = Counter()
    bigram_counts: Counter = Counter()
    for sentence in sentences:
        tokens = ["<s>", *sentence.split(), "</s>"]
        unigram_counts.update(tokens[1:])
        bigram_counts.update(itertools.pairwise(tokens))
    vocabulary = [*sorted(unigram_counts), "<unk>"]
    total = sum(unigram_counts.values()) + len(vocabulary)
    unigram = {w: (unigram_counts[w] + 1) / total for w in vocabulary}
    history_counts: Counter = Counter()
    followers: dict[str, list[str]] = {}
    for (w1, w2), c in bigram_counts.items():
        history_counts[w1] += c
        followers.setdefault(w1, []).append(w2)
    bigram = {pair: (c - DISCOUNT) / history_counts[pair[0]] for pair, c in bigram_counts.items()}
    backoff = {
        w1: DISCOUNT * len(seen) / history_counts[w1] / (1 - sum(unigram[w] for w in seen))
        for w1, seen in followers.items()
    }
    return unigram, bigram, backoff


def write_arpa(path: Path, sentences: list[str]) -> tuple[dict, dict, dict]:
    unigram, bigram, backoff = bigram_probabilities(sentences)
    lines = ["\\data\\", f"ngram 1={len(unigram) + 1}", f"ngram 2={len(bigram)}", "", "\\1-grams:"]
    lines.append(f"-99\t<s>\t{math.log10(backoff['<s>']):.6f}")
    for word, p in unigram.items():
        lines.append(f"{math.log10(p):.6f}\t{word}\t{math.log10(backoff.get(word, 1.0)):.6f}")
    lines += ["", "\\2-grams:"]
    lines += [f"{math.log10(p):.6f}\t{w1} {w2}" for (w1, w2), p in bigram.items()]
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return unigram, bigram, backoff


def expected_perplexity(sentence: str, model: tuple[dict, dict, dict]) -> float:
    unigram, bigram, backoff = model
    tokens = ["<s>", *[w if w in unigram else "<unk>" for w in sentence.split()], "</s>"]
    log10_total = 0.0
    for w1, w2 in itertools.pairwise(tokens):
        p = bigram.get((w1, w2)) or backoff.get(w1, 1.0) * unigram[w2]
        log10_total += math.log10(p)
    return 10 ** (-log10_total / (len(tokens) - 1))


def english_lines() -> list[str]:
    names = ["for", "while", "if", "try", "with", "function", "class", "assignment", "import"]
    text = "\n".join(topics[name] for name in names)
    return [s for line in text.splitlines() for s in kenlm_sentences(line) if s]


@pytest.fixture(scope="module")
def english_model(tmp_path_factory) -> tuple[Path, tuple, list[str]]:
    lines = english_lines()
    held_out = lines[::10]
    training = [s for k, s in enumerate(lines) if k % 10]
    path = tmp_path_factory.mktemp("lm") / "en.arpa"
    return path, write_arpa(path, training), held_out


def test_kenlm_perplexity_is_the_documented_formula(english_model):
    path, model, held_out = english_model
    scorer = load_scorer(str(path))
    texts = [held_out[3], "the loop body zzqx", held_out[5]]
    got = scorer.score(texts)
    assert got.dtype == np.float32
    for text, value in zip(texts, got, strict=True):
        assert value == pytest.approx(expected_perplexity(" ".join(kenlm_sentences(text)), model),
                                      rel=1e-3)  # fmt: skip


def test_in_domain_text_scores_below_shuffled_and_gibberish(english_model):
    path, _, held_out = english_model
    rng = random.Random(0)
    in_domain, lines = [], []
    for line in held_out:
        lines.append(line)
        if sum(len(x.split()) for x in lines) >= 25:
            in_domain.append("\n".join(lines))
            lines = []
    in_domain = in_domain[:10]
    assert len(in_domain) == 10
    shuffled = []
    for text in in_domain:
        words = text.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    gibberish = [" ".join("".join(rng.choices("qxzjkvw", k=6)) for _ in range(40))] * 10
    scores = load_scorer(str(path)).score(in_domain + shuffled + gibberish)
    ours, mixed, noise = scores[:10], scores[10:20], scores[20:]
    assert np.median(ours) * 1.5 < np.median(mixed) and mixed.max() < noise.min()
    assert (ours < mixed).mean() >= 0.9


def test_chinese_is_scored_per_character(tmp_path):
    paragraphs = [p for ps in zh_paragraphs().values() for p in ps]
    path = tmp_path / "zh.arpa"
    write_arpa(path, [s for p in paragraphs[1::2] for s in kenlm_sentences(p)])
    sentences = kenlm_sentences("Python 是一种语言。\n\n第二行")
    assert sentences == ["python 是 一 种 语 言 。", "第 二 行"]
    rng = random.Random(1)
    in_domain = paragraphs[1::2][:10]
    shuffled = ["".join(rng.sample(p, len(p))) for p in in_domain]
    scores = load_scorer(str(path)).score(in_domain + shuffled)
    assert (scores[:10] * 2 < scores[10:]).all()


def test_model_errors_name_the_config_key(tmp_path):
    with pytest.raises(UserError, match=r"data\.perplexity\.model.*does not exist"):
        load_scorer(str(tmp_path / "missing.arpa"))
    with pytest.raises(UserError, match=r"data\.perplexity\.model.*KenLM model file"):
        load_scorer(str(tmp_path / "model.pt"))
    broken = tmp_path / "broken.arpa"
    broken.write_text("not an arpa file\n")
    with pytest.raises(UserError, match=r"data\.perplexity\.model.*not a readable KenLM"):
        load_scorer(str(broken))


def test_backends_are_chosen_by_spec(monkeypatch):
    class Constant:
        name = "constant"

        def score(self, texts):
            return np.full(len(texts), 7.0, dtype=np.float32)

    monkeypatch.setattr("lmforge.data.perplexity.BACKENDS", list(BACKENDS))
    register_backend(Backend("constant", "constant:N", lambda s: s.startswith("constant:"),
                             lambda s: Constant()))  # fmt: skip
    assert load_scorer("constant:1").score(["a", "b"]).tolist() == [7.0, 7.0]
