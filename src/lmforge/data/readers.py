"""Reading a shard: every input line becomes a `Doc` or a `Drop` with file, line and reason.

Reading streams: memory stays flat however large the input (a giant line is cut and its
rest skipped in chunks).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data import builtin
from lmforge.data.document import Doc, Drop
from lmforge.data.plan import BUILTIN_SHARDS, Shard
from lmforge.errors import UserError
from lmforge.io import open_binary

SHOWN_CHARS = 2000  # how much of a rejected raw line the quarantine keeps
SNIFF_BYTES = 8192


class ShardReader:
    """Streams one shard as Doc/Drop records; `bytes_done` tracks progress on disk."""

    def __init__(self, shard: Shard, max_line_bytes: int, strict: bool = False):
        self.shard = shard
        self.max_line_bytes = max_line_bytes
        self.strict = strict
        self.bytes_done = 0

    def __iter__(self) -> Iterator[Doc | Drop]:
        fmt = self.shard.format
        if fmt == "builtin":
            yield from self._builtin()
        elif fmt == "parquet":
            yield from self._parquet()
        elif fmt == "hf":
            yield from self._hf()
        else:
            yield from self._file(fmt)
        self.bytes_done = self.shard.size

    def reject(
        self, location: str, reason: str, detail: str, raw: str = "", doc_id: str | None = None
    ) -> Drop:
        if self.strict:
            raise UserError(
                f"{location}: {reason}: {detail} (fix the input, or drop --strict to quarantine it)"
            )
        shown = raw if len(raw) <= SHOWN_CHARS else raw[:SHOWN_CHARS] + f"... [{len(raw)} chars]"
        return Drop(doc_id, shown, self.shard.source, location, "read", reason, detail)

    def decoded(self, raw: bytes, location: str) -> str | Drop:
        """The UTF-8 text, or the Drop saying where the bytes are invalid."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            detail = f"invalid UTF-8 at byte {e.start}"
            return self.reject(location, "undecodable", detail, raw.decode("utf-8", "replace"))

    def make_doc(self, record: dict, location: str, fallback_id: str) -> Doc | Drop:
        """A Doc from a parsed record, or the Drop saying what is wrong with it."""
        shard = self.shard
        raw_id = record.get(shard.id_field)
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
            return self.reject(
                location,
                "bad_id",
                f"field {shard.id_field!r} is a {type(raw_id).__name__}",
                json.dumps(record, ensure_ascii=False, default=str),
            )
        doc_id = str(raw_id) if raw_id not in (None, "") else fallback_id
        text = record.get(shard.text_field)
        if text is None:
            return self.reject(
                location,
                "missing_text",
                f"no {shard.text_field!r} field",
                json.dumps(record, ensure_ascii=False, default=str),
                doc_id,
            )
        if not isinstance(text, str):
            return self.reject(
                location,
                "bad_type",
                f"{shard.text_field!r} is a {type(text).__name__}, not a string",
                json.dumps(record, ensure_ascii=False, default=str),
                doc_id,
            )
        if not text.strip():
            return self.reject(
                location, "empty_text", f"{shard.text_field!r} is empty", text, doc_id
            )
        meta = {k: v for k, v in record.items() if k not in (shard.id_field, shard.text_field)}
        return Doc(doc_id, text, shard.source, location, shard.weight, meta)

    def _builtin(self) -> Iterator[Doc | Drop]:
        k = self.shard.start
        names = builtin.module_names()
        per = -(-len(names) // BUILTIN_SHARDS)
        docs = builtin.module_docs(names[k * per : (k + 1) * per])
        for doc in itertools.chain(builtin.topic_docs() if k == 0 else (), docs):
            doc.weight = self.shard.weight
            self.bytes_done = min(self.bytes_done + len(doc.text), self.shard.size)
            yield doc

    def _file(self, fmt: str) -> Iterator[Doc | Drop]:
        shard = self.shard
        with open_binary(shard.path) as f:
            head = f.read(SNIFF_BYTES) if shard.start == 0 else b""
            if shard.start == 0:
                if not head.strip():
                    yield self.reject(f"{shard.path}:0", "empty_file", "the file holds no text")
                    return
                if b"\x00" in head:
                    yield self.reject(
                        f"{shard.path}:0", "binary_file", "NUL bytes: not a text file"
                    )
                    return
            else:
                f.seek(shard.start)
            if fmt == "jsonl":
                yield from self._jsonl(_prepend(head, f))
            elif shard.separator is None:
                yield from self._whole_file(head + f.read(self.max_line_bytes + 1 - len(head)))
            else:
                yield from self._separated(_prepend(head, f))

    def _lines(self, f) -> Iterator[tuple[int, bytes, bool]]:
        """(line number, bytes, too_long) for each line of the range. An oversized line is cut
        to its first max_line_bytes and the rest skipped in chunks, so memory stays flat."""
        line_no = self.shard.first_line - 1
        budget = -1 if self.shard.end < 0 else self.shard.end - self.shard.start
        used = 0
        while budget < 0 or used < budget:
            line = f.readline(self.max_line_bytes + 1)
            if not line:
                return
            line_no += 1
            used += len(line)
            too_long = len(line) > self.max_line_bytes and not line.endswith(b"\n")
            rest = line
            while too_long and rest and not rest.endswith(b"\n"):
                rest = f.readline(1 << 20)
                used += len(rest)
            yield line_no, line, too_long
            self.bytes_done = used

    def _jsonl(self, f) -> Iterator[Doc | Drop]:
        path = self.shard.path
        limit = f"data.max_line_mb={self.max_line_bytes / 2**20:g}"
        for line_no, line, too_long in self._lines(f):
            location = f"{path}:{line_no}"
            if too_long:
                raw = line[:SHOWN_CHARS].decode("utf-8", "replace")
                yield self.reject(location, "line_too_long", f"longer than {limit}", raw)
                continue
            text = self.decoded(line, location)
            if isinstance(text, Drop):
                yield text
                continue
            if not text.strip():
                yield self.reject(location, "blank_line", "an empty line in a JSONL file")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                detail = f"{e.msg} at column {e.colno}"
                yield self.reject(location, "malformed_json", detail, text.rstrip("\n"))
                continue
            if not isinstance(record, dict):
                detail = f"a JSON {type(record).__name__}, not an object"
                yield self.reject(location, "not_an_object", detail, text.rstrip("\n"))
                continue
            yield self.make_doc(record, location, f"{self.shard.id_prefix}:{line_no}")

    def _whole_file(self, data: bytes) -> Iterator[Doc | Drop]:
        location = f"{self.shard.path}:1"
        if len(data) > self.max_line_bytes:
            yield self.reject(
                location,
                "file_too_large",
                f"one document over data.max_line_mb={self.max_line_bytes / 2**20:g}; "
                "set the source's separator to split it",
            )
            return
        text = self.decoded(data, location)
        yield (
            text
            if isinstance(text, Drop)
            else self.make_doc({"text": text}, location, self.shard.id_prefix)
        )

    def _separated(self, f) -> Iterator[Doc | Drop]:
        """Documents between occurrences of the separator; blank pieces are separators too."""
        sep = self.shard.separator.encode("utf-8")  # type: ignore[union-attr]
        budget = -1 if self.shard.end < 0 else self.shard.end - self.shard.start
        used, line_no, buf = 0, self.shard.first_line, b""
        skipping = False  # inside a piece already quarantined as too long
        while True:
            want = 1 << 20 if budget < 0 else min(1 << 20, budget - used)
            chunk = f.read(want) if want > 0 else b""
            used += len(chunk)
            buf += chunk
            pieces = buf.split(sep)
            buf = pieces.pop() if chunk else b""
            for piece in pieces:
                if not skipping:
                    yield from self._piece(piece, line_no)
                skipping = False
                line_no += piece.count(b"\n") + sep.count(b"\n")
            self.bytes_done = used
            if not chunk:
                return
            if len(buf) > self.max_line_bytes:
                if not skipping:
                    limit = f"data.max_line_mb={self.max_line_bytes / 2**20:g}"
                    raw = buf[:SHOWN_CHARS].decode("utf-8", "replace")
                    location = f"{self.shard.path}:{line_no}"
                    yield self.reject(
                        location, "line_too_long", f"a piece longer than {limit}", raw
                    )
                skipping = True
                line_no += buf.count(b"\n")
                buf = b""

    def _piece(self, piece: bytes, line_no: int) -> Iterator[Doc | Drop]:
        if not piece.strip():
            return
        lead = len(piece) - len(piece.lstrip(b"\r\n"))
        start_line = line_no + piece[:lead].count(b"\n")
        location = f"{self.shard.path}:{start_line}"
        if len(piece) > self.max_line_bytes:
            limit = f"data.max_line_mb={self.max_line_bytes / 2**20:g}"
            raw = piece[:SHOWN_CHARS].decode("utf-8", "replace")
            yield self.reject(location, "line_too_long", f"a piece longer than {limit}", raw)
            return
        text = self.decoded(piece, location)
        if isinstance(text, Drop):
            yield text
            return
        yield self.make_doc(
            {"text": text.strip("\r\n")}, location, f"{self.shard.id_prefix}:{start_line}"
        )

    def _parquet(self) -> Iterator[Doc | Drop]:
        shard = self.shard
        try:
            pf = pq.ParquetFile(shard.path)
        except (pa.ArrowInvalid, OSError) as e:
            yield self.reject(f"{shard.path}:0", "unreadable_parquet", str(e).splitlines()[0])
            return
        end = pf.metadata.num_row_groups if shard.end < 0 else shard.end
        groups = list(range(shard.start, end))
        yield from self._records(
            pf.iter_batches(batch_size=1024, row_groups=groups), shard.first_line
        )

    def _hf(self) -> Iterator[Doc | Drop]:
        root = Path(self.shard.path)
        for arrow in sorted(root.rglob("*.arrow")):
            split = arrow.parent.relative_to(root).as_posix()
            try:
                with pa.memory_map(str(arrow)) as source:
                    reader = pa.ipc.open_stream(source)
                    yield from self._records(iter(reader), 1, prefix=split if split != "." else "")
            except pa.ArrowInvalid as e:
                yield self.reject(f"{arrow}:0", "unreadable_arrow", str(e).splitlines()[0])

    def _records(self, batches, first_row: int, prefix: str = "") -> Iterator[Doc | Drop]:
        row = first_row
        path = self.shard.path if not prefix else f"{self.shard.path}/{prefix}"
        id_prefix = self.shard.id_prefix if not prefix else f"{self.shard.id_prefix}:{prefix}"
        for batch in batches:
            for record in batch.to_pylist():
                yield self.make_doc(record, f"{path}:{row}", f"{id_prefix}:{row}")
                row += 1


def _prepend(head: bytes, f):
    """A file-like object that first returns `head`, then the rest of `f`."""
    return _Chained(head, f)


class _Chained:
    def __init__(self, head: bytes, f):
        self.buffer = head
        self.f = f

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            out, self.buffer = self.buffer + self.f.read(), b""
            return out
        if len(self.buffer) < n:
            self.buffer += self.f.read(n - len(self.buffer))
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self.buffer and (limit < 0 or len(self.buffer) < limit):
            more = self.f.readline(limit if limit > 0 else -1)
            if not more:
                break
            self.buffer += more
        cut = self.buffer.find(b"\n") + 1 or len(self.buffer)
        if limit > 0:
            cut = min(cut, limit)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out
