"""File helpers every stage shares: atomic writes, transparent decompression, hashing."""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import zstandard

from lmforge.errors import UserError

COMPRESSED_SUFFIXES = (".gz", ".zst", ".bz2")


def compression_of(path: str | Path) -> str | None:
    """Return 'gz', 'zst' or 'bz2' for a compressed file name, else None."""
    name = str(path)
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    return None


ZSTD_MAGIC = 0xFD2FB528
ZSTD_SKIPPABLE = 0x184D2A50  # the top 28 bits of a skippable frame's magic number


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a regular file for reading bytes, decompressing .gz/.zst/.bz2 on the fly.

    Decompression runs in bounded reads, so a small file that expands hugely never sits in
    memory whole. A damaged file raises instead of ending quietly: EOFError when it is cut
    short, OSError (or zlib.error, zstandard.ZstdError) when its data is corrupt. A
    directory, FIFO or device raises OSError at once rather than blocking a reader.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "Not a regular file", str(path))
        os.set_blocking(fd, True)
        raw = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    kind = compression_of(path)
    if kind is None:
        return raw
    return io.BufferedReader(_Decompressing(raw, kind), buffer_size=1 << 16)


class _Decompressing(io.RawIOBase):
    """The decompressed bytes of an open compressed file; closing it closes the file.

    python-zstandard's reader goes across frames here (a concatenated or multi-threaded
    .zst holds several) but ends quietly at a cut inside one, so its framing is checked
    when it ends (`check_zstd_frames`)."""

    def __init__(self, raw: IO[bytes], kind: str):
        self.raw = raw
        self.kind = kind
        self.checked = False
        if kind == "gz":
            self.stream: Any = gzip.GzipFile(fileobj=raw, mode="rb")
        elif kind == "bz2":
            self.stream = bz2.BZ2File(raw)
        else:
            decompressor = zstandard.ZstdDecompressor()
            self.stream = decompressor.stream_reader(raw, read_across_frames=True, closefd=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # read1: one step of the decompressor, so a failure loses no output of earlier steps
        data = self.stream.read1(len(buffer))
        if not data and len(buffer) and self.kind == "zst" and not self.checked:
            self.checked = True
            check_zstd_frames(self.raw.fileno())
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self.stream.close()
            finally:
                self.raw.close()
        super().close()


def check_zstd_frames(fd: int) -> None:
    """Walk the frame and block headers of a .zst file; EOFError if it ends inside a frame,
    OSError if what follows a frame is not another frame. Reads a few bytes per block."""
    size = os.fstat(fd).st_size
    cut_short = f"zstd data ends inside a frame: the file ({size} bytes) is cut short"
    pos = 0
    while pos < size:
        head = os.pread(fd, 18, pos)  # the longest frame header
        if len(head) < 8:
            raise EOFError(cut_short)
        magic = int.from_bytes(head[:4], "little")
        if magic & 0xFFFFFFF0 == ZSTD_SKIPPABLE:
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        if magic != ZSTD_MAGIC:
            raise OSError(f"not a zstd frame at byte {pos} of {size}")
        descriptor = head[4]
        single_segment = descriptor >> 5 & 1
        content_size_bytes = (single_segment, 2, 4, 8)[descriptor >> 6]
        pos += 5 + (1 - single_segment) + (0, 1, 2, 4)[descriptor & 3] + content_size_bytes
        last = 0
        while not last:
            block = os.pread(fd, 3, pos)
            if len(block) < 3:
                raise EOFError(cut_short)
            header = int.from_bytes(block, "little")
            last, block_type = header & 1, header >> 1 & 3
            pos += 3 + (1 if block_type == 1 else header >> 3)  # an RLE block stores one byte
        pos += 4 * (descriptor >> 2 & 1)  # the content checksum
    if pos > size:
        raise EOFError(cut_short)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a crash."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_private(path: Path) -> None:
    """Create `path` empty with owner-only permissions (0600) unless it exists, before
    SQLite opens it: key stores and audit logs hold key hashes and prompts, and SQLite
    gives its -wal and -shm files the permissions of the database file."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it into place.

    A reader never sees a half-written file, and a kill -9 leaves at most a stray temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash a JSON-able object canonically (sorted keys), so equal content gives equal hashes."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    # surrogatepass: a file name that is not UTF-8 (held with lone surrogates) still hashes
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def write_failed(path: Path, needed: int | None, error: BaseException) -> UserError:
    """The one-line error of a write that failed, with the free space where it went."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    where = f"{free / 1e6:,.1f} MB free" if free is not None else "free space unknown"
    errno_ = getattr(error, "errno", None)
    reason = os.strerror(errno_) if errno_ else "the write failed"
    need = f"it needs about {needed / 1e6:,.1f} MB, " if needed else ""
    return UserError(f"cannot write {path} ({reason}): {need}{where} on its disk; free some "
                     "space and run again (training: with --resume)")
