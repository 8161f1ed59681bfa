"""Conversation affinity that holds: which account a conversation is bound to, kept in the
state's `routing_affinity` collection (so it survives a restart and is shared with every process
on the same state), bounded, expiring, and moved only when a failover moves the conversation.

Keys, best first: the owner of the `x-codex-turn-state` the client sends back (the upstream's
own affinity token, issued by one account and meaningless to any other), then the session
(`session-id` / `session_id` header, else the body's `prompt_cache_key`, as preparation set
`exchange.session_id`). Keys are stored hashed: a binding never holds a client's token.

Turn-states are state values with a TTL, not collection documents: the upstream issues one per
answer, and a durable write per answer would cost every request a write; one lost on a restart
is simply not sent again (the session binding still holds the conversation to its account).

Writes go through one background thread: the local collection fsyncs, and routing runs on the
proxy's event loop. Reads come from an in-memory copy refreshed when the collection changes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("codexproxy.routing")

COLLECTION = "routing_affinity"
TURN_STATES = "routing:turn-state:"
TURN_STATE = "x-codex-turn-state"


def _hashed(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Bindings:
    """Documents {"id": hash of the key, "account", "until"} with a TTL, at most `limit` of them."""

    def __init__(self, app) -> None:
        self.state = app.state
        self.docs = app.state.collection(COLLECTION)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="affinity")
        self.pending: dict[str, dict] = {}  # written soon: a quick next turn must see them already
        self._copy: dict[str, dict] = {}
        self._copy_generation: Any = None

    def _stored(self, doc_id: str) -> dict | None:
        generation = getattr(self.docs, "generation", None)
        current = generation() if callable(generation) else None
        if current is None:
            return self.docs.get(doc_id)  # a backend without a cheap change check: ask it
        if current != self._copy_generation:
            self._copy = {d["id"]: d for d in self.docs.all()}
            self._copy_generation = current
        return self._copy.get(doc_id)

    def owner(self, key: str, now: float | None = None) -> str | None:
        doc_id = _hashed(key)
        doc = self.pending.get(doc_id) or self._stored(doc_id)
        if doc is None or doc.get("until", 0) <= (now or time.time()):
            return None
        return doc.get("account")

    def owner_of(self, exchange) -> str | None:
        turn_state = exchange.headers.get(TURN_STATE)
        if turn_state and (owner := self.turn_state_owner(turn_state)):
            return owner
        return self.owner("session:" + exchange.session_id) if exchange.session_id else None

    def remember_turn_state(self, turn_state: str, account_id: str, ttl: float) -> None:
        # In the background (`state.later`): the next turn that sends it back comes after this
        # answer has streamed to the client, long after the write has landed.
        self.state.later.set(TURN_STATES + _hashed(turn_state), account_id, ttl=ttl)

    def turn_state_owner(self, turn_state: str) -> str | None:
        return self.state.get(TURN_STATES + _hashed(turn_state))

    def bind(self, keys: list[str], account_id: str, ttl: float, limit: int) -> None:
        """Bind `keys` to the account (in the background; only what changes is written)."""
        now = time.time()
        # Refreshed when a quarter of its life is gone, not on every request.
        changed = [k for k in keys if self.owner(k, now + ttl * 0.75) != account_id]
        if changed and ttl > 0:
            for key in changed:
                self.pending[_hashed(key)] = {"account": account_id, "until": now + ttl}
            self.writer.submit(self._write, changed, account_id, ttl, limit)

    def _write(self, keys: list[str], account_id: str, ttl: float, limit: int) -> None:
        try:
            until = time.time() + ttl
            for key in keys:
                self.docs.put({"id": _hashed(key), "account": account_id, "until": until}, ttl=ttl)
            self._prune(limit)
        except Exception:
            log.exception("could not save a conversation binding")
        finally:
            for key in keys:
                self.pending.pop(_hashed(key), None)

    def _prune(self, limit: int) -> None:
        """Over the cap, the bindings that expire soonest go, down to 90% of it (expired ones
        are gone already: the collection drops them)."""
        docs = self.docs.all()
        if len(docs) <= limit:
            return
        docs.sort(key=lambda d: d.get("until", 0))
        for doc in docs[:len(docs) - int(limit * 0.9)]:
            self.docs.remove(doc["id"])

    def flush(self) -> None:
        self.writer.shutdown(wait=True)
