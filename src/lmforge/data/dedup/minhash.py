"""MinHash signatures, LSH band keys, and the choice of bands x rows for a Jaccard threshold.

Permutations are the textbook universal family h_i(x) = (a_i * x + b_i) mod (2**61 - 1)
with a_i in [1, p) and b_i in [0, p), computed exactly. Numpy MinHash code elsewhere
multiplies 61-bit a by 64-bit x in uint64 and silently wraps modulo 2**64 before the
mod p (datatrove#198, datasketch#239). Here shingle hashes x are below 2**32, a is split
as a_hi * 2**31 + a_lo, and every partial product and sum provably stays below 2**64
(see `permutation_hashes`). A signature entry is the low 32 bits of the 61-bit minimum
(b-bit minwise hashing with b = 32: two different minima collide with probability 2**-32).

Parameters come from xxh3 of the seed and the index, so they do not depend on numpy's
random generators and are identical on every machine and library version.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

from lmforge.data.dedup.shingles import mix64, shingle_hashes

MERSENNE_61 = (1 << 61) - 1
_P = np.uint64(MERSENNE_61)
_LOW31 = np.uint64((1 << 31) - 1)
_LOW32 = np.uint64((1 << 32) - 1)
_POLY = np.uint64(0x9E3779B97F4A7C15)

RECALL_AT_THRESHOLD = 0.95
FALSE_CANDIDATE_MARGIN = 0.1


def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two documents of Jaccard similarity s share at least one band."""
    return 1.0 - (1.0 - np.power(s, rows)) ** bands


def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """Pick (bands, rows) for a Jaccard threshold the way FineWeb and NeMo do, explicitly.

    Rule: among all b x r <= num_perm with P(threshold) >= 0.95, take the one that makes
    the fewest false candidates just below the threshold, i.e. the smallest
    P(threshold - 0.1); ties go to fewer hashes. If no split reaches 0.95 (a very low
    threshold with few hashes), take the one with the highest P(threshold).
    datasketch's area minimisation is not used: it can leave recall at the threshold
    itself as low as 0.40 (128 hashes, threshold 0.8 -> 9 x 13).
    """
    low = max(threshold - FALSE_CANDIDATE_MARGIN, 0.0)
    best: tuple[float, int, int, int] | None = None
    fallback: tuple[float, int, int] = (-1.0, 0, 0)
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            recall = float(candidate_probability(threshold, bands, rows))
            fallback = max(fallback, (recall, bands, rows))
            if recall >= RECALL_AT_THRESHOLD:
                key = (float(candidate_probability(low, bands, rows)), bands * rows, bands, rows)
                best = key if best is None else min(best, key)
                break  # more bands only raise P(low) for the same rows
    if best is None:
        return fallback[1], fallback[2]
    return best[2], best[3]


def permutation_parameters(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) as uint64 arrays: a_i in [1, p), b_i in [0, p), p = 2**61 - 1."""
    seed &= (1 << 64) - 1
    a = [
        1 + xxhash.xxh3_64_intdigest(f"a{i}".encode(), seed=seed) % (MERSENNE_61 - 1)
        for i in range(num_perm)
    ]
    b = [
        xxhash.xxh3_64_intdigest(f"b{i}".encode(), seed=seed) % MERSENNE_61 for i in range(num_perm)
    ]
    return np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)


def permutation_hashes(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact (a_i * x_j + b_i) mod (2**61 - 1) as a (len(a), len(x)) uint64 array; x < 2**32."""
    x = np.asarray(x, dtype=np.uint64)
    if x.size and int(x.max()) >> 32:
        raise ValueError("shingle hashes must be below 2**32 for exact arithmetic")
    a = np.asarray(a, dtype=np.uint64)[:, None]
    shape = (a.shape[0], x.shape[0])
    out, work, spare = (np.empty(shape, np.uint64) for _ in range(3))
    _permute_into(x[None, :], a >> np.uint64(31), a & _LOW31,
                  np.asarray(b, np.uint64)[:, None], out, work, spare)  # fmt: skip
    return out


