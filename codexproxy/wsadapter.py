"""The WebSocket adapter: Codex's Responses WebSocket transport, into the same pipeline.

Codex opens `GET /responses` with `Upgrade: websocket` and sends one text message
`{"type": "response.create", ...a Responses body...}` per turn; the server answers each with the
events of the SSE stream, one JSON text message per event. Here:

- The upgrade is admitted like an HTTP request (route and platform key on its head; refused
  with the error JSON before any upgrade), then answered 101 by the proxy itself.
- Every `response.create` is one exchange through `pipeline.Pipeline`, exactly as an HTTP
  POST of the same body with the upgrade's headers would be (key check, prepare, account,
  failover, exchange_done and its log row, with `transport` "websocket").
- Upstream, a turn is an ordinary HTTP SSE request (httpx, one pooled client): the pipeline's
  UpstreamCall as it is. Why not a WebSocket upstream: the HTTP path is the one the pool's
  failover, hold-back and usage headers already work on, and a turn's set-up on a kept-alive
  pooled connection costs no handshake; bench/run.py measures the per-event delay.
- Codex opens a socket with a prewarm turn (`"generate": false`): answered here with an empty
  response, no upstream call (over HTTP there is no connection cache to warm).
- Codex sends `previous_response_id` with only the new input items when the previous turn on
  the same socket was a prefix of this one (the backend keeps that turn in the connection). The
  socket keeps its last turn's input and output here, and spells the input out in full for
  the upstream, which never sees the id.
- Errors are `{"type": "error", "status": N, "error": {...}}` messages (Codex reads the
  status and the upstream's error object, `usage_limit_reached` included); the socket stays
  open for the next turn. A client that goes away cancels its turn and closes the upstream
  request; an upstream that breaks ends the turn with a `response.failed` event.

mitmproxy does the framing (wsproto): the 101 is a flow answered in `request`, client
messages arrive as `websocket_message` events, answers are injected. `install()` swaps in a
layer that never relays anything to an upstream socket (there is none: pings are answered
here, and a close closes the client side only).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import wsproto
from mitmproxy import http
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import websocket as ws_layers
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from . import failover, wire
from .exchange import Exchange, GatewayError, LocalResponse
from .pipeline import Pipeline, StreamOutput, UpstreamCall, json_bytes, plugin_error
from .proxy import SOCKET, exchange_from_request, http_response
from .streams import HoldWatch
from .stream_endings import stream_cut_error

log = logging.getLogger("codexproxy.websocket")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
UPGRADE_ONLY_HEADERS = frozenset({"upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
                                  "sec-websocket-extensions", "sec-websocket-protocol", "openai-beta"})


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def is_upgrade(req: http.Request) -> bool:
    return req.method == "GET" and req.headers.get("upgrade", "").lower() == "websocket"


@dataclass(eq=False)
class Socket:
    """One client WebSocket: its upgrade request, and what a turn needs of the last one."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    header_fields: list[tuple[str, str]]
    client_addr: str
    turns: asyncio.Queue = field(default_factory=asyncio.Queue)
    worker: asyncio.Task | None = None
    busy: bool = False  # a turn is in progress
    account_id: str | None = None  # the last turn's account: the next turn prefers it
    last_input: list = field(default_factory=list)
    last_output: list = field(default_factory=list)
    last_response_id: str | None = None
    turn_output: list = field(default_factory=list)  # the turn in progress's, kept if it completes
    turn_response_id: str | None = None

    def exchange(self, body: bytes) -> Exchange:
        ex = Exchange(method="POST", path=self.path, query=dict(self.query), headers=dict(self.headers),
                      header_fields=list(self.header_fields), body=b"", client_addr=self.client_addr)
        ex.transport, ex.prefer_account = "websocket", self.account_id
        return ex


