"""The audit log: one SQLite row per request (one per shadow run, one per user feedback
score), never lost.

Rows are queued in memory and written by one thread in batches (one transaction per
batch), so a burst of requests costs the event loop a queue put each; the database runs in
WAL mode and queries use a connection of their own, so admin queries read while the writer
writes. Rows older than the retention period are deleted when the log opens and then once
an hour. The file is created readable by its owner only.

Any text JSON can carry is stored. A lone surrogate (valid JSON, not encodable as UTF-8) is
escaped, a field longer than MAX_TEXT_CHARS is cut, a value SQLite cannot hold (an integer
beyond 64 bits) is stored as text, and with `redactor` prompts and outputs are stored with
personal data replaced. The row's `altered` column names each change per field, e.g.
{"prompt": ["escaped"]}, and `query()` undoes the escaping: what comes back is what was sent.

The writer never dies. A failed write, whatever the exception, is logged, counted in
lmforge_audit_write_failures_total and retried with a growing pause while its rows wait in
memory (up to MAX_BACKLOG); a row that fails alone while the others are written goes to
the error log in full and is counted in lmforge_audit_rows_lost_total. After
UNHEALTHY_AFTER failures in a row `healthy` turns False (the server's /ready answers 503)
until a write succeeds. `flush()` and `close()` wait a bounded time; whatever `close()`
cannot write in time goes to the error log in full.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.io import create_private
from lmforge.serve.metrics import Metrics

REQUEST_COLUMNS = ("request_id", "ts", "key_id", "route", "model", "variant", "prompt",
                   "output", "prompt_tokens", "completion_tokens", "latency_ms", "status",
                   "error", "filters", "client")
SHADOW_COLUMNS = ("request_id", "ts", "model", "variant", "prompt", "output", "prompt_tokens",
                  "completion_tokens", "latency_ms", "status", "error")
FEEDBACK_COLUMNS = ("request_id", "ts", "key_id", "score", "comment")
COLUMNS = {"requests": REQUEST_COLUMNS, "shadow": SHADOW_COLUMNS, "feedback": FEEDBACK_COLUMNS}
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, {", ".join(REQUEST_COLUMNS)},
                                     altered);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_key ON requests (key_id, ts);
CREATE TABLE IF NOT EXISTS shadow (id INTEGER PRIMARY KEY, {", ".join(SHADOW_COLUMNS)}, altered);
CREATE INDEX IF NOT EXISTS shadow_request ON shadow (request_id);
CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY, {", ".join(FEEDBACK_COLUMNS)},
                                     altered);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
CREATE INDEX IF NOT EXISTS requests_request ON requests (request_id);
"""
REDACTED_COLUMNS = ("prompt", "output")
PURGE_EVERY_S = 3600.0
BATCH = 512
MAX_BACKLOG = 100_000  # rows held while the database fails; older ones go to the error log
MAX_TEXT_CHARS = 8_000_000
FIRST_PAUSE_S, MAX_PAUSE_S = 0.05, 5.0  # between retries: doubling from the first
UNHEALTHY_AFTER = 5  # failed writes in a row
PROBE_ROWS = 3  # rows tried one by one, all failing, that show the database is the problem
FLUSH_TIMEOUT_S = 10.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ESCAPED = re.compile(r"[\\\ud800-\udfff]")
_UNESCAPE = re.compile(r"\\(\\|u[0-9a-f]{4})")
_STOP = object()
log = logging.getLogger("lmforge.serve.audit")


