"""Planning: which shards the inputs are cut into.

A large uncompressed JSONL or text file is cut at record boundaries (so one huge file still
spreads over all workers), a Parquet file by row groups; a compressed file, an HF dataset
directory and each slice of the built-in corpus are one shard each. The plan is
deterministic, so resumed runs and any number of workers see the same shards.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data import builtin
from lmforge.data.config import SourceConfig
from lmforge.errors import UserError
from lmforge.io import compression_of

BUILTIN_PREFIX = "builtin:"
BUILTIN_SHARDS = 4
BUILTIN_SHARD_BYTES = 1_000_000  # an estimate, for the progress bar
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")


@dataclass(frozen=True)
class Shard:
    """A unit of work: a byte range of a file, a row-group range, or a slice of the builtin."""

    index: int
    source: str
    source_index: int
    weight: float
    path: str
    format: str
    start: int = 0
    end: int = -1  # -1: to the end
    first_line: int = 1
    size: int = 0  # bytes on disk this shard covers, for progress and balancing
    id_prefix: str = ""
    text_field: str = "text"
    id_field: str = "id"
    separator: str | None = None


def source_name(source: SourceConfig, index: int) -> str:
    if source.name:
        return source.name
    if source.path.startswith(BUILTIN_PREFIX):
        return source.path[len(BUILTIN_PREFIX) :]
    base = Path(source.path.split("*")[0].rstrip("/") or ".").name or f"source{index}"
    for suffix in (".gz", ".zst", ".bz2", *JSONL_SUFFIXES, ".parquet", *TEXT_SUFFIXES):
        base = base.removesuffix(suffix)
    return base or f"source{index}"


def expand(source: SourceConfig, where: str) -> tuple[list[Path], Path]:
    """The files of a source and the root their ids are relative to."""
    path = source.path
    if any(ch in path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"{where}: no files match {path!r}; check the glob pattern")
        return files, Path(os.path.commonpath([str(f.parent) for f in files]))
    p = Path(path)
    if not p.exists():
        raise UserError(f"{where}: {path} does not exist; fix the path (relative to {Path.cwd()})")
    if p.is_file():
        return [p], p.parent
    if _is_hf_dataset(p):
        return [p], p
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not files:
        raise UserError(f"{where}: directory {path} holds no files")
    return files, p


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    )


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    if _is_hf_dataset(path):
        return "hf"
    name = path.name.lower()
    for suffix in (".gz", ".zst", ".bz2"):
        name = name.removesuffix(suffix)
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def plan_shards(sources: list[SourceConfig], shard_mb: float) -> list[Shard]:
    """Cut every source into shards, in a deterministic order."""
    target = max(1, int(shard_mb * 1024 * 1024))
    shards: list[Shard] = []
    names: set[str] = set()
    for i, source in enumerate(sources):
        where = f"data.sources.{i}.path"
        name = source_name(source, i)
        if name in names:
            raise UserError(
                f"data.sources.{i}: two sources are named {name!r}; set a distinct name"
            )
        names.add(name)
        common = {
            "source": name,
            "source_index": i,
            "weight": source.weight,
            "text_field": source.text_field,
            "id_field": source.id_field,
            "separator": source.separator,
        }
        if source.path.startswith(BUILTIN_PREFIX):
            if source.path != f"{BUILTIN_PREFIX}{builtin.SOURCE}":
                raise UserError(
                    f"{where}: unknown built-in {source.path!r}; use builtin:python-docs"
                )
            for k in range(BUILTIN_SHARDS):
                shards.append(
                    Shard(
                        len(shards),
                        path=source.path,
                        format="builtin",
                        start=k,
                        size=BUILTIN_SHARD_BYTES,
                        **common,
                    )
                )
            continue
        files, root = expand(source, where)
        multi = len(files) > 1
        for f in files:
            fmt = detect_format(f, source.format)
            prefix = f"{name}:{f.relative_to(root).as_posix()}" if multi else name
            for start, end, line, size in _ranges(f, fmt, target, source.separator):
                shards.append(
                    Shard(
                        len(shards),
                        path=str(f),
                        format=fmt,
                        start=start,
                        end=end,
                        first_line=line,
                        size=size,
                        id_prefix=prefix,
                        **common,
                    )
                )
    return shards


def _ranges(
    path: Path, fmt: str, target: int, separator: str | None
) -> list[tuple[int, int, int, int]]:
    """(start, end, first_line, size) pieces of one file."""
    if fmt == "hf":
        return [(0, -1, 1, sum(f.stat().st_size for f in path.rglob("*.arrow")))]
    size = path.stat().st_size
    if fmt == "parquet":
        return _parquet_ranges(path, target)
    splittable = compression_of(path) is None and (fmt == "jsonl" or separator)
    if not splittable or size <= target:
        return [(0, -1, 1, size)]
    boundary = b"\n" if fmt == "jsonl" else separator.encode("utf-8")  # type: ignore[union-attr]
    return _byte_ranges(path, size, target, boundary)


def _byte_ranges(
    path: Path, size: int, target: int, boundary: bytes
) -> list[tuple[int, int, int, int]]:
    """Cut a file near multiples of `target`, just after an occurrence of `boundary`,
    counting newlines on the way so every range knows its first line number."""
    cuts, lines = [0], [1]
    newlines = pos = 0
    with open(path, "rb") as f:
        while cuts[-1] + target < size:
            chunk = f.read(cuts[-1] + target - pos)
            newlines += chunk.count(b"\n")
            pos += len(chunk)
            consumed = _through_boundary(f, boundary)
            if consumed is None:
                break
            newlines += consumed.count(b"\n")
            pos += len(consumed)
            if pos >= size:
                break
            cuts.append(pos)
            lines.append(newlines + 1)
    ends = [*cuts[1:], size]
    return [(s, e, ln, e - s) for s, e, ln in zip(cuts, ends, lines, strict=True)]


def _through_boundary(f, boundary: bytes) -> bytes | None:
    """Read up to and including the next `boundary`, leaving f just after it; None at EOF."""
    start = f.tell()
    tail = b""
    while True:
        more = f.read(1 << 16)
        if not more:
            return None
        tail += more
        hit = tail.find(boundary)
        if hit >= 0:
            f.seek(start + hit + len(boundary))
            return tail[: hit + len(boundary)]


def _parquet_ranges(path: Path, target: int) -> list[tuple[int, int, int, int]]:
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError):
        return [(0, -1, 1, path.stat().st_size)]  # the reader quarantines the bad file
    pieces: list[tuple[int, int, int, int]] = []
    start, acc, row = 0, 0, 1
    first_row = 1
    for g in range(meta.num_row_groups):
        acc += meta.row_group(g).total_byte_size
        row += meta.row_group(g).num_rows
        if acc >= target or g == meta.num_row_groups - 1:
            pieces.append((start, g + 1, first_row, acc))
            start, acc, first_row = g + 1, 0, row
    return pieces or [(0, -1, 1, 0)]
