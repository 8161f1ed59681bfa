"""previous_response_id across instances (issue 15): with `state.backend: redis` the kept
conversations live in the shared state, so a turn answered by one proxy continues through
another, for the key that made it only, and the caps (count and bytes, oldest out) hold for the
pool -- also when several processes keep responses at once."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from codexproxy_plugins.adapter.conversations import BLOBS, BYTES, SLOT, UNAVAILABLE_PAUSE_S, ConversationStore
from tests.fakeupstream import B
from tests.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)
from tests.test_conversations import texts

pytestmark = pytest.mark.slow

ENTRIES = f"codexproxy:b:{BLOBS}:*"  # RedisState's keys of the blobs, for looking at Redis itself


def shared(redis_url: str, **conversations) -> dict:
    config: dict = {"state": {"backend": "redis", "redis_url": redis_url}}
    if conversations:
        config["plugins"] = {"adapter": {"conversations": conversations}}
    return config


def pair(make_proxy, redis_url: str, **conversations):
    """Proxies `a` and `b` on one Redis, each with its own data dir; account and key made via `a`."""
    a = make_proxy(shared(redis_url, **conversations), accounts=1, name="a")
    b = make_proxy(shared(redis_url, **conversations), accounts=0, key=False, name="b")
    b.key, b.fake_accounts = a.key, a.fake_accounts
    return a, b


def sdk(proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_a_turn_answered_by_one_proxy_continues_through_the_other_for_its_key_only(make_proxy, fake, redis_url, redis_server):
    a, b = pair(make_proxy, redis_url)
    acct = a.fake_accounts[0]
    fake.script(acct, B.ok(text="Hello Ada."), B.ok(text="You are Ada."), B.ok(text="Still Ada."))

    first = sdk(a, a.key).responses.create(model="gpt-5.5", input="My name is Ada.")
    # at once, as an app behind a load balancer would: no waiting for the write to land
    second = sdk(b, b.key).responses.create(model="gpt-5.5", input="What is my name?", previous_response_id=first.id)
    assert texts(fake.requests[-1].json["input"]) == ["My name is Ada.", "Hello Ada.", "What is my name?"]
    assert second.output_text == "You are Ada."
    # and back: b's answer continues through a, streamed
    with sdk(a, a.key).responses.stream(model="gpt-5.5", input="Sure?", previous_response_id=second.id) as stream:
        assert stream.get_final_response().output_text == "Still Ada."
    assert texts(fake.requests[-1].json["input"]) == ["My name is Ada.", "Hello Ada.", "What is my name?",
                                                      "You are Ada.", "Sure?"]
    assert sdk(b, b.key).responses.retrieve(first.id).output_text == "Hello Ada."

    # another key (made through a, served by b too) can neither continue nor read it
    other = sdk(b, a.create_key("other"))
    sent = len(fake.requests)
    with pytest.raises(openai.BadRequestError) as info:
        other.responses.create(model="gpt-5.5", input="x", previous_response_id=first.id)
    assert info.value.body["code"] == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    assert len(fake.requests) == sent

    # what reached Redis: the bodies and answers, no platform key, no account token
    with redis_server.client() as client:
        kept = [client.get(name) for name in client.scan_iter(match=ENTRIES)]
    assert len(kept) == 3 and any("My name is Ada." in value for value in kept)
    assert not any(a.key in value or acct.access_token in value for value in kept)


def test_an_answer_is_on_the_other_proxy_by_the_time_the_client_has_it(make_proxy, fake, redis_url):
    """The entry is written before the answer's last event leaves, not when the exchange ends: a
    client that asks the other proxy the moment it has response.completed finds it, although the
    upstream keeps the stream open 2 s longer (kept at the exchange's end, it was missing then;
    under load even with no tail, 2 to 50 of 80 keep-alive follow-ups missed it)."""
    a, b = pair(make_proxy, redis_url)
    fake.set_default(a.fake_accounts[0], B.ok(text="ok", tail_delay=2.0))
    with sdk(a, a.key).responses.stream(model="gpt-5.5", input="hello " * 20_000) as stream:
        done = next(event for event in stream if event.type == "response.completed")
        kept = sdk(b, a.key).responses.retrieve(done.response.id)
        assert kept.output_text == "ok"
    answer = sdk(a, a.key).responses.create(model="gpt-5.5", input="not streamed")  # kept before the body leaves
    assert sdk(b, a.key).responses.retrieve(answer.id).output_text == "ok"


def test_the_caps_evict_the_oldest_across_both_proxies(make_proxy, fake, redis_url, redis_server):
    a, b = pair(make_proxy, redis_url, max_entries=2)
    fake.set_default(a.fake_accounts[0], B.ok(text="ok"))
    ids = [sdk(proxy, a.key).responses.create(model="gpt-5.5", input=f"turn {n}").id
           for n, proxy in enumerate((a, b, a))]
    # the newest two stay, wherever they were answered; the oldest is gone for both proxies
    continued = sdk(b, a.key).responses.create(model="gpt-5.5", input="x", previous_response_id=ids[1])
    assert texts(fake.requests[-1].json["input"]) == ["turn 1", "ok", "x"]
    for proxy in (a, b):
        with pytest.raises(openai.BadRequestError) as info:
            sdk(proxy, a.key).responses.create(model="gpt-5.5", input="x", previous_response_id=ids[0])
        assert info.value.body["code"] == "previous_response_not_found"
    with redis_server.client() as client:
        assert sorted(name.rsplit(":", 1)[1] for name in client.scan_iter(match=ENTRIES)) == sorted([ids[2], continued.id])


def test_concurrent_writers_on_redis_keep_the_newest_within_both_caps(redis_url):
    """Two processes' stores (two Redis clients) keeping responses at once: once they are done
    (and one more is kept), exactly the newest `max_entries` are left, and the bytes counter is
    the sum of what is left -- no slot evicted twice, none forgotten."""
    from codexproxy.state_redis import RedisState

    states = [RedisState.from_url(redis_url) for _ in range(2)]
    stores = [ConversationStore(state, max_entries=10, max_bytes=10_000_000, ttl_s=600) for state in states]

    def write(n: int) -> None:
        for i in range(60):
            stores[n].put(f"resp_{n}_{i}", "key", [{"i": i}], {"id": f"resp_{n}_{i}", "output": []})
        assert stores[n].flush()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stores[0].put("resp_last", "key", [], {"id": "resp_last", "output": []})
    assert stores[0].flush()

    state = states[0]
    kept = [name for name, _, _ in state.blobs(BLOBS).entries()]
    assert len(kept) == 10 and "resp_last" in kept
    slots = [state.get(name) for name in state.keys(SLOT)]
    assert sorted(slot["id"] for slot in slots) == sorted(kept)  # each live entry has its slot, nothing else does
    assert state.get(BYTES) == sum(slot["size"] for slot in slots)
    # the newest: each writer's kept entries are its last ones
    for n in range(2):
        mine = sorted(int(rid.rsplit("_", 1)[1]) for rid in kept if rid.startswith(f"resp_{n}_"))
        assert mine == list(range(60 - len(mine), 60))

    # the bytes cap, on the same counters: a store allowing 1,000 bytes keeps only the newest that fit
    small = ConversationStore(state, max_entries=100, max_bytes=1000, ttl_s=600)
    for i in range(4):
        small.put(f"big_{i}", None, ["x" * 200], {"id": f"big_{i}"})
    assert small.flush()
    assert sorted(name for name, _, _ in state.blobs(BLOBS).entries()) == ["big_1", "big_2", "big_3"]  # ~250 bytes each
    assert 0 < state.get(BYTES) <= 1000
    for store in stores:
        store.close()
    for state in states:
        state.close()


def test_answers_are_not_kept_while_redis_hangs_and_are_again_once_it_answers(caplog):
    """A write that cannot reach the state drops that answer with a one-line warning (no
    traceback); the ones queued behind it do not each wait out the timeouts (a hung Redis: 2 s
    per command, one retry), and keeping works again by itself once Redis answers."""
    import signal
    import time

    from codexproxy.state_redis import RedisState
    from tests.redis_server import start_redis

    server = start_redis()
    state = RedisState.from_url(server.url)
    store = ConversationStore(state, max_entries=10, max_bytes=10**6, ttl_s=600)
    try:
        server.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        started = time.monotonic()
        for i in range(10):
            store.put(f"hung_{i}", None, [], {"id": f"hung_{i}"})
        assert store.flush(timeout=60)
        assert time.monotonic() - started < 15  # one write's timeouts, not ten
        warnings = [r for r in caplog.records if "not kept" in r.getMessage()]
        assert warnings and all(r.exc_info is None for r in warnings)
        server.process.send_signal(signal.SIGCONT)
        time.sleep(UNAVAILABLE_PAUSE_S + 0.1)  # answers given meanwhile are not kept
        store.put("back", None, [], {"id": "back"})
        assert store.flush()
        assert store.get("back", None) is not None and state.blobs(BLOBS).get("hung_0") is None
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        store.close()
        state.close()
        server.close()
