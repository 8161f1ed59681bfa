"""Conversation affinity that holds: which account a conversation is bound to, kept in the
store (so it survives a restart and is shared with every process on the store), bounded,
expiring, and moved only when a failover moves the conversation.

Keys, best first: the owner of the `x-codex-turn-state` the client sends back (the upstream's
own affinity token, issued by one account and meaningless to any other), then the session
(`session-id` / `session_id` header, else the body's `prompt_cache_key`, as preparation set
`exchange.session_id`). Keys are stored hashed: a binding never holds a client's token.

Turn-states are remembered in this process only: the upstream issues one per answer, and a
store write per answer would cost every request a write; one lost on a restart is simply not
sent again (the session binding still holds the conversation to its account).

Writes go through one background thread: the store fsyncs, and routing runs on the proxy's
event loop. Reads are in-memory lookups by document id.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from tinydb.table import Document

log = logging.getLogger("codexproxy.routing")

TABLE = "affinity"
TURN_STATE = "x-codex-turn-state"


def _doc_id(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:15], 16)


class Bindings:
    """The store's `affinity` table: {doc id of the key: {"account", "until"}}."""

    def __init__(self, app) -> None:
        self.app = app
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="affinity")
        self.pending: dict[int, dict] = {}  # written soon: a quick next turn must see them already
        self.turn_states: OrderedDict[int, tuple[str, float]] = OrderedDict()
        self.lock = threading.Lock()

    def owner(self, key: str, now: float | None = None) -> str | None:
        doc_id = _doc_id(key)
        doc = self.pending.get(doc_id) or self.app.store.table(TABLE).get(doc_id=doc_id)
        if doc is None or doc.get("until", 0) <= (now or time.time()):
            return None
        return doc.get("account")

    def owner_of(self, exchange) -> str | None:
        turn_state = exchange.headers.get(TURN_STATE)
        if turn_state and (owner := self.turn_state_owner(turn_state)):
            return owner
        return self.owner("session:" + exchange.session_id) if exchange.session_id else None

    def remember_turn_state(self, turn_state: str, account_id: str, ttl: float, limit: int) -> None:
        with self.lock:
            self.turn_states[_doc_id(turn_state)] = (account_id, time.time() + ttl)
            self.turn_states.move_to_end(_doc_id(turn_state))
            while len(self.turn_states) > limit:
                self.turn_states.popitem(last=False)

    def turn_state_owner(self, turn_state: str) -> str | None:
        with self.lock:
            found = self.turn_states.get(_doc_id(turn_state))
        return found[0] if found and found[1] > time.time() else None

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
