"""What each status page shows: plain dicts built from the store, the request log and the
config, handed to the Jinja templates. No secrets go in: accounts through `public()`, keys
through `public()` (hash excluded), the config through `masked()`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from codexproxy.config import masked
from codexproxy.loghistory import failed
from codexproxy.logstore import start_of_today
from codexproxy.models import best_account

from . import charts, history, methods

LOG_PAGE_SIZE = 50
STATUS_LABELS = {"active": "available", "cooling": "cooling", "exhausted_5h": "5h limit", "exhausted_7d": "7d limit",
                 "reauth_required": "needs login", "disabled": "disabled"}


def window_view(window: Any) -> dict[str, Any] | None:
    """A usage window as a bar: percent used (0-100), colour level, reset time."""
    if window is None:
        return None
    used = max(0.0, min(100.0, float(window.used_percent or 0)))
    level = "ok" if used < 70 else "warn" if used < 90 else "bad"
    return {"used": used, "left": 100.0 - used, "level": level, "reset_at": window.reset_at,
            "minutes": window.window_minutes}


def account_view(account: Any, now: float) -> dict[str, Any]:
    data = account.public(now)
    data.update(name=account.name, label=STATUS_LABELS.get(data["status"], data["status"]),
                primary=window_view(account.primary), secondary=window_view(account.secondary),
                tags_text=", ".join(account.tags))
    return data


def _pool_window(accounts: list, attr: str) -> dict[str, Any] | None:
    windows = [getattr(a, attr) for a in accounts if getattr(a, attr) is not None]
    if not windows:
        return None
    view = window_view(type(windows[0])(used_percent=sum(w.used_percent for w in windows) / len(windows)))
    view["reset_at"] = min((w.reset_at for w in windows if w.reset_at), default=None)
    return view


WINDOWS = {"24h": ("hours", "per hour, last 24 hours"), "7d": ("days", "per day, last 7 days")}
PALETTE = 8  # .c-p0 ... .c-p7 in style.css: reasons, accounts


def _labels(buckets: list[dict[str, Any]], hourly: bool) -> tuple[list[str], list[str]]:
    """(table labels, axis labels) of hourly or daily buckets, in the proxy's local time."""
    if hourly:
        return [time.strftime("%a %H:%M", time.localtime(b["start"])) for b in buckets], [charts.hour_label(b["start"]) for b in buckets]
    return [time.strftime("%a %Y-%m-%d", time.localtime(b["start"])) for b in buckets], [charts.day_label(b["start"]) for b in buckets]


def _by_name(buckets: list[dict[str, Any]], field: str, empty: str, colours: dict[str, str]) -> list[tuple[str, str, list[int]]]:
    names = sorted({name for b in buckets for name in b[field]})
    return [(name, colours[name], [b[field].get(name, 0) for b in buckets]) for name in names] or [(empty, "c-p0", [0] * len(buckets))]


def _colours(names: set[str]) -> dict[str, str]:
    """One colour per name on every chart of the page (a reason is the same colour in both)."""
    return {name: f"c-p{i % PALETTE}" for i, name in enumerate(sorted(names))}


def activity_charts(buckets: list[dict[str, Any]], window: str) -> list[dict[str, Any]]:
    """Requests (answered / failed), tokens, failovers and cooldowns by reason, per bucket."""
    field, span = WINDOWS[window]
    hourly = field == "hours"
    labels, ticks = _labels(buckets, hourly)
    common = {"ticks": ticks, "every": 3 if hourly else 1}
    reasons = _colours({r for b in buckets for field in ("failovers", "cooldowns") for r in b[field]})
    return [
        charts.bars(f"requests-{window}", f"Requests {span}", labels,
                    [("answered", "c-ok", [b["requests"] - b["errors"] for b in buckets]), ("failed", "c-bad", [b["errors"] for b in buckets])],
                    **common),
        charts.bars(f"tokens-{window}", f"Tokens (input + output) {span}", labels, [("tokens", "c-tok", [b["tokens"] for b in buckets])],
                    **common),
        charts.bars(f"failovers-{window}", f"Failovers by reason {span}", labels, _by_name(buckets, "failovers", "failovers", reasons), **common),
        charts.bars(f"cooldowns-{window}", f"Cooldowns by reason {span}", labels, _by_name(buckets, "cooldowns", "cooldowns", reasons), **common),
    ]


