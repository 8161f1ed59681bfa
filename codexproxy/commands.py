"""The core's own CLI commands: run, plugins, codex-config, rpc, admin-token, keys, accounts
import/list. The parser that mounts them (and the plugins' commands) is in cli.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import webbrowser
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from . import __version__
from .app import App
from .cli import CLIError, emit, fmt_time, table
from .expiry import parse_expiry
from .logstore import key_stats
from .models import EFFORTS, Account  # noqa: F401  (EFFORTS: the parser's choices)

def cmd_run(app: App, args: argparse.Namespace) -> int:
    from .server import StartupError, serve

    for option, name in (("--host", "host"), ("--port", "port")):
        value = getattr(args, name)
        if value is not None:
            try:  # the same checks as server.host / server.port in the config
                setattr(app.config.server, name, value)
            except ValidationError as exc:
                raise CLIError(f"{option}: {exc.errors()[0]['msg'].removeprefix('Value error, ')} (got {value!r})") from None
    if not app.hook.codexproxy_authenticate.get_hookimpls():
        logging.getLogger("codexproxy").warning("no authentication plugin is enabled: the gateway is OPEN to anyone who can reach it")

    def ready(base: str) -> None:
        print(f"codexproxy {__version__} listening on {base}", flush=True)
        print(f"  OpenAI/Codex base URL: {base}/v1   Anthropic base URL: {base}", flush=True)
        if any(p.name == "admin" and p.enabled for p in app.plugins):
            print(f"  status page: {base}/status  (admin token in {app.admin_token_file if not app.config.admin.token else 'config admin.token'})", flush=True)
        print(f"  store: {app.config.storage.file}", flush=True)
        if args.open:
            url = app.hook.codexproxy_browser_url(app=app)
            if url:
                webbrowser.open(url)
            else:
                print("  --open: no plugin provides a page to open (is the admin plugin enabled?)", flush=True)

    try:
        asyncio.run(serve(app, ready))
    except StartupError as exc:
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return 0


def cmd_plugins(app: App, args: argparse.Namespace) -> int:
    infos = [p.as_dict() for p in app.plugins]
    emit(args, infos, lambda: "\n".join(
        f"{'on ' if p['enabled'] else 'off'}  {p['name']:<10} {p['source']:<11} {', '.join(h.replace('codexproxy_', '') for h in p['hooks'])}" for p in infos))
    return 0


def cmd_codex_config(app: App, args: argparse.Namespace) -> int:
    host = app.config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    base = f"http://{host}:{app.config.server.port}"
    key = args.key or "<your platform key: codexproxy keys create NAME>"
    print(f"""# ~/.codex/config.toml
model_provider = "codexproxy"

[model_providers.codexproxy]
name = "codexproxy"
base_url = "{base}/v1"
env_key = "CODEXPROXY_API_KEY"
wire_api = "responses"

