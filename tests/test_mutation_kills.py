"""Tests that notice: each one guards a behaviour a review broke without any test going red.

Every test here drives the running proxy (HTTP through `make_proxy`, or the CLI as a subprocess)
and checks what the client or the upstream actually sees. bench/MUTATION.md lists the mutation
each test was seen to kill (the mutation applied by hand, the test run red, the code restored).
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import pytest

from tests.conftest import PYTHON, RESPONSES_BODY, read_sse, wait_for
from tests.fakeupstream import B

AUTHORIZE = re.compile(r"(https?://\S+/oauth/authorize\?\S+)")


def accounts_by_fake_id(proxy) -> dict[str, dict]:
    return {a["chatgpt_account_id"]: a for a in proxy.cli_json("accounts", "list")}


def token_requests(fake, grant: str) -> list:
    """The POSTs to the issuer's token endpoint with this grant_type (form or JSON body)."""
    out = []
    for rec in fake.all_requests:
        if rec.method != "POST" or rec.path != "/oauth/token":
            continue
        fields = rec.json if isinstance(rec.json, dict) else dict(parse_qsl(rec.body.decode()))
        if fields.get("grant_type") == grant:
            out.append((rec, fields))
    return out


def stored_accounts(proxy) -> dict[str, dict]:
    """The accounts as the proxy last wrote them (the store file is replaced atomically), by fake
    account id. Unlike `accounts list`, an expired cooldown still shows its status_until here: a
    1-second window can be checked however slowly a CLI subprocess starts on a loaded machine."""
    table = json.loads(proxy.store_path.read_text()).get("accounts", {})
    return {doc["chatgpt_account_id"]: doc for doc in table.values()}


def timed(fn):
    """(wall time before, result, wall time after): brackets a cooldown set during fn()."""
    before = time.time()
    result = fn()
    return before, result, time.time()


# --- 1 and 8: the upstream request's Content-Type and Accept-Encoding ----------------------------

@pytest.mark.parametrize("path, body", [
    ("/v1/responses", RESPONSES_BODY),
    ("/v1/chat/completions", {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}),
])
def test_upstream_gets_json_content_type_and_an_uncompressed_stream(proxy, fake, path, body):
    r = httpx.post(proxy.url + path, json=body, timeout=30,
                   headers={**proxy.auth, "accept-encoding": "gzip, br", "content-type": "application/json"})
    assert r.status_code == 200, r.text
    [sent] = fake.requests
    assert sent.headers.get("content-type") == "application/json"
    # The proxy parses the SSE itself: it must never ask for it compressed, whatever the client accepts.
    assert sent.headers.get("accept-encoding") == "identity"
    assert sent.headers.get("accept") == "text/event-stream"


# --- 2 and 3: OAuth as the issuer expects it -----------------------------------------------------

def test_login_authorize_url_and_code_exchange_are_what_the_issuer_expects(make_proxy, fake):
    proxy = make_proxy(accounts=0, key=False, start=False)
    cmd = [PYTHON, "-m", "codexproxy", "accounts", "login", "--no-browser", "-c", str(proxy.config_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=proxy.dir, env=proxy.env)
    try:
        url = next((m.group(1) for line in proc.stdout if (m := AUTHORIZE.search(line))), None)
        assert url, proc.stderr.read()
        query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        assert query["scope"] == "openid profile email offline_access"
        assert query["id_token_add_organizations"] == "true"
        assert query["codex_cli_simplified_flow"] == "true"
        assert query["response_type"] == "code" and query["code_challenge_method"] == "S256"
        assert query["client_id"] == "app_EMoamEEZ73f0CkXaXp7hrann" and query["originator"] == "codex_cli_rs"
        verify = ssl.create_default_context(cafile=fake.ca_file) if fake.ca_file else True
        page = httpx.get(url, follow_redirects=True, timeout=20, verify=verify)
        assert page.status_code == 200, page.text
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    [(rec, fields)] = token_requests(fake, "authorization_code")
    # RFC 6749 §4.1.3: a form, not JSON (the real issuer refuses JSON here).
    assert rec.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
    form = {k: v[-1] for k, v in parse_qs(rec.body.decode()).items()}
    assert set(form) == {"grant_type", "code", "redirect_uri", "client_id", "code_verifier"}
    assert form["redirect_uri"] == query["redirect_uri"] and form["client_id"] == query["client_id"]
    assert len(proxy.cli_json("accounts", "list")) == 1


def test_token_refresh_on_401_sends_the_refresh_scope(proxy, fake):
    acct = proxy.fake_accounts[0]
    fake.expire_access_token(acct)
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth, timeout=30)
    assert r.status_code == 200, r.text
    [(rec, fields)] = token_requests(fake, "refresh_token")
    assert fields["scope"] == "openid profile email"
    assert fields["client_id"] == "app_EMoamEEZ73f0CkXaXp7hrann" and fields["refresh_token"].startswith("rt_")
    assert [req.account_id for req in fake.requests] == [acct.account_id, acct.account_id]


