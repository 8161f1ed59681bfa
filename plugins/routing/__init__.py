"""routing: which account serves a request, and what to do when it fails.

Strategies: ordered (sort order), balanced (round-robin start per key+model), least_used (most
remaining quota), reset_first (the account whose 5-hour window resets soonest while it has
room: quota that would expire unused is spent first). A conversation stays bound to its account
(affinity.py: in a state collection, across restarts) for prompt-cache hits, and moves only on
failover. Failures before the first byte follow `classify` and `codexproxy_upstream_failed`
(cooldowns honour reset times); the core re-sends and the retried answer still streams.
Turned off, the client's own credentials go upstream unchanged.

Everything shared between requests is in `app.state`, so a pool of proxies on one state routes as
one: round-robin cursors are counters, and each request in flight on an account is a lease under
`account_inflight_key` (what limits.account_max_inflight caps and /metrics shows), which expires
on its own if the process holding it dies. Writes no request waits for (turn-states, a lease's
release) go through `app.state.later`, off the request's path. Store writes (cooldowns) happen in worker threads: the
failure hook runs in one, and the success hook hands its write to `_writer`.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field

from codexproxy import hookimpl
from codexproxy.config import PluginConfig
from codexproxy.exchange import GatewayError, Retry
from codexproxy.state import account_inflight_key

from . import affinity

log = logging.getLogger("codexproxy.routing")

COOL_5XX = (30.0, 60.0)
TLS_WORDS = ("certificate", "tls handshake", "ssl")
COOL_CHALLENGE = 120.0
COOL_MAX = 30 * 60.0
CURSOR_TTL_S = 24 * 3600.0  # a key+model not seen for a day starts its round-robin over


class RoutingConfig(PluginConfig):
    strategy: Literal["ordered", "balanced", "least_used", "reset_first"] = "ordered"
    sticky_ttl_s: float = Field(3600.0, ge=0)  # how long a conversation stays bound to its account
    max_bindings: int = Field(5000, ge=10)  # conversation bindings kept in the store, at most
    max_attempts: int = Field(3, ge=1, le=10)


@hookimpl
def codexproxy_config_model():
    return RoutingConfig


def _writer(app) -> ThreadPoolExecutor:
    """The thread that makes this plugin's store writes for hooks on the event loop."""
    return app.plugin_state("routing.writer", lambda: ThreadPoolExecutor(1, thread_name_prefix="routing"))


def _lease_ttl(app) -> float:
    # A lease outlives any request still being served: an answer stalls at most the idle timeout
    # between chunks; one streaming longer than this stops counting (the cap is a soft bound then).
    return 2 * app.config.upstream.stream_idle_timeout_s


def _remaining(account) -> tuple:
    primary = account.primary.used_percent if account.primary else 0.0
    secondary = account.secondary.used_percent if account.secondary else 0.0
    reset = account.primary.reset_at if account.primary and account.primary.reset_at else float("inf")
    return (primary, secondary, reset)


def _reset_first(account) -> tuple:
    """Spend quota before it expires: accounts whose 5-hour window still has room come
    first, the one that resets soonest first; accounts with no window known yet, or no
    room, follow in least-used order."""
    window = account.primary
    if window is not None and window.reset_at and window.used_percent < 100:
        return (0, window.reset_at, window.used_percent)
    return (1, *_remaining(account))


def candidates(app, exchange) -> list:
    """Accounts that may serve this request now, in strategy order (tried ones excluded)."""
    cfg = app.plugin_config("routing")
    tried = set(exchange.tried_accounts())
    key = exchange.key
    pool = [a for a in app.accounts.ordered() if a.is_available() and a.id not in tried]
    if key is not None and getattr(key, "account_id", None):
        pool = [a for a in pool if a.id == key.account_id]
    elif key is not None and getattr(key, "group", None):
        pool = [a for a in pool if a.group == key.group]
    if cfg.strategy == "least_used":
        pool.sort(key=_remaining)
    elif cfg.strategy == "reset_first":
        pool.sort(key=_reset_first)
    elif cfg.strategy == "balanced" and pool:
        turn = app.state.incr(f"routing:cursor:{getattr(key, 'id', None)}:{exchange.model}", ttl=CURSOR_TTL_S)
        start = int(turn - 1) % len(pool)
        pool = pool[start:] + pool[:start]
    return pool


