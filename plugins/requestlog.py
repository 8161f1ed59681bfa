"""logging: one request-log row per client request, and the `codexproxy logs` command.

Rows go to the core's request log, `app.logs`: append-only local segments (flat cost per write),
or with `state.backend: redis` one capped Redis stream every instance writes to and reads
(codexproxy/logstore_redis.py); this plugin does not know which. `retention` caps either. Turned
off, nothing is written. Tokens never reach a row: only ids, names and counts.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import threading
from typing import Any

from pydantic import Field

from codexproxy import hookimpl
from codexproxy.config import PluginConfig
from codexproxy.exchange import GatewayError
from codexproxy.logstore import compile_query

FIELDS = ("time", "id", "key_id", "key_name", "account_id", "account", "protocol", "transport", "method", "path", "model", "effort",
          "status", "latency_ms", "ttfb_ms", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
          "attempts", "error")

HISTORY_BUILD_DELAY_S = 3.0

log = logging.getLogger(__name__)


class LoggingConfig(PluginConfig):
    retention: int = Field(100_000, ge=100)


@hookimpl
def codexproxy_config_model():
    return LoggingConfig


@hookimpl
def codexproxy_startup(app):
    app.logs.set_retention(app.plugin_config("logging").retention)
    # Count the last week of the log into the status page's buckets soon after start-up (not
    # during it: it takes about a second of CPU at 100k rows), so the first page view does not
    # wait for it. Rows that arrive meanwhile are handed over, not lost.
    build = threading.Timer(HISTORY_BUILD_DELAY_S, _count_history, args=(app,))
    build.daemon = True
    build.start()


def _count_history(app) -> None:
    try:
        app.logs.history()
    except GatewayError as exc:  # a shared log (Redis) unreachable: the first page view counts it
        log.warning("request log: history not counted at start-up: %s", exc.message)


def row_for(exchange) -> dict[str, Any]:
    key = exchange.key
    account = exchange.account
    usage = exchange.usage
    return {
        "time": exchange.started,
        "id": exchange.id,
        "key_id": getattr(key, "id", None),
        "key_name": getattr(key, "name", None),
        "account_id": getattr(account, "id", None),
        "account": getattr(account, "email", None) or getattr(account, "label", None),
        "protocol": exchange.protocol,
        "transport": exchange.transport,
        "method": exchange.method,
        "path": exchange.path,
        "model": exchange.model,
        "effort": exchange.effort,
        "status": exchange.status,
        "latency_ms": exchange.elapsed_ms(),
        "ttfb_ms": exchange.ttfb_ms,
        "input_tokens": usage.input_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "reasoning_tokens": usage.reasoning_tokens if usage else None,
        "attempts": [a.as_log() for a in exchange.attempts],
        "error": exchange.error,
    }


@hookimpl
def codexproxy_exchange_done(app, exchange):
    if exchange.route is not None and not exchange.route.logged:
        return  # the route's plugin says so: liveness probes, page views and scrapes would drown the log
    app.logs.append(row_for(exchange))


def cmd_logs(app, args) -> int:
    words = list(args.query)
    if words[:1] == ["clear"]:
        return cmd_logs_clear(app, args)
    if words[:1] == ["export"]:
        args.query = words[1:]
        return cmd_logs_export(app, args)
    match = compile_query(" ".join(words)) if words else None
    rows = app.logs.query(match, limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    import time as _time

    for r in rows:
        tokens = f"{r.get('input_tokens') or 0}/{r.get('output_tokens') or 0}"
        tries = len(r.get("attempts") or [])
        print(f"{_time.strftime('%m-%d %H:%M:%S', _time.localtime(r.get('time') or 0))}  {r.get('status') or '-':>3}  "
              f"{r.get('method', '')} {r.get('path', '')}  model={r.get('model') or '-'}  key={r.get('key_name') or '-'}  "
              f"account={r.get('account') or r.get('account_id') or '-'}  {r.get('latency_ms') or 0:.0f}ms  tokens={tokens}"
              f"{f'  attempts={tries}' if tries > 1 else ''}{'  error=' + str(r['error']) if r.get('error') else ''}")
    if not rows:
        print("(no matching requests)")
    return 0


def cmd_logs_clear(app, args) -> int:
    print(f"cleared {app.logs.clear()} request log rows")
    return 0


def cmd_logs_export(app, args) -> int:
    match = compile_query(" ".join(args.query)) if args.query else None
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if args.format == "jsonl":
            for row in app.logs.query(match, limit=10**9):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in app.logs.query(match, limit=10**9):
                row = dict(row, attempts=json.dumps(row.get("attempts") or []))
                writer.writerow(row)
    finally:
        if args.out:
            out.close()
            import os

            os.chmod(args.out, 0o600)
    return 0


@hookimpl
def codexproxy_cli_commands(cli):
    p = cli.command(None, "logs", "request logs: `logs [QUERY]`, `logs clear`, `logs export [QUERY] --format jsonl|csv`; "
                                  "QUERY like status:5xx model:gpt-5 key:laptop account:a@x.com path:/v1 =exact words")
    p.add_argument("query", nargs="*")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="for `logs export`")
    p.add_argument("--out", help="for `logs export`: file to write (mode 0600); default stdout")
    p.set_defaults(func=cmd_logs)
