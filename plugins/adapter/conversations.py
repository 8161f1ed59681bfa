"""`previous_response_id` for OpenAI-SDK apps: the Codex backend stores nothing (`store` must
be false), so codexproxy keeps each Responses answer itself -- the input it was given and the
output it produced -- and expands an id into that history on the next request.

Kept in `conversations.sqlite3` in the data dir (beside the log store, never in the main
store: it is bulky and churns), bounded by age, count and bytes, oldest evicted first. Only
request bodies and response objects go in: no header, no token, no platform key. Each entry
is tied to the key that made it, so one key cannot read another's conversation.

Writes run on one background thread (SQLite fsyncs; hooks run on the proxy's event loop);
an entry being written is already visible to reads through `pending`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("codexproxy.adapter")

FILE_NAME = "conversations.sqlite3"


def replay_items(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The input that continues a kept response: its input, then its output as input items.

    Output item ids are dropped (with store=false the backend knows no item by id and answers
    "Item ... not found"); reasoning without encrypted content cannot be replayed at all.
    """
    items = list(entry.get("input") or [])
    response = entry.get("response") if isinstance(entry.get("response"), dict) else {}
    for item in response.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "reasoning" and not item.get("encrypted_content"):
            continue
        item = {k: v for k, v in item.items() if k not in ("id", "status")}
        items.append(item)
    return items


class ConversationStore:
    def __init__(self, path: Path, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        self.path = path
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="conversations")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # created private before SQLite opens it
        os.close(fd)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, key_id TEXT, "
                         "created REAL NOT NULL, size INTEGER NOT NULL, data TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS responses_created ON responses (created)")

    def get(self, response_id: str, key_id: str | None) -> dict[str, Any] | None:
        """The kept entry {"input", "response"} of this key, or None (unknown,
        expired, evicted, or another key's)."""
        entry = self.pending.get(response_id)
        if entry is None:
            with self._lock:
                row = self._db.execute("SELECT key_id, created, data FROM responses WHERE id = ?",
                                       (response_id,)).fetchone()
            if row is None or row[1] <= time.time() - self.ttl_s:
                return None
            entry = {"key_id": row[0], **json.loads(row[2])}
        if entry.get("key_id") != key_id:
            return None
        return entry

    def put(self, response_id: str, key_id: str | None, input_items: list, response: dict[str, Any]) -> None:
        data = {"input": input_items, "response": response}  # the output is the response's
        self.pending[response_id] = {"key_id": key_id, **data}
        self._writer.submit(self._write, response_id, key_id, data)

    def _write(self, response_id: str, key_id: str | None, data: dict[str, Any]) -> None:
        try:
            text = json.dumps(data, ensure_ascii=False)
            now = time.time()
            with self._lock:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                               (response_id, key_id, now, len(text.encode()), text))
                    self._evict(db, now)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except Exception:
            log.exception("could not keep response %s", response_id)
        finally:
            self.pending.pop(response_id, None)

    def _evict(self, db: sqlite3.Connection, now: float) -> None:
        """Expired entries, then the oldest, until both caps hold."""
        db.execute("DELETE FROM responses WHERE created <= ?", (now - self.ttl_s,))
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses").fetchone()
        if count <= self.max_entries and size <= self.max_bytes:
            return
        drop = []
        for rid, row_size in db.execute("SELECT id, size FROM responses ORDER BY created, rowid"):
            if count <= self.max_entries and size <= self.max_bytes:
                break
            drop.append((rid,))
            count -= 1
            size -= row_size
        db.executemany("DELETE FROM responses WHERE id = ?", drop)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with self._lock:
            self._db.close()
