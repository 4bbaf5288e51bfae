"""Train/val/test assignment and decontamination, the last decisions of the global phase."""

from __future__ import annotations

import numpy as np
import xxhash

from lmforge.data.config import DataConfig
from lmforge.data.table import Table, near_pairs

DROPPED = -1
Cuts = dict[int, list[tuple[int, int, int]]]  # row -> [(split code, start, end)]


def hash_split(table: Table, rows: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """A document's split depends only on its id and the seed: adding documents moves none."""
    s = cfg.split
    ids = table.ids.take(rows)
    u = np.empty(len(rows), dtype=np.uint64)
    chunk = 65536
    for start in range(0, len(rows), chunk):
        part = ids.slice(start, chunk).to_pylist()
        u[start : start + len(part)] = [
            xxhash.xxh64_intdigest(f"{s.seed}:{doc_id}".encode()) for doc_id in part
        ]
    fraction = (u >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(fraction < s.train, 0, np.where(fraction < s.train + s.val, 1, 2)).astype(
        np.int8
    )


def assign_splits(cfg: DataConfig, table: Table) -> tuple[np.ndarray, Cuts]:
    split = np.full(len(table), DROPPED, dtype=np.int8)
    rows = np.flatnonzero(table.alive)
    if cfg.split.mode == "hash":
        split[rows] = hash_split(table, rows, cfg)
        return split, {}
    return split, _contiguous(cfg, table, rows, split)


def _contiguous(cfg: DataConfig, table: Table, rows: np.ndarray, split: np.ndarray) -> Cuts:
    """First `train` share of the characters (in input order) to train, then val, then test;
    a document straddling a boundary is cut there, as nanoGPT cuts one long text."""
    chars = table.chars[rows]
    total = int(chars.sum())
    bounds = [int(total * cfg.split.train), int(total * (cfg.split.train + cfg.split.val)), total]
    starts = np.concatenate([[0], np.cumsum(chars)[:-1]])
    cuts: Cuts = {}
    for row, start, n in zip(rows.tolist(), starts.tolist(), chars.tolist(), strict=True):
        pieces = []
        lo = start
        for code, bound in enumerate(bounds):
            hi = min(start + n, bound)
            if hi > lo:
                pieces.append((code, lo - start, hi - start))
                lo = hi
        split[row] = pieces[0][0] if pieces else DROPPED
        if len(pieces) > 1:
            cuts[row] = pieces
    return cuts


def decontaminate(cfg: DataConfig, table: Table, split: np.ndarray, summary: dict) -> None:
    """Drop train documents that near-duplicate a val/test one (and test ones that
    near-duplicate val), so no split leaks into another."""
    if not cfg.split.decontaminate or cfg.split.mode != "hash" or table.bands is None:
        return
    rows = np.flatnonzero(table.alive)
    i, j = near_pairs(cfg, table, rows)
    crossing = split[i] != split[j]
    i, j = i[crossing], j[crossing]
    # The member in the "larger" split goes: train(0) before test(2) before val(1).
    rank = np.array([0, 2, 1])
    loser = np.where(rank[split[i]] <= rank[split[j]], i, j)
    keeper = np.where(loser == i, j, i)
    chosen: dict[int, int] = {}
    for lose, keep in zip(loser.tolist(), keeper.tolist(), strict=True):
        if lose not in chosen and keep not in chosen:
            chosen[lose] = keep
    if chosen:
        lost = np.array(sorted(chosen))
        keepers = np.array([chosen[r] for r in lost.tolist()])
        detail = "near-duplicates a document of another split"
        table.drop(lost, "split", "split_leak", detail, keepers)
    summary["split_leaks_removed"] = len(chosen)
