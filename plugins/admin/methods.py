"""The admin API's own methods (keys.*, logs.*, usage.history, plugins.list, health, jobs.*)
and the checks of their parameters. The status page's forms and the `keys` commands (cli.py)
call these same functions, so a form, a command and an RPC call can never disagree about what
is valid.

Every method is `func(app, params) -> JSON value`. Bad input raises `BadParams` (JSON-RPC
-32602, HTTP 400, an error box on the page) before anything is changed; a missing record
raises `NotFound`.
"""

from __future__ import annotations

from typing import Any, Callable

from codexproxy.builtin import health_report
from codexproxy.expiry import parse_expiry
from codexproxy.logstore import compile_query, key_stats
from codexproxy.models import EFFORTS


class BadParams(ValueError):
    """The caller's input is wrong; the message says which field and why."""


class NotFound(LookupError):
    """The record the caller named does not exist."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else "not found"


# --- parameter checks ----------------------------------------------------------------------------

def expect(params: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`params` as a dict with only `allowed` keys and every `required` one present."""
    if params is None or params == []:
        params = {}
    if not isinstance(params, dict):
        raise BadParams("params must be an object with named fields, e.g. {\"id\": \"key_...\"}")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadParams(f"unknown parameter {unknown[0]!r} (allowed: {', '.join(allowed) or 'none'})")
    for name in required:
        if params.get(name) in (None, ""):
            raise BadParams(f"missing parameter {name!r}")
    return params


def text(params: dict, name: str, max_len: int = 200) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadParams(f"{name}: expected a string")
    value = value.strip()
    if len(value) > max_len:
        raise BadParams(f"{name}: at most {max_len} characters")
    if any(ord(c) < 32 for c in value):
        raise BadParams(f"{name}: control characters are not allowed")
    return value or None


def integer(params: dict, name: str, low: int = 1, high: int = 10**12) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadParams(f"{name}: expected a whole number (got {str(value)[:40]!r})")
    if not low <= value <= high:
        raise BadParams(f"{name}: must be between {low} and {high} (got {value})")
    return value


def choice(params: dict, name: str, choices: tuple[str, ...]) -> str | None:
    value = text(params, name)
    if value is not None and value not in choices:
        raise BadParams(f"{name}: must be one of {', '.join(choices)} (got {value!r})")
    return value


def flag(params: dict, name: str) -> bool | None:
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise BadParams(f"{name}: expected true or false")


def expires(params: dict, name: str = "expires") -> float | None:
    """A duration (30d, 12h), a date (2026-12-31), epoch seconds, or none/never: the one
    reading the CLI uses too (codexproxy/expiry.py)."""
    try:
        return parse_expiry(params.get(name))
    except ValueError as exc:
        raise BadParams(f"{name}: {exc}") from None


# --- keys --------------------------------------------------------------------------------------

KEY_FIELDS = ("name", "model", "effort", "expires", "rpm", "daily_tokens", "account", "group", "aliases")


def _key(app, params: dict):
    ref = text(params, "id")
    key = app.keys.find(ref) if ref else None
    if key is None:
        raise NotFound(f"no key matches {ref!r}")
    return key


def _key_fields(app, params: dict) -> dict[str, Any]:
    """The fields present in `params`, checked; a field given as null/empty is cleared."""
    fields: dict[str, Any] = {}
    if "name" in params:
        fields["name"] = text(params, "name", 100)
        if not fields["name"]:
            raise BadParams("name: must not be empty")
    if "model" in params:
        fields["model"] = text(params, "model")
    if "effort" in params:
        fields["effort"] = choice(params, "effort", EFFORTS)
    if "expires" in params:
        fields["expires_at"] = expires(params)
    if "rpm" in params:
        fields["rpm"] = integer(params, "rpm", 1, 1_000_000)
    if "daily_tokens" in params:
        fields["daily_tokens"] = integer(params, "daily_tokens")
    if "group" in params:
        fields["group"] = text(params, "group", 100)
    if "aliases" in params:  # the key's model aliases, replaced whole: {"pattern": "model"}
        aliases = params["aliases"] if params["aliases"] is not None else {}
        if not isinstance(aliases, dict) or len(aliases) > 100:
            raise BadParams("aliases: must be an object of at most 100 pattern -> model entries")
        cleaned = {}
        for pattern, model in aliases.items():
            checked = text({"aliases": pattern}, "aliases"), text({f"aliases.{pattern}": model}, f"aliases.{pattern}")
            if not all(checked):
                raise BadParams("aliases: patterns and models must not be empty")
            cleaned[checked[0]] = checked[1]
        fields["aliases"] = cleaned
    if "account" in params:
        ref = text(params, "account")
        account = app.accounts.find(ref) if ref else None
        if ref and account is None:
            raise BadParams(f"account: no account matches {ref!r}")
        fields["account_id"] = account.id if account else None
    return fields


