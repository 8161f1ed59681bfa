"""`usage.history`: what happened over time, as series. The status page's charts draw exactly
these, and `codexproxy usage history --json` prints them.

- requests, errors, tokens, failovers and cooldowns per hour (24) and per day (7), from the
  request log's buckets (`app.logs.history()`: counted once, then kept up to date);
- each account's 5-hour and 7-day used % over time with the resets, from the usage snapshots
  the accounts plugin keeps (read through its `accounts.show` method: plugins share through
  hooks, never imports), the pool's headroom over the week, each account's share;
- each key's requests, tokens and peak requests per minute per day, with its limits.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

from .methods import all_methods, expect

WINDOWS = (("5h", "primary"), ("7d", "secondary"))
WEEK_S = 7 * 86400


def usage_history(app, params) -> dict[str, Any]:
    expect(params, ())
    now = time.time()
    buckets = app.logs.history().series(now)
    accounts = accounts_history(app, buckets, now)
    return {"generated_at": now,
            "hours": [totals(b) for b in buckets["hours"]],
            "days": [totals(b) for b in buckets["days"]],
            "accounts": accounts,
            "pool_headroom": headroom([a for a in accounts if a.get("enabled")], now),
            "keys": keys_history(app, buckets)}


def totals(bucket: dict[str, Any]) -> dict[str, Any]:
    return {k: bucket[k] for k in ("start", "requests", "errors", "tokens", "failovers", "cooldowns")}


# --- accounts --------------------------------------------------------------------------------

def _share(buckets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per account: requests and tokens over these buckets, and its percent of the pool's."""
    sums: dict[str, dict[str, Any]] = {}
    for bucket in buckets:
        for account_id, n in bucket["accounts"].items():
            entry = sums.setdefault(account_id, {"requests": 0, "tokens": 0})
            entry["requests"] += n["requests"]
            entry["tokens"] += n["tokens"]
    for what in ("requests", "tokens"):
        total = sum(e[what] for e in sums.values())
        for entry in sums.values():
            entry[f"{what}_pct"] = round(100.0 * entry[what] / total, 1) if total else 0.0
    return sums


def _window(w: Any) -> dict[str, Any] | None:
    if not isinstance(w, dict) or not isinstance(w.get("used_percent"), (int, float)):
        return None
    return {"used": float(w["used_percent"]), "reset_at": w.get("reset_at")}


def usage_points(snapshots: list[dict[str, Any]], current: Any, since: float) -> list[dict[str, Any]]:
    """The account's usage over time, oldest first: its kept snapshots (usage polls) and, when
    newer, what the account holds now (response headers update it between polls)."""
    points = [{"time": s["time"], **{name: _window(s.get(field)) for name, field in WINDOWS}}
              for s in snapshots if isinstance(s.get("time"), (int, float)) and s["time"] >= since]
    updated = current.usage_updated_at
    if updated and (not points or updated > points[-1]["time"] + 1):
        points.append({"time": updated, **{name: _window(w.model_dump() if (w := getattr(current, field)) else None)
                                           for name, field in WINDOWS}})
    return points


def resets(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where a window started over between two points: at the earlier point's reset time when it
    passed before the later point, else (no reset time known) where the used % fell."""
    found = []
    for name, _ in WINDOWS:
        for before, after in zip(points, points[1:]):
            a, b = before[name], after[name]
            if a is None or b is None:
                continue
            at = a["reset_at"]
            if isinstance(at, (int, float)) and before["time"] < at <= after["time"]:
                found.append({"window": name, "at": float(at)})
            elif not isinstance(at, (int, float)) and b["used"] < a["used"] - 0.5:
                found.append({"window": name, "at": after["time"]})
    return sorted(found, key=lambda r: r["at"])


def accounts_history(app, buckets: dict[str, list], now: float) -> list[dict[str, Any]]:
    show = all_methods(app).get("accounts.show")  # None with the accounts plugin off: no usage lines
    kept = app.config.jobs.usage_snapshots_kept
    day, week = _share(buckets["hours"]), _share(buckets["days"])
    out = []
    for account in app.accounts.ordered():
        try:
            snaps = show(app, {"id": account.id, "snapshots": kept}).get("snapshots") or [] if show else []
        except (ValueError, LookupError):  # removed meanwhile
            snaps = []
        points = usage_points(snaps, account, now - WEEK_S)
        out.append({"id": account.id, "name": account.name, "enabled": account.enabled,
                    "share": {"24h": day.pop(account.id, _empty()), "7d": week.pop(account.id, _empty())},
                    "usage": points, "resets": resets(points)})
    for account_id in sorted(set(day) | set(week)):  # removed since: their requests still count
        out.append({"id": account_id, "name": f"{account_id} (removed)", "enabled": False,
                    "share": {"24h": day.get(account_id, _empty()), "7d": week.get(account_id, _empty())},
                    "usage": [], "resets": []})
    return out


def _empty() -> dict[str, Any]:
    return {"requests": 0, "tokens": 0, "requests_pct": 0.0, "tokens_pct": 0.0}


def used_at(points: list[dict[str, Any]], times: list[float], name: str, t: float) -> float | None:
    """The used % of window `name` at time t: the latest point at or before t, or 0 once that
    point's window has reset; None before the first point."""
    i = bisect.bisect_right(times, t) - 1
    if i < 0 or points[i][name] is None:
        return None
    w = points[i][name]
    return 0.0 if isinstance(w["reset_at"], (int, float)) and w["reset_at"] <= t else w["used"]


def headroom(accounts: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Hourly over the week, what is left of the enabled accounts' windows, in accounts' worth
    (2.5 = two and a half accounts' full 5h quota). Accounts not yet seen at a time count
    nothing there; `accounts` says how many were known."""
    step = 3600
    grid = [now - step * i for i in range(WEEK_S // step, 0, -1)] + [now]
    tracks = [(a["usage"], [p["time"] for p in a["usage"]]) for a in accounts if a["usage"]]
    out = []
    for t in grid:
        row: dict[str, Any] = {"time": t, "accounts": 0}
        for name, _ in WINDOWS:
            used = [u for points, times in tracks if (u := used_at(points, times, name, t)) is not None]
            row[name] = round(sum(100.0 - min(100.0, u) for u in used) / 100.0, 2) if used else None
            row["accounts"] = max(row["accounts"], len(used))
        out.append(row)
    return out


# --- keys ------------------------------------------------------------------------------------

def keys_history(app, buckets: dict[str, list]) -> list[dict[str, Any]]:
    out = []
    for key in sorted(app.keys.all(), key=lambda k: k.created_at):
        days = [{"start": b["start"], **{"requests": 0, "tokens": 0, "peak_rpm": 0, **b["keys"].get(key.id, {})}}
                for b in buckets["days"]]
        out.append({"id": key.id, "name": key.name, "enabled": key.enabled, "rpm": key.rpm,
                    "daily_tokens": key.daily_tokens, "days": days})
    return out
