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

from codexproxy import hookimpl, outbound, wire
from codexproxy.builtin import RESPONSES_PATHS
from codexproxy.config import PluginConfig, Section
from codexproxy.exchange import GatewayError, LocalResponse, Route

from .aliases import DEFAULT_ALIASES, listed_aliases, resolve_model
from .anthropic import (AnthropicAggregate, AnthropicStream, anthropic_error_body, anthropic_session, anthropic_to_responses,
                        estimate_tokens)
from .chat import ChatAggregate, ChatStream, chat_session, chat_to_responses
from .common import reasoning_fields
from .completions import CompletionsAggregate, CompletionsStream, completions_to_chat
from .conversations import ConversationStore, replay_items
from .modellist import anthropic_model_list, openai_model_list, slugs_from_upstream
from .responses import ResponsesAggregate, ResponsesStream, normalize_responses_request

log = logging.getLogger("codexproxy.adapter")

ROUTES = {
    **dict.fromkeys(RESPONSES_PATHS, "responses"),  # the core's passthrough paths, normalised here
    "/v1/chat/completions": "chat", "/chat/completions": "chat",
    "/v1/completions": "completions", "/completions": "completions",
    "/v1/messages": "anthropic", "/messages": "anthropic",
}
MODELS_STATE = ("adapter", "models")  # state collection and document: the upstream's model list


class ConversationsConfig(Section):
    """What is kept for `previous_response_id` (conversations.py), in the state: on the
    embedded backend in this process's memory (up to `max_bytes`), on Redis in Redis."""

    enabled: bool = True
    # Two state values per entry; the embedded state holds 100,000 values for every plugin and
    # drops those closest to expiry beyond that (cooldowns, sessions): leave them room.
    max_entries: int = Field(2000, ge=1, le=25_000)
    max_bytes: int = Field(200_000_000, ge=1)
    ttl_s: float = Field(86400.0, gt=0)


class AdapterConfig(PluginConfig):
    # Served by /v1/models until the upstream list has been fetched once.
    fallback_models: list[str] = Field(default_factory=lambda: ["gpt-5.5", "gpt-5-codex", "gpt-5"])
    client_version: str = "0.169.0"
    # Model aliases: glob pattern -> model (an effort suffix allowed), first match wins; a
    # platform key's own aliases come first. Setting this replaces the defaults.
    models: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ALIASES))
    conversations: ConversationsConfig = Field(default_factory=ConversationsConfig)


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
    if exchange.method == "GET" and _kept_response_id(path):
        exchange.route = Route(kind="local", protocol="responses", handler=kept_response, name="responses.get")
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
    if exchange.route is None or exchange.route.kind != "upstream" or protocol not in ("responses", "chat", "completions", "anthropic", "compact"):
        return
    body = exchange.json()
    if not isinstance(body, dict):
        raise GatewayError(400, "Request body must be a JSON object.")
    if protocol == "compact":
        return _compaction_model(app, exchange, body)
    client_stream = _bool(body, "stream")
    session = None
    if protocol == "responses":
        upstream = normalize_responses_request(body)
        if "prompt_cache_key" in upstream and "prompt_cache_key" not in body:  # mapped from `user`
            exchange.session_id = exchange.headers.get("session_id") or exchange.headers.get("session-id") or upstream["prompt_cache_key"]
    elif protocol == "chat":
        upstream = chat_to_responses(body)
        session = chat_session(body, exchange.headers)
    elif protocol == "completions":
        upstream = chat_to_responses(completions_to_chat(body))
        session = chat_session(body, exchange.headers)
    else:
        upstream = anthropic_to_responses(body)
        session = anthropic_session(body, exchange.headers)
    if session is not None:
        # One conversation, one session: the upstream session header, the routing binding
        # (routing/affinity.py reads exchange.session_id) and the prompt-cache key agree.
        wire.check_value("session_id", session, source="the client's session id")
        exchange.session_id = session
        upstream["prompt_cache_key"] = session
    _apply_model(app, exchange, body, upstream)
    if protocol == "responses":
        _continue_conversation(app, exchange, body, upstream)
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
        "keep": protocol == "responses" and _keeps(app, exchange, body),
    }


