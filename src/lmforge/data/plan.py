"""Planning: which shards the inputs are cut into.

A large uncompressed JSONL or text file is cut at record boundaries (so one huge file still
spreads over all workers), a Parquet file by row groups; a compressed file, an HF dataset
directory and each slice of the built-in corpus are one shard each. The plan is
deterministic, so resumed runs and any number of workers see the same shards.

Directories and globs are walked entering each real directory once, so a symlink loop
ends. What cannot be opened (a dangling link, an unreadable directory, a FIFO) still gets
a shard, for the reader to quarantine with its reason: nothing matched vanishes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data import builtin
from lmforge.data.config import SourceConfig
from lmforge.data.document import safe_str
from lmforge.errors import UserError
from lmforge.io import compression_of

BUILTIN_PREFIX = "builtin:"
BUILTIN_SHARDS = 4
BUILTIN_SHARD_BYTES = 1_000_000  # an estimate, for the progress bar
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
GLOB_CHARS = "*?["


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
        return safe_str(source.name)
    if source.path.startswith(BUILTIN_PREFIX):
        return source.path[len(BUILTIN_PREFIX) :]
    base = Path(source.path.split("*")[0].rstrip("/") or ".").name or f"source{index}"
    for suffix in (".gz", ".zst", ".bz2", *JSONL_SUFFIXES, ".parquet", *TEXT_SUFFIXES):
        base = base.removesuffix(suffix)
    return safe_str(base) or f"source{index}"


def expand(source: SourceConfig, where: str) -> tuple[list[Path], Path]:
    """The files of a source and the root their ids are relative to."""
    path = source.path
    if any(ch in path for ch in GLOB_CHARS):
        files = sorted(glob_files(path))
        if not files:
            raise UserError(f"{where}: no files match {path!r}; check the glob pattern")
        return files, Path(os.path.commonpath([str(f.parent) for f in files]))
    p = Path(path)
    if not os.path.lexists(p):
        raise UserError(f"{where}: {path} does not exist; fix the path (relative to {Path.cwd()})")
    if not os.path.isdir(p):
        return [p], p.parent
    if _is_hf_dataset(p):
        return [p], p
    files = sorted(walk(p, lambda names: not names[-1].startswith("."), lambda names: True))
    if not files:
        raise UserError(f"{where}: directory {path} holds no files")
    return files, p


Names = tuple[str, ...]  # a path below a walk's root, as its names


def walk(root: Path, wanted: Callable[[Names], bool], enter: Callable[[Names], bool]) -> list[Path]:
    """Every entry below `root` that is not a directory and that `wanted` accepts, entering
    the directories `enter` accepts. Each real directory (st_dev, st_ino) is entered once,
    by the first path in name order; one that cannot be listed is returned as it is."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, Names]] = [(root, ())]
    while stack:
        directory, names = stack.pop()
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            if os.path.lexists(directory):
                found.append(directory)
            continue
        below = []
        for entry in entries:
            sub = (*names, entry.name)
            if _is_dir(entry):
                if enter(sub):
                    below.append((Path(entry.path), sub))
            elif wanted(sub):
                found.append(Path(entry.path))
        stack.extend(reversed(below))
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def glob_files(pattern: str) -> list[Path]:
    """What `glob.glob(pattern, recursive=True)` finds that is not a directory, found by
    `walk` so that a symlink loop under a `**` ends."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if _has_magic(part)), len(parts))
    patterns = parts[fixed:]
    return walk(
        Path(*parts[:fixed]) if fixed else Path(),
        lambda names: _matches(names, patterns),
        lambda names: _may_hold(names, patterns),
    )


def _has_magic(part: str) -> bool:
    return any(ch in part for ch in GLOB_CHARS)


def _name_matches(name: str, pattern: str) -> bool:
    """glob's rule for one name: hidden names match only a pattern that starts with '.'."""
    return fnmatchcase(name, pattern) and (pattern.startswith(".") or not name.startswith("."))


def _matches(names: Names, patterns: Names) -> bool:
    if not patterns:
        return not names
    head, rest = patterns[0], patterns[1:]
    if head == "**":
        return _matches(names, rest) or (
            bool(names) and not names[0].startswith(".") and _matches(names[1:], patterns)
        )
    return bool(names) and _name_matches(names[0], head) and _matches(names[1:], rest)


def _may_hold(names: Names, patterns: Names) -> bool:
    """Whether a path below the directory `names` can match `patterns`."""
    if not names:
        return True
    if not patterns:
        return False
    head, rest = patterns[0], patterns[1:]
    if head == "**":
        return _may_hold(names, rest) or (
            not names[0].startswith(".") and _may_hold(names[1:], patterns)
        )
    return _name_matches(names[0], head) and _may_hold(names[1:], rest)


def arrow_files(root: Path) -> list[Path]:
    """The .arrow files of an HF dataset directory, in name order."""
    return sorted(walk(root, lambda names: names[-1].endswith(".arrow"), lambda names: True))


def _is_hf_dataset(path: Path) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(path / "state.json") or os.path.isfile(path / "dataset_dict.json")
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
            prefix = safe_str(f"{name}:{f.relative_to(root).as_posix()}") if multi else name
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
    """(start, end, first_line, size) pieces of one file; one piece for what cannot be
    read now (the reader then quarantines it with the reason)."""
    if fmt == "hf":
        return [(0, -1, 1, sum(_size(f) for f in arrow_files(path)))]
    try:
        info = path.stat()
    except OSError:
        return [(0, -1, 1, 0)]
    if not stat.S_ISREG(info.st_mode):
        return [(0, -1, 1, 0)]
    size = info.st_size
    if fmt == "parquet":
        return _parquet_ranges(path, target)
    splittable = compression_of(path) is None and (fmt == "jsonl" or separator)
    if not splittable or size <= target:
        return [(0, -1, 1, size)]
    boundary = b"\n" if fmt == "jsonl" else separator.encode("utf-8")  # type: ignore[union-attr]
    try:
        return _byte_ranges(path, size, target, boundary)
    except OSError:
        return [(0, -1, 1, size)]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


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
    except (pa.ArrowException, OSError, ValueError):
        return [(0, -1, 1, _size(path))]  # the reader quarantines the bad file
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
