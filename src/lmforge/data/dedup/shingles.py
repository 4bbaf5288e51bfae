"""Text -> shingle hashes for MinHash: word n-grams, or character n-grams for CJK text.

Text is first simplified the way datatrove's `simplify_text` does it, so that near copies
that differ only in case, numbers, punctuation, accents or line breaks share their shingles:
lowercase; every decimal digit run (any script) -> "0"; punctuation, symbols and whitespace
-> one space; accents on letters and other combining marks removed; format characters
(zero-width space, soft hyphen) removed.

A document whose non-space characters are at least `CJK_SHARE` Han, kana or Hangul is
shingled by characters (spaces dropped, since Chinese and Japanese do not mark word
boundaries and a reflowed copy must still match); any other document by words. A document
shorter than n tokens gives one shingle holding all of it, so short texts still dedup.

Hashing is batched: each word is hashed once with xxh3-64 (one C call per word, the only
per-token Python work), each character by a vectorized 64-bit mixer of its code point, and
the n tokens of every window are combined in numpy by a polynomial over the token hashes
followed by a full-avalanche mixer. Shingle hashes keep 32 bits (the high half) so that the
permutations in `minhash.py` can be computed exactly in 64-bit integers; with a few hundred
shingles per document, a 32-bit collision between two of them has probability ~1e-5.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import xxhash

CJK_SHARE = 0.3
_CJK_RANGES = (
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)
_ZERO_RUNS = re.compile("0{2,}")
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier combining the tokens of a window
_PAD = np.uint64(0)  # token that fills out a document shorter than n tokens


def mix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's fmix64 finalizer, vectorized: a bijection on uint64 with full avalanche."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@functools.cache
def _simplify_table() -> dict[int, str | None]:
    """str.translate table: digits -> '0', punctuation/symbols/spaces -> ' ', marks removed."""
    table: dict[int, str | None] = {}
    code_points = itertools.chain(range(0x20000), range(0xE0000, 0xE0200))
    for cp in code_points:
        ch = chr(cp)
        category = unicodedata.category(ch)
        if category == "Nd":
            table[cp] = "0"
        elif category[0] in "PSZ" or category == "Cc":
            table[cp] = " "
        elif category in ("Mn", "Cf"):
            table[cp] = None
        elif category[0] == "L":
            decomposed = unicodedata.normalize("NFD", ch)
            if any(unicodedata.category(c) == "Mn" for c in decomposed):
                table[cp] = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return table


def simplify(text: str) -> str:
    """Lowercase, digits -> 0, punctuation and spacing -> single spaces, accents removed."""
    return " ".join(_spaced_simplify(text).split())


def _spaced_simplify(text: str) -> str:
    """`simplify` without collapsing space runs: every kind of space is already ' '."""
    text = text.lower().translate(_simplify_table())
    if "00" in text:
        text = _ZERO_RUNS.sub("0", text)
    return text


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def cjk_share(simplified: str) -> float:
    """Share of Han/kana/Hangul among the non-space characters of a simplified text."""
    if simplified.isascii():
        return 0.0
    cps = code_points(simplified)
    cps = cps[cps != 32]
    if cps.size == 0:
        return 0.0
    is_cjk = np.zeros(cps.size, dtype=bool)
    for lo, hi in _CJK_RANGES:
        is_cjk |= (cps >= lo) & (cps <= hi)
    return float(is_cjk.mean())


def shingle_hashes(
    texts: Sequence[str], ngram: int, cjk_ngram: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hash the shingles of a batch of documents.

    Returns `(hashes, offsets)`: uint64 values below 2**32, the shingles of document d being
    `hashes[offsets[d]:offsets[d + 1]]` (at least one per document; repeats are kept, they
    do not change a minimum).
    """
    words: list[list[bytes]] = []
    chars: list[np.ndarray] = []
    is_cjk = np.zeros(len(texts), dtype=bool)
    for d, text in enumerate(texts):
        simple = _spaced_simplify(text)
        if cjk_share(simple) >= CJK_SHARE:
            is_cjk[d] = True
            chars.append(code_points(simple.replace(" ", "")))
        else:
            words.append(simple.encode("utf-8", "surrogatepass").split())
    word_counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    word_tokens = np.fromiter(
        map(xxhash.xxh3_64_intdigest, itertools.chain.from_iterable(words)),
        dtype=np.uint64,
        count=int(word_counts.sum()),
    )
    char_counts = np.fromiter(map(len, chars), dtype=np.int64, count=len(chars))
    char_tokens = mix64(np.concatenate(chars)) if chars else np.zeros(0, np.uint64)

    word_shingles, word_per_doc = _window_hashes(word_tokens, word_counts, ngram)
    char_shingles, char_per_doc = _window_hashes(char_tokens, char_counts, cjk_ngram)

    per_doc = np.empty(len(texts), dtype=np.int64)
    per_doc[~is_cjk] = word_per_doc
    per_doc[is_cjk] = char_per_doc
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(per_doc, out=offsets[1:])
    hashes = np.empty(int(offsets[-1]), dtype=np.uint64)
    hashes[_segment_positions(offsets[:-1][~is_cjk], word_per_doc)] = word_shingles
    hashes[_segment_positions(offsets[:-1][is_cjk], char_per_doc)] = char_shingles
    return hashes, offsets


def _segment_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, start + length) for every segment, vectorized."""
    total = int(lengths.sum())
    segment_begin = np.cumsum(lengths) - lengths
    return np.repeat(starts - segment_begin, lengths) + np.arange(total, dtype=np.int64)


def _window_hashes(tokens: np.ndarray, counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash every window of n consecutive tokens inside each document (32-bit results).

    `tokens` holds the token hashes of all documents back to back, `counts` how many each
    has. A document with fewer than n tokens is padded to one window.
    """
    padded = np.maximum(counts, n)
    padded_starts = np.cumsum(padded) - padded
    if np.array_equal(padded, counts):
        stream = tokens
    else:
        stream = np.full(int(padded.sum()), _PAD, dtype=np.uint64)
        stream[_segment_positions(padded_starts, counts)] = tokens
    span = len(stream) - n + 1  # every window of the stream, some crossing documents
    combined = stream[:span].copy()
    for k in range(1, n):
        combined *= _POLY
        combined += stream[k : k + span]
    windows = padded - n + 1
    combined = mix64(combined[_segment_positions(padded_starts, windows)])
    return combined >> np.uint64(32), windows


def word_ngrams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The word n-grams of the simplified text, as a set (for exact evaluation)."""
    words = simplify(text).split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    """True Jaccard similarity of two texts' word n-gram sets (for reports and evaluation;
    dedup itself estimates it from signatures)."""
    x, y = word_ngrams(a, n), word_ngrams(b, n)
    return len(x & y) / max(1, len(x | y))
