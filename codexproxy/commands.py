"""The core's own CLI commands: run, plugins, codex-config, accounts import/list. `register`
mounts them; the "core" plugin (builtin.py) calls it from `codexproxy_cli_commands`, the hook
every plugin adds its commands through, so cli.py knows no command by name."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import webbrowser
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from . import __version__
from .app import App
from .cli import PORT, CLIError, CommandRegistry, emit, fmt_time, short_text, table
from .models import Account, AccountStatus

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
        for lines in app.hook.codexproxy_listening(app=app, url=base):
            for line in [lines] if isinstance(lines, str) else lines or []:
                print(f"  {line}", flush=True)
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
    from .codexconfig import codex_config_text, proxy_url

    try:  # WebSockets and remote compaction through the proxy: codexconfig.py says why each line
        print(codex_config_text(proxy_url(app), args.key), end="")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
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



def register(cli: CommandRegistry) -> None:
    p = cli.command(None, "run", "serve the gateway (and the status page) until Ctrl-C")
    p.add_argument("--host", type=short_text(255), help="override server.host")
    p.add_argument("--port", type=PORT, help="override server.port (0 = any free port)")
    p.add_argument("--open", action="store_true", help="open the status page in the browser once up")
    p.set_defaults(func=cmd_run)
    p = cli.command(None, "plugins", "list plugins, whether they are on, and their hooks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)
    p = cli.command(None, "codex-config", "print the Codex CLI config.toml block for this proxy")
    p.add_argument("--key", help="the platform key to put in the export line")
    p.set_defaults(func=cmd_codex_config)

    cli.group("accounts", "the account pool: import, list (plugins add login, show, update, remove, export, refresh)")
    p = cli.command("accounts", "import", "add accounts from Codex CLI auth.json files or directories of them")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--group")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_import)
    p = cli.command("accounts", "list", "list accounts with status and usage (never tokens)")
    p.add_argument("--group")
    p.add_argument("--tag")
    p.add_argument("--status", choices=get_args(AccountStatus))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_list)

    from . import service  # `codexproxy service install|status|uninstall`
    service.register(cli)