def _apply_model(app, exchange, body: dict, upstream: dict) -> None:
    """The model (and effort suffix) the client named, through the aliases."""
    known, from_upstream = _known_models(app)
    key = exchange.key
    maps = [getattr(key, "aliases", None) or {}, app.plugin_config("adapter").models]
    if key is not None and getattr(key, "model", None):
        return  # the key's bound model replaces whatever was asked: nothing to resolve or refuse
    # The name as the client wrote it: its own effort suffix wins over an alias target's.
    requested = body["model"] if isinstance(body.get("model"), str) and body["model"].strip() else upstream["model"]
    model, effort = resolve_model(requested, known, maps, strict=from_upstream)
    if model == upstream["model"] and effort is None:
        return  # unchanged: a Codex client's body stays byte for byte
    upstream["model"] = model
    if effort:  # a suffix is the user's explicit choice: it replaces the body's reasoning fields
        upstream.pop("reasoning", None)
        upstream.pop("include", None)
        upstream.update(reasoning_fields(effort))


def _compaction_model(app, exchange, body: dict) -> None:
    """A compaction names its model as the turns it compacts do: the same aliases and key
    binding apply (a suffixed or aliased name went to the backend as written, which refused it,
    and a key bound to one model could compact with another). Only the model name: the effort
    of a suffix is the turns' business. Byte for byte when the name stays."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return  # the compact route's own check answers the 400
    key = exchange.key
    if key is not None and getattr(key, "model", None):
        upstream_model = key.model
    else:
        known, from_upstream = _known_models(app)
        maps = [getattr(key, "aliases", None) or {}, app.plugin_config("adapter").models]
        upstream_model, _ = resolve_model(model, known, maps, strict=from_upstream)
    exchange.model = upstream_model
    if upstream_model != model:
        exchange.upstream_body = {**body, "model": upstream_model}


# --- previous_response_id: conversations kept by the proxy (conversations.py) -----------------

def _conversations(app) -> ConversationStore | None:
    """This process's handle on the kept conversations (they live in `app.state`; the handle
    holds only the writer thread and the entries being written)."""
    cfg = app.plugin_config("adapter").conversations
    if not cfg.enabled:
        return None
    holder = app.plugin_state("adapter.conversations", dict)
    store = holder.get("store")
    if store is None:
        with app.state_lock:
            store = holder.get("store")
            if store is None:
                store = holder["store"] = ConversationStore(app.state, cfg.max_entries, cfg.max_bytes, cfg.ttl_s)
    return store


def _key_id(exchange) -> str | None:
    return getattr(exchange.key, "id", None)


def _keeps(app, exchange, body: dict) -> bool:
    """Keep this answer for a later previous_response_id? As OpenAI does unless `store` is
    false -- which Codex always sends, so Codex traffic is never kept."""
    return body.get("store") is not False and app.plugin_config("adapter").conversations.enabled


def _continue_conversation(app, exchange, body: dict, upstream: dict) -> None:
    previous = body.get("previous_response_id")
    if previous is None:
        reasoning = upstream.get("reasoning") if isinstance(upstream.get("reasoning"), dict) else {}
        if _keeps(app, exchange, body) and reasoning.get("effort") != "none":
            # A kept answer's reasoning can only be replayed with its encrypted content.
            include = upstream.get("include") if isinstance(upstream.get("include"), list) else []
            if "reasoning.encrypted_content" not in include:
                upstream["include"] = [*include, "reasoning.encrypted_content"]
        return
    if not isinstance(previous, str) or not previous:
        raise GatewayError(400, "'previous_response_id' must be a non-empty string.", param="previous_response_id")
    store = _conversations(app)
    if store is None:
        raise GatewayError(400, "'previous_response_id' is not available: this gateway keeps no conversations "
                                "(plugins.adapter.conversations.enabled is false); send the whole input instead.",
                           param="previous_response_id")
    entry = store.get(previous, _key_id(exchange))
    if entry is None:
        raise GatewayError(400, f"Previous response with id '{previous}' not found.",
                           code="previous_response_not_found", param="previous_response_id")
    upstream["input"] = replay_items(entry) + upstream["input"]
    include = upstream.get("include") if isinstance(upstream.get("include"), list) else []
    if "reasoning.encrypted_content" not in include:
        upstream["include"] = [*include, "reasoning.encrypted_content"]


def _remember(app, exchange, final: dict) -> None:
    """Keep a finished Responses answer (with the input it was given) for previous_response_id."""
    store = _conversations(app)
    if store is not None and isinstance(final.get("id"), str) and exchange.upstream_body is not None:
        store.put(final["id"], _key_id(exchange), exchange.upstream_body.get("input") or [], final)


class KeepWhenFinished:
    """A Responses transform that keeps its answer the moment the answer is complete: before the
    client's last event (or non-streamed body) is handed on, so that a follow-up the client sends
    as soon as it has the answer finds it, on any instance. Everything else is the wrapped one's."""

    def __init__(self, transform, keep) -> None:
        self.transform = transform
        self._keep = keep
        self._kept = False

    def __getattr__(self, name):
        return getattr(self.transform, name)

    def start(self, status, headers):
        return self.transform.start(status, headers)

    def feed(self, events):
        out = self.transform.feed(events)
        self._keep_final()
        return out

    def finish(self, error):
        out = self.transform.finish(error)
        self._keep_final()
        return out

    def _keep_final(self) -> None:
        final = self.transform.final
        if self._kept or not isinstance(final, dict):
            return
        self._kept = True
        try:
            self._keep(final)
        except Exception:  # keeping a conversation must never break the answer
            log.exception("could not keep response %s", final.get("id"))


