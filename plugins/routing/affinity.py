"""Conversation affinity that holds: which account a conversation is bound to, kept in the
store (so it survives a restart and is shared with every process on the store), bounded,
expiring, and moved only when a failover moves the conversation.

Keys, best first: the owner of the `x-codex-turn-state` the client sends back (the upstream's
own affinity token, issued by one account and meaningless to any other), then the session
(`session-id` / `session_id` header, else the body's `prompt_cache_key`, as preparation set
`exchange.session_id`). Keys are stored hashed: a binding never holds a client's token.

Writes go through one background thread: the store fsyncs, and routing runs on the proxy's
event loop. Reads are in-memory lookups by document id.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from tinydb.table import Document

log = logging.getLogger("codexproxy.routing")

TABLE = "affinity"
TURN_STATE = "x-codex-turn-state"


def _doc_id(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:15], 16)


def keys_of(exchange) -> list[str]:
    keys = []
    turn_state = exchange.headers.get(TURN_STATE)
    if turn_state:
        keys.append("turn-state:" + turn_state)
    if exchange.session_id:
        keys.append("session:" + exchange.session_id)
    return keys


class Bindings:
    """The store's `affinity` table: {doc id of the key: {"account", "until"}}."""

    def __init__(self, app) -> None:
        self.app = app
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="affinity")
        self.pending: dict[int, dict] = {}  # written soon: a quick next turn must see them already

    def owner(self, key: str, now: float | None = None) -> str | None:
        doc_id = _doc_id(key)
        doc = self.pending.get(doc_id) or self.app.store.table(TABLE).get(doc_id=doc_id)
        if doc is None or doc.get("until", 0) <= (now or time.time()):
            return None
        return doc.get("account")

    def owner_of(self, exchange) -> str | None:
        for key in keys_of(exchange):
            if owner := self.owner(key):
                return owner
        return None

    def bind(self, keys: list[str], account_id: str, ttl: float, limit: int) -> None:
        """Bind `keys` to the account (in the background; only what changes is written)."""
        now = time.time()
        # Refreshed when a quarter of its life is gone, not on every request.
        changed = [k for k in keys if self.owner(k, now + ttl * 0.75) != account_id]
        if changed and ttl > 0:
            for key in changed:
                self.pending[_doc_id(key)] = {"account": account_id, "until": now + ttl}
            self.writer.submit(self._write, changed, account_id, now + ttl, limit)

    def _write(self, keys: list[str], account_id: str, until: float, limit: int) -> None:
        try:
            with self.app.store.transaction():
                table = self.app.store.table(TABLE)
                for key in keys:
                    table.upsert(Document({"account": account_id, "until": until}, doc_id=_doc_id(key)))
                if len(table) > limit:
                    self._prune(table, limit)
        except Exception:
            log.exception("could not save a conversation binding")
        finally:
            for key in keys:
                self.pending.pop(_doc_id(key), None)

    @staticmethod
    def _prune(table, limit: int) -> None:
        """Expired bindings first, then the ones that expire soonest, down to 90% of the cap."""
        now = time.time()
        docs = sorted(table.all(), key=lambda d: d.get("until", 0))
        drop = [d.doc_id for d in docs if d.get("until", 0) <= now]
        keep = len(docs) - len(drop)
        if keep > limit:
            alive = [d.doc_id for d in docs if d.get("until", 0) > now]
            drop += alive[:keep - int(limit * 0.9)]
        if drop:
            table.remove(doc_ids=drop)

    def flush(self) -> None:
        self.writer.shutdown(wait=True)
