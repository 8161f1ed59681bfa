"""Tests of the fake upstream itself: the other suites trust it to behave like the Codex backend and OAuth issuer.

Every test that talks to the fake runs twice: against the fake directly ("plain") and through the
nginx TLS front the other suites use ("tls", tests/strict_upstream.py) -- so the front is proven
not to change what a behaviour does on the wire (mid-stream cuts, closes without an answer,
keep-alive, 2 MB error bodies, event-by-event streaming)."""
from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import start_strict_front
from tests.fakeupstream import (B, CLIENT_ID, DEFAULT_MODELS, CanaryServer, FakeUpstream, b64url, decode_jwt,
                                pkce_challenge, zstd)

REDIRECT = "http://localhost:1455/auth/callback"
TEXT_ORDER = ["response.created", "response.in_progress", "response.output_item.added",
              "response.content_part.added", "response.output_text.delta", "response.output_text.done",
              "response.content_part.done", "response.output_item.done", "response.completed"]
USAGE_HEADERS = ["x-codex-primary-used-percent", "x-codex-primary-window-minutes", "x-codex-primary-reset-at",
                 "x-codex-secondary-used-percent", "x-codex-secondary-window-minutes",
                 "x-codex-secondary-reset-at", "x-codex-credits-has-credits", "x-codex-credits-balance"]


def started(mode: str):
    """A fake, fronted by nginx with TLS when mode == "tls"; stop it with stopped()."""
    f = FakeUpstream().start()
    f.front = start_strict_front(f) if mode == "tls" else None
    return f


def stopped(f: FakeUpstream) -> None:
    if f.front is not None:
        f.front.stop()
    f.stop()


def verify(f: FakeUpstream):
    """httpx `verify` for this fake: the test CA when it is behind TLS (and nothing else)."""
    return ssl.create_default_context(cafile=f.ca_file) if f.ca_file else True


@pytest.fixture(params=["plain", "tls"])
def fake(request):
    f = started(request.param)
    yield f
    stopped(f)
    assert f.errors == []


@pytest.fixture
def acct(fake):
    return fake.add_account(email="a@x.com", plan="plus")


@pytest.fixture
def client(fake):
    with httpx.Client(timeout=10, verify=verify(fake)) as c:
        yield c


def hdrs(acct, **extra):
    return {"Authorization": f"Bearer {acct.access_token}", "ChatGPT-Account-Id": acct.account_id, **extra}


def body(**kw):
    return {"model": "gpt-5-codex", "stream": True, "store": False,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}], **kw}


def parse_sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def post(client, fake, acct, **kw):
    return client.post(fake.codex_base + "/responses", json=body(**kw), headers=hdrs(acct))


def dedupe(names):
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


# ------------------------------------------------------------------------------------ streaming
def test_ok_stream_order_headers_and_record(fake, acct, client):
    fake.set_usage(acct.account_id, primary=42.0, secondary=10.0, primary_reset_in=3600, secondary_reset_in=86400)
    r = post(client, fake, acct)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.headers["x-codex-primary-used-percent"] == "42.0"
    assert r.headers["x-codex-primary-window-minutes"] == "300"
    assert r.headers["x-codex-secondary-window-minutes"] == "10080"
    assert abs(int(r.headers["x-codex-primary-reset-at"]) - (time.time() + 3600)) < 5
    events = parse_sse(r.text)
    names = [e for e, _ in events]
    assert dedupe(names) == TEXT_ORDER
    assert names.count("response.output_text.delta") == 3
    assert all(d["type"] == e for e, d in events)
    assert "".join(d["delta"] for e, d in events if e.endswith("text.delta")) == "Hello"
    done = events[-1][1]["response"]
    assert done["id"].startswith("resp_") and done["status"] == "completed"
    assert done["output"][0]["id"].startswith("msg_")
    assert done["output"][0]["content"][0]["text"] == "Hello"
    assert set(done["usage"]) >= {"input_tokens", "input_tokens_details", "output_tokens",
                                  "output_tokens_details", "total_tokens"}
    rec = fake.requests[-1]
    assert (rec.method, rec.path, rec.account_id) == ("POST", "/backend-api/codex/responses", acct.account_id)
    assert rec.json["model"] == "gpt-5-codex" and rec.headers["chatgpt-account-id"] == acct.account_id


