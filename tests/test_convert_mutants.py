"""Converter behaviour that a mutmut run (scripts/mutate, bench/MUTATION.md) changed without any
test noticing: the Responses stream's synthesised `response.failed`, the SDK clients' filled
`response.completed`, the Response kept for `previous_response_id`, the legacy Completions
chunks, the `user` -> `prompt_cache_key` mapping, and the chat and Anthropic streams and
aggregates on upstream streams with gaps (exact output, pinned). Each test pins the exact output of a pure
converter, driven as the proxy drives it (pipeline.run_transform: parse, feed, finish, frame)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codexproxy.exchange import GatewayError
from codexproxy.pipeline import run_transform as drive
from codexproxy.sse import SSEParser, encode
from codexproxy_plugins.adapter.anthropic_response import AnthropicAggregate, AnthropicStream
from codexproxy_plugins.adapter.chat import ChatAggregate, ChatStream
from codexproxy_plugins.adapter.completions import CompletionsAggregate, CompletionsStream, completions_to_chat
from codexproxy_plugins.adapter.responses import (ResponsesAggregate, ResponsesStream, normalize_responses_request,
                                                  user_cache_key)

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


# --- the streams to other protocols (common.EventStream, ChatStream, AnthropicStream) and the
# --- aggregates (common.ResponseAccumulator): exact output for upstream streams with gaps
# Three upstream streams, each reviewed by hand once and pinned: GAPS (text and tool calls that
# arrive only whole, in `.done` events, or never announced), TEXTY (reasoning paragraphs, a
# signature, empty and non-string deltas, a refusal, a second terminal event) and UNFINISHED
# (items added and streamed but never done: the aggregates complete them from their deltas).

def msg(i, text=None):
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {"id": f"msg_{i}", "type": "message", "role": "assistant", "content": content}


GAPS = sse(
    ("response.created", {"response": {"id": "resp_g", "status": "in_progress", "output": []}}),
    ("codex.rate_limits", {"rate_limits": {}}),
    # text that arrives only whole, in the .done events: passed on once
    ("response.output_item.added", {"output_index": 0, "item": msg(0)}),
    ("response.output_text.done", {"output_index": 0, "content_index": 0, "text": "whole"}),
    ("response.output_item.done", {"output_index": 0, "item": msg(0, "whole")}),
    # a function call never announced: it starts with its item.done
    ("response.function_call_arguments.done", {"output_index": 1, "arguments": "{\"x\":1}"}),
    ("response.output_item.done", {"output_index": 1, "item": {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f1", "arguments": "{\"x\":1}"}}),
    # a custom tool call streamed in deltas, then its .done and item.done repeat it
    ("response.output_item.added", {"output_index": 2, "item": {"id": "ct_2", "type": "custom_tool_call", "call_id": "call_2", "name": "patch", "input": ""}}),
    ("response.custom_tool_call_input.delta", {"output_index": 2, "delta": "a\"b"}),
    ("response.custom_tool_call_input.delta", {"output_index": 2, "delta": "cd"}),
    ("response.custom_tool_call_input.done", {"output_index": 2, "input": "a\"bcd"}),
    ("response.output_item.done", {"output_index": 2, "item": {"id": "ct_2", "type": "custom_tool_call", "call_id": "call_2", "name": "patch", "input": "a\"bcd"}}),
    # a function call whose added item already holds the start of its arguments
    ("response.output_item.added", {"output_index": 3, "item": {"id": "fc_3", "type": "function_call", "call_id": "call_3", "name": "f3", "arguments": "{\"a\""}}),
    ("response.function_call_arguments.delta", {"output_index": 3, "delta": ":1"}),
    ("response.function_call_arguments.done", {"output_index": 3, "arguments": "{\"a\":1}"}),
    ("response.output_item.done", {"output_index": 3, "item": {"id": "fc_3", "type": "function_call", "call_id": "call_3", "name": "f3", "arguments": "{\"a\":1}"}}),
    # a message that arrives only as its item.done
    ("response.output_item.done", {"output_index": 4, "item": msg(4, "late")}),
    ("response.incomplete", {"response": {"id": "resp_g", "status": "incomplete", "output": [],
                                          "incomplete_details": {"reason": "max_output_tokens"},
                                          "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5}}}),
)

TEXTY = sse(
    ("response.created", {"response": {"id": "resp_t", "status": "in_progress", "output": []}}),
    ("response.output_item.added", {"output_index": 0, "item": {"id": "rs_0", "type": "reasoning", "summary": []}}),
    ("response.reasoning_summary_part.added", {"output_index": 0, "summary_index": 0}),
    ("response.reasoning_summary_text.delta", {"output_index": 0, "delta": "think"}),
    ("response.reasoning_summary_part.added", {"output_index": 0, "summary_index": 1}),
    ("response.reasoning_summary_text.delta", {"output_index": 0, "delta": "more"}),
    ("response.reasoning_summary_text.delta", {"output_index": 0, "delta": 7}),
    ("response.output_item.done", {"output_index": 0, "item": {"id": "rs_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}, {"type": "summary_text", "text": "more"}], "encrypted_content": "ENC"}}),
    ("response.output_item.added", {"output_index": 1, "item": msg(1)}),
    ("response.output_text.delta", {"output_index": 1, "delta": "Hel"}),
    ("response.output_text.delta", {"output_index": 1, "delta": ""}),
    ("response.output_text.delta", {"output_index": 1, "delta": "lo"}),
    ("response.output_text.done", {"output_index": 1, "text": "Hello"}),
    ("response.refusal.delta", {"output_index": 1, "delta": "no"}),
    ("response.output_item.done", {"output_index": 1, "item": msg(1, "Hello")}),
    ("response.completed", {"response": {"id": "resp_t", "status": "completed", "output": [],
                                         "usage": {"input_tokens": 8, "output_tokens": 3, "total_tokens": 11}}}),
    ("response.completed", {"response": {"id": "resp_t", "status": "completed", "output": []}}),
)

# Items added and streamed but never finished: the aggregates complete them from the deltas.
UNFINISHED = sse(
    ("response.created", {"response": {"id": "resp_u", "status": "in_progress"}}),
    ("codex.rate_limits", {"response": {"id": "not_this"}}),
    ("response.output_item.added", {"output_index": 0, "item": {"id": "rs_0", "type": "reasoning", "summary": []}}),
    ("response.reasoning_summary_text.delta", {"output_index": 0, "delta": "pondering"}),
    ("response.output_item.added", {"output_index": 1, "item": msg(1)}),
    ("response.content_part.added", {"output_index": 1, "content_index": 0, "part": {"type": "output_text", "text": ""}}),
    ("response.output_text.delta", {"output_index": 1, "delta": "Par"}),
    ("response.output_text.delta", {"output_index": 1, "delta": "tial"}),
    ("response.refusal.delta", {"output_index": 1, "delta": "but no"}),
    ("response.output_item.added", {"output_index": 2, "item": msg(2)}),
    ("response.refusal.delta", {"output_index": 2, "delta": "refused"}),
    ("response.output_item.added", {"output_index": 3, "item": {"id": "fc_3", "type": "function_call", "call_id": "call_3", "name": "f", "arguments": ""}}),
    ("response.function_call_arguments.delta", {"output_index": 3, "delta": "{\"q\":"}),
    ("response.function_call_arguments.delta", {"output_index": 3, "delta": "2}"}),
    ("response.output_item.added", {"output_index": 4, "item": {"id": "ct_4", "type": "custom_tool_call", "call_id": "call_4", "name": "patch", "input": ""}}),
    ("response.custom_tool_call_input.delta", {"output_index": 4, "delta": "*** Begin"}),
    ("response.output_item.added", {"output_index": 5, "item": {"id": "fc_5", "type": "function_call", "call_id": "call_5", "name": "g", "arguments": ""}}),
    ("response.output_item.done", {"output_index": 5, "item": {"id": "fc_5", "type": "function_call", "call_id": "call_5", "name": "g", "arguments": "{}"}}),
    ("response.function_call_arguments.delta", {"output_index": 5, "delta": "late"}),
    ("response.completed", {"response": {"id": "resp_u", "status": "completed", "output": [],
                                         "usage": {"input_tokens": 8, "output_tokens": 3}}}),
)


def chat_deltas(raw: bytes) -> list:
    """(delta, finish_reason) per chunk, the usage chunk, then [DONE]."""
    out: list = []
    for e in events_of(drive(ChatStream("m", include_usage=True, created=1, completion_id="c"), [raw])):
        d = e.data if e.data == "[DONE]" else json.loads(e.data)
        if isinstance(d, str):
            out.append(d)
        elif d.get("choices"):
            assert (d["id"], d["object"], d["created"], d["model"]) == ("c", "chat.completion.chunk", 1, "m")
            out.append((d["choices"][0]["delta"], d["choices"][0]["finish_reason"]))
        else:
            out.append({"usage": d["usage"]})
    return out


def anthropic_events(raw: bytes) -> list:
    """(event name, payload without its `type`, which must equal the name) per event."""
    out = []
    for e in events_of(drive(AnthropicStream("m", message_id="msg"), [raw])):
        payload = json.loads(e.data)
        assert payload.pop("type") == e.event
        out.append((e.event, payload))
    return out


CHAT_GAPS = [({'role': 'assistant', 'content': ''}, None),
 ({'content': 'whole'}, None),
 ({'tool_calls': [{'index': 0,
                   'id': 'call_1',
                   'type': 'function',
                   'function': {'name': 'f1', 'arguments': ''}}]},
  None),
 ({'tool_calls': [{'index': 0, 'function': {'arguments': '{"x":1}'}}]}, None),
 ({'tool_calls': [{'index': 1, 'id': 'call_2', 'type': 'custom', 'custom': {'name': 'patch', 'input': ''}}]},
  None),
 ({'tool_calls': [{'index': 1, 'custom': {'input': 'a"b'}}]}, None),
 ({'tool_calls': [{'index': 1, 'custom': {'input': 'cd'}}]}, None),
 ({'tool_calls': [{'index': 2,
                   'id': 'call_3',
                   'type': 'function',
                   'function': {'name': 'f3', 'arguments': ''}}]},
  None),
 ({'tool_calls': [{'index': 2, 'function': {'arguments': '{"a"'}}]}, None),
 ({'tool_calls': [{'index': 2, 'function': {'arguments': ':1'}}]}, None),
 ({'tool_calls': [{'index': 2, 'function': {'arguments': '}'}}]}, None),
 ({'content': 'late'}, None),
 ({}, 'length'),
 {'usage': {'prompt_tokens': 10,
            'completion_tokens': 5,
            'total_tokens': 15,
            'prompt_tokens_details': {'cached_tokens': 4},
            'completion_tokens_details': {'reasoning_tokens': 0}}},
 '[DONE]']

ANTHROPIC_GAPS = [('message_start',
  {'message': {'id': 'msg',
               'type': 'message',
               'role': 'assistant',
               'model': 'm',
               'content': [],
               'stop_reason': None,
               'stop_sequence': None,
               'usage': {'input_tokens': 0, 'output_tokens': 0}}}),
 ('content_block_start', {'index': 0, 'content_block': {'type': 'text', 'text': ''}}),
 ('content_block_delta', {'index': 0, 'delta': {'type': 'text_delta', 'text': 'whole'}}),
 ('content_block_stop', {'index': 0}),
 ('content_block_start',
  {'index': 1, 'content_block': {'type': 'tool_use', 'id': 'call_1', 'name': 'f1', 'input': {}}}),
 ('content_block_delta', {'index': 1, 'delta': {'type': 'input_json_delta', 'partial_json': '{"x":1}'}}),
 ('content_block_stop', {'index': 1}),
 ('content_block_start',
  {'index': 2, 'content_block': {'type': 'tool_use', 'id': 'call_2', 'name': 'patch', 'input': {}}}),
 ('content_block_delta', {'index': 2, 'delta': {'type': 'input_json_delta', 'partial_json': '{"input":"'}}),
 ('content_block_delta', {'index': 2, 'delta': {'type': 'input_json_delta', 'partial_json': 'a\\"b'}}),
 ('content_block_delta', {'index': 2, 'delta': {'type': 'input_json_delta', 'partial_json': 'cd'}}),
 ('content_block_delta', {'index': 2, 'delta': {'type': 'input_json_delta', 'partial_json': '"}'}}),
 ('content_block_stop', {'index': 2}),
 ('content_block_start',
  {'index': 3, 'content_block': {'type': 'tool_use', 'id': 'call_3', 'name': 'f3', 'input': {}}}),
 ('content_block_delta', {'index': 3, 'delta': {'type': 'input_json_delta', 'partial_json': '{"a"'}}),
 ('content_block_delta', {'index': 3, 'delta': {'type': 'input_json_delta', 'partial_json': ':1'}}),
 ('content_block_delta', {'index': 3, 'delta': {'type': 'input_json_delta', 'partial_json': '}'}}),
 ('content_block_stop', {'index': 3}),
 ('content_block_start', {'index': 4, 'content_block': {'type': 'text', 'text': ''}}),
 ('content_block_delta', {'index': 4, 'delta': {'type': 'text_delta', 'text': 'late'}}),
 ('content_block_stop', {'index': 4}),
 ('message_delta',
  {'delta': {'stop_reason': 'max_tokens', 'stop_sequence': None},
   'usage': {'input_tokens': 6, 'output_tokens': 5, 'cache_read_input_tokens': 4}}),
 ('message_stop', {})]

CHAT_TEXTY = [({'role': 'assistant', 'content': ''}, None),
 ({'reasoning_content': 'think'}, None),
 ({'reasoning_content': '\n\n'}, None),
 ({'reasoning_content': 'more'}, None),
 ({'reasoning_details': [{'type': 'reasoning.encrypted',
                          'data': 'codexproxy.reasoning.v1:ENC',
                          'format': 'openai-responses-v1',
                          'index': 0}]},
  None),
 ({'content': 'Hel'}, None),
 ({'content': 'lo'}, None),
 ({'refusal': 'no'}, None),
 ({}, 'stop'),
 {'usage': {'prompt_tokens': 8,
            'completion_tokens': 3,
            'total_tokens': 11,
            'prompt_tokens_details': {'cached_tokens': 0},
            'completion_tokens_details': {'reasoning_tokens': 0}}},
 '[DONE]']

ANTHROPIC_TEXTY = [('message_start',
  {'message': {'id': 'msg',
               'type': 'message',
               'role': 'assistant',
               'model': 'm',
               'content': [],
               'stop_reason': None,
               'stop_sequence': None,
               'usage': {'input_tokens': 0, 'output_tokens': 0}}}),
 ('content_block_start',
  {'index': 0, 'content_block': {'type': 'thinking', 'thinking': '', 'signature': ''}}),
 ('content_block_delta', {'index': 0, 'delta': {'type': 'thinking_delta', 'thinking': 'think'}}),
 ('content_block_delta', {'index': 0, 'delta': {'type': 'thinking_delta', 'thinking': '\n\n'}}),
 ('content_block_delta', {'index': 0, 'delta': {'type': 'thinking_delta', 'thinking': 'more'}}),
 ('content_block_delta',
  {'index': 0, 'delta': {'type': 'signature_delta', 'signature': 'codexproxy.reasoning.v1:ENC'}}),
 ('content_block_stop', {'index': 0}),
 ('content_block_start', {'index': 1, 'content_block': {'type': 'text', 'text': ''}}),
 ('content_block_delta', {'index': 1, 'delta': {'type': 'text_delta', 'text': 'Hel'}}),
 ('content_block_delta', {'index': 1, 'delta': {'type': 'text_delta', 'text': 'lo'}}),
 ('content_block_stop', {'index': 1}),
 ('message_delta',
  {'delta': {'stop_reason': 'end_turn', 'stop_sequence': None},
   'usage': {'input_tokens': 8, 'output_tokens': 3, 'cache_read_input_tokens': 0}}),
 ('message_stop', {})]

CHAT_AGG_UNFINISHED = {'role': 'assistant',
 'content': 'Partial',
 'refusal': 'but norefused',
 'reasoning_content': 'pondering',
 'tool_calls': [{'id': 'call_3', 'type': 'function', 'function': {'name': 'f', 'arguments': '{"q":2}'}},
                {'id': 'call_4', 'type': 'custom', 'custom': {'name': 'patch', 'input': '*** Begin'}},
                {'id': 'call_5', 'type': 'function', 'function': {'name': 'g', 'arguments': '{}'}}]}

ANTHROPIC_AGG_UNFINISHED = [{'type': 'thinking', 'thinking': 'pondering', 'signature': ''},
 {'type': 'text', 'text': 'Partial'},
 {'type': 'tool_use', 'id': 'call_3', 'name': 'f', 'input': {'q': 2}},
 {'type': 'tool_use', 'id': 'call_4', 'name': 'patch', 'input': {'input': '*** Begin'}},
 {'type': 'tool_use', 'id': 'call_5', 'name': 'g', 'input': {}}]

RESPONSES_AGG_UNFINISHED = {'id': 'resp_u',
 'status': 'completed',
 'output': [{'id': 'rs_0', 'type': 'reasoning', 'summary': [{'type': 'summary_text', 'text': 'pondering'}]},
            {'id': 'msg_1',
             'type': 'message',
             'role': 'assistant',
             'content': [{'type': 'output_text', 'text': 'Partial', 'annotations': []},
                         {'type': 'refusal', 'refusal': 'but no'}]},
            {'id': 'msg_2',
             'type': 'message',
             'role': 'assistant',
             'content': [{'type': 'output_text', 'text': '', 'annotations': []},
                         {'type': 'refusal', 'refusal': 'refused'}]},
            {'id': 'fc_3', 'type': 'function_call', 'call_id': 'call_3', 'name': 'f', 'arguments': '{"q":2}'},
            {'id': 'ct_4',
             'type': 'custom_tool_call',
             'call_id': 'call_4',
             'name': 'patch',
             'input': '*** Begin'},
            {'id': 'fc_5', 'type': 'function_call', 'call_id': 'call_5', 'name': 'g', 'arguments': '{}'}],
 'usage': {'input_tokens': 8, 'output_tokens': 3},
 'object': 'response'}

ANTHROPIC_AGG_GAPS = {'id': 'msg',
 'type': 'message',
 'role': 'assistant',
 'model': 'm',
 'content': [{'type': 'text', 'text': 'whole'},
             {'type': 'tool_use', 'id': 'call_1', 'name': 'f1', 'input': {'x': 1}},
             {'type': 'tool_use', 'id': 'call_2', 'name': 'patch', 'input': {'input': 'a"bcd'}},
             {'type': 'tool_use', 'id': 'call_3', 'name': 'f3', 'input': {'a': 1}},
             {'type': 'text', 'text': 'late'}],
 'stop_reason': 'max_tokens',
 'stop_sequence': None,
 'usage': {'input_tokens': 6, 'output_tokens': 5, 'cache_read_input_tokens': 4}}


def as_lists(value):
    """The pinned values spell chat deltas as tuples; JSON has lists."""
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("name", ["GAPS", "TEXTY"])
def test_chat_stream_exact(name):
    assert as_lists(chat_deltas(globals()[name])) == as_lists(globals()[f"CHAT_{name}"])


@pytest.mark.parametrize("name", ["GAPS", "TEXTY"])
def test_anthropic_stream_exact(name):
    assert as_lists(anthropic_events(globals()[name])) == as_lists(globals()[f"ANTHROPIC_{name}"])


def test_aggregates_complete_unfinished_items_from_their_deltas():
    chat = json.loads(drive(ChatAggregate("m", created=1, completion_id="c"), [UNFINISHED]))
    assert chat["choices"][0]["message"] == CHAT_AGG_UNFINISHED
    assert json.loads(drive(AnthropicAggregate("m", message_id="msg"), [UNFINISHED]))["content"] == ANTHROPIC_AGG_UNFINISHED
    assert json.loads(drive(ResponsesAggregate(), [UNFINISHED])) == RESPONSES_AGG_UNFINISHED


def test_anthropic_aggregate_exact():
    assert json.loads(drive(AnthropicAggregate("m", message_id="msg"), [GAPS])) == ANTHROPIC_AGG_GAPS


def test_the_stream_starts_as_soon_as_the_upstream_has_created_the_response():
    # The client sees its message start (or role chunk) before any content exists.
    start = sse(("response.created", {"response": {"id": "r", "status": "in_progress", "output": []}}))
    assert [e.event for e in AnthropicStream("m", message_id="msg").feed(events_of(start))] == ["message_start"]
    chunk = ChatStream("m", created=1, completion_id="c").feed(events_of(start))
    assert [json.loads(e.data)["choices"][0]["delta"] for e in chunk] == [{"role": "assistant", "content": ""}]


@pytest.mark.parametrize("details, stop", [({"reason": "content_filter"}, "refusal"),
                                           ({"reason": "max_output_tokens"}, "max_tokens"), (None, "max_tokens")])
def test_anthropic_stop_reason_of_an_incomplete_answer(details, stop):
    raw = sse(("response.incomplete", {"response": {"id": "r", "status": "incomplete", "output": [],
                                                    **({"incomplete_details": details} if details else {})}}))
    streamed = anthropic_events(raw)
    assert streamed[-2][1]["delta"]["stop_reason"] == stop
    assert json.loads(drive(AnthropicAggregate("m", message_id="msg"), [raw]))["stop_reason"] == stop


def test_anthropic_aggregate_of_an_empty_answer_has_one_empty_text_block():
    raw = sse(("response.completed", {"response": {"id": "r", "status": "completed", "output": [msg(0, "")]}}))
    body = json.loads(drive(AnthropicAggregate("claude-x", message_id="msg"), [raw]))
    assert body["content"] == [{"type": "text", "text": ""}] and body["model"] == "claude-x"


@pytest.mark.parametrize("item, block", [
    ({"type": "function_call", "id": "fc_1", "arguments": "not json"},
     {"type": "tool_use", "id": "fc_1", "name": "", "input": {"_raw_arguments": "not json"}}),
    ({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "[1, 2]"},
     {"type": "tool_use", "id": "call_1", "name": "f", "input": {"_raw_arguments": "[1, 2]"}}),
    ({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""},
     {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}),
    ({"type": "custom_tool_call", "call_id": "call_2", "name": "patch", "input": None},
     {"type": "tool_use", "id": "call_2", "name": "patch", "input": {"input": ""}}),
    ({"type": "custom_tool_call", "call_id": "call_2", "name": "patch", "input": "{\"not\": \"parsed\"}"},
     {"type": "tool_use", "id": "call_2", "name": "patch", "input": {"input": "{\"not\": \"parsed\"}"}}),
])
def test_anthropic_aggregate_tool_use_blocks(item, block):
    raw = sse(("response.completed", {"response": {"id": "r", "status": "completed", "output": [item]}}))
    assert json.loads(drive(AnthropicAggregate("m", message_id="msg"), [raw]))["content"] == [block]


def test_anthropic_stream_tool_block_falls_back_to_the_item_id_and_keeps_non_ascii_input():
    raw = sse(("response.output_item.added", {"output_index": 0, "item": {"id": "ct_0", "type": "custom_tool_call", "input": ""}}),
              ("response.custom_tool_call_input.delta", {"output_index": 0, "delta": "é\n"}))
    evs = anthropic_events(raw)
    assert evs[1] == ("content_block_start", {"index": 0, "content_block": {"type": "tool_use", "id": "ct_0", "name": "", "input": {}}})
    assert evs[3] == ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": "é\\n"}})


def test_reasoning_without_a_summary_reads_its_raw_text():
    item = {"id": "rs_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": ""}],
            "content": [{"type": "reasoning_text", "text": "raw"}, {"type": "reasoning_text"}, {"type": "reasoning_text", "text": "more"}]}
    raw = sse(("response.completed", {"response": {"id": "r", "status": "completed", "output": [item, msg(1, "ok")]}}))
    chat = json.loads(drive(ChatAggregate("m", created=1, completion_id="c"), [raw]))
    assert chat["choices"][0]["message"]["reasoning_content"] == "raw\n\nmore"


def test_message_text_is_its_output_text_parts_only():
    item = {"type": "message", "content": [{"type": "output_text", "text": "a"}, {"type": "output_text"},
                                           {"type": "refusal", "refusal": "r", "text": "not this"}, "junk",
                                           {"type": "output_text", "text": "b"}]}
    raw = sse(("response.completed", {"response": {"id": "r", "status": "completed", "output": [item]}}))
    chat = json.loads(drive(ChatAggregate("m", created=1, completion_id="c"), [raw]))
    assert chat["choices"][0]["message"]["content"] == "ab"


def test_an_aggregate_answers_with_non_ascii_text_as_utf8_not_escapes():
    raw = sse(("response.completed", {"response": {"id": "r", "status": "completed", "output": [msg(0, "héllo ✓")]}}))
    out = drive(ChatAggregate("m", created=1, completion_id="c"), [raw])
    assert "héllo ✓".encode() in out and b"\\u" not in out


def test_a_terminal_event_without_a_response_still_answers_with_the_items():
    raw = sse(item_done("msg_a", None), item_done("msg_b", None), ("response.completed", {}))
    body = json.loads(drive(ResponsesAggregate(), [raw]))
    assert body == {"output": [item_done("msg_a", None)[1]["item"], item_done("msg_b", None)[1]["item"]], "object": "response"}
