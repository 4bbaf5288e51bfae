"""Phase 2 of `data prepare`: the global decisions, made once over all shards' features.

Duplicate ids, then exact dedup, near dedup, relevance and perplexity cuts (in config
order), then the split and decontamination. It never reads the texts. The outcome is one
small decision file per shard (`_work/decision-K.parquet`: one row per phase-1 survivor
with its split, or why it was dropped), so the writers of phase 3 need nothing else.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmforge.data import layout
from lmforge.data.config import GLOBAL_STEPS, DataConfig
from lmforge.data.plan import Shard
from lmforge.data.process import VIEWS, resolve_bands
from lmforge.data.split import DROPPED, Cuts, assign_splits, decontaminate
from lmforge.data.stats import Stats
from lmforge.data.table import Table, load_table, near_pairs, verification_threshold
from lmforge.io import atomic_path

DECISION_SCHEMA = pa.schema(
    [
        ("split", pa.int8()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("duplicate_of", pa.string()),
        ("pieces", pa.string()),  # JSON [[split, start, end], ...] when a document is cut
    ]
)


def decide(
    cfg: DataConfig, shards: list[Shard], work: Path, counts: list[int]
) -> tuple[Stats, dict]:
    """Make every global decision, save them per shard, and return the stats and summary."""
    table = load_table(cfg, shards, work, counts)
    try:
        stats = Stats()
        summary: dict[str, Any] = {}
        _counted(stats, table, "ids", lambda: _duplicate_ids(table))
        for step in cfg.steps:
            if step in GLOBAL_STEPS:
                _counted(stats, table, step, lambda s=step: GLOBAL[s](cfg, table, summary, stats))
        split, cuts = assign_splits(cfg, table)
        _counted(stats, table, "split", lambda: decontaminate(cfg, table, split, summary))
        split[~table.alive] = DROPPED
        for k, shard in enumerate(shards):
            save_shard_decisions(work, shard.index, table, split, cuts, k)
    finally:
        table.close()
    return stats, summary


def decision_file(work: Path, index: int) -> Path:
    return layout.work_file(work, "decision", index, ".parquet")


def save_shard_decisions(
    work: Path, index: int, table: Table, split: np.ndarray, cuts: Cuts, k: int
) -> None:
    lo, hi = int(table.offsets[k]), int(table.offsets[k + 1])
    columns: dict[str, list[Any]] = {name: [None] * (hi - lo) for name in DECISION_SCHEMA.names}
    columns["split"] = split[lo:hi].tolist()
    for row in range(lo, hi):
        drop = table.drops.get(row)
        if drop is not None:
            step, reason, detail, dup = drop
            at = row - lo
            columns["step"][at], columns["reason"][at], columns["detail"][at] = step, reason, detail
            columns["duplicate_of"][at] = table.id_of(dup) if dup >= 0 else None
        elif row in cuts:
            columns["pieces"][row - lo] = json.dumps(cuts[row])
    with atomic_path(decision_file(work, index)) as tmp:
        pq.write_table(pa.table(columns, schema=DECISION_SCHEMA), tmp)


def _counted(stats: Stats, table: Table, step: str, run: Callable[[], None]) -> None:
    """Run a global step and record its per-source funnel counts."""
    before = table.alive.copy()
    n_drops = len(table.drops)
    run()
    reasons_by_source: dict[int, Counter[str]] = {}
    for row, (_, reason, _, _) in list(table.drops.items())[n_drops:]:
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
    counts = pc.value_counts(table.ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return
    rows = np.flatnonzero(pc.is_in(table.ids, value_set=repeated).to_numpy(zero_copy_only=False))
    first: dict[str, int] = {}
    dup_rows, firsts = [], []
    for row in rows.tolist():
        kept = first.setdefault(table.id_of(row), row)
        if kept != row:
            dup_rows.append(row)
            firsts.append(kept)
    detail = "an earlier document has this id"
    table.drop(np.array(dup_rows), "read", "duplicate_id", detail, np.array(firsts))


def _exact_dedup(cfg: DataConfig, table: Table, summary: dict, stats: Stats) -> None:
    """Documents with an equal key, before or after the line edits (process.VIEWS; a text of
    one equal to a text of the other), form one group, which keeps one of them
    (clusters.representatives says which)."""
    from lmforge.data.dedup.clusters import components, representatives, split_views
    from lmforge.data.dedup.exact import first_occurrence

    rows = np.flatnonzero(table.alive)
    keys, owner = split_views(table.exact[rows], VIEWS)
    groups = components(len(rows), owner[first_occurrence(keys)], owner)
    chosen = representatives(groups, table.kept[rows])
    dup = np.flatnonzero(chosen != np.arange(len(rows)))
    table.drop(
        rows[dup], "exact_dedup", "exact_duplicate", "same normalized text", rows[chosen[dup]]
    )
    summary["exact_duplicates"] = len(dup)


def _near_dedup(cfg: DataConfig, table: Table, summary: dict, stats: Stats) -> None:
    """Keep one document per cluster (clusters.representatives says which)."""
    from lmforge.data.dedup.clusters import cluster_size_histogram, components, representatives
    from lmforge.data.dedup.minhash import candidate_probability

    rows = np.flatnonzero(table.alive)
    i, j = near_pairs(cfg, table, rows)
    roots = components(len(table), i, j)
    chosen = representatives(roots[rows], table.kept[rows])
    dup = np.flatnonzero(chosen != np.arange(len(rows)))
    detail = f"Jaccard >= {cfg.dedup.threshold:g}"
    table.drop(rows[dup], "near_dedup", "near_duplicate", detail, rows[chosen[dup]])
    clusters = cluster_size_histogram(roots[rows])
    bands, rows_per_band = resolve_bands(cfg)
    p_at_threshold = candidate_probability(cfg.dedup.threshold, bands, rows_per_band)
    summary["near_dedup"] = {
        "threshold": cfg.dedup.threshold,
        "num_perm": cfg.dedup.num_perm,
        "bands": bands,
        "rows": rows_per_band,
        "p_candidate_at_threshold": round(float(p_at_threshold), 4),
        "verified_at": round(verification_threshold(cfg), 4) if cfg.dedup.verify else None,
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
    key = -score[rows] if higher_is_better else score[rows]
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
        keep = int(np.ceil(rc.keep_top * int(table.alive.sum())))
        detail = f"outside the top {rc.keep_top:.0%}"
        _keep_best(table, table.relevance, keep, "relevance", "low_relevance", detail, True)
    summary["relevance"] = _quantiles(table.relevance[table.alive])


def _perplexity(cfg: DataConfig, table: Table, summary: dict, stats: Stats) -> None:
    pc_ = cfg.perplexity
    if not pc_.model:
        stats.notes.append("perplexity: skipped, no reference model (set data.perplexity.model)")
        return
    keep = int(np.ceil(pc_.max_percentile * int(table.alive.sum())))
    detail = f"above the {pc_.max_percentile:.0%} percentile"
    _keep_best(table, table.perplexity, keep, "perplexity", "high_perplexity", detail, False)
    summary["perplexity"] = _quantiles(table.perplexity[table.alive])


def _quantiles(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {}
    qs = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    names = ("min", "p10", "p50", "p90", "max")
    return {name: round(float(q), 4) for name, q in zip(names, qs, strict=True)}


GLOBAL = {
    "exact_dedup": _exact_dedup,
    "near_dedup": _near_dedup,
    "relevance": _relevance,
    "perplexity": _perplexity,
}
