"""A raw capture upstream: a strict HTTP/1.1 server on loopback that records every request as it
arrived on the wire and answers like the Codex backend.

It exists for the wire-conformance tests: a client is run once straight at it and once through
the proxy, and the two captures are compared. So it keeps what a lenient server throws away:
the request line, the header fields in their original spelling, order and multiplicity, the
framing (Content-Length or chunked) and the raw bytes. It parses strictly, as a real front
(nginx, Cloudflare) does: a request without `Host` (or with two), a header with whitespace
before its colon, an obsolete folded line, a control character in a value, both Content-Length
and Transfer-Encoding, or an undecodable Content-Encoding is answered 400 -- and recorded, so a
test sees what was refused.

    cap = CaptureUpstream().start()
    cap.script(Answer.function_call("shell", {"command": ["echo", "hi"]}), Answer.text("done"))
    ... point a client at cap.url + "/backend-api/codex" ...
    req = cap.wait_for(2)[-1]          # CapturedRequest: .raw, .headers, .json, ...
    cap.stop()

`POST .../responses` answers take the scripted answers in order (then `cap.default`); other
paths answer JSON from `cap.routes` (`GET .../models` has a Codex-format model list).
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

try:  # Python 3.14+
    from compression import zstd
except ImportError:
    from backports import zstd

import gzip
import zlib

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
REQUEST_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/(\d)\.(\d)$")
MAX_LINE = 64 * 1024


class BadRequest(Exception):
    pass


@dataclass
class CapturedRequest:
    """One request as received. `headers` are (name, value) in wire order and spelling."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    raw_head: bytes
    raw_body: bytes          # the message body as framed on the wire (chunked framing included)
    body: bytes              # de-chunked, still content-encoded
    framing: str             # "content-length", "chunked" or "none"
    peer: tuple
    time: float = field(default_factory=time.time)
    status: int = 0          # what the capture answered
    error: str | None = None  # why it was refused (400), if it was

    @property
    def raw(self) -> bytes:
        return self.raw_head + self.raw_body

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.target).query, keep_blank_values=True)

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        found = self.values(name)
        assert len(found) <= 1, f"header {name} appears {len(found)} times"
        return found[0] if found else None

    @property
    def decoded(self) -> bytes:
        """The body with its Content-Encoding undone (Codex sends zstd to ChatGPT)."""
        return decode(self.body, ",".join(self.values("content-encoding")))

    @property
    def json(self) -> Any:
        data = self.decoded
        return json.loads(data) if data else None


def decode(body: bytes, encoding: str) -> bytes:
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding == "identity":
            continue
        if coding == "zstd":
            body = zstd.decompress(body)
        elif coding in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        elif coding == "deflate":
            body = zlib.decompress(body)
        else:
            raise BadRequest(f"unsupported Content-Encoding {coding!r}")
    return body


# --- answers ---------------------------------------------------------------------------------

@dataclass
class Answer:
    kind: str
    params: dict

    @staticmethod
    def text(text: str = "Hello from the capture", deltas: int = 3) -> "Answer":
        return Answer("text", {"text": text, "deltas": deltas})

    @staticmethod
    def function_call(name: str, arguments: Any, call_id: str = "call_capture_1") -> "Answer":
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return Answer("function_call", {"name": name, "arguments": args, "call_id": call_id})

    @staticmethod
    def json(body: Any, status: int = 200) -> "Answer":
        return Answer("json", {"body": body, "status": status})


def _pieces(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text)))
    return [text[i * len(text) // n:(i + 1) * len(text) // n] for i in range(n)]


def sse_events(answer: Answer, seq: int, model: str) -> list[tuple[str, dict]]:
    """The Responses stream for `answer`. Ids derive from `seq` (the
    request's number since the last reset), so two runs of one client see the same ids."""
    rid = f"resp_capture_{seq:04d}"
    events: list[tuple[str, dict]] = []

    def ev(kind: str, **data: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **data}))

    def envelope(status: str, output: list, usage: dict | None = None) -> dict:
        return {"id": rid, "object": "response", "created_at": 1_700_000_000 + seq, "status": status,
                "model": model, "output": output, "usage": usage}

    ev("response.created", response=envelope("in_progress", []))
    ev("response.in_progress", response=envelope("in_progress", []))
    if answer.kind == "text":
        text, item_id = answer.params["text"], f"msg_capture_{seq:04d}"
        item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        ids = {"item_id": item_id, "output_index": 0, "content_index": 0}
        ev("response.output_item.added", output_index=0, item=item)
        ev("response.content_part.added", **ids, part={"type": "output_text", "text": "", "annotations": []})
        for piece in _pieces(text, answer.params["deltas"]):
            ev("response.output_text.delta", **ids, delta=piece)
        ev("response.output_text.done", **ids, text=text)
        part = {"type": "output_text", "text": text, "annotations": []}
        ev("response.content_part.done", **ids, part=part)
        done = {**item, "status": "completed", "content": [part]}
    else:
        item_id, args = f"fc_capture_{seq:04d}", answer.params["arguments"]
        item = {"id": item_id, "type": "function_call", "status": "in_progress", "call_id": answer.params["call_id"],
                "name": answer.params["name"], "arguments": ""}
        ev("response.output_item.added", output_index=0, item=item)
        ev("response.function_call_arguments.delta", item_id=item_id, output_index=0, delta=args)
        ev("response.function_call_arguments.done", item_id=item_id, output_index=0, arguments=args)
        done = {**item, "status": "completed", "arguments": args}
    ev("response.output_item.done", output_index=0, item=done)
    usage = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 25}
    ev("response.completed", response=envelope("completed", [done], usage))
    return events


