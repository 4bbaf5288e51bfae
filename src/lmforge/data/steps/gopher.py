"""The Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", A.1.1).

Both rules read the same word list (lmforge.data.text.split_words: punctuation stripped, each
CJK character a word), computed once per document by the quality step.

Repetition is vectorized: words become integer ids once, n-gram ids are built from (n-1)-gram
ids and the next word id (exact, no hashing), and duplicates come from one sort per n. The
duplicate n-gram character fraction follows the paper: the characters of every word covered by
some n-gram that occurs more than once, each character counted once, over the characters of all
words. (datatrove instead walks the n-grams left to right, and on a repeat adds the n-gram's
length and jumps n words ahead; it undercounts overlapping repeats and counts spaces.) Coverage
by duplicated (n+1)-grams lies inside coverage by duplicated n-grams, so once a fraction is at or
below every larger n's threshold, the larger n cannot fire and are skipped.
"""

from __future__ import annotations

import re

import numpy as np

from lmforge.data.config import GopherQualityConfig, GopherRepetitionConfig
from lmforge.data.text import (
    CJK_CHAR_RE,
    EN_STOP_WORDS,
    JA_STOP_WORDS,
    ZH_STOP_WORDS,
    count_cjk,
    has_cjk,
)

Verdict = tuple[str, str] | None

BULLETS = frozenset("•‣◦●○■□▪▫–-*·")
_ELLIPSIS_RE = re.compile(r"\.{3,}|…+")
# A word without a letter: only digits, "_", or symbols left after stripping punctuation.
_NON_ALPHA_WORD_RE = re.compile(r"(?<!\S)(?:[\d_]|[^\w\s])+(?!\S)")
_PARAGRAPH_RE = re.compile(r"\n\s*\n")
_R = "gopher_repetition."


def compare(value: float, op: str, limit: float) -> str:
    """'0.42 > 0.30': two decimals, more when two decimals would make both sides look equal."""
    if isinstance(value, int) and isinstance(limit, int):
        return f"{value} {op} {limit}"
    digits = 2
    while f"{value:.{digits}f}" == f"{limit:.{digits}f}" and digits < 6:
        digits += 1
    return f"{value:.{digits}f} {op} {limit:.{digits}f}"


def above(rule: str, value: float, limit: float) -> Verdict:
    return (rule, compare(value, ">", limit)) if value > limit else None


def below(rule: str, value: float, limit: float) -> Verdict:
    return (rule, compare(value, "<", limit)) if value < limit else None


def _case_variants(words: frozenset[str] | list[str]) -> frozenset[str]:
    return frozenset(v for w in words for v in (w, w.lower(), w.capitalize(), w.upper()))


class GopherQuality:
    """Word count, mean word length, symbol ratios, bullet/ellipsis lines, alphabetic words,
    stop words. For CJK-dominant text (half the words or more are CJK characters) the mean
    word length rule is skipped (a CJK character is a one-character word by construction)."""

    def __init__(self, cfg: GopherQualityConfig) -> None:
        self.cfg = cfg
        stop_words = cfg.stop_words
        if stop_words is None:
            self.spaced_stop_words = _case_variants(EN_STOP_WORDS)
            self.cjk_stop_words = ZH_STOP_WORDS | JA_STOP_WORDS
        else:
            cjk = {w for w in stop_words if CJK_CHAR_RE.search(w)}
            self.spaced_stop_words = _case_variants([w for w in stop_words if w not in cjk])
            self.cjk_stop_words = frozenset(cjk)

    def check(self, text: str, words: list[str]) -> Verdict:
        cfg = self.cfg
        n = len(words)
        verdict = (
            below("gopher_quality.min_words", n, cfg.min_words)
            or above("gopher_quality.max_words", n, cfg.max_words)
            or self._mean_word_length(text, words)
            or above("gopher_quality.hash_ratio", text.count("#") / n, cfg.max_symbol_word_ratio)
        )
        if verdict:
            return verdict
        ellipses = len(_ELLIPSIS_RE.findall(text)) / n
        verdict = above("gopher_quality.ellipsis_ratio", ellipses, cfg.max_symbol_word_ratio)
        verdict = verdict or self._lines(text)
        if verdict:
            return verdict
        alpha = 1 - len(_NON_ALPHA_WORD_RE.findall(" ".join(words))) / n
        verdict = below("gopher_quality.alpha_words", alpha, cfg.min_alpha_words_ratio)
        if verdict:
            return verdict
        stops = self._count_stop_words(text, words)
        return below("gopher_quality.stop_words", stops, cfg.min_stop_words)

    def _mean_word_length(self, text: str, words: list[str]) -> Verdict:
        cjk_words = count_cjk(text)  # every CJK character is a one-character word
        spaced = len(words) - cjk_words
        if spaced * 2 <= len(words):
            return None
        mean = (sum(map(len, words)) - cjk_words) / spaced
        rule = "gopher_quality.mean_word_length"
        return below(rule, mean, self.cfg.min_mean_word_length) or above(
            rule, mean, self.cfg.max_mean_word_length
        )

    def _lines(self, text: str) -> Verdict:
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            return None
        bullets = sum(1 for line in lines if line[0] in BULLETS) / len(lines)
        ellipsis = sum(1 for line in lines if line.endswith(("...", "…"))) / len(lines)
        return above("gopher_quality.bullet_lines", bullets, self.cfg.max_bullet_lines_ratio) or (
            above("gopher_quality.ellipsis_lines", ellipsis, self.cfg.max_ellipsis_lines_ratio)
        )

    def _count_stop_words(self, text: str, words: list[str]) -> int:
        """Distinct stop words present ("at least two of the following words", as the paper
        says; "the the" is one): spaced ones as words, any case; CJK ones as substrings."""
        needed = self.cfg.min_stop_words
        found: set[str] = set()
        for word in words:
            if word in self.spaced_stop_words:
                found.add(word.lower())
                if len(found) >= needed:
                    return len(found)
        if self.cjk_stop_words and has_cjk(text):
            found.update(word for word in self.cjk_stop_words if word in text)
        return len(found)


