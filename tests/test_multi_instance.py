"""Two codexproxy processes on one Redis (`state.backend: redis`) serve one pool, as a user runs
them: accounts and keys created through one are the other's, an account cooled by a 429 on one is
skipped by the other, a key's rpm limit counts the requests of both, a conversation bound on one
continues on its account through the other, an instance killed mid-stream
holds its account only until its lease runs out, and while Redis is down both answer 503 and
serve again once it is back. `codexproxy state migrate` moves a TinyDB pool to Redis and back."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RESPONSES_BODY, deep_merge
from tests.fakeupstream import B
from tests.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def shared(redis_url: str) -> dict:
    return {"state": {"backend": "redis", "redis_url": redis_url}}


@pytest.fixture
def pair(make_proxy, redis_url):
    """Proxies `a` and `b`, each with its own config and data dir, on one Redis. The accounts and
    the key are created through `a`'s CLI only."""
    a = make_proxy(shared(redis_url), accounts=2, name="a")
    b = make_proxy(shared(redis_url), accounts=0, key=False, name="b")
    b.key, b.fake_accounts = a.key, a.fake_accounts
    return a, b


def post(proxy, key: str | None = None) -> httpx.Response:
    auth = {"authorization": f"Bearer {key}"} if key else proxy.auth
    return httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=auth, timeout=30)


def test_the_second_proxy_serves_the_pool_and_keys_made_through_the_first(pair, fake):
    a, b = pair
    assert {acc["email"] for acc in b.cli_json("accounts", "list")} == {acct.email for acct in a.fake_accounts}
    r = post(b)
    assert r.status_code == 200 and "response.completed" in r.text
    assert fake.requests[-1].account_id in {acct.account_id for acct in a.fake_accounts}
    assert httpx.get(b.url + "/health").json()["accounts"] == 2


def test_an_account_cooled_by_a_429_on_one_proxy_is_skipped_by_the_other(pair, fake):
    a, b = pair
    limited, other = a.fake_accounts
    fake.set_default(limited, B.rate_limited(retry_after=600))
    for _ in range(4):  # until a's routing has tried the limited account (and failed over)
        assert post(a).status_code == 200
        if any(r.account_id == limited.account_id for r in fake.requests):
            break
    assert any(r.account_id == limited.account_id for r in fake.requests), "a never tried the limited account"
    seen_by_b = {acc["chatgpt_account_id"]: acc["status"] for acc in b.cli_json("accounts", "list")}
    assert seen_by_b[limited.account_id] == "cooling"
    tried = len(fake.requests)
    for _ in range(6):
        assert post(b).status_code == 200
    assert {r.account_id for r in fake.requests[tried:]} == {other.account_id}


