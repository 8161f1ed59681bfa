"""In-process fake of the ChatGPT Codex backend and OpenAI's OAuth issuer (standard library only).

Used by the test-suite and the benchmarks; faithful to the Codex backend and OpenAI's OAuth issuer as real clients see them::

    fake = FakeUpstream().start()              # or: with FakeUpstream() as fake: ...
    acct = fake.add_account(email="a@x.com", plan="plus")
    fake.script(acct.account_id, B.usage_limit(), B.ok(text="hi"))
    ... point the proxy at fake.codex_base / fake.usage_base / fake.issuer ...
    fake.stop()

The fake itself speaks plain, lenient HTTP (`http.server`). The test-suite puts nginx with TLS in
front of it (`tests/strict_upstream.py`) and calls `fake.set_public(url, ca_file)`: from then on
`url`, `codex_base`, `usage_base`, `issuer` and `fallback_base` give the strict https front, while
`raw_url` still reaches the fake directly. Also an API-key style fallback upstream (like
api.openai.com): `POST /v1/responses` with `Authorization: Bearer <fake.fallback_api_key>`, scripted
under the name `FakeUpstream.FALLBACK`, recorded in `fake.fallback_requests`.

Run ``python tests/fakeupstream.py --port 0``: prints the URL, then a demo account's auth.json path.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import logging
import os
import secrets
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

try:  # Python 3.14+
    from compression import zstd
except ImportError:  # older Pythons: the backport mitmproxy itself depends on
    from backports import zstd

log = logging.getLogger("fakeupstream")

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
AUTH_CLAIM = "https://api.openai.com/auth"
REAL_ISSUER = "https://auth.openai.com"
WINDOWS = (("primary", 300), ("secondary", 10080))  # (name, window minutes): 5 hours, 7 days
_KEEP = object()


# ----------------------------------------------------------------------------------------- helpers
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(payload: dict) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}.sig"


def decode_jwt(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def pkce_challenge(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode()).digest())


def _rid(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _split(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text)))
    return [text[i * len(text) // n:(i + 1) * len(text) // n] for i in range(n)] if text else []


def _model(slug: str, priority: int) -> dict:
    levels = [{"effort": e, "description": e} for e in ("low", "medium", "high")]
    return {"slug": slug, "display_name": slug, "description": f"{slug} (fake)", "priority": priority,
            "default_reasoning_level": "medium", "supported_reasoning_levels": levels,
            "visibility": "list", "supported_in_api": True, "context_window": 272000,
            "shell_type": "shell_command"}


DEFAULT_MODELS = [_model(s, i) for i, s in enumerate(["gpt-5-codex", "gpt-5.5", "gpt-5", "gpt-5-codex-mini"])]


# ------------------------------------------------------------------------------------- behaviours
@dataclass(frozen=True)
class Behaviour:
    kind: str
    params: dict = field(default_factory=dict)


def _b(kind: str, **params) -> Behaviour:
    return Behaviour(kind, params)


class B:
    """Behaviour constructors. Options every behaviour takes: first_delay (seconds before the status
    line), headers (extra response headers). Stream options: rate_limits=True (a codex.rate_limits event
    first), model, usage (dict merged into response.usage), delay (between events), delta_delay,
    split (seconds: each event sent in two pieces cut inside its data line, that long apart),
    tail_delay (seconds the stream stays open after its last event, as a real one may)."""
    ok = staticmethod(lambda text="Hello", deltas=3, delay=0.0, empty_output=False, **o:
                      _b("ok", text=text, deltas=deltas, delay=delay, empty_output=empty_output, **o))
    slow = staticmethod(lambda delay=0.5, text="Hello", deltas=3, **o:
                        _b("slow", text=text, deltas=deltas, delay=delay, **o))
    drip = staticmethod(lambda delay=0.2, count=5, text=None, **o:  # `count` deltas, `delay` before each
                        _b("drip", text=text or "".join(f"t{i} " for i in range(count)), deltas=count,
                           delta_delay=delay, **o))
    reasoning = staticmethod(lambda summary="Thinking it over.", text="Hello", deltas=3, **o:
                             _b("reasoning", summary=summary, text=text, deltas=deltas, **o))
    @staticmethod
    def tool_call(name="get_weather", arguments='{"city": "Paris"}', parallel=False, calls=None, text=None,
                  deltas=3, **o) -> Behaviour:
        """calls=[(name, arguments), ...] overrides; parallel=True makes two calls; text adds a message after."""
        if calls is None:
            calls = [(name, arguments)] + ([(name, '{"city": "Tokyo"}')] if parallel else [])
        return _b("tool_call", calls=list(calls), text=text, deltas=deltas, **o)

    echo = staticmethod(lambda deltas=3, **o: _b("echo", deltas=deltas, **o))
    cut = staticmethod(lambda after_events=3, rst=False, text="Hello", deltas=3, **o:
                       _b("cut", after_events=after_events, rst=rst, text=text, deltas=deltas, **o))
    no_completed = staticmethod(lambda text="Hello", deltas=3, **o: _b("no_completed", text=text, deltas=deltas, **o))
    failed = staticmethod(lambda code="server_is_overloaded", message=None, **o:
                          _b("failed", code=code, message=message or f"fake failure: {code}", **o))
    incomplete = staticmethod(lambda reason="max_output_tokens", text="Hel", **o:
                              _b("incomplete", reason=reason, text=text, deltas=1, **o))
    error_event = staticmethod(lambda code="server_error", message="fake error event", **o:
                               _b("error_event", code=code, message=message, **o))
    events = staticmethod(lambda events, **o: _b("events", events=list(events), **o))  # [(type, data)]
    hang = staticmethod(lambda seconds=None: _b("hang", seconds=seconds))
    usage_limit = staticmethod(lambda resets_in=3600, plan="plus", message="The usage limit has been reached", **o:
                               _b("usage_limit", resets_in=resets_in, plan=plan, message=message, **o))
    rate_limited = staticmethod(lambda retry_after=1, **o: _b("rate_limited", retry_after=retry_after, **o))
    unauthorized = staticmethod(lambda **o: _b("unauthorized", **o))
    deactivated = staticmethod(lambda status=403, **o: _b("deactivated", status=status, **o))
    cloudflare = staticmethod(lambda **o: _b("cloudflare", **o))
    server_error = staticmethod(lambda status=500, **o: _b("server_error", status=status, **o))
    bad_request = staticmethod(lambda message="Invalid request (fake)", **o: _b("bad_request", message=message, **o))
    big_error = staticmethod(lambda status=500, size_bytes=2_000_000, **o:
                             _b("big_error", status=status, size_bytes=size_bytes, **o))
    status = staticmethod(lambda status, body=b"", content_type="application/json", **o:
                          _b("status", status=status, body=body, content_type=content_type, **o))


def as_behaviour(b: Behaviour | str) -> Behaviour:
    """Accept a Behaviour or the name of a B constructor ("ok", "usage_limit", ...)."""
    if isinstance(b, Behaviour):
        return b
    ctor = getattr(B, str(b), None)
    if ctor is None or str(b).startswith("_"):
        raise ValueError(f"unknown behaviour {b!r}")
    return ctor() if b != "status" else ctor(200)


_STREAM_KINDS = {"ok", "slow", "drip", "echo", "cut", "no_completed", "reasoning", "tool_call", "failed",
                 "incomplete", "error_event", "events"}


class _Resp:
    """Builds the SSE events of one Responses API answer."""

    def __init__(self, model: str):
        self.id, self.model, self.created = _rid("resp_"), model, int(time.time())
        self.events: list[tuple[str, dict]] = []
        self.output: list[dict] = []

    def ev(self, type_: str, **data) -> None:
        self.events.append((type_, {"type": type_, "sequence_number": len(self.events), **data}))

    def envelope(self, status: str, output: list | None = None, **extra) -> dict:
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "model": self.model, "output": output if output is not None else [], "usage": None, **extra}

    def start(self) -> None:
        self.ev("response.created", response=self.envelope("in_progress"))
        self.ev("response.in_progress", response=self.envelope("in_progress"))

    def message(self, text: str, deltas: int) -> None:
        idx, item_id = len(self.output), _rid("msg_")
        item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        ids = {"item_id": item_id, "output_index": idx, "content_index": 0}
        self.ev("response.output_item.added", output_index=idx, item=item)
        self.ev("response.content_part.added", **ids, part=part)
        for piece in _split(text, deltas):
            self.ev("response.output_text.delta", **ids, delta=piece)
        self.ev("response.output_text.done", **ids, text=text)
        done_part = {**part, "text": text}
        self.ev("response.content_part.done", **ids, part=done_part)
        self._done(idx, {**item, "status": "completed", "content": [done_part]})

    def reasoning(self, summary: str, deltas: int) -> None:
        idx, item_id = len(self.output), _rid("rs_")
        ids = {"item_id": item_id, "output_index": idx, "summary_index": 0}
        self.ev("response.output_item.added", output_index=idx,
                item={"id": item_id, "type": "reasoning", "summary": []})
        self.ev("response.reasoning_summary_part.added", **ids, part={"type": "summary_text", "text": ""})
        for piece in _split(summary, deltas):
            self.ev("response.reasoning_summary_text.delta", **ids, delta=piece)
        self.ev("response.reasoning_summary_text.done", **ids, text=summary)
        self.ev("response.reasoning_summary_part.done", **ids, part={"type": "summary_text", "text": summary})
        self._done(idx, {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": summary}],
                         "encrypted_content": "enc_" + secrets.token_hex(16)})

    def function_call(self, name: str, arguments: Any, deltas: int) -> None:
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        idx, item_id, call_id = len(self.output), _rid("fc_"), _rid("call_")
        item = {"id": item_id, "type": "function_call", "status": "in_progress", "call_id": call_id,
                "name": name, "arguments": ""}
        self.ev("response.output_item.added", output_index=idx, item=item)
        for piece in _split(args, deltas):
            self.ev("response.function_call_arguments.delta", item_id=item_id, output_index=idx, delta=piece)
        self.ev("response.function_call_arguments.done", item_id=item_id, output_index=idx, arguments=args)
        self._done(idx, {**item, "status": "completed", "arguments": args})

    def compaction(self, input_items: list) -> None:
        """Remote compaction v2 (codexproxy/codexconfig.py): one `compaction` output item."""
        idx = len(self.output)
        summary = "enc_compaction_" + hashlib.sha256(json.dumps(input_items).encode()).hexdigest()[:32]
        self.ev("response.output_item.added", output_index=idx, item={"id": _rid("cmp_"), "type": "compaction"})
        self._done(idx, {"id": _rid("cmp_"), "type": "compaction", "encrypted_content": summary})

    def _done(self, idx: int, item: dict) -> None:
        self.output.append(item)
        self.ev("response.output_item.done", output_index=idx, item=item)

    def finish(self, type_: str, status: str, usage: dict | None, empty_output=False, **extra) -> None:
        output = [] if empty_output else list(self.output)
        self.ev(type_, response={**self.envelope(status, output, **extra), "usage": usage})


# --------------------------------------------------------------------------------- state records
@dataclass
class FakeAccount:
    email: str
    plan: str
    account_id: str
    user_id: str
    access_token: str = ""
    refresh_token: str = ""
    id_token: str = ""
    usage: dict = field(default_factory=dict)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    json: Any
    account_id: str | None
    time: float
    peer: tuple | None = None  # client (host, port): equal ports on successive requests = keep-alive
    raw_body: bytes = b""      # as received; `body` is it decoded (Content-Encoding zstd/gzip/deflate)


def decode_body(raw: bytes, content_encoding: str) -> bytes:
    """Undo Content-Encoding (codings applied in order, so undone in reverse). Codex compresses its
    request bodies with zstd (peers also see gzip). ValueError for undecodable data, LookupError
    for a coding the real backend would not know either."""
    data = raw
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",") if c.strip()]):
        try:
            if coding == "identity":
                continue
            if coding in ("gzip", "x-gzip"):
                data = gzip.decompress(data)
            elif coding == "deflate":  # RFC 9110 says zlib-wrapped; some clients send raw deflate
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    data = zlib.decompress(data, -zlib.MAX_WBITS)
            elif coding == "zstd":
                data = zstd.decompress(data)
            else:
                raise LookupError(coding)
        except (OSError, EOFError, zlib.error, zstd.ZstdError) as exc:
            raise ValueError(f"cannot decode a {coding} body: {exc}") from None
    return data


# ------------------------------------------------------------------------------ server machinery
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, owner):
        self.owner, self.conns, self.conns_lock = owner, set(), threading.Lock()
        super().__init__(addr, handler)

    def server_bind(self):  # HTTPServer.server_bind calls getfqdn(): a DNS lookup we do not want
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):  # keep tracebacks off stderr
        log.debug("connection error from %s", client_address, exc_info=True)


class _BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakeupstream/1.0"
    disable_nagle_algorithm = True  # else header/body writes meet delayed ACKs: +40 ms per keep-alive request

    def setup(self):
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)
        self.server.owner._on_connect(self)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self):
        self.sent = False
        try:
            url = urlsplit(self.path)
            self.route, self.raw_body = url.path, self._read_body()
            self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            self.hdrs = {k.lower(): v for k, v in self.headers.items()}
            # Behind nginx the TCP peer is nginx; it passes on the client's own (host:port).
            self.peer = self.client_address
            front_peer = self.hdrs.pop("x-fake-peer", "")
            if front_peer.rpartition(":")[2].isdigit():
                host, _, port = front_peer.rpartition(":")
                self.peer = (host, int(port))
            self.body, self.body_error = self.raw_body, None
            try:
                self.body = decode_body(self.raw_body, self.hdrs.get("content-encoding", ""))
            except LookupError as exc:
                self.body_error = (415, f"Unsupported Content-Encoding: {exc}")
            except ValueError as exc:
                self.body_error = (400, str(exc))
            self.server.owner._dispatch(self)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception:
            tb = traceback.format_exc()
            log.error("fakeupstream handler error:\n%s", tb)
            self.server.owner.errors.append(tb)
            if self.sent:
                self.abort()
            else:
                try:
                    self.send(500, {"error": {"message": "fake upstream internal error", "type": "server_error"}})
                except OSError:
                    self.abort()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def json_body(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def form(self) -> dict:
        data = self.json_body()
        if isinstance(data, dict):
            return data
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def send(self, status: int, body: Any = b"", ctype: str = "application/json", headers: dict | None = None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.sent = True
        self.end_headers()
        self.wfile.write(body)

    def start_chunked(self, headers: dict):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.sent = True
        self.end_headers()

    def chunk(self, data: bytes):  # wfile is unbuffered: one sendall per event = flushed per event
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def abort(self, rst: bool = False):
        """Close the connection at once (no chunked terminator, no answer)."""
        self.close_connection = True
        try:
            if rst:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _ServerBase:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self.errors: list[str] = []  # tracebacks of handler exceptions (tests may assert it stays empty)

    def start(self):
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self._handler_class, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        self._stopping.set()  # wakes hanging / slow handlers
        srv.shutdown()
        with srv.conns_lock:
            conns = list(srv.conns)
        for c in conns:  # idle keep-alive and hanging connections
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        srv.server_close()
        if self._thread:
            self._thread.join(5)

    public_url: str | None = None  # the front (nginx) clients should use; None: the server itself
    ca_file: str | None = None     # the CA that signed the front's certificate

    def set_public(self, url: str | None, ca_file: str | None = None) -> None:
        self.public_url, self.ca_file = (url.rstrip("/") if url else None), ca_file

    @property
    def raw_url(self) -> str:
        """This server itself (plain HTTP), bypassing any front."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.public_url or self.raw_url

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for a client of `url` (a browser in the login tests): the front's CA only."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _on_connect(self, h: _BaseHandler) -> None:
        pass