def _permute_into(
    x: np.ndarray,
    a_hi: np.ndarray,
    a_lo: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    work: np.ndarray,
    spare: np.ndarray,
) -> None:
    """out = (a * x + b) mod p, exactly, with a = a_hi * 2**31 + a_lo, in preallocated buffers.

    With x < 2**32, a_hi < 2**30 and a_lo < 2**31: u = a_hi * x < 2**62 and v = a_lo * x
    < 2**63. a * x = u * 2**31 + v, and u * 2**31 = u1 * 2**61 + u0 * 2**31 with
    u0 = u mod 2**30, which is congruent to u1 + u0 * 2**31 (2**61 = 1 mod p). So the sum
    v + (u0 << 31) + u1 + b < 2**63 + 2**61 + 2**32 + 2**61 < 2**64 is exact, and one
    Mersenne fold plus one conditional subtraction reduce it to [0, p).
    """
    np.multiply(a_hi, x, out=work)  # u
    np.multiply(a_lo, x, out=out)  # v
    np.add(out, b, out=out)
    np.right_shift(work, np.uint64(30), out=spare)  # u1
    np.add(out, spare, out=out)
    np.left_shift(work, np.uint64(31), out=work)
    np.bitwise_and(work, _P, out=work)  # u0 << 31
    np.add(out, work, out=out)
    np.right_shift(out, np.uint64(61), out=spare)  # fold: s = (s & p) + (s >> 61) <= p + 7
    np.bitwise_and(out, _P, out=out)
    np.add(out, spare, out=out)
    np.subtract(out, _P, out=spare)  # wraps above s when s < p, so the minimum picks s mod p
    np.minimum(out, spare, out=out)


class MinHasher:
    """Batched MinHash signatures: `signatures(texts)` -> (n, num_perm) uint32.

    A document's signature depends only on its own text, never on the batch it comes in.
    Work is one (num_perm x chunk) integer pass per chunk of the batch's concatenated
    shingles, then a per-document minimum with np.minimum.reduceat; memory stays bounded
    by `batch_docs` documents and `chunk` shingles.
    """

    def __init__(
        self, num_perm: int = 128, ngram: int = 5, cjk_ngram: int = 5, seed: int = 1,
        batch_docs: int = 1024,
    ):  # fmt: skip
        self.num_perm, self.ngram, self.cjk_ngram, self.seed = num_perm, ngram, cjk_ngram, seed
        self.batch_docs = batch_docs
        self.a, self.b = permutation_parameters(num_perm, seed)
        self._a_hi = (self.a >> np.uint64(31))[:, None]
        self._a_lo = (self.a & _LOW31)[:, None]
        self._b = self.b[:, None]
        self.chunk = max(256, (1 << 19) // num_perm)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for start in range(0, len(texts), self.batch_docs):
            batch = texts[start : start + self.batch_docs]
            hashes, offsets = shingle_hashes(batch, self.ngram, self.cjk_ngram)
            out[start : start + len(batch)] = self._minima(hashes, offsets)
        return out

    def _minima(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        n_docs, k = len(offsets) - 1, self.num_perm
        minima = np.full((k, n_docs), np.iinfo(np.uint64).max, dtype=np.uint64)
        buffers = [np.empty(k * self.chunk, dtype=np.uint64) for _ in range(3)]
        for begin in range(0, len(hashes), self.chunk):
            x = hashes[begin : begin + self.chunk]
            out, work, spare = (buf[: k * len(x)].reshape(k, len(x)) for buf in buffers)
            _permute_into(x[None, :], self._a_hi, self._a_lo, self._b, out, work, spare)
            first = int(np.searchsorted(offsets, begin, side="right")) - 1
            stop = int(np.searchsorted(offsets, begin + len(x), side="left"))
            local_starts = np.maximum(offsets[first:stop] - begin, 0)
            chunk_minima = np.minimum.reduceat(out, local_starts, axis=1)
            np.minimum(minima[:, first:stop], chunk_minima, out=minima[:, first:stop])
        return (minima & _LOW32).astype(np.uint32).T


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band: (n, bands) uint64; equal bands give equal keys."""
    signatures = np.asarray(signatures)
    n, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"bands x rows = {bands * rows} exceeds the {num_perm} hashes")
    by_row = signatures[:, : bands * rows].reshape(n, bands, rows).transpose(2, 0, 1)
    values = mix64(np.ascontiguousarray(by_row))  # (rows, n, bands): contiguous per row
    keys = values[0].copy()
    for r in range(1, rows):
        keys *= _POLY
        keys += values[r]
    return mix64(keys)
