"""`previous_response_id` for OpenAI-SDK apps: the Codex backend stores nothing (`store` must
be false), so codexproxy keeps each Responses answer itself -- the input it was given and the
output it produced -- and expands an id into that history on the next request.

Kept in the state's blobs (`app.state.blobs("conversations")`, codexproxy/blobs.py): on the
embedded backend an SQLite file beside the store, so they take disk rather than memory and a
restart keeps them; with `state.backend: redis` in Redis, so every instance and worker continues
a conversation another one answered. Each entry is one blob with a TTL, keyed by the response
id (JSON text). Only request bodies and response objects go in: no header, no token, no platform
key. Each entry records the id of the key that made it, so one key cannot read another's
conversation.

Bounded by age (the values' TTL), count and bytes, oldest evicted first, with the state's
atomic calls only (the interface has no "append and trim" primitive):
- every kept entry takes the next slot number (`incr` of `...:seq`) and writes its slot
  `...:slot:<n>` = {id, size, at}; a counter `...:bytes` adds its size;
- whoever then finds `seq - evicted > max_entries` or `bytes > max_bytes` takes the named lock
  `...:evict` without waiting and removes the oldest slots (entry, slot, bytes) until both caps
  hold, advancing `...:evicted`. One evictor at a time, so no slot is evicted twice and the
  counters stay exact; a writer that finds the lock taken leaves the eviction to its holder
  (which re-reads the counters after each slot) or to the next write. So the caps may be
  exceeded by the entries written during another's eviction, until the next write: an
  approximation by a few entries, never a growth.
- Every entry lives `ttl_s`, so expiry follows creation order: expired entries are always the
  oldest slots and go first when a cap is reached; until then their slots count (a few bytes).
- A slot number taken by a writer that died before writing its slot is a hole: the evictor
  waits for it `HOLE_WAIT_S`, then passes it (its entry, if any, ends by its TTL).
- The slots and counters are state values: the embedded state loses them at restart, the blobs
  stay. A store that finds no slot counter gives the blobs already there slots again, soonest
  to expire first (once per state: the first to claim `...:reindex`), before it counts new ones.

The entry's value is written when the answer is complete, before its last event leaves for the
client (the adapter wraps the transform: `__init__.py`), by that one state call on the event
loop -- so a follow-up sent as soon as the client has the answer finds it on any instance (written
after the answer on a thread, it lost that race to a keep-alive client in up to half the tries:
tests/test_conversations_shared.py). The JSON encoding is the loop's cost, about what encoding the
upstream request body with that same history cost it a moment before. The
slot, counters and eviction, which no reader waits for, run on one background thread per
process.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from codexproxy.exchange import GatewayError

log = logging.getLogger("codexproxy.adapter")

BLOBS = "conversations"  # the state's blobs holding the entries: response id -> entry (JSON text), with its TTL
REINDEX = "adapter:conversations:reindex"  # claimed by the store that gives existing blobs their slots
SEQ = "adapter:conversations:seq"  # counter: slot numbers handed out
EVICTED = "adapter:conversations:evicted"  # every slot up to this number is evicted (the evictor's)
BYTES = "adapter:conversations:bytes"  # counter: the sizes of the slots not yet evicted
SLOT = "adapter:conversations:slot:"  # + n: {"id", "size", "at"} of the n-th kept entry
HOLE = "adapter:conversations:hole:"  # + n: when the evictor first found slot n missing
EVICT_LOCK = "adapter:conversations:evict"
EVICT_LOCK_TTL_S = 60.0
UNAVAILABLE_PAUSE_S = 2.0  # after the state could not be reached: answers are not kept meanwhile
HOLE_WAIT_S = 30.0  # a slot number is written microseconds after it is taken: this long means its writer died


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
    """The kept responses of one state (`app.state`), with this process's writer thread."""

    def __init__(self, state: Any, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        self.state = state
        self.blobs = state.blobs(BLOBS)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="conversations")
        self._reindexed: set[str] = set()  # the writer thread's only
        self._writer.submit(self._reindex)  # first on the one thread: before any new entry is counted
        # While a shared state is unreachable each call fails only after its timeouts (on the
        # event loop, for `put`): answers are not kept until this time rather than each waiting.
        self._unavailable_until = float("-inf")

    def get(self, response_id: str, key_id: str | None) -> dict[str, Any] | None:
        """The kept entry {"key_id", "input", "response"} of this key, or None (unknown,
        expired, evicted, or another key's). Raises the state's StateUnavailable (a 503) when
        a shared state cannot be reached."""
        text = self.blobs.get(response_id)
        if not isinstance(text, str):
            return None
        entry = json.loads(text)
        if not isinstance(entry, dict) or entry.get("key_id") != key_id:
            return None
        return entry

    def put(self, response_id: str, key_id: str | None, input_items: list, response: dict[str, Any]) -> bool:
        """Keep this answer: readable from every instance when this returns (one state call;
        the caps are applied in the background). False if it was not kept."""
        if time.monotonic() < self._unavailable_until:
            return False
        text = json.dumps({"key_id": key_id, "input": input_items, "response": response}, ensure_ascii=False)
        size = len(text.encode())
        if size > self.max_bytes:
            log.info("response %s not kept: %d bytes, over conversations.max_bytes", response_id, size)
            return False
        try:
            self.blobs.set(response_id, text, self.ttl_s)
        except GatewayError as exc:  # the state's StateUnavailable: the answer itself is not failed for it
            self._unreachable(response_id, exc)
            return False
        self._writer.submit(self._account, response_id, size)
        return True

    def _unreachable(self, response_id: str, exc: GatewayError) -> None:
        self._unavailable_until = time.monotonic() + UNAVAILABLE_PAUSE_S
        log.warning("response %s not kept: %s", response_id, exc.message)

    def _reindex(self) -> None:
        """Slots for the blobs kept before this state's counters were (a restart of the embedded
        state); without them those entries would count against no cap until their TTL."""
        try:
            if self.state.get(SEQ) is not None or not self.state.add(REINDEX, time.time()):
                return
            entries = self.blobs.entries()
            # An answer kept while this scan ran may be in it: its own _account (queued behind
            # this one on the writer thread) must not count it a second time.
            self._reindexed = {response_id for response_id, _, _ in entries}
            for response_id, size, _ in entries:
                self._count(response_id, size, evict=False)
            if entries:
                log.info("%d kept responses found at start, %d bytes", len(entries), sum(e[1] for e in entries))
                self._evict()
        except GatewayError as exc:  # the state's StateUnavailable
            log.warning("kept responses not counted: %s", exc.message)
        except Exception:
            log.exception("could not count the kept responses")

    def _count(self, response_id: str, size: int, evict: bool = True) -> None:
        slot = int(self.state.incr(SEQ))
        self.state.set(f"{SLOT}{slot}", {"id": response_id, "size": size, "at": time.time()})
        total = self.state.incr(BYTES, size)
        if evict and (slot - int(self.state.get(EVICTED, 0)) > self.max_entries or total > self.max_bytes):
            self._evict()

    def _account(self, response_id: str, size: int) -> None:
        """The entry's slot and size in the caps' counters; evict if a cap is passed."""
        if response_id in self._reindexed:
            return
        try:
            self._count(response_id, size)
        except GatewayError as exc:
            self._unreachable(response_id, exc)
        except Exception:
            log.exception("could not count response %s in the conversations' caps", response_id)

    def _evict(self) -> None:
        """The oldest slots, until both caps hold (see the module's docstring)."""
        state = self.state
        token = state.try_lock(EVICT_LOCK, EVICT_LOCK_TTL_S)
        if token is None:
            return  # another writer is evicting: it re-reads the counters after each slot
        try:
            evicted = int(state.get(EVICTED, 0))
            while True:
                seq = int(state.get(SEQ, 0))
                if evicted >= seq or (seq - evicted <= self.max_entries and state.get(BYTES, 0) <= self.max_bytes):
                    return
                number = evicted + 1
                slot = state.get(f"{SLOT}{number}")
                if slot is None:
                    if not self._hole_abandoned(number):
                        return  # its writer is between taking the number and writing the slot
                else:
                    self.blobs.delete(slot["id"])
                    state.incr(BYTES, -slot["size"])
                    state.delete(f"{SLOT}{number}")
                evicted = number
                state.set(EVICTED, evicted)
        finally:
            state.unlock(EVICT_LOCK, token)

    def _hole_abandoned(self, number: int) -> bool:
        key = f"{HOLE}{number}"
        if self.state.add(key, time.time(), ttl=HOLE_WAIT_S * 10):
            return False
        if time.time() - float(self.state.get(key, time.time())) < HOLE_WAIT_S:
            return False
        self.state.delete(key)
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the caps' bookkeeping of every entry kept so far is done (tests)."""
        try:
            self._writer.submit(lambda: None).result(timeout)  # one thread: it runs after them all
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Finish the bookkeeping, then stop the writer (before the state closes)."""
        self._writer.shutdown(wait=True)