# and in your shell:
export CODEXPROXY_API_KEY={key}""")
    return 0


def parse_expires(value: str | None) -> float | None:
    """--expires, read exactly as the admin API reads it (codexproxy/expiry.py)."""
    try:
        return parse_expiry(value)
    except ValueError as exc:
        raise CLIError(f"--expires: {exc}") from None


def cmd_keys_create(app: App, args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name:
        raise CLIError("keys create: NAME must not be empty")
    key, secret = app.keys.create(name, model=args.model, effort=args.effort, expires_at=parse_expires(args.expires),
                                  rpm=args.rpm, daily_tokens=args.daily_tokens)
    data = {"id": key.id, "name": key.name, "key": secret}
    emit(args, data, lambda: f"created key {key.id} ({key.name})\n{secret}\nThis key is shown once: store it now (e.g. export CODEXPROXY_API_KEY={secret}).")
    return 0


def cmd_keys_list(app: App, args: argparse.Namespace) -> int:
    stats = key_stats(app.logs)
    unused = {"last_used": None, "requests_today": 0, "tokens_today": 0}
    keys = [{**k.public(), **unused, **stats.get(k.id, {})} for k in app.keys.all()]
    emit(args, keys, lambda: table([[k["id"], k["name"], k["prefix"] + "…", "yes" if k["enabled"] else "no", k.get("model") or "-",
                                     k.get("effort") or "-", fmt_time(k.get("expires_at")), fmt_time(k.get("last_used")),
                                     str(k.get("requests_today", 0)), str(k.get("tokens_today", 0))] for k in keys],
                                    ["ID", "NAME", "KEY", "ENABLED", "MODEL", "EFFORT", "EXPIRES", "LAST USED", "REQ TODAY", "TOKENS TODAY"]))
    return 0


def _find_key(app: App, ref: str):
    key = app.keys.find(ref)
    if key is None:
        raise CLIError(f"no key matches {ref!r} (see codexproxy keys list)")
    return key


def cmd_keys_update(app: App, args: argparse.Namespace) -> int:
    key = _find_key(app, args.id)
    fields: dict[str, Any] = {}
    for name in ("model", "effort", "rpm", "daily_tokens", "account", "group"):
        value = getattr(args, name, None)
        if value is not None:
            fields["account_id" if name == "account" else name] = (None if value in ("", "none") else value)
    if args.expires is not None:
        fields["expires_at"] = parse_expires(args.expires)
    if getattr(args, "enable", False):
        fields["enabled"] = True
    if getattr(args, "disable", False):
        fields["enabled"] = False
    if getattr(args, "alias", None):
        fields["aliases"] = _changed_aliases(key.aliases, args.alias)
    if fields.get("account_id") and app.accounts.find(fields["account_id"]) is None:
        raise CLIError(f"--account: no account matches {fields['account_id']!r}")
    if fields.get("account_id"):
        fields["account_id"] = app.accounts.find(fields["account_id"]).id
    updated = app.keys.update(key.id, **fields)
    emit(args, updated.public(), lambda: f"updated key {updated.id} ({updated.name})")
    return 0


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


def cmd_keys_toggle(enabled: bool) -> Callable[[App, argparse.Namespace], int]:
    def run(app: App, args: argparse.Namespace) -> int:
        key = _find_key(app, args.id)
        app.keys.update(key.id, enabled=enabled)
        print(f"{'enabled' if enabled else 'disabled'} key {key.id} ({key.name})")
        return 0
    return run


def cmd_keys_remove(app: App, args: argparse.Namespace) -> int:
    key = _find_key(app, args.id)
    app.keys.remove(key.id)
    print(f"removed key {key.id} ({key.name})")
    return 0


def cmd_rpc(app: App, args: argparse.Namespace) -> int:
    """Call an admin API method: on the running proxy when there is one (so its in-memory
    state and the store agree), else in this process."""
    try:
        params = json.loads(args.params) if args.params is not None else {}
    except ValueError as exc:
        raise CLIError(f"rpc: JSON_PARAMS is not valid JSON: {exc}") from None
    url = app.running_proxy_url()
    if url is None:
        result = _rpc_local(app, args.method, params)
    else:
        import httpx

        try:
            response = httpx.post(url.rstrip("/") + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": args.method, "params": params},
                                  headers={"authorization": f"Bearer {app.admin_token}"}, timeout=args.timeout)
            body = response.json()
        except httpx.HTTPError as exc:
            raise CLIError(f"rpc: cannot reach the running proxy at {url}: {exc}") from None
        except ValueError:
            raise CLIError(f"rpc: the proxy at {url} answered {response.status_code} without JSON (is the admin plugin enabled?)") from None
        if not isinstance(body, dict) or ("error" not in body and "result" not in body):
            raise CLIError(f"rpc: unexpected answer from {url}: {str(body)[:200]}")
        if "error" in body:
            error = body["error"] if isinstance(body["error"], dict) else {"message": str(body["error"])}
            raise CLIError(f"rpc {args.method}: {error.get('message')} ({error.get('code')})")
        result = body["result"]
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _rpc_local(app: App, method: str, params: Any) -> Any:
    from .exchange import GatewayError

    methods: dict[str, Any] = {}
    for found in app.hook.codexproxy_rpc_methods(app=app):
        methods.update(found or {})
    func = methods.get(method)
    if func is None:
        raise CLIError(f"rpc: no method {method!r} (methods: {', '.join(sorted(methods)) or 'none: is the admin plugin enabled?'})")
    try:
        return func(app, params)
    except GatewayError as exc:
        raise CLIError(f"rpc {method}: {exc.message}") from None
    except (ValueError, LookupError, TypeError) as exc:
        raise CLIError(f"rpc {method}: {exc.args[0] if exc.args else exc}") from None


def cmd_admin_token(app: App, args: argparse.Namespace) -> int:
    if args.path:
        print("config admin.token" if app.config.admin.token else app.admin_token_file)
    else:
        print(app.admin_token)
    return 0


def read_auth_json(path: Path) -> Account:
    """A Codex CLI auth.json as an Account; CLIError names the file and the problem."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CLIError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise CLIError(f"{path}: not valid JSON: {exc}") from None
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, dict) or not tokens.get("access_token"):
        raise CLIError(f"{path}: not a Codex auth.json (no tokens.access_token); sign in with `codex login` or use `codexproxy accounts login`")
    last_refresh = None
    if isinstance(data.get("last_refresh"), str):
        try:
            from datetime import datetime

            last_refresh = datetime.fromisoformat(data["last_refresh"].replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    account = Account.from_tokens(tokens.get("id_token"), tokens.get("access_token"), tokens.get("refresh_token"),
                                  account_id=tokens.get("account_id"), last_refresh=last_refresh)
    if not account.chatgpt_account_id:
        raise CLIError(f"{path}: no ChatGPT account id in tokens.account_id or the id_token")
    return account


def auth_json_paths(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.json") if p.is_file())
            if not found:
                raise CLIError(f"{path}: no .json files in this directory")
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise CLIError(f"{path}: no such file or directory")
    return out


def cmd_accounts_import(app: App, args: argparse.Namespace) -> int:
    accounts = [(p, read_auth_json(p)) for p in auth_json_paths(args.paths)]  # all valid before any is stored
    results = []
    for path, account in accounts:
        if args.group:
            account.group = args.group
        stored, created = app.accounts.upsert_by_chatgpt_id(account)
        results.append({"file": str(path), "created": created, **stored.public()})
    emit(args, results, lambda: "\n".join(
        f"{'added  ' if r['created'] else 'updated'} {r['id']}  {r.get('email') or '-'}  plan={r.get('plan') or '-'}" for r in results)
        + "\nnote: Codex CLI must not keep using the same login: refresh tokens rotate, so one of the two copies would stop working.")
    return 0


def account_rows(accounts: list[dict[str, Any]]) -> str:
    def pct(w: dict | None) -> str:
        return f"{w['used_percent']:.0f}%" if w else "-"

    return table([[a["id"], a.get("email") or a.get("label") or "-", a.get("plan") or "-", a.get("group") or "-",
                   a["status"] + (f" until {fmt_time(a['status_until'])}" if a.get("status_until") else ""),
                   pct(a.get("primary")), pct(a.get("secondary"))] for a in accounts],
                 ["ID", "EMAIL", "PLAN", "GROUP", "STATUS", "5H", "7D"])


def cmd_accounts_list(app: App, args: argparse.Namespace) -> int:
    accounts = [a.public() for a in app.accounts.ordered()]
    if args.group:
        accounts = [a for a in accounts if a.get("group") == args.group]
    if args.tag:
        accounts = [a for a in accounts if args.tag in (a.get("tags") or [])]
    if args.status:
        accounts = [a for a in accounts if a["status"] == args.status]
    emit(args, accounts, lambda: account_rows(accounts))
    return 0