def _eligible(app, exchange) -> list:
    """The enabled accounts this request may use at all (a key can be pinned to one account
    or a group), whatever their state now."""
    key = exchange.key
    accounts = [a for a in app.accounts.all() if a.enabled]
    if key is not None and getattr(key, "account_id", None):
        return [a for a in accounts if a.id == key.account_id]
    if key is not None and getattr(key, "group", None):
        return [a for a in accounts if a.group == key.group]
    return accounts


def _no_account_error(app, exchange) -> GatewayError:
    accounts = _eligible(app, exchange)
    now = time.time()
    statuses = [a.effective_status(now) for a in accounts]
    exhausted = [a for a, s in zip(accounts, statuses) if s in ("exhausted_5h", "exhausted_7d")]
    if accounts and len(exhausted) == len(accounts):
        until = min((a.status_until for a in exhausted if a.status_until), default=now + 60)
        wait = max(1, int(until - now + 0.999))
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(until))
        message = f"Every account's usage limit is reached; the earliest resets at {when} (in {wait}s)."
        if exchange.protocol in ("responses", "compact"):
            # The upstream's own shape: Codex CLI tells its user at once on exactly this, where
            # any other 429 makes it sleep through retry-after, up to five times.
            plan = next((a.plan for a in exhausted if a.plan), None)
            return GatewayError(429, message, type="usage_limit_reached", code="usage_limit_reached",
                                headers={"retry-after": str(wait)},
                                details={"resets_at": int(until), "resets_in_seconds": wait, "plan_type": plan})
        return GatewayError(429, message, type="rate_limit_error", code="usage_limit_reached",
                            headers={"retry-after": str(wait)})
    if not accounts:
        if exchange.key is not None and (getattr(exchange.key, "account_id", None) or getattr(exchange.key, "group", None)):
            return GatewayError(503, "No enabled account matches this key's account or group binding.",
                                type="server_error", code="no_accounts")
        return GatewayError(503, "No accounts in the pool: add one with `codexproxy accounts login` or `accounts import`.",
                            type="server_error", code="no_accounts")
    return GatewayError(503, "No account can serve right now (all cooling down, busy or needing re-login).",
                        type="server_error", code="no_available_account", headers={"retry-after": "30"})


def _pick(app, exchange, pool: list):
    """The first candidate under its inflight cap; takes a lease on it (released at exchange_done).
    With a cap, the lease is taken only under it, in one step of the state (one Redis round trip
    per account tried); without one, the lease only counts the request for /metrics and is sent
    in the background (`state.later`), costing the request no round trip."""
    cap = app.config.limits.account_max_inflight
    state = app.state
    for account in pool:
        key = account_inflight_key(account.id)
        token = state.lease(key, _lease_ttl(app), limit=cap) if cap else state.later.lease(key, _lease_ttl(app))
        if token is None:
            continue  # at its cap (here or on another proxy)
        exchange.meta.setdefault("routing_claims", []).append((key, token))
        return account
    return None


@hookimpl
def codexproxy_select_account(app, exchange):
    cfg = app.plugin_config("routing")
    pool = candidates(app, exchange)
    # The conversation's bound account first, else the one the transport keeps (a socket's last turn's).
    if owner := (cfg.sticky_ttl_s and _bindings(app).owner_of(exchange)) or exchange.prefer_account:
        pool.sort(key=lambda a: a.id != owner)  # stable: the owner first, then the strategy's order
    if not pool:
        raise _no_account_error(app, exchange)
    account = _pick(app, exchange, pool)
    if account is None:
        raise GatewayError(429, "Every account is at its limit of concurrent requests; retry shortly.",
                           type="rate_limit_error", code="accounts_busy", headers={"retry-after": "1"})
    _stick(app, exchange, account)
    return account


def _bindings(app) -> affinity.Bindings:  # its writer thread and read cache are this process's
    return app.plugin_state("routing.affinity", lambda: affinity.Bindings(app))


