"""What mitmproxy's HTTP/1 server answers on its own, made fit for a gateway.

- Errors it produces itself (malformed requests, a connect failure nobody handled) are JSON
  in OpenAI's error shape, not mitmproxy's HTML page with its version in a Server header.
- A request head is capped at MAX_REQUEST_HEAD bytes (431): mitmproxy buffers a head whole
  until its blank line, so without a cap one connection can grow the process by gigabytes.
- A request head must be complete within `server.head_timeout_s` of its first byte (408):
  mitmproxy itself waits for the rest of a head forever (only its 10-minute idle timeout
  ends it), so a few slow clients could hold sockets indefinitely.
- A connection mitmproxy decides to close is really closed (see `install`).

Like failover.py this rebinds names inside mitmproxy (pinned to the tested 12.3.1);
tests/test_reliability.py and tests/test_hardening.py cover these behaviours.
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, server
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1

MAX_REQUEST_HEAD = 64 * 1024
DEFAULT_HEAD_TIMEOUT_S = 30.0


def json_error_response(status_code: int, message: str = "") -> bytes:
    """Drop-in for mitmproxy's make_error_response."""
    if status_code == 400 and "CONNECT request" in message:
        # mitmproxy's reverse mode refuses CONNECT before any addon sees it, with a message
        # about its own configuration: say what it means here.
        status_code, message = 405, "CONNECT is not supported: this is a gateway, not a forward proxy."
    try:
        reason = HTTPStatus(status_code).phrase
    except ValueError:
        reason = "Error"
    body = {"error": {"message": message or reason, "type": "invalid_request_error" if status_code < 500 else "server_error",
                      "code": reason.lower().replace(" ", "_").replace("-", "_"), "param": None}}
    resp = http.Response.make(status_code, json.dumps(body), {"content-type": "application/json", "connection": "close"})
    return http1.assemble_response(resp)


class CappedHttp1Server(_http1.Http1Server):
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S  # set by install() from the config
    _head_deadline: float | None = None  # monotonic time by which the head being read must be complete
    _answered_any = False

    def _handle_event(self, event: events.Event):
        if isinstance(event, events.Wakeup):
            yield from self._head_timer_fired()
            return
        yield from super()._handle_event(event)
        yield from self._arm_head_timer()

    def _waiting_for_head(self) -> bool:
        return self.state == self.read_headers

    def _arm_head_timer(self):
        if not self._waiting_for_head():
            if self.state != self.start:
                self._answered_any = True
            self._head_deadline = None
            return
        # A fresh connection must send its head in time; a kept-alive one may stay idle
        # between requests (mitmproxy's own idle timeout ends that) until a head starts.
        started = len(self.buf) > 0 or not self._answered_any
        if started and self._head_deadline is None:
            self._head_deadline = time.monotonic() + self.head_timeout_s
            yield commands.RequestWakeup(self.head_timeout_s)

    def _head_timer_fired(self):
        # Wakeups cannot be cancelled: one armed for an earlier head may arrive late.
        if not self._waiting_for_head() or self._head_deadline is None or time.monotonic() < self._head_deadline - 0.01:
            return
        message = f"The request head was not complete within server.head_timeout_s ({self.head_timeout_s:g} s)."
        yield from self._refuse(408, message)

    def _refuse(self, status: int, message: str):
        yield commands.SendData(self.conn, json_error_response(status, message))
        yield commands.CloseConnection(self.conn)
        # A new buffer, not .clear(): mitmproxy 12.3 uses h11's ReceiveBuffer, which has none.
        self.buf = type(self.buf)()
        self.state = self.done
        self._head_deadline = None

    def read_headers(self, event: events.ConnectionEvent):
        yield from super().read_headers(event)
        if self.state == self.read_headers and len(self.buf) > MAX_REQUEST_HEAD:
            yield from self._refuse(431, f"Request headers are larger than {MAX_REQUEST_HEAD} bytes.")


_original_handle_connection = server.ConnectionHandler.handle_connection


async def _handle_connection_closing_on_cancel(self, connection):
    """mitmproxy closes a connection by cancelling the task that reads it. When that task is
    waiting for the event lock at that moment (the client is still sending, e.g. a body over
    body_size_limit that was just answered with 413 "connection: close"), the cancellation
    skips the socket's close: the client waited for an end that never came, and the socket
    leaked. Close it here whatever way the task ends."""
    try:
        await _original_handle_connection(self, connection)
    finally:
        io = self.transports.pop(connection, None)  # the normal path has popped it already
        if io is not None and io.writer is not None:
            try:
                io.writer.close()
            except OSError:
                pass


def install(head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S) -> None:
    CappedHttp1Server.head_timeout_s = head_timeout_s
    _http1.make_error_response = json_error_response  # looked up at call time by the server
    http_layers.Http1Server = CappedHttp1Server  # HttpLayer builds client connections from this name
    server.ConnectionHandler.handle_connection = _handle_connection_closing_on_cancel
