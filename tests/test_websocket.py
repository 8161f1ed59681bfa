"""The WebSocket transport driven by a raw client (the `websockets` library), as Codex uses it:
`GET .../responses` + `Upgrade: websocket`, one `response.create` message per turn, the
upstream's events back as one JSON text message each, several turns per socket
(codexproxy/codexconfig.py has what Codex 0.169 sends)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.fakeupstream import B

TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")
PATHS = ["/v1/responses", "/responses", "/backend-api/codex/responses"]


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def body(text: str = "hi", **extra) -> dict:
    """A turn as Codex sends it over the socket (stream and store as over HTTP)."""
    return {"type": "response.create", "model": "gpt-5-codex", "stream": True, "store": False,
            "input": [user(text)], **extra}


def open_socket(proxy, path: str = "/v1/responses", key: str | None = None, headers: dict | None = None):
    url = "ws" + proxy.url[len("http"):] + path
    auth = {"authorization": f"Bearer {key or proxy.key}"} if key != "" else {}
    return connect(url, additional_headers={**auth, "openai-beta": "responses_websockets=2026-02-06", **(headers or {})},
                   proxy=None, open_timeout=10, max_size=None)


def read_turn(ws, timeout: float = 20) -> list[dict]:
    """The messages of one turn, up to and including its terminal one."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        events.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        if events[-1].get("type") in TERMINAL:
            return events


def turn(ws, message: dict | str | bytes, timeout: float = 20) -> list[dict]:
    ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))
    return read_turn(ws, timeout)


def text_of(events: list[dict]) -> str:
    return "".join(e.get("delta", "") for e in events if e.get("type") == "response.output_text.delta")


def error_of(events: list[dict]) -> tuple[int | None, dict]:
    """(status, error object) of a turn that ended with an error message."""
    last = events[-1]
    assert last["type"] == "error", events
    error = last.get("error") or {}
    return last.get("status", error.get("status")), error


def ws_rows(proxy) -> list[dict]:
    return [row for row in proxy.cli_json("logs") if row.get("transport") == "websocket"]


@pytest.mark.parametrize("path", PATHS)
def test_a_turn_over_the_socket_streams_the_upstream_events(proxy, fake, path):
    acct = proxy.fake_accounts[0]
    fake.set_default(acct, B.ok(text="Hello over the socket", deltas=4))
    with open_socket(proxy, path) as ws:
        events = turn(ws, body("hi"))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 4
    assert text_of(events) == "Hello over the socket"
    seen = fake.requests[-1]
    assert seen.path == "/backend-api/codex/responses"
    assert seen.headers["authorization"] == f"Bearer {acct.access_token}"  # the account's token, never the key
    assert seen.json["stream"] is True and "type" not in seen.json  # the message type is not a Responses field
    assert seen.json["input"] == [user("hi")]


def test_several_turns_on_one_socket_stay_on_one_account_with_a_log_row_each(make_proxy, fake):
    # balanced would rotate the two accounts request by request over HTTP: a socket keeps its own
    proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced"}}}, accounts=2)
    for acct in proxy.fake_accounts:
        fake.set_default(acct, B.ok(text=f"from {acct.account_id[:8]}"))
    with open_socket(proxy) as ws:
        answers = [text_of(turn(ws, body(f"turn {i}"))) for i in range(3)]
    served = [rec.account_id for rec in fake.requests]
    assert len(served) == 3 and len(set(served)) == 1, served
    assert len(set(answers)) == 1 and answers[0] == f"from {served[0][:8]}"
    rows = ws_rows(proxy)
    assert len(rows) == 3, proxy.cli_json("logs")
    assert all(row["status"] == 200 and row["key_name"] == "test" for row in rows)