def _dense_ids(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map keys to dense ids 0..U-1 (equal keys, equal ids); return (ids, count of each id)."""
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.empty(len(ordered), dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    ids = np.empty(len(keys), dtype=np.int64)
    ids[order] = np.cumsum(starts) - 1
    boundaries = np.flatnonzero(starts)
    counts = np.diff(boundaries, append=len(ordered))
    return ids, counts


def _covered_chars(starts: np.ndarray, n: int, lengths: np.ndarray) -> int:
    """Characters of the words covered by the n-grams starting where `starts` is True."""
    covering = np.convolve(starts.astype(np.int32), np.ones(n, dtype=np.int32))[: len(lengths)]
    return int(lengths[covering > 0].sum())


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, their total characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _top_chars(
    gram_ids: np.ndarray, occurrences: np.ndarray, n: int, lengths: np.ndarray,
    cumulative: np.ndarray,
) -> int:  # fmt: skip
    """Characters covered by the most frequent n-gram (the longest one among ties); 0 when no
    n-gram repeats."""
    most = int(occurrences.max())
    if most < 2:
        return 0
    gram_chars = cumulative[n:] - cumulative[:-n]
    candidates = np.flatnonzero(occurrences == most)
    best = gram_ids[candidates[np.argmax(gram_chars[candidates])]]
    return _covered_chars(gram_ids == best, n, lengths)


class GopherRepetition:
    """Duplicate lines/paragraphs (by count and by characters), top n-gram and duplicate n-gram
    character fractions (Table A1). Blank lines are not lines: a blank line between every
    paragraph would otherwise make a third of the lines "duplicates"."""

    def __init__(self, cfg: GopherRepetitionConfig) -> None:
        self.cfg = cfg
        self.top = sorted(cfg.max_top_ngram_char_fraction.items())
        self.dup = sorted(cfg.max_dup_ngram_char_fraction.items())
        self.max_n = max([n for n, _ in self.top + self.dup], default=1)

    def check(self, text: str, words: list[str]) -> Verdict:
        if not text.strip():
            return None
        verdict = self._lines_and_paragraphs(text)
        if verdict or len(words) < 2:
            return verdict
        return self._ngrams(words)

    def _lines_and_paragraphs(self, text: str) -> Verdict:
        cfg = self.cfg
        size = len(text)
        for unit, parts, max_fraction, max_char_fraction in (
            ("line", text.splitlines(), cfg.max_dup_line_fraction, cfg.max_dup_line_char_fraction),
            (
                "para",
                _PARAGRAPH_RE.split(text),
                cfg.max_dup_para_fraction,
                cfg.max_dup_para_char_fraction,
            ),
        ):
            parts = [part for part in parts if part.strip()]
            dups, dup_chars = _duplicates(parts)
            verdict = above(f"{_R}dup_{unit}_fraction", dups / len(parts), max_fraction) or (
                above(f"{_R}dup_{unit}_char_fraction", dup_chars / size, max_char_fraction)
            )
            if verdict:
                return verdict
        return None

    def _ngrams(self, words: list[str]) -> Verdict:
        vocab: dict[str, int] = {}
        word_ids = np.array([vocab.setdefault(w, len(vocab)) for w in words], dtype=np.int64)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        cumulative = np.concatenate(([0], np.cumsum(lengths)))
        total = int(cumulative[-1])
        top = dict(self.top)
        dup = dict(self.dup)
        gram_ids = word_ids
        for n in range(2, min(self.max_n, len(words)) + 1):
            keys = gram_ids[:-1] * len(vocab) + word_ids[n - 1 :]
            gram_ids, counts = _dense_ids(keys)
            if len(counts) == len(keys):
                return None  # every n-gram unique: no larger n-gram repeats either
            occurrences = counts[gram_ids]
            if n in top:
                fraction = _top_chars(gram_ids, occurrences, n, lengths, cumulative) / total
                verdict = above(f"{_R}top_{n}gram_char_fraction", fraction, top[n])
                if verdict:
                    return verdict
            if n in dup:
                fraction = _covered_chars(occurrences > 1, n, lengths) / total
                verdict = above(f"{_R}dup_{n}gram_char_fraction", fraction, dup[n])
                if verdict:
                    return verdict
                if n >= max(top, default=0) and all(fraction <= t for m, t in dup.items() if m > n):
                    return None
        return None
