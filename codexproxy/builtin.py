"""The host's own hook implementations: health, the raw Responses passthrough, and the core's
CLI commands (commands.py).

Registered as plugin "core" (always on). Everything here is the floor other plugins build on:
the adapter plugin claims the same routes first to normalise and convert.
"""

from __future__ import annotations

import time

from . import __version__, hookimpl, wire
from .exchange import GatewayError, LocalResponse, Route

# Where clients send Responses requests (the adapter plugin claims the same paths, from here).
RESPONSES_PATHS = ("/v1/responses", "/backend-api/codex/responses", "/responses")
COMPACT_PATHS = tuple(path + "/compact" for path in RESPONSES_PATHS)


def health_report(app, detailed: bool = False) -> dict:
    """The one answer to "is it up?": GET /health's for anyone (liveness, the pool's size), and
    with `detailed` the admin API's `health` (accounts by status, keys, the jobs' last runs)."""
    now = time.time()
    accounts = app.accounts.all()
    report = {"status": "ok", "version": __version__, "uptime_s": round(now - app.started_at, 1),
              "accounts": len(accounts), "accounts_available": sum(1 for a in accounts if a.is_available(now))}
    if detailed:
        statuses: dict[str, int] = {}
        for account in accounts:
            status = account.effective_status(now)
            statuses[status] = statuses.get(status, 0) + 1
        report.update(running=app.running, accounts_by_status=statuses, keys=len(app.keys.all()),
                      jobs={name: info.get("ok") for name, info in app.jobs.last_run.items()})
    return report


def health(app, exchange) -> LocalResponse:
    return LocalResponse(200, health_report(app))


def is_codex_client(headers: dict[str, str]) -> bool:
    origin = headers.get("originator", "") + " " + headers.get("user-agent", "")
    return "codex" in origin.lower()


@hookimpl(tryfirst=True)  # first, so the core's groups (accounts) carry the core's help text
def codexproxy_cli_commands(cli):
    from . import commands, statecli  # import app, which imports this module: loaded when the CLI asks

    commands.register(cli)
    statecli.register(cli)  # codexproxy state migrate


@hookimpl(trylast=True)
def codexproxy_route(app, exchange):
    if exchange.path == "/" and exchange.method in ("GET", "HEAD"):
        # Clients probe the base URL before their first call (Claude Code does): say we are up.
        return Route(kind="local", protocol="none", needs_key=False, name="root", logged=False,
                     handler=lambda app, ex: LocalResponse(200, {"status": "ok", "service": "codexproxy", "version": __version__}))
    if exchange.path in ("/health", "/healthz"):
        if exchange.method not in ("GET", "HEAD"):
            raise GatewayError(405, f"{exchange.method} is not allowed on {exchange.path}; use GET.", code="method_not_allowed")
        return Route(kind="local", protocol="none", needs_key=False, handler=health, name="health", logged=False)
    if exchange.path in COMPACT_PATHS:
        # Remote compaction (Codex between its first remote-compaction release and v2, and
        # peers' clients): a JSON request and a JSON answer, both passed through unchanged
        # (the encrypted compaction item must survive), on a pool account with failover.
        if exchange.method != "POST":
            raise GatewayError(405, f"{exchange.method} is not allowed on {exchange.path}; use POST.", code="method_not_allowed")
        return Route(kind="upstream", protocol="compact", name="compact", upstream_path="/responses/compact",
                     upstream_streams=False)
    if exchange.path in RESPONSES_PATHS:
        if exchange.method != "POST":
            raise GatewayError(405, f"{exchange.method} is not allowed on {exchange.path}; use POST.", code="method_not_allowed")
        return Route(kind="upstream", protocol="responses", name="responses")
    return None


def check_compaction(exchange, body: dict) -> None:
    """A compaction request goes upstream byte for byte (its items must survive), so nothing
    re-encodes it on the way: what the other routes refuse while converting is refused here
    (a model that is no name, an input that is no conversation) rather than spent on an
    account. A lone surrogate is the pipeline's to refuse, for every route."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise GatewayError(400, "'model' must be a model name (a non-empty string).", param="model")
    if not isinstance(body.get("input"), (str, list)):
        raise GatewayError(400, "'input' must be the conversation to compact: a string or a list of items.", param="input")


@hookimpl(trylast=True)
def codexproxy_prepare_request(app, exchange):
    """Passthrough defaults: what the adapter did not set is read from the raw body."""
    exchange.is_codex_client = exchange.is_codex_client or is_codex_client(exchange.headers)
    body = exchange.json()
    if not isinstance(body, dict):
        raise GatewayError(400, "Request body must be a JSON object.")
    if exchange.protocol == "compact":
        check_compaction(exchange, body)
    if exchange.model is None and isinstance(body.get("model"), str):
        exchange.model = body["model"]
    if exchange.session_id is None:
        cache_key = body.get("prompt_cache_key") if isinstance(body.get("prompt_cache_key"), str) else None
        if cache_key is not None:
            # It may become the upstream's session header: refused, never sent, when unsafe.
            wire.check_value("session_id", cache_key, source="field 'prompt_cache_key'")
        exchange.session_id = exchange.headers.get("session_id") or exchange.headers.get("session-id") or cache_key
    if exchange.effort is None and isinstance(body.get("reasoning"), dict):
        effort = body["reasoning"].get("effort")
        exchange.effort = effort if isinstance(effort, str) else None
