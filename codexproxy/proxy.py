"""The HTTP adapter: mitmproxy's events in, the request pipeline (pipeline.py) driven.

Everything a request goes through (route, auth, prepare, select, failover, transform,
exchange_done) is the pipeline's; this addon only moves it between mitmproxy's flow and the
pipeline: the head, the body, each upstream attempt (failover.py re-sends it on mitmproxy's
connection), the stream pump, and the end. wsadapter.py is the same for WebSocket messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mitmproxy import http
from mitmproxy.proxy import events

from . import failover, wire
from .exchange import Exchange, GatewayError, LocalResponse
from .pipeline import Pipeline, StreamSession, UpstreamCall, plugin_error
from .streams import HoldWatch, StreamPump
from .stream_endings import stream_cut_error

SOCKET = "codexproxy.socket"  # flow.metadata of a WebSocket upgrade (wsadapter.SOCKET)

log = logging.getLogger("codexproxy.proxy")

EXCHANGE = "codexproxy.exchange"
ACTIVITY = failover.ACTIVITY
CONNECT_TIMEOUT = "codexproxy.connect_timeout"
HEAD_ERROR = "codexproxy.head_error"  # flow.metadata: the GatewayError the head was refused with
BUFFERED = "codexproxy.buffered"  # flow.metadata: the StreamSession of a client that wants no stream

# Upstream response headers the client never sees: hop-by-hop, and the upstream's cookies
# and host policies (they belong to chatgpt.com, not to this gateway).
DROPPED_RESPONSE_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-encoding", "set-cookie",
                                      "alt-svc", "strict-transport-security"})


def _header_bytes(value: str) -> bytes:
    """Client values are latin-1 text of the bytes it sent (they go back as they came);
    a plugin's or the config's text beyond latin-1 goes as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def http_response(local: LocalResponse) -> http.Response:
    body, headers = local.encoded()
    return http.Response.make(local.status, body, headers)


def exchange_from_request(req: http.Request, client_addr: str) -> Exchange:
    split = urlsplit(req.path)
    return Exchange(
        method=req.method.upper(),
        path=split.path or "/",
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=wire.header_dict(req.headers.fields),
        header_fields=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in req.headers.fields],
        body=b"",  # the head only: the body comes with `request`
        client_addr=client_addr,
    )


