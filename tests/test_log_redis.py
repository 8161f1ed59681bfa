"""The request log on Redis (`state.backend: redis`): two proxies with their own data dirs on one
Redis write to one capped stream, and `codexproxy logs` (either config), the admin RPC, the
status page and the history buckets of either show both proxies' rows. Retention caps the
stream; while Redis is down rows wait in the local spool (a proxy killed meanwhile included) and
none is lost or doubled when it is back; the buckets count new stream entries only."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from codexproxy.logstore_redis import RedisLogStore
from tests.adminkit import login, result
from tests.conftest import RESPONSES_BODY, wait_for
from tests.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

STREAM = "codexproxy:{log}:rows"
CHAT_BODY = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "x"}]}


def shared(url: str, retention: int | None = None) -> dict:
    config: dict = {"state": {"backend": "redis", "redis_url": url}}
    if retention:
        config["plugins"] = {"logging": {"retention": retention}}
    return config


def send(proxy, path: str = "/v1/responses", times: int = 1) -> None:
    body = CHAT_BODY if "chat" in path else RESPONSES_BODY
    with proxy.client() as client:
        for _ in range(times):
            client.post(path, json=body, headers=proxy.auth)


def paths(rows) -> list[str]:
    return sorted(r["path"] for r in rows if r["path"] != "/rpc")  # the admin API's own calls are logged too


def served_this_week(proxy) -> int:
    """Requests the pool's account served, from the status page's buckets (usage.history)."""
    [account] = result(proxy, "usage.history")["accounts"]
    return account["share"]["7d"]["requests"]


def shipped(proxy, client) -> bool:
    """Every spool file of this proxy is in the stream (its shipped offset is its size)."""
    for spool in (proxy.data_dir / "logs").glob("spool-*.jsonl"):
        if int(client.get("codexproxy:{log}:shipped:" + spool.stem[len("spool-"):]) or 0) != spool.stat().st_size:
            return False
    return True


@pytest.fixture
def pair(make_proxy, redis_url):
    a = make_proxy(shared(redis_url), accounts=1, name="a")
    b = make_proxy(shared(redis_url), accounts=0, key=False, name="b")
    b.key = a.key
    return a, b


def test_both_proxies_rows_reach_the_cli_the_rpc_the_page_and_the_charts_of_either(pair, redis_server):
    a, b = pair
    send(a, "/v1/responses", 2)  # a's rows and b's rows differ by path
    send(b, "/v1/chat/completions", 3)
    both = ["/v1/chat/completions"] * 3 + ["/v1/responses"] * 2
    for proxy in (a, b):  # the CLI as a subprocess, on each proxy's own config and data dir
        wait_for(lambda: paths(proxy.cli_json("logs")) == both, what=f"both proxies' rows in {proxy.dir.name}'s `logs`")
    assert paths(a.cli_json("logs", "path:/v1/chat")) == ["/v1/chat/completions"] * 3  # the query syntax
    assert [r["path"] for r in b.cli_json("logs", "--limit", "2", "--offset", "3")] == ["/v1/responses"] * 2
    for proxy in (a, b):
        rpc = result(proxy, "logs.query", {"query": "status:2xx"})
        assert paths(rpc["rows"]) == both
        assert served_this_week(proxy) == 5  # the buckets count the other proxy's rows too
        page = login(proxy)
        html = page.get("/status/logs").text
        page.close()
        assert html.count("/v1/chat/completions") >= 3 and html.count("/v1/responses") >= 2
    assert (a.data_dir / "logs").is_dir() and not list((a.data_dir / "logs").glob("requests-*.jsonl"))  # no local log
    # new rows after the buckets were counted are added (incrementally), from either proxy
    send(a, "/v1/responses", 1)
    wait_for(lambda: served_this_week(b) == 6, what="b's buckets seeing a's new row")
    # export and clear act on the shared log
    exported = b.cli("logs", "export", "path:/v1", "--format", "jsonl", check=True).stdout.splitlines()
    assert len(exported) == 6
    cleared = int(a.cli("logs", "clear", check=True).stdout.split()[1])
    assert cleared >= 6  # and the /rpc calls
    assert b.cli_json("logs") == []
    assert served_this_week(b) == 0
    send(b, "/v1/responses", 1)
    wait_for(lambda: paths(a.cli_json("logs")) == ["/v1/responses"], what="logging after a clear")


def test_retention_caps_the_shared_stream(make_proxy, redis_url, redis_server):
    a = make_proxy(shared(redis_url, retention=100), accounts=1, name="a")
    b = make_proxy(shared(redis_url, retention=100), accounts=0, key=False, name="b")
    b.key = a.key
    send(a, times=130)
    send(b, times=130)
    client = redis_server.client()
    wait_for(lambda: shipped(a, client) and shipped(b, client), what="every row shipped")
    length = client.xlen(STREAM)
    assert 100 <= length <= 210, length  # MAXLEN ~ 100: Redis trims whole nodes of 100 entries
    assert len(a.cli_json("logs", "--limit", "1000")) == length
    newest = client.xrevrange(STREAM, count=1)
    assert newest, "the newest rows are kept"


def test_rows_logged_while_redis_is_down_arrive_once_when_it_is_back_a_killed_proxys_too(make_proxy):
    from tests.redis_server import start_redis

    server = start_redis(appendonly=True)  # keeps its data across the restart, as deployed
    try:
        a = make_proxy(shared(server.url), accounts=1, name="a")
        b = make_proxy(shared(server.url), accounts=0, key=False, name="b")
        b.key = a.key
        send(a, "/v1/responses", 2)
        send(b, "/v1/chat/completions", 1)
        wait_for(lambda: len(a.cli_json("logs")) == 3, what="the first rows")
        # The jobs' first pass (0.5-2 s after start) is over: a Redis down at that moment kills
        # the scheduler's thread (scheduler.py, reported), which is not what this test is about.
        time.sleep(2.5)
        server.stop()
        down = a.cli("logs")  # the shared log cannot be read: one line, no traceback
        assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr
        assert "shared state is unavailable" in down.stderr
        with a.client() as client:  # answered 503 (the state is down), and logged: acknowledged rows
            for _ in range(4):
                assert client.post("/v1/responses", json=RESPONSES_BODY, headers=a.auth).status_code == 503
        with b.client() as client:
            for _ in range(3):
                assert client.post("/v1/responses?from=b", json=RESPONSES_BODY, headers=b.auth).status_code == 503
        b.stop(signal.SIGKILL)  # b dies with its rows in its spool only
        assert list((b.data_dir / "logs").glob("spool-*.jsonl"))
        server.start()
        # a ships its own; b's spool is taken over by the next process on b's data dir: b restarted
        b.start()
        wait_for(lambda: len(a.cli_json("logs", "--limit", "100")) == 10, timeout=30, what="every row after the outage")
        rows = a.cli_json("logs", "--limit", "100")
        assert len(rows) == 10 and len({r["id"] for r in rows}) == 10  # none lost, none twice
        assert sorted(r["status"] for r in rows) == [200] * 3 + [503] * 7
        assert sum(1 for r in rows if r["path"] == "/v1/responses?from=b" or r["path"] == "/v1/responses" and r["status"] == 503) == 7
        wait_for(lambda: not list((b.data_dir / "logs").glob("spool-*.jsonl")), what="b's spool removed once shipped")
        assert len(a.cli_json("logs", "--limit", "100")) == 10  # still once
    finally:
        server.close()


def test_the_buckets_read_only_new_entries_and_take_trimmed_ones_out(tmp_path, redis_server, redis_url):
    client = redis_server.client()
    writer = RedisLogStore(client, tmp_path / "w", retention=100_000, ship=False)
    reader = RedisLogStore(client, tmp_path / "r", retention=100, ship=False)
    now = time.time()
    for i in range(1200):
        writer.append({"id": f"r{i}", "time": now, "status": 200, "key_id": "k1", "input_tokens": 1, "output_tokens": 0})
    writer.ship()
    read = []  # stream entries the reader fetched, per call
    pages, first = reader._page_script, client.xrange

    def counting_pages(*args, **kw):
        page = pages(*args, **kw)
        read.append(len(page.splitlines()))
        return page

    def counting_xrange(*args, **kw):
        entries = first(*args, **kw)
        read.append(len(entries))
        return entries

    reader._page_script, client.xrange = counting_pages, counting_xrange
    today = reader.history().series()["days"][-1]
    assert today["requests"] == 1200 and today["keys"]["k1"]["tokens"] == 1200
    assert sum(read) >= 1200
    read.clear()
    reader.history()  # a page view with nothing new: no rescan
    assert sum(read) <= 1, read
    writer.set_retention(100)
    for i in range(300):
        writer.append({"id": f"n{i}", "time": now, "status": 500, "key_id": "k1"})
        if i % 50 == 49:
            writer.ship()  # MAXLEN ~ 100 trims the old entries
    read.clear()
    today = reader.history().series()["days"][-1]
    assert sum(read) <= 300 + 1  # the new entries (and the oldest id), not the stream again
    length = client.xlen(STREAM)
    assert length < 300 and today["requests"] == today["errors"] == length  # only new (failed) rows are left
    assert today["keys"]["k1"] == {"requests": length, "tokens": 0, "peak_rpm": length}


def test_a_shipment_whose_answer_was_lost_is_not_sent_twice(tmp_path, redis_server, redis_url):
    import redis

    from codexproxy.state_redis import StateUnavailable

    client = redis_server.client()
    logs = RedisLogStore(client, tmp_path / "logs", ship=False)
    for i in range(3):
        logs.append({"id": f"r{i}", "status": 200})
    real = logs._ship_script

    def lost_answer(*args, **kw):  # Redis ran it, the connection broke before its answer came back
        real(*args, **kw)
        raise redis.exceptions.ConnectionError("connection reset")

    logs._ship_script = lost_answer
    with pytest.raises(StateUnavailable):
        logs.ship()
    logs._ship_script = real
    logs.append({"id": "r3", "status": 200})
    logs.ship()
    assert [r["id"] for r in logs.query(limit=10)] == ["r3", "r2", "r1", "r0"]
    logs.close()


def test_codexproxy_logs_on_a_dead_instances_data_dir_ships_what_it_left(tmp_path, redis_server, redis_url):
    """The first read of a process takes over the spools of dead ones on its data dir: a
    `codexproxy logs` run there after a crash shows the rows the crashed proxy acknowledged."""
    import os

    client = redis_server.client()
    crashed = RedisLogStore(client, tmp_path / "logs", ship=False)
    for i in range(3):
        crashed.append({"id": f"r{i}", "status": 200})
    crashed.ship()
    for i in range(3, 5):
        crashed.append({"id": f"r{i}", "status": 503})
    with open(crashed._spools[-1].path, "ab") as spool:
        spool.write(b'{"id":"torn","sta')  # killed mid-write
    for spool in crashed._spools:
        os.close(spool.fd)  # what the kernel does for a killed process: its lock goes
    cli = RedisLogStore(client, tmp_path / "logs", ship=False)
    assert [r["id"] for r in cli.query(limit=10)] == ["r4", "r3", "r2", "r1", "r0"]
    assert not list((tmp_path / "logs").glob("spool-*"))  # shipped, then removed
    again = RedisLogStore(client, tmp_path / "logs", ship=False)
    assert again.count() == 5
