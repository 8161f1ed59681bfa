"""auth: platform keys. A gateway route needs `Authorization: Bearer <key>` or `x-api-key`.

Keys are stored as a hash (see codexproxy.store.KeyRepo); this plugin only checks them:
unknown or expired -> 401, disabled -> 403, over the key's `rpm` (a sliding 60 s window) or
`daily_tokens` (tokens since local midnight) -> 429 with `retry-after`. Both are counted in
`app.state`, so proxies sharing a state share each key's limits. Turned off, the gateway is
open (the CLI warns loudly at start).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from codexproxy import hookimpl
from codexproxy.config import PluginConfig
from codexproxy.exchange import GatewayError
from codexproxy.logstore import start_of_today

log = logging.getLogger(__name__)

WINDOW_S = 60.0
RPM_KEY = "auth:rpm:{key_id}"
TOKENS_KEY = "auth:tokens:{day}:{key_id}"  # day: the local midnight the count starts at (epoch seconds)
COUNTING_KEY = "auth:tokens:counting"  # present while the state has counted every logged row
SEEDED_IDS_KEPT = 1000


class AuthConfig(PluginConfig):
    pass


@hookimpl
def codexproxy_config_model():
    return AuthConfig


def day_of(t: float) -> int:
    """The local midnight starting the day `t` falls in."""
    lt = time.localtime(t)
    return int(time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1)))


def _row_tokens(row: dict[str, Any]) -> int:
    return int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)


class DailyTokens:
    """Tokens per key and day, as counters in `app.state` that expire after their day.

    Each process adds the rows its own request log receives (its own requests), so processes
    sharing a state add up without counting anything twice. What a counter cannot know is the
    rows logged before it existed: on the embedded state (this process's memory) that is every
    row of today before this start, so they are read from the local log once. On a shared
    state that has been counting (COUNTING_KEY is there, set by whoever seeded first), the
    counters already hold those rows and reading the log again would count them twice: then
    nothing is read. Rows appended while the log is being read are counted once (see `_on_row`).
    """

    def __init__(self, app: Any) -> None:
        self.state = app.state
        self.lock = threading.Lock()
        self.seeding = False
        self.live_ids: set[str] = set()  # rows counted by _on_row while the seed reads
        self.seeded_ids: set[str] = set()  # the newest rows the seed counted (their _on_row may follow)
        self.seeded = threading.Event()  # set once today's log has been read (or needed no reading)
        app.logs.on_append(self._on_row)
        if self.state.add(COUNTING_KEY, True):
            # In the background: today's log can be 100k rows (seconds of reading), and start-up
            # must not wait for them. Until it is read, a key's count is today's live part only.
            self.seeding = True
            threading.Thread(target=self._seed, args=(app.logs,), name="codexproxy-daily-tokens", daemon=True).start()
        else:
            self.seeded.set()

    def _add(self, key_id: str, tokens: int, at: float) -> None:
        day = day_of(at)
        # Kept an hour past the day's end: a row finishing just after midnight still lands.
        ttl = max(60.0, day + 86400 + 3600 - time.time())
        # In the background (`state.later`): rows are logged as a request ends, and the count is
        # read by the key's next request; on Redis it lands a few milliseconds later.
        self.state.later.incr(TOKENS_KEY.format(day=day, key_id=key_id), tokens, ttl=ttl)

    def _on_row(self, row: dict[str, Any]) -> None:
        tokens = _row_tokens(row)
        if not row.get("key_id") or not tokens:
            return
        with self.lock:
            if row.get("id") in self.seeded_ids:
                self.seeded_ids.discard(row.get("id"))
                return
            if self.seeding and row.get("id"):
                self.live_ids.add(row["id"])
        self._add(row["key_id"], tokens, row.get("time") or time.time())

    def _seed(self, logs: Any) -> None:
        with self.lock:
            self.seeding = True
        try:
            rows = [r for r in logs.since(start_of_today()) if r.get("key_id") and _row_tokens(r)]  # newest first
        except GatewayError as exc:  # the shared log (Redis) unreachable: today's earlier rows stay uncounted
            log.warning("daily tokens: today's log not read: %s", exc.message)
            rows = []
        with self.lock:
            for row in rows:
                if row.get("id") not in self.live_ids:
                    self._add(row["key_id"], _row_tokens(row), row.get("time") or time.time())
            self.seeded_ids = {r["id"] for r in rows[:SEEDED_IDS_KEPT] if r.get("id")} - self.live_ids
            self.seeding, self.live_ids = False, set()
        self.seeded.set()

    def today(self, key_id: str) -> int:
        return int(self.state.get(TOKENS_KEY.format(day=day_of(time.time()), key_id=key_id), 0))


def daily_tokens(app: Any) -> DailyTokens:
    """This process's log listener (process-local); the counts themselves are in app.state."""
    return app.plugin_state("auth.daily_tokens", lambda: DailyTokens(app))


@hookimpl
def codexproxy_startup(app):
    daily_tokens(app)  # listen to the log, and read it if needed, before the first request


def take_request(state: Any, key_id: str, rpm: int) -> float | None:
    """Count a request against the key's rpm; None if it fits, else seconds to wait (the refused
    request is taken back: waiting clients do not push their own turn further away)."""
    key = RPM_KEY.format(key_id=key_id)
    if state.window_add(key, 1, WINDOW_S) <= rpm:
        return None
    state.window_add(key, -1, WINDOW_S)
    # The first whole second after which the last minute holds fewer than rpm requests (the
    # sum over the last 60 - wait seconds only shrinks as wait grows: a binary search, a few
    # state calls even for a client that keeps asking).
    low, high = 1, int(WINDOW_S)
    while low < high:
        mid = (low + high) // 2
        if state.window_sum(key, WINDOW_S - mid) < rpm:
            high = mid
        else:
            low = mid + 1
    return float(low)


def offered_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


def _retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def check_limits(app, key) -> None:
    if key.daily_tokens:
        used = daily_tokens(app).today(key.id)
        if used >= key.daily_tokens:
            wait = start_of_today() + 86400 - time.time()  # local midnight (DST days are close enough)
            raise GatewayError(429, f"API key {key.name!r} has used its {key.daily_tokens} tokens for today ({used} used); "
                                    f"the limit resets at local midnight.", type="rate_limit_error",
                               code="daily_token_limit_exceeded", headers=_retry_after(wait))
    if key.rpm:
        wait = take_request(app.state, key.id, key.rpm)
        if wait is not None:
            raise GatewayError(429, f"API key {key.name!r} is over its limit of {key.rpm} requests per minute; "
                                    f"retry in {max(1, math.ceil(wait))}s.", type="rate_limit_error",
                               code="rate_limit_exceeded", headers=_retry_after(wait))


@hookimpl(tryfirst=True)
def codexproxy_authenticate(app, exchange):
    secret = offered_key(exchange.headers)
    if not secret:
        raise GatewayError(401, "Missing API key: send your codexproxy platform key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                           type="authentication_error", code="missing_api_key")
    key = app.keys.verify(secret)
    if key is None:
        raise GatewayError(401, "Invalid API key: no platform key matches (create one with `codexproxy keys create NAME`).",
                           type="authentication_error", code="invalid_api_key")
    if key.is_expired():
        raise GatewayError(401, f"API key {key.name!r} has expired.", type="authentication_error", code="key_expired")
    if not key.enabled:
        raise GatewayError(403, f"API key {key.name!r} is disabled.", type="permission_error", code="key_disabled")
    check_limits(app, key)
    return key