class Gateway:
    """The mitmproxy addon (methods named after mitmproxy events) adapting HTTP flows to the pipeline."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pipeline = Pipeline(app)
        self.active: dict[str, http.HTTPFlow] = {}

    @property
    def closing(self) -> bool:
        return self.pipeline.closing

    @closing.setter
    def closing(self, value: bool) -> None:
        self.pipeline.closing = value

    # --- the client's request -------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Admit on the head. A request refused here is answered before its body is read
        (failover.py), so an unauthenticated or oversized upload costs no memory."""
        if flow.metadata.get(SOCKET, False) is not False:
            return  # a WebSocket upgrade: wsadapter.py's
        ex: Exchange | None = None
        try:
            peer = flow.client_conn.peername
            ex = exchange_from_request(flow.request, f"{peer[0]}" if peer else "")
            flow.metadata[EXCHANGE] = ex
            self.pipeline.start(ex)
            length = flow.request.headers.get("content-length", "")
            self.pipeline.admit(ex, int(length) if length.isdigit() else None)
            # A chunked body is capped as it arrives, answered in the client's protocol.
            flow.metadata[failover.BODY_CAP] = (self.pipeline.body_limit,
                                                lambda: http_response(self.pipeline.error_answer(ex, self.pipeline.too_large())))
        except GatewayError as err:
            self._refuse_on_head(flow, ex, err)
        except Exception:
            self._refuse_on_head(flow, ex, plugin_error("request admission"))

    def _refuse_on_head(self, flow: http.HTTPFlow, ex: Exchange | None, err: GatewayError) -> None:
        flow.metadata[HEAD_ERROR] = err
        # Answered now, without reading the body (failover.py closes the connection after).
        flow.metadata[failover.HEAD_ANSWER] = http_response(self.pipeline.error_answer(ex, err))

    async def request(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        try:
            if (err := flow.metadata.pop(HEAD_ERROR, None)) is not None:
                raise err  # refused on the head, and the request had no body to skip
            if ex is None or ex.route is None:
                return
            coding = ex.headers.pop("content-encoding", None)
            step = await self.pipeline.begin(ex, flow.request.raw_content or b"", coding)
            self._apply(flow, step)
        except GatewayError as err:
            flow.response = http_response(self.pipeline.error_answer(ex, err))
        except Exception:
            flow.response = http_response(self.pipeline.error_answer(ex, plugin_error("request handling")))

    def _apply(self, flow: http.HTTPFlow, step: UpstreamCall | LocalResponse) -> None:
        """Answer the client, or point the flow at the upstream for the next attempt."""
        if isinstance(step, LocalResponse):
            flow.response = http_response(step)
            return
        req = flow.request
        req.url = step.url
        # A fresh Headers object: Headers.clear() removes fields one by one (quadratic).
        req.headers = http.Headers([(name.encode("latin-1"), _header_bytes(value)) for name, value in step.headers])
        req.content = step.body
        flow.metadata[ACTIVITY] = time.monotonic()
        self.active[flow.id] = flow

    # --- the upstream's answer ------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None or not ex.attempts or ex.route is None or ex.route.kind != "upstream" or flow.response is None:
            return
        try:
            resp = flow.response
            headers = wire.header_dict(resp.headers.fields)
            verdict = self.pipeline.answered(ex, resp.status_code, headers)
            if verdict == "retry":
                flow.metadata[failover.RETRY] = True
                return
            if verdict == "json":
                self._set_client_headers(resp, dict(headers))
                return
            session = self.pipeline.open_stream(ex, resp.status_code, headers)
            resp.status_code = ex.status
            self._set_client_headers(resp, session.headers)
            # Held back until the first output event: a 200 that fails before any output is
            # failed over like an error answer (failover.py, streams.HoldWatch).
            is_sse = headers.get("content-type", "").startswith("text/event-stream")
            flow.metadata[failover.HOLD] = HoldWatch() if is_sse else None
            if ex.client_stream:
                resp.headers["transfer-encoding"] = "chunked"
                resp.headers.pop("content-length", None)
                resp.stream = StreamPump(session)
            else:
                flow.metadata[BUFFERED] = session
        except Exception:
            log.exception("responseheaders failed")
            flow.metadata[failover.RETRY] = True  # never stream a half-processed answer

    @staticmethod
    def _set_client_headers(resp: http.Response, headers: dict[str, str]) -> None:
        resp.headers = http.Headers([(name.encode(), value.encode("utf-8", "replace")) for name, value in headers.items()
                                     if name not in DROPPED_RESPONSE_HEADERS])

    async def upstream_retry(self, flow: http.HTTPFlow) -> None:
        """Custom blocking hook from failover.py: the attempt failed before the first byte."""
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None or not ex.attempts:
            return
        transport_error = flow.metadata.pop("codexproxy.transport_error", None)
        if transport_error and (timeout := flow.metadata.pop(CONNECT_TIMEOUT, None)):
            transport_error = f"connect timeout: no connection within {timeout:g}s"
        flow.metadata.pop(BUFFERED, None)  # a failed attempt's converter is done
        body = flow.response.raw_content or b"" if flow.response is not None else b""
        step = await self.pipeline.failed(ex, body=body, transport_error=transport_error,
                                          stream_failure=flow.metadata.pop(failover.STREAM_FAILURE, None))
        self._apply(flow, step)
        if isinstance(step, UpstreamCall):
            flow.metadata[failover.RETRY_AGAIN] = True

    def response(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None:
            return
        session = flow.metadata.pop(BUFFERED, None)
        if session is not None and flow.response is not None:
            self._finish_buffered(flow, ex, session)
        if ex.status is None and flow.response is not None:
            ex.status = flow.response.status_code
        self._done(flow, ex)

    def _finish_buffered(self, flow: http.HTTPFlow, ex: Exchange, session: StreamSession) -> None:
        """A client that asked for no stream: the whole upstream SSE is here; convert it."""
        out = session.feed(flow.response.raw_content or b"").http_bytes()
        out += session.finish().http_bytes()
        error = session.failed or (None if ex.completed else stream_cut_error())
        if error is not None:
            flow.response = http_response(self.pipeline.error_answer(ex, error))
            return
        flow.response.content = out
        ex.ttfb_ms = ex.elapsed_ms()

    def error(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None:
            return
        if flow.error is not None and not ex.error:
            ex.error = "client disconnected" if "disconnect" in flow.error.msg.lower() else flow.error.msg
        self._done(flow, ex)

    def _done(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        self.active.pop(flow.id, None)
        self.pipeline.done(ex, flow.metadata.get("codexproxy.transport_error"))

    # --- idle upstreams and hanging connects ----------------------------------------------
    async def watch_idle(self, proxyserver: Any) -> None:
        """Inject IdleTimeout into flows whose upstream has been silent too long, and cancel
        upstream connects that take longer than connect_timeout_s (the layer cannot: it is
        paused on the connect until it completes)."""
        cfg = self.app.config.upstream
        idle, connect = cfg.stream_idle_timeout_s, cfg.connect_timeout_s
        period = max(0.05, min(1.0, idle / 4, connect / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for flow_id, flow in list(self.active.items()):
                if not flow.live:
                    continue
                self._cancel_slow_connect(proxyserver, flow, connect)
                last = flow.metadata.get(ACTIVITY, now)
                if now - last < idle:
                    continue
                flow.metadata[ACTIVITY] = now  # once per idle period
                try:
                    proxyserver.inject_event(events.MessageInjected(flow, failover.IdleTimeout(f"upstream idle timeout: no data for {idle:g}s")))
                except (ValueError, KeyError):
                    self.active.pop(flow_id, None)

    @staticmethod
    def _cancel_slow_connect(proxyserver: Any, flow: http.HTTPFlow, timeout: float) -> None:
        handler = proxyserver.connections.get(flow.client_conn.id)
        if handler is None:
            return
        wall = time.time()
        for conn, io in list(handler.transports.items()):
            if conn is flow.client_conn or conn.timestamp_tcp_setup is not None or not conn.timestamp_start:
                continue
            task = io.handler
            if wall - conn.timestamp_start > timeout and task is not None and not task.done():
                flow.metadata[CONNECT_TIMEOUT] = timeout
                task.cancel()  # open_connection turns this into a connect error: the retry path
