"""API keys: stored hashed in SQLite, each with a role and optional own rate limits.

    store = KeyStore(Path("keys.sqlite"))
    key, secret = store.create("developer", name="ci")   # secret: lmf-<id>-<random>, shown once
    store.verify(secret)  -> ApiKey, or None (unknown, revoked or malformed)

A key carries its id in clear, so a lookup is one primary-key read; only the SHA-256 of the
whole key is stored (the random part has 256 bits, so a slow password hash adds nothing)
and it is compared in constant time. The file is created readable by its owner only.
Roles, from least to most:
  user       chat completions (no logprobs) and the model list
  developer  every inference route, logprobs included
  admin      everything, plus the /admin endpoints (keys, model reload, audit queries)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import UserError
from lmforge.io import create_private

ROLES = ("user", "developer", "admin")
MAX_RATE = 2**63 - 1  # the largest per-key limit SQLite stores as an integer
PREFIX = "lmf"
PERMISSIONS = {
    "models": {"user", "developer", "admin"},
    "chat": {"user", "developer", "admin"},
    "completions": {"developer", "admin"},
    "logprobs": {"developer", "admin"},
    "admin": {"admin"},
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT,
    created REAL NOT NULL,
    revoked REAL,
    requests_per_minute INTEGER,
    tokens_per_minute INTEGER
)
"""


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    name: str | None
    created: float
    revoked: float | None
    requests_per_minute: int | None
    tokens_per_minute: int | None

    def allows(self, action: str) -> bool:
        return self.role in PERMISSIONS[action]

    def as_dict(self) -> dict:
        return {"id": self.id, "role": self.role, "name": self.name, "created": self.created,
                "revoked": self.revoked, "requests_per_minute": self.requests_per_minute,
                "tokens_per_minute": self.tokens_per_minute}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise UserError(f"cannot create key store {self.path}: {self.path.parent} "
                            "does not exist")
        try:
            create_private(self.path)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)
            self._db.commit()
        except (sqlite3.DatabaseError, OSError) as e:
            raise UserError(f"{self.path} is not a usable SQLite key store ({e}); "
                            "pass another --db/--auth file") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def create(self, role: str, name: str | None = None, requests_per_minute: int | None = None,
               tokens_per_minute: int | None = None) -> tuple[ApiKey, str]:
        """A new key and its secret (the secret is not stored and cannot be shown again)."""
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
        for what, limit in (("requests", requests_per_minute), ("tokens", tokens_per_minute)):
            if limit is not None and not 1 <= limit <= MAX_RATE:
                raise UserError(f"{what} per minute must be between 1 and {MAX_RATE}, "
                                f"got {limit}")
        key_id = secrets.token_hex(6)
        secret = f"{PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, role, name, time.time(), None, requests_per_minute,
                     tokens_per_minute)
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO keys VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                (key.id, _hash(secret), role, name, key.created, requests_per_minute,
                 tokens_per_minute))
        return key, secret

    def list(self) -> list[ApiKey]:
        """Every key, oldest first (so the newest is last)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, role, name, created, revoked, requests_per_minute, "
                "tokens_per_minute FROM keys ORDER BY created, rowid").fetchall()
        return [ApiKey(*row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when no such key exists or it was already revoked."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                (time.time(), key_id))
        return cursor.rowcount == 1

    def verify(self, secret: str) -> ApiKey | None:
        parts = secret.split("-", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT hash, id, role, name, created, revoked, requests_per_minute, "
                "tokens_per_minute FROM keys WHERE id = ?", (parts[1],)).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(secret)):
            return None
        key = ApiKey(*row[1:])
        return None if key.revoked is not None else key