# --- 4: 400/404/422 are the request's fault ------------------------------------------------------

@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_reach_the_client_and_leave_the_account_alone(make_proxy, fake, status):
    proxy = make_proxy(accounts=2)
    first, _ = proxy.fake_accounts
    body = {"error": {"message": f"fake {status} for this request", "type": "invalid_request_error",
                      "code": f"fake_{status}", "param": None}}
    fake.script(first, B.status(status, body=json.dumps(body)))
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth, timeout=30)
    assert r.status_code == status
    assert r.json()["error"]["message"] == f"fake {status} for this request"
    assert [req.account_id for req in fake.requests] == [first.account_id]  # no second account tried
    account = accounts_by_fake_id(proxy)[first.account_id]
    assert account["status"] == "active" and account["cooldown_level"] == 0
    row = proxy.cli_json("logs")[0]
    assert row["status"] == status and len(row["attempts"]) == 1


# --- 5 and 6: cooldown windows -------------------------------------------------------------------

def test_5xx_cools_the_account_30_to_60_seconds(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.server_error(status=503))
    before, r, after = timed(lambda: httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY,
                                                headers=proxy.auth, timeout=30))
    assert r.status_code == 200
    assert [req.account_id for req in fake.requests] == [first.account_id, second.account_id]
    account = accounts_by_fake_id(proxy)[first.account_id]
    assert account["status"] == "cooling"
    assert before + 30 <= account["status_until"] <= after + 60, (before, account["status_until"], after)


def test_429_without_retry_after_backs_off_exponentially(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    too_many = json.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                                     "code": "rate_limit_exceeded"}})
    for level in range(3):  # cooldowns of 2**0, 2**1, 2**2 seconds
        fake.script(first, B.status(429, body=too_many))
        sent = len(fake.requests)
        before, r, after = timed(lambda: httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY,
                                                    headers=proxy.auth, timeout=30))
        assert r.status_code == 200
        assert [req.account_id for req in fake.requests[sent:]] == [first.account_id, second.account_id]
        account = stored_accounts(proxy)[first.account_id]
        assert account["status"] == "cooling" and account["cooldown_level"] == level + 1
        seconds = 2.0 ** level
        assert before + seconds <= account["status_until"] <= after + seconds, (level, before, account, after)
        if level < 2:  # ordered routing: the first account is asked first again once it is back
            wait_for(lambda: accounts_by_fake_id(proxy)[first.account_id]["status"] == "active",
                     timeout=seconds + 30, what="the cooldown to end")


# --- 7: a response.failed in the stream is a failure, in the log and for the client -------------

FAILED_AFTER_OUTPUT = [
    ("response.created", {"response": {"id": "resp_f", "object": "response", "status": "in_progress", "output": []}}),
    ("response.output_item.added", {"output_index": 0, "item": {"type": "message", "id": "msg_f", "role": "assistant",
                                                                 "status": "in_progress", "content": []}}),
    ("response.output_text.delta", {"output_index": 0, "content_index": 0, "item_id": "msg_f", "delta": "Hel"}),
    ("response.failed", {"response": {"id": "resp_f", "object": "response", "status": "failed", "output": [],
                                      "error": {"code": "server_is_overloaded", "message": "fake overload mid-answer"}}}),
]


