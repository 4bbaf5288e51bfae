"""Phase 2 of `data prepare`: the global decisions, made once over the features of all shards.

Duplicate ids, exact dedup, near dedup, relevance and perplexity cuts (in config order),
then the split and the decontamination of train against val/test. It reads only small
columns and the dedup features, never the texts, and reads signatures through memory maps,
so its memory grows with the number of documents, not with their size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import xxhash

from lmforge.data import layout
from lmforge.data.config import GLOBAL_STEPS, DataConfig
from lmforge.data.process import needs_signatures, resolve_bands
from lmforge.data.readers import Shard
from lmforge.data.stats import Stats

SPLIT_CODES = {name: code for code, name in enumerate(layout.SPLITS)}
DROPPED = -1


class ShardedRows:
    """Rows of per-shard .npy files, addressed by global row number, read through mmap."""

    def __init__(self, paths: list[Path], counts: list[int], width: int, dtype: Any):
        self.arrays = [
            np.load(p, mmap_mode="r") if n else np.zeros((0, width), dtype)
            for p, n in zip(paths, counts, strict=True)
        ]
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.width, self.dtype = width, dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        shard = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), self.width), self.dtype)
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self.arrays[s][index[mask] - self.offsets[s]]
        return out


@dataclass
class Table:
    """The columns the global phase works on, one row per phase-1 survivor."""

    ids: np.ndarray
    source: np.ndarray  # index into `sources`
    sources: list[str]
    chars: np.ndarray
    relevance: np.ndarray
    perplexity: np.ndarray
    offsets: np.ndarray  # first global row of each shard
    exact: np.ndarray | None = None
    bands: np.ndarray | None = None
    sigs: ShardedRows | None = None
    alive: np.ndarray = field(init=False)
    drops: dict[int, tuple[str, str, str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.alive = np.ones(len(self.ids), dtype=bool)

    def drop(
        self,
        rows: np.ndarray,
        step: str,
        reason: str,
        detail: str = "",
        dup_of: np.ndarray | None = None,
    ) -> None:
        self.alive[rows] = False
        for k, row in enumerate(rows.tolist()):
            self.drops[row] = (step, reason, detail, -1 if dup_of is None else int(dup_of[k]))


@dataclass
class Decisions:
    split: np.ndarray  # per global row: split code, or DROPPED
    table: Table
    cuts: dict[int, list[tuple[int, int, int]]]  # row -> [(split code, start, end)]
    stats: Stats
    summary: dict[str, Any]
    _sorted: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def for_shard(self, k: int) -> dict[str, Any]:
        """What the writer of shard k needs, with duplicate_of resolved to ids."""
        lo, hi = int(self.table.offsets[k]), int(self.table.offsets[k + 1])
        ids = self.table.ids
        drops = {}
        for row in self._rows_between(self.table.drops, lo, hi):
            step, reason, detail, dup = self.table.drops[row]
            drops[row - lo] = (step, reason, detail, None if dup < 0 else str(ids[dup]))
        cuts = {row - lo: self.cuts[row] for row in self._rows_between(self.cuts, lo, hi)}
        return {"split": self.split[lo:hi].copy(), "drops": drops, "cuts": cuts}

    def _rows_between(self, rows_by: dict[int, Any], lo: int, hi: int) -> list[int]:
        key = id(rows_by)
        if key not in self._sorted:
            self._sorted[key] = np.array(sorted(rows_by), dtype=np.int64)
        rows = self._sorted[key]
        return rows[np.searchsorted(rows, lo) : np.searchsorted(rows, hi)].tolist()


def load_table(cfg: DataConfig, shards: list[Shard], work: Path, counts: list[int]) -> Table:
    columns = ["id", "source", "chars", "relevance", "perplexity"]
    ids, source_names, chars, relevance, perplexity = [], [], [], [], []
    for shard, n in zip(shards, counts, strict=True):
        if n == 0:
            continue
        t = pq.read_table(layout.work_file(work, "docs", shard.index, ".parquet"), columns=columns)
        ids.append(t["id"].to_numpy(zero_copy_only=False))
        source_names.append(np.full(n, shard.source_index, dtype=np.int32))
        chars.append(t["chars"].to_numpy())
        relevance.append(t["relevance"].to_numpy(zero_copy_only=False).astype(np.float32))
        perplexity.append(t["perplexity"].to_numpy(zero_copy_only=False).astype(np.float32))
    names = sorted({(s.source_index, s.source) for s in shards})
    table = Table(
        ids=_cat(ids, object),
        source=_cat(source_names, np.int32),
        sources=[name for _, name in names],
        chars=_cat(chars, np.int64),
        relevance=_cat(relevance, np.float32),
        perplexity=_cat(perplexity, np.float32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    )
    paths = lambda kind: [layout.work_file(work, kind, s.index, ".npy") for s in shards]  # noqa: E731
    if "exact_dedup" in cfg.steps:
        table.exact = _cat(
            [np.load(p) for p, n in zip(paths("exact"), counts, strict=True) if n],
            np.uint64,
            width=2,
        )
    if needs_signatures(cfg):
        bands, _ = resolve_bands(cfg)
        table.bands = _cat(
            [np.load(p) for p, n in zip(paths("bands"), counts, strict=True) if n],
            np.uint64,
            width=bands,
        )
        table.sigs = ShardedRows(paths("sig"), counts, cfg.dedup.num_perm, np.uint32)
    return table


def _cat(parts: list[np.ndarray], dtype: Any, width: int | None = None) -> np.ndarray:
    if parts:
        return np.concatenate(parts)
    return np.zeros((0, width) if width else 0, dtype=dtype)


def decide(cfg: DataConfig, shards: list[Shard], work: Path, counts: list[int]) -> Decisions:
    table = load_table(cfg, shards, work, counts)
    stats = Stats()
    summary: dict[str, Any] = {}
    _counted(stats, table, "ids", lambda: _duplicate_ids(table))
    for step in cfg.steps:
        if step in GLOBAL_STEPS:
            _counted(stats, table, step, lambda step=step: GLOBAL[step](cfg, table, summary, stats))
    split, cuts = assign_splits(cfg, table)
    _counted(stats, table, "split", lambda: _decontaminate(cfg, table, split, summary))
    split[~table.alive] = DROPPED
    return Decisions(split=split, table=table, cuts=cuts, stats=stats, summary=summary)


def _counted(stats: Stats, table: Table, step: str, run: Any) -> None:
    """Run a global step and record its per-source funnel counts."""
    before = table.alive.copy()
    n_drops = len(table.drops)
    run()
    new = list(table.drops.items())[n_drops:]
    reasons_by_source: dict[int, Counter[str]] = {}
    for row, (_, reason, _, _) in new:
        reasons_by_source.setdefault(int(table.source[row]), Counter())[reason] += 1
    for s, name in enumerate(table.sources):
        mine = table.source == s
        stats.record(
            step,
            name,
            int((before & mine).sum()),
            int((table.alive & mine).sum()),
            reasons_by_source.get(s, Counter()),
            chars_in=int(table.chars[before & mine].sum()),
            chars_kept=int(table.chars[table.alive & mine].sum()),
        )


def _duplicate_ids(table: Table) -> None:
    """A later document reusing an id already taken is quarantined: ids must be unique."""
    seen: dict[str, int] = {}
    rows, firsts = [], []
    for row, doc_id in enumerate(table.ids.tolist()):
        first = seen.setdefault(doc_id, row)
        if first != row:
            rows.append(row)
            firsts.append(first)
    if rows:
        table.drop(
            np.array(rows),
            "read",
            "duplicate_id",
            "an earlier document has this id",
            np.array(firsts),
        )


def _exact_dedup(cfg: DataConfig, table: Table, summary: dict, stats: Stats) -> None:
    from lmforge.data.dedup.exact import first_occurrence

    rows = np.flatnonzero(table.alive)
    first = first_occurrence(table.exact[rows])
    dup = np.flatnonzero(first != np.arange(len(rows)))
    table.drop(
        rows[dup], "exact_dedup", "exact_duplicate", "same normalized text", rows[first[dup]]
    )
    summary["exact_duplicates"] = len(dup)


def near_pairs(cfg: DataConfig, table: Table, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Verified near-duplicate pairs among `rows`, as global row numbers."""
    from lmforge.data.dedup.clusters import candidate_pairs, verified_pairs

    i, j = candidate_pairs(table.bands[rows])
    i, j = rows[i], rows[j]
    if cfg.dedup.verify:
        i, j = verified_pairs(i, j, table.sigs, cfg.dedup.threshold)
    return i, j


