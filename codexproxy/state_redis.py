"""The state interface on Redis: what several codexproxy processes (or machines) share.

Each kind of state is the Redis primitive made for it, so no operation needs a lock of ours:
- values and counters: strings holding JSON (`SET NX PX`, `GETDEL`, `INCRBYFLOAT` + `PEXPIRE`);
- sliding windows: a sorted set of "amount:nonce" members scored by the time they were added;
- leases: a sorted set of tokens scored by their expiry (a killed holder's lease just runs out);
- locks: `SET NX PX` with a random token, released by a compare-and-delete script;
- collections: one string per document (its TTL is Redis's own) and a sorted set of the ids in
  insertion order; `update` is WATCH/MULTI on the one document, retried when another writer won.
Times are the Redis server's (`TIME` inside the scripts): instances on several machines agree on
what "the last 60 s" is even when their clocks do not.

Every key starts with `codexproxy:`; a second pool on the same server uses another database
(`redis://host/1`). A collection's keys share a hash tag (`{accounts}`) so its scripts touch one
slot. When Redis cannot be reached every method raises `StateUnavailable`, a GatewayError: the
request that needed the state is answered 503; timeouts are short and there is one immediate
retry, so nothing hangs.

Round trips are what a request pays for (each one is a wait, and redis-py's CPU on the proxy's
event loop), so the hot path makes as few as it can:
- collections' generations (the repositories' cache checks: keys, accounts, bindings) are asked
  for all collections at once, in one pipeline, and reused for `GENERATION_MAX_AGE_S`; this
  process's own writes and a lock taken make the next check go to Redis (state.Collection);
- writes nobody waits for (`later`: tokens counted, leases given back, turn-states) are sent by
  one thread on a connection of its own, batched into one pipeline after the request that made
  them (under steady traffic, one pipeline per LATER_MAX_DELAY_S).
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, ContextManager
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .exchange import GatewayError
from .state import polling_lock

PREFIX = "codexproxy:"
CONNECT_TIMEOUT_S = 1.0  # a Redis on the LAN answers a connect in milliseconds; an absent one must not stall requests
SOCKET_TIMEOUT_S = 2.0  # every command here is O(small); a Redis that takes longer is treated as unavailable
UPDATE_ATTEMPTS = 50  # WATCH/MULTI retries before an update gives up (only under heavy contention)
# How long a collection's generation is reused before Redis is asked again: another process's
# write (a key revoked, an account cooled) shows here at most this much later. 0.1 s is far below
# anything a person or an upstream's cooldown notices, and at 300 req/s turns two round trips per
# request into one per ~30 requests.
GENERATION_MAX_AGE_S = 0.1
# The `later` thread sends once no write has come for LATER_LINGER_S (the request that made them
# has ended by then: its lease, its release and its tokens go in one batch), and at the latest
# LATER_MAX_DELAY_S after the batch's first write (under steady traffic: one batch per that time).
LATER_LINGER_S = 0.002
LATER_MAX_DELAY_S = 0.05
LATER_MAX_PENDING = 100_000  # `later` writes kept while Redis is unreachable (the oldest go beyond it)
LATER_RETRY_S = 0.5  # pause before sending a batch again after Redis could not be reached

log = logging.getLogger("codexproxy.state")


class StateUnavailable(GatewayError):
    """The shared state (Redis) cannot be reached. A GatewayError, so a request that needs the
    state is answered 503 in the client's protocol (with retry-after) wherever it was raised, and
    the proxy serves again by itself once Redis is back. The message names where, never a password."""

    def __init__(self, where: str, reason: Any) -> None:
        super().__init__(503, f"The gateway's shared state is unavailable (Redis at {where}: {reason}); retry in a few seconds.",
                         type="server_error", code="state_unavailable", headers={"retry-after": "2"})


_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)


def _guarded(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except _UNAVAILABLE as exc:
            raise StateUnavailable(self._where, exc) from None
    return wrapper


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# Server time in milliseconds, shared by the scripts below.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

# KEYS[1] counter; ARGV amount, ttl ms (0: none). The TTL is set only when the counter is created.
_INCR = """
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""