def test_a_new_socket_may_use_the_other_account(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced"}}}, accounts=2)
    for acct in proxy.fake_accounts:
        fake.set_default(acct, B.ok())
    for _ in range(2):
        with open_socket(proxy) as ws:
            assert turn(ws, body())[-1]["type"] == "response.completed"
    assert len({rec.account_id for rec in fake.requests}) == 2


@pytest.mark.parametrize("failure", [B.usage_limit(resets_in=3600), B.failed(code="server_is_overloaded")],
                         ids=["429", "200-then-overloaded"])
def test_a_turn_fails_over_before_any_output_and_the_socket_stays_on_the_new_account(make_proxy, fake, failure):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, failure)
    fake.set_default(second, B.ok(text="from the second", deltas=3))
    with open_socket(proxy) as ws:
        events = turn(ws, body("hi"))
        kinds = [e["type"] for e in events]
        assert kinds.count("response.created") == 1 and kinds[-1] == "response.completed"
        assert "error" not in kinds and "response.failed" not in kinds
        assert text_of(events) == "from the second"
        # the next turn stays where the conversation now is
        assert text_of(turn(ws, body("again"))) == "from the second"
    assert [rec.account_id for rec in fake.requests] == [first.account_id, second.account_id, second.account_id]
    row = ws_rows(proxy)[-1]  # newest first: the failed-over turn is the older one
    assert row["status"] == 200 and len(row["attempts"]) == 2


def test_every_account_failing_ends_the_turn_with_an_error_and_the_socket_stays_open(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    for acct in proxy.fake_accounts:
        fake.script(acct, B.usage_limit(resets_in=60))
    with open_socket(proxy) as ws:
        status, error = error_of(turn(ws, body()))
        assert status == 429 and error.get("message")
        assert error_of(turn(ws, "still listening?"))[0] == 400  # the socket answers the next message
    assert len(fake.requests) == 2
    assert ws_rows(proxy)[0]["status"] == 429


BAD_MESSAGES = [  # (message, words one of which the error names)
    ("this is not json", ["json"]),
    (json.dumps(["response.create"]), ["object", "type"]),
    (json.dumps({"type": "response.bogus", "model": "gpt-5-codex", "input": []}), ["response.bogus"]),
    (json.dumps({"model": "gpt-5-codex", "input": [user("no type")]}), ["type"]),
    (json.dumps({"type": "response.create"}), ["input", "model"]),
    (json.dumps({"type": "response.create", "model": "gpt-5-codex", "input": 42}), ["input"]),
    # json.dumps escapes it as \\ud800: a lone surrogate, valid JSON text but no Unicode
    (json.dumps({"type": "response.create", "model": "gpt-5-codex", "input": "\ud800 x"}), ["surrogate"]),
]


def test_bad_messages_get_clear_errors_and_the_socket_stays_usable(proxy, fake):
    fake.set_default(proxy.fake_accounts[0], B.ok(text="still here"))
    with open_socket(proxy) as ws:
        for message, words in BAD_MESSAGES:
            status, error = error_of(turn(ws, message))
            assert status == 400, (message, error)
            text = json.dumps(error).lower()
            assert any(word in text for word in words), (message, error)
            assert "traceback" not in text
        assert text_of(turn(ws, body())) == "still here"
    assert len(fake.requests) == 1  # no bad message reached an account
    assert [row["status"] for row in ws_rows(proxy)][0] == 200


def test_the_upgrade_without_a_valid_key_is_refused_with_401(proxy, fake):
    for key in ("", "cpk-not-a-key"):
        with pytest.raises(InvalidStatus) as refused:
            open_socket(proxy, key=key)
        assert refused.value.response.status_code == 401, key
    assert not fake.requests


def test_a_client_going_away_mid_turn_leaves_the_proxy_serving(proxy, fake):
    acct = proxy.fake_accounts[0]
    fake.script(acct, B.drip(delay=0.3, count=10))
    with open_socket(proxy) as ws:
        ws.send(json.dumps(body("long answer")))
        while json.loads(ws.recv(timeout=20))["type"] != "response.output_text.delta":
            pass
    time.sleep(1)
    fake.set_default(acct, B.ok(text="next socket"))
    with open_socket(proxy) as ws:
        assert text_of(turn(ws, body())) == "next socket"
    gone = ws_rows(proxy)[-1]  # the abandoned turn: logged, its upstream request ended early
    assert "disconnected" in (gone["error"] or "") and gone["attempts"][0]["ms"] < 2500, gone
    with proxy.client() as client:  # and HTTP still works
        assert client.get("/v1/models", headers=proxy.auth).status_code == 200


def test_a_broken_upstream_ends_the_turn_with_a_failure_never_a_hang(proxy, fake):
    acct = proxy.fake_accounts[0]
    fake.script(acct, B.cut(after_events=5, deltas=3),  # cut after the first output went out
                B.hang(seconds=30))  # then no answer at all (the idle timeout is 5 s)
    fake.set_default(acct, B.ok(text="recovered"))
    with open_socket(proxy) as ws:
        cut = turn(ws, body("one"))
        assert "response.output_text.delta" in [e["type"] for e in cut]
        assert cut[-1]["type"] in ("response.failed", "error"), cut[-1]
        started = time.monotonic()
        hung = turn(ws, body("two"), timeout=25)  # failed, or retried on the account: ended either way
        assert time.monotonic() - started < 20
        assert hung[-1]["type"] in ("response.failed", "error") or text_of(hung) == "recovered", hung[-1]
        assert text_of(turn(ws, body("three"))) == "recovered"  # and the socket goes on


def test_the_socket_closes_cleanly_when_the_client_closes_it(proxy, fake):
    fake.set_default(proxy.fake_accounts[0], B.ok())
    with open_socket(proxy) as ws:
        turn(ws, body())
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=2)
    assert ws.close_code == 1000


