"""The objects that travel through the hooks for one client request.

An `Exchange` is created when a request arrives and handed to every hook that concerns it;
plugins read and annotate it instead of touching mitmproxy's flow, so they stay testable
without a proxy and independent of mitmproxy's internals.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .sse import SSEEvent


class GatewayError(Exception):
    """An error the client should see, in its own protocol (the adapter renders it).

    `type`/`code` follow OpenAI's error object; `headers` lets a plugin add `retry-after`;
    `details` are extra fields of the error object.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.details = {k: v for k, v in (details or {}).items() if v is not None}

    def openai_body(self) -> dict[str, Any]:
        """OpenAI's error object; `details` are extra fields of it (the upstream's usage-limit
        error carries `resets_at`, `resets_in_seconds` and `plan_type` there)."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param, **self.details}}


@dataclass
class LocalResponse:
    """An answer produced by the proxy itself (health, status page, admin API, models)."""

    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        body = self.body
        if isinstance(body, (dict, list)):
            body = json.dumps(body, ensure_ascii=False).encode()
            headers.setdefault("content-type", self.content_type or "application/json")
        elif isinstance(body, str):
            body = body.encode()
            headers.setdefault("content-type", self.content_type or "text/plain; charset=utf-8")
        elif self.content_type:
            headers.setdefault("content-type", self.content_type)
        return body, headers


@dataclass
class Route:
    """What a plugin says a request is, from `codexproxy_route`.

    kind "upstream": forwarded to the Codex backend (after auth, preparation, routing);
    kind "local": answered by `handler(app, exchange) -> LocalResponse` in a worker thread.
    `protocol` names the client protocol ("responses", "chat", "completions", "anthropic",
    or "none") so errors are rendered the way the client expects.
    `needs_key`: the platform-key check (`codexproxy_authenticate`) runs first.
    `upstream_path`: appended to the upstream base URL; `upstream_streams`: the upstream
    answers with an SSE stream (False: one JSON answer, passed through as it is).
    `logged`: False keeps it out of the request log (liveness probes, page views, scrapes).
    """

    kind: str
    protocol: str = "responses"
    needs_key: bool = True
    handler: Callable[..., LocalResponse] | None = None
    name: str = ""
    upstream_path: str = "/responses"
    upstream_streams: bool = True
    logged: bool = True


@dataclass
class Attempt:
    """One try of the request against one account (or the fallback upstream)."""

    account_id: str | None
    url: str
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None  # transport failure: "connect", "timeout", or the reason text
    reason: str | None = None  # a short word from the routing decision ("usage_limit", "cooldown"...)
    ms: float | None = None

    def finish(self) -> None:
        if self.ms is None:
            self.ms = round((time.monotonic() - self.started) * 1000, 1)

    def json_body(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def as_log(self) -> dict[str, Any]:
        return {"account": self.account_id, "status": self.status, "error": self.error,
                "reason": self.reason, "ms": self.ms}


@dataclass
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_response(cls, usage: dict | None) -> "Usage":
        usage = usage or {}
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            cached_tokens=int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            reasoning_tokens=int((usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0),
            total_tokens=int(usage.get("total_tokens") or 0),
        )


class StreamTransform(Protocol):
    """Turns the upstream's events into the client's, event by event; never sees bytes.

    `feed` gets the upstream events each chunk completed and returns the client's events to
    send now ([] for none yet). `finish` is called once at the end, with `error` set when the
    stream failed (cut, idle timeout, or ended without `response.completed`), and returns the
    last events, which must tell the client about the error in its protocol. Events are
    `codexproxy.sse.SSEEvent`s (`codexproxy.sse.new_event(name, data)`; name "" for
    data-only protocols); the transport frames them: SSE for HTTP, one message per event for
    WebSocket. `streams = False` marks a transform for a client that asked for no stream: it
    returns nothing from `feed` and its whole answer as one event from `finish`, whose `data`
    is the JSON body. `status`/`headers` may be changed in `start` before the response head is
    sent.
    """

    streams: bool

    def start(self, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]: ...

    def feed(self, events: list[SSEEvent]) -> list[SSEEvent]: ...

    def finish(self, error: GatewayError | None) -> list[SSEEvent]: ...


@dataclass
class Exchange:
    """One client request, from arrival to the last byte; annotated by the plugins."""

    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)  # lower-cased names; repr hides credentials
    body: bytes = field(repr=False)  # decoded from its Content-Encoding before any plugin reads it
    client_addr: str = ""
    # The client's header fields as sent (original spelling and order, latin-1 text so that
    # re-encoding gives the same bytes): what goes upstream is picked from these (wire.py).
    header_fields: list[tuple[str, str]] = field(default_factory=list, repr=False)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    route: Route | None = None
    key: Any = None  # the authenticated platform key (models.PlatformKey) or None
    # Set by preparation (the adapter): what goes upstream and what the client asked for.
    upstream_body: dict[str, Any] | None = None
    model: str | None = None
    effort: str | None = None
    client_stream: bool = True
    session_id: str | None = None
    is_codex_client: bool = False
    # Set by the transport adapter.
    transport: str = "http"  # "http", or "websocket" (one turn of a socket)
    prefer_account: str | None = None  # the account the transport would keep (a socket's last turn's)
    # Set by routing and the core while the request runs.
    account: Any = None  # models.Account of the current attempt, or None
    attempts: list[Attempt] = field(default_factory=list)
    status: int | None = None
    ttfb_ms: float | None = None
    usage: Usage | None = None
    completed: bool = False  # saw response.completed / response.incomplete
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # free space for plugins and the core ("_done")

    _json: Any = field(default=None, repr=False)
    _json_loaded: bool = field(default=False, repr=False)

    def parsed_as(self, value: Any) -> None:
        """The body's JSON, when the transport has it already (a WebSocket turn is parsed to
        read its message type): a turn of a long conversation is not parsed twice."""
        self._json, self._json_loaded = value, True

    def json(self) -> Any:
        """The request body parsed as JSON; raises GatewayError(400) when it is not."""
        if not self._json_loaded:
            if not self.body:
                raise GatewayError(400, "Request body is empty; expected a JSON object.")
            try:
                self._json = json.loads(self.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise GatewayError(400, f"Request body is not valid JSON: {exc}") from None
            except RecursionError:
                raise GatewayError(400, "Request body is nested too deeply to be read as JSON.") from None
            self._json_loaded = True
        return self._json

    @property
    def protocol(self) -> str:
        return self.route.protocol if self.route else "responses"

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started_mono) * 1000, 1)

    def tried_accounts(self) -> list[str]:
        return [a.account_id for a in self.attempts if a.account_id]


@dataclass
class Retry:
    """Answer of `codexproxy_upstream_failed`: send the request again to `account`, or to the
    configured fallback upstream (without pool credentials) when `use_fallback` is set."""

    account: Any = None
    use_fallback: bool = False
    reason: str = ""