def _stick(app, exchange, account) -> None:
    """The conversation goes on on this account (after a failover too: it moved)."""
    cfg = app.plugin_config("routing")
    if cfg.sticky_ttl_s and exchange.session_id:
        _bindings(app).bind(["session:" + exchange.session_id], account.id, cfg.sticky_ttl_s, cfg.max_bindings)


@hookimpl
def codexproxy_upstream_request(app, exchange, headers):
    """A turn-state goes back only to the account that issued it: to any other it is
    meaningless at best (after a failover, the conversation starts over there)."""
    if exchange is None or affinity.TURN_STATE not in headers:
        return
    owner = _bindings(app).turn_state_owner(headers[affinity.TURN_STATE])
    if exchange.account is None or owner != exchange.account.id:
        del headers[affinity.TURN_STATE]


@hookimpl
def codexproxy_shutdown(app):
    _bindings(app).flush()
    _writer(app).shutdown(wait=True)


def _release(app, exchange) -> None:
    # In the background: the request is over and nothing waits for the slot's return here (a
    # lost release still ends with the lease's TTL).
    for key, token in exchange.meta.pop("routing_claims", []):
        app.state.later.release(key, token)


# --- failure handling ------------------------------------------------------------------------

def _cool(app, account_id: str, seconds: float, reason: str, status: str = "cooling") -> None:
    def change(account):
        account.status = status
        account.status_until = time.time() + seconds
        account.status_reason = reason
        if status == "cooling":
            account.cooldown_level += 1
    app.accounts.update(account_id, change)
    log.info("account %s %s for %.0fs: %s", account_id, status, seconds, reason)


def _reauth(app, account_id: str, reason: str) -> None:
    app.accounts.update(account_id, status="reauth_required", status_reason=reason, status_until=None)
    log.warning("account %s needs a new login: %s", account_id, reason)


def classify(attempt) -> tuple[str, dict]:
    """What went wrong, in one word, with details: usage_limit, rate_limited, unauthorized,
    deactivated, challenge, server_error, transport, tls, client_error."""
    if attempt.error and attempt.status is None:
        if any(word in attempt.error.lower() for word in TLS_WORDS):
            return "tls", {}
        return "transport", {}
    status = attempt.status or 0
    body = attempt.json_body()
    text = attempt.body[:4096].decode("utf-8", "replace").lower()
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    if status == 429:
        if error.get("type") == "usage_limit_reached" or "usage_limit" in text:
            return "usage_limit", error
        return "rate_limited", error
    if status in (401, 403) and "deactivated" in text:
        return "deactivated", error
    if status == 401:
        return "unauthorized", error
    if status == 403 and ("<html" in text or "just a moment" in text or "cloudflare" in text):
        return "challenge", error
    if status >= 500 or status == 403:
        return "server_error", error
    return "client_error", error


def _usage_reset(attempt, error: dict) -> tuple[float, str]:
    now = time.time()
    until = None
    if isinstance(error.get("resets_at"), (int, float)):
        until = float(error["resets_at"])
    elif isinstance(error.get("resets_in_seconds"), (int, float)):
        until = now + float(error["resets_in_seconds"])
    secondary = attempt.headers.get("x-codex-secondary-used-percent")
    which = "exhausted_7d" if secondary and _float(secondary) >= 100 else "exhausted_5h"
    if until is None:
        reset = attempt.headers.get(f"x-codex-{'secondary' if which == 'exhausted_7d' else 'primary'}-reset-at")
        until = _float(reset) if reset else now + 3600
    return max(until, now + 1), which


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _retry_after(attempt) -> float | None:
    value = attempt.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@hookimpl
