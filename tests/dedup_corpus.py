"""Corpora with planted duplicates for the dedup tests: English and Chinese, with the truth.

English base documents are pydoc topics cut at paragraph breaks into 100-400 word pieces;
Chinese ones join two paragraphs of tests/fixtures/zh_paragraphs.txt (each paragraph used by
several documents, so distinct documents overlap partly, as real ones do). Plants: an exact
copy, reflowed whitespace, one or two edited words, an appended footer line.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

from lmforge.data.dedup.shingles import simplify

ZH_FIXTURE = Path(__file__).parent / "fixtures" / "zh_paragraphs.txt"
PLANT_KINDS = ("exact", "reflow", "edit1", "edit2", "footer")
EN_WORDS = ["banana", "quietly", "orbit", "lantern", "velvet", "harbor", "meadow", "copper"]
ZH_WORDS = ["蓝天", "月亮", "火车", "森林", "钢琴", "雨伞", "花园", "咖啡"]
EN_FOOTER = "\n\nThis article was shared from our community forum, subscribe for more."
ZH_FOOTER = "\n\n本文转载自网络，如有侵权请联系删除。"


@dataclass
class Corpus:
    texts: list[str]
    group: list[int]  # documents with the same group are duplicates of each other
    planted: list[tuple[int, int]]  # (base document, its planted variant)
    kinds: list[str]  # kind of each planted pair


def zh_paragraphs() -> dict[str, list[str]]:
    """Topic -> paragraphs of the Chinese fixture."""
    by_topic: dict[str, list[str]] = {}
    topic = ""
    for block in ZH_FIXTURE.read_text(encoding="utf-8").split("\n\n"):
        block = block.strip()
        if block.startswith("# "):
            topic, _, block = block.partition("\n")
            topic = topic[2:]
        by_topic.setdefault(topic, []).append(block.strip())
    return by_topic


def word_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = simplify(text).split()
    return {tuple(words[k : k + n]) for k in range(max(1, len(words) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def english_bases(seed: int = 0, max_jaccard: float = 0.5) -> list[str]:
    """Pieces of pydoc topics; pieces that repeat an earlier one (pydoc has a few) are left out."""
    kept: list[tuple[str, set]] = []
    for doc in _pydoc_pieces(seed):
        shingles = word_shingles(doc)
        if all(jaccard(shingles, other) < max_jaccard for _, other in kept):
            kept.append((doc, shingles))
    return [doc for doc, _ in kept]


def _pydoc_pieces(seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for text in topics.values():
        current: list[str] = []
        target = rng.randint(100, 400)
        for paragraph in text.split("\n\n"):
            current.append(paragraph)
            if sum(len(p.split()) for p in current) >= target:
                docs.append("\n\n".join(current))
                current, target = [], rng.randint(100, 400)
    return docs


def chinese_bases() -> list[str]:
    paragraphs = [p for ps in zh_paragraphs().values() for p in ps]
    n = len(paragraphs)
    return [paragraphs[k] + "\n" + paragraphs[(k + step) % n] for step in (1, 7) for k in range(n)]


def _reflow(text: str, chinese: bool) -> str:
    if chinese:
        return "  " + text.replace("\n", "\n\n    ") + " \n"
    return textwrap.fill(text, width=57, break_long_words=False, break_on_hyphens=False)


def _edit(text: str, edits: int, rng: random.Random, chinese: bool) -> str:
    if chinese:
        chars = list(text)
        for _ in range(edits):
            at = rng.randrange(0, len(chars) - 2)
            chars[at : at + 2] = rng.choice(ZH_WORDS)
        return "".join(chars)
    words = text.split(" ")
    for _ in range(edits):
        words[rng.randrange(len(words))] = rng.choice(EN_WORDS)
    return " ".join(words)


def plant(bases: list[str], chinese: bool, seed: int = 0) -> Corpus:
    """Every other base document gets one variant (kinds in turn), all shuffled together."""
    rng = random.Random(seed)
    entries = [(text, g, None) for g, text in enumerate(bases)]
    for n, g in enumerate(range(0, len(bases), 2)):
        kind = PLANT_KINDS[n % len(PLANT_KINDS)]
        text = bases[g]
        if kind == "reflow":
            text = _reflow(text, chinese)
        elif kind.startswith("edit"):
            text = _edit(text, int(kind[-1]), rng, chinese)
        elif kind == "footer":
            text += ZH_FOOTER if chinese else EN_FOOTER
        entries.append((text, g, kind))
    rng.shuffle(entries)
    base_at = {g: k for k, (_, g, kind) in enumerate(entries) if kind is None}
    planted = [(base_at[g], k) for k, (_, g, kind) in enumerate(entries) if kind]
    kinds = [kind for _, _, kind in entries if kind]
    return Corpus([e[0] for e in entries], [e[1] for e in entries], planted, kinds)