class AuditLog:
    def __init__(self, path: Path, retention_days: int = 180, redactor: Any = None,
                 metrics: Metrics | None = None) -> None:
        """`redactor`: an object whose `redact(text)` returns (text, counts by kind),
        such as the PII redactor; None stores prompts and outputs as they are."""
        self.path = Path(path)
        self.retention_s = retention_days * 86400.0
        self.redactor = redactor
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()  # the writer's connection (purge runs on it too)
        self._read_lock = threading.Lock()
        self._last_purge = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            create_private(self.path)
            self._db = _connect(self.path)
            self._db.executescript(SCHEMA)
            _add_altered_column(self._db)
            self.purge()
            self._reader = _connect(self.path)
        except (sqlite3.DatabaseError, OSError) as e:
            raise UserError(f"{self.path} is not a usable SQLite audit log ({e}); "
                            "set serve.audit.path to another file") from None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._settled = threading.Condition()
        self._pending = 0  # rows recorded and not yet written or given up
        self._failures = 0  # failed writes in a row
        self._healthy = True
        self._stopping = False
        self._closed = False
        self._close_by = 0.0
        self.metrics.audit_pending.set_function(lambda: self._pending)
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer",
                                        daemon=True)
        self._writer.start()

    @property
    def healthy(self) -> bool:
        """False while writes keep failing or the writer is gone."""
        return self._healthy and self._writer.is_alive()

    @property
    def pending(self) -> int:
        return self._pending

    def record(self, row: dict[str, Any]) -> None:
        self._put("requests", row)

    def record_shadow(self, row: dict[str, Any]) -> None:
        self._put("shadow", row)

    def record_feedback(self, row: dict[str, Any]) -> None:
        """A user's score for an answered request (`POST /v1/feedback`), for A/B reports."""
        self._put("feedback", row)

    def _put(self, table: str, row: dict[str, Any]) -> None:
        unknown = set(row) - set(COLUMNS[table])
        if unknown:
            raise ValueError(f"unknown audit columns {sorted(unknown)}")
        row = dict(row)
        if row.get("ts") is None:
            row["ts"] = time.time()
        with self._settled:  # under the lock close() takes: nothing is queued after _STOP
            self._pending += 1
            closed = self._closed
            if not closed:
                self._queue.put((table, row))
        if closed:
            self._lose([(table, row)], "the audit log is closed")

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until the rows recorded so far are written (or given up); False if that
        took longer than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._settled:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._writer.is_alive():
                    return False
                self._settled.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, for up to `timeout` seconds (rows still unwritten then
        go to the error log), then stop the writer and close the database."""
        with self._settled:
            if self._closed:
                return
            self._closed = True
            self._close_by = time.monotonic() + timeout
            self._queue.put(_STOP)
        self._writer.join(timeout + MAX_PAUSE_S + 1)
        if self._writer.is_alive():
            log.error("the audit writer did not stop in time; %d rows may be unwritten",
                      self._pending)
        with self._read_lock:
            self._reader.close()

    def purge(self, now: float | None = None) -> int:
        """Delete rows past the retention period; how many went."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_s
        with self._lock, self._db:
            n = self._db.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
            n += self._db.execute("DELETE FROM shadow WHERE ts < ?", (cutoff,)).rowcount
            n += self._db.execute("DELETE FROM feedback WHERE ts < ?", (cutoff,)).rowcount
        self._last_purge = time.monotonic()
        return n

    def query(self, table: str = "requests", limit: int = 100, **equal: Any) -> list[dict]:
        """Newest rows first; `since` is a unix time, other keywords must equal a column."""
        if table not in COLUMNS:
            raise ValueError(f"no audit table {table!r}")
        columns = COLUMNS[table]
        where, args = [], []
        since = equal.pop("since", None)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        for column, value in equal.items():
            if value is None:
                continue
            if column not in columns:
                raise ValueError(f"cannot filter the audit log on {column!r}")
            where.append(f"{column} = ?")
            args.append(value)
        sql = f"SELECT id, {', '.join(columns)}, altered FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._read_lock:
            rows = self._reader.execute(sql, (*args, limit)).fetchall()
        names = ("id", *columns, "altered")
        return [_decode(dict(zip(names, row, strict=True))) for row in rows]

    def count(self, table: str = "requests") -> int:
        with self._read_lock:
            return self._reader.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    # ---- the writer thread -------------------------------------------------------------

    def _write_loop(self) -> None:
        backlog: list[tuple[str, tuple]] = []
        while True:
            try:
                wait = None if not backlog and not self._stopping else self._pause()
                self._take(backlog, wait)
                if backlog:
                    backlog = self._write(backlog)
                if self._stopping and (not backlog or time.monotonic() > self._close_by):
                    break
                if time.monotonic() - self._last_purge > PURGE_EVERY_S:
                    self.purge()
            except Exception as e:  # the writer must outlive any failure: count, retry
                self._failed(e)
                time.sleep(self._pause())
        self._lose(backlog, "the log was closed before they could be written")
        with self._lock:
            self._db.close()

    def _pause(self) -> float:
        if not self._failures:
            return 0.0
        return min(MAX_PAUSE_S, FIRST_PAUSE_S * 2 ** (self._failures - 1))

    def _take(self, backlog: list[tuple[str, tuple]], wait: float | None) -> None:
        """Move queued rows, encoded, into `backlog`: wait up to `wait` seconds for the
        first (None: until one comes), then take what is there, up to BATCH."""
        items = []
        try:
            items.append(self._queue.get(timeout=wait))
            while len(items) < BATCH:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        for item in items:
            if item is _STOP:
                self._stopping = True
                continue
            try:
                backlog.append(self._encode(*item))
            except Exception as e:  # a row that cannot even be encoded: logged in full
                self._lose([item], f"it could not be encoded: {e!r}")
        if len(backlog) > MAX_BACKLOG:
            self._lose(backlog[:-MAX_BACKLOG], "too many rows wait for a failing database")
            del backlog[:-MAX_BACKLOG]

    def _write(self, rows: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
        """Insert `rows`; those to retry. When the batch fails, rows are tried one by one:
        if some go in, the ones that fail alone are lost (logged in full) rather than
        retried forever; if none go in, the database is failing and all are kept."""
        try:
            self._insert(rows)
        except Exception as e:
            self._failed(e)
        else:
            self._succeeded(len(rows))
            return []
        refused, written = [], 0
        for row in rows:
            try:
                self._insert([row])
                written += 1
            except Exception:
                refused.append(row)
                if not written and len(refused) >= PROBE_ROWS:
                    return rows
        if not written:
            return rows
        self._succeeded(written)
        self._lose(refused, "SQLite refused them")
        return []

    def _insert(self, rows: list[tuple[str, tuple]]) -> None:
        by_table: dict[str, list[tuple]] = {}
        for table, values in rows:
            by_table.setdefault(table, []).append(values)
        with self._lock, self._db:
            for table, values in by_table.items():
                columns = (*COLUMNS[table], "altered")
                self._db.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})", values)

    def _encode(self, table: str, row: dict[str, Any]) -> tuple[str, tuple]:
        """(table, the values as stored, `altered` last)."""
        values, altered = [], {}
        for column in COLUMNS[table]:
            redactor = self.redactor if column in REDACTED_COLUMNS else None
            value, changes = _storable(row.get(column), redactor)
            values.append(value)
            if changes:
                altered[column] = changes
                for change in changes:
                    self.metrics.audit_altered.labels(change.partition(":")[0]).inc()
        values.append(json.dumps(altered) if altered else None)
        return table, tuple(values)

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        self.metrics.audit_failures.inc()
        log.warning("audit write failed (%s: %s), attempt %d; retrying", type(error).__name__,
                    error, self._failures)
        if self._failures >= UNHEALTHY_AFTER and self._healthy:
            self._healthy = False
            log.error("the audit log cannot write (%d failures in a row); not ready until "
                      "it can", self._failures)

    def _succeeded(self, n: int) -> None:
        if not self._healthy:
            log.warning("the audit log writes again after %d failures", self._failures)
        self._failures, self._healthy = 0, True
        self._settle(n)

    def _lose(self, rows: list, why: str) -> None:
        for table, values in rows:
            log.error("audit row not written to %s (%s): %s", table, why, _dump(values))
        self.metrics.audit_lost.inc(len(rows))
        self._settle(len(rows))

    def _settle(self, n: int) -> None:
        with self._settled:
            self._pending -= n
            self._settled.notify_all()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, timeout=5)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _add_altered_column(db: sqlite3.Connection) -> None:
    """Logs written before the `altered` column existed get it."""
    for table in COLUMNS:
        names = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if "altered" not in names:
            db.execute(f"ALTER TABLE {table} ADD COLUMN altered")
    db.commit()


