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
"""

from __future__ import annotations

import functools
import json
import secrets
import time
import uuid
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

# KEYS[1] leases; ARGV token, ttl ms.
_LEASE = _NOW + """
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
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

    def __init__(self, client: redis.Redis, where: str = "redis", prefix: str = PREFIX) -> None:
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
        self._generation = client.register_script(_GENERATION)
        self._all_with_ttl = client.register_script(_ALL_WITH_TTL)
        self._collections: dict[str, RedisCollection] = {}

    @classmethod
    def from_url(cls, url: str) -> "RedisState":
        """A client for `url` (redis://, rediss:// for TLS, unix://; a password in the URL); its
        query may override the timeouts (`?socket_timeout=10`)."""
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
            # One immediate retry: a pooled connection broken by a Redis restart is replaced at
            # once; a Redis that is down fails fast instead of backing off for seconds per call.
            retry=Retry(NoBackoff(), 1))
        return cls(client, where=_where(url))

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
    def lease(self, key: str, ttl: float) -> str:
        token = secrets.token_hex(12)
        self._lease(keys=[self._k("l", key)], args=[token, _ms(ttl)])
        return token

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
        return token if self.client.set(self._k("lock", name), token, px=_ms(ttl), nx=True) else None

    @_guarded
    def unlock(self, name: str, token: str) -> None:
        self._unlock(keys=[self._k("lock", name)], args=[token])

    def lock(self, name: str, ttl: float, wait: float = 30.0) -> ContextManager[bool]:
        return polling_lock(self, name, ttl, wait)

    # --- collections ---------------------------------------------------------------------------------
    def collection(self, name: str) -> "RedisCollection":
        found = self._collections.get(name)
        if found is None:
            found = self._collections.setdefault(name, RedisCollection(self, name))
        return found

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
        self.client.close()


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
                    return doc
                except redis.WatchError:
                    continue  # another writer changed it between our read and write: read again
        raise RuntimeError(f"collection {self.name}: document {doc_id} changed {UPDATE_ATTEMPTS} times during one update")

    @_guarded
    def remove(self, doc_id: str) -> bool:
        return bool(self.state._remove(keys=[self._doc(doc_id), self._ids, self._gen, self._expiries], args=[doc_id]))

    @_guarded
    def generation(self) -> int:
        """Changes whenever the collection may have changed (a write by any process, a document
        running out): one round trip, so a repository re-reads and re-parses only then."""
        return int(self.state._generation(keys=[self._gen, self._expiries]))

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
