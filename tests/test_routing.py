"""The routing plugin through the running proxy: strategies, stickiness, caps, the failure table."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import time

import pytest

from tests.conftest import RESPONSES_BODY, read_sse, wait_for
from tests.fakeupstream import B


def ask(proxy, client=None, session=None, body=None):
    headers = dict(proxy.auth)
    if session:
        headers["session_id"] = session
    own = client is None
    client = client or proxy.client()
    try:
        return client.post("/v1/responses", json=body or RESPONSES_BODY, headers=headers)
    finally:
        if own:
            client.close()


def served_by(fake):
    return [r.account_id for r in fake.requests]


def accounts_by_fake_id(proxy):
    return {a["chatgpt_account_id"]: a for a in proxy.cli_json("accounts", "list")}


def test_ordered_uses_the_first_healthy_account(make_proxy, fake):
    proxy = make_proxy(accounts=3)
    with proxy.client() as client:
        for _ in range(5):
            assert ask(proxy, client).status_code == 200
    assert set(served_by(fake)) == {proxy.fake_accounts[0].account_id}


def test_balanced_spreads_within_ten_percent(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced"}}}, accounts=3)
    with proxy.client() as client:
        for _ in range(300):
            assert ask(proxy, client).status_code == 200
    counts = collections.Counter(served_by(fake))
    assert len(counts) == 3
    assert all(90 <= n <= 110 for n in counts.values()), counts


def test_sticky_session_keeps_its_account_and_moves_on_failure(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced"}}}, accounts=3)
    with proxy.client() as client:
        for _ in range(6):
            assert ask(proxy, client, session="conv-1").status_code == 200
        owners = set(served_by(fake))
        assert len(owners) == 1
        owner = owners.pop()
        fake.set_default(owner, B.usage_limit(resets_in=600))
        before = len(fake.requests)
        for _ in range(4):
            assert ask(proxy, client, session="conv-1").status_code == 200
        after = served_by(fake)[before:]
    # The first request tried the old owner, failed over, and the session then stayed put.
    assert after[0] == owner
    new_owner = after[1]
    assert new_owner != owner and after[2:] == [new_owner] * 3


def test_sticky_off_with_ttl_zero(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced", "sticky_ttl_s": 0}}}, accounts=2)
    with proxy.client() as client:
        for _ in range(4):
            ask(proxy, client, session="conv-x")
    assert len(set(served_by(fake))) == 2


def test_key_pinned_to_an_account(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced"}}}, accounts=3)
    target = accounts_by_fake_id(proxy)[proxy.fake_accounts[2].account_id]["id"]
    key_id = proxy.cli_json("keys", "list")[0]["id"]
    proxy.cli("keys", "update", key_id, "--account", target, check=True)
    with proxy.client() as client:
        for _ in range(5):
            assert ask(proxy, client).status_code == 200
    assert set(served_by(fake)) == {proxy.fake_accounts[2].account_id}


def test_inflight_cap_without_queue_answers_429(make_proxy, fake):
    proxy = make_proxy({"limits": {"account_max_inflight": 1}}, accounts=2)
    for acct in proxy.fake_accounts:
        # Long enough that both slots are still taken when the third request arrives, however
        # slowly the three client threads get scheduled.
        fake.set_default(acct, B.slow(delay=1.0, deltas=3))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: ask(proxy), range(3)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 429]
    busy = next(r for r in results if r.status_code == 429)
    assert busy.json()["error"]["code"] == "accounts_busy" and busy.headers["retry-after"]


def test_inflight_cap_with_queue_wait_serves_everyone(make_proxy, fake):
    proxy = make_proxy({"limits": {"account_max_inflight": 1, "queue_wait_ms": 10000}}, accounts=2)
    for acct in proxy.fake_accounts:
        fake.set_default(acct, B.slow(delay=0.2, deltas=2))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ask(proxy), range(4)))
    assert [r.status_code for r in results] == [200] * 4


def test_all_exhausted_is_429_with_the_earliest_reset(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.set_default(first, B.usage_limit(resets_in=900))
    fake.set_default(second, B.usage_limit(resets_in=300))
    r = ask(proxy)
    assert r.status_code == 429
    assert 280 <= int(r.headers["retry-after"]) <= 301
    assert "reset" in r.json()["error"]["message"]
    # Exhausted accounts are not asked again until they reset.
    before = len(fake.requests)
    r = ask(proxy)
    assert r.status_code == 429 and len(fake.requests) == before
    statuses = {a["status"] for a in proxy.cli_json("accounts", "list")}
    assert statuses == {"exhausted_5h"}


def test_max_attempts_is_respected(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"max_attempts": 2}}}, accounts=3)
    for acct in proxy.fake_accounts:
        fake.set_default(acct, B.server_error(status=503))
    r = ask(proxy)
    assert r.status_code == 503
    assert len(fake.requests) == 2
    assert len(proxy.cli_json("logs")[0]["attempts"]) == 2


@pytest.mark.parametrize("behaviour,status_after,reason_word", [
    (B.cloudflare(), "cooling", "cookie"),
    (B.deactivated(), "reauth_required", "deactivated"),
    (B.server_error(status=502), "cooling", "502"),
    (B.rate_limited(retry_after=30), "cooling", "429"),
])
def test_failure_table(make_proxy, fake, behaviour, status_after, reason_word):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, behaviour)
    r = ask(proxy)
    assert r.status_code == 200
    assert served_by(fake) == [first.account_id, second.account_id]
    account = accounts_by_fake_id(proxy)[first.account_id]
    assert account["status"] == status_after
    assert reason_word in (account["status_reason"] or "").lower()


def stored_accounts(proxy) -> dict[str, dict]:
    """The accounts as the proxy last wrote them, by fake account id. The store file is replaced
    atomically, and unlike `accounts list` it keeps an expired cooldown's status_until, so a short
    window is checked exactly however long a CLI subprocess takes to start on a loaded machine."""
    table = json.loads(proxy.store_path.read_text()).get("accounts", {})
    return {doc["chatgpt_account_id"]: doc for doc in table.values()}


def test_rate_limit_cooldown_honours_retry_after_and_recovers(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.rate_limited(retry_after=3))
    before = time.time()
    assert ask(proxy).status_code == 200
    after = time.time()
    assert served_by(fake) == [first.account_id, second.account_id]
    account = stored_accounts(proxy)[first.account_id]
    assert account["status"] == "cooling" and "429" in account["status_reason"]
    assert before + 3 <= account["status_until"] <= after + 3  # retry-after, not the exponential default
    # It comes back by itself once the window is over (a condition, not a guessed sleep) ...
    wait_for(lambda: accounts_by_fake_id(proxy)[first.account_id]["status"] == "active", timeout=30,
             what="the 3 s cooldown to end")
    assert time.time() >= account["status_until"]
    # ... and, first in order again, serves the next request.
    sent = len(fake.requests)
    assert ask(proxy).status_code == 200
    assert served_by(fake)[sent:] == [first.account_id]


def test_request_errors_pass_through_untouched(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, _ = proxy.fake_accounts
    fake.script(first, B.bad_request(message="Unsupported parameter: foo"))
    r = ask(proxy)
    assert r.status_code == 400 and "Unsupported parameter" in r.text
    assert len(fake.requests) == 1
    assert accounts_by_fake_id(proxy)[first.account_id]["status"] == "active"


def test_failover_path_streams_event_by_event(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.server_error(status=500))
    fake.script(second, B.drip(delay=0.3, count=4))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            events = read_sse(r)
    deltas = [t for t, kind, _ in events if kind == "response.output_text.delta"]
    assert len(deltas) == 4 and all(b - a > 0.2 for a, b in zip(deltas, deltas[1:]))


def test_least_used_picks_the_most_remaining_quota(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"strategy": "least_used"}}}, accounts=3)
    a1, a2, a3 = proxy.fake_accounts
    fake.set_usage(a1.account_id, primary=80.0, secondary=20.0)
    fake.set_usage(a2.account_id, primary=10.0, secondary=90.0)
    fake.set_usage(a3.account_id, primary=10.0, secondary=30.0)
    proxy.cli("usage", "--refresh", check=True)
    with proxy.client() as client:
        for _ in range(3):
            assert ask(proxy, client).status_code == 200
    # 5h window first, then 7d: a3 (10%/30%) beats a2 (10%/90%) and a1 (80%).
    assert set(served_by(fake)) == {a3.account_id}


def test_key_pinned_to_a_group(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced"}}}, accounts=3)
    ids = accounts_by_fake_id(proxy)
    for acct in proxy.fake_accounts[1:]:
        proxy.cli("accounts", "update", ids[acct.account_id]["id"], "--group", "team-b", check=True)
    key_id = proxy.cli_json("keys", "list")[0]["id"]
    proxy.cli("keys", "update", key_id, "--group", "team-b", check=True)
    with proxy.client() as client:
        for _ in range(6):
            assert ask(proxy, client).status_code == 200
    assert set(served_by(fake)) == {a.account_id for a in proxy.fake_accounts[1:]}


def test_a_dropped_connection_is_retried_on_the_same_account_first(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.hang(seconds=0.01))  # closes the connection without answering
    r = ask(proxy)
    assert r.status_code == 200
    assert served_by(fake) == [first.account_id, first.account_id]
    assert accounts_by_fake_id(proxy)[first.account_id]["status"] == "active"


def test_the_inflight_lease_of_a_dead_holder_expires(tmp_path):
    """Requests in flight are leases in the state: one a killed proxy never released (shared
    state) stops counting against the cap once its TTL is over, and /metrics counts the same."""
    from codexproxy.app import App
    from codexproxy.config import load_config
    from codexproxy.exchange import Exchange, GatewayError
    from codexproxy.models import Account
    from codexproxy.state import account_inflight_key
    from codexproxy_plugins import routing
    from codexproxy_plugins.admin import metrics

    config = load_config(None, environ={"CODEXPROXY_STORAGE__PATH": str(tmp_path / "db.json"),
                                        "CODEXPROXY_LIMITS__ACCOUNT_MAX_INFLIGHT": "1"})
    app = App(config)
    try:
        account = app.accounts.add(Account(email="a@example.com", access_token="token"))
        inflight = account_inflight_key(account.id)
        app.state.lease(inflight, ttl=0.5)  # held by a process that died mid-request

        def scraped_inflight() -> str:
            text = metrics.render(app, metrics.Metrics())
            return next(line for line in text.splitlines() if line.startswith(f'codexproxy_account_inflight{{account="{account.id}"}}'))

        assert scraped_inflight().endswith(" 1")
        exchange = Exchange(method="POST", path="/v1/responses", query={}, headers={}, body=b"{}")
        with pytest.raises(GatewayError) as busy:
            app.hook.codexproxy_select_account(app=app, exchange=exchange)
        assert busy.value.code == "accounts_busy"
        time.sleep(0.8)
        assert scraped_inflight().endswith(" 0")
        assert app.hook.codexproxy_select_account(app=app, exchange=exchange).id == account.id
        assert app.state.leases(inflight) == 1 and scraped_inflight().endswith(" 1")
        routing.codexproxy_exchange_done(app=app, exchange=exchange)
        assert app.state.leases(inflight) == 0
    finally:
        app.close()