def test_a_keys_rpm_limit_counts_the_requests_of_both_proxies(pair, fake):
    a, b = pair
    key = a.cli_json("keys", "create", "limited", "--rpm", "3")["key"]
    answers = [post(proxy, key) for proxy in (a, b, a, b)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert "3 requests per minute" in answers[3].text and int(answers[3].headers["retry-after"]) >= 1
    assert post(a, key).status_code == 429


def test_redis_down_is_a_503_on_both_and_both_serve_again_when_it_returns(make_proxy, fake):
    from tests.redis_server import start_redis

    server = start_redis(appendonly=True)  # a Redis that keeps its data across a restart, as deployed
    try:
        a = make_proxy(shared(server.url), accounts=2, name="a")
        b = make_proxy(shared(server.url), accounts=0, key=False, name="b")
        b.key = a.key
        assert post(a).status_code == 200 and post(b).status_code == 200
        server.stop()
        for proxy in (a, b):
            down = post(proxy)
            assert down.status_code == 503 and down.headers["retry-after"] == "2"
            error = down.json()["error"]
            assert error["code"] == "state_unavailable" and "shared state is unavailable" in error["message"]
            anthropic = httpx.post(proxy.url + "/v1/messages", headers={"x-api-key": a.key}, timeout=30,
                                   json={"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
            assert anthropic.status_code == 503 and anthropic.json()["type"] == "error"  # the client's own protocol
        server.start()
        for proxy in (a, b, a, b):
            assert post(proxy).status_code == 200
        assert len(b.cli_json("accounts", "list")) == 2 and [k["name"] for k in a.cli_json("keys", "list")] == ["test"]
    finally:
        server.close()


def test_kill_9_mid_stream_the_other_serves_once_the_dead_ones_lease_runs_out(make_proxy, fake, redis_url):
    import signal
    import threading
    import time

    from tests.conftest import wait_for

    # one account, one request at a time on it; a lease lives 2 x the idle timeout (4 s here)
    config = deep_merge(shared(redis_url), {"limits": {"account_max_inflight": 1}, "upstream": {"stream_idle_timeout_s": 2}})
    a = make_proxy(config, accounts=1, name="a")
    b = make_proxy(config, accounts=0, key=False, name="b")
    b.key = a.key
    [acct] = a.fake_accounts
    fake.script(acct, B.drip(delay=0.5, count=60))  # a 30 s answer, cut by the kill
    started = threading.Event()

    def stream_through_a() -> None:
        try:
            with httpx.stream("POST", a.url + "/v1/responses", json=RESPONSES_BODY, headers=a.auth, timeout=30) as r:
                for _ in r.iter_lines():
                    started.set()
        except httpx.HTTPError:
            pass  # the proxy died under it

    reader = threading.Thread(target=stream_through_a, daemon=True)
    reader.start()
    assert started.wait(15), "the stream through a never started"
    a.stop(signal.SIGKILL)  # no exchange_done, no release: only the lease's TTL frees the account
    killed_at = time.monotonic()
    full = post(b)
    assert full.status_code in (429, 503) and time.monotonic() - killed_at < 4  # still held by the dead one
    wait_for(lambda: post(b).status_code == 200, timeout=15, what="b serving once the lease expired")
    assert time.monotonic() - killed_at < 10
    reader.join(5)


def test_a_conversation_bound_on_one_proxy_continues_on_its_account_through_the_other(pair, fake):
    import time

    a, b = pair
    first, second = a.fake_accounts  # "ordered" routing: `first` is every proxy's first choice
    fake.script(first, B.rate_limited(retry_after=1))  # turn 1 fails over: the conversation moves to `second`
    turn = {"session_id": "conversation-1", "authorization": f"Bearer {a.key}"}
    assert httpx.post(a.url + "/v1/responses", json=RESPONSES_BODY, headers=turn, timeout=30).status_code == 200
    assert [r.account_id for r in fake.requests] == [first.account_id, second.account_id]
    time.sleep(1.5)  # `first` is available again: b's own choice for anything unbound
    served = len(fake.requests)
    assert post(b).status_code == 200 and fake.requests[-1].account_id == first.account_id
    for _ in range(3):
        assert httpx.post(b.url + "/v1/responses", json=RESPONSES_BODY, headers=turn, timeout=30).status_code == 200
    assert [r.account_id for r in fake.requests[served + 1:]] == [second.account_id] * 3


def test_state_migrate_copies_a_tinydb_pool_to_redis_and_back(make_proxy, fake, redis_url, tmp_path):
    local = make_proxy(accounts=2, start=False, name="local")
    local.cli("keys", "create", "second", check=True)
    moved = local.cli("state", "migrate", "--to", redis_url, check=True).stdout
    assert "accounts    2       yes" in moved and "keys        2       yes" in moved and "verified" in moved
    again = local.cli("state", "migrate", "--to", redis_url)
    assert again.returncode == 2 and again.stderr.strip() == (
        "--to: the target already holds accounts (2 documents), keys (2 documents); --overwrite replaces documents with the same id")
    # a proxy on the Redis (no account or key of its own) serves the migrated pool with the old key
    shared_proxy = make_proxy(shared(redis_url), accounts=0, key=False, name="onredis")
    shared_proxy.key = local.key
    assert post(shared_proxy).status_code == 200
    assert {r.account_id for r in fake.requests} <= {acct.account_id for acct in local.fake_accounts}
    # and back: into a fresh TinyDB store, which a plain proxy then serves
    back = tmp_path / "back" / "codexproxy.json"
    report = shared_proxy.cli_json("state", "migrate", "--to", str(back))
    assert {r["collection"]: (r["copied"], r["verified"]) for r in report["collections"]}["accounts"] == (2, True)
    assert report["problems"] == []
    plain = make_proxy({"storage": {"path": str(back)}}, accounts=0, key=False, name="back")
    plain.key = local.key
    assert post(plain).status_code == 200


@pytest.mark.parametrize("target, says", [
    ("http://example.com", "--to: expected a Redis URL (redis://, rediss://, unix://) or a store file path (got http://...)"),
    ("redis://:hunter2@127.0.0.1:{closed}/0", "The gateway's shared state is unavailable (Redis at 127.0.0.1:{closed}:"),
])
def test_state_migrate_refuses_a_bad_target_in_one_line(make_proxy, target, says):
    from tests.conftest import closed_port

    port = closed_port()
    local = make_proxy(accounts=1, key=False, start=False)
    result = local.cli("state", "migrate", "--to", target.format(closed=port))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(says.format(closed=port)) and "hunter2" not in result.stderr



def test_fifty_requests_needing_a_refresh_over_both_proxies_refresh_once(make_proxy, fake, redis_url):
    import concurrent.futures

    from tests.conftest import wait_for

    a = make_proxy(shared(redis_url), accounts=1, name="a")
    b = make_proxy(shared(redis_url), accounts=0, key=False, name="b")
    b.key = a.key
    [acct] = a.fake_accounts
    # the first usage polls (both proxies' jobs) are done before the token expires
    wait_for(lambda: all(x.get("usage_updated_at") for x in b.cli_json("accounts", "list")), what="first usage poll")
    fake.refresh_delay = 1.0  # the first refresh is still in flight while the others ask
    fake.expire_access_token(acct)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda i: post(a if i % 2 else b), range(50)))
    assert [r.status_code for r in answers] == [200] * 50
    assert fake.refresh_calls == 1
    assert not fake.errors and "refresh_token_reused" not in a.log_text() + b.log_text()
    [stored] = a.cli_json("accounts", "list")
    assert stored["status"] == "active" and stored["refresh_failures"] == 0


def test_writes_made_after_the_answer_still_count_across_proxies(pair, fake, redis_url):
    """The request's lease, its release and its tokens are sent in the background (`state.later`),
    off the client's wait: a stream in flight on one proxy still counts on the shared state, its
    lease is given back when it ends, and a key's daily tokens used through one proxy are refused
    on the other."""
    import threading

    import redis

    from tests.conftest import wait_for

    a, b = pair
    first, _ = a.fake_accounts  # "ordered" routing: every request goes to `first`
    fake.script(first, B.drip(delay=0.2, count=10))
    redis_client = redis.Redis.from_url(redis_url, decode_responses=True)
    inflight = "codexproxy:l:inflight:*"

    def leases() -> int:
        return sum(redis_client.zcard(name) for name in redis_client.scan_iter(match=inflight))

    streaming = threading.Thread(target=lambda: post(a), daemon=True)
    streaming.start()
    wait_for(lambda: leases() == 1, timeout=5, what="the stream's lease on the shared state")
    streaming.join(15)
    wait_for(lambda: leases() == 0, timeout=5, what="the lease given back after the stream")
    key = a.cli_json("keys", "create", "budget", "--daily-tokens", "1")["key"]
    assert post(a, key).status_code == 200  # its tokens go over the budget of 1
    wait_for(lambda: post(b, key).status_code == 429, timeout=5, what="b refusing the key's next request")
    refused = post(b, key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "daily_token_limit_exceeded"
    redis_client.close()