def test_response_failed_mid_stream_is_logged_as_the_upstream_failure(proxy, fake):
    fake.script(proxy.fake_accounts[0], B.events(FAILED_AFTER_OUTPUT))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            events = read_sse(r)
    assert r.status_code == 200
    assert [kind for _, kind, _ in events][-1] == "response.failed"
    assert "fake overload mid-answer" in events[-1][2]
    row = wait_for(lambda: next(iter(proxy.cli_json("logs")), None), what="the log row")
    assert "server_is_overloaded" in row["error"] and "fake overload mid-answer" in row["error"], row


def test_response_failed_in_a_buffered_answer_is_the_upstream_error(proxy, fake):
    fake.script(proxy.fake_accounts[0], B.events(FAILED_AFTER_OUTPUT))
    r = httpx.post(proxy.url + "/v1/responses", json=dict(RESPONSES_BODY, stream=False), headers=proxy.auth, timeout=30)
    assert r.status_code == 503, r.text  # server_is_overloaded, not a generic "stream closed" 502
    assert r.json()["error"]["code"] == "server_is_overloaded"
    assert r.json()["error"]["message"] == "fake overload mid-answer"
    row = proxy.cli_json("logs")[0]
    assert row["status"] == 503 and "server_is_overloaded" in row["error"]


# --- 9: the model list is fetched the way Codex fetches it ---------------------------------------

def test_model_list_is_fetched_with_client_version(make_proxy, fake):
    proxy = make_proxy({"plugins": {"adapter": {"client_version": "0.171.5"}}})
    models = wait_for(lambda: [r for r in fake.all_requests if r.path == "/backend-api/codex/models"],
                      timeout=30, what="the keepalive job's model list request")
    assert models[0].method == "GET" and models[0].query == {"client_version": "0.171.5"}


# --- 10: the body the backend accepts, end to end ------------------------------------------------

def test_responses_body_gets_store_false_and_keeps_include(proxy, fake):
    body = dict(RESPONSES_BODY, store=True, include=["reasoning.encrypted_content"], temperature=0.2)
    r = httpx.post(proxy.url + "/v1/responses", json=body, headers=proxy.auth, timeout=30)
    assert r.status_code == 200, r.text
    sent = fake.requests[0].json
    assert sent["store"] is False and sent["stream"] is True
    assert sent["include"] == ["reasoning.encrypted_content"]
    assert "temperature" not in sent


def test_chat_with_an_effort_asks_for_store_false_and_encrypted_reasoning(proxy, fake):
    body = {"model": "gpt-5(high)", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=proxy.auth, timeout=30)
    assert r.status_code == 200, r.text
    sent = fake.requests[0].json
    assert sent["store"] is False and sent["stream"] is True and sent["model"] == "gpt-5"
    assert sent["reasoning"] == {"effort": "high", "summary": "auto"}
    assert sent["include"] == ["reasoning.encrypted_content"]


# --- in process: the pure functions the mutation run (scripts/mutate) checks -------------------
# These run in the pytest process, so mutmut sees which of them reach a mutated function (it
# cannot see into the proxy subprocesses above). Each assertion pins a value that a mutant of
# wire.py, routing.py or auth.py would change; see bench/MUTATION.md for the run and survivors.

