"""The Redis state backend against a real redis-server: what only Redis adds to the contract.

The contract itself (values, counters, windows, leases, locks, collections) is tests/test_state.py,
run over every backend. Here: several clients see one state (as several processes do), a
password and TLS URL work, an unreachable Redis is one fast `StateUnavailable` (never a hang,
never the password) and the same object works again once Redis is back, and the `state:` config
section says what is wrong with it in one line.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import yaml

from codexproxy.state_redis import RedisState, StateUnavailable
from tests.conftest import PYTHON, clean_env
from tests.redis_server import redis_server, redis_url, start_redis  # noqa: F401 (fixtures)
from tests.strict_upstream import make_test_ca


@pytest.fixture
def two(redis_url):
    """Two independent clients of one Redis: what two codexproxy processes hold."""
    first, second = RedisState.from_url(redis_url), RedisState.from_url(redis_url)
    yield first, second
    first.close()
    second.close()


def test_two_clients_share_values_counters_windows_and_leases(two):
    a, b = two
    a.set("routing:cooldown:acc1", {"until": 123}, ttl=30)
    assert b.get("routing:cooldown:acc1") == {"until": 123}
    assert b.keys("routing:") == ["routing:cooldown:acc1"]
    assert a.incr("keys:tokens:k1", 10, ttl=60) == 10
    assert b.incr("keys:tokens:k1", 5) == 15
    a.window_add("keys:rpm:k1", 1, 60)
    assert b.window_add("keys:rpm:k1", 1, 60) == 2
    token = a.lease("inflight:acc1", ttl=30)
    b.lease("inflight:acc1", ttl=30)
    assert b.leases("inflight:acc1") == 2
    b.release("inflight:acc1", token)  # a token works from any client
    assert a.leases("inflight:acc1") == 1
    assert a.pop("routing:cooldown:acc1") == {"until": 123}
    assert b.pop("routing:cooldown:acc1", "gone") == "gone"


def test_a_lease_of_a_killed_holder_runs_out(two):
    a, b = two
    a.lease("inflight:acc1", ttl=0.3)
    a.close()  # the holder is gone without releasing
    assert b.leases("inflight:acc1") == 1
    time.sleep(0.4)
    assert b.leases("inflight:acc1") == 0


def test_a_lock_excludes_the_other_client_and_expires_with_its_ttl(two):
    a, b = two
    token = a.try_lock("refresh:acc1", ttl=0.5)
    assert token and b.try_lock("refresh:acc1", ttl=5) is None
    b.unlock("refresh:acc1", "not-the-token")  # only the holder's token releases it
    assert b.try_lock("refresh:acc1", ttl=5) is None
    started = time.monotonic()
    with b.lock("refresh:acc1", ttl=5, wait=3) as acquired:  # a's lock expires on its own
        assert acquired and 0.2 < time.monotonic() - started < 2
        a.unlock("refresh:acc1", token)  # a's stale token does not release b's lock
        assert a.try_lock("refresh:acc1", ttl=5) is None
    assert a.try_lock("refresh:acc1", ttl=5)


def test_concurrent_updates_from_two_clients_lose_nothing(two):
    a, b = two
    a.collection("accounts").put({"id": "acc1", "uses": 0})

    def bump(state: RedisState) -> None:
        for _ in range(25):
            state.collection("accounts").update("acc1", lambda doc: doc.update(uses=doc["uses"] + 1))

    threads = [threading.Thread(target=bump, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.collection("accounts").get("acc1")["uses"] == 100


def test_a_document_ttl_is_kept_by_update_and_dropped_by_put(two):
    a, b = two
    logins = a.collection("pending_logins")
    logins.put({"id": "l1", "state": "x"}, ttl=0.4)
    logins.put({"id": "l2", "state": "y"})
    assert b.collection("pending_logins").update("l1", lambda d: d.update(state="z"))["state"] == "z"
    time.sleep(0.5)
    assert b.collection("pending_logins").get("l1") is None
    assert [d["id"] for d in b.collection("pending_logins").all()] == ["l2"]


def test_all_keeps_insertion_order_across_replacements(two):
    a, b = two
    docs = a.collection("keys")
    for name in ("c", "a", "b"):
        docs.put({"id": name})
    docs.put({"id": "a", "changed": True})  # replacing a document keeps its place
    assert [d["id"] for d in b.collection("keys").all()] == ["c", "a", "b"]


def test_everything_lives_under_the_codexproxy_prefix(redis_url, redis_server):
    state = RedisState.from_url(redis_url)
    with redis_server.client() as raw:
        raw.set("someone-else", "1")
        state.set("v", 1)
        state.incr("n")
        state.window_add("w", 1, 60)
        state.lease("l", 60)
        state.try_lock("k", 60)
        state.collection("accounts").put({"id": "x"})
        assert state.keys("") == ["n", "v"]
        assert {k for k in raw.keys("*") if not k.startswith("codexproxy:")} == {"someone-else"}
    state.close()


def test_a_password_url_works_and_a_wrong_password_is_unavailable_without_showing_it():
    server = start_redis(password="s3cret-pw")
    try:
        assert RedisState.from_url(server.url).incr("n") == 1
        wrong = RedisState.from_url(server.url.replace("s3cret-pw", "wrong-pw"))
        with pytest.raises(StateUnavailable) as caught:
            wrong.get("n")
        assert "wrong-pw" not in str(caught.value) and f"127.0.0.1:{server.port}" in str(caught.value)
        with pytest.raises(StateUnavailable):
            RedisState.from_url(server.url.replace(":s3cret-pw@", "")).get("n")  # no password at all
    finally:
        server.close()


def test_a_rediss_url_talks_tls_with_the_ca_it_names(tmp_path):
    server = start_redis(tls=make_test_ca(tmp_path / "pki"), password="pw")
    try:
        assert server.url.startswith("rediss://")
        state = RedisState.from_url(server.url)
        state.set("over-tls", [1, 2])
        assert state.get("over-tls") == [1, 2]
        # without the CA the certificate is not trusted: refused, not silently accepted
        untrusted = RedisState.from_url(server.url.split("?")[0])
        with pytest.raises(StateUnavailable):
            untrusted.get("over-tls")
    finally:
        server.close()


def test_redis_down_is_a_fast_state_unavailable_and_the_same_object_recovers():
    server = start_redis(appendonly=True)
    try:
        state = RedisState.from_url(server.url)
        state.collection("accounts").put({"id": "acc1"})
        state.set("kept", 1)
        server.stop()
        calls = [lambda: state.get("kept"), lambda: state.set("x", 1), lambda: state.incr("n"),
                 lambda: state.window_add("w", 1, 60), lambda: state.lease("l", 60), lambda: state.leases("l"),
                 lambda: state.try_lock("k", 5), lambda: state.keys(""), lambda: state.collection("accounts").all(),
                 lambda: state.collection("accounts").update("acc1", lambda d: None), lambda: state.collection_names(),
                 lambda: state.blobs("t_blobs").get("a"), lambda: state.blobs("t_blobs").set("a", "x", 60),
                 lambda: state.blobs("t_blobs").entries()]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StateUnavailable, match=f"127.0.0.1:{server.port}"):
                call()
            assert time.monotonic() - started < 3
        assert state.ping() is False
        server.start()  # same port, data from the append-only file
        assert state.ping() is True
        assert state.get("kept") == 1 and state.collection("accounts").get("acc1") == {"id": "acc1"}
    finally:
        server.close()


def _config_error(tmp_path, section: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "data" / "db.json")}, "state": section}))
    return subprocess.run([PYTHON, "-m", "codexproxy", "plugins", "-c", str(path)], capture_output=True, text=True,
                          timeout=60, env=clean_env())


@pytest.mark.parametrize("section, says", [
    ({"backend": "redis"}, "state.redis_url: Value error, required when state.backend is redis"),
    ({"backend": "redis", "redis_url": "http://:pw-secret@host"}, "state.redis_url: Value error, must start with redis://"),
    ({"backend": "memcached"}, "state.backend: Input should be 'tinydb' or 'redis'"),
    ({"redis_url": "redis://h", "extra": 1}, "state.extra: unknown key"),
])
def test_a_bad_state_section_is_one_line_naming_the_key(tmp_path, section, says):
    result = _config_error(tmp_path, section)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "pw-secret" not in result.stderr


def test_the_generation_changes_on_any_clients_write_and_when_a_document_runs_out(two):
    from codexproxy.models import Account
    from codexproxy.state_redis import GENERATION_MAX_AGE_S
    from codexproxy.store import AccountRepo

    a, b = two
    mine, theirs = a.collection("accounts"), b.collection("accounts")
    repo = AccountRepo(mine)  # caches parsed records on the generation, as on the local store
    account = repo.add(Account(email="a@example.com"))
    seen = mine.generation()
    assert mine.generation() == seen  # reading changes nothing
    theirs.update(account.id, lambda d: d.update(plan="pro"))
    time.sleep(GENERATION_MAX_AGE_S)  # another process's write shows within the bound
    assert mine.generation() != seen and repo.get(account.id).plan == "pro"
    seen = mine.generation()
    theirs.put({"id": "short"}, ttl=0.3)
    time.sleep(GENERATION_MAX_AGE_S)
    assert mine.generation() != seen
    seen = mine.generation()
    time.sleep(0.4)
    assert mine.generation() != seen and [r.id for r in repo.all()] == [account.id]
    seen = mine.generation()
    assert theirs.remove(account.id)
    time.sleep(GENERATION_MAX_AGE_S)
    assert mine.generation() != seen and repo.all() == []


def test_own_writes_and_a_lock_taken_make_the_generation_current_at_once(two):
    """Within the bound a reader may see another process's write late, never its own, and never
    after taking a lock: the token refresh re-reads the account under its lock, and a stale read
    there would refresh a rotated token twice (which kills the account)."""
    a, b = two
    mine, theirs = a.collection("accounts"), b.collection("accounts")
    mine.put({"id": "acc1", "refresh_token": "rt-1"})
    seen = mine.generation()
    mine.update("acc1", lambda d: d.update(plan="pro"))  # our own write: no waiting
    assert mine.generation() != seen
    seen = mine.generation()
    theirs.update("acc1", lambda d: d.update(refresh_token="rt-2"))  # rotated by the other process
    token = a.try_lock("accounts:refresh:acc1", ttl=5)
    assert token is not None and mine.generation() != seen  # at once, no GENERATION_MAX_AGE_S wait
    a.unlock("accounts:refresh:acc1", token)
    seen = mine.generation()
    mine.remove("acc1")
    assert mine.generation() != seen


def test_generations_of_all_collections_cost_one_round_trip_per_bound(two, redis_server):
    """The repositories check their collection's generation on every request; on Redis that is
    one pipeline for every collection at most every GENERATION_MAX_AGE_S, not a trip per check."""
    from codexproxy.state_redis import GENERATION_MAX_AGE_S

    a, _ = two
    keys, accounts = a.collection("keys"), a.collection("accounts")
    keys.generation(), accounts.generation()
    with redis_server.client() as client:
        def evals() -> int:
            return int(client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0))
        before, started = evals(), time.monotonic()
        for _ in range(2000):
            keys.generation()
            accounts.generation()
        elapsed = time.monotonic() - started
        asked = evals() - before
    # each ask is one pipeline of two EVALs (both collections)
    assert asked <= 2 * (elapsed / GENERATION_MAX_AGE_S + 2), (asked, elapsed)


def test_later_writes_land_in_order_without_waiting_and_close_sends_the_rest(two):
    a, b = two
    token = a.later.lease("inflight:acc1", ttl=30)
    a.later.set("routing:turn-state:t1", "acc1", ttl=30)
    a.later.incr("auth:tokens:k1", 40, ttl=60)
    a.later.incr("auth:tokens:k1", 2)
    assert a.later.flush(5)
    assert b.leases("inflight:acc1") == 1 and b.get("routing:turn-state:t1") == "acc1" and b.get("auth:tokens:k1") == 42
    a.later.release("inflight:acc1", token)
    a.later.delete("routing:turn-state:t1")
    other = a.later.lease("inflight:acc1", ttl=30)  # taken then given back in one batch: order kept
    a.later.release("inflight:acc1", other)
    a.later.incr("auth:tokens:k1", 8)
    a.close()  # sends what is left before it returns
    assert b.leases("inflight:acc1") == 0 and b.get("routing:turn-state:t1") is None and b.get("auth:tokens:k1") == 50


def test_later_writes_wait_out_a_redis_restart_and_are_sent_once_it_is_back():
    server = start_redis(appendonly=True)
    try:
        state, reader = RedisState.from_url(server.url), RedisState.from_url(server.url)
        state.later.incr("auth:tokens:k1", 5)
        assert state.later.flush(5)
        server.stop()
        started = time.monotonic()
        state.later.incr("auth:tokens:k1", 7)  # never raises, never waits
        token = state.later.lease("inflight:acc1", ttl=60)
        state.later.release("inflight:acc1", token)
        assert time.monotonic() - started < 0.1
        assert not state.later.flush(1)  # kept, not sent
        server.start()
        assert state.later.flush(10)
        assert reader.get("auth:tokens:k1") == 12 and reader.leases("inflight:acc1") == 0
        state.close()
        reader.close()
    finally:
        server.close()


def test_a_redis_that_never_answers_is_unavailable_within_seconds():
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        state = RedisState.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="Timeout"):
            state.get("x")
        assert time.monotonic() - started < 6  # the socket timeout (2 s), once retried
        state.close()


def test_the_config_picks_the_redis_backend(tmp_path, redis_url):
    from codexproxy.config import load_config
    from codexproxy.state import open_state
    from codexproxy.store import Store

    config = load_config(None, {"CODEXPROXY_STATE__BACKEND": "redis", "CODEXPROXY_STATE__REDIS_URL": redis_url})
    state = open_state(config, Store(tmp_path / "store.json"))
    assert isinstance(state, RedisState) and state.incr("picked") == 1
    state.close()


@pytest.mark.parametrize("command", [["accounts", "list"], ["run", "--port", "0"]])
def test_the_cli_and_run_with_redis_unreachable_say_so_in_one_line(tmp_path, command):
    from tests.conftest import closed_port

    port = closed_port()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "data" / "db.json")},
                                    "state": {"backend": "redis", "redis_url": f"redis://:pw-secret@127.0.0.1:{port}/0"}}))
    result = subprocess.run([PYTHON, "-m", "codexproxy", *command, "-c", str(path)], capture_output=True, text=True,
                            timeout=60, env=clean_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"The gateway's shared state is unavailable (Redis at 127.0.0.1:{port}: Error 111 connecting to 127.0.0.1:{port}. "
        "Connection refused.); retry in a few seconds."]
