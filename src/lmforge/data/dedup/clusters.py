"""From LSH band keys to duplicate clusters: candidate pairs, verification, components.

Candidates come from sorting each band's keys (no hash table, no Python loop per bucket).
A bucket of k documents yields all k(k-1)/2 pairs while k <= FULL_BUCKET, and otherwise
only the edges from its first ANCHORS members to every other member (ANCHORS * k edges):
connected components need no more, and with verification on, a chance member that is not
really similar to the others can at most cut itself off (it fails the check against every
anchor), while the true duplicates stay joined through any anchor that is one of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

FULL_BUCKET = 16
ANCHORS = 4
VERIFY_CHUNK = 65536


def candidate_pairs(band_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Documents that share a key in any band, as int64 arrays (i, j) with i < j, unique."""
    band_keys = np.asarray(band_keys)
    n = band_keys.shape[0]
    edges = []
    for band in range(band_keys.shape[1]):
        order = np.argsort(band_keys[:, band], kind="stable")  # members in index order
        keys = band_keys[order, band]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        shared = sizes >= 2
        edges.extend(_bucket_edges(order, starts[shared], sizes[shared]))
    if not edges:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    i = np.concatenate([e[0] for e in edges])
    j = np.concatenate([e[1] for e in edges])
    pair_codes = np.unique(i * np.int64(n) + j)
    return pair_codes // n, pair_codes % n


def _bucket_edges(
    order: np.ndarray, starts: np.ndarray, sizes: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    edges = []
    small = sizes <= FULL_BUCKET
    for size in np.unique(sizes[small]).tolist():
        first, second = np.triu_indices(size, k=1)
        bucket_starts = starts[small & (sizes == size)][:, None]
        edges.append((order[bucket_starts + first].ravel(), order[bucket_starts + second].ravel()))
    big_starts, big_sizes = starts[~small], sizes[~small]
    if big_sizes.size:
        bucket_start = np.repeat(big_starts, big_sizes)
        position = np.arange(int(big_sizes.sum())) - np.repeat(np.cumsum(big_sizes) - big_sizes,
                                                               big_sizes)  # fmt: skip
        for anchor in range(ANCHORS):
            later = position > anchor
            edges.append((order[bucket_start[later] + anchor],
                          order[bucket_start[later] + position[later]]))  # fmt: skip
    return edges


def pair_similarity(i: np.ndarray, j: np.ndarray, signatures: Any) -> np.ndarray:
    """Signature agreement of each pair (an estimate of their Jaccard similarity), float32.

    `signatures` is an array or anything where `signatures[rows]` returns those rows (such
    as memory-mapped per-shard files); rows are fetched in sorted chunks, each row once.
    """
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    similarity = np.empty(len(i), dtype=np.float32)
    for begin in range(0, len(i), VERIFY_CHUNK):
        left, right = i[begin : begin + VERIFY_CHUNK], j[begin : begin + VERIFY_CHUNK]
        rows, where = np.unique(np.concatenate([left, right]), return_inverse=True)
        fetched = np.asarray(signatures[rows])
        agree = fetched[where[: len(left)]] == fetched[where[len(left) :]]
        similarity[begin : begin + len(left)] = agree.mean(axis=1)
    return similarity


def verified_pairs(
    i: np.ndarray, j: np.ndarray, signatures: Any, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the pairs whose signature agreement reaches the Jaccard threshold."""
    keep = pair_similarity(i, j, signatures) >= np.float32(threshold) - np.float32(1e-6)
    return np.asarray(i)[keep], np.asarray(j)[keep]


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Root of each document's cluster: the smallest index in its connected component."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(i), dtype=bool), (i, j)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    labels_seen, first_index = np.unique(labels, return_index=True)
    root_of_label = np.empty(labels_seen.max() + 1, dtype=np.int64)
    root_of_label[labels_seen] = first_index
    return root_of_label[labels]


def cluster_size_histogram(roots: np.ndarray) -> dict[int, int]:
    """{cluster size: number of clusters} over all clusters of 2 or more documents."""
    sizes = np.bincount(np.asarray(roots, dtype=np.int64))
    sizes = sizes[sizes >= 2]
    values, counts = np.unique(sizes, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))
