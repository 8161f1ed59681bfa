"""Requests are admitted on their head: a request without a valid key, or with a body over
the limit, is answered before its body is read, so uploads nobody will use cost no memory."""

from __future__ import annotations

import concurrent.futures
import socket
from pathlib import Path

import httpx

from tests.conftest import RESPONSES_BODY
from tests.rawhttp import address, read_json_answer


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_no_key_is_answered_before_the_body(proxy, fake):
    for framing in (b"Content-Length: 33554432\r\n", b"Transfer-Encoding: chunked\r\n"):
        with socket.create_connection(address(proxy), timeout=10) as sock:
            # Only the head is sent: the answer must come without waiting for the body.
            sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + framing + b"\r\n")
            status, body = read_json_answer(sock)
            assert status == 401, body
            assert sock.recv(1) == b""  # and the connection is closed: the body is never read
    assert fake.all_requests == []


def test_an_oversized_content_length_is_refused_on_the_head(make_proxy, fake):
    proxy = make_proxy({"limits": {"max_body_bytes": 100_000}})
    with socket.create_connection(address(proxy), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + proxy.key.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 100001\r\n\r\n")
        status, body = read_json_answer(sock)
    assert status == 413
    assert body["type"] == "error" and body["error"]["type"] == "request_too_large"  # Anthropic's shape
    assert fake.all_requests == []


def test_a_chunked_body_is_capped_as_it_arrives(make_proxy, fake):
    proxy = make_proxy({"limits": {"max_body_bytes": 100_000}})

    def chunks():
        for _ in range(50):
            yield b"x" * 10_000

    with proxy.client() as client:
        try:
            r = client.post("/v1/responses", content=chunks(), headers=proxy.auth)
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        except httpx.TransportError:
            pass  # the proxy may close while the client is still sending: also a refusal
        assert client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth).status_code == 200
    assert len(fake.requests) == 1


def test_a_burst_of_unauthenticated_uploads_leaves_memory_alone(proxy, fake):
    idle = rss_kib(proxy.pid)
    size = 32 * 1024 * 1024
    payload = b"x" * (1024 * 1024)

    def upload(framing: bytes) -> int:
        with socket.create_connection(address(proxy), timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing + b"\r\n")
            try:
                for _ in range(size // len(payload)):
                    if framing.startswith(b"Transfer"):
                        sock.sendall(b"%X\r\n%s\r\n" % (len(payload), payload))
                    else:
                        sock.sendall(payload)
            except OSError:
                pass  # refused and closed mid-upload: expected
            try:
                return read_json_answer(sock)[0]
            except (OSError, IndexError, ValueError):
                return 0

    framings = [b"Content-Length: %d\r\n" % size, b"Transfer-Encoding: chunked\r\n"] * 10
    for _ in range(2):
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(upload, framings))
        assert statuses.count(401) >= 15, statuses  # answered (a few may lose the race with the close)
    grown = rss_kib(proxy.pid) - idle
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
    assert fake.all_requests == []
