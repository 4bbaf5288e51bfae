"""Exact dedup: a 128-bit key of the normalized text, and the first row holding each key.

Normalization (NFKC, casefold, whitespace runs -> one space, stripped) makes copies that
differ only in Unicode form, case or line wrapping collide; anything else (a changed word,
a footer) is left to near dedup. Chinese and Japanese do not separate words by spaces, so
a line break inside their text is reflow, not content: whitespace next to a Han, kana or
CJK punctuation character is removed altogether (Korean, which spaces words, keeps it).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import xxhash

_UNSPACED = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_GAP = re.compile(f"\\s+(?=[{_UNSPACED}])|(?<=[{_UNSPACED}])\\s+")


def normalize_for_exact(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    if not text.isascii():
        text = _CJK_GAP.sub("", text)
    return " ".join(text.split())


def exact_keys(texts: Sequence[str]) -> np.ndarray:
    """xxh3-128 of each normalized text, as an (n, 2) uint64 array (one row per text)."""
    digests = b"".join(
        xxhash.xxh3_128_digest(normalize_for_exact(t).encode("utf-8", "surrogatepass"))
        for t in texts
    )
    return np.frombuffer(digests, dtype="<u8").reshape(len(texts), 2).copy()


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row with an equal key (itself when first)."""
    keys = np.asarray(keys)
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # stable: equal keys keep index order
    ordered = keys[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    group = np.cumsum(new_group) - 1
    first = np.empty(n, dtype=np.int64)
    first[order] = order[new_group][group]
    return first
