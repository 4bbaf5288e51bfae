"""Reading a shard: every input line becomes a `Doc` or a `Drop` with file, line and reason.

Rows in = rows out: each line of a JSONL file, and each document of a text, Parquet or HF
input, yields exactly one record. What cannot be read at all yields one `Drop` saying why:
a file that is missing, unreadable or not a regular file, an empty one, and the damaged rest
of a stream (a truncated or corrupt .gz/.zst/.bz2, a file that shrank after planning), after
every line before the damage.

Reading streams in bounded chunks, so memory stays flat however large the input and however
far a small compressed file expands: a giant line is cut and its rest skipped.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data import builtin
from lmforge.data.document import Doc, Drop, is_valid_unicode, safe_str
from lmforge.data.plan import BUILTIN_SHARDS, Shard, arrow_files
from lmforge.data.stream import DamageAwareStream, error_message
from lmforge.errors import UserError
from lmforge.io import compression_of, open_binary

SHOWN_CHARS = 2000  # how much of a rejected raw line the quarantine keeps
PIECE_READ_BYTES = 1 << 20  # one read while looking for a separator
MAX_NESTING = 256  # deeper JSON would overflow the stack when its metadata is written
BOM = b"\xef\xbb\xbf"
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # only such a line can hold a lone one
ARROW_ERRORS = (pa.ArrowException, OSError, ValueError, OverflowError)


class ShardReader:
    """Streams one shard as Doc/Drop records; `bytes_done` tracks progress on disk."""

    def __init__(self, shard: Shard, max_line_bytes: int, strict: bool = False):
        self.shard = shard
        self.max_line_bytes = max_line_bytes
        self.strict = strict
        self.bytes_done = 0
        self.where = safe_str(shard.path)  # a file name's undecodable bytes, made storable
        self.limit = f"data.max_line_mb={max_line_bytes / 2**20:g}"

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
                f"{safe_str(location)}: {reason}: {safe_str(detail)} "
                "(fix the input, or drop --strict to quarantine it)"
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
                _shown_record(record),
            )
        doc_id = str(raw_id) if raw_id not in (None, "") else fallback_id
        text = record.get(shard.text_field)
        if text is None:
            return self.reject(
                location,
                "missing_text",
                f"no {shard.text_field!r} field",
                _shown_record(record),
                doc_id,
            )
        if not isinstance(text, str):
            return self.reject(
                location,
                "bad_type",
                f"{shard.text_field!r} is a {type(text).__name__}, not a string",
                _shown_record(record),
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
        try:
            f = open_binary(shard.path)
        except OSError as e:
            yield self.reject(f"{self.where}:0", "unreadable_file", error_message(e))
            return
        with f:
            if shard.start:
                f.seek(shard.start)  # only an uncompressed file is cut into byte ranges
            limit = None if shard.end < 0 else shard.end - shard.start
            expected = None
            if compression_of(shard.path) is None:
                expected = (shard.end if shard.end >= 0 else shard.size) - shard.start
            stream = DamageAwareStream(f, limit, expected)
            if shard.start == 0 and stream.is_empty():
                yield self.reject(f"{self.where}:0", "empty_file", "the file holds no bytes")
            elif fmt == "jsonl":
                yield from self._jsonl(stream)
            elif shard.separator is None:
                yield self._whole_file(stream)
            else:
                yield from self._separated(stream)

    def _lines(self, stream: DamageAwareStream) -> Iterator[tuple[int, bytes, str]]:
        """(line number, bytes, kind) for each line of the range. kind is "ok", "too_long" (the
        line is cut to max_line_bytes and its rest skipped, so memory stays flat) or
        "damaged" (the stream failed inside it, or after the last line: then it is empty)."""
        line_no = self.shard.first_line - 1
        while line := stream.readline(self.max_line_bytes + 1):
            line_no += 1
            kind = "ok"
            if len(line) > self.max_line_bytes and not line.endswith(b"\n"):
                stream.skip_line()
                kind = "too_long"
            elif stream.damage and not line.endswith(b"\n"):
                kind = "damaged"
            if line_no == 1:
                line = line.removeprefix(BOM)
            self.bytes_done = min(stream.used, self.shard.size)
            yield line_no, line, kind
            if kind == "damaged":
                return
        if stream.damage:
            yield line_no + 1, b"", "damaged"

    def _jsonl(self, stream: DamageAwareStream) -> Iterator[Doc | Drop]:
        for line_no, line, kind in self._lines(stream):
            location = f"{self.where}:{line_no}"
            if kind == "too_long":
                raw = line[:SHOWN_CHARS].decode("utf-8", "replace")
                yield self.reject(location, "line_too_long", f"longer than {self.limit}", raw)
            elif kind == "damaged":
                yield self.reject(location, *stream.damage, line.decode("utf-8", "replace"))
            else:
                yield self._json_line(line, location, line_no)

    def _json_line(self, line: bytes, location: str, line_no: int) -> Doc | Drop:
        text = self.decoded(line, location)
        if isinstance(text, Drop):
            return text
        if not text.strip():
            return self.reject(location, "blank_line", "an empty line in a JSONL file")
        shown = text.rstrip("\r\n")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            return self.reject(location, "malformed_json", f"{e.msg} at column {e.colno}", shown)
        except (ValueError, RecursionError) as e:  # a number of over 4300 digits, deep nesting
            return self.reject(location, "malformed_json", error_message(e), shown)
        if not isinstance(record, dict):
            detail = f"a JSON {type(record).__name__}, not an object"
            return self.reject(location, "not_an_object", detail, shown)
        if line.count(b"[") + line.count(b"{") > MAX_NESTING and _depth(record) > MAX_NESTING:
            detail = f"JSON nested deeper than {MAX_NESTING} levels"
            return self.reject(location, "too_deep", detail, shown)
        if SURROGATE_ESCAPE.search(line):
            field = _field_with_lone_surrogate(record)
            if field is not None:
                detail = (
                    f"field {field!r} holds a lone surrogate (an unpaired \\ud800-\\udfff "
                    "escape), which is not Unicode text; pair it or remove it"
                )
                raw_id = record.get(self.shard.id_field)
                doc_id = raw_id if isinstance(raw_id, str) and raw_id else None
                return self.reject(location, "lone_surrogate", detail, shown, doc_id)
        return self.make_doc(record, location, f"{self.shard.id_prefix}:{line_no}")

    def _whole_file(self, stream: DamageAwareStream) -> Drop | Doc:
        location = f"{self.where}:1"
        data = stream.read(self.max_line_bytes + 1)
        if stream.damage:
            return self.reject(location, *stream.damage, data.decode("utf-8", "replace"))
        if len(data) > self.max_line_bytes:
            return self.reject(
                location,
                "file_too_large",
                f"one document over {self.limit}; set the source's separator to split it",
            )
        return self._text_doc(data.removeprefix(BOM), location, self.shard.id_prefix)

    def _text_doc(self, raw: bytes, location: str, doc_id: str) -> Doc | Drop:
        nul = raw.find(b"\x00")
        if nul >= 0:
            detail = f"a NUL byte at byte {nul}: binary data, not text"
            return self.reject(location, "binary", detail, raw.decode("utf-8", "replace"))
        text = self.decoded(raw, location)
        if isinstance(text, Drop):
            return text
        if not text.strip():
            return self.reject(location, "empty_text", "the document is blank", text, doc_id)
        shard = self.shard
        return Doc(doc_id, text, shard.source, location, shard.weight)

    def _separated(self, stream: DamageAwareStream) -> Iterator[Doc | Drop]:
        """Documents between occurrences of the separator; blank pieces are separators too.
        CRLF line ends are read as LF, so a Windows file splits like any other."""
        sep = self.shard.separator.replace("\r\n", "\n").encode("utf-8")  # type: ignore[union-attr]
        line_no, buf, carry = self.shard.first_line, b"", b""
        skipping = False  # inside a piece already quarantined as too long
        found = 0
        first = self.shard.start == 0
        while chunk := stream.read(PIECE_READ_BYTES):
            if first:
                chunk, first = chunk.removeprefix(BOM), False
            data = carry + chunk
            carry = b"\r" if data.endswith(b"\r") else b""  # its LF may open the next read
            buf += data[: len(data) - len(carry)].replace(b"\r\n", b"\n")
            *pieces, buf = buf.split(sep)
            for piece in pieces:
                if not skipping:
                    for record in self._piece(piece, line_no):
                        found += 1
                        yield record
                skipping = False
                line_no += piece.count(b"\n") + sep.count(b"\n")
            self.bytes_done = min(stream.used, self.shard.size)
            if len(buf) > self.max_line_bytes:
                if not skipping:
                    found += 1
                    yield self._too_long_piece(buf, line_no)
                skipping = True
                line_no += buf.count(b"\n")
                buf = b""
        buf += carry
        if stream.damage:
            yield self.reject(
                f"{self.where}:{line_no}", *stream.damage, buf.decode("utf-8", "replace")
            )
            return
        if not skipping:
            for record in self._piece(buf, line_no):
                found += 1
                yield record
        if not found and self.shard.start == 0 and self.shard.end < 0:
            yield self.reject(f"{self.where}:1", "empty_file", "the file holds only blank text")

    def _too_long_piece(self, piece: bytes, line_no: int) -> Drop:
        raw = piece[:SHOWN_CHARS].decode("utf-8", "replace")
        location = f"{self.where}:{line_no}"
        return self.reject(location, "line_too_long", f"a piece longer than {self.limit}", raw)

    def _piece(self, piece: bytes, line_no: int) -> Iterator[Doc | Drop]:
        if not piece.strip():
            return
        lead = len(piece) - len(piece.lstrip(b"\r\n"))
        start_line = line_no + piece[:lead].count(b"\n")
        if len(piece) > self.max_line_bytes:
            yield self._too_long_piece(piece, start_line)
            return
        location = f"{self.where}:{start_line}"
        yield self._text_doc(piece.strip(b"\r\n"), location, f"{self.shard.id_prefix}:{start_line}")

    def _parquet(self) -> Iterator[Doc | Drop]:
        shard = self.shard
        try:
            open_binary(shard.path).close()  # refuses a directory or a FIFO (it would block)
            pf = pq.ParquetFile(shard.path)
            groups = pf.metadata.num_row_groups
        except ARROW_ERRORS as e:
            yield self.reject(f"{self.where}:0", "unreadable_parquet", error_message(e))
            return
        end = groups if shard.end < 0 else shard.end
        if end > groups:
            detail = f"it has {groups} row groups, {end} were planned: it changed during the run"
            yield self.reject(f"{self.where}:0", "file_changed", detail)
            end = groups
        row = shard.first_line
        with pf:
            for group in range(shard.start, end):
                yield from self._row_group(pf, group, row)
                row += pf.metadata.row_group(group).num_rows

    def _row_group(self, pf: pq.ParquetFile, group: int, first_row: int) -> Iterator[Doc | Drop]:
        """One row group's records; rows it fails to deliver are quarantined one by one."""
        batches = pf.iter_batches(batch_size=1024, row_groups=[group], use_threads=False)
        done = 0
        while True:
            try:
                batch = next(batches, None)
            except ARROW_ERRORS as e:
                detail = f"row group {group} cannot be read: {error_message(e)}"
                end = first_row + pf.metadata.row_group(group).num_rows
                for row in range(first_row + done, end):
                    yield self.reject(f"{self.where}:{row}", "unreadable_row", detail)
                return
            if batch is None:
                return
            yield from self._batch(batch, self.where, self.shard.id_prefix, first_row + done)
            done += batch.num_rows

    def _hf(self) -> Iterator[Doc | Drop]:
        root = Path(self.shard.path)
        rows: dict[str, int] = {}  # a split's shards (data-00000-of-00002.arrow...) count on
        for arrow in arrow_files(root):
            split = arrow.parent.relative_to(root).as_posix()
            path, id_prefix = self.where, self.shard.id_prefix
            if split != ".":
                path, id_prefix = f"{path}/{safe_str(split)}", f"{id_prefix}:{safe_str(split)}"
            row = rows.get(split, 1)
            try:
                with pa.memory_map(str(arrow)) as source:
                    for batch in pa.ipc.open_stream(source):
                        yield from self._batch(batch, path, id_prefix, row)
                        row += batch.num_rows
            except ARROW_ERRORS as e:
                detail = f"{safe_str(arrow.name)} cannot be read from here on: {error_message(e)}"
                yield self.reject(f"{path}:{row}", "unreadable_arrow", detail)
            rows[split] = row

    def _batch(
        self, batch: pa.RecordBatch, path: str, id_prefix: str, first_row: int
    ) -> Iterator[Doc | Drop]:
        """The batch's rows as records. A batch that does not convert as a whole (invalid
        UTF-8 in a string column, a date Python cannot hold) is converted row by row, so
        only its bad rows are quarantined."""
        try:
            records: list[dict[str, Any]] | None = batch.to_pylist()
        except ARROW_ERRORS:
            records = None
        for k in range(batch.num_rows):
            row = first_row + k
            location = f"{path}:{row}"
            if records is not None:
                record = records[k]
            else:
                try:
                    record = batch.slice(k, 1).to_pylist()[0]
                except ARROW_ERRORS as e:
                    reason = "undecodable" if isinstance(e, UnicodeDecodeError) else "bad_value"
                    yield self.reject(location, reason, error_message(e))
                    continue
            yield self.make_doc(record, location, f"{id_prefix}:{row}")


def _shown_record(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _field_with_lone_surrogate(record: dict) -> str | None:
    """The name (made storable) of the first field whose key or value holds a lone surrogate."""
    for key, value in record.items():
        stack = [key, value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if not is_valid_unicode(item):
                    return safe_str(key)
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return None