# --- what Codex 0.169 does on a socket (codexproxy/codexconfig.py) -------------------------------

DEVELOPER = {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]}


def test_a_prewarm_is_answered_without_asking_an_account(proxy, fake):
    # Codex's first message on a socket: generate false, the instructions only. It must not
    # cost a generation on a pool account; the answer has an id and no output.
    with open_socket(proxy) as ws:
        events = turn(ws, body(input=[DEVELOPER], generate=False))
    assert events[-1]["type"] == "response.completed", events
    assert events[-1]["response"]["id"] and events[-1]["response"]["output"] == []
    assert not fake.requests


def test_previous_response_id_on_the_socket_is_expanded_into_the_whole_input(proxy, fake):
    # After an answer, Codex sends only the new items and the previous response's id: the
    # upstream (stateless, store=false) must get the whole conversation.
    acct = proxy.fake_accounts[0]
    fake.script(acct, B.tool_call(name="exec_command", arguments={"cmd": "echo hi"}), B.ok(text="done"))
    with open_socket(proxy) as ws:
        first = turn(ws, body(input=[DEVELOPER, user("run echo")]))
        call = next(e["item"] for e in first if e["type"] == "response.output_item.done")
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "hi"}
        second = turn(ws, body(input=[output], previous_response_id=first[-1]["response"]["id"]))
    assert text_of(second) == "done"
    one, two = (rec.json for rec in fake.requests)
    assert one["input"] == [DEVELOPER, user("run echo")]
    assert "previous_response_id" not in two
    assert [i["type"] for i in two["input"]] == ["message", "message", "function_call", "function_call_output"]
    assert two["input"][2]["call_id"] == call["call_id"] and two["input"][3] == output


def test_an_unknown_previous_response_id_is_a_clear_error(proxy, fake):
    with open_socket(proxy) as ws:
        status, error = error_of(turn(ws, body(previous_response_id="resp_unknown")))
        assert status == 400 and "resp_unknown" in json.dumps(error)
    assert not fake.requests


def test_remote_compaction_goes_through_the_socket_with_its_beta_header(proxy, fake):
    # Codex 0.169's remote compaction: a turn whose last item is a compaction_trigger, answered
    # with one compaction item (passed through intact).
    fake.set_default(proxy.fake_accounts[0], B.ok())
    with open_socket(proxy, headers={"x-codex-beta-features": "remote_compaction_v2"}) as ws:
        events = turn(ws, body(input=[user("long history"), {"type": "compaction_trigger"}]))
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in done] == ["compaction"] and done[0]["encrypted_content"].startswith("enc_compaction_")
    seen = fake.requests[-1]
    assert seen.json["input"][-1] == {"type": "compaction_trigger"}
    assert seen.headers.get("x-codex-beta-features") == "remote_compaction_v2"