def test_ok_options_rate_limits_and_empty_output(fake, acct, client):
    fake.script(acct.account_id, B.ok(text="abcdef", deltas=6, rate_limits=True, empty_output=True))
    events = parse_sse(post(client, fake, acct).text)
    assert events[0][0] == "codex.rate_limits" and events[1][0] == "response.created"
    assert [d["delta"] for e, d in events if e.endswith("text.delta")] == list("abcdef")
    assert events[-1][1]["response"]["output"] == []


def test_chunked_delivery_is_incremental(fake, acct, client):
    fake.script(acct.account_id, B.drip(delay=0.3, count=3))
    stamps = []
    with client.stream("POST", fake.codex_base + "/responses", json=body(), headers=hdrs(acct)) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                stamps.append((line, time.monotonic()))
    assert stamps[0][0] == "event: response.created"
    assert stamps[-1][1] - stamps[0][1] >= 0.8  # the first event arrived long before the last


def test_script_queue_then_default_and_keepalive(fake, acct, client):
    fake.script(acct, "server_error", B.ok(text="second"))
    fake.set_default(acct.account_id, B.ok(text="dflt"))
    assert post(client, fake, acct).status_code == 500
    texts = [parse_sse(post(client, fake, acct).text)[-1][1]["response"]["output"][0]["content"][0]["text"]
             for _ in range(2)]
    assert texts == ["second", "dflt"]
    assert len({r.peer for r in fake.requests}) == 1  # one keep-alive connection served all three


def test_reasoning_tool_calls_and_echo(fake, acct, client):
    fake.script(acct.account_id, B.reasoning(summary="Think"), B.tool_call(parallel=True), B.echo())
    names = [e for e, _ in parse_sse(post(client, fake, acct).text)]
    assert names.index("response.reasoning_summary_text.delta") < names.index("response.output_text.delta")
    assert "response.reasoning_summary_part.added" in names

    events = parse_sse(post(client, fake, acct).text)
    added = [d["item"] for e, d in events if e == "response.output_item.added"]
    assert [i["type"] for i in added] == ["function_call", "function_call"]
    assert all(i["call_id"].startswith("call_") and i["name"] == "get_weather" for i in added)
    args = [d for e, d in events if e == "response.function_call_arguments.done"]
    assert [json.loads(a["arguments"]) for a in args] == [{"city": "Paris"}, {"city": "Tokyo"}]
    frags = "".join(d["delta"] for e, d in events if e == "response.function_call_arguments.delta"
                    and d["output_index"] == 0)
    assert frags == '{"city": "Paris"}'
    assert len(events[-1][1]["response"]["output"]) == 2

    b = body()
    events = parse_sse(client.post(fake.codex_base + "/responses", json=b, headers=hdrs(acct)).text)
    text = "".join(d["delta"] for e, d in events if e == "response.output_text.delta")
    assert json.loads(text) == b["input"]


def test_failed_no_completed_and_incomplete(fake, acct, client):
    fake.script(acct.account_id, B.failed(), B.no_completed(), B.incomplete())
    last = parse_sse(post(client, fake, acct).text)[-1]
    assert last[0] == "response.failed"
    assert last[1]["response"]["error"]["code"] == "server_is_overloaded"
    r = post(client, fake, acct)
    assert r.status_code == 200 and "response.completed" not in r.text
    assert parse_sse(r.text)[-1][0] == "response.output_item.done"
    last = parse_sse(post(client, fake, acct).text)[-1]
    assert last[0] == "response.incomplete"
    assert last[1]["response"]["incomplete_details"]["reason"] == "max_output_tokens"


