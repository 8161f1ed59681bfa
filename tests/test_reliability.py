"""Reliability: bad input on every route, injected upstream faults, kill -9 during heavy writes,
and load — all through the running proxy, the way clients and crashes meet it.

- Bad input: every answer is a 4xx with an error body in the client's protocol (Anthropic shape
  on /v1/messages), never a 5xx or a traceback, nothing reaches the upstream, and the proxy
  serves normally afterwards.
- Upstream faults (the fake's behaviours): each ends as the routing table says, within its
  timeout, with exactly one request-log row.
- Crash safety: `kill -9` during heavy logging and account/key writes by the proxy, the CLI and
  another process, 20 times: the store always loads and nothing acknowledged is lost.
- Load: 200 concurrent streaming clients: no errors, RSS flat after warm-up, no fd leak.

Marked `reliability` (CI runs it); the file runs in under 3 minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codexproxy.logstore import LogStore
from codexproxy.store import AccountRepo, KeyRepo, Store
from tests.conftest import PYTHON, RESPONSES_BODY, Proxy, base_config, closed_port, deep_merge, read_sse
from tests.fakeupstream import B

pytestmark = pytest.mark.reliability

MAX_BODY = 64 * 1024
IDLE_S = 1.5

POST_ROUTES = {  # route -> the client protocol its errors must be rendered in
    "/v1/responses": "openai",
    "/responses": "openai",
    "/backend-api/codex/responses": "openai",
    "/v1/responses/compact": "openai",
    "/responses/compact": "openai",
    "/backend-api/codex/responses/compact": "openai",
    "/v1/chat/completions": "openai",
    "/v1/completions": "openai",
    "/v1/messages": "anthropic",
    "/v1/messages/count_tokens": "anthropic",
}
ADMIN_ROUTES = ("/status", "/rpc", "/metrics")

BAD_BODIES = {
    "not json": b"this is not json",
    "truncated json": b'{"model": "gpt-5", "messages": [',
    "json array": b"[]",
    "json string": b'"hello"',
    "json number": b"42",
    "json null": b"null",
    "empty object": b"{}",
    "empty body": b"",
    "invalid utf-8": b'{"model": "gpt-5\xff\xfe", "input": "hi"}',
    "nul bytes in json": b'{"model": "gpt\x00-5", "input": "hi"}',
    "nul bytes only": b"\x00" * 64,
    "binary garbage": bytes(range(256)) * 4,
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,  # over the limit on purpose too: 413, never a RecursionError
    "deeply nested under the limit": b"[" * 30_000 + b"]" * 30_000,
    "deeply nested object under the limit": b'{"model": "gpt-5", "input": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}",
    "lone surrogate": b'{"input": "\\ud800 x"}',
}

WRONG_TYPES = {  # route -> bodies of the right shape with wrong types or values
    "/v1/responses": [{"model": 5, "input": "hi"}, {"model": "gpt-5", "input": 7}, {"model": "gpt-5", "input": "hi", "stream": "yes"},
                      {"model": ["gpt-5"], "input": "hi"}],
    "/backend-api/codex/responses": [{"model": None, "input": "hi"}, {"model": "gpt-5", "input": {"a": 1}}],
    "/v1/chat/completions": [{"model": "gpt-5", "messages": "hi"}, {"model": 5, "messages": [{"role": "user", "content": "hi"}]},
                             {"model": "gpt-5", "messages": [{"role": "wizard", "content": "hi"}]},
                             {"model": "gpt-5", "messages": [{"role": "user", "content": 5}]},
                             {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], "stream": 1},
                             {"model": "gpt-5", "messages": [None]}],
    "/v1/completions": [{"model": "gpt-5", "prompt": 5}, {"model": "gpt-5", "prompt": [1, 2]}, {"model": "gpt-5"}],
    "/v1/messages": [{"model": "gpt-5", "max_tokens": "many", "messages": [{"role": "user", "content": "hi"}]},
                     {"model": "gpt-5", "max_tokens": 10, "messages": "hi"},
                     {"model": "gpt-5", "max_tokens": 10, "messages": [{"role": "wizard", "content": "hi"}]},
                     {"model": 5, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}],
    "/v1/messages/count_tokens": [{"model": "gpt-5", "messages": "hi"}, {"messages": None}],
    "/v1/responses/compact": [{"model": 5, "input": []}, {"model": "gpt-5", "input": 7}, {"model": ["gpt-5"], "input": []}],
    "/backend-api/codex/responses/compact": [{"model": None, "input": []}, {"model": "gpt-5", "input": {"a": 1}}],
}

LONE = "\ud800 x"  # a lone UTF-16 surrogate: legal JSON escape, not Unicode; UTF-8 cannot carry it
SURROGATE_BODIES = {  # route -> well-formed requests with a lone surrogate where text goes
    "/v1/responses": [{"model": "gpt-5", "input": LONE}, {"model": "gpt-5", "input": "hi", "instructions": LONE},
                      {"model": "gpt-5", "input": [{"role": "user", "content": [{"type": "input_text", "text": LONE}]}]}],
    "/backend-api/codex/responses": [{"model": "gpt-5", "input": LONE, "stream": True}],
    "/v1/chat/completions": [{"model": "gpt-5", "messages": [{"role": "user", "content": LONE}]},
                             {"model": "gpt-5", "messages": [{"role": "system", "content": LONE}, {"role": "user", "content": "hi"}]}],
    "/v1/completions": [{"model": "gpt-5", "prompt": LONE}],
    "/v1/messages": [{"model": "gpt-5", "max_tokens": 10, "messages": [{"role": "user", "content": LONE}]},
                     {"model": "gpt-5", "max_tokens": 10, "system": LONE, "messages": [{"role": "user", "content": "hi"}]}],
    "/v1/messages/count_tokens": [{"model": "gpt-5", "messages": [{"role": "user", "content": LONE}]}],
    "/v1/responses/compact": [{"model": "gpt-5", "input": [{"role": "user", "content": [{"type": "input_text", "text": LONE}]}]}],
    "/backend-api/codex/responses/compact": [{"model": "gpt-5", "input": [], "instructions": LONE}],
}


# --- helpers ---------------------------------------------------------------------------------

def no_traceback(text: str, where: str) -> None:
    assert "Traceback (most recent call last)" not in text and 'File "/' not in text, f"a traceback in {where}:\n{text[:2000]}"


def assert_client_error(r: httpx.Response, protocol: str, what: str, statuses: tuple[int, ...] = ()) -> None:
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if statuses:
        assert r.status_code in statuses, f"{what}: {r.status_code} {r.text[:300]}"
    no_traceback(r.text, what)
    assert r.headers.get("content-type", "").startswith("application/json"), f"{what}: {r.headers.get('content-type')}"
    body = r.json()
    if protocol == "anthropic":
        assert body.get("type") == "error", f"{what}: not an Anthropic error: {body}"
        assert body["error"]["type"] and body["error"]["message"], f"{what}: {body}"
    else:
        assert isinstance(body.get("error"), dict) and body["error"].get("message"), f"{what}: not an OpenAI error: {body}"


def auth_for(proxy: Proxy, route: str) -> dict[str, str]:
    if route.startswith("/v1/messages"):
        return {"x-api-key": proxy.key, "anthropic-version": "2023-06-01"}
    return dict(proxy.auth)


def log_rows(proxy: Proxy) -> list[dict]:
    return LogStore(proxy.data_dir / "logs").query(limit=10**9)


def wait_for_rows(proxy: Proxy, expected: int, timeout: float = 5.0) -> list[dict]:
    """The rows once there are `expected` of them; then a moment more to catch a second row."""
    deadline = time.monotonic() + timeout
    rows = log_rows(proxy)
    while len(rows) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = log_rows(proxy)
    time.sleep(0.3)
    return log_rows(proxy)


def reset_pool(proxy: Proxy) -> None:
    """Every account of the proxy active again (faults cool them), written like the CLI does."""
    repo = AccountRepo(Store(proxy.store_path))
    for account in repo.all():
        repo.update(account.id, status="active", status_until=None, status_reason=None, cooldown_level=0)


def serves_normally(proxy: Proxy) -> None:
    with proxy.client(timeout=15) as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            events = read_sse(r)
        assert r.status_code == 200 and events[-1][1] == "response.completed"
        assert client.get("/health").status_code == 200


def raw_exchange(proxy: Proxy, data: bytes, wait: float = 3.0) -> bytes:
    """Send raw bytes on a fresh connection; what came back until close or `wait`."""
    host, port = proxy.url.split("//")[1].rsplit(":", 1)
    out = b""
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        try:
            s.sendall(data)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    break
        except (socket.timeout, ConnectionResetError, BrokenPipeError):
            pass
    return out


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        return body.endswith(b"0\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_of(raw: bytes) -> int | None:
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


def proxy_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proxy_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def rp(fake_server, tmp_path_factory):
    """One proxy for the bad-input corpus and the fault table: two accounts, a small body limit,
    a short idle timeout."""
    tmp = tmp_path_factory.mktemp("reliability")
    config = deep_merge(base_config(tmp, fake_server), {"limits": {"max_body_bytes": MAX_BODY},
                                                        "upstream": {"stream_idle_timeout_s": IDLE_S, "connect_timeout_s": 2}})
    proxy = Proxy(tmp / "proxy", config)
    proxy.fake_accounts = [fake_server.add_account() for _ in range(2)]
    folders = []
    for acct in proxy.fake_accounts:
        folder = proxy.dir / "auth" / acct.account_id
        folder.mkdir(parents=True)
        fake_server.write_auth_json(acct, str(folder))
        folders.append(str(folder))
    proxy.cli("accounts", "import", *folders, check=True)
    proxy.key = proxy.create_key()
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def pool(rp, fake):
    """The module proxy with a fresh fake and every account active."""
    reset_pool(rp)
    yield rp
    fake.reset()
    reset_pool(rp)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("route", list(POST_ROUTES))
def test_bad_bodies_get_a_4xx_in_the_clients_protocol(pool, fake, route):
    protocol = POST_ROUTES[route]
    with pool.client() as client:
        for name, body in BAD_BODIES.items():
            r = client.post(route, content=body, headers={**auth_for(pool, route), "content-type": "application/json"})
            assert_client_error(r, protocol, f"{route} with {name}", (413,) if len(body) > MAX_BODY else (400,))
        over = client.post(route, content=b'{"model": "gpt-5", "input": "' + b"x" * MAX_BODY + b'"}',
                           headers={**auth_for(pool, route), "content-type": "application/json"})
        assert_client_error(over, protocol, f"{route} over limits.max_body_bytes", (413,))
        chunked = client.post(route, content=iter([b'{"model": "gpt-5", "input": "', b"x" * MAX_BODY, b'"}']),
                              headers={**auth_for(pool, route), "content-type": "application/json"})
        assert_client_error(chunked, protocol, f"{route} chunked over the limit (no Content-Length)", (413,))
    assert not fake.requests, "bad input reached the upstream"
    no_traceback(pool.log_text(), "the proxy's output")
    serves_normally(pool)


@pytest.mark.parametrize("route", list(WRONG_TYPES))
def test_wrong_types_get_a_400_naming_the_problem(pool, fake, route):
    with pool.client() as client:
        for body in WRONG_TYPES[route]:
            r = client.post(route, json=body, headers=auth_for(pool, route))
            assert_client_error(r, POST_ROUTES[route], f"{route} with {body}", (400,))
    assert not fake.requests
    serves_normally(pool)


@pytest.mark.parametrize("route", list(SURROGATE_BODIES))
def test_lone_surrogates_get_a_400_never_a_500(pool, fake, route):
    with pool.client() as client:
        for body in SURROGATE_BODIES[route]:
            # json.dumps escapes the surrogate as \\ud800 (ASCII), as a client's JSON library would.
            r = client.post(route, content=json.dumps(body).encode(), headers={**auth_for(pool, route), "content-type": "application/json"})
            if route.endswith("count_tokens") and r.status_code == 200:
                continue  # counted locally: nothing has to carry it as UTF-8
            assert_client_error(r, POST_ROUTES[route], f"{route} with {json.dumps(body)[:80]}", (400,))
    assert not fake.requests
    serves_normally(pool)


def test_a_lone_surrogate_in_a_body_passed_through_byte_for_byte_is_refused(pool, fake):
    """A Codex client's body (and a compaction's) goes upstream as its own bytes, never encoded
    again: the pipeline still refuses a \\ud800 escape in it, as encoding a converted one does."""
    codex = {"originator": "codex_exec", "user-agent": "codex_exec/0.169.0", "content-type": "application/json"}
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": LONE}]}
    bodies = {"/backend-api/codex/responses": dict(RESPONSES_BODY, input=[item]),
              "/backend-api/codex/responses/compact": {"model": "gpt-5", "input": [item], "instructions": "x"}}
    with pool.client() as client:
        for route, body in bodies.items():
            r = client.post(route, content=json.dumps(body).encode(), headers={**auth_for(pool, route), **codex})
            assert_client_error(r, "openai", f"{route} with a lone surrogate", (400,))
            assert "lone UTF-16 surrogate" in r.text
    assert not fake.requests
    serves_normally(pool)


def test_a_lone_surrogate_as_the_model_is_answered_and_logged(make_proxy, fake):
    proxy = make_proxy()
    for route in ("/v1/responses", "/v1/chat/completions", "/v1/messages"):
        # Each route's own well-formed body, so the model is the only thing wrong with it (one body
        # for all three was refused by chat and messages for carrying the other protocols' fields).
        body = {"/v1/responses": {"model": LONE, "input": "hi"},
                "/v1/chat/completions": {"model": LONE, "messages": [{"role": "user", "content": "hi"}]},
                "/v1/messages": {"model": LONE, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}[route]
        r = httpx.post(proxy.url + route, content=json.dumps(body).encode(), timeout=30,
                       headers={**auth_for(proxy, route), "content-type": "application/json"})
        assert r.status_code == 400 and "lone UTF-16 surrogate" in r.text, f"{route}: {r.status_code} {r.text[:200]}"
    proxy.allow_log_errors = True  # asserted here, with a clearer message
    wait_for_rows(proxy, 3)
    no_traceback(proxy.log_text(), "the proxy's output")
    assert len(log_rows(proxy)) == 3


def rpc_client(proxy: Proxy) -> httpx.Client:
    """The admin API from its own loopback address: other tests here guess wrong tokens from
    127.0.0.1 on purpose, and guesses are limited per address."""
    return httpx.Client(base_url=proxy.url, timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.3"),
                        headers={"authorization": f"Bearer {proxy.admin_token}", "content-type": "application/json"})


def test_rpc_bad_bodies_get_a_json_rpc_error_never_a_500(pool, fake):
    bodies = dict(BAD_BODIES)
    bodies["lone surrogate in a call"] = b'{"jsonrpc": "2.0", "id": 1, "method": "keys.create", "params": {"name": "\\ud800 x"}}'
    bodies["lone surrogate as the method"] = b'{"jsonrpc": "2.0", "id": 1, "method": "\\udfff"}'
    bodies["lone surrogate in a batch"] = b'[{"jsonrpc": "2.0", "id": 1, "method": "keys.list", "params": {"x": "\\ud800"}}]'
    with rpc_client(pool) as client:
        for name, body in bodies.items():
            r = client.post("/rpc", content=body)
            assert 400 <= r.status_code < 500 or (r.status_code == 204 and not body.strip(b"[]")), f"/rpc with {name}: {r.status_code} {r.text[:200]}"
            no_traceback(r.text, f"/rpc with {name}")
            if r.status_code != 413:
                answer = r.json()
                answer = answer[0] if isinstance(answer, list) else answer
                assert answer.get("jsonrpc") == "2.0" and answer["error"]["message"], f"/rpc with {name}: {answer}"
        assert client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "health"}).status_code == 200
    assert not [k for k in pool.cli_json("keys", "list") if "\ud800" in k["name"] or "x" == k["name"].strip()]


def test_unknown_routes_and_wrong_methods(pool, fake):
    with pool.client() as client:
        for path in ("/nope", "/v1/nope", "/v2/chat/completions", "/v1/responses/extra/deep", "/%00", "/v1/models/../../etc/passwd",
                     "/" + "a" * 4000):
            r = client.get(path, headers=pool.auth)
            assert r.status_code == 404, f"GET {path[:60]}: {r.status_code}"
            no_traceback(r.text, path)
        for route, protocol in POST_ROUTES.items():
            for method in ("GET", "PUT", "DELETE", "PATCH"):
                r = client.request(method, route, headers=auth_for(pool, route))
                assert_client_error(r, protocol, f"{method} {route}", (405,))
        for route in ("/v1/models", "/health"):
            r = client.post(route, content=b"{}", headers=pool.auth)
            assert_client_error(r, "openai", f"POST {route}", (405,))
    assert not fake.requests
    serves_normally(pool)


def test_local_and_admin_routes_never_answer_5xx(pool, fake):
    """/v1/models, /health and the admin plugin's /status, /rpc, /metrics with garbage and no
    (or a wrong) token: answers below 500, never a traceback."""
    bodies = [b"", b"not json", b"\xff\xfe\x00", b'{"jsonrpc": "2.0", "method": "keys.list", "id": 1}', b"[" * 5000]
    with pool.client() as client:
        for route in ("/v1/models", "/health") + ADMIN_ROUTES:
            for method in ("GET", "POST", "PUT", "DELETE"):
                for body in bodies:
                    for headers in ({}, {"authorization": "Bearer wrong-token"}, {"authorization": "\x7f\x01"}):
                        r = client.request(method, route, content=body, headers=headers)
                        assert r.status_code < 500, f"{method} {route} {body[:20]!r}: {r.status_code} {r.text[:200]}"
                        no_traceback(r.text, f"{method} {route}")
                        if route in ("/rpc", "/status"):
                            assert r.status_code != 200, f"{method} {route} answered 200 without the admin token"
    no_traceback(pool.log_text(), "the proxy's output")
    serves_normally(pool)


MALFORMED_REQUESTS = {
    "space in a header name": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
    "header line without colon": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nnocolon\r\n\r\n",
    "bad content-length": b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n{}",
    "two content-lengths": b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\n{}",
    "negative content-length": b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n{}",
    "transfer-encoding and content-length": b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "unknown transfer-encoding": b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    "garbage request line": b"\x00\x01\x02garbage\xff\xfe\r\n\r\n",
    "only a method": b"GET\r\n\r\n",
    "http/0.9": b"GET /health\r\n\r\n",
    "bad version": b"GET /health HTTP/7.7\r\nHost: 127.0.0.1\r\n\r\n",
    "header folding": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\r\n  folded\r\n\r\n",
    "control bytes in a header": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\x07c\r\n\r\n",
    "bare LF line endings": b"GET /health HTTP/1.1\nHost: 127.0.0.1\n\n",
    "an http/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


def test_malformed_http_never_gets_a_5xx(pool, fake):
    for name, data in MALFORMED_REQUESTS.items():
        raw = raw_exchange(pool, data)
        status = status_of(raw)
        # The connection may just be closed (nothing parseable to answer); an answer is never a 5xx.
        assert status is None or status < 500, f"{name}: {raw[:300]!r}"
        no_traceback(raw.decode("latin-1"), name)
    assert not fake.requests
    serves_normally(pool)


def test_non_ascii_and_large_headers_on_a_gateway_request(pool, fake):
    key = pool.key
    # A non-ASCII value in an extra header: served, and the header is not sent upstream.
    raw = raw_exchange(pool, b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + key.encode() +
                       b"\r\nX-Note: caf\xc3\xa9 \xff\r\nContent-Type: application/json\r\nContent-Length: " +
                       str(len(json.dumps(RESPONSES_BODY))).encode() + b"\r\n\r\n" + json.dumps(RESPONSES_BODY).encode(), wait=10)
    assert status_of(raw) == 200, raw[:300]
    # A non-ASCII or absurd key is a 401 in the client's protocol, not a crash.
    with pool.client() as client:
        for bad in ("Bearer ключ", "Bearer " + "k" * 30_000, "Basic Zm9vOmJhcg==", "Bearer"):
            r = client.post("/v1/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]},
                            headers={"authorization": bad.encode("utf-8")})
            assert_client_error(r, "openai", f"authorization {bad[:20]!r}", (401,))
        r = client.post("/v1/messages", json={"model": "gpt-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                        headers={"x-api-key": "k" * 20_000})
        assert_client_error(r, "anthropic", "a 20 KB x-api-key", (401,))
    assert len(fake.requests) == 1
    serves_normally(pool)


def test_oversized_headers_are_refused(pool, fake):
    raw = raw_exchange(pool, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", wait=10)
    assert status_of(raw) == 431, raw[:200]  # Request Header Fields Too Large (RFC 6585)


def test_garbage_bytes_and_a_tls_hello_on_the_plain_port(pool, fake):
    host, port = pool.url.split("//")[1].rsplit(":", 1)
    rng = random.Random(7)
    for _ in range(10):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
        raw = raw_exchange(pool, garbage + b"\r\n\r\n", wait=1.0)
        assert status_of(raw) is None or status_of(raw) < 500, raw[:200]
    # A TLS ClientHello: the handshake fails or is answered; the proxy never breaks.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=5) as s:
        try:
            with ctx.wrap_socket(s, server_hostname="localhost") as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = tls.recv(4096)
                assert status_of(answer) is None or status_of(answer) < 500
        except (ssl.SSLError, ConnectionResetError, socket.timeout, OSError):
            pass
    # Half a ClientHello, then silence, then close.
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(bytes.fromhex("16030100a5010000a10303") + os.urandom(20))
    assert not fake.requests
    serves_normally(pool)


def test_slowloris_half_requests_do_not_block_others(pool, fake):
    host, port = pool.url.split("//")[1].rsplit(":", 1)
    before = proxy_fds(pool.pid)
    held = []
    try:
        for i in range(120):
            s = socket.create_connection((host, int(port)), timeout=5)
            if i % 3 == 0:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers never finished
            elif i % 3 == 1:
                s.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{\"model\"")  # body never finished
            held.append(s)  # i % 3 == 2: connected, silent
        for s in held[::3]:
            s.sendall(b"a")  # a byte now and then
        start = time.monotonic()
        serves_normally(pool)
        assert time.monotonic() - start < 3, "half-open connections slowed normal requests down"
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while proxy_fds(pool.pid) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy_fds(pool.pid) <= before + 2, f"file descriptors leaked: {before} -> {proxy_fds(pool.pid)}"
    assert len(fake.requests) == 1  # only the normal request; no half request went upstream


# --- upstream faults -----------------------------------------------------------------------------

def stream_responses(proxy: Proxy, timeout: float = 15, path: str = "/v1/responses", body=None, headers=None):
    with proxy.client(timeout=timeout) as client:
        with client.stream("POST", path, json=body or RESPONSES_BODY, headers=headers or proxy.auth) as r:
            return r.status_code, read_sse(r)


FAULTS = [
    # (id, behaviour of the first account, attempt statuses in the row, first account's status after)
    ("429 usage limit", lambda: B.usage_limit(resets_in=900), [429, 200], "exhausted_5h"),
    ("429 rate limited", lambda: B.rate_limited(retry_after=30), [429, 200], "cooling"),
    ("401 expired token", lambda: B.unauthorized(), [401, 200], "active"),  # refreshed, the same account again
    ("403 cloudflare html", lambda: B.cloudflare(), [403, 200], "cooling"),
    ("500", lambda: B.server_error(status=500), [500, 200], "cooling"),
    ("502", lambda: B.server_error(status=502), [502, 200], "cooling"),
    ("503", lambda: B.server_error(status=503), [503, 200], "cooling"),
    ("accept then hang", lambda: B.hang(seconds=20), [None, 200], "cooling"),
]


@pytest.mark.parametrize("name,behaviour,attempts,status_after", FAULTS, ids=[f[0] for f in FAULTS])
def test_upstream_fault_before_the_first_byte(pool, fake, name, behaviour, attempts, status_after):
    first, second = pool.fake_accounts
    before = len(log_rows(pool))
    fake.script(first, behaviour())
    start = time.monotonic()
    status, events = stream_responses(pool)
    elapsed = time.monotonic() - start
    assert status == 200 and events[-1][1] == "response.completed", events[-3:]
    assert elapsed < (IDLE_S + 3 if name == "accept then hang" else 3), f"{name} took {elapsed:.1f}s"
    rows = wait_for_rows(pool, before + 1)
    assert len(rows) == before + 1, f"{name}: {len(rows) - before} log rows"
    row = rows[0]
    assert row["status"] == 200 and [a["status"] for a in row["attempts"]] == attempts, row["attempts"]
    served = [r.account_id for r in fake.requests]
    assert served[0] == first.account_id and served[-1] == (first.account_id if name.startswith("401") else second.account_id)
    accounts = {a.chatgpt_account_id: a for a in AccountRepo(Store(pool.store_path)).all()}
    assert accounts[first.account_id].effective_status() == status_after


@pytest.mark.parametrize("path,protocol", [("/v1/responses", "responses"), ("/v1/chat/completions", "chat"), ("/v1/messages", "anthropic")])
def test_cut_mid_stream_ends_with_an_error_in_the_clients_protocol(pool, fake, path, protocol):
    fake.script(pool.fake_accounts[0], B.cut(after_events=5))
    before = len(log_rows(pool))
    body = {"responses": RESPONSES_BODY, "chat": {"model": "gpt-5", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            "anthropic": {"model": "gpt-5", "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}}[protocol]
    start = time.monotonic()
    status, events = stream_responses(pool, path=path, body=body, headers=auth_for(pool, path))
    assert time.monotonic() - start < 3
    assert status == 200
    last_kind, last_data = events[-1][1], events[-1][2]
    if protocol == "responses":
        assert last_kind == "response.failed"
    elif protocol == "chat":
        assert "error" in json.loads(events[-2][2] if last_data == "[DONE]" else last_data)
    else:
        assert last_kind == "error" and json.loads(last_data)["type"] == "error"
    assert len(fake.requests) == 1, "bytes had reached the client: no transparent retry"
    rows = wait_for_rows(pool, before + 1)
    assert len(rows) == before + 1 and rows[0]["error"]


def test_slow_drip_streams_event_by_event(pool, fake):
    fake.script(pool.fake_accounts[0], B.drip(delay=0.3, count=4))
    before = len(log_rows(pool))
    status, events = stream_responses(pool)
    assert status == 200 and events[-1][1] == "response.completed"
    deltas = [t for t, kind, _ in events if kind == "response.output_text.delta"]
    assert len(deltas) == 4 and all(b - a > 0.2 for a, b in zip(deltas, deltas[1:])), deltas
    rows = wait_for_rows(pool, before + 1)
    assert len(rows) == before + 1 and rows[0]["status"] == 200 and not rows[0]["error"]


def test_every_account_failing_answers_in_the_clients_protocol(pool, fake):
    for acct in pool.fake_accounts:
        fake.script(acct, B.server_error(status=503))
    before = len(log_rows(pool))
    start = time.monotonic()
    r = httpx.post(pool.url + "/v1/messages", json={"model": "gpt-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                   headers=auth_for(pool, "/v1/messages"), timeout=15)
    assert time.monotonic() - start < 3
    assert r.status_code == 503 and r.json()["type"] == "error", r.text
    no_traceback(r.text, "the 503")
    rows = wait_for_rows(pool, before + 1)
    assert len(rows) == before + 1 and [a["status"] for a in rows[0]["attempts"]] == [503, 503]


def test_connection_refused_fails_over_then_503(make_proxy, fake):
    proxy = make_proxy({"upstream": {"base_url": f"http://127.0.0.1:{closed_port()}/backend-api/codex"}}, accounts=2)
    start = time.monotonic()
    r = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]},
                   headers=proxy.auth, timeout=20)
    assert time.monotonic() - start < 5
    assert r.status_code == 503 and r.json()["error"]["message"]
    rows = wait_for_rows(proxy, 1)
    assert len(rows) == 1 and len(rows[0]["attempts"]) == 2
    assert all("connect" in (a["error"] or "") for a in rows[0]["attempts"])


def test_connect_timeout_fails_over_within_its_timeout(make_proxy, fake):
    # A listener that never accepts, its backlog filled: further connects hang in SYN-SENT.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    try:
        proxy = make_proxy({"upstream": {"base_url": f"http://127.0.0.1:{port}/backend-api/codex", "connect_timeout_s": 1,
                                         "stream_idle_timeout_s": 2}}, accounts=2)
        start = time.monotonic()
        try:
            r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth, timeout=8)
        except httpx.ReadTimeout:
            pytest.fail(f"no answer after {time.monotonic() - start:.0f}s (connect_timeout_s is 1)")
        assert r.status_code == 503 and time.monotonic() - start < 6
        attempts = proxy.cli_json("logs")[0]["attempts"]
        assert len(attempts) == 2 and all("connect timeout" in (a["error"] or "") for a in attempts)
    finally:
        for f in fillers:
            f.close()
        listener.close()


# --- crash safety -------------------------------------------------------------------------------

CRASH_ROUNDS = 20


@pytest.mark.slow
@pytest.mark.timeout(CRASH_ROUNDS * 20)  # ~5 s a round here; CI machines are slower and shared
def test_kill_9_during_heavy_writes_loses_nothing_acknowledged(make_proxy, fake):
    """20 x: the proxy serves and logs requests (some failing over, cooling an account), writes
    usage from every answer, while the CLI creates keys and another process updates accounts
    and keys; then kill -9. The store always loads; every request answered 200 has its log row;
    every key the CLI or a writer saw created exists; no acknowledged account update is lost."""
    proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced"}}}, accounts=2, start=False)
    first, second = proxy.fake_accounts
    # Each request names a model of its own, to find its log row: with the upstream's model list
    # fetched (a background job, at some round), such names were refused 400 and every later
    # round waited out its 30 s for answers that never came. With no list from the upstream,
    # names are not judged.
    fake.models = []
    acked_models: set[str] = set()
    acked_keys: set[str] = set()
    acked_label: dict[str, int] = {}
    rng = random.Random(42)
    for round_ in range(CRASH_ROUNDS):
        fake.set_default(second, B.rate_limited(retry_after=0.05))  # failovers: cooldown writes by the proxy
        proxy.start()
        stop = threading.Event()

        def traffic(tid: int) -> None:
            n = 0
            with proxy.client(timeout=10) as client:
                while not stop.is_set():
                    model = f"m-{round_}-{tid}-{n}"
                    n += 1
                    try:
                        r = client.post("/v1/responses", json=dict(RESPONSES_BODY, model=model), headers=proxy.auth)
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200 and b"response.completed" in r.content:
                        acked_models.add(model)

        def usage_churn() -> None:
            while not stop.is_set():  # usage headers change on every answer: the proxy writes the store
                for acct in (first, second):
                    fake.set_usage(acct, primary=rng.uniform(0, 90), secondary=rng.uniform(0, 90))
                time.sleep(0.01)

        def writer() -> None:  # another process's writes, the way the CLI makes them
            store = Store(proxy.store_path)
            accounts, keys = AccountRepo(store), KeyRepo(store)
            ids = [a.id for a in accounts.all()]
            n = 0
            while not stop.is_set():
                n += 1
                target = ids[n % len(ids)]
                if accounts.update(target, label=f"gen-{round_ * 100000 + n}") is not None:
                    acked_label[target] = round_ * 100000 + n
                key, _ = keys.create(f"w-{round_}-{n}")
                acked_keys.add(key.id)

        threads = [threading.Thread(target=traffic, args=(i,), daemon=True) for i in range(6)]
        threads += [threading.Thread(target=usage_churn, daemon=True), threading.Thread(target=writer, daemon=True)]
        cli = subprocess.Popen([PYTHON, "-m", "codexproxy", "keys", "create", f"cli-{round_}", "--json", "-c", str(proxy.config_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=proxy.dir, env=proxy.env)
        for t in threads:
            t.start()
        try:
            # Kill at a random moment, but only once this round has carried traffic: on a loaded machine a
            # fixed sleep could end before the first answer, and the round would test nothing.
            before = len(acked_models)
            deadline = time.monotonic() + 30
            while len(acked_models) < before + 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(acked_models) >= before + 5, f"round {round_}: no traffic answered within 30 s"
            time.sleep(rng.uniform(0.0, 0.8))
            os.kill(proxy.pid, signal.SIGKILL)
            proxy.process.wait(10)
            proxy.process = None
        finally:  # a failure or a timeout above must not leave the writers looping
            stop.set()
        for t in threads:
            t.join(15)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        acked_keys.add(json.loads(out)["id"])

        # The store loads, whole, and holds everything acknowledged so far.
        raw = proxy.store_path.read_bytes()
        json.loads(raw)
        assert oct(proxy.store_path.stat().st_mode & 0o777) == "0o600"
        store = Store(proxy.store_path)
        keys = {k.id for k in KeyRepo(store).all()}
        assert acked_keys <= keys, f"round {round_}: acknowledged keys lost: {sorted(acked_keys - keys)[:5]}"
        labels = {a.id: a.label for a in AccountRepo(store).all()}
        for account_id, gen in acked_label.items():
            stored = int((labels.get(account_id) or "gen-0").split("-")[1])
            assert stored >= gen, f"round {round_}: account update lost ({account_id}: {stored} < {gen})"
        logged = {row.get("model") for row in log_rows(proxy)}
        missing = acked_models - logged
        assert not missing, f"round {round_}: {len(missing)} requests answered 200 have no log row, e.g. {sorted(missing)[:3]}"
    assert len(acked_models) > CRASH_ROUNDS * 5, "too little traffic to mean anything"
    # And it still starts and serves after all that.
    fake.reset()
    proxy.start()
    serves_normally(proxy)


# --- load ----------------------------------------------------------------------------------------

LOAD_CLIENTS = 200
LOAD_SECONDS = float(os.environ.get("CODEXPROXY_LOAD_SECONDS", "20"))


@pytest.mark.slow
def test_load_200_concurrent_streaming_clients(tmp_path):
    """200 clients stream at once for LOAD_SECONDS (CODEXPROXY_LOAD_SECONDS, default 20) through
    the proxy to a fake upstream in its own process: no errors, RSS flat after warm-up, and no
    file descriptor left behind."""
    from bench.baselines import CodexProxy, Upstream
    from bench.load import closed_loop

    up = Upstream(tmp_path, accounts=2)
    cp = None
    try:
        up.default(0, "slow", delay=0.15, deltas=5)  # ~1.8 s per stream, an event every 150 ms
        up.default(1, "slow", delay=0.15, deltas=5)
        cp = CodexProxy(tmp_path, up, {"plugins": {"routing": {"strategy": "balanced"}}})
        pid = cp.proc.pid
        with httpx.Client(base_url=f"http://127.0.0.1:{cp.port}", timeout=30) as client:
            assert client.post("/v1/responses", json=RESPONSES_BODY, headers=cp.headers()).status_code == 200
        time.sleep(0.5)
        fds_before = proxy_fds(pid)
        samples: list[tuple[float, float]] = []
        sampling = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not sampling.is_set():
                samples.append((time.monotonic() - start, proxy_rss_mb(pid)))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()

        def complete(resp) -> bool:
            return resp.status == 200 and b"response.completed" in resp.body

        try:
            done, errors, latencies, error_samples = asyncio.run(
                closed_loop("127.0.0.1", cp.port, cp.request, LOAD_CLIENTS, LOAD_SECONDS, complete))
        finally:
            sampling.set()
            sampler.join()
        assert errors == 0, f"{errors} errors, e.g. {error_samples}"
        assert done >= LOAD_CLIENTS * 2, f"only {done} streams completed"
        warm = [rss for t, rss in samples if t >= LOAD_SECONDS * 0.35]
        assert warm and max(warm) <= warm[0] * 1.10 + 5, f"RSS grew after warm-up: {[round(r) for _, r in samples]}"
        deadline = time.monotonic() + 5
        while proxy_fds(pid) > fds_before + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proxy_fds(pid) <= fds_before + 2, f"file descriptors leaked: {fds_before} -> {proxy_fds(pid)}"
        log_text = (cp.dir / "proxy.log").read_text()
        no_traceback(log_text, "the proxy's log")
    finally:
        if cp is not None:
            cp.stop()
        up.stop()


def test_the_http_servers_own_errors_are_json_without_a_version(pool, fake):
    raw = raw_exchange(pool, b"NOT A REQUEST LINE\r\n\r\n", wait=2)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert status_of(raw) == 400
    assert b"application/json" in head.lower() and b"mitmproxy" not in raw.lower()
    assert "error" in json.loads(body)
    big = raw_exchange(pool, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", wait=5)
    assert status_of(big) == 431 and b"larger than" in big


# --- generated JSON on every route ----------------------------------------------------------------

# Text from every Unicode category, lone surrogates included (hypothesis leaves them out by default).
TEXT = st.text(alphabet=st.characters(exclude_categories=()) | st.sampled_from(["\ud800", "\udfff", "\x00", "\u2028"]), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT
ANY_JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3), max_leaves=10)


def mostly(good: st.SearchStrategy) -> st.SearchStrategy:
    """Three times in four a plausible value, else any JSON at all: most generated requests get
    past the first check and reach the adapters and the upstream, the rest probe the checks."""
    return st.one_of(good, good, good, ANY_JSON)


def request(required: dict, optional: dict) -> st.SearchStrategy:
    """An object with the `required` fields (mostly plausible), some `optional` ones, and
    sometimes a stray key."""
    fields = st.fixed_dictionaries({k: mostly(v) for k, v in required.items()}, optional={k: mostly(v) for k, v in optional.items()})
    return st.builds(lambda known, extra: {**extra, **known}, fields, st.dictionaries(TEXT, ANY_JSON, max_size=1))


MODEL = st.sampled_from(["gpt-5", "gpt-5(high)", "gpt-5-codex", "gpt-5(nonsense)", "claude-x"]) | TEXT
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "output_text", "image_url", "tool_use", "tool_result"])},
                             optional={"text": mostly(TEXT), "id": TEXT, "name": TEXT, "input": ANY_JSON, "content": ANY_JSON,
                                       "tool_use_id": TEXT, "image_url": ANY_JSON})
CONTENT = TEXT | st.lists(PART, min_size=1, max_size=2)
ROLE = st.sampled_from(["user", "user", "assistant", "system", "developer", "tool"])
MESSAGE = request({"role": ROLE, "content": CONTENT}, {"name": TEXT, "tool_call_id": TEXT, "tool_calls": ANY_JSON})
MESSAGES = st.lists(MESSAGE, min_size=1, max_size=3)
TOOL = request({"type": st.sampled_from(["function", "custom"])},
               {"name": TEXT, "description": TEXT, "function": request({"name": TEXT}, {"parameters": ANY_JSON}),
                "input_schema": ANY_JSON, "parameters": ANY_JSON})
TOOLS = st.lists(TOOL, max_size=2)
STREAM = st.booleans()
ROUTE_BODIES = {
    "/v1/responses": request({"model": MODEL, "input": TEXT | MESSAGES},
                             {"instructions": TEXT, "stream": STREAM, "tools": TOOLS, "prompt_cache_key": TEXT, "store": st.booleans(),
                              "reasoning": request({}, {"effort": st.sampled_from(["low", "high", "xhigh"]) | TEXT})}),
    "/v1/chat/completions": request({"model": MODEL, "messages": MESSAGES},
                                    {"stream": STREAM, "tools": TOOLS, "tool_choice": st.sampled_from(["auto", "none", "required"]) | TEXT,
                                     "max_tokens": st.integers(-1, 100), "reasoning_effort": TEXT, "n": st.integers(0, 3),
                                     "stream_options": request({}, {"include_usage": st.booleans()}),
                                     "response_format": request({"type": st.sampled_from(["text", "json_object", "json_schema"])},
                                                                {"json_schema": ANY_JSON})}),
    # Compaction as Codex asks for it (REFERENCE §1): the conversation so far and its instructions.
    "/v1/responses/compact": request({"model": MODEL, "input": TEXT | MESSAGES}, {"instructions": TEXT, "tools": TOOLS,
                                                                                  "parallel_tool_calls": st.booleans()}),
    "/backend-api/codex/responses/compact": request({"model": MODEL, "input": MESSAGES}, {"instructions": TEXT, "stream": STREAM}),
    "/v1/completions": request({"model": MODEL, "prompt": TEXT | st.lists(TEXT, max_size=2)},
                               {"stream": STREAM, "max_tokens": st.integers(-1, 100), "suffix": TEXT}),
    "/v1/messages": request({"model": MODEL, "max_tokens": st.integers(-1, 100), "messages": MESSAGES},
                            {"system": CONTENT, "stream": STREAM, "tools": TOOLS, "tool_choice": request({"type": TEXT}, {}),
                             "thinking": request({"type": st.sampled_from(["enabled", "disabled"])}, {"budget_tokens": st.integers(-1, 5000)}),
                             "metadata": ANY_JSON}),
    "/v1/messages/count_tokens": request({"model": MODEL, "messages": MESSAGES}, {"system": CONTENT, "tools": TOOLS}),
}
# Admin methods that cannot take the proxy's own account or key away (then 503 would be right).
FUZZ_RPC_METHODS = ["health", "keys.list", "keys.get", "keys.create", "logs.query", "usage.history", "plugins.list", "jobs.list",
                    "accounts.list", "accounts.show", "usage.get", "login.status", "login.complete"]
RPC_PARAMS = st.dictionaries(st.sampled_from(["id", "name", "model", "effort", "expires", "rpm", "query", "limit", "offset", "days",
                                              "group", "url"]), ANY_JSON | TEXT, min_size=1, max_size=3)
RPC_CALL = request({"jsonrpc": st.just("2.0"), "method": st.sampled_from(FUZZ_RPC_METHODS), "params": RPC_PARAMS}, {"id": st.integers() | TEXT})
ROUTE_BODIES["/rpc"] = st.one_of(RPC_CALL, RPC_CALL, RPC_CALL, st.lists(RPC_CALL, min_size=1, max_size=3), ANY_JSON)
FUZZ_EXAMPLES = int(os.environ.get("CODEXPROXY_FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def fuzz_proxy(fake_server, tmp_path_factory):
    """A proxy of its own for generated input (one account, one key): nothing here can disturb
    the fault tests, and their wrong-token guesses cannot lock /rpc."""
    tmp = tmp_path_factory.mktemp("fuzz")
    proxy = Proxy(tmp / "proxy", base_config(tmp, fake_server))
    acct = fake_server.add_account()
    folder = proxy.dir / "auth" / acct.account_id
    folder.mkdir(parents=True)
    fake_server.write_auth_json(acct, str(folder))
    proxy.cli("accounts", "import", str(folder), check=True)
    proxy.key = proxy.create_key()
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("route", list(ROUTE_BODIES))
def test_generated_json_never_gets_a_5xx(fuzz_proxy, fake, route):
    proxy = fuzz_proxy
    headers = {"authorization": f"Bearer {proxy.admin_token}"} if route == "/rpc" else auth_for(proxy, route)
    headers["content-type"] = "application/json"

    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=ROUTE_BODIES[route])
        def check(body):
            # ensure_ascii: a lone surrogate goes as its \\uXXXX escape, as JSON libraries send it.
            raw = json.dumps(body, allow_nan=True).encode()
            r = client.post(route, content=raw, headers=headers)
            assert r.status_code < 500, f"{route} {raw[:300]!r}: {r.status_code} {r.text[:300]}"
            no_traceback(r.text, f"{route} answer")

        check()
    no_traceback(proxy.log_text(), "the proxy's output")