def dashboard(app, query: dict[str, str]) -> dict[str, Any]:
    now = time.time()
    window = query.get("window") or "24h"
    if window not in WINDOWS:
        raise methods.BadParams(f"window: must be one of {', '.join(WINDOWS)} (got {window[:20]!r})")
    accounts = app.accounts.ordered()
    statuses = [a.effective_status(now) for a in accounts]
    counts = {"total": len(accounts), "available": sum(1 for a in accounts if a.is_available(now)),
              "cooling": statuses.count("cooling"), "exhausted": statuses.count("exhausted_5h") + statuses.count("exhausted_7d"),
              "reauth": statuses.count("reauth_required"), "disabled": statuses.count("disabled")}
    enabled = [a for a in accounts if a.enabled]
    best, available = best_account(accounts, now)  # the one /backend-api/wham/usage reports too
    # From the buckets, not the log: today's rows alone can be tens of thousands. Only the last
    # hour (a rolling window the hourly buckets do not match) is read from the log.
    history = app.logs.history()
    buckets = history.series(now)
    hour = {"requests": 0, "errors": 0}
    for row in app.logs.since(now - 3600):
        hour["requests"] += 1
        hour["errors"] += failed(row)
    day = buckets["days"][-1]
    today = {"requests": day["requests"], "tokens": day["tokens"]}
    recent_errors = [log_row(row) for row in history.recent_failures() if row["time"] >= start_of_today()]
    return {"counts": counts, "pool": {"5h": _pool_window(enabled, "primary"), "7d": _pool_window(enabled, "secondary")},
            "best": account_view(best, now) if available else None, "hour": hour, "today": today,
            "recent_errors": recent_errors, "jobs": methods.jobs_list(app, {}), "uptime_s": now - app.started_at,
            "keys": len(app.keys.all()), "window": window, "windows": WINDOWS,
            "charts": activity_charts(buckets[WINDOWS[window][0]], window)}


def _usage_lines(account: dict[str, Any]) -> list[tuple[str, str, list[tuple[float, float | None]]]]:
    """The 5h and 7d used % of one account as line points, broken (None) at each reset."""
    lines = []
    for name, _ in history.WINDOWS:
        points = [(p["time"], (p[name] or {}).get("used")) for p in account["usage"]]
        points += [(r["at"], None) for r in account["resets"] if r["window"] == name]
        lines.append((f"{name} used", f"c-{name}", sorted(points, key=lambda p: (p[0], p[1] is not None))))
    return lines


def usage_charts(app, now: float) -> dict[str, Any]:
    """Each account's usage over the week with its resets, the pool's headroom, and who took the load."""
    buckets = app.logs.history().series(now)
    accounts = history.accounts_history(app, buckets, now)
    start = now - history.WEEK_S
    per_account = {a["id"]: charts.lines(f"usage-{a['id']}", f"{a['name']}: used % of the 5-hour and 7-day windows", start, now,
                                         _usage_lines(a), [(r["at"], f"c-{r['window']}", f"{r['window']} reset") for r in a["resets"]])
                   for a in accounts if a["usage"]}
    enabled = [a for a in accounts if a["enabled"]]
    room = history.headroom(enabled, now)
    headroom = charts.lines("headroom", "Pool headroom: accounts' worth of quota left", start, now,
                            [(f"{w} left", f"c-{w}", [(r["time"], r[w]) for r in room]) for w, _ in history.WINDOWS],
                            top=len(enabled) if 1 <= len(enabled) <= 10 else charts.nice_max(len(enabled)), unit="")
    days = buckets["days"]
    labels, ticks = _labels(days, hourly=False)
    load = []
    for what in ("requests", "tokens"):
        stacks = [(a["name"], f"c-p{i % PALETTE}", [b["accounts"].get(a["id"], {}).get(what, 0) for b in days]) for i, a in enumerate(accounts)]
        load.append(charts.bars(f"load-{what}", f"{what.capitalize()} per account per day, last 7 days", labels,
                                stacks or [("no account", "c-p0", [0] * len(days))], ticks=ticks))
    return {"usage_charts": per_account, "headroom": headroom, "headroom_now": room[-1] if room else None,
            "load_charts": load, "shares": accounts}


