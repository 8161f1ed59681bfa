"""The test upstream is as strict as the real one (nginx with TLS in front of the fake), and every
outbound client of the proxy verifies it with the configured CA -- and with nothing else.

A request the lenient fake (`http.server`) would take but a real server refuses must be refused
here too; otherwise a bug like a dropped `Host` header ships green (it did once)."""
from __future__ import annotations

import socket
import ssl
import time

import httpx
import pytest

from codexproxy.models import Account
from tests.conftest import RESPONSES_BODY
from tests.strict_upstream import make_test_ca

BODY = b'{"model": "gpt-5-codex", "stream": true, "input": []}'


def exchange_raw(host: str, port: int, data: bytes, ctx: ssl.SSLContext | None = None, timeout: float = 10) -> bytes:
    """Send raw bytes (TLS when ctx is given), return everything read until the server closes or
    the first answer is complete."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = ctx.wrap_socket(raw, server_hostname=host) if ctx else raw
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            out += chunk
            head, sep, rest = out.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    break
        return out


def to_front(fake, data: bytes) -> bytes:
    return exchange_raw("127.0.0.1", fake.front_port, data, ssl.create_default_context(cafile=fake.ca_file))


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def strict(fake):
    """The session fake behind nginx (this file is about nginx: never --upstream=plain)."""
    if not fake.ca_file:
        pytest.fail("test_strict_upstream.py needs the TLS upstream (run without --upstream=plain)")
    fake.front_port = int(fake.url.rsplit(":", 1)[1])
    return fake


def request(acct, *head_lines: bytes, body: bytes = BODY, host: bytes | None = b"127.0.0.1") -> bytes:
    lines = [b"POST /backend-api/codex/responses HTTP/1.1"]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += [b"Authorization: Bearer " + acct.access_token.encode(),
              b"ChatGPT-Account-Id: " + acct.account_id.encode(), b"Content-Type: application/json",
              b"Connection: close", *head_lines]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# ------------------------------------------------------------------------------ nginx's strictness
def test_a_well_formed_request_passes(strict):
    """The control for the refusals below: the same request, well formed, is answered by the fake."""
    acct = strict.add_account()
    answer = to_front(strict, request(acct, b"Content-Length: %d" % len(BODY)))
    assert status_of(answer) == 200 and b"response.completed" in answer
    assert len(strict.requests) == 1


@pytest.mark.parametrize("case,head,kwargs", [
    ("no Host", [b"Content-Length: %d" % len(BODY)], {"host": None}),
    ("duplicate Content-Length", [b"Content-Length: %d" % len(BODY), b"Content-Length: %d" % len(BODY)], {}),
    ("CR inside a header value", [b"Content-Length: %d" % len(BODY), b"session_id: abc\rdef"], {}),
    ("NUL inside a header value", [b"Content-Length: %d" % len(BODY), b"session_id: abc\x00def"], {}),
    ("bad chunked framing", [b"Transfer-Encoding: chunked"], {"body": b"zz\r\n" + BODY + b"\r\n0\r\n\r\n"}),
    ("chunk size larger than the data", [b"Transfer-Encoding: chunked"],
     {"body": b"5\r\nabcdefgh\r\n0\r\n\r\n"}),
])
def test_malformed_requests_get_400_and_never_reach_the_fake(strict, case, head, kwargs):
    acct = strict.add_account()
    answer = to_front(strict, request(acct, *head, **kwargs))
    assert status_of(answer) == 400, (case, answer[:300])
    assert strict.all_requests == [], case


def test_the_lenient_fake_alone_would_take_a_request_without_host(strict):
    """Why nginx is there: http.server answers what every real server refuses."""
    acct = strict.add_account()
    answer = exchange_raw(strict.host, strict.port, request(acct, b"Content-Length: %d" % len(BODY), host=None))
    assert status_of(answer) == 200


def test_headers_with_underscores_big_and_chunked_bodies_pass(strict):
    """What the proxy legitimately sends must reach the fake intact: `session_id` (nginx drops
    underscore names unless told not to), 5 MB bodies, chunked uploads."""
    acct = strict.add_account()
    big = b'{"model": "gpt-5-codex", "stream": true, "input": [], "pad": "' + b"x" * 5_000_000 + b'"}'
    answer = to_front(strict, request(acct, b"session_id: s-1", b"Content-Length: %d" % len(big), body=big))
    assert status_of(answer) == 200
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(BODY[i:i + 7]), BODY[i:i + 7]) for i in range(0, len(BODY), 7))
    answer = to_front(strict, request(acct, b"session_id: s-2", b"Transfer-Encoding: chunked",
                                      body=chunked + b"0\r\n\r\n"))
    assert status_of(answer) == 200
    first, second = strict.requests
    assert first.headers["session_id"] == "s-1" and first.body == big
    assert second.headers["session_id"] == "s-2" and second.body == BODY


def test_plain_http_to_the_tls_port_is_refused(strict):
    acct = strict.add_account()
    answer = exchange_raw("127.0.0.1", strict.front_port, request(acct, b"Content-Length: %d" % len(BODY)))
    assert status_of(answer) == 400 and strict.all_requests == []


# ------------------------------------------------------------------- the proxy trusts the CA it is given
def test_the_proxy_reaches_the_tls_upstream_with_the_test_ca(make_proxy, strict):
    proxy = make_proxy()
    assert proxy.config["upstream"]["ca_file"] == strict.ca_file and proxy.config["upstream"]["ssl_verify"] is True
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth, timeout=30)
    assert r.status_code == 200 and "response.completed" in r.text
    seen = strict.requests[-1]
    assert seen.headers["host"] == strict.url.split("://")[1]  # the upstream's own authority


@pytest.mark.parametrize("trust", ["another CA", "the system CAs"])
def test_an_untrusted_upstream_certificate_is_a_clear_error(make_proxy, strict, tmp_path, trust):
    """The proxy must not talk to an upstream whose certificate it cannot verify, and must say why:
    a 502 (the upstream could not be used: Bad Gateway) whose message names the certificate/TLS
    problem, not a bare "connect failed"."""
    ca_file = make_test_ca(tmp_path / "other-ca", name="some other CA").ca_file if trust == "another CA" else None
    proxy = make_proxy({"upstream": {"ca_file": ca_file}}, accounts=1)
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth, timeout=30)
    assert r.status_code == 502, r.text
    message = r.json()["error"]["message"]
    assert any(word in message.lower() for word in ("certificate", "tls", "ssl")), message
    assert strict.all_requests == []  # nothing was sent over the unverified connection


# ------------------------------------------------------- the proxy's own HTTP clients (httpx) verify too
def add_account(app, fake):
    acct = fake.add_account()
    account = Account.from_tokens(acct.id_token, acct.access_token, acct.refresh_token, last_refresh=time.time())
    app.accounts.add(account)
    return acct, account


@pytest.mark.parametrize("trust", ["the test CA", "another CA", "the system CAs"])
def test_background_clients_verify_with_upstream_ca_file(app, strict, tmp_path, trust):
    """Token refresh (OAuth), usage polling and the model list use httpx, not mitmproxy: they must
    trust upstream.ca_file exactly as the proxy path does."""
    from codexproxy_plugins.accounts import oauth, tokens, usage
    from codexproxy_plugins.adapter import refresh_models

    if trust == "another CA":
        app.config.upstream.ca_file = make_test_ca(tmp_path / "other-ca", name="some other CA").ca_file
    elif trust == "the system CAs":
        app.config.upstream.ca_file = None
    _, account = add_account(app, strict)
    trusted = trust == "the test CA"

    models = refresh_models(app)
    assert (models is not None and "gpt-5-codex" in models) if trusted else models is None

    if trusted:
        assert usage.poll_account(app, account).id == account.id
        assert tokens.refresh(app, account.id, "test").access_token != account.access_token
        assert strict.refresh_calls == 1
    else:
        with pytest.raises(usage.UsageError):
            usage.poll_account(app, account)
        with pytest.raises(oauth.OAuthError) as err:
            oauth.refresh_tokens(app.config.oauth, account.refresh_token, verify=oauth.tls_verify(app.config))
        assert "certificate" in str(err.value).lower()
        assert strict.all_requests == [] and strict.refresh_calls == 0
