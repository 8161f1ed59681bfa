"""adapter: every client protocol over the Responses-only, stream-only Codex backend.

Routes: /v1/responses (+ /backend-api/codex/responses) normalised, /v1/chat/completions,
/v1/completions, /v1/messages (Anthropic, what Claude Code speaks), /v1/messages/count_tokens,
/v1/models. The converters (chat.py, anthropic.py, ...) are pure state machines; this module
only mounts them on the hooks. Turned off, /v1/responses is a raw passthrough (the core's).
"""

from __future__ import annotations

import logging
import time
import httpx
from pydantic import Field

from codexproxy import hookimpl
from codexproxy.config import PluginConfig
from codexproxy.exchange import GatewayError, LocalResponse, Route

from .anthropic import AnthropicAggregate, AnthropicStream, anthropic_error_body, anthropic_to_responses, estimate_tokens
from .chat import ChatAggregate, ChatStream, chat_to_responses
from .common import parse_model_effort, reasoning_fields
from .completions import CompletionsAggregate, CompletionsStream, completions_to_chat
from .models import anthropic_model_list, openai_model_list, slugs_from_upstream
from .responses import ResponsesAggregate, ResponsesStream, normalize_responses_request

log = logging.getLogger("codexproxy.adapter")

ROUTES = {
    "/v1/responses": "responses", "/backend-api/codex/responses": "responses", "/responses": "responses",
    "/v1/chat/completions": "chat", "/chat/completions": "chat",
    "/v1/completions": "completions", "/completions": "completions",
    "/v1/messages": "anthropic", "/messages": "anthropic",
}
MODELS_STATE = "adapter.models"


class AdapterConfig(PluginConfig):
    # Served by /v1/models until the upstream list has been fetched once.
    fallback_models: list[str] = Field(default_factory=lambda: ["gpt-5.5", "gpt-5-codex", "gpt-5"])
    client_version: str = "0.169.0"


@hookimpl
def codexproxy_config_model():
    return AdapterConfig


def _method(exchange, allowed: str) -> None:
    if exchange.method != allowed:
        raise GatewayError(405, f"{exchange.method} is not allowed on {exchange.path}; use {allowed}.", code="method_not_allowed")


@hookimpl
def codexproxy_route(app, exchange):
    path = exchange.path.rstrip("/") or "/"
    if path in ROUTES:
        protocol = ROUTES[path]
        exchange.route = Route(kind="upstream", protocol=protocol, name=protocol)  # errors below render in it
        _method(exchange, "POST")
        return exchange.route
    if path in ("/v1/messages/count_tokens", "/messages/count_tokens"):
        exchange.route = Route(kind="local", protocol="anthropic", handler=count_tokens, name="count_tokens")
        _method(exchange, "POST")
        return exchange.route
    if path in ("/v1/models", "/models") or path.startswith("/v1/models/"):
        protocol = "anthropic" if "anthropic-version" in exchange.headers else "chat"
        exchange.route = Route(kind="local", protocol=protocol, handler=models, name="models")
        _method(exchange, "GET")
        return exchange.route
    return None


# --- requests --------------------------------------------------------------------------------

def _bool(body: dict, field: str) -> bool:
    value = body.get(field, False)
    if value is not None and not isinstance(value, bool):
        raise GatewayError(400, f"'{field}' must be a boolean.", param=field)
    return bool(value)


@hookimpl
def codexproxy_prepare_request(app, exchange):
    protocol = exchange.protocol
    if exchange.route is None or exchange.route.kind != "upstream" or protocol not in ("responses", "chat", "completions", "anthropic"):
        return
    body = exchange.json()
    if not isinstance(body, dict):
        raise GatewayError(400, "Request body must be a JSON object.")
    client_stream = _bool(body, "stream")
    if protocol == "responses":
        upstream = normalize_responses_request(body)
        model, effort = parse_model_effort(upstream["model"])
        if effort:
            upstream.update(model=model, **reasoning_fields(effort))
    elif protocol == "chat":
        upstream = chat_to_responses(body)
    elif protocol == "completions":
        upstream = chat_to_responses(completions_to_chat(body))
    else:
        upstream = anthropic_to_responses(body)
    key = exchange.key
    if key is not None and getattr(key, "model", None):
        upstream["model"] = key.model  # a key's bound model/effort wins over the request's
    if key is not None and getattr(key, "effort", None):
        upstream.pop("reasoning", None)
        upstream.pop("include", None)
        upstream.update(reasoning_fields(key.effort))
    exchange.upstream_body = upstream
    exchange.client_stream = client_stream
    exchange.model = upstream["model"]
    reasoning = upstream.get("reasoning")
    exchange.effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    exchange.meta["adapter"] = {
        "client_model": body.get("model") if isinstance(body.get("model"), str) else upstream["model"],
        "include_usage": bool((body.get("stream_options") or {}).get("include_usage")) if isinstance(body.get("stream_options"), dict) else False,
    }


