"""The tokenize stage: data-stage parquet splits -> {split}.bin / .idx + meta.json.

Each split is cut into shards of whole parquet row groups (`datasource.plan_shards`);
worker processes encode shards independently into `_work/`, each finished shard sealed by
an atomic done marker. Then the shards are concatenated in order. The plan depends only on
the input files, so the output is byte-identical for any number of workers, and a run
killed at any point resumes (`--resume`) from its finished shards. Memory is bounded by
one row group per worker, whatever the size of the input.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from lmforge.data.executor import LocalExecutor, report
from lmforge.io import atomic_path, atomic_write_json, read_json, sha256_json
from lmforge.outputs import remove_outputs
from lmforge.progress import byte_progress, console
from lmforge.tokenizer.config import TokenizeConfig
from lmforge.tokenizer.datasource import (
    Shard,
    check_data_dir,
    iter_texts,
    plan_shards,
    read_shard,
    split_files,
)
from lmforge.tokenizer.engine import choose_encoder, load_encoder
from lmforge.tokenizer.format import (
    IDX_DTYPE,
    META,
    SPLITS,
    TOKEN_DTYPES,
    bin_path,
    idx_path,
    make_meta,
    split_record,
    token_dtype_name,
)
from lmforge.tokenizer.train import tokenizer_summary

WORK = "_work"
STAGE_NAME = "tokenize"
SAMPLE_BYTES = 500_000


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a worker needs besides its shard; small, so cheap to send."""

    tokenizer_file: str
    engine: str
    eos_id: int
    dtype: str
    work_dir: Path
    single_thread: bool = False  # set in worker processes: one HF thread each


def tokenize(
    data_dir: Path, tokenizer_dir: Path, out_dir: Path, cfg: TokenizeConfig, resume: bool = False
) -> dict[str, Any]:
    """Encode every split of data_dir with the tokenizer; returns the stage metrics."""
    check_data_dir(data_dir)
    tok = tokenizer_summary(tokenizer_dir)
    dtype = token_dtype_name(tok["vocab_size"])
    remove_outputs(out_dir, (META,), STAGE_NAME)  # claims out_dir: refused if not lmforge's
    shards = {split: plan_shards(data_dir, split, cfg.shard_mb * 1e6) for split in SPLITS}
    work = out_dir / WORK
    reused = _prepare_work(out_dir, _plan_id(tok, dtype, shards), resume)

    sample = [
        t for texts in iter_texts(split_files(data_dir, "train"), SAMPLE_BYTES) for t in texts
    ]
    engine, why = choose_encoder(tok["file"], cfg.engine, sample)
    console.print(f"  encoder: {why}")
    load_encoder(str(tok["file"]), engine)  # built before forking, so workers inherit it
    workers = max(1, cfg.workers or os.cpu_count() or 1)
    settings = EncodeSettings(str(tok["file"]), engine, tok["special_ids"]["eos"], dtype, work)
    pending = [s for split in SPLITS for s in shards[split] if not _is_done(settings, s)]
    in_workers = workers > 1 and len(pending) > 1  # else the executor runs in this process
    settings = dataclasses.replace(settings, single_thread=in_workers)
    total = sum(len(v) for v in shards.values())
    if reused:
        console.print(f"  resuming: {total - len(pending)} of {total} shards already encoded")
    started = time.monotonic()
    with byte_progress("tokenize", sum(s.text_bytes for s in pending)) as update:
        LocalExecutor(workers).map(functools.partial(encode_shard, settings), pending, update)
    encoded_mb = sum(_marker(settings, s)["text_bytes"] for s in pending) / 1e6
    speed = encoded_mb / max(time.monotonic() - started, 1e-9)

    records = {split: _assemble(settings, out_dir, split, shards[split]) for split in SPLITS}
    extra = {"engine": engine, "data_dir": str(data_dir), "tokenizer_dir": str(tokenizer_dir)}
    meta = make_meta(tok["vocab_size"], tok["special_ids"], tok["sha256"], records, **extra)
    atomic_write_json(out_dir / META, meta)
    remove_outputs(out_dir, (WORK,), STAGE_NAME)
    _print_summary(records)
    return {
        "engine": engine,
        "workers": workers,
        "shards": total,
        "shards_reused": total - len(pending),
        "encode_mb_per_s": round(speed, 2),
        "dtype": dtype,
        "splits": {split: _split_metrics(r) for split, r in records.items()},
    }


def _split_metrics(record: dict[str, Any]) -> dict[str, Any]:
    per_token = record["text_bytes"] / max(record["tokens"], 1)
    counts = {k: record[k] for k in ("tokens", "documents", "text_bytes")}
    return {**counts, "bytes_per_token": round(per_token, 3)}