# Sum of the amounts in a window's members ("amount:nonce") newer than now - period.
_WINDOW_SUM_BODY = """
local total = 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - period), '+inf')) do
  total = total + tonumber(string.match(m, '^([^:]+)'))
end
return string.format('%.17g', total)
"""

# KEYS[1] window, KEYS[2] the longest period (ms) it was added with; ARGV amount, period ms,
# nonce. Amounts are kept for the longest period, so a longer window_sum still sees them.
_WINDOW_ADD = _NOW + """
local period = tonumber(ARGV[2])
local longest = math.max(period, tonumber(redis.call('GET', KEYS[2]) or '0'))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. ARGV[3])
redis.call('SET', KEYS[2], longest, 'PX', longest)
redis.call('PEXPIRE', KEYS[1], longest)
""" + _WINDOW_SUM_BODY

# KEYS[1] window; ARGV period ms.
_WINDOW_SUM = _NOW + "local period = tonumber(ARGV[1])\n" + _WINDOW_SUM_BODY

# KEYS[1] leases; ARGV token, ttl ms, limit (0: none). Returns 0 when `limit` holds are live.
_LEASE = _NOW + """
local ttl = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

# KEYS[1] leases.
_LEASES = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] lock; ARGV token. Deletes the lock only if it is still ours (not expired and re-taken).
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] document, KEYS[2] ids (sorted by insertion), KEYS[3] insertion counter, KEYS[4]
# generation, KEYS[5] expiries (id -> ms); ARGV json, id, ttl ms (0: none).
_PUT = _NOW + """
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[2])
end
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
end
redis.call('INCR', KEYS[4])
return 1
"""

# KEYS[1] generation, KEYS[2] expiries. Documents that ran out since the last call count as a
# change: a reader caching on the generation must not keep serving them.
_GENERATION = _NOW + """
if redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1)[1] then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  return redis.call('INCR', KEYS[1])
end
return tonumber(redis.call('GET', KEYS[1]) or '0')
"""

# KEYS[1] ids; ARGV document key prefix. Every live document in insertion order; the ids of
# expired ones leave the index here (their documents expired on their own).
_ALL = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local doc = redis.call('GET', ARGV[1] .. id)
  if doc then table.insert(out, doc) else redis.call('ZREM', KEYS[1], id) end
end
return out
"""

# KEYS[1] ids; ARGV document key prefix. Like _ALL, each document followed by its PTTL (-1: none).
_ALL_WITH_TTL = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local doc = redis.call('GET', ARGV[1] .. id)
  if doc then
    table.insert(out, doc)
    table.insert(out, redis.call('PTTL', ARGV[1] .. id))
  end
end
return out
"""

# KEYS[1] document, KEYS[2] ids, KEYS[3] generation, KEYS[4] expiries; ARGV id.
_REMOVE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local removed = redis.call('DEL', KEYS[1])
if removed > 0 then redis.call('INCR', KEYS[3]) end
return removed
"""


