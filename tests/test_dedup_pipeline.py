"""Dedup through `data prepare` with the default recipe (C4's line rules on), English and Chinese.

C4 judges each line on its own, so two copies of one page whose line breaks differ (one
hard-wrapped, one with a line per paragraph) lose different lines, and their filtered texts
can share little. Dedup compares the text before line edits, does not keep a copy the line
rules cut to a fraction when a whole one exists, and still writes the filtered text.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from dedup_corpus import (
    EN_CHROME,
    ZH_CHROME,
    Corpus,
    chinese_web_bases,
    english_web_bases,
    jaccard,
    scores,
    shingle_set,
    web_corpus,
    web_variant,
)
from lmforge.cli import main
from lmforge.data.config import DataConfig
from lmforge.data.dedup.clusters import pair_similarity
from lmforge.data.dedup.minhash import MinHasher
from lmforge.data.layout import QUARANTINE, SPLITS, read_parts
from lmforge.data.steps.c4 import C4Rules
from lmforge.data.table import verification_threshold

DEDUP_STEPS = ("exact_dedup", "near_dedup", "split")


def prepare(corpus: Corpus, folder: Path, *extra: str) -> dict[str, list[dict]]:
    """Run the default recipe on the corpus (ids doc0000, doc0001, ...); all output rows."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"id": f"doc{k:04d}", "text": t}, ensure_ascii=False) for k, t in
             enumerate(corpus.texts)]  # fmt: skip
    (folder / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = folder / "out"
    assert main(["data", "prepare", str(folder / "in.jsonl"), "-o", str(out), "--workers=1",
                 *extra]) == 0  # fmt: skip
    return {where: read_parts(out / where).to_pylist() for where in (*SPLITS, QUARANTINE)}


def cluster_roots(rows: dict[str, list[dict]], n: int) -> np.ndarray:
    """Index of the kept document each document's dedup chain ends at; -1 for a document a
    per-document filter dropped (it never reached dedup)."""
    parent = {r["id"]: r["id"] for where in SPLITS for r in rows[where]}
    for r in rows[QUARANTINE]:
        if r["step"] in DEDUP_STEPS and r["duplicate_of"]:
            parent[r["id"]] = r["duplicate_of"]
    roots = np.full(n, -1, dtype=np.int64)
    for k in range(n):
        doc = f"doc{k:04d}"
        if doc not in parent:
            continue
        while parent[doc] != doc:
            doc = parent[doc]
        roots[k] = int(doc[3:])
    return roots


@pytest.fixture(scope="module", params=["en", "zh"])
def outcome(request, tmp_path_factory) -> tuple[str, Corpus, dict, np.ndarray]:
    corpus = web_corpus(chinese=request.param == "zh")
    rows = prepare(corpus, tmp_path_factory.mktemp(request.param) / "run")
    return request.param, corpus, rows, cluster_roots(rows, len(corpus.texts))


def test_recall_and_precision_with_line_filters_on(outcome):
    language, corpus, rows, roots = outcome
    both = [roots[a] >= 0 and roots[b] >= 0 for a, b in corpus.planted]
    wrapped = [ok for ok, kind in zip(both, corpus.kinds, strict=True) if "wrap" in kind]
    assert sum(both) >= 0.75 * len(corpus.planted) and sum(wrapped) >= 8
    recall, precision, false_merges = scores(corpus, roots)
    print(f"{language} prepare: recall={recall:.3f} precision={precision:.3f} "
          f"false merges={false_merges} pairs={sum(both)}")  # fmt: skip
    assert recall >= 0.97
    assert precision >= 0.99
    lines_removed = [r for r in rows[QUARANTINE] if r["reason"] == "c4.too_few_sentences"]
    assert lines_removed, "the corpus must exercise C4's line rules"


def test_a_copy_the_line_rules_cut_to_a_fraction_is_not_the_one_kept(outcome):
    language, corpus, rows, roots = outcome
    written = {r["id"]: r["text"] for where in SPLITS for r in rows[where]}
    checked = 0
    for (base, copy), kind in zip(corpus.planted, corpus.kinds, strict=True):
        if kind == "wrap" and roots[base] >= 0 and roots[copy] >= 0:
            assert roots[base] == roots[copy] == base, language  # the unwrapped copy stays
            assert written[f"doc{base:04d}"] == corpus.texts[base].strip()
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("language", ["en", "zh"])
def test_any_change_of_whitespace_or_line_breaks_is_an_exact_duplicate(tmp_path, language):
    """Hostile layouts of one page: CRLF, CR, Unicode line and paragraph separators, form
    feeds, tabs, no-break and ideographic spaces, indentation, blank-line runs, short lines
    that C4 mostly removes, no line breaks at all; through the default recipe, the page
    stays once (the first copy: all but the short-line one kept as much of it) and every
    other layout is an exact duplicate of it."""
    base = web_corpus(chinese=language == "zh", templates=0).texts[0]
    gap = "" if language == "zh" else " "
    words = base.split() if language == "en" else list(base.replace("\n", ""))
    if language == "zh":  # a line per clause: only the clauses that end a sentence survive C4
        short_lines = re.sub("(?<=[，。；、])", "\n", base.replace("\n", ""))
    else:  # seven words a line: C4 keeps the few that end a sentence
        short_lines = "\n".join(" ".join(words[k : k + 7]) for k in range(0, len(words), 7))
    layouts = [
        base.replace("\n", "\r\n"),
        base.replace("\n", "\r"),
        base.replace("\n\n", "\u2029").replace("\n", "\u2028"),
        "\f" + base.replace("\n", "\n\t") + "\v",
        base.replace(" ", "\u00a0 ") if language == "en" else "\u3000\u3000" + base,
        "\n\n\n".join("    " + p for p in base.split("\n")),
        short_lines,
        gap.join(words),
    ]
    corpus = Corpus([base, *layouts], [0] * (1 + len(layouts)), [], [])
    rows = prepare(corpus, tmp_path / "run")
    kept = [r["id"] for where in SPLITS for r in rows[where]]
    dropped = {r["id"]: r for r in rows[QUARANTINE]}
    assert kept == ["doc0000"] and len(dropped) == len(layouts), dropped
    assert {r["reason"] for r in dropped.values()} == {"exact_duplicate"}
    assert {r["duplicate_of"] for r in dropped.values()} == {"doc0000"}


SITE_NAV = {  # more navigation lines (none ends a sentence: C4 removes them all)
    "en": ("About us", "Contact the editors", "Site map", "Jobs at Example", "Popular tags",
           "Download our app", "Follow us on Mastodon", "Help centre", "Newsletter archive",
           "Print this page", "Terms and conditions", "Our authors"),
    "zh": ("关于我们", "联系我们", "网站地图", "友情链接", "手机版", "热门标签", "下载客户端",
           "帮助中心", "往期回顾", "打印本页", "用户协议", "作者列表", "下载我们的手机客户端",
           "加入读者交流群", "关注官方微博账号"),
}  # fmt: skip


def site_nav(language: str) -> list[str]:
    chrome = ZH_CHROME if language == "zh" else EN_CHROME
    return [line for line in chrome if not line.endswith((".", "。"))] + list(SITE_NAV[language])


def paragraphs(language: str, k: int) -> list[str]:
    """The paragraphs of web base document k."""
    zh = language == "zh"
    return (chinese_web_bases() if zh else english_web_bases())[k].split("\n" if zh else "\n\n")


def edit_a_word(paragraphs: list[str], language: str) -> list[str]:
    first = paragraphs[0]
    if language == "zh":
        return [first[:40] + "森林" + first[42:], *paragraphs[1:]]
    words = first.split(" ")
    return [" ".join([*words[:5], "banana", *words[6:]]), *paragraphs[1:]]


def framed(paragraphs: list[str], nav: list[str], gap: str) -> str:
    """The paragraphs with a site's navigation lines before, between and after them."""
    slots = len(paragraphs) + 1
    blocks = [[*nav[s::slots], p] for s, p in enumerate(paragraphs)]
    return gap.join([line for block in blocks for line in block] + nav[slots - 1 :: slots])


def signature_agreement(a: str, b: str) -> float:
    """Dedup's own estimate of the two texts' Jaccard similarity."""
    d = DataConfig().dedup
    sig = MinHasher(d.num_perm, d.ngram, d.cjk_ngram, seed=d.seed).signatures([a, b])
    return float(pair_similarity(np.array([0]), np.array([1]), sig)[0])


@pytest.mark.parametrize("language", ["en", "zh"])
def test_copies_that_differ_mostly_in_lines_the_filters_remove_are_duplicates(tmp_path, language):
    """Two sites' own navigation lines around the paragraphs of one article, a word edited in
    one copy: before the line edits the copies are not near duplicates (by dedup's own
    estimate), after them they are, so dedup keeps one."""
    zh = language == "zh"
    gap = "\n" if zh else "\n\n"
    article = paragraphs(language, 0)[:2]
    nav = site_nav(language)
    half = len(nav) // 2
    site_a = framed(article, nav[:half], gap)
    site_b = framed(edit_a_word(article, language), nav[half:], gap)
    assert jaccard(shingle_set(site_a, zh), shingle_set(site_b, zh)) < 0.7
    assert signature_agreement(site_a, site_b) < verification_threshold(DataConfig())
    rows = prepare(Corpus([site_a, site_b], [0, 0], [], []), tmp_path / "run")
    assert [r["text"] for where in SPLITS for r in rows[where]] == [gap.join(article)]
    assert [(r["reason"], r["duplicate_of"]) for r in rows[QUARANTINE]] == [
        ("near_duplicate", "doc0000")]  # fmt: skip


@pytest.mark.parametrize("language", ["en", "zh"])
def test_a_hard_wrapped_copy_and_a_copy_with_navigation_are_duplicates(tmp_path, language):
    """The line rules cut the navigation from one copy and most of the other, hard-wrapped,
    copy: neither their texts before the line edits nor after them are alike, but the one's
    text after them is the other's before them. Two articles (no paragraph shared, and
    their wrapped copies pass C4), a word edited in the second one's navigation copy: the
    copy with navigation is kept both times, though the wrapped one comes first."""
    zh = language == "zh"
    gap = "\n" if zh else "\n\n"
    rules = C4Rules(DataConfig().quality.c4)
    texts = []
    for k, edit in zip({"en": (10, 4), "zh": (0, 8)}[language], (False, True), strict=True):
        article = paragraphs(language, k)
        wrapped = web_variant(gap.join(article), "wrap", random.Random(k), zh)
        with_nav = framed(edit_a_word(article, language) if edit else article, site_nav(language),
                          gap)  # fmt: skip
        filtered = (rules.apply(wrapped).text, rules.apply(with_nav).text)
        for one, other in ((wrapped, with_nav), filtered):  # before the line edits, after them
            assert jaccard(shingle_set(one, zh), shingle_set(other, zh)) < 0.7
            assert signature_agreement(one, other) < verification_threshold(DataConfig())
        texts += [wrapped, with_nav]
    rows = prepare(Corpus(texts, [0, 0, 1, 1], [], []), tmp_path / "run")
    assert sorted(r["id"] for where in SPLITS for r in rows[where]) == ["doc0001", "doc0003"]
    assert sorted((r["id"], r["reason"], r["duplicate_of"]) for r in rows[QUARANTINE]) == [
        ("doc0000", "exact_duplicate", "doc0001"),
        ("doc0002", "near_duplicate", "doc0003"),
    ]
