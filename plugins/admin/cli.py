"""The plugin's commands: `keys create/list/update/enable/disable/remove`, `rpc` and `admin-token`.

The key commands call the same functions as the admin API and the status page's forms
(methods.py), so the three accept and refuse the same input; a refusal names the option.
`rpc` answers through rpc.call, the dispatcher of POST /rpc, whether the proxy runs or not.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from codexproxy.cli import CLIError, CommandRegistry, emit, fmt_time, seconds, short_text, table
from codexproxy.models import EFFORTS

from . import methods, rpc

# How each admin API parameter is spelled on the command line, for the errors methods.py raises.
OPTIONS = {"name": "NAME", "id": "KEY", "model": "--model", "effort": "--effort", "expires": "--expires", "rpm": "--rpm",
           "daily_tokens": "--daily-tokens", "account": "--account", "group": "--group", "aliases": "--alias"}
NO_EFFORT = "default"  # `keys update --effort default`: the key no longer sets an effort


def effort(text: str) -> str:
    """An effort level, or `default` (only meaningful to `keys update`)."""
    if text in EFFORTS or text == NO_EFFORT:
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text[:40]!r} (choose from {', '.join(EFFORTS)}, or {NO_EFFORT} to remove it)")


def _call(method: str, app: Any, params: dict[str, Any]) -> Any:
    """An admin method with the CLI's spelling of its refusals: `--rpm: must be between...`
    (the option the user typed), else `keys disable: no key matches ...`."""
    try:
        return methods.CORE_METHODS[method](app, params)
    except (methods.BadParams, methods.NotFound) as exc:
        field, sep, rest = str(exc).partition(": ")
        if sep and field.split(".")[0] in OPTIONS:
            raise CLIError(f"{OPTIONS[field.split('.')[0]]}: {rest}") from None
        raise CLIError(f"keys {method.split('.')[1]}: {exc}") from None


def _cleared(value: str | None) -> str | None:
    """`none` (or empty) on the command line is the API's null: remove the binding or limit."""
    return None if value is not None and value.strip().lower() in ("", "none") else value


def _changed_aliases(current: dict[str, str], changes: list[str]) -> dict[str, str]:
    """A key's alias map after `--alias PATTERN=MODEL` (set) / `--alias PATTERN=` (remove)."""
    aliases = dict(current)
    for change in changes:
        pattern, sep, target = change.partition("=")
        pattern, target = pattern.strip(), target.strip()
        if not sep or not pattern:
            raise CLIError(f"--alias: expected PATTERN=MODEL, got {change!r}")
        if target:
            aliases[pattern] = target
        else:
            aliases.pop(pattern, None)
    return aliases


def cmd_keys_create(app: Any, args: argparse.Namespace) -> int:
    if args.effort == NO_EFFORT:
        args.effort = None  # a new key has no effort unless one is given
    params = {"name": args.name, "model": args.model, "effort": args.effort, "expires": args.expires, "rpm": args.rpm,
              "daily_tokens": args.daily_tokens, "account": args.account, "group": args.group}
    if args.alias:
        params["aliases"] = _changed_aliases({}, args.alias)
    created = _call("keys.create", app, {k: v for k, v in params.items() if v is not None})
    data = {"id": created["id"], "name": created["name"], "key": created["key"]}
    emit(args, data, lambda: f"created key {data['id']} ({data['name']})\n{data['key']}\n"
                             f"This key is shown once: store it now (e.g. export CODEXPROXY_API_KEY={data['key']}).")
    return 0


def cmd_keys_list(app: Any, args: argparse.Namespace) -> int:
    keys = _call("keys.list", app, {})
    emit(args, keys, lambda: table([[k["id"], k["name"], k["prefix"] + "…", "yes" if k["enabled"] else "no", k.get("model") or "-",
                                     k.get("effort") or "-", fmt_time(k.get("expires_at")), fmt_time(k.get("last_used")),
                                     str(k.get("requests_today", 0)), str(k.get("tokens_today", 0))] for k in keys],
                                    ["ID", "NAME", "KEY", "ENABLED", "MODEL", "EFFORT", "EXPIRES", "LAST USED", "REQ TODAY", "TOKENS TODAY"]))
    return 0


def cmd_keys_update(app: Any, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"id": args.id}
    for name in ("model", "rpm", "daily_tokens", "account", "group"):
        value = getattr(args, name)
        if value is not None:
            params[name] = _cleared(value)
    if args.effort is not None:
        params["effort"] = None if args.effort == NO_EFFORT else args.effort
    if args.expires is not None:
        params["expires"] = args.expires
    if args.enable or args.disable:
        params["enabled"] = args.enable
    if args.alias:
        params["aliases"] = _changed_aliases(_call("keys.get", app, {"id": args.id}).get("aliases") or {}, args.alias)
    updated = _call("keys.update", app, params)
    note = ""
    if args.effort == "none":  # until this version `--effort none` removed the binding
        note = f"\nnote: effort none is the level without reasoning; --effort {NO_EFFORT} removes the key's effort"
    emit(args, updated, lambda: f"updated key {updated['id']} ({updated['name']}){note}")
    return 0


