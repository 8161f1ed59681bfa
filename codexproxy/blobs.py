"""Blobs: large text values with a TTL, kept where they survive a restart (`state.blobs(name)`).

The state's values (`state.set`) are meant for small things, and the embedded backend keeps them
in this process's memory. A plugin that keeps large documents for hours -- the adapter's kept
conversations, each a whole Responses history -- asks for a `Blobs` instead: on the embedded
backend an SQLite file beside the store (`codexproxy.<name>.sqlite3`, 0600), so they take disk,
not memory, and a restart keeps them; on Redis plain values under `codexproxy:b:<name>:<key>`
(`codexproxy/state_redis.py`), shared by every instance like the rest of the state.

What a Blobs is not: a cap. Bound what you keep yourself (count and bytes with the state's
counters, as the adapter does); `entries()` lists what is there, oldest expiry first, so such an
index can be rebuilt when the state lost it (the embedded state's counters are gone at restart,
the blobs are not).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol


class Blobs(Protocol):
    """Text values by key, each with a TTL (seconds). Every call is atomic on its own and
    thread-safe; none waits on an fsync, so they may be called from the event loop."""

    def get(self, key: str) -> str | None:
        """The text under `key`, or None (absent or expired)."""
        ...

    def set(self, key: str, text: str, ttl: float) -> None:
        """Store `text` under `key` (replacing any) for `ttl` seconds."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; no error if absent."""
        ...

    def entries(self) -> list[tuple[str, int, float]]:
        """(key, size in bytes, expiry as epoch seconds) of every live blob, the soonest to
        expire first. A scan of the whole set: for start-up, not for a request."""
        ...


class SQLiteBlobs:
    """The embedded backend's blobs: one SQLite file (WAL, synchronous=NORMAL: a write reaches
    the OS at once and survives the process being killed; no fsync per write, so a power loss
    may take the last ones). Expired rows are deleted at open and every `SWEEP_EVERY` writes."""

    SWEEP_EVERY = 500

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # private before SQLite opens it (its -wal/-shm copy the mode)
        os.close(fd)
        self._mu = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS blobs_expires ON blobs (expires)")
        self._writes = 0
        self._sweep()

    def _sweep(self) -> None:
        self._db.execute("DELETE FROM blobs WHERE expires <= ?", (time.time(),))

    def get(self, key: str) -> str | None:
        with self._mu:
            row = self._db.execute("SELECT value FROM blobs WHERE key = ? AND expires > ?", (key, time.time())).fetchone()
        return None if row is None else row[0]

    def set(self, key: str, text: str, ttl: float) -> None:
        with self._mu:
            self._db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (key, text, time.time() + ttl))
            self._writes += 1
            if self._writes % self.SWEEP_EVERY == 0:
                self._sweep()

    def delete(self, key: str) -> None:
        with self._mu:
            self._db.execute("DELETE FROM blobs WHERE key = ?", (key,))

    def entries(self) -> list[tuple[str, int, float]]:
        with self._mu:
            return [(key, int(size), float(expires)) for key, size, expires in self._db.execute(
                "SELECT key, length(CAST(value AS BLOB)), expires FROM blobs WHERE expires > ? ORDER BY expires, rowid",
                (time.time(),))]

    def close(self) -> None:
        with self._mu:
            self._db.close()  # the last connection: SQLite folds the -wal back in and removes it
