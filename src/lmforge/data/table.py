"""What the global phase of `data prepare` works on: one row per phase-1 survivor.

Only small columns are loaded (ids as one compact Arrow string array, sources, lengths,
scores) plus the LSH band keys and exact-dedup keys; full MinHash signatures stay on disk
and are read row by row with pread when a candidate pair needs checking. (Memory-mapping
them looks free but is not: the kernel maps pages around every touched row into the
process, so a few thousand scattered reads pull whole files into its resident memory.)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data import layout
from lmforge.data.config import DataConfig
from lmforge.data.plan import Shard
from lmforge.data.process import VIEWS, needs_kept_share, needs_signatures, resolve_bands


class ShardedRows:
    """Rows of per-shard .npy files addressed by global row number, read on demand."""

    def __init__(self, paths: list[Path], counts: list[int], width: int, dtype: Any):
        self.dtype = np.dtype(dtype)
        self.width = width
        self.row_bytes = width * self.dtype.itemsize
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.files: list[tuple[int, int]] = []  # (fd, byte offset of row 0)
        for path, n in zip(paths, counts, strict=True):
            if not n:
                self.files.append((-1, 0))
                continue
            with open(path, "rb") as f:
                fmt = np.lib.format
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, _ = read(f)
                assert shape == (n, width), f"{path}: shape {shape}, expected {(n, width)}"
                start = f.tell()
            self.files.append((os.open(path, os.O_RDONLY), start))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.width), self.dtype)
        shard = np.searchsorted(self.offsets, index, side="right") - 1
        for k, (row, s) in enumerate(zip(index.tolist(), shard.tolist(), strict=True)):
            fd, start = self.files[s]
            local = row - int(self.offsets[s])
            data = os.pread(fd, self.row_bytes, start + local * self.row_bytes)
            out[k] = np.frombuffer(data, dtype=self.dtype)
        return out

    def close(self) -> None:
        for fd, _ in self.files:
            if fd >= 0:
                os.close(fd)
        self.files = []


@dataclass
class Table:
    ids: pa.StringArray
    source: np.ndarray  # index into `sources`
    sources: list[str]
    chars: np.ndarray
    relevance: np.ndarray
    perplexity: np.ndarray
    offsets: np.ndarray  # first global row of each shard
    exact: np.ndarray | None = None
    kept: np.ndarray | None = None  # percent of its dedup view each text kept (process.py)
    bands: np.ndarray | None = None
    sigs: ShardedRows | None = None
    alive: np.ndarray = field(init=False)
    # row -> (step, reason, detail, row of the document it duplicates or -1)
    drops: dict[int, tuple[str, str, str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.alive = np.ones(len(self), dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def id_of(self, row: int) -> str:
        return self.ids[row].as_py()

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

    def close(self) -> None:
        if self.sigs is not None:
            self.sigs.close()


def load_table(cfg: DataConfig, shards: list[Shard], work: Path, counts: list[int]) -> Table:
    columns = ["id", "chars", "relevance", "perplexity"]
    ids, sources, chars, relevance, perplexity = [], [], [], [], []
    for shard, n in zip(shards, counts, strict=True):
        if n == 0:
            continue
        t = pq.read_table(layout.work_file(work, "docs", shard.index, ".parquet"), columns=columns)
        ids.append(t["id"].combine_chunks())
        sources.append(np.full(n, shard.source_index, dtype=np.int32))
        chars.append(t["chars"].to_numpy())
        relevance.append(t["relevance"].to_numpy(zero_copy_only=False).astype(np.float32))
        perplexity.append(t["perplexity"].to_numpy(zero_copy_only=False).astype(np.float32))
    names = sorted({(s.source_index, s.source) for s in shards})
    table = Table(
        ids=pa.concat_arrays(ids) if ids else pa.array([], pa.string()),
        source=_cat(sources, np.int32),
        sources=[name for _, name in names],
        chars=_cat(chars, np.int64),
        relevance=_cat(relevance, np.float32),
        perplexity=_cat(perplexity, np.float32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    )

    def features(kind: str, width: int) -> np.ndarray:
        paths = [layout.work_file(work, kind, s.index, ".npy") for s in shards]
        parts = [np.load(p) for p, n in zip(paths, counts, strict=True) if n]
        return _cat(parts, np.uint64, width=width)

    if needs_kept_share(cfg):
        paths = [layout.work_file(work, "kept", s.index, ".npy") for s in shards]
        table.kept = _cat([np.load(p) for p, n in zip(paths, counts, strict=True) if n], np.uint8)
    if "exact_dedup" in cfg.steps:
        table.exact = features("exact", 2 * VIEWS)
    if needs_signatures(cfg):
        table.bands = features("bands", VIEWS * resolve_bands(cfg)[0])
        sig_paths = [layout.work_file(work, "sig", s.index, ".npy") for s in shards]
        table.sigs = ShardedRows(sig_paths, counts, VIEWS * cfg.dedup.num_perm, np.uint32)
    return table


def _cat(parts: list[np.ndarray], dtype: Any, width: int | None = None) -> np.ndarray:
    if parts:
        return np.concatenate(parts)
    return np.zeros((0, width) if width else 0, dtype=dtype)


def near_pairs(cfg: DataConfig, table: Table, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Verified near-duplicate pairs among `rows`, as global row numbers: a text of one, before
    or after the line edits (process.VIEWS), is similar to a text of the other."""
    from lmforge.data.dedup.clusters import candidate_pairs, verified_pairs

    i, j = candidate_pairs(table.bands[rows], VIEWS)
    i, j = rows[i], rows[j]
    if cfg.dedup.verify:
        i, j = verified_pairs(i, j, table.sigs, verification_threshold(cfg), VIEWS)
    return i, j


def verification_threshold(cfg: DataConfig) -> float:
    """The signature agreement a candidate needs: the threshold less `verify_margin` standard
    errors of the estimate, so a pair truly at the threshold is not lost to sampling noise
    (with 128 hashes at 0.8 the estimate's standard error is 0.035)."""
    t, n = cfg.dedup.threshold, cfg.dedup.num_perm
    return max(0.0, t - cfg.dedup.verify_margin * math.sqrt(t * (1 - t) / n))