def _storable(value: Any, redactor: Any) -> tuple[Any, list[str]]:
    """A value SQLite stores as it is, and the changes it took to get there."""
    if value is None or isinstance(value, float) or (
            isinstance(value, int) and INT64_MIN <= value <= INT64_MAX):
        return value, []
    changes = []
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, default=str)
    elif not isinstance(value, str):
        value, changes = str(value), ["as_text"]
    if redactor is not None:
        value, counts = redactor.redact(value)
        if sum(counts.values()):
            changes.append("redacted")
    if len(value) > MAX_TEXT_CHARS:
        changes.append(f"truncated:{len(value)}")
        value = value[:MAX_TEXT_CHARS]
    if _SURROGATE.search(value):
        value = _ESCAPED.sub(_escape, value)
        changes.append("escaped")
    return value, changes


def _escape(match: re.Match) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else f"\\u{ord(char):04x}"


def _unescape(match: re.Match) -> str:
    code = match.group(1)
    return "\\" if code == "\\" else chr(int(code[1:], 16))


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["altered"] = json.loads(row["altered"]) if row["altered"] else {}
    for column, changes in row["altered"].items():
        if "escaped" in changes and isinstance(row.get(column), str):
            row[column] = _UNESCAPE.sub(_unescape, row[column])
    if isinstance(row.get("filters"), str):
        with contextlib.suppress(ValueError):  # cut short: kept as the text it is
            row["filters"] = json.loads(row["filters"])
    return row


def _dump(values: Any) -> str:
    """A lost row for the error log, whatever it holds."""
    try:
        return json.dumps(values, ensure_ascii=True, default=repr)
    except ValueError:
        return ascii(values)