def _near_dedup(cfg: DataConfig, table: Table, summary: dict, stats: Stats) -> None:
    from lmforge.data.dedup.clusters import components
    from lmforge.data.dedup.minhash import candidate_probability

    rows = np.flatnonzero(table.alive)
    i, j = near_pairs(cfg, table, rows)
    roots = components(len(table.ids), i, j)
    dup = rows[roots[rows] != rows]
    table.drop(
        dup, "near_dedup", "near_duplicate", f"Jaccard >= {cfg.dedup.threshold:g}", roots[dup]
    )
    sizes = np.bincount(roots[rows], minlength=len(table.ids))
    clusters = Counter(int(s) for s in sizes[sizes > 1])
    bands, rows_per_band = resolve_bands(cfg)
    summary["near_dedup"] = {
        "threshold": cfg.dedup.threshold,
        "num_perm": cfg.dedup.num_perm,
        "bands": bands,
        "rows": rows_per_band,
        "p_candidate_at_threshold": round(
            candidate_probability(cfg.dedup.threshold, bands, rows_per_band), 4
        ),
        "verified_pairs": len(i),
        "removed": len(dup),
        "clusters": int(sum(clusters.values())),
        "cluster_sizes": {str(k): v for k, v in sorted(clusters.items())},
    }


def _keep_best(
    table: Table,
    score: np.ndarray,
    keep: int,
    step: str,
    reason: str,
    detail: str,
    higher_is_better: bool,
) -> None:
    """Keep the `keep` best-scored alive documents (ties: earlier first), drop the rest."""
    rows = np.flatnonzero(table.alive)
    values = score[rows]
    key = -values if higher_is_better else values
    order = np.lexsort((rows, np.nan_to_num(key, nan=np.inf)))
    table.drop(np.sort(rows[order[keep:]]), step, reason, detail)


