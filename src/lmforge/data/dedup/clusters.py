"""From LSH band keys to duplicate clusters: candidate pairs, verification, components, and
which member of each cluster is kept.

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
KEEP_SHARE = 0.75


def candidate_pairs(band_keys: np.ndarray, views: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Documents that share a key in any band, as int64 arrays (i, j) with i < j, unique.

    A row may hold `views` sets of band keys side by side (a document before and after the
    line edits); two documents are candidates when any view of one shares a key with any
    view of the other. A view equal to the document's first is left out.
    """
    keys_of_view, owner = split_views(np.asarray(band_keys), views)
    n = len(keys_of_view)
    edges = []
    for band in range(keys_of_view.shape[1]):
        order = np.argsort(keys_of_view[:, band], kind="stable")  # members in index order
        keys = keys_of_view[order, band]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        shared = sizes >= 2
        edges.extend(_bucket_edges(order, starts[shared], sizes[shared]))
    if not edges:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    i = owner[np.concatenate([e[0] for e in edges])]
    j = owner[np.concatenate([e[1] for e in edges])]
    other = i != j  # two views of one document
    n_docs = np.int64(len(band_keys))
    pair_codes = np.unique(i[other] * n_docs + j[other])
    return pair_codes // n_docs, pair_codes % n_docs


def split_views(features: np.ndarray, views: int) -> tuple[np.ndarray, np.ndarray]:
    """One row per distinct view: (n, views * width) -> (rows, width) and the document of
    each row, in document order (a view equal to its document's first is left out)."""
    n = len(features)
    rows = features.reshape(n * views, -1)
    owner = np.repeat(np.arange(n, dtype=np.int64), views)
    distinct = np.ones(n * views, dtype=bool)
    for view in range(1, views):
        distinct[view::views] = np.any(rows[view::views] != rows[0::views], axis=1)
    return rows[distinct], owner[distinct]


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


def pair_similarity(i: np.ndarray, j: np.ndarray, signatures: Any, views: int = 1) -> np.ndarray:
    """Signature agreement of each pair (an estimate of their Jaccard similarity), float32.

    `signatures` is an array or anything where `signatures[rows]` returns those rows (such
    as memory-mapped per-shard files); rows are fetched in sorted chunks, each row once.
    A row may hold `views` signatures side by side (a document before and after the line
    edits); a pair's similarity is then that of its most similar two views, one of each.
    """
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    similarity = np.empty(len(i), dtype=np.float32)
    chunk = VERIFY_CHUNK // views**2  # the same memory whatever the number of views
    for begin in range(0, len(i), chunk):
        left, right = i[begin : begin + chunk], j[begin : begin + chunk]
        rows, where = np.unique(np.concatenate([left, right]), return_inverse=True)
        fetched = np.asarray(signatures[rows])
        m = len(left)
        mine = fetched[where[:m]].reshape(m, views, 1, -1)
        theirs = fetched[where[m:]].reshape(m, 1, views, -1)
        by_views = (mine == theirs).mean(axis=3)
        similarity[begin : begin + m] = by_views.reshape(m, -1).max(axis=1)
    return similarity


def verified_pairs(
    i: np.ndarray, j: np.ndarray, signatures: Any, threshold: float, views: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the pairs whose signature agreement reaches the Jaccard threshold."""
    similarity = pair_similarity(i, j, signatures, views)
    keep = similarity >= np.float32(threshold) - np.float32(1e-6)
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


def representatives(groups: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """For each member, the index of the member its group keeps.

    `groups` labels each member's group (its cluster root, its exact key's first occurrence),
    members in input order; `kept` is how much of its dedup view each member's filtered text
    kept (percent). The kept member is the earliest of those that kept at least KEEP_SHARE
    of what the least-cut member kept: a copy whose layout made the line rules cut most of
    it (a hard-wrapped page keeps ~10-40%) is not kept when a whole copy exists, while
    copies cut alike (boilerplate lines removed: ~90-100%) keep input order.
    """
    groups = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    kept = np.asarray(kept, dtype=np.float64)
    best = np.zeros(int(groups.max()) + 1)
    np.maximum.at(best, groups, kept)
    eligible = kept >= KEEP_SHARE * best[groups]
    order = np.lexsort((np.arange(n), ~eligible, groups))  # the kept member first in its group
    sorted_groups = groups[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    chosen = np.empty(n, dtype=np.int64)
    chosen[order] = order[first][np.cumsum(first) - 1]
    return chosen


def cluster_size_histogram(roots: np.ndarray) -> dict[int, int]:
    """{cluster size: number of clusters} over all clusters of 2 or more documents."""
    sizes = np.bincount(np.asarray(roots, dtype=np.int64))
    sizes = sizes[sizes >= 2]
    values, counts = np.unique(sizes, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))