class TestInProcess:
    # wire.py ------------------------------------------------------------------------------------
    def test_control_characters(self):
        from codexproxy.wire import has_control_char

        assert not has_control_char("plain value with spaces\tand a tab ~")
        for bad in ("a\rb", "a\nb", "a\x00b", "\x1f", "a\x7f", "\x01"):
            assert has_control_char(bad), repr(bad)
        assert not has_control_char(" ") and not has_control_char("\x80é")

    def test_check_value_names_the_header_or_the_source(self):
        from codexproxy.exchange import GatewayError
        from codexproxy.wire import check_value

        check_value("x-ok", "fine")
        with pytest.raises(GatewayError) as err:
            check_value("x-bad", "a\r\nInjected: 1")
        assert err.value.status == 400 and err.value.code == "invalid_header_value"
        assert err.value.param == "x-bad" and "header 'x-bad'" in err.value.message
        with pytest.raises(GatewayError) as err:
            check_value("session_id", "a\nb", source="field 'prompt_cache_key'")
        assert err.value.param == "field 'prompt_cache_key'" and "The field 'prompt_cache_key' holds" in err.value.message

    def test_authority(self):
        from codexproxy.wire import authority

        assert authority("https://chatgpt.com/backend-api/codex/responses") == "chatgpt.com"
        assert authority("https://chatgpt.com:443/x") == "chatgpt.com"
        assert authority("http://127.0.0.1:80/x") == "127.0.0.1"
        assert authority("http://127.0.0.1:443/x") == "127.0.0.1:443"
        assert authority("https://127.0.0.1:80/x") == "127.0.0.1:80"
        assert authority("https://127.0.0.1:8443/x") == "127.0.0.1:8443"
        assert authority("http://[::1]:9000/x") == "[::1]:9000"
        assert authority("https://[::1]/x") == "[::1]"

    def test_passed_client_headers(self):
        from codexproxy.exchange import GatewayError
        from codexproxy.wire import passed_client_headers

        fields = [("Authorization", "Bearer cpk"), ("Version", "0.169.0"), ("X-Codex-Turn-State", "t1"),
                  ("x-openai-x", "o"), ("session-id", "s"), ("Accept-Language", "en"), ("User-Agent", "ua"),
                  ("X-Stainless-Lang", "python"), ("content-type", "application/json"), ("x-codex-turn-state", "t2"),
                  ("Thread-Id", "th"), ("conversation_id", "c1"), ("OpenAI-Beta", "b")]
        assert passed_client_headers(fields) == [
            ("Version", "0.169.0"), ("X-Codex-Turn-State", "t1, t2"), ("x-openai-x", "o"), ("session-id", "s"),
            ("Accept-Language", "en"), ("Thread-Id", "th"), ("conversation_id", "c1"), ("OpenAI-Beta", "b")]
        assert passed_client_headers([]) == []
        with pytest.raises(GatewayError):
            passed_client_headers([("x-codex-evil", "a\r\nb")])
        assert passed_client_headers([("x-other", "a\r\nb")]) == []  # not passed, so not checked

    def test_spelled(self):
        from codexproxy.exchange import GatewayError
        from codexproxy.wire import spelled

        assert spelled({"host": "h", "session-id": "s", "x-gone": None, "n": 5}, {"session-id": "Session-Id"}) == [
            ("host", "h"), ("Session-Id", "s"), ("n", "5")]
        with pytest.raises(GatewayError):
            spelled({"x-plugin": "a\nb"}, {})

    def test_decode_body(self):
        import gzip
        import zlib

        from codexproxy.exchange import GatewayError
        from codexproxy.wire import decode_body

        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        data = b'{"model": "gpt-5", "input": "' + b"x" * 5000 + b'"}'
        raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw_deflate = raw_deflate.compress(data) + raw_deflate.flush()
        cases = {"gzip": gzip.compress(data), "x-gzip": gzip.compress(data), "deflate": zlib.compress(data),
                 "zstd": zstd.compress(data), "identity": data, "": data, "GZIP ": gzip.compress(data)}
        for coding, body in cases.items():
            assert decode_body(body, coding, 10_000) == data, coding
        assert decode_body(raw_deflate, "deflate", 10_000) == data
        assert decode_body(zstd.compress(gzip.compress(data)), "gzip, zstd", 10_000) == data
        assert decode_body(gzip.compress(data), "identity, gzip", 10_000) == data
        assert decode_body(gzip.compress(data), "gzip", len(data)) == data  # exactly at the limit
        for coding, body in (("gzip", gzip.compress(data)), ("zstd", zstd.compress(data)), ("deflate", zlib.compress(data))):
            with pytest.raises(GatewayError) as err:
                decode_body(body, coding, len(data) - 1)
            assert err.value.status == 413 and err.value.code == "request_too_large", coding
        for coding, body in (("gzip", gzip.compress(data)[:-30]), ("zstd", zstd.compress(data)[:-5]),
                             ("deflate", zlib.compress(data)[:-10])):
            with pytest.raises(GatewayError) as err:
                decode_body(body, coding, 10_000)
            assert err.value.status == 400 and err.value.code == "invalid_body_encoding" and "truncated" in err.value.message
        for coding in ("gzip", "zstd", "deflate"):
            with pytest.raises(GatewayError) as err:
                decode_body(b"not compressed at all", coding, 10_000)
            assert err.value.status == 400 and err.value.code == "invalid_body_encoding", coding
            assert f"not valid {coding}" in err.value.message
        with pytest.raises(GatewayError) as err:
            decode_body(data, "br", 10_000)
        assert err.value.status == 415 and err.value.code == "unsupported_content_encoding" and "'br'" in err.value.message

    # routing.py ---------------------------------------------------------------------------------
    @staticmethod
    def attempt(status=None, body=b"", headers=None, error=None):
        from codexproxy.exchange import Attempt

        return Attempt(account_id="acc", url="https://chatgpt.com/backend-api/codex/responses", status=status,
                       body=body if isinstance(body, bytes) else json.dumps(body).encode(), headers=headers or {},
                       error=error)

    def test_classify(self):
        from codexproxy_plugins.routing import classify

        a = self.attempt
        usage = {"error": {"type": "usage_limit_reached", "resets_in_seconds": 60}}
        table = [
            (a(error="connect failed"), "transport"),
            (a(429, usage), "usage_limit"),
            (a(429, b"you hit your usage_limit"), "usage_limit"),
            (a(429, {"error": {"type": "rate_limit_error"}}), "rate_limited"),
            (a(429, b""), "rate_limited"),
            (a(401, {"error": {"message": "Your account has been deactivated"}}), "deactivated"),
            (a(403, b"account DEACTIVATED"), "deactivated"),
            (a(401, {"error": {"code": "token_expired"}}), "unauthorized"),
            (a(403, b"<html><title>Just a moment...</title>"), "challenge"),
            (a(403, b"<HTML>blocked</HTML>"), "challenge"),
            (a(403, b"cloudflare says no"), "challenge"),
            (a(403, {"error": {"message": "forbidden"}}), "server_error"),
            (a(500, b""), "server_error"), (a(502, b""), "server_error"), (a(503, b""), "server_error"),
            (a(499, b""), "client_error"),
            (a(400, b""), "client_error"), (a(404, b""), "client_error"), (a(422, b""), "client_error"),
        ]
        for attempt, kind in table:
            assert classify(attempt)[0] == kind, (attempt.status, attempt.body, attempt.error)
        assert classify(a(429, usage))[1] == usage["error"]
        assert classify(a(500, {"error": "text"}))[1] == {}
        assert classify(a(500, [1, 2]))[1] == {}

    def test_usage_reset(self):
        from codexproxy_plugins.routing import _usage_reset

        now = time.time()
        until, which = _usage_reset(self.attempt(429), {"resets_at": now + 500})
        assert until == pytest.approx(now + 500) and which == "exhausted_5h"
        until, _ = _usage_reset(self.attempt(429), {"resets_in_seconds": 700})
        assert now + 699 <= until <= time.time() + 700
        until, which = _usage_reset(self.attempt(429, headers={"x-codex-secondary-used-percent": "100.0",
                                                                "x-codex-secondary-reset-at": str(now + 9000),
                                                                "x-codex-primary-reset-at": str(now + 100)}), {})
        assert which == "exhausted_7d" and until == pytest.approx(now + 9000)
        until, which = _usage_reset(self.attempt(429, headers={"x-codex-secondary-used-percent": "99.9",
                                                                "x-codex-primary-reset-at": str(now + 100)}), {})
        assert which == "exhausted_5h" and until == pytest.approx(now + 100)
        until, _ = _usage_reset(self.attempt(429), {})
        assert now + 3599 <= until <= time.time() + 3600  # no hint at all: an hour
        until, _ = _usage_reset(self.attempt(429), {"resets_at": now - 50})
        assert now + 0.9 <= until <= time.time() + 1  # a reset in the past still cools a second

    def test_retry_after_and_float(self):
        from codexproxy_plugins.routing import _float, _retry_after

        assert _retry_after(self.attempt(429, headers={"retry-after": "7"})) == 7.0
        assert _retry_after(self.attempt(429, headers={"retry-after": "1.5"})) == 1.5
        assert _retry_after(self.attempt(429, headers={"retry-after": "soon"})) is None
        assert _retry_after(self.attempt(429)) is None
        assert _float("2.5") == 2.5 and _float(None) == 0.0 and _float("x") == 0.0

    def test_cooldown_constants(self):
        from codexproxy_plugins import routing

        assert routing.COOL_5XX == (30.0, 60.0) and routing.COOL_CHALLENGE == 120.0 and routing.COOL_MAX == 1800.0

    # auth.py ------------------------------------------------------------------------------------
    def test_offered_key(self):
        from codexproxy_plugins.auth import offered_key

        assert offered_key({"authorization": "Bearer cpk-1 "}) == "cpk-1"
        assert offered_key({"authorization": "bearer cpk-2"}) == "cpk-2"
        assert offered_key({"authorization": "Bearer  "}) is None
        assert offered_key({"authorization": "Basic abc", "x-api-key": " cpk-3 "}) == "cpk-3"
        assert offered_key({"authorization": "Bearer cpk-4", "x-api-key": "cpk-5"}) == "cpk-4"
        assert offered_key({"x-api-key": "  "}) is None and offered_key({}) is None

    def test_rpm_window(self, monkeypatch, tmp_path):
        from codexproxy import state as state_module
        from codexproxy.state import LocalState
        from codexproxy.store import Store
        from codexproxy_plugins import auth

        clock = [1000.0]
        monkeypatch.setattr(state_module.time, "monotonic", lambda: clock[0])
        state = LocalState(Store(tmp_path / "store.json"))
        assert [auth.take_request(state, "k", 2) for _ in range(2)] == [None, None]
        clock[0] = 1010.0
        assert auth.take_request(state, "k", 2) == pytest.approx(50.0, abs=1.0)  # the oldest leaves the window at 1060
        assert auth.take_request(state, "other", 2) is None
        clock[0] = 1060.5
        assert auth.take_request(state, "k", 2) is None  # a window later: both first ones are out
        assert auth.take_request(state, "k", 2) is None
        assert auth.take_request(state, "k", 2) == pytest.approx(60.0, abs=1.0)
        assert auth._retry_after(0.2) == {"retry-after": "1"} and auth._retry_after(2.1) == {"retry-after": "3"}
        assert auth.WINDOW_S == 60.0

    # survivors of the first mutmut run (bench/MUTATION.md), killed ------------------------------
    def test_decoding_stops_at_the_limit_instead_of_inflating_a_bomb(self):
        import gzip
        import tracemalloc
        import zlib

        from codexproxy.exchange import GatewayError
        from codexproxy.wire import decode_body

        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        bomb = b"\0" * (64 << 20)  # 64 MiB of zeros: a few KiB compressed
        bombs = {"gzip": gzip.compress(bomb), "zstd": zstd.compress(bomb), "deflate": zlib.compress(bomb)}
        del bomb
        for coding, body in bombs.items():
            tracemalloc.start()
            try:
                with pytest.raises(GatewayError) as err:
                    decode_body(body, coding, 10_000)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert err.value.status == 413, coding
            assert err.value.message == ("Request body is larger than limits.max_body_bytes (10000 bytes) once "
                                         "decompressed."), coding
            assert peak < (8 << 20), f"{coding}: {peak} bytes allocated to refuse a 64 MiB bomb"

    def test_exact_limit_and_exact_messages(self):
        import gzip
        import zlib

        from codexproxy.exchange import GatewayError
        from codexproxy.wire import authority, check_value, decode_body, passed_client_headers, spelled

        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        data = b"y" * 4096
        for coding, body in (("gzip", gzip.compress(data)), ("zstd", zstd.compress(data)), ("deflate", zlib.compress(data))):
            assert decode_body(body, coding, len(data)) == data, coding  # exactly at the limit is fine
        with pytest.raises(GatewayError) as err:
            decode_body(zstd.compress(data)[:-5], "zstd", 10_000)
        assert err.value.message == "Request body is truncated zstd data."
        with pytest.raises(GatewayError) as err:
            decode_body(gzip.compress(data)[:-12], "gzip", 10_000)
        assert err.value.message == "Request body is truncated gzip data."
        # gzip means gzip: a zlib-wrapped body labelled gzip is refused, not auto-detected.
        with pytest.raises(GatewayError) as err:
            decode_body(zlib.compress(data), "gzip", 10_000)
        assert err.value.status == 400 and err.value.message.startswith("Request body is not valid gzip: ")
        assert authority("file:///etc/passwd") == ""
        for call in (lambda: passed_client_headers([("X-Codex-Evil", "a\nb")]), lambda: spelled({"x-plugin": "a\nb"}, {})):
            with pytest.raises(GatewayError) as err:
                call()
            assert err.value.param in ("X-Codex-Evil", "x-plugin")
            assert err.value.message == (f"The header '{err.value.param}' holds a control character (CR, LF, NUL or "
                                         f"similar); it cannot be sent upstream.")
        with pytest.raises(GatewayError) as err:
            check_value("x", "\0")
        assert err.value.type == "invalid_request_error"

    def test_normalize_responses_request(self):
        from codexproxy.exchange import GatewayError
        from codexproxy_plugins.adapter.responses import normalize_responses_request

        out = normalize_responses_request({"model": "m", "input": "hi", "store": True, "stream": False,
                                           "include": ["reasoning.encrypted_content"], "temperature": 1,
                                           "top_p": 1, "max_output_tokens": 5, "truncation": "auto", "user": "u",
                                           "previous_response_id": "r"})
        assert (out["model"], out["store"], out["stream"], out["include"]) == ("m", False, True, ["reasoning.encrypted_content"])
        assert out["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
        assert not {"temperature", "top_p", "max_output_tokens", "truncation", "user", "previous_response_id"} & set(out)
        assert "service_tier" not in normalize_responses_request({"model": "m", "input": [], "service_tier": "flex"})
        assert normalize_responses_request({"model": "m", "input": [], "service_tier": "priority"})["service_tier"] == "priority"
        for body, status, message, param in [
            ([], 400, "Request body must be a JSON object.", None),
            ({"model": " ", "input": "x"}, 400, "'model' is required and must be a non-empty string.", "model"),
            ({"model": "m"}, 400, "'input' is required (a string or a list of items).", "input"),
            ({"model": "m", "input": 5}, 400, "'input' must be a string or a list of items.", "input"),
            ({"model": "m", "input": [5]}, 400, "'input[0]' must be an object.", "input[0]"),
        ]:
            with pytest.raises(GatewayError) as err:
                normalize_responses_request(body)
            assert (err.value.status, err.value.message, err.value.param) == (status, message, param), body

    def test_completions_to_chat_errors(self):
        from codexproxy.exchange import GatewayError
        from codexproxy_plugins.adapter.completions import completions_to_chat

        for body, message, param in [([], "Request body must be a JSON object.", None),
                                     ({"model": "m", "prompt": 5}, "'prompt' must be a string or a list of strings.", "prompt")]:
            with pytest.raises(GatewayError) as err:
                completions_to_chat(body)
            assert (err.value.status, err.value.message, err.value.param) == (400, message, param)

    def test_with_content_type_replaces_any_spelling(self):
        from codexproxy_plugins.adapter.common import with_content_type

        out = with_content_type({"Content-Type": "application/json", "Content-Length": "5", "x-a": "1"}, "text/event-stream")
        assert out == {"x-a": "1", "content-type": "text/event-stream"}