@pytest.mark.parametrize("rst", [False, True])
def test_cut_closes_without_terminator(fake, acct, client, rst):
    fake.script(acct.account_id, B.cut(after_events=3, rst=rst))
    got = []
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        with client.stream("POST", fake.codex_base + "/responses", json=body(), headers=hdrs(acct)) as r:
            for line in r.iter_lines():
                if line.startswith("event:"):
                    got.append(line)
    assert len(got) == 3
    assert post(client, fake, acct).status_code == 200  # the server (and the client pool) carry on


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("behaviour,status,check", [
    (B.usage_limit(resets_in=120), 429, lambda r: r.json()["error"]["type"] == "usage_limit_reached"
     and r.json()["error"]["resets_in_seconds"] == 120 and r.json()["error"]["plan_type"] == "plus"
     and abs(r.json()["error"]["resets_at"] - time.time() - 120) < 5),
    (B.rate_limited(retry_after=7), 429, lambda r: r.headers["retry-after"] == "7"),
    (B.unauthorized(), 401, lambda r: r.json()["error"]["code"] == "token_expired"),
    (B.deactivated(), 403, lambda r: "account has been deactivated" in r.text),
    (B.cloudflare(), 403, lambda r: r.headers["content-type"].startswith("text/html")
     and "<title>Just a moment...</title>" in r.text),
    (B.server_error(), 500, lambda r: r.json()["error"]["type"] == "server_error"),
    (B.server_error(status=502), 502, lambda r: True),
    (B.server_error(status=503), 503, lambda r: True),
    (B.bad_request(message="nope"), 400, lambda r: r.json()["error"]["message"] == "nope"),
    (B.big_error(status=500, size_bytes=2_000_000), 500, lambda r: abs(len(r.content) - 2_000_000) < 100),
])
def test_error_behaviours(fake, acct, client, behaviour, status, check):
    fake.set_usage(acct.account_id, primary=99.0)
    fake.script(acct.account_id, behaviour)
    r = post(client, fake, acct)
    assert r.status_code == status
    assert check(r)
    assert all(h in r.headers for h in USAGE_HEADERS)
    assert r.headers["x-codex-primary-used-percent"] == "99.0"
    assert post(client, fake, acct).status_code == 200  # keep-alive survives the error


def test_request_validation(fake, acct, client):
    url = fake.codex_base + "/responses"
    assert client.post(url, json=body()).status_code == 401
    assert client.post(url, json=body(), headers={"Authorization": "Bearer nope"}).status_code == 401
    other = fake.add_account()
    assert client.post(url, json=body(), headers=hdrs(acct, **{"ChatGPT-Account-Id": other.account_id})
                       ).status_code == 401
    r = client.post(url, json=body(stream=False), headers=hdrs(acct))
    assert r.status_code == 400 and "Stream must be set to true" in r.text
    assert client.post(url, content=b"{not json", headers=hdrs(acct)).status_code == 400
    assert len(fake.requests) == 5  # every POST /responses is recorded, rejected or not
    r = client.get(fake.url + "/nowhere")
    assert r.status_code == 404 and "error" in r.json()


def test_expire_access_token(fake, acct, client):
    fake.expire_access_token(acct)
    r = post(client, fake, acct)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_hang_is_released_by_stop(mode):
    fake = started(mode)
    a = fake.add_account()
    fake.script(a.account_id, B.hang())
    errors = []

    def call():
        try:
            httpx.post(fake.codex_base + "/responses", json=body(), headers=hdrs(a), timeout=30, verify=verify(fake))
        except httpx.HTTPError as e:
            errors.append(e)
    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    assert t.is_alive()
    begin = time.monotonic()
    fake.stop()  # the fake only: behind nginx the client must still see the close, not a 502 page
    t.join(5)
    assert not t.is_alive() and errors and time.monotonic() - begin < 3
    assert isinstance(errors[0], httpx.RemoteProtocolError)
    stopped(fake)


def test_hang_is_released_by_reset(fake, acct):
    fake.script(acct.account_id, B.hang())
    t = threading.Timer(0.3, fake.reset)
    t.start()
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(fake.codex_base + "/responses", json=body(), headers=hdrs(acct), timeout=10, verify=verify(fake))
    assert 0.25 < time.monotonic() - started < 3