def codexproxy_upstream_failed(app, exchange, attempt):
    cfg = app.plugin_config("routing")
    account_id = attempt.account_id
    kind, error = classify(attempt)
    attempt.reason = kind
    if kind == "client_error":
        return None  # the request's fault: the client gets the upstream's answer
    if kind == "tls":
        # The upstream's certificate, the same for every account: no account is to blame, and
        # no other account would fare better.
        return GatewayError(502, f"Upstream TLS failed ({attempt.error}): the upstream's certificate is not trusted. "
                                 "Check upstream.ca_file and upstream.ssl_verify.", type="server_error", code="upstream_tls_error")
    if account_id is None:
        return None  # fallback upstream or no pool credentials: nothing to fail over from
    account = app.accounts.get(account_id)
    level = account.cooldown_level if account else 0
    if kind == "transport" and account is not None and not (attempt.error or "").startswith(("connect", "upstream idle")):
        # The server dropped the connection before answering: usually a kept-alive connection
        # it had just closed. One more try on the same account before blaming the account.
        reconnected = exchange.meta.setdefault("routing_reconnected", [])
        if account_id not in reconnected:
            reconnected.append(account_id)
            return Retry(account=account, reason="reconnect")
    if kind == "unauthorized":
        already = exchange.meta.setdefault("routing_refreshed", [])
        if account_id not in already:
            already.append(account_id)
            used = getattr(exchange.account, "access_token", None) if getattr(exchange.account, "id", None) == account_id else None
            if account is not None and used and account.access_token != used:
                # Refreshed since this attempt left (by a request whose 401 came first, here or
                # on another proxy): retry with the new token; refreshing again would rotate the
                # refresh token once more for nothing, and a burst of 401s would do it many times.
                return Retry(account=account, reason="token refreshed")
            refreshed = app.hook.codexproxy_refresh_account(app=app, account_id=account_id, reason="upstream 401")
            if refreshed is not None and refreshed.access_token:
                return Retry(account=refreshed, reason="token refreshed")
        current = app.accounts.get(account_id)
        if current is None or current.status != "reauth_required":  # keep the refresh's own reason
            _reauth(app, account_id, "upstream answered 401 after a token refresh" if account_id in already else "upstream answered 401")
    elif kind == "usage_limit":
        until, which = _usage_reset(attempt, error)
        _cool(app, account_id, until - time.time(), "usage limit reached", status=which)
    elif kind == "rate_limited":
        seconds = _retry_after(attempt) or min(COOL_MAX, 2.0 ** level)
        _cool(app, account_id, seconds, "rate limited (429)")
    elif kind == "deactivated":
        _reauth(app, account_id, "account deactivated")
    elif kind == "challenge":
        _cool(app, account_id, COOL_CHALLENGE, "Cloudflare challenge (403 HTML): check plugins.cookies")
    else:
        what = attempt.error or f"upstream {attempt.status}"
        _cool(app, account_id, random.uniform(*COOL_5XX), f"{what}"[:120])
    # Next account, if any is left and the budget allows.
    tried = len({a.account_id for a in exchange.attempts if a.account_id})
    if tried < cfg.max_attempts:
        pool = candidates(app, exchange)
        account = _pick(app, exchange, pool) if pool else None
        if account is not None:
            _stick(app, exchange, account)
            return Retry(account=account, reason=kind)
    if app.config.upstream.fallback_base_url and not any(a.account_id is None for a in exchange.attempts):
        return Retry(account=None, use_fallback=True, reason=kind)
    if kind in ("transport",) or (attempt.status and attempt.status >= 500):
        err = _no_account_error(app, exchange)
        if err.code == "no_available_account":
            return GatewayError(503, f"Upstream failed on every account tried ({tried}): {attempt.error or attempt.status}.",
                                type="server_error", code="upstream_unavailable", headers={"retry-after": "30"})
        return err
    return _no_account_error(app, exchange)


@hookimpl
def codexproxy_upstream_response(app, exchange, attempt):
    """A success ends a cooldown streak (the exponential back-off starts over), and a
    turn-state the upstream issues belongs to the account that answered."""
    if attempt.status and attempt.status < 400 and exchange.account is not None and exchange.account.cooldown_level:
        _writer(app).submit(app.accounts.update, exchange.account.id, cooldown_level=0)  # this hook runs on the loop
    cfg = app.plugin_config("routing")
    turn_state = attempt.headers.get(affinity.TURN_STATE)
    if turn_state and attempt.account_id and cfg.sticky_ttl_s:
        _bindings(app).remember_turn_state(turn_state, attempt.account_id, cfg.sticky_ttl_s)


@hookimpl
def codexproxy_exchange_done(app, exchange):
    _release(app, exchange)
