"""auth: platform keys. A gateway route needs `Authorization: Bearer <key>` or `x-api-key`.

Keys are stored as a hash (see codexproxy.store.KeyRepo); this plugin only checks them:
unknown or expired -> 401, disabled -> 403, over the key's `rpm` (a sliding 60 s window kept in
memory) or `daily_tokens` (tokens since local midnight, from the request log) -> 429 with
`retry-after`. Turned off, the gateway is open (the CLI warns loudly at start).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any

from codexproxy import hookimpl
from codexproxy.config import PluginConfig
from codexproxy.exchange import GatewayError
from codexproxy.logstore import start_of_today

WINDOW_S = 60.0


class AuthConfig(PluginConfig):
    pass


@hookimpl
def codexproxy_config_model():
    return AuthConfig


class Limits:
    """Per-key request times of the last minute, and tokens used today.

    Tokens today are read from the request log once (the first time a key with a daily limit
    is seen) and then counted as rows are appended, so a check costs nothing per request.
    """

    def __init__(self, app) -> None:
        self.lock = threading.Lock()
        self.recent: dict[str, collections.deque] = {}
        self.logs = app.logs
        self.day: float | None = None  # start of the day the counts are for; None = not read yet
        self.tokens: dict[str, int] = {}
        # Ids of the newest rows read while seeding: a row appended during the seeding is read
        # there AND reaches _on_row once the lock is free; only those few can be counted twice.
        self.seeded_recent: set[str] = set()
        app.logs.on_append(self._on_row)

    @staticmethod
    def _row_tokens(row: dict[str, Any]) -> int:
        return int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)

    def _count(self, row: dict[str, Any]) -> None:
        key_id = row.get("key_id")
        if key_id and (row.get("time") or 0) >= (self.day or 0):
            self.tokens[key_id] = self.tokens.get(key_id, 0) + self._row_tokens(row)

    def _on_row(self, row: dict[str, Any]) -> None:
        with self.lock:
            if self.day is None:
                return
            if self.seeded_recent and row.get("id") in self.seeded_recent:
                self.seeded_recent.discard(row.get("id"))
                return
            self._count(row)

    def tokens_today(self, key_id: str) -> int:
        today = start_of_today()
        with self.lock:
            if self.day != today:
                self.day, self.tokens, self.seeded_recent = today, {}, set()
                for n, row in enumerate(self.logs.since(today)):  # newest first
                    if n < 1000 and row.get("id"):
                        self.seeded_recent.add(row["id"])
                    self._count(row)
            return self.tokens.get(key_id, 0)

    def take(self, key_id: str, rpm: int) -> float | None:
        """Count a request; None if it fits in the last minute, else seconds to wait."""
        now = time.monotonic()
        with self.lock:
            times = self.recent.setdefault(key_id, collections.deque())
            while times and times[0] <= now - WINDOW_S:
                times.popleft()
            if len(times) >= rpm:
                return times[len(times) - rpm] + WINDOW_S - now
            times.append(now)
            return None


def _limits(app) -> Limits:
    return app.plugin_state("auth.limits", lambda: Limits(app))


def offered_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


def _retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def check_limits(app, key) -> None:
    if key.daily_tokens:
        used = _limits(app).tokens_today(key.id)
        if used >= key.daily_tokens:
            wait = start_of_today() + 86400 - time.time()  # local midnight (DST days are close enough)
            raise GatewayError(429, f"API key {key.name!r} has used its {key.daily_tokens} tokens for today ({used} used); "
                                    f"the limit resets at local midnight.", type="rate_limit_error",
                               code="daily_token_limit_exceeded", headers=_retry_after(wait))
    if key.rpm:
        wait = _limits(app).take(key.id, key.rpm)
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
