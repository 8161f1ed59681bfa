"""The request pipeline, whatever the transport: exchanges, attempts, events and errors.

A transport adapter (proxy.py for HTTP on mitmproxy, wsadapter.py for WebSocket messages)
turns what arrived into an `Exchange` and drives it through these steps, in this order:

    start(ex)                     exchange_start
    admit(ex, content_length)     route -> authenticate -> size check          (on the head)
    await begin(ex, body)         decode -> local handler, or prepare -> select -> first UpstreamCall
    answered(ex, status, headers) upstream_response; says "retry", "json" or "stream"
    open_stream(ex, status, hdrs) response_transform -> a StreamSession (events in, events out)
    await failed(ex, ...)         upstream_failed -> the next UpstreamCall, or the answer
    done(ex)                      exchange_done (exactly once)

Nothing here knows flows, sockets or bytes on a wire: the adapter sends an `UpstreamCall`
however it reaches the upstream, and frames a `StreamSession`'s output events as its client
expects (SSE for HTTP, one message per event for WebSocket). Errors come back as
`GatewayError`s and answers as `LocalResponse`s, which the adapter renders.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import traceback
from dataclasses import dataclass
from typing import Any

from . import sse, wire
from .exchange import Attempt, Exchange, GatewayError, LocalResponse, Retry, Route, Usage
from .stream_endings import TERMINAL_FAILED, TERMINAL_OK, gateway_error_from_event, stream_cut_error

log = logging.getLogger("codexproxy.proxy")

MAX_ATTEMPTS_HARD_CAP = 10  # whatever plugins say, one request never loops forever


@dataclass
class UpstreamCall:
    """One attempt's request to the upstream, as it must go on the wire (wire.py's policy)."""

    url: str
    headers: list[tuple[str, str]]  # names as the client spelled them; Host first
    body: bytes


# A \uD800-\uDFFF escape in raw JSON: only then can a parsed string hold a lone surrogate.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_bytes(value: Any) -> bytes:
    """JSON as UTF-8 -- or the 400 that a lone surrogate deserves: `"\\ud800"` is valid JSON
    text, but no Unicode, and cannot go upstream."""
    try:
        return json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise GatewayError(400, "Request body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), "
                                "which is not valid Unicode.", code="invalid_body") from None


def plugin_error(where: str) -> GatewayError:
    """A hook raised something other than GatewayError: fail closed, log the traceback."""
    log.error("plugin error in %s: %s", where, traceback.format_exc(limit=6))
    return GatewayError(500, f"internal error in {where}; see the proxy log", type="server_error", code="plugin_error")


class Pipeline:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.hook = app.hook
        self.closing = False  # set on shutdown: new requests get 503

    # --- arrival --------------------------------------------------------------------------
    def start(self, ex: Exchange) -> None:
        self.hook.codexproxy_exchange_start(app=self.app, exchange=ex)

    def admit(self, ex: Exchange, content_length: int | None = None) -> None:
        """Route and authenticate on the head: both need no body, so a refused request
        costs no memory. Raises GatewayError."""
        if self.closing:
            raise GatewayError(503, "The proxy is shutting down.", type="server_error", code="shutting_down")
        route = self.hook.codexproxy_route(app=self.app, exchange=ex)
        if route is None:
            ex.route = Route(kind="local", protocol="none", needs_key=False, name="unknown")
            raise GatewayError(404, f"Unknown route: {ex.method} {ex.path}", code="not_found")
        ex.route = route
        if route.needs_key:
            ex.key = self.hook.codexproxy_authenticate(app=self.app, exchange=ex)
        if content_length is not None and content_length > self.body_limit:
            raise self.too_large()

    @property
    def body_limit(self) -> int:
        return self.app.config.limits.max_body_bytes

    def too_large(self) -> GatewayError:
        limit = self.body_limit
        return GatewayError(413, f"Request body is larger than limits.max_body_bytes ({limit} bytes).", code="request_too_large")

    async def begin(self, ex: Exchange, body: bytes, content_encoding: str | None = None) -> LocalResponse | UpstreamCall:
        """The body has arrived: answer locally, or prepare the first upstream attempt."""
        assert ex.route is not None, "admit() first"
        if len(body) > self.body_limit:
            raise self.too_large()
        # Codex compresses its bodies (zstd); decoded once here, after the key check, so
        # every plugin and the upstream see plain JSON.
        ex.body = wire.decode_body(body, content_encoding, self.body_limit) if content_encoding else body
        if ex.route.kind == "local":
            assert ex.route.handler is not None
            local = await asyncio.to_thread(ex.route.handler, self.app, ex)
            ex.status = local.status
            return local
        self.hook.codexproxy_prepare_request(app=self.app, exchange=ex)
        if SURROGATE_ESCAPE.search(ex.body):
            # A body that goes upstream as the client's own bytes is never encoded again, so
            # nothing else would notice: the 400 a converted body gets from json_bytes, for all.
            json_bytes(ex.json())
        account = await self._select_account(ex)
        return self.attempt(ex, account)

    async def _select_account(self, ex: Exchange) -> Any:
        """Ask routing for an account; while every account is at its inflight cap (the
        "accounts_busy" answer), wait up to limits.queue_wait_ms for one to free up."""
        deadline = time.monotonic() + self.app.config.limits.queue_wait_ms / 1000
        while True:
            try:
                return self.hook.codexproxy_select_account(app=self.app, exchange=ex)
            except GatewayError as err:
                if err.code != "accounts_busy" or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(min(0.02, max(0.001, deadline - time.monotonic())))

    # --- one attempt ----------------------------------------------------------------------
    def attempt(self, ex: Exchange, account: Any, fallback: bool = False) -> UpstreamCall:
        """Record a new attempt with this account (or the fallback upstream) and build its request."""
        upstream = self.app.config.upstream
        base = upstream.fallback_base_url if fallback and upstream.fallback_base_url else upstream.base_url
        url = base + (ex.route.upstream_path if ex.route else "/responses")
        ex.account = account
        ex.attempts.append(Attempt(account_id=getattr(account, "id", None), url=url))
        return UpstreamCall(url, self._upstream_headers(ex, url, account, fallback), self._upstream_body(ex))

    def _upstream_headers(self, ex: Exchange, url: str, account: Any, fallback: bool) -> list[tuple[str, str]]:
        """The attempt's request headers (the policy and its named exceptions: wire.py)."""
        cfg = self.app.config.upstream
        client = ex.headers
        names: dict[str, str] = {}
        headers: dict[str, str] = {"host": wire.authority(url)}
        for name, value in wire.passed_client_headers(ex.header_fields):
            names[name.lower()] = name
            headers[name.lower()] = value
        if fallback:
            if cfg.fallback_api_key:
                headers["authorization"] = f"Bearer {cfg.fallback_api_key}"
        elif account is not None:
            headers.update(wire.account_credentials(account))
        else:
            # No routing plugin: the client's own credentials go upstream unchanged.
            for name in ("authorization", "chatgpt-account-id"):
                if name in client:
                    headers[name] = client[name]
        for name, own in (("originator", cfg.originator), ("user-agent", cfg.user_agent)):
            if ex.is_codex_client and client.get(name):
                names[name] = next((n for n, _ in ex.header_fields if n.lower() == name), name)
                headers[name] = client[name]
            else:
                headers[name] = own
        if ex.session_id and not any(h in headers for h in wire.SESSION_HEADERS):
            headers["session_id"] = ex.session_id
        headers["accept"] = "text/event-stream" if ex.route is None or ex.route.upstream_streams else "application/json"
        headers["content-type"] = "application/json"
        headers["accept-encoding"] = "identity"  # SSE must not come compressed: we parse it
        self.hook.codexproxy_upstream_request(app=self.app, exchange=ex, headers=headers)
        headers["host"] = wire.authority(url)  # not a plugin's to change: the URL decides
        return wire.spelled(headers, names)

    @staticmethod
    def _upstream_body(ex: Exchange) -> bytes:
        """The client's own bytes when no plugin changed the body; else the new JSON."""
        if ex.upstream_body is None or ex.upstream_body == ex.json():
            return ex.body
        return json_bytes(ex.upstream_body)

    def answered(self, ex: Exchange, status: int, headers: dict[str, str]) -> str:
        """The upstream's answer head for the current attempt: "retry" (an error answer: read
        its body and call `failed`), "json" (one JSON answer, passed as it is) or "stream"."""
        attempt = ex.attempts[-1]
        attempt.status, attempt.headers = status, headers
        self.hook.codexproxy_upstream_response(app=self.app, exchange=ex, attempt=attempt)
        if status >= 400:
            return "retry"
        attempt.finish()
        if ex.route is not None and not ex.route.upstream_streams:  # compaction: one JSON answer
            ex.status, ex.completed = status, True
            return "json"
        return "stream"

    def open_stream(self, ex: Exchange, status: int, headers: dict[str, str]) -> "StreamSession":
        transform = self.hook.codexproxy_response_transform(app=self.app, exchange=ex)
        session = StreamSession(ex, transform)
        ex.status, session.headers = session.transform.start(status, dict(headers))
        return session

    async def failed(self, ex: Exchange, body: bytes = b"", transport_error: str | None = None,
                     stream_failure: GatewayError | None = None) -> UpstreamCall | LocalResponse:
        """The current attempt failed before any byte reached the client: an error answer
        (`body`), a transport failure, or a stream that failed before its first output event.
        Returns the next attempt's request, or the client's answer."""
        try:
            attempt = ex.attempts[-1]
            if transport_error:
                attempt.error, attempt.status = transport_error, None
            elif stream_failure is not None:
                self._as_error_answer(attempt, stream_failure)
            else:
                attempt.body = body
            attempt.finish()
            if transport_error:
                self.hook.codexproxy_upstream_response(app=self.app, exchange=ex, attempt=attempt)
            decision = None
            if len(ex.attempts) < MAX_ATTEMPTS_HARD_CAP:
                decision = await asyncio.to_thread(self.hook.codexproxy_upstream_failed, app=self.app, exchange=ex, attempt=attempt)
            if isinstance(decision, Retry):
                attempt.reason = attempt.reason or decision.reason or None
                return self.attempt(ex, decision.account, fallback=decision.use_fallback)
            if isinstance(decision, GatewayError):
                return self.error_answer(ex, decision)
            if transport_error:
                return self.error_answer(ex, GatewayError(502, f"Upstream unreachable: {transport_error}",
                                                          type="upstream_error", code="upstream_unreachable"))
            return self._pass_error_through(ex, attempt)
        except GatewayError as err:
            return self.error_answer(ex, err)
        except Exception:
            return self.error_answer(ex, plugin_error("upstream failure handling"))

    @staticmethod
    def _as_error_answer(attempt: Attempt, failure: GatewayError) -> None:
        """A stream that failed before any output, recorded as the error answer it amounts to
        (429 for limits, 503 overloaded, 502 cut) so routing decides as for any other."""
        attempt.status = failure.status
        attempt.error = f"stream failed before any output: {failure.code or failure.message}"
        error = {"type": failure.code or failure.type, "code": failure.code, "message": failure.message, **failure.details}
        if "retry-after" in failure.headers:
            attempt.headers["retry-after"] = failure.headers["retry-after"]
            error.setdefault("resets_in_seconds", int(failure.headers["retry-after"]))
        attempt.body = json.dumps({"error": error}).encode()

    def _pass_error_through(self, ex: Exchange, attempt: Attempt) -> LocalResponse:
        payload = attempt.json_body()
        error = payload.get("error") if isinstance(payload, dict) else None
        message = (error.get("message") if isinstance(error, dict) else None) or (payload.get("detail") if isinstance(payload, dict) else None)
        ex.error = f"upstream {attempt.status}: {message or attempt.body[:200].decode('utf-8', 'replace')}"
        if ex.protocol in ("responses", "compact") and payload is not None:
            # Codex reads the upstream's own error shapes (usage_limit_reached): as they came.
            headers = {"content-type": "application/json"}
            if "retry-after" in attempt.headers:
                headers["retry-after"] = attempt.headers["retry-after"]
            ex.status = attempt.status or 502
            return LocalResponse(ex.status, attempt.body, headers)
        err = GatewayError(attempt.status or 502, message or f"Upstream answered {attempt.status}.",
                           type=(error or {}).get("type") or ("invalid_request_error" if (attempt.status or 500) < 500 else "upstream_error"),
                           code=(error or {}).get("code"))
        if "retry-after" in attempt.headers:
            err.headers["retry-after"] = attempt.headers["retry-after"]
        return self.error_answer(ex, err)

    # --- answers and the end --------------------------------------------------------------
    def error_answer(self, ex: Exchange | None, err: GatewayError) -> LocalResponse:
        """The error in the client's protocol (codexproxy_render_error), with its headers."""
        local = None
        if ex is not None:
            ex.error = ex.error or err.message
            ex.status = err.status
            try:
                local = self.hook.codexproxy_render_error(app=self.app, exchange=ex, error=err)
            except Exception:
                log.exception("render_error hook failed")
        if local is None:
            local = LocalResponse(err.status, err.openai_body())
        local.headers = {**local.headers, **err.headers}
        return local

    def done(self, ex: Exchange, transport_error: str | None = None) -> None:
        """The exchange is over: exchange_done, exactly once."""
        if ex.meta.get("_done"):
            return
        ex.meta["_done"] = True
        if ex.attempts:
            ex.attempts[-1].finish()
        if transport_error:
            ex.error = ex.error or f"upstream stream failed: {transport_error}"
        try:
            self.hook.codexproxy_exchange_done(app=self.app, exchange=ex)
        except Exception:
            log.error("exchange_done hook failed: %s", traceback.format_exc(limit=6))


