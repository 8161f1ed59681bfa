"""Usage: what is left of each account's 5-hour (primary) and 7-day (secondary) windows.

Two sources: the `x-codex-*` headers of every upstream answer (free, and
current), and `GET {upstream.usage_base_url}/wham/usage` polled on a schedule (works for idle
accounts too; kept as snapshots). Both update the same Account fields.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from codexproxy import outbound
from codexproxy.models import Account, Window

from . import tokens
from .backoff import Schedule

log = logging.getLogger("codexproxy.accounts")

SNAPSHOTS = "usage_snapshots"
OLD_SNAPSHOT_FILE = "usage_snapshots.json"  # their own store file before the state collection
WINDOWS = ("primary", "secondary")
POLL_BACKOFF_CAP_S = 30 * 60.0
MARKABLE = ("active", "cooling", "exhausted_5h", "exhausted_7d")  # never overrides reauth_required/disabled


class UsageError(Exception):
    pass


# --- parsing (pure) ----------------------------------------------------------------------------

def _num(value: Any) -> float | None:
    try:
        return float(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _window(used: Any, minutes: Any, reset_at: Any, reset_after: Any, now: float) -> Window | None:
    used_f = _num(used)
    if used_f is None:
        return None
    at = _num(reset_at)
    after = _num(reset_after)
    mins = _num(minutes)
    return Window(used_percent=used_f, window_minutes=int(mins) if mins is not None else None,
                  reset_at=at if at is not None else (now + after if after is not None else None))


def parse_usage_json(data: Any, now: float) -> dict[str, Any]:
    """The /wham/usage answer -> {plan, primary, secondary, credits, limit_reached}. An absent
    window is None (a free account may have only the 7-day one)."""
    if not isinstance(data, dict):
        raise UsageError("usage answer is not a JSON object")
    limits = data.get("rate_limit") if isinstance(data.get("rate_limit"), dict) else {}
    out: dict[str, Any] = {"plan": data.get("plan_type") if isinstance(data.get("plan_type"), str) else None}
    for name in WINDOWS:
        w = limits.get(f"{name}_window")
        secs = _num(w.get("limit_window_seconds")) if isinstance(w, dict) else None
        out[name] = _window(w.get("used_percent"), secs / 60 if secs else None, w.get("reset_at"),
                            w.get("reset_after_seconds"), now) if isinstance(w, dict) else None
    out["credits"] = data.get("credits") if isinstance(data.get("credits"), dict) else None
    out["limit_reached"] = limits.get("limit_reached") if isinstance(limits.get("limit_reached"), bool) else None
    return out


def parse_headers(headers: dict[str, str], now: float) -> dict[str, Any]:
    """x-codex-{primary,secondary}-{used-percent,window-minutes,reset-at|reset-after-seconds}
    and x-codex-credits-* -> the same shape as parse_usage_json, with only what was sent."""
    out: dict[str, Any] = {}
    for name in WINDOWS:
        p = f"x-codex-{name}-"
        w = _window(headers.get(p + "used-percent"), headers.get(p + "window-minutes"), headers.get(p + "reset-at"),
                    headers.get(p + "reset-after-seconds"), now)
        if w is not None:
            out[name] = w
    if "x-codex-credits-has-credits" in headers:
        flag = lambda v: str(v).strip().lower() == "true"  # noqa: E731
        credits: dict[str, Any] = {"has_credits": flag(headers["x-codex-credits-has-credits"]),
                                   "balance": headers.get("x-codex-credits-balance")}
        if "x-codex-credits-unlimited" in headers:
            credits["unlimited"] = flag(headers["x-codex-credits-unlimited"])
        out["credits"] = credits
    return out


def signature(usage: dict[str, Any]) -> tuple:
    """What counts as a change: used %, window, reset to the minute (a reset computed from
    reset-after-seconds moves by a second per answer), credits."""
    sig: list[Any] = []
    for name in WINDOWS:
        if name in usage:
            w = usage[name]
            sig.append((name, None) if w is None else (name, round(w.used_percent, 1), w.window_minutes, round((w.reset_at or 0) / 60)))
    if "credits" in usage:
        sig.append(("credits", tuple(sorted((k, str(v)) for k, v in (usage["credits"] or {}).items()))))
    return tuple(sig)


def apply_usage(account: Account, usage: dict[str, Any], now: float, mark: bool = True) -> None:
    """Put parsed usage on the account; with `mark`, a window at 100% makes it exhausted until
    that window resets (Account.effective_status turns it active again by itself then)."""
    for name in WINDOWS:
        if name in usage:
            setattr(account, name, usage[name])
    if "credits" in usage:
        account.credits = usage["credits"]
    if usage.get("plan"):
        account.plan = usage["plan"]
    account.usage_updated_at = now
    if mark and usage.get("limit_reached") is not False and account.status in MARKABLE:
        for status, w, what in (("exhausted_7d", account.secondary, "7-day"), ("exhausted_5h", account.primary, "5-hour")):
            if w is not None and w.used_percent >= 100:
                until = w.reset_at or now + (w.window_minutes or 60) * 60
                if until > now and (account.effective_status(now) == "active" or (account.status_until or 0) < until):
                    account.status, account.status_until = status, until
                    account.status_reason = f"{what} usage limit reached ({w.used_percent:.0f}%)"
                return


def as_dict(usage: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.model_dump() if isinstance(v, Window) else v) for k, v in usage.items()}


# --- headers after every gateway answer (on the event loop: no I/O here) ------------------------

class HeaderState:
    def __init__(self) -> None:
        self.last: dict[str, tuple] = {}
        self.lock = threading.Lock()
        # One writer thread: store writes (flock + fsync) stay off the event loop, in order.
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accounts-usage")


def header_state(app: Any) -> HeaderState:
    return app.plugin_state("accounts.headers", HeaderState)


def on_upstream_response(app: Any, attempt: Any) -> None:
    """`codexproxy_upstream_response`, on the event loop: parse and compare in memory, and hand
    a write (only when the values changed) to the writer thread. Never raises: an exception in
    this hook would make the core treat a good answer as failed."""
    try:
        _observe(app, attempt)
    except Exception as exc:
        log.warning("reading the usage headers failed: %s: %s", exc.__class__.__name__, exc)


def _observe(app: Any, attempt: Any) -> None:
    if attempt.account_id is None or not attempt.headers:
        return
    now = time.time()
    usage = parse_headers(attempt.headers, now)
    if not usage:
        return
    sig = signature(usage)
    state = header_state(app)
    with state.lock:
        if state.last.get(attempt.account_id) == sig:
            return
        state.last[attempt.account_id] = sig
    account = app.accounts.get(attempt.account_id)  # parse-cached: one stat when nothing changed
    if account is None:
        return
    current = {k: getattr(account, k) for k in WINDOWS if k in usage}
    if "credits" in usage:
        current["credits"] = account.credits
    stored_already = signature(current) == sig  # e.g. the first answer after a restart
    ok = bool(attempt.status) and attempt.status < 400  # a 429's cooldown is the routing plugin's call
    if stored_already and not ok:
        return
    state.writer.submit(_write_headers, app, attempt.account_id, usage, now, ok, stored_already)


def _write_headers(app: Any, account_id: str, usage: dict[str, Any], now: float, mark: bool, status_only: bool) -> None:
    """In the writer thread. `status_only`: the values are stored already; write only if
    they change the status (a window at 100%)."""
    def change(acc: Account) -> None:
        before = (acc.status, acc.status_until)
        apply_usage(acc, usage, now, mark=mark)
        if status_only and (acc.status, acc.status_until) == before:
            raise _Unchanged

    try:
        app.accounts.update(account_id, change)
    except _Unchanged:
        pass
    except Exception as exc:  # an observer must never take the gateway down
        log.warning("saving usage headers of %s failed: %s", account_id, exc)


class _Unchanged(Exception):
    """Aborts AccountRepo.update before it writes: nothing would change."""


# --- polling /wham/usage ----------------------------------------------------------------------

def _fetch(app: Any, account: Account) -> httpx.Response:
    url = f"{app.config.upstream.usage_base_url}/wham/usage"
    try:
        with outbound.client(app) as client:
            return client.get(url, headers=outbound.account_headers(app, url, account))
    except httpx.HTTPError as exc:
        # The reason matters (an untrusted certificate says so); httpx's text holds no token.
        raise UsageError(f"cannot reach {app.config.upstream.usage_base_url}: {exc.__class__.__name__}: {exc}") from None


def poll_account(app: Any, account: Account) -> Account:
    """Fetch, store and snapshot one account's usage; a 401 refreshes the token once and retries.
    Raises UsageError or tokens.RefreshFailed."""
    resp = _fetch(app, account)
    if resp.status_code == 401:
        account = tokens.refresh(app, account.id, "usage poll answered 401")
        resp = _fetch(app, account)
    if resp.status_code != 200:
        raise UsageError(f"usage poll answered HTTP {resp.status_code}")
    try:
        data = resp.json()
    except ValueError:
        raise UsageError("usage answer is not JSON") from None
    now = time.time()
    usage = parse_usage_json(data, now)
    updated = app.accounts.update(account.id, lambda acc: apply_usage(acc, usage, now))
    if updated is None:
        raise UsageError(f"account {account.id} was removed")
    save_snapshot(app, account.id, {"time": now, **as_dict(usage)})
    return updated


def snapshot_collection(app: Any) -> Any:
    """The usage snapshots in the state's collection `usage_snapshots`: one document per
    account (id = the account's id) holding its last `usage_snapshots_kept` polls, oldest
    first, so a poll is one atomic write. Once per process, the store file of their own that
    older versions kept is moved in first (`migrate_snapshot_file`)."""
    app.plugin_state("accounts.snapshots_migrated", lambda: migrate_snapshot_file(app) or True)
    return app.state.collection(SNAPSHOTS)


def _merged(kept: list[dict[str, Any]], new: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    by_time = {s["time"]: s for s in [*kept, *new] if isinstance(s.get("time"), (int, float))}
    return [by_time[t] for t in sorted(by_time)][-keep:]


def _add_snapshots(app: Any, account_id: str, snaps: list[dict[str, Any]]) -> None:
    keep = app.config.jobs.usage_snapshots_kept
    collection = app.state.collection(SNAPSHOTS)

    def change(doc: dict[str, Any]) -> None:
        doc["snapshots"] = _merged(doc.get("snapshots") or [], snaps, keep)

    if collection.update(account_id, change) is None:
        collection.put({"id": account_id, "account_id": account_id, "snapshots": _merged([], snaps, keep)})


def migrate_snapshot_file(app: Any) -> int:
    """Move the snapshots of `usage_snapshots.json` (their own TinyDB file until now) into the
    state collection, then rename the file to `usage_snapshots.json.migrated` so it is read
    once. Merged by time, so a second run (a crash before the rename) adds nothing twice.
    Returns how many were moved."""
    path = app.data_dir / OLD_SNAPSHOT_FILE
    if not path.exists():
        return 0
    with app.state.lock("accounts:migrate-snapshots", ttl=300.0) as held:
        if not held or not path.exists():  # another process moved them meanwhile
            return 0
        try:
            old = json.loads(path.read_text() or "{}").get(SNAPSHOTS) or {}
            docs = [dict(d) for d in old.values() if isinstance(d, dict) and isinstance(d.get("account_id"), str)]
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("cannot read the old usage snapshots in %s (left as they are): %s", path, exc)
            return 0
        for account_id in {d["account_id"] for d in docs}:
            _add_snapshots(app, account_id, [{k: v for k, v in d.items() if k != "account_id"}
                                             for d in docs if d["account_id"] == account_id])
        path.rename(path.with_name(path.name + ".migrated"))
    log.info("moved %d usage snapshots from %s into the store", len(docs), path.name)
    return len(docs)


def save_snapshot(app: Any, account_id: str, snap: dict[str, Any]) -> None:
    """Keep this poll's snapshot, dropping the account's oldest beyond `usage_snapshots_kept`
    (from a worker thread or the CLI: a collection write may wait on the store's fsync)."""
    snapshot_collection(app)
    _add_snapshots(app, account_id, [snap])


def snapshots(app: Any, account_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The account's newest `limit` snapshots, oldest first."""
    doc = snapshot_collection(app).get(account_id) or {}
    return [{"account_id": account_id, **s} for s in (doc.get("snapshots") or [])[-limit:]] if limit > 0 else []


def forget(app: Any, account_id: str) -> None:
    snapshot_collection(app).remove(account_id)


def pollable(account: Account) -> bool:
    return account.enabled and bool(account.access_token) and account.status != "reauth_required"


def poll_schedule(app: Any) -> Schedule:
    return app.plugin_state("accounts.poll_schedule", lambda: Schedule(app.state, "accounts:poll", app.config.jobs.usage_poll_interval_s,
                                                                       cap=POLL_BACKOFF_CAP_S))


def poll_job(app: Any) -> int:
    """Scheduled: poll each enabled account when due (interval ± jitter; back-off on failure)."""
    schedule = poll_schedule(app)
    polled = 0
    for account in app.accounts.all():
        if not pollable(account) or not schedule.due(account.id):
            continue
        try:
            poll_account(app, account)
            schedule.succeeded(account.id)
            polled += 1
        except (UsageError, tokens.RefreshFailed) as exc:
            delay = schedule.failed(account.id)
            log.warning("usage poll of %s failed (next try in %.0fs): %s", account.name, delay, exc)
    return polled


def poll_now(app: Any, accounts: list[Account]) -> list[dict[str, Any]]:
    """Poll these accounts now (CLI `usage --refresh`, RPC `usage.refresh`)."""
    results = []
    for account in accounts:
        try:
            updated = poll_account(app, account)
            results.append({"id": account.id, "ok": True, "account": updated.public()})
        except (UsageError, tokens.RefreshFailed) as exc:
            results.append({"id": account.id, "ok": False, "error": str(exc)})
    return results
