"""The status page's forms: each POST /status/<page>/<action> checks its fields with the same
functions as the admin API, changes one thing, and says what it did in one line.

An action returns `Done(page, message)` (the browser is sent back to `page` with the message),
or `Shown(template, context)` for a result that must be shown once and never stored (a new
key's secret, an OAuth login URL). Bad input raises methods.BadParams / NotFound before
anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from codexproxy.exchange import GatewayError

from . import methods
from .methods import BadParams, NotFound


@dataclass
class Done:
    page: str
    message: str


@dataclass
class Shown:
    template: str
    context: dict[str, Any] = field(default_factory=dict)


def _blank_to_none(form: dict[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: (form.get(name) or None) for name in names if name in form}


# --- keys ------------------------------------------------------------------------------------------

def key_create(app, form: dict[str, str]) -> Shown:
    params = _blank_to_none(form, methods.KEY_FIELDS)
    if not params.get("name"):
        raise BadParams("name: give the key a name (e.g. the machine or person using it)")
    created = methods.keys_create(app, params)
    return Shown("key_created.html", {"key": created, "nav": "keys"})


def key_update(app, form: dict[str, str]) -> Done:
    params = _blank_to_none(form, ("id",) + methods.KEY_FIELDS)
    if "expires" in params and params["expires"] is None:
        del params["expires"]  # an empty expiry field keeps the current one ("never" clears it)
    updated = methods.keys_update(app, params)
    return Done("keys", f"Updated key {updated['name']}.")


def _key_action(method: str, verb: str) -> Callable[[Any, dict[str, str]], Done]:
    def run(app, form: dict[str, str]) -> Done:
        result = methods.CORE_METHODS[method](app, {"id": form.get("id") or None})
        return Done("keys", f"{verb} key {result['name']}.")
    return run


# --- accounts: through the accounts plugin's methods when it is on (it also forgets usage
# snapshots, takes the refresh lock...), else straight on the core store ---------------------------

def _account(app, form: dict[str, str]):
    ref = (form.get("id") or "").strip()
    account = app.accounts.get(ref) if ref else None
    if account is None:
        raise NotFound(f"no account with id {ref[:60]!r}")
    return account


def _plugin_method(app, name: str):
    return methods.all_methods(app).get(name)


def _call(func, app, params: dict[str, Any]) -> Any:
    try:
        return func(app, params)
    except GatewayError as exc:
        raise (NotFound if exc.status == 404 else BadParams)(exc.message) from None
    except (ValueError, LookupError) as exc:
        raise BadParams(str(exc.args[0]) if exc.args else str(exc)) from None


def _set_account(app, account, fields: dict[str, Any]) -> None:
    update = _plugin_method(app, "accounts.update")
    if update is not None:
        _call(update, app, {"id": account.id, **{k: ("" if v is None else v) for k, v in fields.items()}})
    else:
        app.accounts.update(account.id, **fields)


def _account_toggle(enabled: bool) -> Callable[[Any, dict[str, str]], Done]:
    def run(app, form: dict[str, str]) -> Done:
        account = _account(app, form)
        _set_account(app, account, {"enabled": enabled})
        return Done("accounts", f"{'Enabled' if enabled else 'Disabled'} {account.name}.")
    return run


def account_update(app, form: dict[str, str]) -> Done:
    account = _account(app, form)
    params = {k: form.get(k, "") for k in ("label", "group", "note", "tags", "sort")}
    fields: dict[str, Any] = {"label": methods.text(params, "label", 100), "group": methods.text(params, "group", 100),
                              "note": methods.text(params, "note", 500)}
    tags = [t.strip() for t in (methods.text(params, "tags", 1000) or "").split(",") if t.strip()]
    if any(len(t) > 40 for t in tags) or len(tags) > 20:
        raise BadParams("tags: at most 20 tags of at most 40 characters, separated by commas")
    fields["tags"] = list(dict.fromkeys(tags))
    sort = params["sort"].strip()
    try:
        fields["sort"] = int(sort) if sort else 0
    except ValueError:
        raise BadParams(f"sort: expected a whole number (got {sort[:20]!r})") from None
    if not -1_000_000 <= fields["sort"] <= 1_000_000:
        raise BadParams("sort: must be between -1000000 and 1000000")
    _set_account(app, account, fields)
    return Done("accounts", f"Saved {fields['label'] or account.email or account.id}.")


def account_remove(app, form: dict[str, str]) -> Done:
    account = _account(app, form)
    remove = _plugin_method(app, "accounts.remove")
    if remove is not None:
        _call(remove, app, {"id": account.id})
    else:
        app.accounts.remove(account.id)
    return Done("accounts", f"Removed {account.name}.")


def _one_result(results: Any, what: str, account) -> None:
    """Raise the error of a `[{"id", "ok", "error"}]` answer of the accounts plugin."""
    failed = [r for r in (results or []) if isinstance(r, dict) and not r.get("ok")]
    if failed:
        raise BadParams(f"could not refresh the {what} of {account.name}: {failed[0].get('error') or 'see the proxy log'}")


def account_refresh_token(app, form: dict[str, str]) -> Done:
    account = _account(app, form)
    refresh = _plugin_method(app, "accounts.refresh")
    if refresh is not None:
        _one_result(_call(refresh, app, {"id": account.id}), "token", account)
    elif not app.hook.codexproxy_refresh_account.get_hookimpls():
        raise BadParams("no plugin can refresh tokens (is the accounts plugin enabled?)")
    elif app.hook.codexproxy_refresh_account(app=app, account_id=account.id, reason="status page") is None:
        raise BadParams(f"could not refresh the token of {account.name}; see its status and the proxy log")
    return Done("accounts", f"Refreshed the access token of {account.name}.")


def _required(app, name: str):
    func = _plugin_method(app, name)
    if func is None:
        raise BadParams(f"{name} is not available (is the accounts plugin enabled?)")
    return func


def account_refresh_usage(app, form: dict[str, str]) -> Done:
    account = _account(app, form)
    result = _call(_required(app, "usage.refresh"), app, {"id": account.id})
    _one_result(result.get("refreshed") if isinstance(result, dict) else None, "usage", account)
    return Done("accounts", f"Refreshed the usage of {account.name}.")


def login_start(app, form: dict[str, str]) -> Shown:
    result = _call(_required(app, "login.start"), app, {})
    result = result if isinstance(result, dict) else {}
    url = result.get("url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise BadParams("the accounts plugin did not return a login URL")
    return Shown("login_started.html", {"url": url, "login_id": str(result.get("id") or ""), "nav": "accounts",
                                        "expires_at": result.get("expires_at"), "listening": bool(result.get("listening")),
                                        "message": result.get("message")})


def login_complete(app, form: dict[str, str]) -> Done:
    url = methods.text({"callback_url": form.get("callback_url") or None}, "callback_url", 4000)
    if not url:
        raise BadParams("callback_url: paste the whole address the browser ended on (http://localhost:1455/auth/callback?code=...)")
    params: dict[str, Any] = {"callback_url": url}
    if form.get("login_id"):
        params["id"] = form["login_id"]
    result = _call(_required(app, "login.complete"), app, params)
    who = (result.get("email") or result.get("id")) if isinstance(result, dict) else None
    verb = "Added" if isinstance(result, dict) and result.get("created") else "Logged in again:"
    return Done("accounts", f"{verb} {who}." if who else "Login completed.")


# --- jobs ---------------------------------------------------------------------------------------------

def job_run(app, form: dict[str, str]) -> Done:
    result = methods.jobs_run(app, {"name": form.get("name") or None})
    last = result.get("last") or {}
    if not result["ran"]:
        return Done("", f"Job {result['name']} is already running.")
    if not last.get("ok"):
        raise BadParams(f"job {result['name']} failed: {last.get('error') or 'see the proxy log'}")
    return Done("", f"Ran job {result['name']} ({last.get('seconds', 0):.1f}s).")


ACTIONS: dict[str, Callable[[Any, dict[str, str]], Done | Shown]] = {
    "keys/create": key_create,
    "keys/update": key_update,
    "keys/enable": _key_action("keys.enable", "Enabled"),
    "keys/disable": _key_action("keys.disable", "Disabled"),
    "keys/remove": _key_action("keys.remove", "Removed"),
    "accounts/enable": _account_toggle(True),
    "accounts/disable": _account_toggle(False),
    "accounts/update": account_update,
    "accounts/remove": account_remove,
    "accounts/refresh-token": account_refresh_token,
    "accounts/refresh-usage": account_refresh_usage,
    "accounts/login-start": login_start,
    "accounts/login-complete": login_complete,
    "jobs/run": job_run,
}
