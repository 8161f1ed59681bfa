"""The plugin's commands: accounts login/show/update/remove/export/refresh, usage and usage history.

Progress text goes to stdout (to stderr with --json, so stdout stays one JSON document).
Every failure is one line and exit 2 (CLIError). Tokens are never printed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import webbrowser
from typing import Any

from codexproxy.cli import CLIError, emit, fmt_time, table

from . import logins, manage, pool, usage
from .callback import CallbackServer, wait_for
from .logins import LoginError
from .oauth import redirect_uri


def _quiet(func: Any) -> Any:
    """The commands say what happened themselves: the plugin's log lines (meant for the proxy's
    log) would repeat it on stderr, unless -v asks for them."""
    def run(app: Any, args: Any) -> int:
        if not getattr(args, "verbose", False):
            logging.getLogger("codexproxy.accounts").setLevel(logging.ERROR)
        return func(app, args)
    return run


def _say(args: Any, text: str) -> None:
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


def _account_line(account: Any, created: bool) -> str:
    return f"{'added  ' if created else 'renewed'} {account.id}  {account.email or '-'}  plan={account.plan or '-'}"


def _done(args: Any, account: Any, created: bool) -> int:
    emit(args, {"created": created, **account.public()}, lambda: _account_line(account, created))
    return 0


def cmd_login(app: Any, args: Any) -> int:
    meta = {"group": args.group, "tags": [t for t in args.tag or [] if t.strip()], "note": args.note}
    try:
        if args.callback_url is not None:
            account, created = logins.complete_callback(app, logins.parse_callback(args.callback_url), meta)
            return _done(args, account, created)
        if args.device:
            return _device_login(app, args, meta)
        host, port = manage.listen_addr(app)
        if args.no_listen:
            rec = logins.start_browser(app, redirect_uri(host, port), meta)
            ttl = app.config.oauth.pending_login_ttl_s
            emit(args, logins.public(rec), lambda: (
                f"Open this URL in a browser to sign in:\n  {rec['url']}\n"
                f"The browser then goes to {rec['redirect_uri']}?code=... (the page may not load: that is fine).\n"
                f"Copy that whole address and run, within {f'{ttl / 60:.0f} minutes' if ttl >= 120 else f'{ttl:.0f} seconds'}:\n"
                "  codexproxy accounts login --callback-url 'URL'"))
            if not args.no_browser:
                webbrowser.open(rec["url"])
            return 0
        server = CallbackServer(app, host, port)
        try:
            rec = logins.start_browser(app, server.redirect_uri, meta)
            server.add(rec["state"])
            _say(args, f"Open this URL in a browser to sign in:\n  {rec['url']}\n"
                       f"Waiting for the callback on {server.redirect_uri} (Ctrl-C to stop; "
                       "or paste the final URL elsewhere with --callback-url)")
            if not args.no_browser:
                webbrowser.open(rec["url"])
            account, created = wait_for(server, app, rec, time.time() + app.config.oauth.login_timeout_s)
        finally:
            server.close()
        return _done(args, account, created)
    except LoginError as exc:
        raise CLIError(str(exc)) from None


def _device_login(app: Any, args: Any, meta: dict[str, Any]) -> int:
    rec = logins.start_device(app, meta)
    _say(args, f"On any device, open {rec['verification_url']} and enter the code:\n  {rec['user_code']}\n"
               f"Waiting for approval (polling every {rec['interval']:.0f}s, up to {app.config.oauth.login_timeout_s:.0f}s)...")
    account, created = logins.complete_device(app, rec, time.time() + app.config.oauth.login_timeout_s)
    return _done(args, account, created)


def _find(app: Any, ref: str) -> Any:
    try:
        return manage.find(app, ref)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def cmd_show(app: Any, args: Any) -> int:
    account = _find(app, args.id)
    data = {**account.public(), "snapshots": usage.snapshots(app, account.id, limit=5)}

    def text() -> str:
        def window(w: dict | None) -> str:
            return f"{w['used_percent']:.0f}% used, resets {fmt_time(w.get('reset_at'))}" if w else "-"

        rows = [("id", data["id"]), ("email", data.get("email")), ("label", data.get("label")), ("plan", data.get("plan")),
                ("chatgpt account", data.get("chatgpt_account_id")), ("group", data.get("group")),
                ("tags", ", ".join(data.get("tags") or []) or None), ("note", data.get("note")), ("sort", data["sort"]),
                ("enabled", "yes" if data["enabled"] else "no"),
                ("status", data["status"] + (f" ({data['status_reason']})" if data.get("status_reason") else "")
                 + (f" until {fmt_time(data['status_until'])}" if data.get("status_until") else "")),
                ("token expires", fmt_time(data.get("token_expires_at"))), ("last refresh", fmt_time(data.get("last_refresh"))),
                ("5h window", window(data.get("primary"))), ("7d window", window(data.get("secondary"))),
                ("credits", json.dumps(data["credits"]) if data.get("credits") else None),
                ("usage updated", fmt_time(data.get("usage_updated_at"))),
                ("created", fmt_time(data["created_at"])), ("updated", fmt_time(data["updated_at"]))]
        return "\n".join(f"{k + ':':<17}{v if v not in (None, '') else '-'}" for k, v in rows)

    emit(args, data, text)
    return 0


def cmd_update(app: Any, args: Any) -> int:
    fields = {"group": args.group, "note": args.note, "label": args.label, "sort": args.sort,
              "tags": args.tag if args.tag is not None else None,
              "enabled": True if args.enable else (False if args.disable else None)}
    if all(v is None for v in fields.values()):
        raise CLIError("accounts update: nothing to change (use --group, --tag, --note, --label, --sort, --enable or --disable)")
    try:
        updated = manage.update(app, args.id, fields)
    except ValueError as exc:
        raise CLIError(f"accounts update: {exc}") from None
    emit(args, updated.public(), lambda: f"updated {updated.id}  {updated.name}  status={updated.effective_status()}")
    return 0


def cmd_remove(app: Any, args: Any) -> int:
    try:
        account = manage.remove(app, args.id)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    emit(args, {"removed": account.id}, lambda: f"removed {account.id}  {account.name}")
    return 0


def cmd_export(app: Any, args: Any) -> int:
    if bool(args.id) == bool(args.all):
        raise CLIError("accounts export: give one account ID or --all")
    accounts = [_find(app, args.id)] if args.id else app.accounts.ordered()
    if not accounts:
        raise CLIError("accounts export: the pool has no accounts")
    try:
        written = manage.export(accounts, args.out)
    except ValueError as exc:
        raise CLIError(f"accounts export: {exc}") from None
    emit(args, written, lambda: "\n".join(f"wrote {w['file']}  ({w['email'] or w['id']})" for w in written)
         + "\nnote: do not keep using these logins in the pool AND in Codex CLI: refresh tokens rotate, one copy would stop working.")
    return 0


def cmd_refresh(app: Any, args: Any) -> int:
    try:
        results = manage.refresh(app, args.id)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.id and not results[0]["ok"]:
        raise CLIError(results[0]["error"])
    emit(args, results, lambda: "\n".join(
        f"refreshed {r['id']}  {r['account'].get('email') or '-'}  token valid until {fmt_time(r['account'].get('token_expires_at'))}"
        if r["ok"] else f"FAILED    {r['id']}  {r['error']}" for r in results) or "(no account with a refresh token)")
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise CLIError(f"{len(failed)} of {len(results)} accounts could not be refreshed")
    return 0


def cmd_usage(app: Any, args: Any) -> int:
    polled = usage.poll_now(app, [a for a in app.accounts.ordered() if usage.pollable(a)]) if args.refresh else []
    for r in polled:
        if not r["ok"]:
            print(f"warning: {r['id']}: {r['error']}", file=sys.stderr)
    data = pool.summary(app)
    if args.refresh:
        data["refreshed"] = [{k: v for k, v in r.items() if k != "account"} for r in polled]

    def text() -> str:
        def used(w: dict | None) -> str:
            return f"{w['used_percent']:.0f}%" if w else "-"

        def resets(w: dict | None) -> str:
            return fmt_time(w.get("reset_at")) if w else "-"

        rows = [[a["id"], a.get("email") or a.get("label") or "-", a.get("plan") or "-",
                 a["status"] + (f" until {fmt_time(a['status_until'])}" if a.get("status_until") else ""),
                 used(a.get("primary")), resets(a.get("primary")), used(a.get("secondary")), resets(a.get("secondary"))]
                for a in data["accounts"]]
        p = data["pool"]
        return (table(rows, ["ID", "EMAIL", "PLAN", "STATUS", "5H", "5H RESETS", "7D", "7D RESETS"])
                + f"\npool: {p['accounts']} accounts, {p['available']} available now, next reset {fmt_time(p['next_reset'])}")

    emit(args, data, text)
    return 0


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "-"


def _history_text(data: dict[str, Any]) -> str:
    def rows(buckets: list[dict], fmt: str) -> list[list[str]]:
        return [[time.strftime(fmt, time.localtime(b["start"])), str(b["requests"]), str(b["errors"]), str(b["tokens"]),
                 _by_reason(b["failovers"]), _by_reason(b["cooldowns"])] for b in buckets]

    head = ["REQUESTS", "ERRORS", "TOKENS", "FAILOVERS", "COOLDOWNS"]
    shares = [[a["name"], *(f"{a['share'][span][what]} ({a['share'][span][what + '_pct']:.0f}%)"
                            for span in ("24h", "7d") for what in ("requests", "tokens"))] for a in data["accounts"]]
    keys = [[k["name"], time.strftime("%a %Y-%m-%d", time.localtime(d["start"])), str(d["requests"]), str(d["tokens"]),
             str(k["daily_tokens"] or "-"), str(d["peak_rpm"]), str(k["rpm"] or "-")] for k in data["keys"] for d in k["days"] if d["requests"]]
    return "\n\n".join([table(rows(data["hours"], "%a %H:%M"), ["HOUR"] + head),
                         table(rows(data["days"], "%a %Y-%m-%d"), ["DAY"] + head),
                         table(shares, ["ACCOUNT", "REQUESTS 24H", "TOKENS 24H", "REQUESTS 7D", "TOKENS 7D"]),
                         table(keys, ["KEY", "DAY", "REQUESTS", "TOKENS", "DAILY LIMIT", "PEAK RPM", "RPM LIMIT"])])


def cmd_usage_history(app: Any, args: Any) -> int:
    """`usage history`: the series behind the status page's charts, computed in this process
    from the log files and the store (no running proxy needed) by the admin plugin's
    `usage.history` method, found through the RPC-methods hook (plugins never import each
    other), so the CLI and the page cannot disagree. --json prints them whole."""
    found = [t["usage.history"] for t in app.hook.codexproxy_rpc_methods(app=app) if isinstance(t, dict) and "usage.history" in t]
    if not found:
        raise CLIError("usage history: needs the admin plugin (plugins.admin.enabled), which builds the series")
    data = found[0](app, {})
    emit(args, data, lambda: _history_text(data))
    return 0


def _usage_command(app: Any, args: Any) -> int:
    return cmd_usage_history(app, args) if args.what == "history" else cmd_usage(app, args)


def register(cli: Any) -> None:
    p = cli.command("accounts", "login", "sign in a ChatGPT account (browser, --device, or --no-listen then --callback-url)")
    p.add_argument("--no-browser", action="store_true", help="print the URL only; do not open a browser")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--no-listen", action="store_true", help="record the login and print its URL, then finish it with --callback-url")
    how.add_argument("--device", action="store_true", help="device-code flow for machines without a browser")
    how.add_argument("--callback-url", metavar="URL", help="complete a pending login with the URL the browser ended on")
    p.add_argument("--group")
    p.add_argument("--tag", action="append", metavar="T", help="repeatable")
    p.add_argument("--note")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_quiet(cmd_login))
    p = cli.command("accounts", "show", "one account in detail (never tokens)")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_quiet(cmd_show))
    p = cli.command("accounts", "update", "change an account's group, tags, note, label, sort order, or switch it on/off")
    p.add_argument("id")
    p.add_argument("--group", help='"" clears it')
    p.add_argument("--tag", action="append", metavar="T", help='repeatable; replaces the tags ("" clears them)')
    p.add_argument("--note")
    p.add_argument("--label")
    p.add_argument("--sort", type=int)
    onoff = p.add_mutually_exclusive_group()
    onoff.add_argument("--enable", action="store_true")
    onoff.add_argument("--disable", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_quiet(cmd_update))
    p = cli.command("accounts", "remove", "delete an account from the pool")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_quiet(cmd_remove))
    p = cli.command("accounts", "export", "write Codex CLI auth.json files (mode 0600)")
    p.add_argument("id", nargs="?")
    p.add_argument("--all", action="store_true")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_quiet(cmd_export))
    p = cli.command("accounts", "refresh", "refresh access tokens now (one account, or all)")
    p.add_argument("id", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_quiet(cmd_refresh))
    p = cli.command(None, "usage", "5h/7d usage per account and for the pool; `usage history`: requests, errors, tokens, "
                                   "failovers per hour and day, usage over the week, per-key use (the status page's charts)")
    p.add_argument("what", nargs="?", choices=("history",), help="history: the series over time instead of the usage now")
    p.add_argument("--refresh", action="store_true", help="poll the upstream for every account first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_quiet(_usage_command))
