"""What the proxy puts on the wire to the upstream: Host, the client's headers under their own
names, the client's body bytes, no control character ever, compressed bodies decoded — and
the exhausted-pool answer in the upstream's own shape."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import httpx
import pytest

from tests.capture_upstream import CaptureUpstream
from tests.capture_upstream import capture  # noqa: F401 (a fixture)
from tests.conftest import RESPONSES_BODY
from tests.rawhttp import raw_request
from tests.fakeupstream import B

CODEX_HEADERS = {
    "originator": "codex_exec",
    "user-agent": "codex_exec/0.169.0 (Debian 12; x86_64) xterm",
    "session-id": "0199a8d2-5f3c-7d10-9b8e-0123456789ab",
    "thread-id": "0199a8d2-5f3c-7d10-9b8e-0123456789ab",
    "x-client-request-id": "0199a8d2-aaaa-7d10-9b8e-0123456789ab",
    "x-codex-window-id": "w-1",
    "x-codex-turn-metadata": '{"request_kind":"turn"}',
    "x-codex-beta-features": "remote_compaction_v2",
}


def zstd_compress(data: bytes) -> bytes:
    try:
        from compression import zstd
    except ImportError:
        from backports import zstd
    return zstd.compress(data)


def codex_body() -> bytes:
    # Spelled the way a client spells it (key order, spacing, no `instructions`): it must
    # reach the upstream byte for byte.
    body = {"model": "gpt-5-codex", "input": [{"type": "message", "role": "user",
                                               "content": [{"type": "input_text", "text": "héllo"}]}],
            "tools": [], "tool_choice": "auto", "parallel_tool_calls": True, "reasoning": {"summary": "auto"},
            "store": False, "stream": True, "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": CODEX_HEADERS["session-id"]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def upstream_authority(fake) -> str:
    return httpx.URL(fake.codex_base).netloc.decode()


def test_upstream_gets_its_host_the_client_headers_and_the_client_bytes(proxy, fake):
    raw = codex_body()
    with proxy.client() as client:
        r = client.post("/v1/responses", content=raw,
                        headers={**proxy.auth, **CODEX_HEADERS, "content-type": "application/json"})
        assert r.status_code == 200, r.text
    seen = fake.requests[-1]
    assert seen.headers["host"] == upstream_authority(fake)
    for name, value in CODEX_HEADERS.items():
        assert seen.headers[name] == value, name
    assert "session_id" not in seen.headers  # the client's session-id went under its own name
    assert seen.body == raw
    assert seen.headers["authorization"] == f"Bearer {proxy.fake_accounts[0].access_token}"
    assert seen.headers["chatgpt-account-id"] == proxy.fake_accounts[0].account_id
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["content-type"] == "application/json"
    assert proxy.key not in json.dumps(seen.headers)


def test_host_is_the_upstreams_on_every_failover_resend(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    fake.script(proxy.fake_accounts[0], B.server_error(status=502))
    with proxy.client() as client:
        r = client.post("/v1/responses", json=RESPONSES_BODY, headers={**proxy.auth, "host": "127.0.0.1"})
    assert r.status_code == 200
    assert len(fake.requests) == 2
    assert {rec.headers["host"] for rec in fake.requests} == {upstream_authority(fake)}


def test_a_session_comes_from_prompt_cache_key_when_the_client_sent_none(proxy, fake):
    body = dict(RESPONSES_BODY, prompt_cache_key="conv-42")
    with proxy.client() as client:
        assert client.post("/v1/responses", json=body, headers=proxy.auth).status_code == 200
    assert fake.requests[-1].headers["session_id"] == "conv-42"


# --- header injection, judged by a raw capture upstream ------------------------------------------
# The capture (tests/capture_upstream.py) parses the wire strictly and records every request as it
# arrived, refused ones included, so a split request or an injected field would show up there.

@pytest.fixture
def capture_proxy(make_proxy, capture):
    """A proxy whose upstream (base_url) is the capture; usage polls still go to the fake."""
    return make_proxy({"upstream": {"base_url": capture.codex_base}})


def assert_one_well_formed_request(cap: CaptureUpstream, header: str, value: str) -> None:
    """What the upstream saw, once the refused request and one good request have been answered:
    exactly one request, parsed without complaint, one Host (the capture's), the good request's
    `header: value` exactly once, nothing injected and no second request."""
    time.sleep(0.3)  # a request split off the refused one would arrive after the good one's answer
    seen = list(cap.requests)
    assert [(r.method, r.path) for r in seen] == [("POST", "/backend-api/codex/responses")], \
        [(r.method, r.target, r.error) for r in seen]
    req = seen[0]
    assert req.error is None and req.status == 200, req.error
    assert req.values("host") == [cap.authority]
    assert req.values(header) == [value]
    assert req.values("x-injected") == []
    head = req.raw_head.lower()
    assert b"x-injected" not in head and b"wham/usage" not in head and b"\x00" not in head
    assert head.count(b"\r\n\r\n") == 1 and head.count(b" http/1.1\r\n") == 1  # one request line, one head


@pytest.mark.parametrize("header", ["x-codex-turn-metadata", "x-openai-subagent"])  # both PASS_PREFIXES
@pytest.mark.parametrize("value", [b"a\rX-Injected: 1", b"a\x00b", b"a\x7fb", b"a\r\n GET /backend-api/wham/usage HTTP/1.1"],
                         ids=["bare-cr", "nul", "del", "obs-fold"])
def test_a_header_with_a_control_character_never_reaches_the_upstream(capture_proxy, capture, header, value):
    proxy = capture_proxy
    body = json.dumps(RESPONSES_BODY).encode()
    head = (b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + proxy.key.encode() +
            b"\r\nContent-Type: application/json\r\n" + header.encode() + b": " + value +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    status, answer = raw_request(proxy, head + body)
    assert status == 400, answer
    error = json.loads(answer)["error"]  # always a body, and it names the header
    assert error["param"] == header and f"'{header}'" in error["message"], error
    assert capture.requests == []  # refused before anything went upstream
    # The same header with a clean value is passed, and the upstream sees exactly one request.
    with proxy.client() as client:
        r = client.post("/v1/responses", json=RESPONSES_BODY, headers={**proxy.auth, header: "clean"})
        assert r.status_code == 200, r.text
    assert_one_well_formed_request(capture, header, "clean")


@pytest.mark.parametrize("key", ["conv\r\nX-Injected: 1", "conv\rGET /backend-api/wham/usage", "a\x00b"],
                         ids=["crlf", "bare-cr", "nul"])
def test_prompt_cache_key_with_a_control_character_is_refused(capture_proxy, capture, key):
    proxy = capture_proxy
    with proxy.client() as client:
        r = client.post("/v1/responses", json=dict(RESPONSES_BODY, prompt_cache_key=key), headers=proxy.auth)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "field 'prompt_cache_key'" and "prompt_cache_key" in error["message"], error
        assert capture.requests == []
        # A clean key becomes the upstream's session_id, on exactly one well-formed request.
        ok = client.post("/v1/responses", json=dict(RESPONSES_BODY, prompt_cache_key="conv-42"), headers=proxy.auth)
        assert ok.status_code == 200, ok.text
    assert_one_well_formed_request(capture, "session_id", "conv-42")


@pytest.mark.parametrize("coding", ["zstd", "gzip", "deflate"])
def test_compressed_request_bodies_are_decoded(proxy, fake, coding):
    raw = codex_body()
    packed = {"zstd": zstd_compress, "gzip": gzip.compress, "deflate": zlib.compress}[coding](raw)
    with proxy.client() as client:
        r = client.post("/v1/responses", content=packed,
                        headers={**proxy.auth, **CODEX_HEADERS, "content-type": "application/json", "content-encoding": coding})
        assert r.status_code == 200, r.text
        chat = client.post("/v1/chat/completions", headers={**proxy.auth, "content-encoding": coding},
                           content={"zstd": zstd_compress, "gzip": gzip.compress, "deflate": zlib.compress}[coding](
                               json.dumps({"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}).encode()))
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == "Hello"
    seen = fake.requests[0]
    assert seen.body == raw  # decoded, then sent as the client's bytes
    assert "content-encoding" not in seen.headers


def test_a_zstd_bomb_gets_413_and_bad_zstd_400(make_proxy, fake):
    proxy = make_proxy({"limits": {"max_body_bytes": 1_000_000}})
    bomb = zstd_compress(b"[" + b" " * 50_000_000 + b"]")
    assert len(bomb) < 100_000
    with proxy.client() as client:
        r = client.post("/v1/responses", content=bomb, headers={**proxy.auth, "content-encoding": "zstd"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = client.post("/v1/responses", content=b"not zstd at all", headers={**proxy.auth, "content-encoding": "zstd"})
        assert r.status_code == 400 and "zstd" in r.json()["error"]["message"]
        r = client.post("/v1/responses", content=b"{}", headers={**proxy.auth, "content-encoding": "br"})
        assert r.status_code == 415
    assert fake.all_requests == []


def test_bad_json_the_client_sent_is_a_400_not_a_500(proxy, fake):
    with proxy.client() as client:
        nested = client.post("/v1/responses", content=b"[" * 100_000, headers={**proxy.auth, "content-type": "application/json"})
        assert nested.status_code == 400
        chat = client.post("/v1/chat/completions", content=b'{"model": "gpt-5.5", "messages": [{"role": "user", "content": "\\ud800 x"}]}',
                           headers={**proxy.auth, "content-type": "application/json"})
        assert chat.status_code == 400 and "surrogate" in chat.json()["error"]["message"]


def exhaust(proxy, fake, accounts):
    for acct in accounts:
        fake.set_default(acct, B.usage_limit(resets_in=7200))
    with proxy.client() as client:
        r = client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    assert r.status_code == 429


def test_an_exhausted_pool_answers_responses_clients_in_the_upstreams_shape(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    exhaust(proxy, fake, proxy.fake_accounts)
    fake.reset()
    with proxy.client() as client:
        r = client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
        chat = client.post("/v1/chat/completions", json={"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]},
                           headers=proxy.auth)
    assert fake.requests == []  # decided from the store: nobody was asked
    assert r.status_code == 429
    error = r.json()["error"]
    assert error["type"] == "usage_limit_reached"
    assert 7100 < error["resets_in_seconds"] <= 7200
    assert abs(error["resets_at"] - (time.time() + error["resets_in_seconds"])) < 5
    assert error["plan_type"] == "plus"
    # SDK clients keep OpenAI's own type (their retry logic reads it).
    assert chat.status_code == 429 and chat.json()["error"]["type"] == "rate_limit_error"


def test_a_key_pinned_to_an_exhausted_account_gets_the_usage_limit_answer(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    pinned = proxy.cli_json("accounts", "list")[0]
    created = proxy.cli_json("keys", "create", "pinned")
    proxy.cli("keys", "update", created["id"], "--account", pinned["id"], check=True)
    key = created["key"]
    fake.set_default(pinned["chatgpt_account_id"], B.usage_limit(resets_in=3600))
    with proxy.client() as client:
        first = client.post("/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {key}"})
        again = client.post("/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {key}"})
    assert first.status_code == 429 and again.status_code == 429
    assert again.json()["error"]["type"] == "usage_limit_reached"
    assert {r.account_id for r in fake.requests} == {pinned["chatgpt_account_id"]}
