"""previous_response_id (issue #12): the Codex backend stores nothing, so codexproxy keeps each
Responses answer (input and output, bounded) and expands an id into that history; an unknown or
evicted id is 400 previous_response_not_found, as OpenAI answers."""

from __future__ import annotations

import json
import signal
import time

import httpx
import openai
import pytest

from codexproxy.state import LocalState
from codexproxy.store import Store
from codexproxy_plugins.adapter.conversations import BLOBS, ConversationStore, replay_items
from tests.conftest import wait_for
from tests.fakeupstream import B

pytestmark = pytest.mark.client


# --- the store on its own ----------------------------------------------------------------------

def keep(store: ConversationStore, response_id: str, key_id, input_items: list) -> None:
    store.put(response_id, key_id, input_items, {"id": response_id, "output": []})
    assert store.flush(), "the write did not finish"


def test_store_caps_evict_the_oldest_and_entries_belong_to_their_key(tmp_path):
    state = LocalState(Store(tmp_path / "codexproxy.json"))
    store = ConversationStore(state, max_entries=2, max_bytes=10_000_000, ttl_s=3600)
    for n in range(3):
        keep(store, f"resp_{n}", "key_a", [{"n": n}])
    assert store.get("resp_0", "key_a") is None  # the oldest went first
    assert state.blobs(BLOBS).get("resp_0") is None  # from the state too, not only hidden
    assert store.get("resp_1", "key_a")["input"] == [{"n": 1}]
    assert store.get("resp_2", "key_a")["input"] == [{"n": 2}]
    assert store.get("resp_2", "key_b") is None  # another key's conversation is not there for it
    store.close()

    small = ConversationStore(LocalState(Store(tmp_path / "small.json")), max_entries=100, max_bytes=400, ttl_s=3600)  # two entries fit
    for n in range(3):
        keep(small, f"r{n}", None, ["x" * 100])
    assert small.get("r0", None) is None and small.get("r1", None) is not None and small.get("r2", None) is not None
    keep(small, "huge", None, ["x" * 400])  # over max_bytes alone: not kept, and evicts nothing
    assert small.get("huge", None) is None and small.get("r2", None) is not None
    small.close()

    expired = ConversationStore(LocalState(Store(tmp_path / "ttl.json")), max_entries=100, max_bytes=10**6, ttl_s=0.2)
    keep(expired, "old", None, [])
    assert expired.get("old", None) is not None
    time.sleep(0.3)
    assert expired.get("old", None) is None
    expired.close()


def test_entries_kept_before_a_restart_are_counted_once(tmp_path):
    """A restarted embedded state has the blobs but no counters: the store gives each kept entry
    a slot again, once -- also one kept while that scan ran, whose own bookkeeping follows."""
    from codexproxy_plugins.adapter.conversations import BYTES, SEQ

    LocalState(Store(tmp_path / "codexproxy.json")).blobs(BLOBS).set("resp_old", '{"key_id": null}', ttl=600)
    state = LocalState(Store(tmp_path / "codexproxy.json"))  # the restart
    store = ConversationStore(state, max_entries=10, max_bytes=10**6, ttl_s=600)
    assert store.flush()
    assert state.get(SEQ) == 1 and state.get(BYTES) == len('{"key_id": null}')
    store._account("resp_old", 16)  # the bookkeeping of a put that raced the scan
    keep(store, "resp_new", None, [])
    assert state.get(SEQ) == 2 and store.get("resp_old", None) is not None
    store.close()


