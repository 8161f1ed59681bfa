"""What each status page shows: plain dicts built from the store, the request log and the
config, handed to the Jinja templates. No secrets go in: accounts through `public()`, keys
through `public()` (hash excluded), the config through `masked()`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from codexproxy.config import masked
from codexproxy.logstore import start_of_today

from . import methods

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


def dashboard(app, query: dict[str, str]) -> dict[str, Any]:
    now = time.time()
    accounts = app.accounts.ordered()
    statuses = [a.effective_status(now) for a in accounts]
    counts = {"total": len(accounts), "available": sum(1 for a in accounts if a.is_available(now)),
              "cooling": statuses.count("cooling"), "exhausted": statuses.count("exhausted_5h") + statuses.count("exhausted_7d"),
              "reauth": statuses.count("reauth_required"), "disabled": statuses.count("disabled")}
    enabled = [a for a in accounts if a.enabled]
    available = [a for a in accounts if a.is_available(now)]
    best = min(available, key=lambda a: (a.primary.used_percent if a.primary else 0, a.secondary.used_percent if a.secondary else 0),
               default=None)
    hour = {"requests": 0, "errors": 0}
    today = {"requests": 0, "tokens": 0}
    recent_errors: list[dict[str, Any]] = []
    for row in app.logs.since(start_of_today()):
        today["requests"] += 1
        today["tokens"] += (row.get("input_tokens") or 0) + (row.get("output_tokens") or 0)
        failed = (row.get("status") or 0) >= 400 or bool(row.get("error"))
        if (row.get("time") or 0) >= now - 3600:
            hour["requests"] += 1
            hour["errors"] += failed
        if failed and len(recent_errors) < 5:
            recent_errors.append(log_row(row))
    return {"counts": counts, "pool": {"5h": _pool_window(enabled, "primary"), "7d": _pool_window(enabled, "secondary")},
            "best": account_view(best, now) if best else None, "hour": hour, "today": today,
            "recent_errors": recent_errors, "jobs": methods.jobs_list(app, {}), "uptime_s": now - app.started_at,
            "keys": len(app.keys.all())}


def accounts(app, query: dict[str, str]) -> dict[str, Any]:
    now = time.time()
    available = methods.all_methods(app)
    return {"accounts": [account_view(a, now) for a in app.accounts.ordered()],
            "can_refresh_usage": "usage.refresh" in available, "can_login": "login.start" in available,
            "can_refresh_token": "accounts.refresh" in available or bool(app.hook.codexproxy_refresh_account.get_hookimpls())}


def keys(app, query: dict[str, str]) -> dict[str, Any]:
    return {"keys": methods.keys_list(app, {}), "efforts": methods.EFFORTS,
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
