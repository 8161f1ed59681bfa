"""The host's own hook implementations: health, and the raw Responses passthrough.

Registered as plugin "core" (always on). Everything here is the floor other plugins build on:
the adapter plugin claims the same routes first to normalise and convert.
"""

from __future__ import annotations

import time

from . import __version__, hookimpl, wire
from .exchange import GatewayError, LocalResponse, Route

RESPONSES_PATHS = ("/v1/responses", "/backend-api/codex/responses", "/responses")
COMPACT_PATHS = tuple(path + "/compact" for path in RESPONSES_PATHS)


def health(app, exchange) -> LocalResponse:
    accounts = app.accounts.all()
    available = sum(1 for a in accounts if a.is_available())
    return LocalResponse(200, {
        "status": "ok",
        "version": __version__,
        "uptime_s": round(time.time() - app.started_at, 1),
        "accounts": len(accounts),
        "accounts_available": available,
    })


def is_codex_client(headers: dict[str, str]) -> bool:
    origin = headers.get("originator", "") + " " + headers.get("user-agent", "")
    return "codex" in origin.lower()


@hookimpl
def codexproxy_cli_commands(cli):
    from . import statecli  # imports the CLI module, which imports app: loaded when the CLI asks

    statecli.register(cli)


@hookimpl(trylast=True)
def codexproxy_route(app, exchange):
    if exchange.path == "/" and exchange.method in ("GET", "HEAD"):
        # Clients probe the base URL before their first call (Claude Code does): say we are up.
        return Route(kind="local", protocol="none", needs_key=False, name="root",
                     handler=lambda app, ex: LocalResponse(200, {"status": "ok", "service": "codexproxy", "version": __version__}))
    if exchange.path in ("/health", "/healthz"):
        if exchange.method not in ("GET", "HEAD"):
            raise GatewayError(405, f"{exchange.method} is not allowed on {exchange.path}; use GET.", code="method_not_allowed")
        return Route(kind="local", protocol="none", needs_key=False, handler=health, name="health")
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


@hookimpl(trylast=True)
def codexproxy_prepare_request(app, exchange):
    """Passthrough defaults: what the adapter did not set is read from the raw body."""
    exchange.is_codex_client = exchange.is_codex_client or is_codex_client(exchange.headers)
    body = exchange.json()
    if not isinstance(body, dict):
        raise GatewayError(400, "Request body must be a JSON object.")
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