def _relevance(cfg: DataConfig, table: Table, summary: dict, stats: Stats) -> None:
    rc = cfg.relevance
    if not rc.reference:
        stats.notes.append("relevance: skipped, no reference texts (set data.relevance.reference)")
        return
    if rc.min_similarity is not None:
        low = np.flatnonzero(table.alive & ~(table.relevance >= rc.min_similarity))
        table.drop(low, "relevance", "low_relevance", f"similarity < {rc.min_similarity:g}")
    if rc.keep_top is not None:
        n_alive = int(table.alive.sum())
        keep = int(np.ceil(rc.keep_top * n_alive))
        _keep_best(
            table,
            table.relevance,
            keep,
            "relevance",
            "low_relevance",
            f"outside the top {rc.keep_top:.0%}",
            higher_is_better=True,
        )
    summary["relevance"] = _quantiles(table.relevance[table.alive])


def _perplexity(cfg: DataConfig, table: Table, summary: dict, stats: Stats) -> None:
    pc = cfg.perplexity
    if not pc.model:
        stats.notes.append("perplexity: skipped, no reference model (set data.perplexity.model)")
        return
    n_alive = int(table.alive.sum())
    keep = int(np.ceil(pc.max_percentile * n_alive))
    _keep_best(
        table,
        table.perplexity,
        keep,
        "perplexity",
        "high_perplexity",
        f"above the {pc.max_percentile:.0%} percentile",
        higher_is_better=False,
    )
    summary["perplexity"] = _quantiles(table.perplexity[table.alive])


def _quantiles(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {}
    qs = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {
        name: round(float(q), 4)
        for name, q in zip(("min", "p10", "p50", "p90", "max"), qs, strict=True)
    }


GLOBAL = {
    "exact_dedup": _exact_dedup,
    "near_dedup": _near_dedup,
    "relevance": _relevance,
    "perplexity": _perplexity,
}


def hash_split(ids: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """A document's split depends only on its id and the seed: adding documents moves none."""
    s = cfg.split
    u = np.array(
        [xxhash.xxh64_intdigest(f"{s.seed}:{i}".encode()) for i in ids.tolist()], dtype=np.uint64
    )
    u = (u >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < s.train, 0, np.where(u < s.train + s.val, 1, 2)).astype(np.int8)


def assign_splits(
    cfg: DataConfig, table: Table
) -> tuple[np.ndarray, dict[int, list[tuple[int, int, int]]]]:
    split = np.full(len(table.ids), DROPPED, dtype=np.int8)
    rows = np.flatnonzero(table.alive)
    if cfg.split.mode == "hash":
        split[rows] = hash_split(table.ids[rows], cfg)
        return split, {}
    return split, _contiguous(cfg, table, rows, split)


def _contiguous(
    cfg: DataConfig, table: Table, rows: np.ndarray, split: np.ndarray
) -> dict[int, list[tuple[int, int, int]]]:
    """First `train` share of the characters (in input order) to train, then val, then test;
    a document straddling a boundary is cut there, as nanoGPT cuts one long text."""
    chars = table.chars[rows]
    total = int(chars.sum())
    bounds = [int(total * cfg.split.train), int(total * (cfg.split.train + cfg.split.val)), total]
    starts = np.concatenate([[0], np.cumsum(chars)[:-1]])
    cuts: dict[int, list[tuple[int, int, int]]] = {}
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


def _decontaminate(cfg: DataConfig, table: Table, split: np.ndarray, summary: dict) -> None:
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
        table.drop(
            lost,
            "split",
            "split_leak",
            "near-duplicates a document of another split",
            np.array([chosen[r] for r in lost.tolist()]),
        )
    summary["split_leaks_removed"] = len(chosen)
