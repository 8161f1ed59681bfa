"""Retry a request on another account before the client saw a byte, and still stream.

mitmproxy has no supported way to send a flow again once the upstream answered. This module
replaces `mitmproxy.proxy.layers.http.HttpStream` (the per-request state machine) with a
subclass that can:

- on an error answer the addon marked for retry in `responseheaders`: read the error body,
  run the blocking `upstream_retry` hook (the addon picks the next account there and edits
  `flow.request`), then re-send the buffered request on a fresh or reused connection; the next
  answer goes through `responseheaders` again and can stream. Yielding the hook is required:
  it lets mitmproxy's HTTP/1 client finish the previous exchange before the next one.
- treat connect failures, a server that closes before answering, and an idle upstream
  (`IdleTimeout` injected by the addon's watchdog) the same way before the first byte;
- after the first byte, end the client's stream cleanly with the transform's error bytes
  instead of dropping the connection.

It relies on HttpStream internals of mitmproxy 12.3.1 (pinned exactly in pyproject.toml);
tests/test_failover.py fails loudly if they move. HttpLayer's event handler is wrapped too, so
that an idle timeout arriving after its exchange ended is dropped rather than asserted on
(tests/test_accounts_tokens.py: a refresh slower than the idle timeout). Upstream must stay HTTP/1.1 (HTTP/2 would
reuse stream ids across the re-send).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import (
    HttpStream,
    RequestData,
    RequestEndOfMessage,
    RequestHeaders,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
    SendHttp,
)
from mitmproxy.proxy.layers.http._http1 import Http1Client
from mitmproxy.proxy.layers.http._hooks import HttpResponseHook

RETRY = "codexproxy.retry"  # flow.metadata: the addon wants the error answer retried
RETRY_AGAIN = "codexproxy.retry_again"  # set by the addon in upstream_retry: re-send now
ACTIVITY = "codexproxy.activity"  # flow.metadata: monotonic time of the last upstream byte
ERROR_BODY_LIMIT = 64 * 1024  # enough to read a reason; the rest of a huge error is dropped
HEAD_ANSWER = "codexproxy.head_answer"  # flow.metadata: answer this now, never read the body
BODY_CAP = "codexproxy.body_cap"  # flow.metadata: (max bytes, a function giving the answer once a body exceeds it)
HOLD = "codexproxy.hold"  # flow.metadata: a watcher; hold a 200 answer back until it says "release"
STREAM_FAILURE = "codexproxy.stream_failure"  # flow.metadata: the watcher's failure, for the addon


@dataclass
class UpstreamRetryHook(commands.StartHook):
    """The attempt failed before any byte reached the client (see module doc)."""

    name = "upstream_retry"
    flow: http.HTTPFlow


@dataclass
class IdleTimeout:
    """Injected (as events.MessageInjected) when the upstream has been silent too long."""

    message: str = "upstream idle timeout"


class FailoverHttpStream(HttpStream):
    _discarding = False
    _error_body_size = 0

    # --- the client's request: answered on its head, or capped as its body arrives ---------
    def state_wait_for_request_headers(self, event):
        yield from super().state_wait_for_request_headers(event)
        answer = self.flow.metadata.pop(HEAD_ANSWER, None) if hasattr(self, "flow") else None
        if answer is not None and not event.end_stream and self.client_state == self.state_consume_request_body:
            yield from self._answer_before_body(answer)

    def state_consume_request_body(self, event):
        cap = self.flow.metadata.get(BODY_CAP)
        if cap is not None and isinstance(event, RequestData) and len(self.request_body_buf) + len(event.data) > cap[0]:
            self.request_body_buf.clear()
            yield from self._answer_before_body(cap[1]())
            return
        yield from super().state_consume_request_body(event)

    def _answer_before_body(self, answer: http.Response):
        """Answer without reading (or buffering) the rest of the body, then close: the only
        way to refuse an upload early in HTTP/1.1 (RFC 9112 §9.6)."""
        answer.headers["connection"] = "close"
        self.flow.response = answer
        self.client_state = self.state_errored  # whatever body still arrives is dropped
        yield from self.send_response()
        yield SendHttp(ResponseEndOfMessage(self.stream_id), self.context.client)
        yield commands.CloseConnection(self.context.client)

    # --- events -----------------------------------------------------------------------------
    def _handle_event(self, event: events.Event):
        if isinstance(event, events.MessageInjected) and isinstance(event.message, IdleTimeout):
            yield from self._on_idle(event.message.message)
            return
        if isinstance(event, (ResponseHeaders, ResponseData)) and hasattr(self, "flow"):
            self.flow.metadata[ACTIVITY] = time.monotonic()  # read by the idle watchdog
        yield from super()._handle_event(event)

    def _wait_for_response_headers(self, event):
        yield from super().state_wait_for_response_headers(event)
        if self.flow.metadata.get(RETRY) and self.server_state == self.state_consume_response_body:
            self.server_state = self.state_read_error_body
            self._error_body_size = 0
            if event.end_stream:  # no body follows; ResponseEndOfMessage still comes
                self.flow.response.data.content = b""

    def state_read_error_body(self, event):
        if isinstance(event, ResponseData):
            room = ERROR_BODY_LIMIT - self._error_body_size
            if room > 0:
                self.response_body_buf += event.data[:room]
            self._error_body_size += len(event.data)
        elif isinstance(event, ResponseEndOfMessage):
            self.flow.response.data.content = bytes(self.response_body_buf)
            self.response_body_buf.clear()
            yield from self._retry_or_answer()
        yield from ()

    # --- a 200 answer held back until its first output event --------------------------------
    def start_response_stream(self):
        if self.flow.metadata.get(HOLD) is not None:
            yield from self._start_hold(stream=True)
            return
        yield from super().start_response_stream()

    def state_wait_for_response_headers(self, event):
        yield from self._wait_for_response_headers(event)
        if self.flow.metadata.get(HOLD) is not None and self.server_state == self.state_consume_response_body:
            yield from self._start_hold(stream=False)  # a buffered client: held the same way

    def _start_hold(self, stream: bool):
        self._release_to_stream = stream
        self._held = bytearray()
        self.server_state = self.state_hold_response_body
        yield from ()

    def state_hold_response_body(self, event):
        watch = self.flow.metadata[HOLD]
        if isinstance(event, ResponseData):
            self._held += event.data
            verdict = watch(event.data)
        elif isinstance(event, ResponseEndOfMessage):
            verdict = watch(b"", final=True)
        else:  # trailers: kept for after the body, as mitmproxy does
            self.flow.response.trailers = event.trailers
            return
        if verdict is None:
            return
        if verdict == "release":
            yield from self._release_held()
            if isinstance(event, ResponseEndOfMessage):
                yield from self._handle_event(event)
            return
        # Failed before any output: like an error answer, before a byte reached the client.
        # As with an error body, the rest is read to its end first, so that the HTTP/1 client
        # finishes this exchange before the next one starts (the stream ends right after a
        # failure event; the idle watchdog covers one that does not).
        self._held = bytearray()
        self.flow.metadata[STREAM_FAILURE] = verdict
        self.server_state = self.state_discard_failed_stream
        if isinstance(event, ResponseEndOfMessage):
            yield from self.state_discard_failed_stream(event)

    def state_discard_failed_stream(self, event):
        if isinstance(event, ResponseEndOfMessage):
            yield from self._retry_or_answer()
        yield from ()

    def _release_held(self):
        self.flow.metadata[HOLD] = None
        held, self._held = bytes(self._held), bytearray()
        if self._release_to_stream:
            yield from super().start_response_stream()
            if held:
                yield from self.state_stream_response_body(ResponseData(self.stream_id, held))
        else:
            self.server_state = self.state_consume_response_body
            self.response_body_buf += held

    # --- the retry loop ---------------------------------------------------------------------
    def _retry_or_answer(self):
        """Ask the addon (via the blocking hook), then re-send, or answer the client with
        what the addon left in flow.response (the error answer, or its own)."""
        self.flow.metadata[RETRY_AGAIN] = False
        yield UpstreamRetryHook(self.flow)
        if (yield from self.check_killed(True)):
            return
        self.flow.metadata[RETRY] = False
        if self.flow.metadata.pop(RETRY_AGAIN, False):
            yield from self._resend()
        elif self.flow.response is not None:
            yield from self.send_response()
        else:  # nothing to answer with: mitmproxy's own 502
            yield from super().handle_protocol_error(
                ResponseProtocolError(self.stream_id, "upstream failed", http_layers.ErrorCode.GENERIC_SERVER_ERROR)
            )

    def _resend(self):
        self.flow.response = None
        self.response_body_buf.clear()
        self.server_state = self.state_wait_for_response_headers
        ok = yield from self.make_server_connection()
        if not ok:
            return
        request = self.flow.request
        request.timestamp_start = time.time()
        content = request.raw_content
        yield SendHttp(RequestHeaders(self.stream_id, request, not content), self.context.server)
        if content:
            yield SendHttp(RequestData(self.stream_id, content), self.context.server)
        yield SendHttp(RequestEndOfMessage(self.stream_id), self.context.server)

    def make_server_connection(self):
        while True:
            connection, err = yield http_layers.GetHttpConnection(
                (self.flow.request.host, self.flow.request.port),
                self.flow.request.scheme == "https",
                self.flow.server_conn.via,
                self.flow.server_conn.transport_protocol,
            )
            if not err:
                self.context.server = self.flow.server_conn = connection
                return True
            # Connect failure: same path as an error answer. The failed connection stays in
            # the HTTP layer with its error, and the next GetHttpConnection to the same address
            # would get that error back without trying: forget it so a retry really connects.
            self._forget_failed_connections()
            self.flow.response = None
            self.flow.metadata["codexproxy.transport_error"] = f"connect failed: {err}"
            self.flow.metadata[RETRY_AGAIN] = False
            yield UpstreamRetryHook(self.flow)
            if (yield from self.check_killed(True)):
                return False
            if self.flow.metadata.pop(RETRY_AGAIN, False):
                continue
            if self.flow.response is None:  # the addon gave no answer: mitmproxy's own 502
                yield from self.handle_protocol_error(
                    ResponseProtocolError(self.stream_id, err, http_layers.ErrorCode.CONNECT_FAILED)
                )
                return False
            self.server_state = self.state_done
            yield from self.send_response()
            return False

    def _forget_failed_connections(self) -> None:
        # Only connections that never got past TCP: one whose TLS handshake failed is still
        # closing, and the HTTP layer will route its close event by this key (a KeyError crash
        # if it is gone). Such a failure is the upstream's, not an account's: it is not retried.
        for parent in self.context.layers:
            if isinstance(parent, http_layers.HttpLayer):
                for conn in [c for c in parent.connections if c.error and not c.connected and c is not self.context.client
                             and c.timestamp_tcp_setup is None]:
                    del parent.connections[conn]

    # --- failures -----------------------------------------------------------------------------
    def handle_protocol_error(self, event):
        if isinstance(event, ResponseProtocolError) and self.client_state == self.state_done:
            if self.server_state == self.state_discard_failed_stream:
                yield from self._retry_or_answer()  # cut after its failure event: that says why
                return
            if self.server_state in (self.state_wait_for_response_headers, self.state_read_error_body,
                                     self.state_consume_response_body, self.state_hold_response_body):
                # The server went away before answering: retryable like a connect failure.
                self.flow.response = None
                self.flow.metadata["codexproxy.transport_error"] = event.message
                yield from self._retry_or_answer()
                return
            if self.server_state == self.state_stream_response_body:
                yield from self._end_stream_with_error(event.message)
                return
        yield from super().handle_protocol_error(event)

    def _on_idle(self, message: str):
        if self.client_state != self.state_done or self.server_state not in (
            self.state_wait_for_response_headers,
            self.state_stream_response_body,
            self.state_consume_response_body,
            self.state_read_error_body,
            self.state_hold_response_body,
            self.state_discard_failed_stream,
        ):
            return
        yield from self._abandon_server_connection()
        if self.server_state == self.state_discard_failed_stream:
            yield from self._retry_or_answer()
            return
        if self.server_state == self.state_stream_response_body:
            yield from self._end_stream_with_error(message)
        else:
            self.flow.response = None
            self.flow.metadata["codexproxy.transport_error"] = message
            yield from self._retry_or_answer()

    def _abandon_server_connection(self):
        """Close the current upstream connection without its HTTP/1 client telling this
        stream about it later (which would hit the next attempt)."""
        server = self.context.server
        layer = None
        for parent in self.context.layers:
            if isinstance(parent, http_layers.HttpLayer):
                layer = parent.connections.get(server)
        while layer is not None and not isinstance(layer, Http1Client):
            layer = getattr(layer, "child_layer", None)
        if isinstance(layer, Http1Client):
            layer.stream_id = None
            layer.state = layer.read_headers
        yield commands.CloseConnection(server)

    def _end_stream_with_error(self, message: str):
        """The upstream broke after bytes went to the client: finish the client's response
        cleanly with the transform's error bytes (never a silently truncated success)."""
        pump = self.flow.response.stream
        abort = getattr(pump, "abort", None)
        if abort is not None:
            for chunk in abort(message):
                if chunk:
                    yield SendHttp(ResponseData(self.stream_id, chunk), self.context.client)
        self.flow.metadata["codexproxy.transport_error"] = message
        self.flow.response.timestamp_end = time.time()
        yield HttpResponseHook(self.flow)
        self.server_state = self.state_done
        if self.client_state == self.state_done:
            yield from self.flow_done()