def codex_models() -> dict:
    """`GET {base}/models` in the ChatGPT format."""
    levels = [{"effort": e, "description": e} for e in ("low", "medium", "high")]
    return {"models": [{"slug": slug, "display_name": slug, "description": slug, "priority": i,
                        "default_reasoning_level": "medium", "supported_reasoning_levels": levels,
                        "visibility": "list", "supported_in_api": True, "context_window": 272000,
                        "shell_type": "shell_command"}
                       for i, slug in enumerate(("gpt-5-codex", "gpt-5.5"))]}


# --- the server ------------------------------------------------------------------------------

class _Handler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True

    def handle(self) -> None:
        owner: CaptureUpstream = self.server.owner  # type: ignore[attr-defined]
        while True:
            try:
                req = self._read_request()
            except (ConnectionError, OSError):
                return
            if req is None:
                return
            keep = owner._answer(self, req)
            if not keep:
                return

    # strict HTTP/1.1 request parsing (RFC 9112)
    def _line(self, raw: bytearray) -> bytes | None:
        line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return None
        raw += line
        if len(line) > MAX_LINE or not line.endswith(b"\r\n"):
            raise BadRequest("line too long or not CRLF-terminated")
        return line[:-2]

    def _read_request(self) -> CapturedRequest | None:
        head = bytearray()
        try:
            first = self._line(head)
            if first is None:
                return None
            m = REQUEST_LINE.match(first)
            if not m:
                raise BadRequest(f"bad request line {first[:100]!r}")
            method, target, major, minor = m.group(1).decode(), m.group(2).decode("latin-1"), m.group(3), m.group(4)
            if (major, minor) not in ((b"1", b"1"), (b"1", b"0")):
                raise BadRequest("unsupported HTTP version")
            headers: list[tuple[str, str]] = []
            while True:
                line = self._line(head)
                if line is None:
                    raise BadRequest("connection closed inside the header section")
                if line == b"":
                    break
                if line[:1] in (b" ", b"\t"):
                    raise BadRequest("obsolete line folding")
                name, sep, value = line.partition(b":")
                if not sep or not TOKEN.match(name):
                    raise BadRequest(f"bad header field name {name[:60]!r}")
                value = value.strip(b" \t")
                if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
                    raise BadRequest(f"control character in header {name.decode()}")
                headers.append((name.decode("latin-1"), value.decode("latin-1")))
        except BadRequest as exc:
            req = CapturedRequest("?", "?", "?", [], bytes(head), b"", b"", "none", self.client_address)
            req.error = str(exc)
            return req
        req = CapturedRequest(method, target, f"HTTP/{major.decode()}.{minor.decode()}", headers, bytes(head),
                              b"", b"", "none", self.client_address)
        try:
            self._read_body(req)
        except BadRequest as exc:
            req.error = str(exc)
        return req

    def _read_body(self, req: CapturedRequest) -> None:
        hosts = req.values("host")
        if len(hosts) != 1 or not hosts[0]:
            raise BadRequest(f"{len(hosts)} Host headers (HTTP/1.1 requires exactly one)")
        lengths = req.values("content-length")
        codings = req.values("transfer-encoding")
        if lengths and codings:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        raw = bytearray()
        if codings:
            if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
                raise BadRequest(f"unsupported Transfer-Encoding {codings}")
            req.framing = "chunked"
            body = bytearray()
            while True:
                size_line = self._line(raw)
                if size_line is None:
                    raise BadRequest("connection closed inside a chunked body")
                size_text = size_line.split(b";")[0].strip()
                if not re.fullmatch(rb"[0-9A-Fa-f]+", size_text):
                    raise BadRequest(f"bad chunk size {size_line[:40]!r}")
                size = int(size_text, 16)
                if size == 0:
                    while self._line(raw) not in (b"", None):
                        pass
                    break
                data = self.rfile.read(size + 2)
                raw += data
                if len(data) != size + 2 or not data.endswith(b"\r\n"):
                    raise BadRequest("truncated chunk")
                body += data[:-2]
            req.body = bytes(body)
        elif lengths:
            if len(set(lengths)) != 1 or not all(v.isdigit() for v in lengths):
                raise BadRequest(f"bad Content-Length {lengths}")
            req.framing = "content-length"
            n = int(lengths[0])
            data = self.rfile.read(n)
            raw += data
            if len(data) != n:
                raise BadRequest("body shorter than Content-Length")
            req.body = bytes(data)
        req.raw_body = bytes(raw)
        if req.body and req.values("content-encoding"):
            try:
                req.decoded
            except Exception as exc:  # zstd/gzip errors differ by library
                raise BadRequest(f"undecodable body: {exc}") from None


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class CaptureUpstream:
    CODEX_PATH = "/backend-api/codex"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self.requests: list[CapturedRequest] = []
        self.default = Answer.text()
        self.routes: dict[str, Answer] = {}
        self.response_headers: list[tuple[str, str]] = []  # added to every /responses answer (e.g. x-codex-turn-state)
        self._script: list[Answer] = []
        self._seq = 0

    # lifecycle
    def start(self) -> "CaptureUpstream":
        self._thread = threading.Thread(target=self._server.serve_forever, name="capture-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "CaptureUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def authority(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"

    @property
    def codex_base(self) -> str:
        return self.url + self.CODEX_PATH

    # scripting and inspection
    def reset(self, default: Answer | None = None) -> None:
        with self._cond:
            self.requests.clear()
            self._script.clear()
            self._seq = 0
            self.default = default or Answer.text()
            self.response_headers = []

    def script(self, *answers: Answer) -> None:
        with self._cond:
            self._script.extend(answers)

    def wait_for(self, n: int, timeout: float = 60, match=None) -> list[CapturedRequest]:
        """The captured requests (those `match` accepts) once there are at least `n` of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self.requests if match is None or match(r)]
                if len(found) >= n:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"capture: {len(found)} of {n} requests after {timeout}s: "
                                         f"{[(r.method, r.target, r.status) for r in self.requests]}")
                self._cond.wait(left)

    def responses(self) -> list[CapturedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/responses")]

    # answering
    def _answer(self, handler: _Handler, req: CapturedRequest) -> bool:
        """Answer `req`; it is recorded (with its status) before the first byte of the answer
        goes out, so a client that has its answer finds its request in `requests`."""
        with self._cond:
            if req.error is None and req.method == "POST" and req.path.endswith("/responses"):
                self._seq += 1
                seq = self._seq
                answer = self._script.pop(0) if self._script else self.default
            else:
                seq, answer = 0, None
        close = req.error is not None or "close" in ",".join(req.values("connection")).lower()
        events = None
        if req.error is not None:
            status, payload = 400, {"error": {"message": req.error, "type": "invalid_request_error"}}
        elif answer is not None:
            try:
                body = req.json
            except ValueError:
                body = None
            if not isinstance(body, dict):
                status, payload = 400, {"error": {"message": "body is not a JSON object"}}
            elif body.get("stream") is not True:  # the backend's two rules
                status, payload = 400, {"detail": "Stream must be set to true"}
            elif body.get("store") is not False:
                status, payload = 400, {"detail": "Store must be set to false"}
            elif answer.kind == "json":
                status, payload = answer.params["status"], answer.params["body"]
            else:
                status, payload, events = 200, None, sse_events(answer, seq, str(body.get("model")))
        else:
            route = next((a for suffix, a in self.routes.items() if req.path.endswith(suffix)), None)
            if route is None and req.method == "GET" and req.path.endswith("/models"):
                route = Answer.json(codex_models())
            if route is None:
                route = Answer.json({"error": {"message": f"no route {req.method} {req.path}"}}, 404)
            status, payload = route.params["status"], route.params["body"]
        req.status = status
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        if events is not None:
            self._send_sse(handler, events, close)
        else:
            self._send_json(handler, status, payload, close)
        return not close

    @staticmethod
    def _head(status: int, headers: list[tuple[str, str]], close: bool) -> bytes:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_json(self, handler: _Handler, status: int, body: Any, close: bool) -> None:
        data = json.dumps(body).encode()
        handler.wfile.write(self._head(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))], close) + data)

    def _send_sse(self, handler: _Handler, events: list[tuple[str, dict]], close: bool) -> None:
        handler.wfile.write(self._head(200, [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                                             *self.response_headers, ("Transfer-Encoding", "chunked")], close))
        for kind, data in events:
            chunk = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            handler.wfile.write(b"%X\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.write(b"0\r\n\r\n")


if __name__ == "__main__":  # python -m tests.capture_upstream: serve and print what arrives
    with CaptureUpstream() as cap:
        print(f"capture upstream at {cap.codex_base}", flush=True)
        seen = 0
        while True:
            reqs = cap.wait_for(seen + 1, timeout=3600)
            for r in reqs[seen:]:
                print(r.raw_head.decode("latin-1"), r.decoded[:2000], "\n", flush=True)
            seen = len(reqs)


@pytest.fixture
def capture():
    """A capture upstream for one test (tests/test_wire.py, tests/test_wire_conformance.py)."""
    with CaptureUpstream() as cap:
        yield cap