def accounts(app, query: dict[str, str]) -> dict[str, Any]:
    now = time.time()
    available = methods.all_methods(app)
    return {"accounts": [account_view(a, now) for a in app.accounts.ordered()],
            "can_refresh_usage": "usage.refresh" in available, "can_login": "login.start" in available,
            "can_refresh_token": "accounts.refresh" in available or bool(app.hook.codexproxy_refresh_account.get_hookimpls()),
            **usage_charts(app, now)}


def key_charts(app, now: float) -> dict[str, list[dict[str, Any]]]:
    """Per key, per day of the week: tokens against its daily limit, the busiest minute against its rpm."""
    out = {}
    for key in history.keys_history(app, app.logs.history().series(now)):
        days = key["days"]
        labels, ticks = _labels(days, hourly=False)
        requests = [("requests", [d["requests"] for d in days])]
        out[key["id"]] = [
            charts.bars(f"key-tokens-{key['id']}", f"{key['name']}: tokens per day", labels, [("tokens", "c-tok", [d["tokens"] for d in days])],
                        limit=("daily limit", key["daily_tokens"]) if key["daily_tokens"] else None, ticks=ticks, extra=requests),
            charts.bars(f"key-rpm-{key['id']}", f"{key['name']}: busiest minute per day (requests)", labels,
                        [("peak requests/min", "c-ok", [d["peak_rpm"] for d in days])],
                        limit=("rpm limit", key["rpm"]) if key["rpm"] else None, ticks=ticks, extra=requests),
        ]
    return out


def keys(app, query: dict[str, str]) -> dict[str, Any]:
    return {"keys": methods.keys_list(app, {}), "efforts": methods.EFFORTS, "key_charts": key_charts(app, time.time()),
            "accounts": [{"id": a.id, "name": a.name} for a in app.accounts.ordered()],
            "groups": sorted({a.group for a in app.accounts.all() if a.group})}


def log_row(row: dict[str, Any]) -> dict[str, Any]:
    status = row.get("status")
    attempts = row.get("attempts") or []
    return dict(row, status_level="ok" if status and status < 400 else "warn" if status and status < 500 else "bad",
                chain=" → ".join(f"{(a.get('account') or 'fallback')[:16]}:{a.get('status') or a.get('error') or '-'}" for a in attempts),
                tokens_in=row.get("input_tokens") or 0, tokens_out=row.get("output_tokens") or 0)


def logs(app, query: dict[str, str]) -> dict[str, Any]:
    text = query.get("q", "")[:1000]
    page = methods.integer(query, "page", 1, 10**6) or 1
    result = methods.logs_query(app, {"query": text, "limit": LOG_PAGE_SIZE, "offset": (page - 1) * LOG_PAGE_SIZE})
    return {"rows": [log_row(r) for r in result["rows"]], "q": text, "page": page, "more": result["more"],
            "total": app.logs.count()}


def plugins(app, query: dict[str, str]) -> dict[str, Any]:
    available = methods.all_methods(app)
    return {"plugins": [p.as_dict() for p in app.plugin_infos()], "methods": sorted(available)}


def _flatten(prefix: str, node: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    else:
        out.append((prefix, "—" if node is None else json.dumps(node, ensure_ascii=False) if isinstance(node, (list, dict, bool)) else str(node)))


def settings(app, query: dict[str, str]) -> dict[str, Any]:
    sections = []
    for name, value in masked(app.config).items():
        rows: list[tuple[str, str]] = []
        _flatten("", value, rows)
        sections.append({"name": name, "rows": rows})
    return {"sections": sections, "source": str(app.config.source) if app.config.source else None,
            "store": str(app.config.storage.file), "token_file": None if app.config.admin.token else str(app.admin_token_file)}


PAGES = {"": ("dashboard.html", dashboard), "accounts": ("accounts.html", accounts), "keys": ("keys.html", keys),
         "logs": ("logs.html", logs), "plugins": ("plugins.html", plugins), "settings": ("settings.html", settings)}