class RedisState:
    """`State` on one Redis server (see codexproxy/state.py for the contract)."""

    def __init__(self, client: redis.Redis, where: str = "redis", prefix: str = PREFIX, later_client: redis.Redis | None = None) -> None:
        """`later_client`: the connection(s) `later` sends on (by default `client`'s pool)."""
        self.client = client
        self._where = where
        self.prefix = prefix
        self._incr = client.register_script(_INCR)
        self._window_add = client.register_script(_WINDOW_ADD)
        self._window_sum = client.register_script(_WINDOW_SUM)
        self._lease = client.register_script(_LEASE)
        self._leases = client.register_script(_LEASES)
        self._unlock = client.register_script(_UNLOCK)
        self._put = client.register_script(_PUT)
        self._all = client.register_script(_ALL)
        self._remove = client.register_script(_REMOVE)
        self._all_with_ttl = client.register_script(_ALL_WITH_TTL)
        self._collections: dict[str, RedisCollection] = {}
        self._gens_mu = threading.Lock()
        self._gens: dict[str, int] = {}  # collection name -> its generation when last asked
        self._gens_at = float("-inf")  # monotonic time the snapshot was asked for
        self._gens_epoch = 0  # bumped by this process's writes and locks: a check begun before is not reused
        self._later = _RedisLater(self, later_client)

    @classmethod
    def from_url(cls, url: str) -> "RedisState":
        """A client for `url` (redis://, rediss:// for TLS, unix://; a password in the URL); its
        query may override the timeouts (`?socket_timeout=10`)."""
        def connect(**extra: Any) -> redis.Redis:
            return redis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                # One immediate retry: a pooled connection broken by a Redis restart is replaced at
                # once; a Redis that is down fails fast instead of backing off for seconds per call.
                retry=Retry(NoBackoff(), 1), **extra)
        # `later` on a connection of its own: it never waits for one a request holds, nor a request
        # for it; named, so CLIENT LIST (and the bench) tells its commands apart.
        return cls(connect(), where=_where(url), later_client=connect(client_name=_RedisLater.CLIENT_NAME))

    @classmethod
    def from_config(cls, config: Any) -> "RedisState":
        return cls.from_url(config.state.redis_url)

    def _k(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    # --- values with a TTL ---------------------------------------------------------------------
    @_guarded
    def get(self, key: str, default: Any = None) -> Any:
        raw = self.client.get(self._k("v", key))
        return default if raw is None else json.loads(raw)

    @_guarded
    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.client.set(self._k("v", key), _dumps(value), px=None if ttl is None else _ms(ttl))

    @_guarded
    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        return bool(self.client.set(self._k("v", key), _dumps(value), px=None if ttl is None else _ms(ttl), nx=True))

    @_guarded
    def pop(self, key: str, default: Any = None) -> Any:
        raw = self.client.getdel(self._k("v", key))
        return default if raw is None else json.loads(raw)

    @_guarded
    def delete(self, key: str) -> None:
        self.client.delete(self._k("v", key))

    @_guarded
    def keys(self, prefix: str) -> list[str]:
        head = self._k("v", "")
        pattern = _glob_escape(head + prefix) + "*"
        return sorted(name[len(head):] for name in self.client.scan_iter(match=pattern, count=1000))

    # --- counters --------------------------------------------------------------------------------
    @_guarded
    def incr(self, key: str, amount: float = 1, ttl: float | None = None) -> float:
        value = self._incr(keys=[self._k("v", key)], args=[repr(float(amount)), 0 if ttl is None else _ms(ttl)])
        return float(value)

    # --- sliding windows --------------------------------------------------------------------------
    @_guarded
    def window_add(self, key: str, amount: float, period: float) -> float:
        total = self._window_add(keys=[self._k("w", key), self._k("wp", key)], args=[repr(float(amount)), _ms(period), uuid.uuid4().hex])
        return float(total)

    @_guarded
    def window_sum(self, key: str, period: float) -> float:
        return float(self._window_sum(keys=[self._k("w", key)], args=[_ms(period)]))

    # --- leases ----------------------------------------------------------------------------------
    @_guarded
    def lease(self, key: str, ttl: float, limit: int | None = None) -> str | None:
        if limit is not None and limit <= 0:
            return None
        token = secrets.token_hex(12)
        taken = self._lease(keys=[self._k("l", key)], args=[token, _ms(ttl), limit or 0])
        return token if int(taken) else None

    @_guarded
    def release(self, key: str, token: str) -> None:
        self.client.zrem(self._k("l", key), token)

    @_guarded
    def leases(self, key: str) -> int:
        return int(self._leases(keys=[self._k("l", key)]))

    # --- named locks -------------------------------------------------------------------------------
    @_guarded
    def try_lock(self, name: str, ttl: float) -> str | None:
        token = secrets.token_hex(12)
        if not self.client.set(self._k("lock", name), token, px=_ms(ttl), nx=True):
            return None
        self.forget_generations()  # what is read under the lock must include every write before it
        return token

    @_guarded
    def unlock(self, name: str, token: str) -> None:
        self._unlock(keys=[self._k("lock", name)], args=[token])

    def lock(self, name: str, ttl: float, wait: float = 30.0) -> ContextManager[bool]:
        return polling_lock(self, name, ttl, wait)

    # --- writes sent in the background ----------------------------------------------------------------
    @property
    def later(self) -> "_RedisLater":
        return self._later

    # --- collections ---------------------------------------------------------------------------------
    def forget_generations(self) -> None:
        """The next `generation()` of any collection asks Redis (after a write or a lock of ours)."""
        with self._gens_mu:
            self._gens_epoch += 1
            self._gens_at = float("-inf")

    def generation_of(self, name: str) -> int:
        """The collection's generation, from a snapshot of every collection asked about so far
        that is at most GENERATION_MAX_AGE_S old, else from one pipeline asking for all of them."""
        with self._gens_mu:
            if name in self._gens and time.monotonic() - self._gens_at < GENERATION_MAX_AGE_S:
                return self._gens[name]
            names = sorted(set(self._gens) | {name})
            epoch = self._gens_epoch
        asked_at = time.monotonic()
        with self.client.pipeline(transaction=False) as pipe:
            for each in names:
                found = self.collection(each)
                # EVAL, not EVALSHA: a Redis restarted since has forgotten the script, and a
                # pipeline cannot load it on the way (redis-py would ask SCRIPT EXISTS first: a trip).
                pipe.eval(_GENERATION, 2, found._gen, found._expiries)
            values = dict(zip(names, (int(v) for v in pipe.execute())))
        with self._gens_mu:
            if epoch == self._gens_epoch:  # no write or lock of ours since we asked: reusable
                self._gens, self._gens_at = values, asked_at
        return values[name]

    def collection(self, name: str) -> "RedisCollection":
        found = self._collections.get(name)
        if found is None:
            found = self._collections.setdefault(name, RedisCollection(self, name))
        return found

    def blobs(self, name: str) -> "RedisBlobs":
        return RedisBlobs(self, name)

    @_guarded
    def collection_names(self) -> list[str]:
        """The collections holding documents (for `codexproxy state migrate`)."""
        head = f"{self.prefix}docs:"
        names = {key[len(head) + 1:-1] for key in self.client.scan_iter(match=_glob_escape(head) + "{*}", count=1000)}
        return sorted(n for n in names if self.collection(n).all())

    def describe(self) -> str:
        """host:port/db (or the socket path) of this Redis, never its password."""
        return f"{self._where}/{self.client.connection_pool.connection_kwargs.get('db', 0)}"

    def ping(self) -> bool:
        """True when Redis answers (the health check a caller may poll while it is down)."""
        try:
            return bool(self.client.ping())
        except _UNAVAILABLE:
            return False

    def close(self) -> None:
        self._later.close()
        self.client.close()


class _RedisLater:
    """`state.Later` on Redis: one thread sends what was given, in order, as one pipeline per
    batch (everything queued while the previous batch was out, after LATER_LINGER_S). A batch
    Redis could not take is kept and sent again every LATER_RETRY_S."""

    CLIENT_NAME = "codexproxy-later"  # its connection's name in CLIENT LIST (the bench tells its commands apart by it)

    def __init__(self, state: RedisState, client: redis.Redis | None = None) -> None:
        self._state = state
        self._client = client or state.client
        self._cv = threading.Condition()
        self._pending: deque[tuple] = deque()  # Redis commands, as redis-py's execute_command takes them
        self._sending = 0  # commands the thread took and has not sent yet
        self._thread: threading.Thread | None = None
        self._closed = False
        self._dropped = 0

    def _k(self, kind: str, key: str) -> str:
        return self._state._k(kind, key)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._put(("SET", self._k("v", key), _dumps(value)) + (() if ttl is None else ("PX", _ms(ttl))))

    def delete(self, key: str) -> None:
        self._put(("DEL", self._k("v", key)))

    def incr(self, key: str, amount: float = 1, ttl: float | None = None) -> None:
        self._put(("EVAL", _INCR, 1, self._k("v", key), repr(float(amount)), 0 if ttl is None else _ms(ttl)))

    def lease(self, key: str, ttl: float) -> str:
        token = secrets.token_hex(12)
        self._put(("EVAL", _LEASE, 1, self._k("l", key), token, _ms(ttl), 0))
        return token

    def release(self, key: str, token: str) -> None:
        self._put(("ZREM", self._k("l", key), token))

    def _put(self, command: tuple) -> None:
        with self._cv:
            if self._closed:  # a request ending while the app shuts down: its state is gone
                log.warning("state closed: a background write (%s) was not sent", command[0])
                return
            if len(self._pending) >= LATER_MAX_PENDING:
                self._pending.popleft()
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 10_000 == 0:
                    log.warning("Redis unreachable: %d background writes dropped so far (over %d waiting)", self._dropped, LATER_MAX_PENDING)
            self._pending.append(command)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="codexproxy-state-later", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return  # closed, nothing left
            self._linger()
            with self._cv:
                batch = list(self._pending)
                self._pending.clear()
                self._sending = len(batch)
            try:
                self._send(batch)
            except _UNAVAILABLE as exc:
                with self._cv:
                    self._pending.extendleft(reversed(batch))  # first again, in their order
                    self._sending = 0
                    log.warning("Redis unreachable (%s): %d background writes kept, sent when it is back", exc, len(self._pending))
                    if self._closed:
                        self._cv.notify_all()
                        return
                    self._cv.wait(LATER_RETRY_S)
                continue
            except Exception:
                log.exception("background state writes failed; %d dropped", len(batch))
            with self._cv:
                self._sending = 0
                self._cv.notify_all()

    def _linger(self) -> None:
        """Wait while writes keep coming (LATER_LINGER_S apart), up to LATER_MAX_DELAY_S."""
        deadline = time.monotonic() + LATER_MAX_DELAY_S
        with self._cv:
            seen = len(self._pending)
        while not self._closed:
            time.sleep(max(0.0, min(LATER_LINGER_S, deadline - time.monotonic())))
            with self._cv:
                if len(self._pending) == seen or time.monotonic() >= deadline:
                    return
                seen = len(self._pending)

    def _send(self, batch: list[tuple]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for command in batch:
                pipe.execute_command(*command)
            results = pipe.execute(raise_on_error=False)
        failed = [(c[0], r) for c, r in zip(batch, results) if isinstance(r, Exception)]
        if failed:  # a command Redis refused (not unreachable): nothing to retry
            log.error("Redis refused %d background writes, e.g. %s: %s", len(failed), failed[0][0], failed[0][1])

    def flush(self, timeout: float = 5.0) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and not self._sending, timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is left (for up to `timeout` seconds while Redis is unreachable), then stop."""
        sent = self.flush(timeout)
        with self._cv:
            self._closed = True
            left = len(self._pending) + self._sending
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._client is not self._state.client:
            self._client.close()
        if not sent and left:
            log.warning("Redis unreachable at close: %d background writes not sent", left)


class RedisBlobs:
    """`blobs.Blobs` on Redis: a plain string per blob, `codexproxy:b:<name>:<key>`, with its TTL."""

    def __init__(self, state: RedisState, name: str) -> None:
        self._state = state
        self._where = state._where
        self._head = state._k("b", name + ":")

    @_guarded
    def get(self, key: str) -> str | None:
        return self._state.client.get(self._head + key)

    @_guarded
    def set(self, key: str, text: str, ttl: float) -> None:
        self._state.client.set(self._head + key, text, px=_ms(ttl))

    @_guarded
    def delete(self, key: str) -> None:
        self._state.client.delete(self._head + key)

    @_guarded
    def entries(self) -> list[tuple[str, int, float]]:
        client, found = self._state.client, []
        names = list(client.scan_iter(match=_glob_escape(self._head) + "*", count=1000))
        for start in range(0, len(names), 500):
            batch = names[start:start + 500]
            with client.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.strlen(name)
                    pipe.pttl(name)
                answers = pipe.execute()
            now = time.time()
            for name, size, ttl_ms in zip(batch, answers[::2], answers[1::2]):
                if size and ttl_ms is not None and ttl_ms > 0:
                    found.append((name[len(self._head):], int(size), now + ttl_ms / 1000))
        return sorted(found, key=lambda entry: entry[2])


class RedisCollection:
    """JSON documents by id: `{prefix}doc:{name}:<id>` each, `{prefix}docs:{name}` the ids in
    insertion order, `docgen` a counter every write bumps, `docexp` the expiries of documents
    with a TTL (so `generation` also changes when one runs out)."""

    def __init__(self, state: RedisState, name: str) -> None:
        self.state = state
        self._where = state._where
        self.name = name
        tag = "{" + name + "}"
        self._doc_prefix = f"{state.prefix}doc:{tag}:"
        self._ids = f"{state.prefix}docs:{tag}"
        self._seq = f"{state.prefix}docseq:{tag}"
        self._gen = f"{state.prefix}docgen:{tag}"
        self._expiries = f"{state.prefix}docexp:{tag}"

    def _doc(self, doc_id: str) -> str:
        return self._doc_prefix + doc_id

    @_guarded
    def get(self, doc_id: str) -> dict | None:
        raw = self.state.client.get(self._doc(doc_id))
        return None if raw is None else json.loads(raw)

    @_guarded
    def put(self, doc: dict, ttl: float | None = None) -> dict:
        doc = dict(doc)
        doc_id = doc.get("id") or uuid.uuid4().hex
        doc["id"] = doc_id = str(doc_id)
        self.state._put(keys=[self._doc(doc_id), self._ids, self._seq, self._gen, self._expiries],
                        args=[_dumps(doc), doc_id, 0 if ttl is None else _ms(ttl)])
        self.state.forget_generations()
        return doc

    @_guarded
    def update(self, doc_id: str, change: Callable[[dict], Any]) -> dict | None:
        key = self._doc(doc_id)
        with self.state.client.pipeline() as pipe:
            for _ in range(UPDATE_ATTEMPTS):
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    doc = json.loads(raw)
                    result = change(doc)
                    if isinstance(result, dict):
                        doc = result
                    doc["id"] = doc_id
                    pipe.multi()
                    pipe.set(key, _dumps(doc), keepttl=True)  # a document with a TTL keeps it
                    pipe.incr(self._gen)
                    pipe.execute()
                    self.state.forget_generations()
                    return doc
                except redis.WatchError:
                    continue  # another writer changed it between our read and write: read again
        raise RuntimeError(f"collection {self.name}: document {doc_id} changed {UPDATE_ATTEMPTS} times during one update")

    @_guarded
    def remove(self, doc_id: str) -> bool:
        removed = bool(self.state._remove(keys=[self._doc(doc_id), self._ids, self._gen, self._expiries], args=[doc_id]))
        self.state.forget_generations()
        return removed

    @_guarded
    def generation(self) -> int:
        """Changes whenever the collection may have changed (a write by any process, a document
        running out), so a repository re-reads and re-parses only then. Another process's write
        shows within GENERATION_MAX_AGE_S; this process's own writes, and anything written before
        a lock this process then took, at once (RedisState.generation_of: no round trip most
        of the time)."""
        return self.state.generation_of(self.name)

    @_guarded
    def all(self) -> list[dict]:
        return [json.loads(raw) for raw in self.state._all(keys=[self._ids], args=[self._doc_prefix])]

    @_guarded
    def all_with_ttl(self) -> list[tuple[dict, float | None]]:
        """Every live document with the seconds it has left (None: no TTL)."""
        flat = self.state._all_with_ttl(keys=[self._ids], args=[self._doc_prefix])
        return [(json.loads(flat[i]), None if int(flat[i + 1]) < 0 else int(flat[i + 1]) / 1000)
                for i in range(0, len(flat), 2)]

    def find(self, **fields: Any) -> list[dict]:
        return [doc for doc in self.all() if all(doc.get(k) == v for k, v in fields.items())]

    def remove_where(self, **fields: Any) -> int:
        return sum(1 for doc in self.find(**fields) if self.remove(doc["id"]))


def _where(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, for messages: never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.hostname or 'localhost'}:{port}"