@dataclass(slots=True)
class StreamOutput:
    """What the client gets for one upstream chunk, or at the end, before framing.

    `events`: the client's events, whole, in order. `raw`: when the upstream passes through
    unchanged, the bytes to send instead of framing `events` anew -- the upstream's own, as
    they came (keep-alive comments and all; an event split across chunks goes out in pieces),
    plus the framing of any event the proxy added at the end. `streams` is False for the one
    JSON answer of a client that asked for no stream."""

    events: list[sse.SSEEvent]
    raw: bytes | None = None
    streams: bool = True

    def __bool__(self) -> bool:
        return bool(self.events) or bool(self.raw)

    def http_bytes(self) -> bytes:
        """Framed for HTTP: SSE, or the body of a non-stream answer."""
        if self.raw is not None:
            return self.raw
        if not self.streams:
            return "".join(ev.data for ev in self.events).encode()
        return sse.frame(self.events)


class StreamSession:
    """One answered attempt's upstream SSE, read once: the exchange learns usage and the
    terminal event from it, and the transform (or passthrough) says what the client gets.

    `feed(chunk)` and `finish(error)` return a StreamOutput: the client's events for the
    transport to frame (SSE for HTTP, one message per event for WebSocket), and, when the
    stream passes through, the upstream's own bytes so HTTP stays byte for byte. Never raises.
    """

    def __init__(self, ex: Exchange, transform: Any = None) -> None:
        self.ex = ex
        self.transform = transform or PassthroughTransform()
        self.passthrough = getattr(self.transform, "passthrough", False)
        self.streams = getattr(self.transform, "streams", True)
        self.parser = sse.SSEParser()
        self.failed: GatewayError | None = None
        self.finished = False
        self.headers: dict[str, str] = {}

    def _output(self, events: list[sse.SSEEvent], raw: bytes | None) -> StreamOutput:
        return StreamOutput(events, raw if self.passthrough else None, self.streams)

    def feed(self, chunk: bytes) -> StreamOutput:
        try:
            events = self.parser.feed(chunk)
            for event in events:
                self.observe(event)
            out = self._output(self.transform.feed(events), chunk)
        except Exception:
            log.exception("stream transform failed")
            return self._output([], b"")
        if out and self.ex.ttfb_ms is None:
            self.ex.ttfb_ms = self.ex.elapsed_ms()
        return out

    def observe(self, event: sse.SSEEvent) -> None:
        kind = event.event
        if kind == "message" and '"response.' in event.data[:80]:
            kind = event.type  # an upstream that puts the type only in the data
        if kind in TERMINAL_OK:
            self.ex.completed = True
            payload = event.json() or {}
            self.ex.usage = Usage.from_response((payload.get("response") or {}).get("usage"))
        elif kind in TERMINAL_FAILED:
            self.failed = gateway_error_from_event(event)
            self.ex.error = f"upstream {kind}: {self.failed.code or ''} {self.failed.message}".strip()

    def finish(self, error: GatewayError | None = None) -> StreamOutput:
        """The upstream ended (`error`: it broke). A stream that ends without a terminal event
        is an error the client must be told about, in its protocol."""
        if self.finished:
            return self._output([], b"")
        self.finished = True
        events: list[sse.SSEEvent] = []
        added: list[sse.SSEEvent] = []
        try:
            tail = self.parser.flush()  # its bytes already went out raw, when passing through
            for event in tail:
                self.observe(event)
            if tail:
                events += self.transform.feed(tail)
            if error is None and not self.ex.completed and self.failed is None:
                error = stream_cut_error()
            if error is not None:
                self.ex.error = self.ex.error or error.message
            added = self.transform.finish(error or self.failed)
        except Exception:
            log.exception("stream transform failed at the end")
        return self._output(events + added, sse.frame(added))


