"""What mitmproxy's HTTP/1 server answers on its own, made fit for a gateway.

- Errors it produces itself (malformed requests, a connect failure nobody handled) are JSON
  in OpenAI's error shape, not mitmproxy's HTML page with its version in a Server header.
- A request head is capped at MAX_REQUEST_HEAD bytes (431): mitmproxy buffers a head whole
  until its blank line, so without a cap one connection can grow the process by gigabytes.

Like failover.py this rebinds names inside mitmproxy (pinned to the tested 12.3.1);
tests/test_reliability.py covers both behaviours.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1

MAX_REQUEST_HEAD = 64 * 1024


def json_error_response(status_code: int, message: str = "") -> bytes:
    """Drop-in for mitmproxy's make_error_response."""
    try:
        reason = HTTPStatus(status_code).phrase
    except ValueError:
        reason = "Error"
    body = {"error": {"message": message or reason, "type": "invalid_request_error" if status_code < 500 else "server_error",
                      "code": reason.lower().replace(" ", "_").replace("-", "_"), "param": None}}
    resp = http.Response.make(status_code, json.dumps(body), {"content-type": "application/json", "connection": "close"})
    return http1.assemble_response(resp)


class CappedHttp1Server(_http1.Http1Server):
    def read_headers(self, event: events.ConnectionEvent):
        yield from super().read_headers(event)
        if self.state == self.read_headers and len(self.buf) > MAX_REQUEST_HEAD:
            message = f"Request headers are larger than {MAX_REQUEST_HEAD} bytes."
            yield commands.SendData(self.conn, json_error_response(431, message))
            yield commands.CloseConnection(self.conn)
            # A new buffer, not .clear(): mitmproxy 12.3 uses h11's ReceiveBuffer, which has none.
            self.buf = type(self.buf)()
            self.state = self.done


def install() -> None:
    _http1.make_error_response = json_error_response  # looked up at call time by the server
    http_layers.Http1Server = CappedHttp1Server  # HttpLayer builds client connections from this name
