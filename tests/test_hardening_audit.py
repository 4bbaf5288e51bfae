"""The audit log under hostile text and failing writes: every string JSON can carry is
stored and comes back as sent, the writer outlives any exception, and flush/close never
hang. No server here: the log itself, driven directly."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from lmforge.serve import audit as audit_module
from lmforge.serve.audit import REQUEST_COLUMNS, SHADOW_COLUMNS, AuditLog
from lmforge.serve.auth import KeyStore
from lmforge.serve.metrics import Metrics
from lmforge.text.pii import PIIRedactor

HOSTILE = {
    "high surrogate": "hi \ud800 there",
    "low surrogate": "\udfff at the start",
    "a reversed pair": "\udc00\ud800",
    "a pair split in two": "\ud83d and \ude00",
    "undecodable bytes": b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape"),
    "NUL": "before\x00after\x00",
    "backslashes that look like escapes": "\\ud800 \\\\ud800 \\u00e9 \\",
    "surrogate next to a backslash": "\\\ud800\\",
    "non-BMP": "emoji \U0001F600 and \U00010348, han \u4e2d\u6587",
    "replacement char": "\ufffd",
    "control chars": "\x01\x1b[31mred\x7f\r\n\t",
    "huge": "long \ud800 text " * 50_000,
}
TEXT_COLUMNS = [c for c in REQUEST_COLUMNS if c not in (
    "ts", "prompt_tokens", "completion_tokens", "latency_ms", "status", "filters")]


def metric(metrics: Metrics, name: str, labels: dict | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_in_every_column_is_stored_and_comes_back_as_sent(tmp_path: Path,
                                                                        name: str) -> None:
    text = HOSTILE[name]
    metrics = Metrics()
    log = AuditLog(tmp_path / "audit.sqlite", metrics=metrics)
    row = {column: text for column in TEXT_COLUMNS}
    row["filters"] = {"input": text, text: [text, 1]}
    log.record(row)
    log.record_shadow({c: text for c in SHADOW_COLUMNS if c in TEXT_COLUMNS})
    log.record({"request_id": "after", "status": 200})  # the writer is still alive
    assert log.flush(30)
    after, stored = log.query(limit=2)
    assert after["request_id"] == "after" and log.healthy
    assert {c: stored[c] for c in TEXT_COLUMNS} == {c: text for c in TEXT_COLUMNS}
    assert stored["filters"] == {"input": text, text: [text, 1]}
    [shadow] = log.query("shadow")
    assert shadow["prompt"] == text and shadow["error"] == text
    escaped = any("\ud800" <= ch <= "\udfff" for ch in text)
    assert all(("escaped" in stored["altered"].get(c, [])) == escaped
               for c in [*TEXT_COLUMNS, "filters"])
    assert metric(metrics, "lmforge_audit_rows_lost_total") == 0
    log.close()
    raw = sqlite3.connect(tmp_path / "audit.sqlite").execute(
        "SELECT prompt FROM requests WHERE request_id != 'after'").fetchone()[0]
    assert raw.encode("utf-8")  # what is on disk is valid UTF-8, whatever came in


def test_values_sqlite_cannot_hold_are_kept_as_text_and_long_ones_cut(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(audit_module, "MAX_TEXT_CHARS", 1000)
    metrics = Metrics()
    log = AuditLog(tmp_path / "audit.sqlite", metrics=metrics)
    log.record({"request_id": "big", "prompt_tokens": 2**64, "completion_tokens": -(2**70),
                "status": 2**63 - 1, "latency_ms": float("inf"), "output": "\ud800" * 1500,
                "error": b"raw \xff bytes"})
    assert log.flush()
    [row] = log.query()
    assert row["prompt_tokens"] == str(2**64) and row["status"] == 2**63 - 1
    assert row["completion_tokens"] == str(-(2**70)) and row["latency_ms"] == float("inf")
    assert row["output"] == "\ud800" * 1000 and row["error"] == "b'raw \\xff bytes'"
    assert row["altered"] == {"prompt_tokens": ["as_text"], "completion_tokens": ["as_text"],
                              "output": ["truncated:1500", "escaped"], "error": ["as_text"]}
    assert metric(metrics, "lmforge_audit_rows_altered_total", {"change": "as_text"}) == 3
    assert metric(metrics, "lmforge_audit_rows_altered_total", {"change": "truncated"}) == 1
    log.close()


def test_the_writer_survives_any_exception_and_retries(tmp_path: Path, monkeypatch,
                                                       caplog) -> None:
    metrics = Metrics()
    log = AuditLog(tmp_path / "audit.sqlite", metrics=metrics)
    write, failures = log._write, [RuntimeError("boom"), UnicodeEncodeError(
        "utf-8", "\ud800", 0, 1, "surrogates not allowed"), MemoryError(), KeyError("x")]

    def flaky(rows):  # a whole writer step fails, not only SQLite
        if failures:
            raise failures.pop(0)
        return write(rows)

    monkeypatch.setattr(log, "_write", flaky)
    with caplog.at_level(logging.WARNING, "lmforge.serve.audit"):
        for i in range(5):
            log.record({"request_id": str(i), "status": 200})
        assert log.flush(10)
    assert sorted(r["request_id"] for r in log.query()) == ["0", "1", "2", "3", "4"]
    assert metric(metrics, "lmforge_audit_write_failures_total") >= 4
    assert metric(metrics, "lmforge_audit_rows_lost_total") == 0
    assert "RuntimeError: boom" in caplog.text and log.healthy
    log.close()


def test_a_failing_database_turns_unhealthy_keeps_its_rows_and_recovers(tmp_path: Path,
                                                                        caplog) -> None:
    path = tmp_path / "audit.sqlite"
    metrics = Metrics()
    log = AuditLog(path, metrics=metrics)
    other = sqlite3.connect(path)
    other.execute("ALTER TABLE requests RENAME TO away")  # every insert now fails
    other.commit()
    with caplog.at_level(logging.WARNING, "lmforge.serve.audit"):
        for i in range(3):
            log.record({"request_id": f"kept {i}", "status": 200})
        assert wait_for(lambda: not log.healthy)
        started = time.monotonic()
        assert log.flush(0.5) is False  # bounded: the rows cannot be written yet
        assert time.monotonic() - started < 2
        assert log.pending == 3
        assert metric(metrics, "lmforge_audit_pending_rows") == 3
        other.execute("ALTER TABLE away RENAME TO requests")
        other.commit()
        assert log.flush(15) and log.healthy
    assert sorted(r["request_id"] for r in log.query()) == ["kept 0", "kept 1", "kept 2"]
    assert metric(metrics, "lmforge_audit_rows_lost_total") == 0
    assert "cannot write" in caplog.text and "writes again" in caplog.text
    log.close()


def test_close_is_bounded_and_logs_rows_it_cannot_write(tmp_path: Path, caplog) -> None:
    path = tmp_path / "audit.sqlite"
    metrics = Metrics()
    log = AuditLog(path, metrics=metrics)
    other = sqlite3.connect(path)
    other.execute("DROP TABLE requests")
    other.commit()
    log.record({"request_id": "doomed", "prompt": "hi \ud800", "status": 200})
    with caplog.at_level(logging.ERROR, "lmforge.serve.audit"):
        started = time.monotonic()
        log.close(timeout=1)
        assert time.monotonic() - started < 1 + audit_module.MAX_PAUSE_S + 1
        assert "doomed" in caplog.text and "ud800" in caplog.text  # the row in full
        assert metric(metrics, "lmforge_audit_rows_lost_total") == 1
        log.record({"request_id": "late"})  # after close: logged, not queued forever
    assert "late" in caplog.text and log.pending == 0


def test_a_row_that_fails_alone_is_logged_and_the_rest_written(tmp_path: Path, monkeypatch,
                                                               caplog) -> None:
    metrics = Metrics()
    log = AuditLog(tmp_path / "audit.sqlite", metrics=metrics)
    insert = log._insert

    def refuse_poison(rows):
        if any(values[0] == "poison" for _, values in rows):
            raise sqlite3.IntegrityError("refused")
        insert(rows)

    monkeypatch.setattr(log, "_insert", refuse_poison)
    gate = threading.Event()
    monkeypatch.setattr(log, "_encode", _gated(log._encode, gate))
    with caplog.at_level(logging.ERROR, "lmforge.serve.audit"):
        for name in ("a", "poison", "b"):
            log.record({"request_id": name, "status": 200})
        gate.set()  # all three reach the writer in one batch
        assert log.flush(10)
    assert sorted(r["request_id"] for r in log.query()) == ["a", "b"]
    assert metric(metrics, "lmforge_audit_rows_lost_total") == 1
    assert '"poison"' in caplog.text and log.healthy
    log.close()


def _gated(encode, gate: threading.Event):
    def gated(*args):
        gate.wait(10)
        return encode(*args)
    return gated


def test_redacted_prompts_and_outputs(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite", redactor=PIIRedactor())
    log.record({"request_id": "r", "prompt": "mail bob@example.com \ud800",
                "output": "call 415-555-2671", "error": "kept bob@example.com"})
    log.record({"request_id": "clean", "prompt": "nothing personal"})
    assert log.flush()
    clean, row = log.query()
    assert row["prompt"] == "mail [EMAIL] \ud800" and row["output"] == "call [PHONE]"
    assert row["error"] == "kept bob@example.com"  # only prompts and outputs are redacted
    assert row["altered"] == {"prompt": ["redacted", "escaped"], "output": ["redacted"]}
    assert clean["prompt"] == "nothing personal" and clean["altered"] == {}
    log.close()


def test_a_log_from_before_the_altered_column_opens(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    old = sqlite3.connect(path)
    old.execute(f"CREATE TABLE requests (id INTEGER PRIMARY KEY, {', '.join(REQUEST_COLUMNS)})")
    old.execute("INSERT INTO requests (request_id, ts) VALUES ('old', ?)", (time.time(),))
    old.commit()
    log = AuditLog(path)
    log.record({"request_id": "new", "prompt": "\ud800"})
    assert log.flush()
    assert [(r["request_id"], r["altered"]) for r in log.query()] == [
        ("new", {"prompt": ["escaped"]}), ("old", {})]
    log.close()


def test_key_and_audit_databases_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        keys = KeyStore(tmp_path / "keys.sqlite")
        keys.create("user")
        log = AuditLog(tmp_path / "logs" / "audit.sqlite")
        log.record({"request_id": "x"})
        assert log.flush()
        files = [p for p in tmp_path.rglob("*.sqlite*")]
        assert {p.name for p in files} >= {"keys.sqlite", "keys.sqlite-wal", "audit.sqlite",
                                           "audit.sqlite-wal", "audit.sqlite-shm"}
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {
            p.name: 0o600 for p in files}
        log.close()
        keys.close()
    finally:
        os.umask(before)
