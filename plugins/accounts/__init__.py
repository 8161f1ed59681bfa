"""accounts: the account pool's lifecycle — OAuth login, import/export, token refresh, usage.

- oauth.py     the issuer's endpoints (PKCE authorize URL, code exchange, refresh, device code)
- logins.py    pending logins in app.state (single-use, expiring) and their completion
- callback.py  the loopback listener the browser is redirected to
- tokens.py    refreshing one account at a time, across threads, processes and proxies
- usage.py     usage from response headers and from polling /wham/usage; snapshots (app.state)
- pool.py      the pool's view: GET /backend-api/wham/usage, `codexproxy usage`
- manage.py    update/remove/export/refresh, shared by cli.py and rpc.py
"""

from __future__ import annotations

from codexproxy import hookimpl
from codexproxy.exchange import Route

from . import pool, rpc, tokens, usage
from .cli import register as register_commands


@hookimpl
def codexproxy_cli_commands(cli):
    register_commands(cli)


@hookimpl
def codexproxy_register_jobs(app, jobs):
    jobs.every(app.config.jobs.token_refresh_interval_s, "token_refresh", tokens.refresh_job)
    # The poll job ticks often; each account has its own due time (interval ± jitter, back-off).
    jobs.every(min(60.0, app.config.jobs.usage_poll_interval_s), "usage_poll", usage.poll_job)


@hookimpl
def codexproxy_refresh_account(app, account_id, reason):
    return tokens.refresh_for_hook(app, account_id, reason)


@hookimpl
def codexproxy_upstream_response(app, exchange, attempt):
    usage.on_upstream_response(app, attempt)


@hookimpl
def codexproxy_route(app, exchange):
    if exchange.path == pool.WHAM_USAGE_PATH:
        return Route(kind="local", protocol="responses", needs_key=True, handler=pool.wham_usage_handler, name="wham_usage")
    return None


@hookimpl
def codexproxy_rpc_methods(app):
    return rpc.methods()


@hookimpl
def codexproxy_shutdown(app):
    usage.header_state(app).writer.shutdown(wait=True)  # land the last usage writes