def _stream_of(layer: http_layers.HttpLayer, flow: http.HTTPFlow) -> Any:
    """The stream an injected message for `flow` would go to, or None when there is none now
    (HttpLayer's own lookup asserts instead: a connection between two requests has no stream)."""
    conn = layer.connections.get(flow.server_conn) or layer.connections.get(flow.client_conn)
    if conn is None:
        return None
    stream_id = getattr(conn, "stream_id", None) if isinstance(conn, HttpStream) else \
        getattr(conn.context.layers[-1], "stream_id", None)
    return layer.streams.get(stream_id) if stream_id else None


_layer_handle_event = http_layers.HttpLayer._handle_event


def _handle_event_or_drop_late_idle(self: http_layers.HttpLayer, event: events.Event):
    """An idle timeout is injected from a watchdog task and reaches the layer a moment later;
    if the flow's exchange ended meanwhile (its connection is between requests), it is
    dropped: mitmproxy would assert (and log "has crashed") on it."""
    if isinstance(event, events.MessageInjected) and isinstance(event.message, IdleTimeout) \
            and _stream_of(self, event.flow) is None:
        return
    yield from _layer_handle_event(self, event)


def install() -> None:
    """Make mitmproxy build our stream for every request (call before Master.run())."""
    http_layers.HttpStream = FailoverHttpStream  # HttpLayer.make_stream looks the name up here
    http_layers.HttpLayer._handle_event = _handle_event_or_drop_late_idle