def encode_shard(settings: EncodeSettings, shard: Shard) -> dict[str, Any]:
    """Encode one shard into _work/ (runs in a worker process) and seal it with a marker."""
    if settings.single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    encoder = load_encoder(settings.tokenizer_file, settings.engine)
    dtype = TOKEN_DTYPES[settings.dtype]
    digest, lengths = xxhash.xxh3_64(), []
    text_bytes = 0
    tokens_file, lengths_file = _shard_files(settings, shard)
    with atomic_path(tokens_file) as tmp, open(tmp, "wb") as out:
        for texts in read_shard(shard):
            texts = [t or "" for t in texts]
            ids, doc_lengths = encoder.encode_documents(texts, settings.eos_id)
            data = ids.astype(dtype).tobytes()
            out.write(data)
            digest.update(data)
            lengths.append(doc_lengths)
            size = sum(len(t.encode("utf-8")) for t in texts)
            text_bytes += size
            report(len(texts), size)
    doc_lengths = np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int64)
    with atomic_path(lengths_file) as tmp:
        doc_lengths.astype(np.int64).tofile(tmp)
    marker = {
        "tokens": int(doc_lengths.sum()),
        "documents": len(doc_lengths),
        "text_bytes": text_bytes,
        "xxh3": digest.hexdigest(),
    }
    atomic_write_json(_marker_path(settings, shard), marker)
    return marker


def _shard_files(settings: EncodeSettings, shard: Shard) -> tuple[Path, Path]:
    stem = settings.work_dir / f"{shard.split}-{shard.index:05d}"
    return stem.with_suffix(".bin"), stem.with_suffix(".len")


def _marker_path(settings: EncodeSettings, shard: Shard) -> Path:
    return settings.work_dir / f"{shard.split}-{shard.index:05d}.done.json"


def _marker(settings: EncodeSettings, shard: Shard) -> dict[str, Any]:
    return read_json(_marker_path(settings, shard))


def _is_done(settings: EncodeSettings, shard: Shard) -> bool:
    """A shard counts as done when its marker exists and its token file matches it."""
    marker_path = _marker_path(settings, shard)
    if not marker_path.is_file():
        return False
    tokens_file, lengths_file = _shard_files(settings, shard)
    marker = read_json(marker_path)
    itemsize = TOKEN_DTYPES[settings.dtype].itemsize
    return (
        tokens_file.is_file()
        and lengths_file.is_file()
        and tokens_file.stat().st_size == marker["tokens"] * itemsize
        and lengths_file.stat().st_size == marker["documents"] * 8
        and xxhash.xxh3_64(tokens_file.read_bytes()).hexdigest() == marker["xxh3"]
    )


def _plan_id(tok: dict[str, Any], dtype: str, shards: dict[str, list[Shard]]) -> str:
    """Identity of the work plan: tokenizer, token type, and the exact input files."""
    files = [
        (
            s.split,
            s.index,
            s.file.name,
            s.file.stat().st_size,
            s.file.stat().st_mtime_ns,
            s.first,
            s.last,
        )
        for split in SPLITS
        for s in shards[split]
    ]
    return sha256_json(
        {
            "tokenizer": tok["sha256"],
            "eos": tok["special_ids"]["eos"],
            "dtype": dtype,
            "shards": files,
        }
    )


def _prepare_work(out_dir: Path, plan_id: str, resume: bool) -> bool:
    """Keep finished shards of the same plan when resuming; otherwise start clean."""
    work = out_dir / WORK
    plan_file = work / "plan.json"
    if resume and plan_file.is_file() and read_json(plan_file).get("plan") == plan_id:
        return True
    if resume and work.exists():
        console.print(
            "  resume: the inputs or tokenizer changed since the interrupted run; starting over"
        )
    remove_outputs(out_dir, (WORK,), STAGE_NAME)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_file, {"plan": plan_id})
    return False


def _assemble(
    settings: EncodeSettings, out_dir: Path, split: str, shards: list[Shard]
) -> dict[str, Any]:
    """Concatenate a split's shards in order, streaming, and describe the result."""
    offset = 0
    text_bytes = 0
    with (
        atomic_path(bin_path(out_dir, split)) as tmp_bin,
        atomic_path(idx_path(out_dir, split)) as tmp_idx,
        open(tmp_bin, "wb") as tokens_out,
        open(tmp_idx, "wb") as index_out,
    ):
        index_out.write(np.zeros(1, dtype=IDX_DTYPE).tobytes())
        for shard in shards:
            tokens_file, lengths_file = _shard_files(settings, shard)
            with open(tokens_file, "rb") as f:
                shutil.copyfileobj(f, tokens_out, 16 << 20)
            ends = offset + np.cumsum(np.fromfile(lengths_file, dtype=np.int64))
            index_out.write(ends.astype(IDX_DTYPE).tobytes())
            offset = int(ends[-1]) if len(ends) else offset
            text_bytes += _marker(settings, shard)["text_bytes"]
    return split_record(out_dir, split, settings.dtype, text_bytes)


def _print_summary(records: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("split", "documents", "tokens", "text MB", "bytes/token", title="tokens")
    for split, r in records.items():
        per_token = f"{r['text_bytes'] / r['tokens']:.2f}" if r["tokens"] else "-"
        table.add_row(
            split,
            f"{r['documents']:,}",
            f"{r['tokens']:,}",
            f"{r['text_bytes'] / 1e6:,.2f}",
            per_token,
        )
    console.print(table)
