"""Regression tests of the failover stream (codexproxy/failover.py), which relies on mitmproxy
internals: if an upgrade moves them, these fail loudly."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest

from tests.conftest import RESPONSES_BODY, closed_port, read_sse
from tests.fakeupstream import B


def stream(proxy, client=None, timeout=30):
    own = client is None
    client = client or proxy.client(timeout=timeout)
    try:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            return r.status_code, read_sse(r)
    finally:
        if own:
            client.close()


def test_failover_on_usage_limit_still_streams(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.usage_limit(resets_in=1800))
    fake.script(second, B.slow(delay=0.3, deltas=3))
    status, events = stream(proxy)
    assert status == 200
    deltas = [t for t, kind, _ in events if kind == "response.output_text.delta"]
    assert len(deltas) == 3 and all(b - a > 0.2 for a, b in zip(deltas, deltas[1:]))
    assert [r.account_id for r in fake.requests] == [first.account_id, second.account_id]
    row = proxy.cli_json("logs")[0]
    assert row["status"] == 200
    assert [a["status"] for a in row["attempts"]] == [429, 200]
    assert row["attempts"][0]["reason"] == "usage_limit"
    accounts = {a["chatgpt_account_id"]: a for a in proxy.cli_json("accounts", "list")}
    assert accounts[first.account_id]["status"] == "exhausted_5h"
    assert accounts[first.account_id]["status_until"] > time.time() + 1700


def test_multi_megabyte_error_body_then_keep_alive_reuse(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.big_error(status=500, size_bytes=3_000_000))
    with proxy.client() as client:
        status, events = stream(proxy, client)
        assert status == 200 and events[-1][1] == "response.completed"
        # The same client connection keeps working afterwards (keep-alive not corrupted).
        for _ in range(3):
            status, events = stream(proxy, client)
            assert status == 200 and events[-1][1] == "response.completed"
    assert fake.requests[0].account_id == first.account_id
    assert all(r.account_id == second.account_id for r in fake.requests[1:])


def test_request_body_is_resent_intact(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    fake.script(proxy.fake_accounts[0], B.server_error(status=503))
    big = dict(RESPONSES_BODY, instructions="x" * 2_000_000)
    with proxy.client() as client:
        r = client.post("/v1/responses", json=big, headers=proxy.auth)
    assert r.status_code == 200
    assert len(fake.requests) == 2
    assert fake.requests[0].body == fake.requests[1].body
    assert len(fake.requests[1].json["instructions"]) == 2_000_000


def test_client_disconnect_during_retry(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.server_error(status=500, first_delay=1.0))
    with pytest.raises(httpx.ReadTimeout):
        with proxy.client(timeout=0.5) as client:
            client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    time.sleep(1.5)
    # The proxy is fine afterwards, and the abandoned request was logged once.
    status, events = stream(proxy)
    assert status == 200 and events[-1][1] == "response.completed"
    rows = proxy.cli_json("logs")
    assert len(rows) == 2


def test_concurrent_clients_all_fail_over(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    n = 30
    fake.script(first, *[B.server_error(status=502, first_delay=0.3) for _ in range(n)])

    def one(_):
        with proxy.client() as client:
            return stream(proxy, client)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    assert all(status == 200 and events[-1][1] == "response.completed" for status, events in results)
    assert len(proxy.cli_json("logs", "--limit", "100")) == n


def test_connect_failure_takes_the_retry_path(make_proxy, fake):
    proxy = make_proxy({"upstream": {"base_url": f"http://127.0.0.1:{closed_port()}/backend-api/codex"}}, accounts=2)
    start = time.monotonic()
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth, timeout=30)
    assert time.monotonic() - start < 10
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
    row = proxy.cli_json("logs")[0]
    assert len(row["attempts"]) == 2 and all("connect" in (a["error"] or "") for a in row["attempts"])


def test_fallback_upstream_is_tried_last(make_proxy, fake):
    proxy = make_proxy({"upstream": {"fallback_base_url": fake.fallback_base, "fallback_api_key": fake.fallback_api_key}},
                       accounts=1)
    [acct] = proxy.fake_accounts
    fake.script(acct, B.server_error(status=500))
    fake.script(fake.FALLBACK, B.ok(text="from the fallback"))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            events = read_sse(r)
    assert r.status_code == 200
    assert events[-1][1] == "response.completed" and "from the fallback" in events[-1][2]
    assert [req.account_id for req in fake.requests] == [acct.account_id]  # the pool first, once
    [sent] = fake.fallback_requests
    # The fallback's own key, never a pool account's token or ChatGPT account id.
    assert sent.headers["authorization"] == f"Bearer {fake.fallback_api_key}"
    assert "chatgpt-account-id" not in sent.headers
    assert acct.access_token not in json.dumps(sent.headers)
    assert sent.json["input"] == RESPONSES_BODY["input"]
    row = proxy.cli_json("logs")[0]
    assert row["status"] == 200 and [a["status"] for a in row["attempts"]] == [500, 200]


def test_idle_upstream_before_headers_fails_over(make_proxy, fake):
    proxy = make_proxy({"upstream": {"stream_idle_timeout_s": 1}}, accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.hang(seconds=10))
    start = time.monotonic()
    status, events = stream(proxy)
    assert status == 200 and events[-1][1] == "response.completed"
    assert time.monotonic() - start < 5
    row = proxy.cli_json("logs")[0]
    assert "idle" in row["attempts"][0]["error"]


def test_idle_upstream_mid_stream_ends_with_an_error_event(make_proxy, fake):
    proxy = make_proxy({"upstream": {"stream_idle_timeout_s": 1}}, accounts=1)
    fake.script(proxy.fake_accounts[0], B.drip(delay=5, count=3))
    start = time.monotonic()
    status, events = stream(proxy)
    assert status == 200
    assert time.monotonic() - start < 5
    assert events[-1][1] == "response.failed"
    assert "idle" in events[-1][2]
    assert "idle" in proxy.cli_json("logs")[0]["error"]


def test_cut_mid_stream_is_an_error_not_a_silent_success(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    fake.script(proxy.fake_accounts[0], B.cut(after_events=3))
    status, events = stream(proxy)
    assert status == 200
    kinds = [e[1] for e in events]
    assert "response.completed" not in kinds and kinds[-1] == "response.failed"
    assert len(fake.requests) == 1  # bytes were out: no transparent retry
    row = proxy.cli_json("logs")[0]
    assert row["error"]


def test_stream_without_completed_is_an_error(make_proxy, fake):
    proxy = make_proxy()
    fake.script(proxy.fake_accounts[0], B.no_completed())
    status, events = stream(proxy)
    assert events[-1][1] == "response.failed" and "stream_closed" in events[-1][2]
