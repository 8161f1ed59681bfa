"""The state interface on `app.state`: every plugin's cross-request state goes through it.

A plugin that keeps anything beyond one request (counters, rate windows, sessions, one-time
links, inflight holds, locks, small documents) keeps it here, not in its own dicts, so the same
code works on one process (`LocalState`) and on a pool of proxies sharing Redis (`RedisState`,
`codexproxy/state_redis.py`, chosen by `state.backend: redis`). `app.plugin_state(name, factory)`
is only for what is truly process-local: thread pools, listeners, caches of this state.

Rules for a plugin author:
- Keys are strings; namespace them with your plugin's name (`"routing:cursor:<key>:<model>"`).
- Values are JSON-serialisable (dict, list, str, int, float, bool, None); a stored value is a
  copy: changing what `get` returned changes nothing until you `set` it again.
- TTLs are seconds (float); None means no expiry. Expired entries are simply absent.
- Every method is thread-safe and atomic on its own. None blocks on disk I/O, so they may be
  called from the event loop (hooks), except `Collection` writes on the local backend (they
  rewrite the store file with an fsync): make those from a worker thread or a job.
- `lock()` may wait (up to `wait` seconds): never take it on the event loop; use `try_lock`.
- Writes whose result this request does not need (counting tokens used, giving a hold back,
  remembering a value for later turns) go through `state.later`: the same calls, sent in the
  background on a shared backend so they cost the request no round trip (see `Later`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import re
import secrets
import threading
import time
from collections import deque
from typing import Any, Callable, ContextManager, Iterator, Protocol

from .blobs import Blobs, SQLiteBlobs
from .store import NamedLock, Store, TinyDBCollection


class Collection(Protocol):
    """Durable JSON documents, each with a string "id" (accounts, keys, sessions, bindings).

    Documents survive restarts (local: tables of the store file; Redis: hashes). Each call is
    atomic; `update` is the way to change a document without losing a concurrent change.
    A backend may also offer `generation() -> int | None`: a number that changes whenever the
    collection may have changed, cheap and non-blocking, which lets readers cache parsed records.
    What this process wrote changes it at once; on a shared backend another process's write may
    take up to the backend's bound to show (Redis: `GENERATION_MAX_AGE_S`, 0.1 s), except right
    after this process took a lock of the state (`lock`/`try_lock`): then the next generation is
    current, so a read under a lock (a token refresh's) sees every write made before it.
    """

    def get(self, doc_id: str) -> dict | None:
        """The document with this id, or None (also once its TTL has passed)."""
        ...

    def put(self, doc: dict, ttl: float | None = None) -> dict:
        """Insert or replace by `doc["id"]` (a random id is generated if absent); returns the stored doc.
        With `ttl`, the document disappears that many seconds later."""
        ...

    def update(self, doc_id: str, change: Callable[[dict], Any]) -> dict | None:
        """Atomic read-modify-write: `change(doc)` edits the document in place (or returns a new
        dict); returns the stored result, or None if there is no such document. The TTL stays."""
        ...

    def remove(self, doc_id: str) -> bool:
        """Delete by id; True if it existed."""
        ...

    def find(self, **fields: Any) -> list[dict]:
        """Documents whose top-level fields equal all of `fields`."""
        ...

    def all(self) -> list[dict]:
        """Every live document."""
        ...

    def remove_where(self, **fields: Any) -> int:
        """Delete the documents matching `fields` (as `find`); returns how many."""
        ...


class State(Protocol):
    """Counters, values with a TTL, sliding windows, leases, named locks, collections and blobs."""

    def get(self, key: str, default: Any = None) -> Any:
        """The value under `key`, or `default` if absent or expired."""
        ...

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store `value` (replacing any), expiring after `ttl` seconds."""
        ...

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store only if `key` is absent; True if this call stored it (a once-only claim)."""
        ...

    def pop(self, key: str, default: Any = None) -> Any:
        """Atomic get-and-delete: of two callers, only one gets the value (one-time links)."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` (a value or a counter); no error if absent."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """The live value/counter keys starting with `prefix`."""
        ...

    def incr(self, key: str, amount: float = 1, ttl: float | None = None) -> float:
        """Add `amount` to a counter (a missing one is 0) and return the new total. `ttl`
        applies when this call creates the counter; a counter is read with `get`."""
        ...

    def window_add(self, key: str, amount: float, period: float) -> float:
        """Record `amount` now in a sliding window; returns the sum of the last `period` seconds."""
        ...

    def window_sum(self, key: str, period: float) -> float:
        """The sum of the amounts recorded under `key` in the last `period` seconds."""
        ...

    def lease(self, key: str, ttl: float, limit: int | None = None) -> str | None:
        """Take one counted hold under `key` (e.g. a request in flight on an account) and return
        its token. It ends at `release` or after `ttl` seconds, whichever is first, so the holds
        of a killed process go away on their own. With `limit`, the hold is taken only if fewer
        than `limit` live holds exist, in one atomic step (None when full): a cap that holds
        across processes without a separate count."""
        ...

    def release(self, key: str, token: str) -> None:
        """End a hold taken by `lease` (no error if it already expired)."""
        ...

    def leases(self, key: str) -> int:
        """How many live holds there are under `key`."""
        ...

    def lock(self, name: str, ttl: float, wait: float = 30.0) -> ContextManager[bool]:
        """A named lock across threads and processes (single-flight token refresh): yields True
        once held, or False if it could not be taken within `wait` seconds. A holder that dies
        or overruns `ttl` loses it. May block: not on the event loop."""
        ...

    def try_lock(self, name: str, ttl: float) -> str | None:
        """Take the named lock without waiting; its token, or None if someone holds it."""
        ...

    def unlock(self, name: str, token: str) -> None:
        """Give back a lock taken by `try_lock` (no-op if it expired and someone else took it)."""
        ...

    def collection(self, name: str) -> Collection:
        """The durable collection `name` (namespace it: `"admin_sessions"`)."""
        ...

    def blobs(self, name: str) -> Blobs:
        """Large text values with a TTL, kept on disk locally and surviving a restart
        (`codexproxy/blobs.py`); `name` as a collection's."""
        ...

    @property
    def later(self) -> "Later":
        """The writes of this state that return nothing to wait for (see `Later`)."""
        ...

    def close(self) -> None:
        """Release what the backend holds (connections, locks); called when the app closes. The
        writes given to `later` are sent first."""
        ...


class Later(Protocol):
    """Writes sent without waiting for them: in order, shortly after the call (the Redis backend
    batches what has queued up into one pipeline on a thread of its own; the embedded one writes
    at once, its writes costing no round trip). For writes no caller reads back within the same
    request: tokens counted, a hold given back, a value later turns will read.

    - Other processes see such a write once it is sent: on Redis a few milliseconds after the
      request that made it, at most `LATER_MAX_DELAY_S` (0.05 s) after the call. This process's
      own synchronous reads may miss it until then too (`flush` waits for it).
    - While the state is unreachable they are kept (Redis: up to `LATER_MAX_PENDING` per
      process, the oldest dropped beyond that) and sent when it is back; `close()` sends what is
      left. A process killed with -9 loses what it had not sent: the last few milliseconds'
      counts, and holds that then end by their TTL.
    - They never raise `StateUnavailable`: a request is not failed for a write it does not need.
    """

    def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...

    def delete(self, key: str) -> None: ...

    def incr(self, key: str, amount: float = 1, ttl: float | None = None) -> None: ...

    def lease(self, key: str, ttl: float) -> str:
        """A hold as `State.lease` (no limit: the count is not checked), its token returned now."""
        ...

    def release(self, key: str, token: str) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything given so far is sent; False if that took longer than `timeout`."""
        ...


def account_inflight_key(account_id: str) -> str:
    """The lease key of the requests in flight on one account: whoever routes a request to an
    account holds a lease here until the request is over (limits.account_max_inflight caps
    them), and whoever reports load (/metrics) counts them with `leases()`."""
    return f"inflight:{account_id}"


_NO_EXPIRY = float("inf")


@contextlib.contextmanager
def polling_lock(state: Any, name: str, ttl: float, wait: float) -> Iterator[bool]:
    """`State.lock` for a backend with `try_lock`/`unlock`: tries again with a growing pause
    (5 ms to 50 ms) until `wait` runs out; yields whether the lock was taken."""
    deadline = time.monotonic() + wait
    pause = 0.005
    token = state.try_lock(name, ttl)
    while token is None and time.monotonic() < deadline:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.05)
        token = state.try_lock(name, ttl)
    try:
        yield token is not None
    finally:
        if token is not None:
            state.unlock(name, token)


STORE_COLLECTIONS = frozenset({"accounts", "keys"})  # in the store file itself (LocalState)
COLLECTION_NAME = re.compile(r"[a-z0-9_]+")


class _HeldLock:
    def __init__(self, token: str, expires: float, file_lock: NamedLock) -> None:
        self.token = token
        self.expires = expires
        self.file_lock = file_lock


class LocalState:
    """The embedded backend: memory of this process for values, counters, windows, leases and
    locks (gone at restart, as the proxy's own counters are), TinyDB files for collections (the
    store file for accounts and keys, a file beside it for each other one), an SQLite file
    beside it for each set of blobs, and the store's flock named locks so the CLI and the proxy exclude each
    other. Expired entries are dropped when touched and by a sweep every `SWEEP_EVERY` writes;
    at most `max_entries` values are kept (the ones closest to expiry go first)."""

    SWEEP_EVERY = 1000

    def __init__(self, store: Store, max_entries: int = 100_000) -> None:
        self.store = store
        self.max_entries = max_entries
        self._mu = threading.RLock()
        self._values: dict[str, tuple[Any, float]] = {}  # key -> (value, monotonic expiry)
        self._windows: dict[str, tuple[deque[tuple[float, float]], float]] = {}  # key -> (events, longest period)
        self._leases: dict[str, dict[str, float]] = {}  # key -> token -> expiry
        self._locks: dict[str, _HeldLock] = {}
        self._collections: dict[str, TinyDBCollection] = {}
        self._side_stores: dict[str, Store] = {}
        self._blobs: dict[str, SQLiteBlobs] = {}
        self._writes = 0
        self._later = _WriteNow(self)

    # --- values and counters -----------------------------------------------------------------
    @staticmethod
    def _expiry(ttl: float | None) -> float:
        return _NO_EXPIRY if ttl is None else time.monotonic() + ttl

    @staticmethod
    def _copy(value: Any) -> Any:
        # Stored values behave like Redis's: a copy, never shared with the caller.
        if isinstance(value, (dict, list)):
            return json.loads(json.dumps(value))
        return value

    def _live(self, key: str) -> tuple[Any, float] | None:
        entry = self._values.get(key)
        if entry is not None and entry[1] <= time.monotonic():
            del self._values[key]
            return None
        return entry

    def _store(self, key: str, value: Any, expires: float) -> None:
        self._values[key] = (value, expires)
        self._writes += 1
        if self._writes % self.SWEEP_EVERY == 0 or len(self._values) > self.max_entries:
            self._sweep()

    def _sweep(self) -> None:
        at = time.monotonic()
        for key in [k for k, (_, exp) in self._values.items() if exp <= at]:
            del self._values[key]
        for key, hold in list(self._leases.items()):
            for token in [t for t, exp in hold.items() if exp <= at]:
                del hold[token]
            if not hold:
                del self._leases[key]
        for key, (events, period) in list(self._windows.items()):
            self._trim(events, period, at)
            if not events:
                del self._windows[key]
        overflow = len(self._values) - self.max_entries
        if overflow > 0:
            for key, _ in sorted(self._values.items(), key=lambda kv: kv[1][1])[:overflow]:
                del self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        with self._mu:
            entry = self._live(key)
            return default if entry is None else self._copy(entry[0])

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        with self._mu:
            self._store(key, self._copy(value), self._expiry(ttl))

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        with self._mu:
            if self._live(key) is not None:
                return False
            self._store(key, self._copy(value), self._expiry(ttl))
            return True

    def pop(self, key: str, default: Any = None) -> Any:
        with self._mu:
            entry = self._live(key)
            if entry is None:
                return default
            del self._values[key]
            return entry[0]

    def delete(self, key: str) -> None:
        with self._mu:
            self._values.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        with self._mu:
            at = time.monotonic()
            return [k for k, (_, exp) in self._values.items() if k.startswith(prefix) and exp > at]

    def incr(self, key: str, amount: float = 1, ttl: float | None = None) -> float:
        with self._mu:
            entry = self._live(key)
            if entry is None:
                total, expires = amount, self._expiry(ttl)
            else:
                total, expires = entry[0] + amount, entry[1]
            self._store(key, total, expires)
            return total

    # --- sliding windows ---------------------------------------------------------------------
    @staticmethod
    def _trim(events: deque[tuple[float, float]], period: float, at: float) -> None:
        while events and events[0][0] <= at - period:
            events.popleft()

    def window_add(self, key: str, amount: float, period: float) -> float:
        with self._mu:
            at = time.monotonic()
            events, longest = self._windows.get(key, (deque(), period))
            longest = max(longest, period)
            self._trim(events, longest, at)
            events.append((at, amount))
            self._windows[key] = (events, longest)
            self._writes += 1
            return sum(a for t, a in events if t > at - period)

    def window_sum(self, key: str, period: float) -> float:
        with self._mu:
            at = time.monotonic()
            events, _ = self._windows.get(key, (deque(), period))
            return sum(a for t, a in events if t > at - period)

    # --- leases ------------------------------------------------------------------------------
    def lease(self, key: str, ttl: float, limit: int | None = None) -> str | None:
        token = secrets.token_hex(8)
        with self._mu:
            if limit is not None and self.leases(key) >= limit:
                return None
            self._leases.setdefault(key, {})[token] = time.monotonic() + ttl
            self._writes += 1
        return token

    def release(self, key: str, token: str) -> None:
        with self._mu:
            hold = self._leases.get(key)
            if hold is not None:
                hold.pop(token, None)
                if not hold:
                    del self._leases[key]

    def leases(self, key: str) -> int:
        with self._mu:
            hold = self._leases.get(key)
            if not hold:
                return 0
            at = time.monotonic()
            for token in [t for t, exp in hold.items() if exp <= at]:
                del hold[token]
            if not hold:
                del self._leases[key]
            return len(hold)

    # --- named locks -------------------------------------------------------------------------
    def try_lock(self, name: str, ttl: float) -> str | None:
        token = secrets.token_hex(8)
        with self._mu:
            held = self._locks.get(name)
            at = time.monotonic()
            if held is not None:
                if held.expires > at:
                    return None
                # The holder overran its TTL: the lock passes on, with the file lock this
                # process already holds (flock belongs to the process, not to a thread).
                held.token, held.expires = token, at + ttl
                return token
            file_lock = self.store.acquire_named_lock(f"state:{name}", wait=0)
            if file_lock is None:
                return None  # another process (the CLI, another proxy on this store) holds it
            self._locks[name] = _HeldLock(token, at + ttl, file_lock)
            return token

    def unlock(self, name: str, token: str) -> None:
        with self._mu:
            held = self._locks.get(name)
            if held is None or held.token != token:
                return
            del self._locks[name]
            held.file_lock.release()

    def lock(self, name: str, ttl: float, wait: float = 30.0) -> ContextManager[bool]:
        return polling_lock(self, name, ttl, wait)

    # --- collections and lifecycle -----------------------------------------------------------
    @property
    def later(self) -> Later:
        return self._later

    def collection(self, name: str) -> Collection:
        with self._mu:
            if name not in self._collections:
                self._collections[name] = TinyDBCollection(self._store_of(name), name)
            return self._collections[name]

    def blobs(self, name: str) -> Blobs:
        """An SQLite file beside the store: `codexproxy.<name>.sqlite3`."""
        with self._mu:
            if name not in self._blobs:
                if not COLLECTION_NAME.fullmatch(name):
                    raise ValueError(f"blobs name {name!r}: use lower-case letters, digits and _")
                path = self.store.path
                self._blobs[name] = SQLiteBlobs(path.with_name(f"{path.stem}.{name}.sqlite3"))
            return self._blobs[name]

    def _store_of(self, name: str) -> Store:
        """The repositories' collections live in the store file itself; every other one in a
        file of its own beside it (`codexproxy.<name>.json`): each write rewrites its whole
        file, and usage snapshots (hundreds per account) made every account write ~9x slower
        when they shared one."""
        if name in STORE_COLLECTIONS:
            return self.store
        if not COLLECTION_NAME.fullmatch(name):
            raise ValueError(f"collection name {name!r}: use lower-case letters, digits and _")
        if name not in self._side_stores:
            path = self.store.path
            self._side_stores[name] = Store(path.with_name(f"{path.stem}.{name}{path.suffix}"))
        return self._side_stores[name]

    def collection_names(self) -> list[str]:
        """Every collection with documents: the store file's, and the files beside it."""
        path = self.store.path
        names = {name for name, docs in (self.store.storage.read() or {}).items() if docs and name in STORE_COLLECTIONS}
        prefix = f"{path.stem}."
        for side in path.parent.glob(f"{glob.escape(path.stem)}.*{glob.escape(path.suffix)}"):
            name = side.name[len(prefix):len(side.name) - len(path.suffix)]
            if COLLECTION_NAME.fullmatch(name) and name not in STORE_COLLECTIONS and self.collection(name).all():
                names.add(name)
        return sorted(names)

    def close(self) -> None:
        with self._mu:
            held, self._locks = list(self._locks.values()), {}
            blobs, self._blobs = list(self._blobs.values()), {}
        for lock in held:
            lock.file_lock.release()
        for kept in blobs:
            kept.close()


class _WriteNow:
    """`Later` for the embedded state: its writes are memory operations of microseconds, so they
    are made at once (in order, trivially, and visible to every reader at once)."""

    def __init__(self, state: LocalState) -> None:
        self._state = state

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._state.set(key, value, ttl)

    def delete(self, key: str) -> None:
        self._state.delete(key)

    def incr(self, key: str, amount: float = 1, ttl: float | None = None) -> None:
        self._state.incr(key, amount, ttl)

    def lease(self, key: str, ttl: float) -> str:
        return self._state.lease(key, ttl)  # type: ignore[return-value]  # no limit: always taken

    def release(self, key: str, token: str) -> None:
        self._state.release(key, token)

    def flush(self, timeout: float = 5.0) -> bool:
        return True


def open_state(config: Any, store: Store) -> State:
    """The backend the config asks for (`state.backend`): the embedded one unless "redis"."""
    backend = getattr(getattr(config, "state", None), "backend", "tinydb")
    if backend == "redis":
        from .state_redis import RedisState

        return RedisState.from_config(config)
    return LocalState(store)
