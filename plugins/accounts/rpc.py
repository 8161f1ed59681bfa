"""The admin JSON-RPC methods of the accounts plugin (served by the admin plugin at POST /rpc).

Each is `func(app, params) -> JSON value`, called in a worker thread; a ValueError carries
a message for the caller (bad params, unknown account, failed login). Never a token.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

from . import logins, manage, pool, usage
from .callback import BackgroundListener
from .logins import LoginError
from .oauth import new_state, redirect_uri


def _user_errors(func: Callable[[Any, dict], Any]) -> Callable[[Any, Any], Any]:
    @functools.wraps(func)
    def run(app: Any, params: Any) -> Any:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ValueError("params must be an object")
        try:
            return func(app, params)
        except LoginError as exc:
            raise ValueError(str(exc)) from None
    return run


def _opt(params: dict, name: str, kind: type | tuple, default: Any = None) -> Any:
    value = params.get(name, default)
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise ValueError(f"params.{name} has the wrong type (got {value!r})")
    return value


def _meta(params: dict) -> dict[str, Any]:
    tags = _opt(params, "tags", list) or []
    if not all(isinstance(t, str) for t in tags):
        raise ValueError("params.tags must be a list of strings")
    return {"group": _opt(params, "group", str), "tags": tags, "note": _opt(params, "note", str)}


def accounts_list(app: Any, params: dict) -> list[dict[str, Any]]:
    group, tag, status = _opt(params, "group", str), _opt(params, "tag", str), _opt(params, "status", str)
    out = [a.public() for a in app.accounts.ordered()]
    return [a for a in out if (group is None or a.get("group") == group) and (tag is None or tag in (a.get("tags") or []))
            and (status is None or a["status"] == status)]


def accounts_show(app: Any, params: dict) -> dict[str, Any]:
    account = manage.find(app, params.get("id"))
    return {**account.public(), "snapshots": usage.snapshots(app, account.id, limit=_opt(params, "snapshots", int, 20))}


def accounts_update(app: Any, params: dict) -> dict[str, Any]:
    fields = {k: v for k, v in params.items() if k != "id"}
    return manage.update(app, params.get("id"), fields).public()


def accounts_remove(app: Any, params: dict) -> dict[str, Any]:
    return {"removed": manage.remove(app, params.get("id")).id}


def accounts_refresh(app: Any, params: dict) -> list[dict[str, Any]]:
    return manage.refresh(app, _opt(params, "id", str))


def usage_get(app: Any, params: dict) -> dict[str, Any]:
    return pool.summary(app)


def usage_refresh(app: Any, params: dict) -> dict[str, Any]:
    ref = _opt(params, "id", str)
    targets = [manage.find(app, ref)] if ref else [a for a in app.accounts.ordered() if usage.pollable(a)]
    results = [{k: v for k, v in r.items() if k != "account"} for r in usage.poll_now(app, targets)]
    return {"refreshed": results, **pool.summary(app)}


def login_start(app: Any, params: dict) -> dict[str, Any]:
    """Browser login (the proxy listens for the callback unless `listen` is false or the port
    is busy: then complete it with login.complete), or `device: true`."""
    meta = _meta(params)
    if _opt(params, "device", bool, False):
        rec = logins.start_device(app, meta)
        deadline = time.time() + app.config.oauth.login_timeout_s
        threading.Thread(target=_device_worker, args=(app, rec, deadline), name="accounts-device-login", daemon=True).start()
        return logins.public(rec)
    host, port = manage.listen_addr(app)
    state, listening, message = new_state(), False, None
    redirect = redirect_uri(host, port)
    if _opt(params, "listen", bool, True):
        try:
            server = app.plugin_state("accounts.listener", BackgroundListener).reserve(app, host, port, state)
            redirect, listening = server.redirect_uri, True
        except LoginError as exc:
            message = f"{exc} — paste the final URL into login.complete instead"
    rec = logins.start_browser(app, redirect, meta, state=state)
    return {**logins.public(rec), "listening": listening, "message": message}


def _device_worker(app: Any, rec: dict[str, Any], deadline: float) -> None:
    try:
        logins.complete_device(app, rec, deadline)
    except LoginError:
        pass  # recorded on the pending login; login.status shows it


def login_complete(app: Any, params: dict) -> dict[str, Any]:
    url = _opt(params, "callback_url", str)
    if not url:
        raise ValueError("params.callback_url is required (the address the browser ended on)")
    query = logins.parse_callback(url)
    expect = None
    if _opt(params, "id", str):
        rec = logins.get(app, params["id"])
        if rec is None:
            raise ValueError(f"no login {params['id']!r}")
        expect = rec.get("state")
    account, created = logins.complete_callback(app, query, _meta(params), expect_state=expect)
    return {"created": created, **account.public()}


def login_status(app: Any, params: dict) -> dict[str, Any]:
    login_id = _opt(params, "id", str)
    rec = logins.get(app, login_id) if login_id else None
    if rec is None:
        raise ValueError(f"no login {login_id!r} (logins are forgotten some time after they expire)")
    out = logins.public(rec)
    if rec["status"] == "pending" and rec["expires_at"] <= time.time():
        out["status"] = "expired"
    account = app.accounts.get(rec["account_id"]) if rec.get("account_id") else None
    out["account"] = account.public() if account else None
    return out


METHODS = {
    "accounts.list": accounts_list, "accounts.show": accounts_show, "accounts.update": accounts_update,
    "accounts.remove": accounts_remove, "accounts.refresh": accounts_refresh,
    "usage.get": usage_get, "usage.refresh": usage_refresh,
    "login.start": login_start, "login.complete": login_complete, "login.status": login_status,
}


def methods() -> dict[str, Callable[[Any, Any], Any]]:
    return {name: _user_errors(func) for name, func in METHODS.items()}
