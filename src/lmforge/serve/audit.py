"""The audit log: one SQLite row per request (and one per shadow run), never lost.

Rows are queued in memory and written by one thread in batches (one transaction per
batch), so a burst of requests costs the event loop a queue put each; the database runs in
WAL mode, so admin queries read while the writer writes. `close()` (graceful shutdown)
writes everything still queued before it returns; `flush()` waits until what was queued
so far is on disk. Rows older than the retention period are deleted when the log opens and
then once an hour.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

REQUEST_COLUMNS = ("request_id", "ts", "key_id", "route", "model", "variant", "prompt",
                   "output", "prompt_tokens", "completion_tokens", "latency_ms", "status",
                   "error", "filters", "client")
SHADOW_COLUMNS = ("request_id", "ts", "model", "variant", "prompt", "output", "prompt_tokens",
                  "completion_tokens", "latency_ms", "status", "error")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, {", ".join(REQUEST_COLUMNS)});
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_key ON requests (key_id, ts);
CREATE TABLE IF NOT EXISTS shadow (id INTEGER PRIMARY KEY, {", ".join(SHADOW_COLUMNS)});
CREATE INDEX IF NOT EXISTS shadow_request ON shadow (request_id);
"""
PURGE_EVERY_S = 3600.0
WRITE_ATTEMPTS = 5
_STOP = object()
log = logging.getLogger("lmforge.serve.audit")


class AuditLog:
    def __init__(self, path: Path, retention_days: int = 180) -> None:
        self.path = Path(path)
        self.retention_s = retention_days * 86400.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a usable SQLite audit log ({e}); "
                            "set serve.audit.path to another file") from None
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._last_purge = 0.0
        self.purge()
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer",
                                        daemon=True)
        self._writer.start()

    def record(self, row: dict[str, Any]) -> None:
        self._queue.put(("requests", _encode(row, REQUEST_COLUMNS)))

    def record_shadow(self, row: dict[str, Any]) -> None:
        self._queue.put(("shadow", _encode(row, SHADOW_COLUMNS)))

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        """Write everything queued, then stop the writer and close the database."""
        if self._writer.is_alive():
            self._queue.put(_STOP)
            self._writer.join()
            self._db.close()

    def purge(self, now: float | None = None) -> int:
        """Delete rows past the retention period; how many went."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_s
        with self._lock, self._db:
            n = self._db.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
            n += self._db.execute("DELETE FROM shadow WHERE ts < ?", (cutoff,)).rowcount
        self._last_purge = time.monotonic()
        return n

    def query(self, table: str = "requests", limit: int = 100, **equal: Any) -> list[dict]:
        """Newest rows first; `since` is a unix time, other keywords must equal a column."""
        if table not in ("requests", "shadow"):
            raise ValueError(f"no audit table {table!r}")
        columns = REQUEST_COLUMNS if table == "requests" else SHADOW_COLUMNS
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
        sql = f"SELECT id, {', '.join(columns)} FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [_decode(dict(zip(("id", *columns), row, strict=True))) for row in rows]

    def count(self, table: str = "requests") -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < 512:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            rows = [item for item in batch if item is not _STOP]
            self._write(rows)
            for _ in batch:
                self._queue.task_done()
            if time.monotonic() - self._last_purge > PURGE_EVERY_S:
                self.purge()

    def _write(self, rows: list[tuple[str, tuple]]) -> None:
        """Insert the rows, retrying a busy or failing database; rows that still cannot be
        written go to the error log in full rather than vanish."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self._insert(rows)
                return
            except sqlite3.Error as e:
                log.warning("audit write failed (%s), attempt %d", e, attempt + 1)
                time.sleep(0.1 * 2**attempt)
        for table, values in rows:
            log.error("audit row not written to %s: %s", table, json.dumps(values, default=str))

    def _insert(self, rows: list[tuple[str, tuple]]) -> None:
        by_table: dict[str, list[tuple]] = {}
        for table, values in rows:
            by_table.setdefault(table, []).append(values)
        with self._lock, self._db:
            for table, values in by_table.items():
                columns = REQUEST_COLUMNS if table == "requests" else SHADOW_COLUMNS
                self._db.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})", values)


def _encode(row: dict[str, Any], columns: tuple[str, ...]) -> tuple:
    unknown = set(row) - set(columns)
    if unknown:
        raise ValueError(f"unknown audit columns {sorted(unknown)}")
    values = []
    for column in columns:
        value = row.get(column)
        if column == "ts" and value is None:
            value = time.time()
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        values.append(value)
    return tuple(values)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("filters"), str):
        row["filters"] = json.loads(row["filters"])
    return row