def test_handler_exception_answers_500(fake, acct, client, monkeypatch):
    monkeypatch.setattr(fake, "usage_json", lambda a: 1 / 0)
    r = client.get(fake.usage_base + "/wham/usage", headers=hdrs(acct))
    assert r.status_code == 500
    assert "ZeroDivisionError" in fake.errors.pop()
    assert client.get(fake.codex_base + "/models", headers=hdrs(acct)).status_code == 200


# ------------------------------------------------------------------------------ models and usage
def test_models(fake, acct, client):
    url = fake.codex_base + "/models?client_version=0.169.0"
    assert client.get(url).status_code == 401
    slugs = [m["slug"] for m in client.get(url, headers=hdrs(acct)).json()["models"]]
    assert {"gpt-5-codex", "gpt-5.5"} <= set(slugs)


def test_usage_endpoint(fake, acct, client):
    url = fake.usage_base + "/wham/usage"
    fake.set_usage(acct.account_id, primary=42.0, secondary=100.0, primary_reset_in=3600,
                   has_credits=True, balance="12.5")
    data = client.get(url, headers=hdrs(acct)).json()
    assert data["plan_type"] == "plus"
    pw, sw = data["rate_limit"]["primary_window"], data["rate_limit"]["secondary_window"]
    assert pw["used_percent"] == 42.0 and pw["limit_window_seconds"] == 18000
    assert 3590 <= pw["reset_after_seconds"] <= 3600 and pw["reset_at"] > time.time()
    assert sw["limit_window_seconds"] == 604800
    assert data["rate_limit"]["limit_reached"] is True and data["rate_limit"]["allowed"] is False
    assert data["credits"] == {"has_credits": True, "unlimited": False, "balance": "12.5"}
    fake.set_usage(acct.account_id, primary=None)
    assert client.get(url, headers=hdrs(acct)).json()["rate_limit"]["primary_window"] is None
    assert client.get(url, headers={"Authorization": f"Bearer {acct.access_token}"}).status_code == 401
    fake.set_usage_behaviour(acct.account_id, "unauthorized")
    assert client.get(url, headers=hdrs(acct)).status_code == 401
    fake.set_usage_behaviour(acct.account_id, "server_error")
    assert client.get(url, headers=hdrs(acct)).status_code == 500
    assert fake.requests == [] and len(fake.all_requests) == 5


# ---------------------------------------------------------------------------------------- tokens
def test_account_tokens_and_auth_json(fake, acct):
    claims = decode_jwt(acct.id_token)
    assert claims["email"] == "a@x.com" and claims["sub"] and claims["exp"] > time.time()
    auth = claims["https://api.openai.com/auth"]
    assert auth["chatgpt_account_id"] == acct.account_id and auth["chatgpt_plan_type"] == "plus"
    assert auth["chatgpt_user_id"]
    assert decode_jwt(acct.access_token)["exp"] > time.time()
    assert json.loads(b64url_decode(acct.id_token.split(".")[0])) == {"alg": "none", "typ": "JWT"}
    data = fake.auth_json(acct)
    assert data["auth_mode"] == "chatgpt" and data["OPENAI_API_KEY"] is None
    assert data["tokens"]["refresh_token"] == acct.refresh_token and data["tokens"]["account_id"] == acct.account_id
    assert data["last_refresh"].endswith("Z")


def b64url_decode(s):
    import base64
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def authorize(client, fake, challenge, state="st4te", **over):
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
              "scope": "openid profile email offline_access", "code_challenge": challenge,
              "code_challenge_method": "S256", "state": state, "originator": "codex_cli_rs", **over}
    return client.get(fake.issuer + "/oauth/authorize", params=params)


def exchange(client, fake, code, verifier, redirect=REDIRECT):
    return client.post(fake.issuer + "/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
        "client_id": CLIENT_ID, "code_verifier": verifier})