def test_an_event_split_across_upstream_chunks_arrives_whole(proxy, fake):
    # TCP and TLS deliver an event in pieces at any byte: each message is one whole event.
    fake.set_default(proxy.fake_accounts[0], B.ok(text="Hello there", split=0.05))
    with open_socket(proxy) as ws:
        events = turn(ws, body())
    assert [e["type"] for e in events][0] == "response.created" and events[-1]["type"] == "response.completed"
    assert text_of(events) == "Hello there"
    assert all(isinstance(e, dict) and e.get("type") for e in events)


# --- a third-party transform on both transports ----------------------------------------------
REDACTING_PLUGIN = '''
from codexproxy import hookimpl
from codexproxy.sse import new_event


class Redact:
    """Written against the events interface only: no SSE, no sockets."""

    streams = True

    def start(self, status, headers):
        return status, headers

    def feed(self, events):
        out = []
        for ev in events:
            data = ev.json()
            if isinstance(data, dict) and data.get("type") == "response.output_text.delta":
                out.append(new_event(ev.event, {**data, "delta": data["delta"].replace("secret", "[redacted]")}))
            else:
                out.append(ev)
        return out

    def finish(self, error):
        return [new_event("codexproxy.redacted", {"type": "codexproxy.redacted"})] if error is None else []


@hookimpl(tryfirst=True)
def codexproxy_response_transform(app, exchange):
    return Redact()
'''


def test_a_plugins_transform_works_unchanged_over_http_and_the_socket(make_proxy, fake, tmp_path):
    """A transform yields events; each transport frames them: SSE on HTTP, one message per
    event on the socket. The same plugin, unchanged, on both."""
    plugin = tmp_path / "redact.py"
    plugin.write_text(REDACTING_PLUGIN)
    proxy = make_proxy({"plugin_paths": [str(plugin)]})
    fake.set_default(proxy.fake_accounts[0], B.ok(text="the secret word", deltas=1))

    r = httpx.post(proxy.url + "/v1/responses", json={k: v for k, v in body("hi").items() if k != "type"},
                   headers={**proxy.auth, "content-type": "application/json"}, timeout=20)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f.strip()]
    assert all(f.startswith("event: ") and "\ndata: {" in f for f in frames), frames[:3]  # SSE frames
    http_events = [json.loads(f.split("\ndata: ", 1)[1]) for f in frames]
    assert text_of(http_events) == "the [redacted] word"
    assert [e["type"] for e in http_events][-2:] == ["response.completed", "codexproxy.redacted"]

    with open_socket(proxy) as ws:
        events = turn(ws, body("hi"))  # up to response.completed
        extra = json.loads(ws.recv(timeout=10))  # the transform's own last event: a message of its own
    assert text_of(events) == "the [redacted] word"
    assert extra == {"type": "codexproxy.redacted"}
    assert [e["type"] for e in events] == [e["type"] for e in http_events][:-1]


# --- the reliability corpus, over the socket ---------------------------------------------------
def _corpus_messages() -> list[tuple[str, str | bytes]]:
    from tests.test_reliability import BAD_BODIES, SURROGATE_BODIES, WRONG_TYPES

    out: list[tuple[str, str | bytes]] = []
    for name, raw in BAD_BODIES.items():
        try:
            out.append((name, raw.decode("utf-8")))  # a text message when it can be one
        except UnicodeDecodeError:
            out.append((name, raw))  # else binary, as a careless client would send it
    for route in ("/v1/responses", "/backend-api/codex/responses"):
        for body_ in WRONG_TYPES[route] + SURROGATE_BODIES[route]:
            out.append((f"{route} {json.dumps(body_)[:60]}", json.dumps({"type": "response.create", **body_})))
    return out


def test_the_reliability_corpus_over_the_socket_gets_error_events_never_a_5xx(proxy, fake):
    """Every malformed, wrongly typed or unencodable turn: a 4xx error event naming it, no
    traceback, no upstream request, and the socket still serves the next turn."""
    fake.set_default(proxy.fake_accounts[0], B.ok(text="still here"))
    with open_socket(proxy) as ws:
        for name, message in _corpus_messages():
            events = turn(ws, message)
            status, error = error_of(events)
            assert status is not None and 400 <= status < 500, (name, status, error)
            assert error.get("message") and "Traceback" not in json.dumps(error), (name, error)
        assert text_of(turn(ws, body())) == "still here"
    assert len(fake.requests) == 1
