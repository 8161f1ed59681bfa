"""A 200 that fails before any output is failed over like an HTTP error: the backend often
answers 200, then `response.created` and `response.failed` (server_is_overloaded, limits) or
a bare `error` event. The client sees one clean stream; the account is cooled by the code."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import RESPONSES_BODY, read_sse
from tests.fakeupstream import B

CHAT = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "gpt-5.5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


def accounts_by_upstream_id(proxy) -> dict:
    return {a["chatgpt_account_id"]: a for a in proxy.cli_json("accounts", "list")}


@pytest.mark.parametrize("failure,reason", [
    (B.failed(code="server_is_overloaded", rate_limits=True), "server_error"),
    (B.failed(code="rate_limit_exceeded", headers={"retry-after": "120"}), "rate_limited"),
    (B.error_event(code="server_error"), "server_error"),
], ids=["overloaded", "rate-limit", "error-event"])
def test_a_stream_failing_before_output_fails_over_and_streams_once(make_proxy, fake, failure, reason):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, failure)
    fake.script(second, B.ok(text="from the second", deltas=3))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            assert r.status_code == 200
            events = [kind for _, kind, _ in read_sse(r)]
    assert events.count("response.created") == 1
    assert "response.failed" not in events and "error" not in events
    assert events[-1] == "response.completed"
    assert [rec.account_id for rec in fake.requests] == [first.account_id, second.account_id]
    row = proxy.cli_json("logs")[0]
    assert row["status"] == 200 and [a["account"] is not None for a in row["attempts"]] == [True, True]
    assert "before any output" in (row["attempts"][0]["error"] or "")
    assert row["attempts"][0]["reason"] == reason
    # The failing account is cooled: the next request goes straight to the second one.
    assert accounts_by_upstream_id(proxy)[first.account_id]["status"] == "cooling"
    with proxy.client() as client:
        assert client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth).status_code == 200
    assert fake.requests[-1].account_id == second.account_id


def test_a_cut_after_the_prelude_is_sent_again_and_never_shown(make_proxy, fake):
    # A connection cut is first blamed on the connection (one reconnect on the same account,
    # as for a cut before the head): the client still sees one clean stream.
    proxy = make_proxy(accounts=2)
    first, _ = proxy.fake_accounts
    fake.script(first, B.cut(after_events=2), B.ok(text="again"))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            events = [kind for _, kind, _ in read_sse(r)]
    assert events.count("response.created") == 1 and events[-1] == "response.completed"
    assert [rec.account_id for rec in fake.requests] == [first.account_id, first.account_id]


def test_a_usage_limit_inside_the_stream_exhausts_the_account(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.failed(code="usage_limit_reached", message="The usage limit has been reached"))
    with proxy.client() as client:
        r = client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello"
    assert accounts_by_upstream_id(proxy)[first.account_id]["status"] == "exhausted_5h"


@pytest.mark.parametrize("path,body,stream", [
    ("/v1/chat/completions", CHAT, True), ("/v1/chat/completions", CHAT, False),
    ("/v1/messages", MESSAGES, True), ("/v1/messages", MESSAGES, False),
    ("/v1/responses", RESPONSES_BODY, False),
])
def test_every_protocol_fails_over_inside_the_stream(make_proxy, fake, path, body, stream):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.failed(code="server_is_overloaded"))
    fake.script(second, B.ok(text="recovered", deltas=1))
    with proxy.client() as client:
        r = client.post(path, json=dict(body, stream=stream), headers=proxy.auth)
    assert r.status_code == 200, r.text
    assert "recovered" in r.text
    assert "overloaded" not in r.text
    assert [rec.account_id for rec in fake.requests] == [first.account_id, second.account_id]


def test_a_request_fault_inside_the_stream_goes_to_the_client_untouched(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, _ = proxy.fake_accounts
    fake.script(first, B.failed(code="context_length_exceeded", message="Your input exceeds the context window"))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            events = read_sse(r)
    assert [kind for _, kind, _ in events][-1] == "response.failed"
    assert "context window" in events[-1][2]
    assert len(fake.requests) == 1
    assert accounts_by_upstream_id(proxy)[first.account_id]["status"] == "active"


def test_every_account_failing_inside_the_stream_gives_one_clear_error(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    for acct in proxy.fake_accounts:
        fake.set_default(acct, B.failed(code="server_is_overloaded"))
    with proxy.client() as client:
        r = client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth)
    assert r.status_code == 503, r.text
    assert "overloaded" in r.json()["error"]["message"].lower() or r.json()["error"]["code"] == "upstream_unavailable"
    assert len(fake.requests) == 2


def test_a_healthy_stream_is_not_held_after_its_first_output(make_proxy, fake):
    proxy = make_proxy()
    fake.script(proxy.fake_accounts[0], B.drip(delay=0.4, count=4))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            start = time.monotonic()
            events = read_sse(r)
    deltas = [t - start for t, kind, _ in events if kind == "response.output_text.delta"]
    created = next(t - start for t, kind, _ in events if kind == "response.created")
    assert len(deltas) == 4
    assert created < deltas[0]  # the prelude went out with the first output item, not after
    assert all(b - a > 0.25 for a, b in zip(deltas, deltas[1:]))  # then event by event
    assert json.loads(events[-1][2])["type"] == "response.completed"