def key_view(app, key, stats: dict | None = None) -> dict[str, Any]:
    stats = key_stats(app.logs) if stats is None else stats
    return dict(key.public(), **stats.get(key.id, {"last_used": None, "requests_today": 0, "tokens_today": 0}))


def keys_list(app, params) -> list[dict[str, Any]]:
    expect(params, ())
    stats = key_stats(app.logs)
    return [key_view(app, k, stats) for k in sorted(app.keys.all(), key=lambda k: k.created_at)]


def keys_get(app, params) -> dict[str, Any]:
    return key_view(app, _key(app, expect(params, ("id",), ("id",))))


def keys_create(app, params) -> dict[str, Any]:
    fields = _key_fields(app, expect(params, KEY_FIELDS, ("name",)))
    key, secret = app.keys.create(fields.pop("name"), **fields)
    return dict(key.public(), key=secret)  # the only time the secret leaves the process


def keys_update(app, params) -> dict[str, Any]:
    params = expect(params, ("id", "enabled") + KEY_FIELDS, ("id",))
    key = _key(app, params)
    fields = _key_fields(app, params)
    if params.get("enabled") is not None:
        fields["enabled"] = flag(params, "enabled")
    return key_view(app, app.keys.update(key.id, **fields))


def _keys_toggle(enabled: bool) -> Callable[[Any, Any], dict[str, Any]]:
    def run(app, params) -> dict[str, Any]:
        key = _key(app, expect(params, ("id",), ("id",)))
        return key_view(app, app.keys.update(key.id, enabled=enabled))
    return run


def keys_remove(app, params) -> dict[str, Any]:
    key = _key(app, expect(params, ("id",), ("id",)))
    app.keys.remove(key.id)
    return {"removed": key.id, "name": key.name}


# --- logs, plugins, health, jobs ------------------------------------------------------------------

def logs_query(app, params) -> dict[str, Any]:
    params = expect(params, ("query", "limit", "offset"))
    query = text(params, "query", 1000) or ""
    limit = integer(params, "limit", 1, 1000) or 50
    offset = integer(params, "offset", 0, 10**9) or 0
    rows = app.logs.query(compile_query(query) if query else None, limit=limit + 1, offset=offset)
    return {"rows": rows[:limit], "query": query, "limit": limit, "offset": offset, "more": len(rows) > limit}


def logs_clear(app, params) -> dict[str, Any]:
    expect(params, ())
    return {"cleared": app.logs.clear()}


def plugins_list(app, params) -> list[dict[str, Any]]:
    expect(params, ())
    return [p.as_dict() for p in app.plugin_infos()]


def health(app, params) -> dict[str, Any]:
    expect(params, ())
    return health_report(app, detailed=True)


def jobs_list(app, params) -> list[dict[str, Any]]:
    expect(params, ())
    described = {job["name"]: job for job in app.jobs.describe()}
    return [described.get(name) or {"name": name, "next_run": None, **({"last": app.jobs.last_run[name]} if name in app.jobs.last_run else {})}
            for name in sorted(app.jobs.funcs)]


def jobs_run(app, params) -> dict[str, Any]:
    name = text(expect(params, ("name",), ("name",)), "name")
    if name not in app.jobs.funcs:
        known = ", ".join(sorted(app.jobs.funcs)) or "none: jobs exist only in a running proxy"
        raise NotFound(f"no job named {name!r} (jobs: {known})")
    before = app.jobs.last_run.get(name)
    app.jobs.run(name)
    after = app.jobs.last_run.get(name)
    return {"name": name, "ran": after is not before, "last": after}


def usage_history(app, params) -> dict[str, Any]:
    """usage.history: the series behind the status page's charts (history.py; imported here
    rather than at the top because it uses this module's checks)."""
    from .history import usage_history as build

    return build(app, params)


CORE_METHODS: dict[str, Callable[[Any, Any], Any]] = {
    "keys.list": keys_list,
    "keys.get": keys_get,
    "keys.create": keys_create,
    "keys.update": keys_update,
    "keys.enable": _keys_toggle(True),
    "keys.disable": _keys_toggle(False),
    "keys.remove": keys_remove,
    "logs.query": logs_query,
    "logs.clear": logs_clear,
    "usage.history": usage_history,
    "plugins.list": plugins_list,
    "health": health,
    "jobs.list": jobs_list,
    "jobs.run": jobs_run,
}


def all_methods(app) -> dict[str, Callable[[Any, Any], Any]]:
    """Every method of every enabled plugin (this one's included), merged."""
    merged: dict[str, Callable[[Any, Any], Any]] = {}
    for table in app.hook.codexproxy_rpc_methods(app=app):
        if isinstance(table, dict):
            merged.update({str(name): func for name, func in table.items() if callable(func)})
    return merged