def run_transform(transform: Any, chunks: list[bytes] | tuple[bytes, ...], error: GatewayError | None = None) -> bytes:
    """A whole upstream body through a transform exactly as the HTTP adapter drives it (one
    StreamSession: parse, observe, feed, flush, finish; framed for HTTP); for tests and
    offline tools."""
    session = StreamSession(Exchange(method="POST", path="/", query={}, headers={}, body=b""), transform)
    out = b"".join(session.feed(chunk).http_bytes() for chunk in chunks)
    return out + session.finish(error).http_bytes()


class PassthroughTransform:
    """The upstream's events as they are (the session sends its bytes on HTTP); on a broken
    stream, a final `response.failed` event (an upstream failure event already went through
    as it was)."""

    passthrough = True
    streams = True

    def __init__(self) -> None:
        self.ended = False

    def start(self, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        return status, headers

    def feed(self, events: list[sse.SSEEvent]) -> list[sse.SSEEvent]:
        for event in events:
            if event.event in TERMINAL_OK or event.event in TERMINAL_FAILED:
                self.ended = True
        return events

    def finish(self, error: GatewayError | None) -> list[sse.SSEEvent]:
        if error is None or self.ended:
            return []
        self.ended = True
        return [sse.new_event("response.failed", {"type": "response.failed", "response": {
            "status": "failed", "error": {"code": error.code, "message": error.message}}})]