def test_replay_drops_item_ids_and_reasoning_that_cannot_be_replayed():
    entry = {"input": [{"type": "message", "role": "user", "content": "a"}],
             "response": {"id": "resp_1", "output": [
                 {"id": "rs_1", "type": "reasoning", "summary": []},
                 {"id": "rs_2", "type": "reasoning", "summary": [], "encrypted_content": "enc"},
                 {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant", "content": []}]}}
    assert replay_items(entry) == [
        {"type": "message", "role": "user", "content": "a"},
        {"type": "reasoning", "summary": [], "encrypted_content": "enc"},
        {"type": "message", "role": "assistant", "content": []},
    ]


# --- through the proxy, with the openai SDK ----------------------------------------------------

def texts(items: list) -> list[str]:
    """The text of each message item of an upstream input, in order."""
    out = []
    for item in items:
        if item.get("type") == "message":
            content = item["content"]
            out.append(content if isinstance(content, str) else "".join(p.get("text", "") for p in content))
    return out


def test_three_turns_by_previous_response_id_only(make_proxy, fake):
    proxy = make_proxy()
    acct = proxy.fake_accounts[0]
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)
    fake.script(acct, B.ok(text="Hello Ada."), B.ok(text="You are Ada."), B.ok(text="Ada, as said."))

    first = oai.responses.create(model="gpt-5.5", input="My name is Ada.")
    assert first.output_text == "Hello Ada."
    second = oai.responses.create(model="gpt-5.5", input="What is my name?", previous_response_id=first.id)
    sent = fake.requests[-1].json
    assert "previous_response_id" not in sent and sent["store"] is False
    assert texts(sent["input"]) == ["My name is Ada.", "Hello Ada.", "What is my name?"]
    assert all("id" not in item for item in sent["input"])  # store=false: the backend knows no item ids
    assert second.output_text == "You are Ada."

    # the third turn streams, still by id only
    with oai.responses.stream(model="gpt-5.5", input="Sure?", previous_response_id=second.id) as stream:
        third = stream.get_final_response()
    assert third.output_text == "Ada, as said."
    assert texts(fake.requests[-1].json["input"]) == ["My name is Ada.", "Hello Ada.", "What is my name?",
                                                      "You are Ada.", "Sure?"]
    # a streamed answer is kept too, and can be read back
    wait_for(lambda: httpx.get(f"{proxy.url}/v1/responses/{third.id}", headers=proxy.auth, timeout=30).status_code == 200,
             what="the streamed response to be kept")
    kept = oai.responses.retrieve(second.id)
    assert kept.id == second.id and kept.output_text == "You are Ada."

    # kept in the state's blobs: on the embedded backend one private file beside the store, with
    # the bodies and answers, no platform key, no account token
    kept_file = proxy.data_dir / "codexproxy.conversations.sqlite3"
    assert kept_file.stat().st_mode & 0o777 == 0o600
    proxy.stop()
    data = b"".join(path.read_bytes() for path in proxy.data_dir.glob("codexproxy.conversations.sqlite3*"))
    assert b"My name is Ada." in data and proxy.key.encode() not in data and acct.access_token.encode() not in data


def test_kept_conversations_outlive_a_killed_proxy_and_count_against_the_caps_after(make_proxy, fake):
    """Killed with -9 and started again, the proxy still continues a kept response; and the ones
    kept before count against max_entries after the restart (the slot counters are memory: they
    are rebuilt from what is kept), so the next answer evicts the oldest."""
    proxy = make_proxy({"plugins": {"adapter": {"conversations": {"max_entries": 2}}}})
    fake.set_default(proxy.fake_accounts[0], B.ok(text="ok"))
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)
    ids = [oai.responses.create(model="gpt-5.5", input=f"turn {n}").id for n in range(2)]
    proxy.stop(signal.SIGKILL)
    proxy.start()
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)
    ids.append(oai.responses.create(model="gpt-5.5", input="turn 2", previous_response_id=ids[1]).id)
    assert texts(fake.requests[-1].json["input"]) == ["turn 1", "ok", "turn 2"]
    wait_for(lambda: httpx.get(f"{proxy.url}/v1/responses/{ids[0]}", headers=proxy.auth, timeout=30).status_code == 404,
             what="the oldest kept response to be evicted by the third")
    assert [httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=proxy.auth, timeout=30).status_code for rid in ids] == [404, 200, 200]


def test_unknown_id_other_keys_and_codex_traffic(make_proxy, fake):
    proxy = make_proxy()
    fake.set_default(proxy.fake_accounts[0], B.ok(text="ok"))
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)
    before = len(fake.requests)
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="gpt-5.5", input="x", previous_response_id="resp_never_issued")
    assert info.value.status_code == 400
    assert info.value.body["code"] == "previous_response_not_found" and info.value.body["param"] == "previous_response_id"
    assert "resp_never_issued" in info.value.body["message"]
    assert len(fake.requests) == before  # refused here, not sent upstream
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve("resp_never_issued")

    mine = oai.responses.create(model="gpt-5.5", input="secret plan")
    other = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.create_key("other"), max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as info:
        other.responses.create(model="gpt-5.5", input="x", previous_response_id=mine.id)
    assert info.value.body["code"] == "previous_response_not_found"

    # Codex sends store=false: nothing is kept, and its body goes upstream byte for byte
    codex_body = {"model": "gpt-5-codex", "instructions": "", "stream": True, "store": False,
                  "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}
    raw = json.dumps(codex_body, separators=(",", ":")).encode()
    with httpx.stream("POST", proxy.url + "/v1/responses", content=raw, timeout=30,
                      headers={**proxy.auth, "content-type": "application/json", "originator": "codex_exec",
                               "user-agent": "codex_exec/0.169.0"}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert r.status_code == 200 and events
    assert fake.requests[-1].body == raw
    codex_id = json.loads(events[-1][5:])["response"]["id"]
    time.sleep(0.5)
    assert httpx.get(f"{proxy.url}/v1/responses/{codex_id}", headers=proxy.auth, timeout=30).status_code == 404


def test_the_cap_evicts_the_oldest_and_off_refuses_the_field(make_proxy, fake):
    proxy = make_proxy({"plugins": {"adapter": {"conversations": {"max_entries": 2}}}})
    fake.set_default(proxy.fake_accounts[0], B.ok(text="ok"))
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)
    ids = []
    for n in range(3):
        ids.append(oai.responses.create(model="gpt-5.5", input=f"turn {n}").id)
        wait_for(lambda: httpx.get(f"{proxy.url}/v1/responses/{ids[-1]}", headers=proxy.auth, timeout=30).status_code == 200,
                 what="the response to be kept")
        time.sleep(0.05)
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="gpt-5.5", input="x", previous_response_id=ids[0])
    assert info.value.body["code"] == "previous_response_not_found"
    oai.responses.create(model="gpt-5.5", input="x", previous_response_id=ids[1])  # the newer ones stay
    assert texts(fake.requests[-1].json["input"]) == ["turn 1", "ok", "x"]

    off = make_proxy({"plugins": {"adapter": {"conversations": {"enabled": False}}}}, name="off")
    client = openai.OpenAI(base_url=off.url + "/v1", api_key=off.key, max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-5.5", input="x", previous_response_id="resp_1")
    assert info.value.body["param"] == "previous_response_id" and "enabled" in info.value.body["message"]
    fake.set_default(off.fake_accounts[0], B.ok(text="ok"))
    answered = client.responses.create(model="gpt-5.5", input="x")
    assert httpx.get(f"{off.url}/v1/responses/{answered.id}", headers=off.auth, timeout=30).status_code == 404  # nothing kept
