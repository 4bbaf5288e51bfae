"""Phase 1 of `data prepare`, one shard per task: read -> per-document steps -> features.

A shard's survivors go to `_work/docs-K.parquet` with their dedup features beside them
(`exact-K.npy`, `sig-K.npy`, `bands-K.npy`, `kept-K.npy`), its drops to
`_work/dropped-K.parquet`, its counts to `_work/stats-K.json`, and last a done-marker
`_work/done-K.json`. Every file is written atomically, so after a kill -9 a shard is either
finished or redone from scratch.

Dedup features come from each document's *dedup view*: its text just before the first step
that cuts or rewrites parts of it (EDITING_STEPS: C4's line rules in `quality`, PII and
blocklist redaction), so after `normalize` and the pure filters. Line rules judge each line
on its own, so two copies of one page whose line breaks differ (one hard-wrapped, one
reflowed into paragraphs) lose different lines, and their filtered texts can share little;
their views differ only in whitespace, which neither the exact key nor the shingles see.
Each feature is also computed on the filtered text (only where it differs from the view)
and stored beside the view's (VIEWS), and two documents are duplicates when a text of one,
view or filtered, is a duplicate of a text of the other: copies that differ mostly in lines
the filters remove (each site's own navigation, share and cookie lines) stay duplicates, as
they were when dedup saw only filtered texts, and so does such a copy of a hard-wrapped one
(its filtered text is the other's view). What is written is still the filtered text.
`kept-K.npy` holds the percentage of its view that each filtered text kept, so that phase 2
does not keep a copy the line rules cut to a fraction when a whole one exists
(dedup.clusters.representatives).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data import executor, layout
from lmforge.data.config import DataConfig
from lmforge.data.document import Doc, Drop
from lmforge.data.plan import Shard
from lmforge.data.readers import ShardReader
from lmforge.data.stats import Stats
from lmforge.io import atomic_path, atomic_write_json, read_json, sha256_json

BATCH = 512
WORK_ROWS = 1024
EDITING_STEPS = ("quality", "pii", "blocklist")
VIEWS = 2  # every dedup feature is stored for the dedup view, then for the filtered text
FEATURE_LAYOUT = 2  # a shard done with another layout of its feature files is redone


@dataclass(frozen=True)
class ShardTask:
    shard: Shard
    cfg: DataConfig
    work: Path
    fingerprint: str


def resolve_bands(cfg: DataConfig) -> tuple[int, int]:
    from lmforge.data.dedup.minhash import choose_bands

    if cfg.dedup.bands is not None and cfg.dedup.rows is not None:
        return cfg.dedup.bands, cfg.dedup.rows
    return choose_bands(cfg.dedup.threshold, cfg.dedup.num_perm)


def needs_signatures(cfg: DataConfig) -> bool:
    leak_check = cfg.split.decontaminate and cfg.split.mode == "hash"
    return "near_dedup" in cfg.steps or leak_check


def needs_kept_share(cfg: DataConfig) -> bool:
    return "exact_dedup" in cfg.steps or "near_dedup" in cfg.steps


def kept_percent(texts: list[str], views: list[str]) -> np.ndarray:
    """How much of its dedup view each filtered text kept, in whole percent (0-100, uint8;
    a redaction placeholder longer than what it hides cannot push it above 100)."""
    kept = [100 * len(t) // max(1, len(v)) for t, v in zip(texts, views, strict=True)]
    return np.minimum(np.array(kept, dtype=np.int64), 100).astype(np.uint8)


class Features:
    """The steps and feature extractors of one config, built once per worker process."""

    def __init__(self, cfg: DataConfig):
        from lmforge.data.steps import build_steps

        self.cfg = cfg
        self.steps = build_steps(cfg)

    @cached_property
    def minhasher(self) -> Any:
        from lmforge.data.dedup.minhash import MinHasher

        d = self.cfg.dedup
        return MinHasher(num_perm=d.num_perm, ngram=d.ngram, cjk_ngram=d.cjk_ngram, seed=d.seed)

    @cached_property
    def bands(self) -> tuple[int, int]:
        return resolve_bands(self.cfg)

    @cached_property
    def relevance(self) -> Any:
        if "relevance" not in self.cfg.steps or not self.cfg.relevance.reference:
            return None
        from lmforge.data.relevance import RelevanceScorer

        return RelevanceScorer(self.cfg.relevance.reference)

    @cached_property
    def perplexity(self) -> Any:
        if "perplexity" not in self.cfg.steps or not self.cfg.perplexity.model:
            return None
        from lmforge.data.perplexity import load_scorer

        return load_scorer(self.cfg.perplexity.model)

    def annotate(self, docs: list[Doc]) -> None:
        texts = [d.text for d in docs]
        if self.relevance is not None:
            for doc, score in zip(docs, self.relevance.score(texts), strict=True):
                doc.annotations["relevance"] = float(score)
        if self.perplexity is not None:
            for doc, score in zip(docs, self.perplexity.score(texts), strict=True):
                doc.annotations["perplexity"] = float(score)

    def dedup_features(self, docs: list[Doc], views: list[str]) -> dict[str, np.ndarray]:
        """Exact keys and MinHash signatures of the dedup views, and the share each kept."""
        out: dict[str, np.ndarray] = {}
        if needs_kept_share(self.cfg):
            out["kept"] = kept_percent([d.text for d in docs], views)
        if "exact_dedup" in self.cfg.steps:
            from lmforge.data.dedup.exact import exact_keys

            out["exact"] = _before_and_after(exact_keys, docs, views)
        if needs_signatures(self.cfg):
            from lmforge.data.dedup.minhash import band_keys

            before, after = np.hsplit(_before_and_after(self.minhasher.signatures, docs, views), 2)
            out["sig"] = np.hstack([before, after])
            out["bands"] = np.hstack(
                [band_keys(before, *self.bands), band_keys(after, *self.bands)]
            )
        return out


def _before_and_after(features_of: Any, docs: list[Doc], views: list[str]) -> np.ndarray:
    """Features of the views and, beside them, of the filtered texts (computed only where a
    text differs from its view)."""
    before = features_of(views)
    after = before.copy()
    changed = [k for k, (doc, view) in enumerate(zip(docs, views, strict=True)) if doc.text != view]
    if changed:
        after[changed] = features_of([docs[k].text for k in changed])
    return np.hstack([before, after])


_features: dict[str, Features] = {}


def features_for(cfg: DataConfig) -> Features:
    key = sha256_json(cfg.model_dump(mode="json"))
    if key not in _features:
        _features.clear()
        _features[key] = Features(cfg)
    return _features[key]


def is_done(task: ShardTask) -> bool:
    marker = layout.work_file(task.work, "done", task.shard.index, ".json")
    try:
        done = read_json(marker)
    except (OSError, ValueError):
        return False
    return done.get("fingerprint") == task.fingerprint and done.get("layout") == FEATURE_LAYOUT


def process_shard(task: ShardTask) -> dict[str, Any]:
    """Run phase 1 on one shard; returns its stats (also saved for --resume)."""
    shard, work = task.shard, task.work
    stats_path = layout.work_file(work, "stats", shard.index, ".json")
    if is_done(task):
        executor.report(0, shard.size)
        return read_json(stats_path)
    features = features_for(task.cfg)
    stats = Stats()
    # Small row groups keep each worker's buffers small (phase 3 reads them back in batches).
    docs_path = layout.work_file(work, "docs", shard.index, ".parquet")
    docs_out = layout.PartWriter(docs_path, layout.WORK_SCHEMA, WORK_ROWS)
    drops_path = layout.work_file(work, "dropped", shard.index, ".parquet")
    drops_out = layout.PartWriter(drops_path, layout.QUARANTINE_SCHEMA, WORK_ROWS)
    arrays: dict[str, list[np.ndarray]] = {}
    reader = ShardReader(shard, int(task.cfg.max_line_mb * 2**20), strict=task.cfg.strict)
    records = iter(reader)
    reported = 0
    try:
        while batch := list(islice(records, BATCH)):
            kept, views = _run_steps(batch, features, stats, shard.source, drops_out)
            features.annotate(kept)
            for name, values in features.dedup_features(kept, views).items():
                arrays.setdefault(name, []).append(values)
            for doc in kept:
                docs_out.add(layout.doc_row(doc))
                stats.add_length("kept_phase1", len(doc.text))
            executor.report(len(batch), reader.bytes_done - reported)
            reported = reader.bytes_done
    except BaseException:
        docs_out.abort()
        drops_out.abort()
        raise
    executor.report(0, shard.size - reported)
    n_docs = docs_out.close()
    drops_out.close()
    _save_arrays(work, shard.index, arrays, features, n_docs)
    atomic_write_json(stats_path, stats.to_json())
    marker = {"fingerprint": task.fingerprint, "layout": FEATURE_LAYOUT, "docs": n_docs}
    atomic_write_json(layout.work_file(work, "done", shard.index, ".json"), marker)
    return stats.to_json()


def _run_steps(
    batch: list[Doc | Drop],
    features: Features,
    stats: Stats,
    source: str,
    drops_out: layout.PartWriter,
) -> tuple[list[Doc], list[str]]:
    """The documents that pass every per-document step, and the dedup view of each."""
    docs = [r for r in batch if isinstance(r, Doc)]
    views: dict[int, tuple[Doc, str]] | None = None  # id(doc) -> (doc, text before the edits)
    rejected = [r for r in batch if isinstance(r, Drop)]
    for drop in rejected:
        drops_out.add(layout.drop_row(drop))
    for record in batch:
        stats.add_length("input", len(record.text))
    stats.record(
        "read",
        source,
        len(batch),
        len(docs),
        Counter(d.reason for d in rejected),
        chars_in=sum(len(r.text) for r in batch),
        chars_kept=sum(len(d.text) for d in docs),
    )
    for step in features.steps:
        if not docs:
            stats.record(step.name, source, 0, 0)
            continue
        if views is None and step.name in EDITING_STEPS:
            views = {id(doc): (doc, doc.text) for doc in docs}
        chars_in = sum(len(d.text) for d in docs)
        result = step.process(docs)
        for doc, reason, detail in result.dropped:
            drops_out.add(layout.drop_row(Drop.of(doc, step.name, reason, detail)))
        stats.record(
            step.name,
            source,
            len(docs),
            len(result.kept),
            Counter(reason for _, reason, _ in result.dropped),
            chars_in=chars_in,
            chars_kept=sum(len(d.text) for d in result.kept),
            modified=result.modified,
        )
        for key, n in result.counters.items():
            stats.count(step.name, key, n)
        docs = result.kept
    if views is None:
        return docs, [doc.text for doc in docs]
    return docs, [views[id(doc)][1] for doc in docs]


def _save_arrays(
    work: Path, index: int, arrays: dict[str, list[np.ndarray]], features: Features, n_docs: int
) -> None:
    wanted = []
    if needs_kept_share(features.cfg):
        wanted.append(("kept", (0,), np.uint8))
    if "exact_dedup" in features.cfg.steps:
        wanted.append(("exact", (0, 2 * VIEWS), np.uint64))
    if needs_signatures(features.cfg):
        wanted.append(("sig", (0, VIEWS * features.cfg.dedup.num_perm), np.uint32))
        wanted.append(("bands", (0, VIEWS * features.bands[0]), np.uint64))
    for name, empty_shape, dtype in wanted:
        parts = arrays.get(name)
        values = np.concatenate(parts) if parts else np.zeros(empty_shape, dtype)
        assert len(values) == n_docs, f"{name}: {len(values)} rows for {n_docs} documents"
        with atomic_path(layout.work_file(work, name, index, ".npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, values)
