"""Bounded reads of a shard's bytes that end cleanly when the file fails: every byte before
the failure is delivered, then `damage` says why the rest is not (truncated, corrupt, a read
error, or a file that changed during the run)."""

from __future__ import annotations

import zlib
from typing import IO

import zstandard

CHUNK_BYTES = 1 << 16  # one read of the input
READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


def error_message(error: BaseException) -> str:
    """An error's first line, without the file name (the location names the file)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class DamageAwareStream:
    """Bounded reads of a shard's bytes that end cleanly when the file fails: every byte
    before the failure is delivered, then `damage` holds (reason, detail)."""

    def __init__(self, f: IO[bytes], limit: int | None, expected: int | None):
        self.f = f
        self.limit = limit  # bytes the shard covers; None: to the end of the file
        self.expected = expected  # bytes the plan saw (None for a compressed file)
        self.used = 0
        self.buffer = bytearray()
        self.ended = False
        self.damage: tuple[str, str] | None = None

    def _fill(self) -> bool:
        """Append the next chunk to the buffer; False once the stream has ended."""
        want = CHUNK_BYTES if self.limit is None else min(CHUNK_BYTES, self.limit - self.used)
        if self.ended or want <= 0:
            self.ended = True
            return False
        try:
            chunk = self.f.read1(want)  # one raw read: a failure loses no earlier bytes
        except READ_ERRORS as e:
            self.damage = (_damage_reason(e), f"{error_message(e)}; nothing after this was read")
            chunk = b""
        if chunk:
            self.used += len(chunk)
            self.buffer += chunk
            return True
        self.ended = True
        if self.damage is None and self.expected is not None and self.used < self.expected:
            self.damage = (
                "file_changed",
                f"the file ended {self.expected - self.used} bytes before the planned end: "
                "it was truncated or replaced during the run",
            )
        return False

    def _take(self, n: int) -> bytes:
        with memoryview(self.buffer) as view:
            out = bytes(view[:n])  # one copy (a bytearray slice would be a second)
        del self.buffer[:n]
        return out

    def is_empty(self) -> bool:
        """Whether the stream holds no bytes at all (and did not fail)."""
        return not self.buffer and not self._fill() and self.damage is None

    def readline(self, limit: int) -> bytes:
        """The next line with its newline, cut at `limit` bytes; b"" at the end."""
        scanned = 0
        while True:
            hit = self.buffer.find(b"\n", scanned, limit)
            if hit >= 0:
                return self._take(hit + 1)
            scanned = min(len(self.buffer), limit)
            if len(self.buffer) >= limit or not self._fill():
                return self._take(limit)

    def skip_line(self) -> None:
        """Drop the bytes up to and including the next newline, a chunk at a time."""
        while True:
            hit = self.buffer.find(b"\n")
            if hit >= 0:
                del self.buffer[: hit + 1]
                return
            self.buffer.clear()
            if not self._fill():
                return

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end."""
        while len(self.buffer) < n and self._fill():
            pass
        return self._take(n)


def _damage_reason(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "truncated"
    if isinstance(error, OSError) and error.errno is not None:
        return "read_error"
    return "corrupt"
