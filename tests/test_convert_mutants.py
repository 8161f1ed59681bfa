"""Converter behaviour that a mutmut run (scripts/mutate, bench/MUTATION.md) changed without any
test noticing: the Responses stream's synthesised `response.failed`, the SDK clients' filled
`response.completed`, the Response kept for `previous_response_id`, the legacy Completions
chunks, and the `user` -> `prompt_cache_key` mapping. Each test pins the exact output of a pure
converter, driven as the proxy drives it (pipeline.run_transform: parse, feed, finish, frame)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codexproxy.exchange import GatewayError
from codexproxy.pipeline import run_transform as drive
from codexproxy.sse import SSEParser, encode
from codexproxy_plugins.adapter.completions import CompletionsAggregate, CompletionsStream, completions_to_chat
from codexproxy_plugins.adapter.responses import ResponsesStream, normalize_responses_request, user_cache_key

GOLDEN = Path(__file__).parent / "golden"
CUT = GatewayError(502, "upstream stream cut", type="server_error", code="stream_cut")


def golden(name: str) -> bytes:
    return (GOLDEN / f"{name}.sse").read_bytes()


def sse(*events: tuple[str, dict]) -> bytes:
    """Upstream bytes for (type, fields) events, each named and typed as the backend sends them."""
    return b"".join(encode(kind, {"type": kind, **fields}) for kind, fields in events)


def created(rid: str = "resp_m1") -> tuple[str, dict]:
    return "response.created", {"response": {"id": rid, "object": "response", "status": "in_progress", "output": []}}


def item_done(item_id: str, index: int | None) -> tuple[str, dict]:
    fields: dict = {"item": {"id": item_id, "type": "message", "role": "assistant",
                             "content": [{"type": "output_text", "text": item_id}]}}
    if index is not None:
        fields["output_index"] = index
    return "response.output_item.done", fields


def completed(output: list, kind: str = "response.completed", rid: str = "resp_m1") -> tuple[str, dict]:
    return kind, {"response": {"id": rid, "object": "response", "status": kind.split(".")[1], "output": output,
                               "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}}


def events_of(raw: bytes) -> list:
    return SSEParser().feed(raw)


# --- ResponsesStream: the response.failed a broken stream ends with ----------------------------

def test_a_cut_stream_ends_with_exactly_this_response_failed():
    transform = ResponsesStream(drop_codex_events=True)
    out = events_of(drive(transform, [sse(created("resp_m1"))], CUT))
    assert [e.event for e in out] == ["response.created", "response.failed"]
    assert json.loads(out[-1].data) == {
        "type": "response.failed",
        "response": {"id": "resp_m1", "object": "response", "status": "failed",
                     "error": {"code": "stream_cut", "message": "upstream stream cut"}, "output": []}}
    assert transform.final is None  # nothing finished: nothing to keep for previous_response_id


def test_an_error_without_a_code_is_a_server_error():
    out = events_of(drive(ResponsesStream(True), [sse(created())], GatewayError(502, "upstream went away")))
    assert json.loads(out[-1].data)["response"]["error"] == {"code": "server_error", "message": "upstream went away"}


def test_the_failed_event_carries_the_created_events_id_and_none_before_it():
    # A later event's `response` (here one without an id) does not replace the created one's id.
    in_progress = ("response.in_progress", {"response": {"status": "in_progress"}})
    out = events_of(drive(ResponsesStream(False), [sse(created("resp_first"), in_progress)], CUT))
    assert json.loads(out[-1].data)["response"]["id"] == "resp_first"
    out = events_of(drive(ResponsesStream(False), [b""], CUT))  # cut before response.created
    assert json.loads(out[-1].data)["response"]["id"] is None


def test_finish_ends_the_stream_once():
    transform = ResponsesStream(drop_codex_events=False)
    assert transform.final is None
    assert [e.event for e in transform.finish(CUT)] == ["response.failed"]
    assert transform.finish(CUT) == []
    # and a terminal event arriving after it is not forwarded either
    assert transform.feed(events_of(sse(completed([])))) == []


# --- ResponsesStream: what is kept for previous_response_id --------------------------------------

@pytest.mark.parametrize("kind", ["response.completed", "response.incomplete"])
def test_a_finished_response_is_kept(kind):
    transform = ResponsesStream(drop_codex_events=False)
    drive(transform, [sse(created(), completed([{"id": "x"}], kind))])
    assert transform.final == completed([{"id": "x"}], kind)[1]["response"]


def test_a_failed_response_is_not_kept():
    transform = ResponsesStream(drop_codex_events=True)
    failed = ("response.failed", {"response": {"id": "resp_m1", "status": "failed", "output": [],
                                               "error": {"code": "server_is_overloaded", "message": "busy"}}})
    out = events_of(drive(transform, [sse(created(), item_done("msg_1", 0), failed)]))
    assert transform.final is None
    assert out[-1].event == "response.failed"


# --- ResponsesStream: SDK clients' response.completed output ------------------------------------

def test_sdk_stream_fills_the_output_in_output_index_order_under_the_events_name():
    transform = ResponsesStream(drop_codex_events=True)
    raw = drive(transform, [sse(created(), item_done("msg_b", 1), item_done("msg_a", 0), completed([]))])
    assert raw.endswith(b"\n\n") and b"\nevent: response.completed\n" in raw  # still a named event
    last = events_of(raw)[-1]
    assert last.event == "response.completed"
    assert [item["id"] for item in json.loads(last.data)["response"]["output"]] == ["msg_a", "msg_b"]
    assert [item["id"] for item in transform.final["output"]] == ["msg_a", "msg_b"]


def test_items_without_an_output_index_are_kept_in_arrival_order():
    transform = ResponsesStream(drop_codex_events=True)
    last = events_of(drive(transform, [sse(created(), item_done("first", None), item_done("second", None),
                                           completed([]))]))[-1]
    assert [item["id"] for item in json.loads(last.data)["response"]["output"]] == ["first", "second"]


def test_sdk_stream_keeps_an_output_the_upstream_already_filled():
    upstream_output = [{"id": "from_upstream", "type": "message", "role": "assistant", "content": []}]
    transform = ResponsesStream(drop_codex_events=True)
    last = events_of(drive(transform, [sse(created(), item_done("msg_a", 0), completed(upstream_output))]))[-1]
    assert json.loads(last.data)["response"]["output"] == upstream_output


# --- legacy Completions ------------------------------------------------------------------------

def completions_stream(name: str) -> bytes:
    return drive(CompletionsStream("gpt-5.5", include_usage=True, created=5, completion_id="cmpl-1"), [golden(name)])


def test_completions_chunks_are_data_only_and_name_the_model():
    raw = completions_stream("reasoning")
    lines = [line for line in raw.split(b"\n") if line]
    assert lines and all(line.startswith(b"data: ") for line in lines), lines[:3]  # no `event:` line
    chunks = [json.loads(e.data) for e in events_of(raw) if e.data != "[DONE]"]
    assert chunks and all(c["model"] == "gpt-5.5" for c in chunks)


def test_completions_usage_chunk_is_exactly_this():
    chunks = [json.loads(e.data) for e in events_of(completions_stream("reasoning")) if e.data != "[DONE]"]
    assert chunks[-1] == {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "gpt-5.5",
                          "choices": [], "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}}


def test_a_completions_answer_of_tool_calls_only_has_empty_text():
    # Tool calls have no legacy form: the chat message's content is None, the text is "".
    body = json.loads(drive(CompletionsAggregate("gpt-5.5", created=5, completion_id="cmpl-1"), [golden("parallel_tools")]))
    assert body["choices"][0]["text"] == ""


def test_completions_fields_at_their_usual_value_are_accepted():
    chat = completions_to_chat({"model": "m", "prompt": "x", "n": 1, "best_of": 1, "echo": False, "logprobs": 0})
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


# --- Responses `user` -> prompt_cache_key ---------------------------------------------------------

def test_user_becomes_a_hashed_prompt_cache_key():
    out = normalize_responses_request({"model": "m", "input": "hi", "user": "alice@example.com"})
    assert out["prompt_cache_key"] == "user-ff8d9819fc0e12bf0d24892e45987e24"  # sha256, 32 hex digits
    assert "user" not in out


def test_the_clients_own_prompt_cache_key_wins_over_user():
    out = normalize_responses_request({"model": "m", "input": "hi", "user": "alice", "prompt_cache_key": "mine"})
    assert out["prompt_cache_key"] == "mine" and "user" not in out


def test_a_user_with_a_lone_surrogate_still_gets_a_key():
    # The client's JSON may carry "\ud800": the key is still derived, not a UnicodeEncodeError (500).
    assert user_cache_key("\ud800") == "user-91a681b998555fb475479817b126c94e"