class WebSocketGateway:
    """The mitmproxy addon for WebSocket flows (methods named after mitmproxy events)."""

    def __init__(self, app: Any, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline
        self.proxyserver: Any = None  # set by server.py: injects our messages
        self._client: httpx.AsyncClient | None = None
        self.sockets: set[Socket] = set()  # open sockets (their workers are cancelled at shutdown)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            cfg = self.app.config.upstream
            self._client = httpx.AsyncClient(
                verify=cfg.httpx_verify(), http2=False,
                timeout=httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.stream_idle_timeout_s, write=60, pool=60))
        return self._client

    @property
    def busy(self) -> bool:
        """A turn is in progress on some socket (shutdown waits for it, like for HTTP flows)."""
        return any(sock.busy for sock in self.sockets)

    async def close(self) -> None:
        for sock in list(self.sockets):
            if sock.worker is not None:
                sock.worker.cancel()
        if self._client is not None:
            await self._client.aclose()

    # --- the upgrade ----------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not is_upgrade(flow.request):
            return
        peer = flow.client_conn.peername
        probe = exchange_from_request(flow.request, f"{peer[0]}" if peer else "")
        probe.method = "POST"  # a turn is a POST of its body: route and key as for one
        try:
            self.pipeline.admit(probe)
            if probe.route is None or probe.route.kind != "upstream" or probe.route.protocol != "responses":
                raise GatewayError(404, f"No WebSocket endpoint at {probe.path}; use /v1/responses.", code="not_found")
            if flow.request.headers.get("sec-websocket-version") != "13" or not flow.request.headers.get("sec-websocket-key"):
                raise GatewayError(400, "Not a valid WebSocket upgrade (Sec-WebSocket-Version 13 and a key are required).",
                                   code="bad_upgrade")
        except GatewayError as err:
            flow.response = http_response(self.pipeline.error_answer(None, err))
            flow.metadata[SOCKET] = None
            return
        except Exception:
            flow.response = http_response(self.pipeline.error_answer(None, plugin_error("websocket upgrade")))
            flow.metadata[SOCKET] = None
            return
        headers = {k: v for k, v in probe.headers.items() if k not in UPGRADE_ONLY_HEADERS}
        fields = [(n, v) for n, v in probe.header_fields if n.lower() not in UPGRADE_ONLY_HEADERS]
        flow.metadata[SOCKET] = Socket(probe.path, probe.query, headers, fields, probe.client_addr)
        flow.response = http.Response.make(101, b"", {
            "upgrade": "websocket", "connection": "Upgrade",
            "sec-websocket-accept": accept_key(flow.request.headers["sec-websocket-key"])})

    # --- messages -------------------------------------------------------------------------
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        sock: Socket | None = flow.metadata.get(SOCKET)
        if sock is not None:
            self.sockets.add(sock)
            sock.worker = asyncio.create_task(self._serve(flow, sock))

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        sock: Socket | None = flow.metadata.get(SOCKET)
        if sock is None or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages.pop()  # kept nowhere else: a long socket holds no history
        if message.from_client:
            sock.turns.put_nowait(message)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        sock: Socket | None = flow.metadata.get(SOCKET)
        if sock is not None:
            self.sockets.discard(sock)
            if sock.worker is not None:
                sock.worker.cancel()  # the client went away: its turn (and upstream request) ends

    def _send(self, flow: http.HTTPFlow, *payloads: str | dict) -> None:
        """Messages to the client, in order; all of one call go in one injected event (one task
        and one pass through mitmproxy's layers, not one per message)."""
        texts = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in payloads]
        if not texts:
            return
        try:
            self.proxyserver.inject_event(Outgoing(flow, _message(texts[0]), texts))
        except ValueError:
            raise asyncio.CancelledError from None  # the connection is gone

    async def _serve(self, flow: http.HTTPFlow, sock: Socket) -> None:
        """One turn at a time, in order (Codex waits for each turn's end before the next)."""
        while True:
            message = await sock.turns.get()
            sock.busy = True
            try:
                await self._turn(flow, sock, message)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug of ours (logged with its traceback by plugin_error): the client still
                # gets an answer rather than waiting for a turn that will not come.
                self._bad_message(flow, plugin_error("websocket turn"))
            finally:
                sock.busy = False

    # --- one turn -------------------------------------------------------------------------
    def _bad_message(self, flow: http.HTTPFlow, err: GatewayError) -> None:
        """A message that is no turn: an error event, and the socket stays open."""
        self._send(flow, _error_event(self.pipeline.error_answer(None, err)))

    async def _turn(self, flow: http.HTTPFlow, sock: Socket, message: Any) -> None:
        if message.is_text is False:
            self._bad_message(flow, GatewayError(400, "Binary messages are not supported; send JSON text.", code="invalid_message"))
            return
        try:
            request = json.loads(message.text)
        except ValueError as exc:
            self._bad_message(flow, GatewayError(400, f"Message is not valid JSON: {exc}", code="invalid_message"))
            return
        except RecursionError:
            self._bad_message(flow, GatewayError(400, "Message is nested too deeply to be read as JSON.", code="invalid_message"))
            return
        kind = request.get("type") if isinstance(request, dict) else None
        if kind == "response.processed":
            return  # Codex acknowledges a turn it has consumed: nothing to do
        if kind != "response.create":
            self._bad_message(flow, GatewayError(400, f"Unsupported message type {kind!r}; expected 'response.create'.",
                                                   code="invalid_message", param="type"))
            return
        body = {k: v for k, v in request.items() if k != "type"}
        previous = body.get("previous_response_id")
        if previous is not None and previous != sock.last_response_id:
            # Only this socket's last answer can be continued: the upstream keeps no turns of
            # ours. Codex answers this error by starting over on a new socket with the full input.
            self._bad_message(flow, GatewayError(400, f"previous_response_id {previous!r} is not the last response on this "
                                                      "WebSocket; send the full input instead.",
                                                 code="previous_response_not_found", param="previous_response_id"))
            return
        body = self._spelled_out(sock, body)
        if body.get("generate") is False:
            self._prewarm(flow, sock, body)
            return
        body.setdefault("stream", True)
        ex = sock.exchange(b"")
        self.pipeline.start(ex)
        transport_error = None
        try:
            raw = json_bytes(body)
            self.pipeline.admit(ex, len(raw))
            ex.parsed_as(body)  # read once already: the pipeline need not parse it again
            step = await self.pipeline.begin(ex, raw)
            while isinstance(step, UpstreamCall):
                step, transport_error = await self._attempt(flow, sock, ex, step)
            if isinstance(step, LocalResponse):
                self._send(flow, _error_event(step))
        except GatewayError as err:
            self._send(flow, _error_event(self.pipeline.error_answer(ex, err)))
        except asyncio.CancelledError:
            ex.error = ex.error or "client disconnected"
            raise
        except Exception:
            err = plugin_error("websocket turn")
            self._send(flow, _error_event(self.pipeline.error_answer(ex, err)))
        finally:
            self.pipeline.done(ex, transport_error)
        if ex.completed:  # the next turn may continue this one
            sock.account_id = getattr(ex.account, "id", None)
            sock.last_input = body.get("input") if isinstance(body.get("input"), list) else []
            sock.last_output, sock.last_response_id = sock.turn_output, sock.turn_response_id
        else:  # nothing to continue: a continuation is refused, and Codex starts over in full
            sock.last_input, sock.last_output, sock.last_response_id = [], [], None

    def _prewarm(self, flow: http.HTTPFlow, sock: Socket, body: dict) -> None:
        """Codex opens each socket with `"generate": false` and only its instructions, to warm
        the backend's per-connection cache, then sends the first turn as a continuation of it.
        Over HTTP upstream there is nothing to warm: answered here (an empty response), and
        remembered so the continuation is spelled out in full. No account is spent on it."""
        response = {"id": f"resp_prewarm_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
                    "status": "completed", "model": body.get("model"), "output": [],
                    "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
        self._send(flow, {"type": "response.created", "response": {**response, "status": "in_progress"}},
                   {"type": "response.completed", "response": response})
        sock.last_input = body.get("input") if isinstance(body.get("input"), list) else []
        sock.last_output, sock.last_response_id = [], response["id"]

    def _spelled_out(self, sock: Socket, body: dict) -> dict:
        """`previous_response_id` naming this socket's last turn: its input and output
        prepended, the id dropped (the upstream keeps no turn of ours)."""
        if body.get("previous_response_id") is None:
            return body
        body = dict(body)
        del body["previous_response_id"]
        new = body.get("input") if isinstance(body.get("input"), list) else []
        body["input"] = [*sock.last_input, *sock.last_output, *new]
        return body

    async def _attempt(self, flow: http.HTTPFlow, sock: Socket, ex: Exchange,
                       call: UpstreamCall) -> tuple[UpstreamCall | LocalResponse | None, str | None]:
        """Send one attempt; stream it to the client. Returns the next step (another attempt,
        an answer, or None when the turn is over) and a transport error to log."""
        released = False
        session = None
        out = _Outbox(self, flow)
        try:
            async with self.client.stream("POST", call.url, headers=call.headers, content=call.body) as resp:
                headers = wire.header_dict(resp.headers.raw)
                verdict = self.pipeline.answered(ex, resp.status_code, headers)
                if verdict != "stream":
                    body = await _read_limited(resp)
                    if verdict == "json":
                        return LocalResponse(resp.status_code, body, {"content-type": "application/json"}), None
                    return await self.pipeline.failed(ex, body=body), None
                session = self.pipeline.open_stream(ex, resp.status_code, headers)
                hold, held = HoldWatch(), []
                async for chunk in resp.aiter_raw():
                    if not released:
                        held.append(chunk)
                        verdict = hold(chunk)
                        if verdict is None:
                            continue
                        if isinstance(verdict, GatewayError):
                            return await self.pipeline.failed(ex, stream_failure=verdict), None
                        chunk, released = b"".join(held), True
                    out.send(session.feed(chunk))
                if not released:
                    verdict = hold(b"", final=True)
                    if isinstance(verdict, GatewayError):
                        return await self.pipeline.failed(ex, stream_failure=verdict), None
                    out.send(session.feed(b"".join(held)))
                out.send(session.finish())
                sock.turn_output, sock.turn_response_id = out.items, out.response_id
                return None, None
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if not released:
                return await self.pipeline.failed(ex, transport_error=reason), None
            if session is not None:
                out.send(session.finish(stream_cut_error(reason)))
            return None, reason


class _Outbox:
    """A turn's client side: the session's events, one message each (whole events only: the
    session's parser completes an event split across upstream chunks before it is one); it
    also keeps the turn's output items and response id for the next turn's
    `previous_response_id`."""

    REMEMBERED = ("response.output_item.done", "response.created", "response.completed")

    def __init__(self, gateway: WebSocketGateway, flow: http.HTTPFlow) -> None:
        self.gateway, self.flow = gateway, flow
        self.items: list = []
        self.response_id: str | None = None

    def send(self, out: StreamOutput) -> None:
        for event in out.events:
            if event.type not in self.REMEMBERED:
                continue
            payload = event.json()
            if isinstance(payload, dict):
                if payload.get("type") == "response.output_item.done" and isinstance(payload.get("item"), dict):
                    self.items.append(payload["item"])
                elif payload.get("type") in ("response.created", "response.completed") and isinstance(payload.get("response"), dict):
                    self.response_id = payload["response"].get("id") or self.response_id
        if out.events:
            self.gateway._send(self.flow, *(event.data for event in out.events))


class Outgoing(ws_layers.WebSocketMessageInjected):
    """Our messages to a client socket, several per event (GatewaySocketLayer frames them)."""

    def __init__(self, flow: http.HTTPFlow, first: WebSocketMessage, texts: list[str]) -> None:
        super().__init__(flow, first)
        self.texts = texts


def _message(text: str) -> WebSocketMessage:
    return WebSocketMessage(Opcode.TEXT, False, text.encode())


async def _read_limited(resp: httpx.Response) -> bytes:
    body = b""
    async for chunk in resp.aiter_raw():
        body += chunk
        if len(body) >= failover.ERROR_BODY_LIMIT:
            break
    return body[:failover.ERROR_BODY_LIMIT]


def _error_event(local: LocalResponse) -> dict:
    """Codex's wrapped error event: the HTTP status and the error object it would have got."""
    body, headers = local.encoded()
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {"error": {"message": body.decode("utf-8", "replace")}}
    error = payload.get("error") if isinstance(payload, dict) and isinstance(payload.get("error"), dict) else payload
    event = {"type": "error", "status": local.status, "error": error}
    if "retry-after" in headers:
        event["headers"] = {"retry-after": headers["retry-after"]}
    return event


# --- mitmproxy's WebSocket layer, with no upstream socket --------------------------------
class GatewaySocketLayer(ws_layers.WebsocketLayer):
    """mitmproxy's WebsocketLayer relays every frame to an upstream socket; a gateway socket
    has none. Client messages go to the `websocket_message` hook only, pings are answered
    here, a close closes the client side, and injected messages go to the client."""

    def relay_messages(self, event: events.Event):
        if isinstance(event, Outgoing):  # ours, to the client: sent, not recorded
            for text in event.texts:
                # One frame per message: mitmproxy's Fragmentizer cuts text at byte counts and
                # would break a multi-byte character at a fragment's edge.
                yield self.client_ws.send2(wsproto.events.TextMessage(text))
            return
        if isinstance(event, ws_layers.WebSocketMessageInjected):
            return  # only the gateway speaks on its sockets
        if not (isinstance(event, events.ConnectionEvent) and event.connection == self.context.client):
            return  # there is no upstream connection to hear from
        self.client_ws.receive_data(event.data if isinstance(event, events.DataReceived) else None)
        for ws_event in self.client_ws.events():
            if isinstance(ws_event, wsproto.events.Message):
                data = ws_event.data.encode() if isinstance(ws_event.data, str) else ws_event.data
                self.client_ws.frame_buf[-1] += data
                if sum(map(len, self.client_ws.frame_buf)) > _message_limit():
                    yield from self._close(1009, "message too big")
                    return
                if ws_event.message_finished:
                    content = b"".join(self.client_ws.frame_buf)
                    self.client_ws.frame_buf = [b""]
                    opcode = Opcode.TEXT if isinstance(ws_event.data, str) else Opcode.BINARY
                    self.flow.websocket.messages.append(WebSocketMessage(opcode, True, content))
                    yield ws_layers.WebsocketMessageHook(self.flow)
            elif isinstance(ws_event, wsproto.events.Ping):
                yield self.client_ws.send2(ws_event.response())
            elif isinstance(ws_event, wsproto.events.CloseConnection):
                yield from self._close(ws_event.code, ws_event.reason or "")
                return

    def _close(self, code: int, reason: str):
        self.flow.websocket.timestamp_end = time.time()
        self.flow.websocket.close_code, self.flow.websocket.close_reason = code, reason
        if self.client_ws.state in (wsproto.connection.ConnectionState.OPEN, wsproto.connection.ConnectionState.REMOTE_CLOSING):
            yield self.client_ws.send2(wsproto.events.CloseConnection(code=code, reason=reason))
        yield commands.CloseConnection(self.context.client)
        yield ws_layers.WebsocketEndHook(self.flow)
        self.flow.live = False
        self._handle_event = self.done


_MESSAGE_LIMIT = [16 * 1024 * 1024]


def _message_limit() -> int:
    return _MESSAGE_LIMIT[0]


def install(max_message_bytes: int) -> None:
    """Every WebSocket in this process is a gateway socket (there is no upstream to relay to)."""
    _MESSAGE_LIMIT[0] = max_message_bytes
    ws_layers.WebsocketLayer = GatewaySocketLayer