@hookimpl
def codexproxy_response_transform(app, exchange):
    meta = exchange.meta.get("adapter")
    if meta is None:
        return None
    model = meta["client_model"]
    stream = exchange.client_stream
    protocol = exchange.protocol
    if protocol == "responses":
        if not stream:
            return ResponsesAggregate()
        return None if exchange.is_codex_client else ResponsesStream(drop_codex_events=True)
    if protocol == "chat":
        return ChatStream(model, include_usage=meta["include_usage"]) if stream else ChatAggregate(model)
    if protocol == "completions":
        return CompletionsStream(model, include_usage=meta["include_usage"]) if stream else CompletionsAggregate(model)
    if protocol == "anthropic":
        return AnthropicStream(model) if stream else AnthropicAggregate(model)
    return None


@hookimpl
def codexproxy_render_error(app, exchange, error):
    if exchange.protocol == "anthropic":
        return LocalResponse(error.status, anthropic_error_body(error))
    return None


# --- local routes ----------------------------------------------------------------------------

def count_tokens(app, exchange) -> LocalResponse:
    body = exchange.json()
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise GatewayError(400, "'messages' is required and must be a list.", param="messages")
    return LocalResponse(200, {"input_tokens": estimate_tokens(body)})


def _model_slugs(app) -> list[str]:
    cached = app.store.get_state(MODELS_STATE)
    if isinstance(cached, dict) and cached.get("slugs"):
        return list(cached["slugs"])
    return list(app.plugin_config("adapter").fallback_models)


def models(app, exchange) -> LocalResponse:
    slugs = _model_slugs(app)
    prefix = "/v1/models/"
    if exchange.path.startswith(prefix):
        wanted = exchange.path[len(prefix):]
        if wanted not in slugs:
            raise GatewayError(404, f"The model '{wanted}' does not exist.", code="model_not_found", param="model")
        slugs = [wanted]
        listing = anthropic_model_list(slugs) if exchange.protocol == "anthropic" else openai_model_list(slugs)
        return LocalResponse(200, listing["data"][0])
    return LocalResponse(200, anthropic_model_list(slugs) if exchange.protocol == "anthropic" else openai_model_list(slugs))


def refresh_models(app) -> list[str] | None:
    """The keepalive job: fetch the model list with the first available account (this also
    keeps an upstream connection and the account's session warm)."""
    account = next((a for a in app.accounts.ordered() if a.is_available()), None)
    if account is None:
        return None
    cfg = app.config.upstream
    headers = {"authorization": f"Bearer {account.access_token}", "originator": cfg.originator, "user-agent": cfg.user_agent}
    if account.chatgpt_account_id:
        headers["chatgpt-account-id"] = account.chatgpt_account_id
    app.hook.codexproxy_upstream_request(app=app, exchange=None, headers=headers)  # e.g. the WAF cookie
    url = f"{cfg.base_url}/models"
    try:
        r = httpx.get(url, params={"client_version": app.plugin_config("adapter").client_version}, headers=headers,
                      timeout=cfg.connect_timeout_s, verify=cfg.ca_file or cfg.ssl_verify)
    except httpx.HTTPError as exc:
        log.info("model list refresh failed: %s", exc.__class__.__name__)
        return None
    if r.status_code != 200:
        log.info("model list refresh: upstream answered %s", r.status_code)
        return None
    try:
        slugs = slugs_from_upstream(r.json())
    except ValueError:
        return None
    if slugs and slugs != _model_slugs(app):
        app.store.set_state(MODELS_STATE, {"slugs": slugs, "at": time.time()})
    return slugs


@hookimpl
def codexproxy_register_jobs(app, jobs):
    jobs.every(app.config.jobs.keepalive_interval_s, "models", refresh_models)