def cmd_keys_state(method: str, done: str) -> Callable[[Any, argparse.Namespace], int]:
    def run(app: Any, args: argparse.Namespace) -> int:
        result = _call(method, app, {"id": args.id})
        print(f"{done} key {result.get('removed') or result['id']} ({result['name']})")
        return 0
    return run


def cmd_rpc(app: Any, args: argparse.Namespace) -> int:
    """Call an admin API method: on the running proxy when there is one (so its in-memory
    state and the store agree), else in this process; both answer through rpc.call."""
    try:
        params = json.loads(args.params) if args.params is not None else {}
    except ValueError as exc:
        raise CLIError(f"rpc: JSON_PARAMS is not valid JSON: {exc}") from None
    request = {"jsonrpc": "2.0", "id": 1, "method": args.method, "params": params}
    url = app.running_proxy_url()
    answer = rpc.call(app, methods.all_methods(app), request) if url is None else _remote(app, url, request, args.timeout)
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {"message": str(answer["error"])}
        raise CLIError(f"rpc {args.method}: {error.get('message')} ({error.get('code')})")
    print(json.dumps(answer["result"], indent=2, ensure_ascii=False))
    return 0


def _remote(app: Any, url: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.post(url.rstrip("/") + "/rpc", json=request, headers={"authorization": f"Bearer {app.admin_token}"},
                              timeout=timeout)
        body = response.json()
    except httpx.HTTPError as exc:
        raise CLIError(f"rpc: cannot reach the running proxy at {url}: {exc}") from None
    except ValueError:
        raise CLIError(f"rpc: the proxy at {url} answered {response.status_code} without JSON "
                       "(is the admin plugin enabled in its config?)") from None
    if not isinstance(body, dict) or ("error" not in body and "result" not in body):
        raise CLIError(f"rpc: unexpected answer from {url}: {str(body)[:200]}")
    return body


def cmd_admin_token(app: Any, args: argparse.Namespace) -> int:
    if args.path:
        print("config admin.token" if app.config.admin.token else app.admin_token_file)
    else:
        print(app.admin_token)
    return 0


def _key_settings(p: argparse.ArgumentParser, update: bool) -> None:
    """The options `keys create` and `keys update` share; update also says how to clear each."""
    def clear(how: str) -> str:
        return f" ({how})" if update else ""

    p.add_argument("--model", type=short_text(), help="force this model for every request of the key" + clear("none to stop forcing one"))
    p.add_argument("--effort", type=effort, metavar="EFFORT", help=f"force this reasoning effort ({', '.join(EFFORTS)})"
                   + (f", or {NO_EFFORT} to stop forcing one" if update else ""))
    p.add_argument("--expires", type=short_text(), help="30d, 12h, or a date (2026-12-31)" + clear("never to remove"))
    p.add_argument("--rpm", type=short_text(), help="requests per minute limit" + clear("none to remove"))
    p.add_argument("--daily-tokens", type=short_text(), help="tokens per day limit" + clear("none to remove"))
    p.add_argument("--account", type=short_text(), help="pin the key to this account" + clear("none to unpin"))
    p.add_argument("--group", type=short_text(100), help="pin the key to this account group" + clear("none to unpin"))
    p.add_argument("--alias", action="append", type=short_text(), metavar="PATTERN=MODEL",
                   help="a model alias of this key, e.g. 'claude-*haiku*=gpt-5.5(low)'"
                   + ("; PATTERN= removes it" if update else "") + " (repeatable)")
    p.add_argument("--json", action="store_true")


def register(cli: CommandRegistry) -> None:
    cli.group("keys", "platform keys: create (shown once), list, update, enable, disable, remove")
    p = cli.command("keys", "create", "create a platform key (shown once)")
    p.add_argument("name", type=short_text(100))
    _key_settings(p, update=False)
    p.set_defaults(func=cmd_keys_create)
    p = cli.command("keys", "list", "list platform keys (never the secret)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_list)
    p = cli.command("keys", "update", "change a key's bindings and limits, or switch it on/off")
    p.add_argument("id", type=short_text())
    _key_settings(p, update=True)
    onoff = p.add_mutually_exclusive_group()
    onoff.add_argument("--enable", action="store_true", help="switch the key on (as keys enable)")
    onoff.add_argument("--disable", action="store_true", help="switch the key off (as keys disable)")
    p.set_defaults(func=cmd_keys_update)
    for name, method, done in (("enable", "keys.enable", "enabled"), ("disable", "keys.disable", "disabled"),
                               ("remove", "keys.remove", "removed")):
        p = cli.command("keys", name, f"{name} a key" if name != "remove" else "delete a key")
        p.add_argument("id", type=short_text())
        p.set_defaults(func=cmd_keys_state(method, done))

    p = cli.command(None, "rpc", "call an admin API method (on the running proxy if there is one), e.g. rpc keys.list")
    p.add_argument("method", metavar="METHOD")
    p.add_argument("params", metavar="JSON_PARAMS", nargs="?", help='an object, e.g. \'{"id": "key_..."}\'')
    p.add_argument("--timeout", type=seconds, default=60.0)
    p.set_defaults(func=cmd_rpc)
    p = cli.command(None, "admin-token", "print the admin token of the status page and admin API")
    p.add_argument("--path", action="store_true", help="print where it is kept instead")
    p.set_defaults(func=cmd_admin_token)
