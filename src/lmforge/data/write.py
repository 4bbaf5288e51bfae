"""Phase 3 of `data prepare`, one shard per task: apply the global decisions and write the
shard's documents to train/val/test and everything dropped to quarantine."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lmforge.data import executor, layout
from lmforge.data.decide import decision_file
from lmforge.data.readers import Shard
from lmforge.data.stats import Stats
from lmforge.io import atomic_write_json, read_json


@dataclass(frozen=True)
class WriteTask:
    shard: Shard
    out_dir: Path
    work: Path
    fingerprint: str


def write_shard(task: WriteTask) -> dict[str, Any]:
    shard, work, out = task.shard, task.work, task.out_dir
    marker = layout.work_file(work, "written", shard.index, ".json")
    try:
        done = read_json(marker)
        if done.get("fingerprint") == task.fingerprint:
            executor.report(0, shard.size)
            return done["stats"]
    except (OSError, ValueError):
        pass
    name = layout.part_name(shard.index)
    splits = {s: layout.PartWriter(out / s / name, layout.OUTPUT_SCHEMA) for s in layout.SPLITS}
    quarantine = layout.PartWriter(out / layout.QUARANTINE / name, layout.QUARANTINE_SCHEMA)
    stats = Stats()
    dropped_path = layout.work_file(work, "dropped", shard.index, ".parquet")
    if dropped_path.is_file():
        for batch in pq.ParquetFile(dropped_path).iter_batches(batch_size=2048):
            for row in batch.to_pylist():
                quarantine.add(row)
    docs_path = layout.work_file(work, "docs", shard.index, ".parquet")
    if docs_path.is_file():
        decisions = pq.read_table(decision_file(work, shard.index)).to_pylist()
        _route(docs_path, decisions, splits, quarantine, stats, shard.source)
    for writer in (*splits.values(), quarantine):
        writer.close()
    result = stats.to_json()
    atomic_write_json(marker, {"fingerprint": task.fingerprint, "stats": result})
    executor.report(sum(w.count for w in splits.values()) + quarantine.count, shard.size)
    return result


def _route(
    docs_path: Path,
    decisions: list[dict[str, Any]],
    splits: dict[str, layout.PartWriter],
    quarantine: layout.PartWriter,
    stats: Stats,
    source: str,
) -> None:
    out_counts: Counter[str] = Counter()
    rows = (
        row
        for batch in pq.ParquetFile(docs_path).iter_batches(batch_size=2048)
        for row in batch.to_pylist()
    )
    for record, decision in zip(rows, decisions, strict=True):
        record.pop("chars")
        if decision["step"] is not None:
            quarantine.add(
                {
                    "id": record["id"],
                    "text": record["text"],
                    "source": record["source"],
                    "location": record["location"],
                    "step": decision["step"],
                    "reason": decision["reason"],
                    "detail": decision["detail"],
                    "duplicate_of": decision["duplicate_of"],
                }
            )
            continue
        text = record["text"]
        pieces = json.loads(decision["pieces"]) if decision["pieces"] else None
        for code, start, end in pieces or [(decision["split"], 0, len(text))]:
            name = layout.SPLITS[code]
            piece = dict(record)
            if pieces:
                piece["id"] = f"{record['id']}#{name}"
                piece["text"] = text[start:end]
            splits[name].add(piece)
            out_counts[name] += 1
            stats.add_length(name, len(piece["text"]))
            stats.count("chars_out", name, len(piece["text"]))
            stats.count("docs_out", f"{name}/{source}", 1)
            stats.count("language", piece["language"] or "unknown", 1)
    for name, n in out_counts.items():
        stats.count("docs_out", name, n)
