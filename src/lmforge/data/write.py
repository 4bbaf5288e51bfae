"""Phase 3 of `data prepare`, one shard per task: apply the global decisions and write the
shard's documents to train/val/test and everything dropped to quarantine.

Routing is columnar: each batch of the shard's documents is split with Arrow filters by
the decision column, so no Python object is made per document (only documents cut by a
contiguous split are handled one by one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmforge.data import executor, layout
from lmforge.data.decide import decision_file
from lmforge.data.plan import Shard
from lmforge.data.stats import Stats
from lmforge.io import atomic_write_json, read_json

BATCH = 1024


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
    extra_pieces = 0  # split rows beyond one per document (a cut document gives several)
    dropped_path = layout.work_file(work, "dropped", shard.index, ".parquet")
    if dropped_path.is_file():
        for batch in pq.ParquetFile(dropped_path).iter_batches(batch_size=BATCH, use_threads=False):
            quarantine.write(pa.Table.from_batches([batch]))
    docs_path = layout.work_file(work, "docs", shard.index, ".parquet")
    if docs_path.is_file():
        decisions = pq.read_table(decision_file(work, shard.index), use_threads=False)
        offset = 0
        for batch in pq.ParquetFile(docs_path).iter_batches(batch_size=BATCH, use_threads=False):
            docs = pa.Table.from_batches([batch])
            decided = decisions.slice(offset, docs.num_rows)
            offset += docs.num_rows
            extra_pieces += _route(docs, decided, splits, quarantine, stats, shard.source)
    for writer in (*splits.values(), quarantine):
        writer.close()
    # Count what is on disk, not what was handed to the writers: the accounting check then
    # sees any row lost between here and the file.
    stats.count("written", "quarantine", _rows_on_disk(quarantine.path))
    documents = sum(_rows_on_disk(w.path) for w in splits.values()) - extra_pieces
    stats.count("written", "documents", documents)
    result = stats.to_json()
    atomic_write_json(marker, {"fingerprint": task.fingerprint, "stats": result})
    executor.report(sum(w.count for w in splits.values()) + quarantine.count, shard.size)
    return result


def _route(
    docs: pa.Table,
    decided: pa.Table,
    splits: dict[str, layout.PartWriter],
    quarantine: layout.PartWriter,
    stats: Stats,
    source: str,
) -> int:
    """Write one batch; returns how many more split rows than documents it wrote."""
    dropped = decided["step"].is_valid()
    cut = decided["pieces"].is_valid()
    reasons = decided.select(["step", "reason", "detail", "duplicate_of"])
    quarantine.write(_join(docs.filter(dropped), reasons.filter(dropped)))
    split = decided["split"].to_numpy()
    whole = np.asarray(pc.invert(pc.or_(dropped, cut)))
    for code, name in enumerate(layout.SPLITS):
        part = docs.filter(pa.array(whole & (split == code)))
        splits[name].write(part)
        _count(stats, name, source, part)
    if not pc.any(cut).as_py():
        return 0
    cut_docs = docs.filter(cut)
    pieces = _write_pieces(cut_docs, decided["pieces"].filter(cut), splits, stats, source)
    return pieces - cut_docs.num_rows


def check_accounting(result: dict[str, Any]) -> None:
    """Rows in = rows out: every record the readers produced was written once, to a split or
    to the quarantine. Anything else is a bug in lmforge, so the run stops rather than
    publish an output that lost documents."""
    records = result["input"]["records"]
    written = result["counters"].get("written", {})
    documents, quarantined = written.get("documents", 0), written.get("quarantine", 0)
    if documents + quarantined != records:
        raise RuntimeError(
            f"data: {records:,} input records, but {documents:,} documents and "
            f"{quarantined:,} quarantine rows were written; please report this lmforge bug"
        )


def _join(left: pa.Table, right: pa.Table) -> pa.Table:
    for column in right.column_names:
        left = left.append_column(column, right[column])
    return left


def _write_pieces(
    docs: pa.Table,
    pieces: pa.ChunkedArray,
    splits: dict[str, layout.PartWriter],
    stats: Stats,
    source: str,
) -> int:
    """Documents a contiguous split cut at a boundary: one piece per split, `id#split`.
    Returns the number of pieces written."""
    written = 0
    for record, spec in zip(docs.to_pylist(), pieces.to_pylist(), strict=True):
        for code, start, end in json.loads(spec):
            name = layout.SPLITS[code]
            text = record["text"][start:end]
            piece = dict(record, id=f"{record['id']}#{name}", text=text, chars=len(text))
            table = pa.Table.from_pylist([piece], schema=layout.WORK_SCHEMA)
            splits[name].write(table)
            _count(stats, name, source, table)
            written += 1
    return written


def _rows_on_disk(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else 0


def _count(stats: Stats, split: str, source: str, part: pa.Table) -> None:
    if part.num_rows == 0:
        return
    chars = part["chars"].to_numpy()
    stats.add_lengths(split, chars)
    stats.count("chars_out", split, int(chars.sum()))
    stats.count("docs_out", split, part.num_rows)
    stats.count("docs_out", f"{split}/{source}", part.num_rows)
    languages = pc.value_counts(pc.fill_null(part["language"], "unknown"))
    for item in languages.to_pylist():
        stats.count("language", item["values"], item["counts"])