# ------------------------------------------------------------------------------------ the fake
class FakeUpstream(_ServerBase):
    _handler_class = _BaseHandler
    FALLBACK = "fallback"  # script(FALLBACK, ...) / set_default(FALLBACK, ...): the fallback upstream's answers

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.accounts: dict[str, FakeAccount] = {}
        self._access: dict[str, str] = {}     # access token -> account id (every token ever issued)
        self._expired: set[str] = set()
        self._refresh: dict[str, str] = {}    # live refresh token -> account id
        self._dead_refresh: dict[str, str] = {}  # dead refresh token -> error code
        self.reset()

    def reset(self) -> None:
        """Forget scripts, defaults, records and login/device state and put every knob back to its
        default; keep accounts and their tokens. Requests hanging in B.hang() are released (closed
        without an answer)."""
        with self._lock:
            # knobs tests may turn (every one of them is restored here)
            self.models: list[dict] = [dict(m) for m in DEFAULT_MODELS]
            self.token_ttl = 3600
            self.device_interval = 1
            self.fallback_api_key = "sk-fallback-test"
            self.refresh_delay = 0.0
            self.authorize_error: str | None = None
            self.next_login_account: FakeAccount | None = None
            self.device_auto_approve_after: int | None = None
            # state
            getattr(self, "_release", threading.Event()).set()
            self._release = threading.Event()
            self._scripts: dict[str, deque] = {}
            self._defaults: dict[str, Behaviour] = {}
            self._usage_behaviour: dict[str, str] = {}
            self.requests: list[RecordedRequest] = []      # POST .../codex/responses only
            self.fallback_requests: list[RecordedRequest] = []  # POST /v1/responses (the fallback upstream)
            self.all_requests: list[RecordedRequest] = []  # every request to the fake
            self.errors.clear()
            self.refresh_calls = 0
            self._codes: dict[str, dict] = {}
            self._devices: dict[str, dict] = {}

    # -- urls
    codex_base = property(lambda self: self.url + "/backend-api/codex")
    usage_base = property(lambda self: self.url + "/backend-api")
    issuer = property(lambda self: self.url)
    fallback_base = property(lambda self: self.url + "/v1")  # API-key style, like https://api.openai.com/v1

    # -- accounts and tokens
    def add_account(self, email: str | None = None, plan: str = "plus", account_id: str | None = None) -> FakeAccount:
        with self._lock:
            acct = FakeAccount(email=email or f"user{len(self.accounts) + 1}@example.com", plan=plan,
                               account_id=account_id or str(uuid.uuid4()), user_id=_rid("user-"))
            self.accounts[acct.account_id] = acct
            self.set_usage(acct.account_id, primary=0.0, secondary=0.0, primary_reset_in=18000,
                           secondary_reset_in=604800, has_credits=False, balance="0", unlimited=False)
            self._issue(acct)
            return acct

    def _issue(self, acct: FakeAccount) -> dict:
        now = int(time.time())
        claims = {"chatgpt_account_id": acct.account_id, "chatgpt_plan_type": acct.plan,
                  "chatgpt_user_id": acct.user_id, "user_id": acct.user_id}
        acct.id_token = make_jwt({"iss": REAL_ISSUER, "aud": [CLIENT_ID], "sub": acct.user_id, "email": acct.email,
                                  "email_verified": True, "iat": now, "auth_time": now,
                                  "exp": now + self.token_ttl, AUTH_CLAIM: claims})
        acct.access_token = make_jwt({"iss": REAL_ISSUER, "aud": ["https://api.openai.com/v1"], "sub": acct.user_id,
                                      "iat": now, "exp": now + self.token_ttl, "jti": str(uuid.uuid4()),
                                      "scp": ["openid", "profile", "email", "offline_access"], AUTH_CLAIM: claims,
                                      "https://api.openai.com/profile": {"email": acct.email}})
        acct.refresh_token = "rt_" + secrets.token_urlsafe(32)
        self._access[acct.access_token] = acct.account_id
        self._refresh[acct.refresh_token] = acct.account_id
        return {"id_token": acct.id_token, "access_token": acct.access_token, "refresh_token": acct.refresh_token,
                "expires_in": self.token_ttl, "token_type": "Bearer", "scope": "openid profile email offline_access"}

    def auth_json(self, acct: FakeAccount) -> dict:
        return {"auth_mode": "chatgpt", "OPENAI_API_KEY": None,
                "tokens": {"id_token": acct.id_token, "access_token": acct.access_token,
                           "refresh_token": acct.refresh_token, "account_id": acct.account_id},
                "last_refresh": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}

    def write_auth_json(self, acct: FakeAccount, directory: str) -> str:
        path = os.path.join(directory, "auth.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.auth_json(acct), f, indent=2)
        return path

    def expire_access_token(self, acct: FakeAccount) -> None:
        """Every access token issued so far for this account now gets 401 (refresh to get a new one)."""
        with self._lock:
            self._expired.update(t for t, a in self._access.items() if a == acct.account_id)

    def invalidate_refresh(self, acct: FakeAccount, code: str = "refresh_token_expired") -> None:
        with self._lock:
            for tok in [t for t, a in self._refresh.items() if a == acct.account_id]:
                del self._refresh[tok]
                self._dead_refresh[tok] = code

    # -- behaviours and usage
    def _aid(self, a) -> str:
        return a.account_id if isinstance(a, FakeAccount) else a

    def script(self, account_id, *behaviours) -> None:
        with self._lock:
            self._scripts.setdefault(self._aid(account_id), deque()).extend(as_behaviour(b) for b in behaviours)

    def set_default(self, account_id, behaviour) -> None:
        with self._lock:
            self._defaults[self._aid(account_id)] = as_behaviour(behaviour)

    def default_behaviour(self, account_id) -> Behaviour:
        return self._defaults.get(self._aid(account_id)) or B.ok()

    def next_behaviour(self, account_id) -> Behaviour:
        with self._lock:
            queue = self._scripts.get(self._aid(account_id))
            return queue.popleft() if queue else self.default_behaviour(account_id)

    def set_usage(self, account_id, primary=_KEEP, secondary=_KEEP, primary_reset_in=_KEEP,
                  secondary_reset_in=_KEEP, has_credits=_KEEP, balance=_KEEP, unlimited=_KEEP) -> None:
        """Used percents (None = window absent), resets in seconds from now, credits."""
        with self._lock:
            u, now = self.accounts[self._aid(account_id)].usage, int(time.time())
            for key, val in (("primary", primary), ("secondary", secondary), ("has_credits", has_credits),
                             ("balance", balance), ("unlimited", unlimited)):
                if val is not _KEEP:
                    u[key] = val
            for w, val in (("primary", primary_reset_in), ("secondary", secondary_reset_in)):
                if val is not _KEEP:
                    u[w + "_reset_at"] = now + int(val)

    def set_usage_behaviour(self, account_id, behaviour: str) -> None:
        assert behaviour in ("ok", "unauthorized", "server_error"), behaviour
        with self._lock:
            self._usage_behaviour[self._aid(account_id)] = behaviour

    def usage_headers(self, acct: FakeAccount) -> dict:
        u, h = acct.usage, {}
        for w, minutes in WINDOWS:
            if u.get(w) is not None:
                h[f"x-codex-{w}-used-percent"] = str(float(u[w]))
                h[f"x-codex-{w}-window-minutes"] = str(minutes)
                h[f"x-codex-{w}-reset-at"] = str(u[w + "_reset_at"])
        h["x-codex-credits-has-credits"] = str(bool(u["has_credits"])).lower()
        h["x-codex-credits-unlimited"] = str(bool(u["unlimited"])).lower()
        h["x-codex-credits-balance"] = str(u["balance"])
        return h

    def usage_json(self, acct: FakeAccount) -> dict:
        u, now = acct.usage, int(time.time())

        def window(w, minutes):
            if u.get(w) is None:
                return None
            return {"used_percent": u[w], "limit_window_seconds": minutes * 60,
                    "reset_after_seconds": max(0, u[w + "_reset_at"] - now), "reset_at": u[w + "_reset_at"]}
        reached = any(u.get(w) is not None and u[w] >= 100 for w, _ in WINDOWS)
        return {"plan_type": acct.plan,
                "rate_limit": {"allowed": not reached, "limit_reached": reached,
                               "primary_window": window(*WINDOWS[0]), "secondary_window": window(*WINDOWS[1])},
                "credits": {"has_credits": u["has_credits"], "unlimited": u["unlimited"], "balance": u["balance"]}}

    # -- device flow
    def approve_device(self, user_code: str, account: FakeAccount | None = None) -> None:
        with self._lock:
            dev = next(d for d in self._devices.values() if d["user_code"] == user_code)
            dev["approved"], dev["account"] = True, account or dev["account"]

    def _new_code(self, acct: FakeAccount, redirect_uri: str, challenge: str) -> str:
        code = _rid("ac_")
        self._codes[code] = {"account_id": acct.account_id, "redirect_uri": redirect_uri, "challenge": challenge}
        return code

    def _login_account(self) -> FakeAccount:
        return self.next_login_account or self.add_account()

    # -- request handling
    def _record(self, h: _BaseHandler, account_id: str | None, into: list | None) -> RecordedRequest:
        rec = RecordedRequest(h.command, h.route, h.query, h.hdrs, h.body, h.json_body(), account_id,
                              time.time(), h.peer, h.raw_body)
        with self._lock:
            self.all_requests.append(rec)
            if into is not None:
                into.append(rec)
        return rec

    def _dispatch(self, h: _BaseHandler) -> None:
        route = {("POST", "/backend-api/codex/responses"): self._responses,
                 ("POST", "/backend-api/codex/responses/compact"): self._compact,
                 ("GET", "/backend-api/codex/models"): self._models,
                 ("GET", "/backend-api/wham/usage"): self._usage,
                 ("GET", "/oauth/authorize"): self._authorize,
                 ("POST", "/oauth/token"): self._token,
                 ("POST", "/api/accounts/deviceauth/usercode"): self._device_usercode,
                 ("POST", "/api/accounts/deviceauth/token"): self._device_token,
                 ("GET", "/codex/device"): self._device_page,
                 ("POST", "/v1/responses"): self._fallback_responses}.get((h.command, h.route))
        auth = h.hdrs.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        with self._lock:
            h.token_account = self._access.get(token)
            h.token_expired = token in self._expired
        into = {self._responses: self.requests, self._compact: self.requests,
                self._fallback_responses: self.fallback_requests}.get(route)
        self._record(h, h.token_account, into)
        if h.body_error:
            status, message = h.body_error
            h.send(status, {"error": {"message": message, "type": "invalid_request_error", "code": None,
                                      "param": None}})
        elif route is None:
            h.send(404, {"error": {"message": f"Not found: {h.command} {h.route}", "type": "not_found"}})
        else:
            route(h)

    def _auth(self, h: _BaseHandler, need_account_header: bool) -> FakeAccount | None:
        aid, sent_id = h.token_account, h.hdrs.get("chatgpt-account-id")
        if aid is None or h.token_expired:
            code, msg = (("token_expired", "Provided authentication token is expired. Please try signing in again.")
                         if h.token_expired else ("token_invalid", "Could not parse your authentication token."))
        elif (need_account_header or sent_id is not None) and sent_id != aid:
            code, msg = "account_mismatch", "ChatGPT-Account-Id does not match the token"
        else:
            return self.accounts[aid]
        h.send(401, {"error": {"message": msg, "type": "invalid_request_error", "code": code, "param": None},
                     "status": 401})
        return None

    def _responses(self, h: _BaseHandler) -> None:
        acct = self._auth(h, True)
        if acct is None:
            return
        body = h.json_body()
        if not isinstance(body, dict):
            return h.send(400, {"detail": "Request body must be valid JSON"}, headers=self.usage_headers(acct))
        if body.get("stream") is not True:
            return h.send(400, {"detail": "Stream must be set to true"}, headers=self.usage_headers(acct))
        self._run(h, acct, self.next_behaviour(acct.account_id), body)

    def _compact(self, h: _BaseHandler) -> None:
        """Remote compaction: a JSON request, one JSON answer whose output ends
        with a `compaction` item carrying encrypted content. Error behaviours answer as on
        /responses; any stream behaviour compacts."""
        acct = self._auth(h, True)
        if acct is None:
            return
        body = h.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("input"), list):
            return h.send(400, {"error": {"message": "'input' must be a list", "type": "invalid_request_error"}})
        beh = self.next_behaviour(acct.account_id)
        headers = {**self.usage_headers(acct), **beh.params.get("headers", {})}
        if beh.kind not in _STREAM_KINDS:
            if beh.kind == "hang":
                return self._run(h, acct, beh, body)
            status, ctype, payload, extra = self._error_answer(beh.kind, beh.params)
            return h.send(status, payload, ctype, {**headers, **extra})
        kept = [item for item in body["input"] if isinstance(item, dict) and item.get("role") == "user"][-1:]
        summary = "enc_compaction_" + hashlib.sha256(json.dumps(body["input"]).encode()).hexdigest()[:32]
        h.send(200, {"output": kept + [{"type": "compaction", "encrypted_content": summary}]}, headers=headers)

    def _fallback_responses(self, h: _BaseHandler) -> None:
        """An API-key Responses endpoint (api.openai.com style): no accounts, no x-codex-* headers,
        and `stream` may be false (then the final response object comes as one JSON answer)."""
        auth = h.hdrs.get("authorization", "")
        if auth != f"Bearer {self.fallback_api_key}":
            shown = auth[7:][:3] + "..." + auth[-4:] if auth[:7].lower() == "bearer " and len(auth) > 14 else "(none)"
            return h.send(401, {"error": {"message": f"Incorrect API key provided: {shown}.",
                                          "type": "invalid_request_error", "code": "invalid_api_key", "param": None}})
        body = h.json_body()
        if not isinstance(body, dict):
            return h.send(400, {"error": {"message": "We could not parse the JSON body of your request.",
                                          "type": "invalid_request_error", "code": None, "param": None}})
        self._run(h, None, self.next_behaviour(self.FALLBACK), body, stream=body.get("stream") is True)

    def _run(self, h: _BaseHandler, acct: FakeAccount | None, beh: Behaviour, body: dict, stream: bool = True) -> None:
        kind, p = beh.kind, beh.params
        if p.get("first_delay") and self._stopping.wait(p["first_delay"]):
            return h.abort()
        headers = {**(self.usage_headers(acct) if acct else {}), **p.get("headers", {})}
        if acct is not None:
            # The upstream's own affinity token: meaningful only to this account.
            headers.setdefault("x-codex-turn-state", f"ts_{acct.account_id[:8]}_{secrets.token_hex(6)}")
        if kind == "hang":  # until stop(), reset() or `seconds`; then close without an answer
            release, until = self._release, time.monotonic() + (p.get("seconds") or 1e9)
            while not release.is_set() and time.monotonic() < until and not self._stopping.wait(0.05):
                pass
            return h.abort()
        if kind not in _STREAM_KINDS:
            status, ctype, payload, extra = self._error_answer(kind, p)
            return h.send(status, payload, ctype, {**headers, **extra})
        events = self._events(kind, p, body, acct)
        if kind == "cut":
            events = events[:p["after_events"]]
        if not stream:
            final = next((d["response"] for _, d in reversed(events) if isinstance(d.get("response"), dict)), None)
            if kind == "cut" or final is None:
                return h.abort()
            return h.send(200, final, headers=headers)
        h.start_chunked(headers)
        for i, (name, data) in enumerate(events):
            wait = (p.get("delay") if i else 0) or 0
            wait += p.get("delta_delay", 0) if name.endswith("_text.delta") else 0
            if wait and self._stopping.wait(wait):
                return h.abort()
            frame = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            if p.get("split"):  # each event in two pieces, cut inside its data line, as TCP/TLS may deliver it
                cut = frame.index(b"data: ") + 8
                h.chunk(frame[:cut])
                if self._stopping.wait(p["split"]):
                    return h.abort()
                frame = frame[cut:]
            h.chunk(frame)
        if kind == "cut":
            return h.abort(p.get("rst", False))
        if p.get("tail_delay") and self._stopping.wait(p["tail_delay"]):
            return h.abort()
        h.wfile.write(b"0\r\n\r\n")

    def _events(self, kind: str, p: dict, body: dict, acct: FakeAccount) -> list[tuple[str, dict]]:
        r = _Resp(p.get("model") or body.get("model") or "gpt-5-codex")
        if p.get("rate_limits") and acct is not None:
            u = acct.usage
            limits = {w: None if u.get(w) is None else {"used_percent": u[w], "window_minutes": m,
                                                         "reset_at": u[w + "_reset_at"]} for w, m in WINDOWS}
            r.events.append(("codex.rate_limits", {"type": "codex.rate_limits", "plan_type": acct.plan,
                                                   "rate_limits": limits, "credits": self.usage_json(acct)["credits"]}))
        if kind == "events":
            r.events += [(e["type"], e) if isinstance(e, dict) else (e[0], {"type": e[0], **e[1]}) for e in p["events"]]
            return r.events
        r.start()
        if kind == "failed":
            r.finish("response.failed", "failed", None, error={"code": p["code"], "message": p["message"]})
            return r.events
        if kind == "error_event":
            r.ev("error", code=p["code"], message=p["message"], param=None)
            return r.events
        if kind == "reasoning":
            r.reasoning(p["summary"], p["deltas"])
        if kind == "tool_call":
            for name, args in p["calls"]:
                r.function_call(name, args, p["deltas"])
        text = json.dumps(body.get("input")) if kind == "echo" else p.get("text")
        items = body.get("input") if isinstance(body.get("input"), list) else []
        if kind in ("ok", "slow", "drip") and items and isinstance(items[-1], dict) \
                and items[-1].get("type") == "compaction_trigger":
            # Codex 0.169's remote compaction asks with a trigger item and expects exactly one
            # compaction item back (codexproxy/codexconfig.py).
            r.compaction(items)
            text = None
        if text is not None:
            r.message(text, p["deltas"])
        out_tokens = max(1, sum(len(json.dumps(i)) for i in r.output) // 4)
        usage = {"input_tokens": max(1, len(json.dumps(body)) // 4), "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": out_tokens,
                 "output_tokens_details": {"reasoning_tokens": 16 if kind == "reasoning" else 0}}
        usage.update(p.get("usage", {}))
        usage.setdefault("total_tokens", usage["input_tokens"] + usage["output_tokens"])
        if kind == "incomplete":
            r.finish("response.incomplete", "incomplete", usage, incomplete_details={"reason": p["reason"]})
        elif kind != "no_completed":
            r.finish("response.completed", "completed", usage, p.get("empty_output", False))
        return r.events

    def _error_answer(self, kind: str, p: dict) -> tuple[int, str, Any, dict]:
        js = "application/json"
        if kind == "usage_limit":
            return 429, js, {"error": {"type": "usage_limit_reached", "message": p["message"], "plan_type": p["plan"],
                                       "resets_at": int(time.time()) + p["resets_in"],
                                       "resets_in_seconds": p["resets_in"]}}, {}
        if kind == "rate_limited":
            return 429, "text/plain", "Too Many Requests", {"retry-after": str(p["retry_after"])}
        if kind == "unauthorized":
            return 401, js, {"error": {"message": "Provided authentication token is expired. Please try signing in "
                                       "again.", "type": "invalid_request_error", "code": "token_expired",
                                       "param": None}, "status": 401}, {}
        if kind == "deactivated":
            return p["status"], js, {"error": {"message": "Your OpenAI account has been deactivated, please check your "
                                               "email for more information.", "type": "invalid_request_error",
                                               "code": "account_deactivated", "param": None}}, {}
        if kind == "cloudflare":
            html = ("<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title></head>"
                    "<body><noscript>Enable JavaScript and cookies to continue</noscript></body></html>")
            return 403, "text/html; charset=UTF-8", html, {"cf-mitigated": "challenge", "cf-ray": "0000fake-LHR"}
        if kind == "server_error":
            return p["status"], js, {"error": {"message": "An error occurred while processing your request.",
                                               "type": "server_error", "code": None, "param": None}}, {}
        if kind == "bad_request":
            return 400, js, {"error": {"message": p["message"], "type": "invalid_request_error",
                                       "code": None, "param": None}}, {}
        if kind == "big_error":
            pad = max(0, p["size_bytes"] - 60)
            return p["status"], js, {"error": {"message": "x" * pad, "type": "server_error"}}, {}
        if kind == "status":
            return p["status"], p["content_type"], p["body"], {}
        raise ValueError(f"unknown behaviour kind {kind!r}")

    def _models(self, h: _BaseHandler) -> None:
        if self._auth(h, False):
            h.send(200, {"models": self.models})

    def _usage(self, h: _BaseHandler) -> None:
        acct = self._auth(h, True)
        if acct is None:
            return
        mode = self._usage_behaviour.get(acct.account_id, "ok")
        if mode == "unauthorized":
            h.send(401, {"detail": "Could not validate credentials"})
        elif mode == "server_error":
            h.send(500, {"detail": "Internal server error"})
        else:
            h.send(200, self.usage_json(acct))

    def _oauth_error(self, h, status: int, error: str, desc: str) -> None:
        h.send(status, {"error": error, "error_description": desc})

    def _authorize(self, h: _BaseHandler) -> None:
        q = h.query
        checks = [(q.get("client_id") == CLIENT_ID, "unknown client_id"),
                  (q.get("response_type") == "code", "response_type must be code"),
                  (bool(q.get("code_challenge")), "code_challenge required"),
                  (q.get("code_challenge_method") == "S256", "code_challenge_method must be S256"),
                  (q.get("redirect_uri", "").startswith("http"), "redirect_uri required")]
        for ok, desc in checks:
            if not ok:
                return self._oauth_error(h, 400, "invalid_request", desc)
        params = {"state": q.get("state", "")}
        with self._lock:
            if self.authorize_error:
                params = {"error": self.authorize_error,
                          "error_description": f"The user denied the request ({self.authorize_error})", **params}
            else:
                code = self._new_code(self._login_account(), q["redirect_uri"], q["code_challenge"])
                params = {"code": code, **params}
        sep = "&" if "?" in q["redirect_uri"] else "?"
        h.send(302, b"", "text/plain", {"Location": q["redirect_uri"] + sep + urlencode(params)})

    def _token(self, h: _BaseHandler) -> None:
        f = h.form()
        if f.get("client_id") != CLIENT_ID:
            return self._oauth_error(h, 401, "invalid_client", "unknown client_id")
        if f.get("grant_type") == "authorization_code":
            with self._lock:
                grant = self._codes.pop(f.get("code", ""), None)  # single use, even when the check fails
                if grant is None:
                    return self._oauth_error(h, 400, "invalid_grant", "unknown or already used code")
                if grant["redirect_uri"] != f.get("redirect_uri"):
                    return self._oauth_error(h, 400, "invalid_grant", "redirect_uri mismatch")
                if pkce_challenge(f.get("code_verifier", "")) != grant["challenge"]:
                    return self._oauth_error(h, 400, "invalid_grant", "PKCE verification failed")
                answer = self._issue(self.accounts[grant["account_id"]])
            return h.send(200, answer)
        if f.get("grant_type") == "refresh_token":
            with self._lock:
                self.refresh_calls += 1
            if self.refresh_delay and self._stopping.wait(self.refresh_delay):
                return h.abort()
            tok = f.get("refresh_token", "")
            with self._lock:
                aid = self._refresh.pop(tok, None)
                if aid is not None:
                    self._dead_refresh[tok] = "refresh_token_reused"
                    answer = self._issue(self.accounts[aid])
                else:
                    code = self._dead_refresh.get(tok, "refresh_token_invalidated")
            if aid is not None:
                return h.send(200, answer)
            return h.send(401, {"error": {"message": f"Refresh token rejected: {code}", "type": "invalid_request_error",
                                          "code": code, "param": None}})
        self._oauth_error(h, 400, "unsupported_grant_type", f"grant_type {f.get('grant_type')!r}")

    def _device_usercode(self, h: _BaseHandler) -> None:
        if h.form().get("client_id") != CLIENT_ID:
            return self._oauth_error(h, 401, "invalid_client", "unknown client_id")
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        user_code = "-".join("".join(secrets.choice(letters) for _ in range(4)) for _ in range(2))
        dev = {"device_auth_id": _rid("deviceauth_"), "user_code": user_code, "polls": 0, "approved": False,
               "account": None, "result": None}
        with self._lock:
            self._devices[dev["device_auth_id"]] = dev
        h.send(200, {"device_auth_id": dev["device_auth_id"], "user_code": user_code,
                     "interval": str(self.device_interval)})  # the real API sends the interval as a string

    def _device_token(self, h: _BaseHandler) -> None:
        f = h.form()
        with self._lock:
            dev = self._devices.get(f.get("device_auth_id", ""))
            if dev is None or dev["user_code"] != f.get("user_code"):
                return h.send(404, {"error": {"message": "unknown device authorization", "code": "not_found"}})
            auto = self.device_auto_approve_after
            if not dev["approved"] and auto is not None and dev["polls"] >= auto:
                dev["approved"] = True
            if not dev["approved"]:
                dev["polls"] += 1
                return h.send(403, {"error": {"message": "authorization pending", "code": "deviceauth_pending"}})
            if dev["result"] is None:
                verifier = b64url(secrets.token_bytes(64))
                challenge = pkce_challenge(verifier)
                code = self._new_code(dev["account"] or self._login_account(),
                                      self.issuer + "/deviceauth/callback", challenge)
                dev["result"] = {"authorization_code": code, "code_verifier": verifier, "code_challenge": challenge}
            h.send(200, dev["result"])

    def _device_page(self, h: _BaseHandler) -> None:
        h.send(200, "<!DOCTYPE html><html><head><title>Codex device login (fake)</title></head><body>"
                    "<h1>Enter your one-time code</h1><form><input name='user_code'></form></body></html>",
               "text/html; charset=utf-8")


# ------------------------------------------------------------------------------------ the canary
class _CanaryHandler(_BaseHandler):
    def do_GET(self):
        self.sent = False
        try:
            url = urlsplit(self.path)
            self.route, self.body = url.path, self._read_body()
            self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self.hdrs = {k.lower(): v for k, v in self.headers.items()}
            owner = self.server.owner
            with owner._lock:
                owner.requests.append(RecordedRequest(self.command, self.route, self.query, self.hdrs, self.body,
                                                      self.json_body(), None, time.time(), self.client_address,
                                                      self.body))
            self.send(200, {"canary": True})
        except OSError:
            self.close_connection = True

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_CONNECT = do_GET


class CanaryServer(_ServerBase):
    """Records every connection and request it gets; security tests assert it stays untouched."""
    _handler_class = _CanaryHandler

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.connections: list[tuple] = []
        self.requests: list[RecordedRequest] = []

    def _on_connect(self, h: _BaseHandler) -> None:
        with self._lock:
            self.connections.append(h.client_address)

    @property
    def touched(self) -> bool:
        return bool(self.connections or self.requests)


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fake Codex backend + OAuth issuer")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--accounts", type=int, default=1, help="demo accounts (an auth.json for each)")
    ap.add_argument("--plan", default="plus")
    ap.add_argument("--auth-dir", default=None, help="where the auth.json directories go (default: system temp)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    fake = FakeUpstream(args.host, args.port).start()
    print(fake.url, flush=True)
    for i in range(max(1, args.accounts)):
        acct = fake.add_account(email=f"demo{i + 1}@example.com", plan=args.plan)
        print(fake.write_auth_json(acct, tempfile.mkdtemp(prefix="fakeupstream-", dir=args.auth_dir)), flush=True)
    print(f"codex base {fake.codex_base}; issuer {fake.issuer}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
