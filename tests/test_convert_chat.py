"""Chat Completions <-> Responses: request mapping, validation, and the stream/aggregate
converters checked against recorded upstream event sequences (tests/golden/*.sse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexproxy.exchange import GatewayError
from codexproxy.sse import SSEParser, encode, frame
from codexproxy_plugins.adapter.chat import ChatAggregate, ChatStream, chat_to_responses
from codexproxy.pipeline import run_transform as drive

GOLDEN = Path(__file__).parent / "golden"
FIXTURES = sorted(p.stem for p in GOLDEN.glob("*.sse"))
CUT = GatewayError(502, "upstream stream cut", type="server_error", code="stream_cut")


def golden(name: str) -> bytes:
    return (GOLDEN / f"{name}.sse").read_bytes()


def chunks_of(output: bytes) -> list:
    """The `data:` payloads of a chat SSE answer, JSON-decoded ([DONE] kept as a string)."""
    events = SSEParser().feed(output)
    return [json.loads(e.data) if e.data != "[DONE]" else e.data for e in events]


def stream(name: str, include_usage: bool = True, error: GatewayError | None = None) -> list:
    transform = ChatStream("gpt-5.5(high)", include_usage=include_usage, created=1700000000,
                           completion_id="chatcmpl-test")
    return chunks_of(drive(transform, [golden(name)], error))


def aggregate(name: str, error: GatewayError | None = None) -> tuple[ChatAggregate, dict]:
    transform = ChatAggregate("gpt-5.5", created=1700000000, completion_id="chatcmpl-test")
    return transform, json.loads(drive(transform, [golden(name)], error))


def deltas(chunks: list) -> list[dict]:
    return [c["choices"][0]["delta"] for c in chunks if isinstance(c, dict) and c.get("choices")]


# --- request mapping -------------------------------------------------------------------------

def test_basic_request_mapping():
    body = chat_to_responses({
        "model": "gpt-5.5(high)",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Sure?"},
        ],
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 100, "user": "u1",
        "stream": False, "stream_options": {"include_usage": True},
        "prompt_cache_key": "conv-1", "parallel_tool_calls": False,
    })
    assert body["model"] == "gpt-5.5"
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["stream"] is True and body["store"] is False
    assert body["instructions"] == ""
    assert body["prompt_cache_key"] == "conv-1"
    assert body["parallel_tool_calls"] is False
    for dropped in ("temperature", "top_p", "max_tokens", "user", "messages", "stream_options"):
        assert dropped not in body
    items = body["input"]
    assert items[0] == {"type": "message", "role": "developer",
                        "content": [{"type": "input_text", "text": "Be terse."}]}
    assert items[1]["role"] == "developer"
    assert items[1]["content"] == [{"type": "input_text", "text": "Use metric units."}]
    assert items[2]["content"] == [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
    ]
    assert items[3] == {"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": "A cat."}]}
    assert items[4]["content"] == [{"type": "input_text", "text": "Sure?"}]


def test_no_effort_means_the_backends_effort_but_still_the_encrypted_reasoning():
    # the next tool step carries it back (reasoning_details): without it reasoning restarts
    body = chat_to_responses({"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]})
    assert "reasoning" not in body and body["include"] == ["reasoning.encrypted_content"]


def test_reasoning_effort_field_and_suffix_precedence():
    plain = chat_to_responses({"model": "gpt-5.5", "reasoning_effort": "low",
                               "messages": [{"role": "user", "content": "hi"}]})
    assert plain["reasoning"] == {"effort": "low", "summary": "auto"}
    suffixed = chat_to_responses({"model": "gpt-5.5(xhigh)", "reasoning_effort": "low",
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert suffixed["reasoning"]["effort"] == "xhigh"  # the user's model choice wins


def test_tool_round_trip_keeps_calls_before_outputs():
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    body = chat_to_responses({
        "model": "gpt-5.5",
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_A", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_B", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_A", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_B", "content": [{"type": "text", "text": "21C"}]},
        ],
    })
    assert body["tools"] == [{"type": "function", "name": "get_weather",
                              "description": "Weather for a city",
                              "parameters": tools[0]["function"]["parameters"], "strict": False}]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    kinds = [item["type"] for item in body["input"]]
    assert kinds == ["message", "function_call", "function_call",
                     "function_call_output", "function_call_output"]
    assert body["input"][1] == {"type": "function_call", "call_id": "call_A", "name": "get_weather",
                                "arguments": "{\"city\":\"Paris\"}"}
    assert body["input"][3] == {"type": "function_call_output", "call_id": "call_A", "output": "18C"}
    assert body["input"][4]["output"] == "21C"
    # every output has its call earlier in the input (the backend rejects it otherwise)
    seen = set()
    for item in body["input"]:
        if item["type"] == "function_call":
            seen.add(item["call_id"])
        if item["type"] == "function_call_output":
            assert item["call_id"] in seen


def test_orphan_tool_output_becomes_context_not_a_backend_400():
    body = chat_to_responses({"model": "m", "messages": [
        {"role": "user", "content": "go"},
        {"role": "tool", "tool_call_id": "call_gone", "content": "result"},
    ]})
    assert all(item["type"] == "message" for item in body["input"])
    assert "call_gone" in body["input"][1]["content"][0]["text"]


def test_custom_tools_and_calls_map_to_custom_items():
    body = chat_to_responses({
        "model": "m",
        "tools": [{"type": "custom", "custom": {"name": "apply_patch", "description": "patch",
                                                "format": {"type": "text"}}},
                  {"type": "web_search"}],
        "messages": [
            {"role": "user", "content": "patch it"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_C", "type": "custom", "custom": {"name": "apply_patch", "input": "*** Begin"}}]},
            {"role": "tool", "tool_call_id": "call_C", "content": "ok"},
        ],
    })
    assert body["tools"][0] == {"type": "custom", "name": "apply_patch", "description": "patch",
                                "format": {"type": "text"}}
    assert body["tools"][1] == {"type": "web_search"}
    assert body["input"][1] == {"type": "custom_tool_call", "call_id": "call_C", "name": "apply_patch",
                                "input": "*** Begin"}
    assert body["input"][2] == {"type": "custom_tool_call_output", "call_id": "call_C", "output": "ok"}


def test_response_format_and_verbosity():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = chat_to_responses({"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "verbosity": "low",
                              "response_format": {"type": "json_schema", "json_schema": {
                                  "name": "thing", "schema": schema, "strict": True}}})
    assert body["text"] == {"format": {"type": "json_schema", "name": "thing", "schema": schema,
                                       "strict": True}, "verbosity": "low"}
    body = chat_to_responses({"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_object"}})
    assert body["text"] == {"format": {"type": "json_object"}}
    body = chat_to_responses({"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "text"}, "tool_choice": "required"})
    assert "text" not in body
    assert body["tool_choice"] == "required"


@pytest.mark.parametrize("body, param", [
    ([], None),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                 {"role": "robot", "content": "c"}]}, "messages[2].role"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "messages[0].content[0].type"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}]},
     "messages[0].tool_calls[0].function.name"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     "tools[0].function.name"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": 3}, "tool_choice"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "yaml"}}, "response_format.type"),
])
def test_validation_errors_name_the_field(body, param):
    with pytest.raises(GatewayError) as info:
        chat_to_responses(body)
    assert info.value.status == 400
    assert info.value.param == param
    if param:
        assert param in info.value.message


# --- stream ----------------------------------------------------------------------------------

def test_text_stream_golden():
    chunks = stream("text")
    assert chunks[-1] == "[DONE]"
    first = chunks[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["id"] == "chatcmpl-test" and first["created"] == 1700000000
    assert first["model"] == "gpt-5.5(high)"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in d for d in deltas(chunks)[1:])
    text = "".join(d.get("content") or "" for d in deltas(chunks))
    assert text == "Hello, world! Ünïcode ✓"
    final = [c for c in chunks if isinstance(c, dict) and c.get("choices")][-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                                    "prompt_tokens_details": {"cached_tokens": 0},
                                    "completion_tokens_details": {"reasoning_tokens": 0}}
    # no codex.* event leaks into a chat stream
    assert not any("rate_limits" in json.dumps(c) for c in chunks)


def test_no_usage_chunk_unless_asked():
    chunks = stream("text", include_usage=False)
    assert not any(isinstance(c, dict) and "usage" in c for c in chunks)
    assert chunks[-1] == "[DONE]"


def test_reasoning_stream_golden():
    chunks = stream("reasoning")
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas(chunks))
    assert reasoning == "**Planning**\n\nThe user wants 2+2.\n\nAnswer is 4."
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "2 + 2 = 4"
    assert chunks[-2]["usage"]["prompt_tokens_details"] == {"cached_tokens": 64}
    assert chunks[-2]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 20}


def test_parallel_tools_stream_golden():
    chunks = stream("parallel_tools")
    calls = [tc for d in deltas(chunks) for tc in d.get("tool_calls") or []]
    heads = [tc for tc in calls if "id" in tc]
    assert heads == [
        {"index": 0, "id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 1, "id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    args = {0: "", 1: ""}
    for tc in calls:
        args[tc["index"]] += tc["function"]["arguments"]
    assert args == {0: '{"city":"Paris"}', 1: '{"tz":"CET"}'}
    final = [c for c in chunks if isinstance(c, dict) and c.get("choices")][-1]
    assert final["choices"][0]["finish_reason"] == "tool_calls"


def test_custom_tool_stream_golden():
    chunks = stream("custom_tool")
    calls = [tc for d in deltas(chunks) for tc in d.get("tool_calls") or []]
    assert calls[0] == {"index": 0, "id": "call_C", "type": "custom",
                        "custom": {"name": "apply_patch", "input": ""}}
    assert "".join(tc["custom"]["input"] for tc in calls) == \
        '*** Begin Patch\n*** Add File: a.txt\n+say "hi"\n*** End Patch'
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "Patching."


def test_incomplete_stream_finishes_with_length():
    chunks = stream("incomplete")
    final = [c for c in chunks if isinstance(c, dict) and c.get("choices")][-1]
    assert final["choices"][0]["finish_reason"] == "length"
    assert chunks[-1] == "[DONE]"


@pytest.mark.parametrize("name, code", [("failed", "context_length_exceeded"),
                                        ("error_event", "rate_limit_exceeded")])
def test_failure_stream_ends_with_an_error_not_a_success(name, code):
    chunks = stream(name, error=CUT)
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["error"]["code"] == code
    assert set(chunks[-2]["error"]) == {"message", "type", "code", "param"}
    assert not any(isinstance(c, dict) and c.get("choices") and c["choices"][0]["finish_reason"]
                   for c in chunks)
    assert sum(1 for c in chunks if isinstance(c, dict) and "error" in c) == 1


def test_cut_stream_reports_the_given_error():
    chunks = stream("cut", error=CUT)
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "Partial ans"
    assert chunks[-2] == {"error": CUT.openai_body()["error"]}
    assert chunks[-1] == "[DONE]"


def test_cut_stream_without_error_still_errors():
    chunks = stream("cut", error=None)
    assert chunks[-2]["error"]["type"] == "server_error"


def test_no_second_ending_after_terminal():
    transform = ChatStream("m", created=1, completion_id="c")
    parser = SSEParser()
    raw = golden("text")
    body = frame(transform.feed(parser.feed(raw)))
    assert body.endswith(b"data: [DONE]\n\n")
    assert transform.finish(CUT) == []
    assert transform.feed(SSEParser().feed(raw)) == []


def test_feed_is_incremental():
    transform = ChatStream("m", created=1, completion_id="c")
    parser = SSEParser()
    raw = golden("text")
    first_delta = raw.index(b"response.output_text.delta")
    end = raw.index(b"\n\n", first_delta) + 2
    out = frame(transform.feed(parser.feed(raw[:end])))
    assert b'"content":"Hel"' in out


def test_start_sets_sse_headers():
    status, headers = ChatStream("m").start(200, {"Content-Type": "text/event-stream; charset=utf-8",
                                                  "Content-Length": "10", "x-codex-primary-used-percent": "3"})
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert "Content-Length" not in headers and "content-length" not in headers
    assert headers["x-codex-primary-used-percent"] == "3"
    _, headers = ChatAggregate("m").start(200, {"content-length": "10"})
    assert headers == {"content-type": "application/json"}


# --- aggregate -------------------------------------------------------------------------------

def test_aggregate_text_golden():
    _, body = aggregate("text")
    assert body["object"] == "chat.completion"
    assert body["id"] == "chatcmpl-test" and body["created"] == 1700000000 and body["model"] == "gpt-5.5"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello, world! Ünïcode ✓"
    assert "tool_calls" not in choice["message"] and "reasoning_content" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 17


def test_aggregate_rebuilds_output_when_completed_output_is_empty():
    _, body = aggregate("reasoning")  # response.completed carries output: []
    message = body["choices"][0]["message"]
    assert message["content"] == "2 + 2 = 4"
    assert message["reasoning_content"] == "**Planning**\n\nThe user wants 2+2.\n\nAnswer is 4."
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 64


def test_aggregate_tool_calls():
    _, body = aggregate("parallel_tools")
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}},
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_aggregate_incomplete_is_length():
    _, body = aggregate("incomplete")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "This answer is cut short because"


@pytest.mark.parametrize("name, status", [("failed", 400), ("error_event", 429), ("cut", 502)])
def test_aggregate_failures_are_error_bodies(name, status):
    transform, body = aggregate(name, error=CUT if name == "cut" else None)
    assert set(body) == {"error"}
    assert transform.error is not None and transform.error.status == status


# --- any chunking gives the same answer ------------------------------------------------------

def _split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(raw), *cuts})
    return [raw[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(FIXTURES), cuts=st.lists(st.integers(0, 6000), max_size=25),
       usage=st.booleans())
def test_any_chunking_gives_the_same_stream(name, cuts, usage):
    raw = golden(name)
    def run(chunks):
        return drive(ChatStream("m", usage, 1, "c"), chunks, CUT)
    assert run(_split(raw, [c % (len(raw) + 1) for c in cuts])) == run([raw])


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(FIXTURES), cuts=st.lists(st.integers(0, 6000), max_size=25))
def test_any_chunking_gives_the_same_aggregate(name, cuts):
    raw = golden(name)
    def run(chunks):
        return drive(ChatAggregate("m", 1, "c"), chunks, CUT)
    assert run(_split(raw, [c % (len(raw) + 1) for c in cuts])) == run([raw])


@pytest.mark.parametrize("name", FIXTURES)
def test_byte_by_byte_gives_the_same_stream(name):
    raw = golden(name)
    whole = drive(ChatStream("m", True, 1, "c"), [raw], CUT)
    assert drive(ChatStream("m", True, 1, "c"), [raw[i:i + 1] for i in range(len(raw))], CUT) == whole


# --- upstream gaps: text and arguments that arrive only whole -------------------------------

def done_only_stream() -> bytes:
    """No deltas and no response.created: everything arrives in `.done` events."""
    message = {"type": "message", "role": "assistant",
               "content": [{"type": "output_text", "text": "whole text", "annotations": []}]}
    call = {"type": "function_call", "call_id": "call_Z", "name": "f", "arguments": '{"a":1}'}
    return b"".join([
        encode("response.output_text.done", {"type": "response.output_text.done", "output_index": 0,
                                              "content_index": 0, "text": "whole text"}),
        encode("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                              "item": message}),
        encode("response.output_item.done", {"type": "response.output_item.done", "output_index": 1,
                                              "item": call}),
        encode("response.completed", {"type": "response.completed",
                                       "response": {"id": "r", "status": "completed", "output": []}}),
    ])


def test_whole_text_and_arguments_are_sent_once():
    chunks = chunks_of(drive(ChatStream("m", False, 1, "c"), [done_only_stream()], None))
    ds = deltas(chunks)
    assert ds[0]["role"] == "assistant"
    assert "".join(d.get("content") or "" for d in ds) == "whole text"
    calls = [tc for d in ds for tc in d.get("tool_calls") or []]
    assert calls[0] == {"index": 0, "id": "call_Z", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"a":1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


# --- every field mapped, ignored for a reason, or refused by name ---------------------------

@pytest.mark.parametrize("field, value", [
    ("logprobs", True), ("top_logprobs", 3), ("audio", {"voice": "alloy"}), ("modalities", ["text", "audio"]),
    ("functions", [{"name": "f"}]), ("prediction", {"type": "content", "content": "x"}), ("frobnicate", 1),
])
def test_fields_without_an_equivalent_are_refused_by_name(field, value):
    with pytest.raises(GatewayError) as info:
        chat_to_responses({"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}], field: value})
    assert info.value.status == 400 and info.value.param == field and field in info.value.message


def test_off_values_of_refused_fields_and_ignored_fields_pass():
    body = chat_to_responses({"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}],
                              "logprobs": False, "modalities": ["text"], "seed": 1, "stop": ["\n"],
                              "metadata": {"a": "b"}, "store": True, "max_completion_tokens": 9})
    for field in ("logprobs", "modalities", "seed", "stop", "metadata", "max_completion_tokens"):
        assert field not in body
    assert body["store"] is False


def test_chat_session_order():
    from codexproxy_plugins.adapter.chat import chat_session
    body = {"prompt_cache_key": "pck", "user": "alice@example.com"}
    assert chat_session(body, {"session-id": "s1"}) == "s1"
    assert chat_session(body, {}) == "pck"
    by_user = chat_session({"user": "alice@example.com"}, {})
    assert by_user.startswith("user-") and "alice" not in by_user
    assert chat_session({}, {}) is None


# --- encrypted reasoning round trip (reasoning_details, as OpenRouter shapes it) --------------

OURS = {"type": "reasoning.encrypted", "data": "codexproxy.reasoning.v1:gAAAAABpre-FULL-ENCRYPTED",
        "format": "openai-responses-v1", "index": 0}


def test_reasoning_details_in_the_stream_and_the_message():
    details = [d["reasoning_details"] for d in deltas(stream("parallel_tools")) if "reasoning_details" in d]
    assert details == [[OURS]]
    _, body = aggregate("reasoning")
    assert body["choices"][0]["message"]["reasoning_details"] == [OURS]
    _, body = aggregate("text")
    assert "reasoning_details" not in body["choices"][0]["message"]


def test_reasoning_details_we_issued_come_back_as_reasoning_items():
    body = chat_to_responses({"model": "gpt-5.5", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
         "reasoning_details": [OURS, {"type": "reasoning.summary", "summary": "thought"},
                               {"type": "reasoning.encrypted", "data": "someone-elses-blob"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]})
    assert [i["type"] for i in body["input"]] == ["message", "reasoning", "function_call", "function_call_output"]
    assert body["input"][1] == {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAABpre-FULL-ENCRYPTED"}