@hookimpl
def codexproxy_shutdown(app):
    store = app.plugin_state("adapter.conversations", dict).pop("store", None)
    if store is not None:
        store.close()  # the entries being written reach the state before it closes


_RESPONSE_PREFIXES = tuple(path + "/" for path in RESPONSES_PATHS)


def _kept_response_id(path: str) -> str | None:
    for prefix in _RESPONSE_PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix):]
            if rest and "/" not in rest and rest != "compact":
                return rest
    return None


def kept_response(app, exchange) -> LocalResponse:
    """GET /v1/responses/{id}: a response this gateway kept (404 as OpenAI answers otherwise)."""
    response_id = _kept_response_id(exchange.path.rstrip("/"))
    store = _conversations(app)
    entry = store.get(response_id, _key_id(exchange)) if store is not None and response_id else None
    if entry is None:
        raise GatewayError(404, f"No response found with id '{response_id}'.", code="not_found", param="response_id")
    return LocalResponse(200, entry["response"])


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
            transform = ResponsesAggregate()
        elif exchange.is_codex_client:
            return None
        else:
            transform = ResponsesStream(drop_codex_events=True)
        if meta["keep"]:
            return KeepWhenFinished(transform, lambda final: _remember(app, exchange, final))
        return transform
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


def _models_state(app):
    """The upstream's model list as last stored, read from the state at most once a second:
    every request checks its model against it (on the event loop), and the list changes every
    few minutes at most, by the keepalive job."""
    memo = app.plugin_state("adapter.models_memo", dict)
    now = time.monotonic()
    if memo.get("until", 0) <= now:
        memo["value"], memo["until"] = app.state.collection(MODELS_STATE[0]).get(MODELS_STATE[1]), now + 1.0
    return memo["value"]


def _model_slugs(app) -> list[str]:
    cached = _models_state(app)
    if isinstance(cached, dict) and cached.get("slugs"):
        return list(cached["slugs"])
    return list(app.plugin_config("adapter").fallback_models)


def _known_models(app) -> tuple[list[str], bool]:
    """The pool's model slugs, and whether they came from the upstream (only then is a name
    outside them refused: the fallback list may lag behind what the backend serves)."""
    cached = _models_state(app)
    if isinstance(cached, dict) and cached.get("slugs"):
        return list(cached["slugs"]), True
    return list(app.plugin_config("adapter").fallback_models), False


def models(app, exchange) -> LocalResponse:
    slugs = _model_slugs(app)
    key = exchange.key
    aliases = listed_aliases([getattr(key, "aliases", None) or {}, app.plugin_config("adapter").models], slugs)
    render = anthropic_model_list if exchange.protocol == "anthropic" else openai_model_list
    prefix = "/v1/models/"
    if exchange.path.startswith(prefix):
        wanted = exchange.path[len(prefix):]
        if wanted in slugs:
            return LocalResponse(200, render([wanted])["data"][0])
        if wanted in aliases:
            return LocalResponse(200, render([], {wanted: aliases[wanted]})["data"][0])
        raise GatewayError(404, f"The model '{wanted}' does not exist.", code="model_not_found", param="model")
    return LocalResponse(200, render(slugs, aliases))


def refresh_models(app) -> list[str] | None:
    """The keepalive job: fetch the model list with the first available account (this also
    keeps an upstream connection and the account's session warm)."""
    account = next((a for a in app.accounts.ordered() if a.is_available()), None)
    if account is None:
        return None
    url = f"{app.config.upstream.base_url}/models"
    try:
        with outbound.client(app) as client:
            r = client.get(url, params={"client_version": app.plugin_config("adapter").client_version},
                           headers=outbound.account_headers(app, url, account))
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
        app.state.collection(MODELS_STATE[0]).put({"id": MODELS_STATE[1], "slugs": slugs, "at": time.time()})
        app.plugin_state("adapter.models_memo", dict).clear()  # this process sees it at once
    return slugs


@hookimpl
def codexproxy_register_jobs(app, jobs):
    jobs.every(app.config.jobs.keepalive_interval_s, "models", refresh_models)
