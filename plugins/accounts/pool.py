"""The pool's view of usage: `GET /backend-api/wham/usage` for Codex CLI, and the totals of
`codexproxy usage` / RPC `usage.get`. Pure reads of the store."""

from __future__ import annotations

import time
from typing import Any

from codexproxy.exchange import GatewayError, LocalResponse
from codexproxy.models import Account, Window, best_account, used_now

WHAM_USAGE_PATH = "/backend-api/wham/usage"


def window_json(w: Window | None, now: float) -> dict[str, Any] | None:
    """A window in the upstream's shape: a `primary_window`/`secondary_window` of the backend's
    GET /backend-api/wham/usage answer."""
    if w is None:
        return None
    rolled = w.reset_at is not None and w.reset_at <= now
    return {"used_percent": used_now(w, now),
            "limit_window_seconds": w.window_minutes * 60 if w.window_minutes else None,
            "reset_after_seconds": None if rolled or w.reset_at is None else max(0, int(w.reset_at - now)),
            "reset_at": None if rolled or w.reset_at is None else int(w.reset_at)}


def pool_usage(app: Any, now: float | None = None) -> dict[str, Any]:
    """What the upstream's /wham/usage would answer if the whole pool were one account."""
    now = now or time.time()
    best, available = best_account(app.accounts.ordered(), now)
    if best is None:
        return {"plan_type": None, "rate_limit": {"allowed": False, "limit_reached": True, "primary_window": None,
                                                  "secondary_window": None}, "credits": None}
    credits = best.credits or {"has_credits": False, "unlimited": False, "balance": "0"}
    return {"plan_type": best.plan,
            "rate_limit": {"allowed": available, "limit_reached": not available,
                           "primary_window": window_json(best.primary, now),
                           "secondary_window": window_json(best.secondary, now)},
            "credits": credits}


def wham_usage_handler(app: Any, exchange: Any) -> LocalResponse:
    if exchange.method not in ("GET", "HEAD"):
        raise GatewayError(405, f"{exchange.method} is not allowed on {exchange.path}; use GET.", code="method_not_allowed")
    return LocalResponse(200, pool_usage(app))


def next_reset(accounts: list[Account], now: float) -> float | None:
    times = [w.reset_at for a in accounts for w in (a.primary, a.secondary) if w and w.reset_at and w.reset_at > now]
    times += [a.status_until for a in accounts if a.effective_status(now) in ("cooling", "exhausted_5h", "exhausted_7d") and a.status_until]
    return min(times, default=None)


def summary(app: Any, now: float | None = None) -> dict[str, Any]:
    """Every account (public fields only) and the pool totals."""
    now = now or time.time()
    accounts = app.accounts.ordered()
    enabled = [a for a in accounts if a.enabled]
    return {"accounts": [a.public(now) for a in accounts],
            "pool": {"accounts": len(accounts), "enabled": len(enabled),
                     "available": sum(1 for a in enabled if a.is_available(now)),
                     "next_reset": next_reset(enabled, now), "usage": pool_usage(app, now)}}