def test_pkce_login(fake, acct, client):
    verifier = b64url(b"v" * 64)
    fake.next_login_account = acct
    r = authorize(client, fake, pkce_challenge(verifier))
    assert r.status_code == 302
    loc = urlsplit(r.headers["location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == REDIRECT
    q = {k: v[0] for k, v in parse_qs(loc.query).items()}
    assert q["state"] == "st4te"
    assert exchange(client, fake, q["code"], "wrong-verifier").status_code == 400
    # a code is single-use: the failed attempt burnt it
    assert exchange(client, fake, q["code"], verifier).status_code == 400

    q = parse_qs(urlsplit(authorize(client, fake, pkce_challenge(verifier)).headers["location"]).query)
    assert exchange(client, fake, q["code"][0], verifier, redirect="http://localhost:9/x").status_code == 400
    q = parse_qs(urlsplit(authorize(client, fake, pkce_challenge(verifier)).headers["location"]).query)
    r = exchange(client, fake, q["code"][0], verifier)
    assert r.status_code == 200
    tokens = r.json()
    assert set(tokens) >= {"id_token", "access_token", "refresh_token", "expires_in"}
    assert decode_jwt(tokens["id_token"])["https://api.openai.com/auth"]["chatgpt_account_id"] == acct.account_id
    assert tokens["access_token"] == acct.access_token  # the account object tracks its newest tokens
    assert exchange(client, fake, q["code"][0], verifier).status_code == 400  # reused code


def test_authorize_validation_new_account_and_error(fake, client):
    assert authorize(client, fake, "c", client_id="other").status_code == 400
    assert authorize(client, fake, "c", code_challenge_method="plain").status_code == 400
    assert authorize(client, fake, "c", response_type="token").status_code == 400
    n = len(fake.accounts)
    assert authorize(client, fake, "c").status_code == 302 and len(fake.accounts) == n + 1
    fake.authorize_error = "access_denied"
    q = parse_qs(urlsplit(authorize(client, fake, "c", state="s2").headers["location"]).query)
    assert q["error"] == ["access_denied"] and q["state"] == ["s2"] and q["error_description"]
    assert "code" not in q


def refresh(client, fake, token, as_json=True):
    payload = {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": token,
               "scope": "openid profile email"}
    url = fake.issuer + "/oauth/token"
    return client.post(url, json=payload) if as_json else client.post(url, data=payload)


def test_refresh_rotation_and_reuse(fake, acct, client):
    old_rt, old_at = acct.refresh_token, acct.access_token
    r = refresh(client, fake, old_rt)
    assert r.status_code == 200
    new = r.json()
    assert new["refresh_token"] != old_rt and new["access_token"] != old_at and new["id_token"]
    assert acct.refresh_token == new["refresh_token"]
    r = refresh(client, fake, old_rt)
    assert r.status_code == 401 and r.json()["error"]["code"] == "refresh_token_reused"
    assert refresh(client, fake, new["refresh_token"], as_json=False).status_code == 200  # form works too
    fake.invalidate_refresh(acct)
    r = refresh(client, fake, acct.refresh_token)
    assert r.status_code == 401 and r.json()["error"]["code"] == "refresh_token_expired"
    assert fake.refresh_calls == 4
    fake.expire_access_token(acct)
    assert post(client, fake, acct).status_code == 401


def test_concurrent_refresh_overlaps(fake, acct):
    fake.refresh_delay = 0.3
    rt, results = acct.refresh_token, []

    def go():
        with httpx.Client(verify=verify(fake)) as c:
            results.append(refresh(c, fake, rt).status_code)
    threads = [threading.Thread(target=go) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [200, 401] and fake.refresh_calls == 2


def test_device_flow(fake, acct, client):
    base = fake.issuer + "/api/accounts/deviceauth"
    assert client.post(base + "/usercode", json={"client_id": "bad"}).status_code == 401
    uc = client.post(base + "/usercode", json={"client_id": CLIENT_ID}).json()
    assert set(uc) >= {"device_auth_id", "user_code", "interval"} and int(uc["interval"]) >= 1
    poll = {"device_auth_id": uc["device_auth_id"], "user_code": uc["user_code"]}
    assert client.post(base + "/token", json=poll).status_code == 403
    assert client.post(base + "/token", json={**poll, "user_code": "WRONG"}).status_code == 404
    fake.approve_device(uc["user_code"], account=acct)
    res = client.post(base + "/token", json=poll).json()
    assert pkce_challenge(res["code_verifier"]) == res["code_challenge"]
    # device codes must be exchanged with redirect_uri={issuer}/deviceauth/callback (and burn on failure)
    assert exchange(client, fake, res["authorization_code"], res["code_verifier"]).status_code == 400

    fake.device_auto_approve_after = 2
    uc = client.post(base + "/usercode", json={"client_id": CLIENT_ID}).json()
    poll = {"device_auth_id": uc["device_auth_id"], "user_code": uc["user_code"]}
    assert [client.post(base + "/token", json=poll).status_code for _ in range(3)] == [403, 403, 200]
    res = client.post(base + "/token", json=poll).json()
    r = exchange(client, fake, res["authorization_code"], res["code_verifier"],
                 redirect=fake.issuer + "/deviceauth/callback")
    assert r.status_code == 200 and "refresh_token" in r.json()
    page = client.get(fake.issuer + "/codex/device")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


# ------------------------------------------------------------------ bodies, fallback, knobs, URLs
@pytest.mark.parametrize("coding,encode", [
    ("zstd", zstd.compress),
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),                                                   # RFC 9110: zlib-wrapped
    ("deflate", lambda d: zlib.compress(d, wbits=-zlib.MAX_WBITS)),                # raw deflate, seen too
    ("gzip, zstd", lambda d: zstd.compress(gzip.compress(d))),                     # applied in order
])
def test_compressed_request_bodies_are_decoded_and_both_recorded(fake, acct, client, coding, encode):
    plain = json.dumps(body(prompt_cache_key="pck")).encode()
    raw = encode(plain)
    r = client.post(fake.codex_base + "/responses", content=raw,
                    headers=hdrs(acct, **{"Content-Encoding": coding, "Content-Type": "application/json"}))
    assert r.status_code == 200 and "response.completed" in r.text
    rec = fake.requests[-1]
    assert rec.raw_body == raw and rec.body == plain and rec.json["prompt_cache_key"] == "pck"


def test_undecodable_or_unknown_encodings_are_refused(fake, acct, client):
    url = fake.codex_base + "/responses"
    r = client.post(url, content=b"not zstd at all", headers=hdrs(acct, **{"Content-Encoding": "zstd"}))
    assert r.status_code == 400 and "zstd" in r.json()["error"]["message"]
    r = client.post(url, content=b"{}", headers=hdrs(acct, **{"Content-Encoding": "compress"}))
    assert r.status_code == 415
    assert [q.raw_body for q in fake.requests] == [b"not zstd at all", b"{}"]  # recorded all the same


def test_fallback_upstream_route(fake, client):
    url = fake.fallback_base + "/responses"
    assert fake.fallback_base == fake.url + "/v1"
    key = {"Authorization": f"Bearer {fake.fallback_api_key}"}
    r = client.post(url, json=body(), headers={"Authorization": "Bearer sk-wrong-key-1234"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "sk-wrong-key-1234" not in r.text  # shown masked, as the real API does
    r = client.post(url, json=body(), headers=key)
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    assert dedupe([e for e, _ in parse_sse(r.text)]) == TEXT_ORDER
    assert not any(h.startswith("x-codex-") for h in r.headers)  # an API-key upstream has no pool usage
    fake.script(fake.FALLBACK, B.ok(text="not streamed"), B.server_error(status=503))
    r = client.post(url, json=body(stream=False), headers=key)
    assert r.json()["status"] == "completed" and r.json()["output"][0]["content"][0]["text"] == "not streamed"
    assert client.post(url, json=body(), headers=key).status_code == 503
    fake.fallback_api_key = "sk-other"
    assert client.post(url, json=body(), headers=key).status_code == 401
    assert len(fake.fallback_requests) == 5 and fake.requests == []
    assert fake.fallback_requests[1].headers["authorization"] == key["Authorization"]


def test_reset_restores_every_knob(fake, acct):
    defaults = {name: getattr(fake, name) for name in ("token_ttl", "device_interval", "fallback_api_key",
                                                       "refresh_delay", "authorize_error", "next_login_account",
                                                       "device_auto_approve_after")}
    assert defaults["fallback_api_key"] == "sk-fallback-test"
    fake.models.append({"slug": "extra"})
    fake.models[0]["slug"] = "mutated"
    for name, value in {"token_ttl": 5, "device_interval": 9, "fallback_api_key": "x", "refresh_delay": 3.0,
                        "authorize_error": "access_denied", "next_login_account": acct,
                        "device_auto_approve_after": 1}.items():
        setattr(fake, name, value)
    fake.script(acct, B.server_error())
    fake.set_default(acct, B.usage_limit())
    fake.set_usage_behaviour(acct, "server_error")
    fake.reset()
    assert {name: getattr(fake, name) for name in defaults} == defaults
    assert fake.models == DEFAULT_MODELS and DEFAULT_MODELS[0]["slug"] == "gpt-5-codex"
    assert fake.next_behaviour(acct).kind == "ok" and fake._usage_behaviour == {}
    assert acct.account_id in fake.accounts  # accounts and their tokens survive


def test_public_url_front_and_peer(fake, acct):
    if fake.front is None:
        assert fake.url == fake.raw_url and fake.ca_file is None
        return
    assert fake.url.startswith("https://") and fake.raw_url.startswith("http://") and fake.url != fake.raw_url
    assert fake.codex_base == fake.url + "/backend-api/codex" and fake.issuer == fake.url
    # the raw fake is still reachable (lenient: it takes a request without Host; nginx would not)
    with socket.create_connection((fake.host, fake.port), timeout=5) as s:
        s.sendall(b"GET /codex/device HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    # through nginx, `peer` is the client's own connection (the keep-alive checks need it), and the
    # header that carries it is not among the recorded ones
    ctx = ssl.create_default_context(cafile=fake.ca_file)
    with socket.create_connection(("127.0.0.1", fake.front.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            for _ in range(2):
                s.sendall(b"GET /backend-api/codex/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Authorization: Bearer " + acct.access_token.encode() + b"\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(65536)
                assert head.startswith(b"HTTP/1.1 200")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                rest = head.split(b"\r\n\r\n", 1)[1]
                while len(rest) < length:
                    rest += s.recv(65536)
            local = s.getsockname()
    peers = [r.peer for r in fake.all_requests[1:]]  # [0]: the raw request above
    assert peers == [("127.0.0.1", local[1])] * 2
    assert "x-fake-peer" not in fake.all_requests[-1].headers


# ------------------------------------------------------------------------------- canary and CLI
def test_canary_records_connections():
    with CanaryServer() as canary:
        assert not canary.touched
        httpx.post(canary.url + "/leak?x=1", json={"a": 1}, headers={"Authorization": "Bearer s3cret"})
        with socket.create_connection((canary.host, canary.port)) as s:
            s.sendall(b"\x16\x03\x01 not http at all")  # e.g. a TLS ClientHello
        deadline = time.monotonic() + 5
        while len(canary.connections) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert canary.touched and len(canary.connections) == 2
        assert canary.requests[0].headers["authorization"] == "Bearer s3cret"


def test_cli_prints_url_and_auth_json(tmp_path):
    script = Path(__file__).with_name("fakeupstream.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--auth-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        auth_path = Path(proc.stdout.readline().strip())
        auth = json.loads(auth_path.read_text())
        assert (auth_path.stat().st_mode & 0o777) == 0o600
        r = httpx.post(url + "/backend-api/codex/responses", json=body(), headers={
            "Authorization": f"Bearer {auth['tokens']['access_token']}",
            "ChatGPT-Account-Id": auth["tokens"]["account_id"]})
        assert r.status_code == 200 and "response.completed" in r.text
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()
