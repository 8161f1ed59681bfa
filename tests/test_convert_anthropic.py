"""Anthropic Messages <-> Responses: a Claude-Code-like request, validation, and the stream /
aggregate converters checked against recorded upstream event sequences (tests/golden/*.sse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexproxy.exchange import GatewayError
from codexproxy.sse import SSEParser, encode
from codexproxy_plugins.adapter.anthropic import (AnthropicAggregate, AnthropicStream,
                                                  anthropic_error_body, anthropic_to_responses,
                                                  estimate_tokens)
from codexproxy.pipeline import run_transform as drive

GOLDEN = Path(__file__).parent / "golden"
FIXTURES = sorted(p.stem for p in GOLDEN.glob("*.sse"))
CUT = GatewayError(502, "upstream stream cut", type="server_error", code="stream_cut")


def golden(name: str) -> bytes:
    return (GOLDEN / f"{name}.sse").read_bytes()


def events(name: str, error: GatewayError | None = None) -> list[tuple[str, dict]]:
    output = drive(AnthropicStream("claude-sonnet-4-5", "msg_test"), [golden(name)], error)
    parsed = SSEParser().feed(output)
    result = [(e.event, json.loads(e.data)) for e in parsed]
    for name_, data in result:  # every Anthropic event repeats its name as data.type
        assert data["type"] == name_
    return result


def message(name: str, error: GatewayError | None = None) -> tuple[AnthropicAggregate, dict]:
    transform = AnthropicAggregate("claude-sonnet-4-5", "msg_test")
    return transform, json.loads(drive(transform, [golden(name)], error))


def claude_code_body() -> dict:
    """Shaped like a captured Claude Code 2.1 request."""
    return {
        "model": "gpt-5.5",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Environment: linux", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "List the files.", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should run ls.", "signature": "sig"},
                {"type": "text", "text": "Listing."},
                {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01",
                 "content": [{"type": "text", "text": "a.txt\nb.txt"}]},
                {"type": "text", "text": "Thanks."},
            ]},
            {"role": "system", "content": "The user switched to plan mode."},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_02", "name": "Read", "input": {"path": "/nope"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_02", "is_error": True, "content": "not found"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            ]},
        ],
        "tools": [
            {"name": "Bash", "description": "Run a command", "input_schema": {
                "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
            {"name": "Read", "description": "Read a file", "input_schema": {
                "type": "object", "properties": {"path": {"type": "string"}}}},
        ],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "user_abc_account_def_session_0f0f0f0f"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "temperature": 1,
        "stop_sequences": ["\n\nHuman:"],
    }


# --- request mapping -------------------------------------------------------------------------

def test_claude_code_request_is_accepted_and_mapped():
    body = anthropic_to_responses(claude_code_body())
    assert body["model"] == "gpt-5.5"
    assert body["stream"] is True and body["store"] is False and body["instructions"] == ""
    for ignored in ("max_tokens", "metadata", "context_management", "temperature", "stop_sequences",
                    "system", "messages", "thinking", "output_config"):
        assert ignored not in body
    # output_config.effort overrides thinking adaptive (medium)
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["tools"] == [
        {"type": "function", "name": "Bash", "description": "Run a command", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
        {"type": "function", "name": "Read", "description": "Read a file", "strict": False,
         "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}},
    ]
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert body["prompt_cache_key"].startswith("claude-session-") and len(body["prompt_cache_key"]) <= 64

    items = body["input"]
    assert items[0] == {"type": "message", "role": "developer", "content": [{"type": "input_text",
        "text": "x-anthropic-billing-header: cc_version=2.1\n\nYou are Claude Code.\n\nEnvironment: linux"}]}
    assert items[1] == {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "<system-reminder>ctx</system-reminder>"},
        {"type": "input_text", "text": "List the files."}]}
    # thinking dropped; text then the tool call, in order
    assert items[2] == {"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Listing."}]}
    assert items[3] == {"type": "function_call", "call_id": "toolu_01", "name": "Bash",
                        "arguments": '{"command": "ls"}'}
    assert items[4] == {"type": "function_call_output", "call_id": "toolu_01", "output": "a.txt\nb.txt"}
    assert items[5] == {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks."}]}
    assert items[6] == {"type": "message", "role": "developer",
                        "content": [{"type": "input_text", "text": "The user switched to plan mode."}]}
    assert items[7]["type"] == "function_call" and items[7]["call_id"] == "toolu_02"
    assert items[8] == {"type": "function_call_output", "call_id": "toolu_02", "output": "Error: not found"}
    assert items[9] == {"type": "message", "role": "user",
                        "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBOR"}]}
    assert len(items) == 10


def test_prompt_cache_key_is_stable_per_session():
    a = anthropic_to_responses(claude_code_body())["prompt_cache_key"]
    b = anthropic_to_responses(claude_code_body())["prompt_cache_key"]
    other = claude_code_body()
    other["metadata"]["user_id"] = "user_abc_account_def_session_11111111"
    assert a == b != anthropic_to_responses(other)["prompt_cache_key"]


@pytest.mark.parametrize("fields, effort", [
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 16384}}, "medium"),
    ({"thinking": {"type": "enabled", "budget_tokens": 32000}}, "high"),
    ({"thinking": {"type": "adaptive"}}, "medium"),
    ({"thinking": {"type": "disabled"}}, "none"),
    ({"thinking": {"type": "disabled"}, "output_config": {"effort": "low"}}, "low"),
    ({"output_config": {"effort": "max"}}, "xhigh"),
    ({}, None),
])
def test_thinking_maps_to_effort(fields, effort):
    body = anthropic_to_responses({"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}],
                                   **fields})
    assert (body.get("reasoning") or {}).get("effort") == effort
    if effort == "none":
        assert "include" not in body  # nothing to carry
    else:  # the backend's default effort (None) still reasons: its encrypted reasoning is kept
        assert body["include"] == ["reasoning.encrypted_content"]


def test_model_suffix_wins_over_claude_code_effort():
    body = anthropic_to_responses({**claude_code_body(), "model": "gpt-5.5(xhigh)"})
    assert body["model"] == "gpt-5.5" and body["reasoning"]["effort"] == "xhigh"


@pytest.mark.parametrize("choice, expected, parallel", [
    ({"type": "auto"}, "auto", True),
    ({"type": "any"}, "required", True),
    ({"type": "none"}, "none", True),
    ({"type": "tool", "name": "Bash"}, {"type": "function", "name": "Bash"}, True),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
])
def test_tool_choice(choice, expected, parallel):
    body = anthropic_to_responses({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                   "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
                                   "tool_choice": choice})
    assert body["tool_choice"] == expected
    assert body["parallel_tool_calls"] is parallel


def test_string_system_url_image_and_hosted_tools():
    body = anthropic_to_responses({
        "model": "m", "system": "Be brief.",
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "text", "text": "what?"}]}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
    })
    assert body["input"][0]["content"] == [{"type": "input_text", "text": "Be brief."}]
    assert body["input"][1]["content"][0] == {"type": "input_image", "image_url": "https://example.com/a.png"}
    assert "tools" not in body  # Anthropic-hosted tools cannot run on the backend


def test_orphan_tool_result_becomes_context():
    body = anthropic_to_responses({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_gone", "content": "x"}]}]})
    assert body["input"][0]["type"] == "message"
    assert "toolu_gone" in body["input"][0]["content"][0]["text"]


@pytest.mark.parametrize("body, param", [
    ("text", None),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                 {"role": "tool", "content": "c"}]}, "messages[2].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages[0].content[0].type"),
    ({"model": "m", "messages": [{"role": "assistant", "content": [{"type": "tool_result"}]}]},
     "messages[0].content[0].type"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
     "messages[0].content[0].tool_use_id"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "messages[0].content[0].source"),
    ({"model": "m", "system": [{"type": "image"}], "messages": [{"role": "user", "content": "x"}]},
     "system[0].type"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"input_schema": {}}]},
     "tools[0].name"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "some"}},
     "tool_choice.type"),
])
def test_validation_errors_name_the_field(body, param):
    with pytest.raises(GatewayError) as info:
        anthropic_to_responses(body)
    assert info.value.status == 400
    assert info.value.param == param
    if param:
        assert param in info.value.message


def test_estimate_tokens():
    assert estimate_tokens({}) == 1
    body = claude_code_body()
    assert estimate_tokens(body) == len(json.dumps(body, ensure_ascii=False)) // 4


@pytest.mark.parametrize("status, kind", [(400, "invalid_request_error"), (401, "authentication_error"),
                                          (403, "permission_error"), (404, "not_found_error"),
                                          (413, "request_too_large"), (429, "rate_limit_error"),
                                          (500, "api_error"), (502, "api_error"), (503, "api_error"),
                                          (529, "overloaded_error"), (422, "invalid_request_error")])
def test_error_body_types(status, kind):
    assert anthropic_error_body(GatewayError(status, "boom")) == \
        {"type": "error", "error": {"type": kind, "message": "boom"}}


# --- stream ----------------------------------------------------------------------------------

def test_text_stream_golden():
    evs = events("text")
    assert [name for name, _ in evs] == ["message_start", "content_block_start"] + \
        ["content_block_delta"] * 4 + ["content_block_stop", "message_delta", "message_stop"]
    start = evs[0][1]["message"]
    assert start == {"id": "msg_test", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                     "content": [], "stop_reason": None, "stop_sequence": None,
                     "usage": {"input_tokens": 0, "output_tokens": 0}}
    assert evs[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(d["delta"]["text"] for n, d in evs if n == "content_block_delta") == "Hello, world! Ünïcode ✓"
    assert all(d["delta"]["type"] == "text_delta" for n, d in evs if n == "content_block_delta")
    assert evs[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                          "usage": {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 0}}


def test_reasoning_stream_golden():
    evs = events("reasoning")
    starts = [d for n, d in evs if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["thinking", "text"]
    assert [s["index"] for s in starts] == [0, 1]
    thinking = "".join(d["delta"]["thinking"] for n, d in evs
                       if n == "content_block_delta" and d["delta"]["type"] == "thinking_delta")
    assert thinking == "**Planning**\n\nThe user wants 2+2.\n\nAnswer is 4."
    assert [d["index"] for n, d in evs if n == "content_block_stop"] == [0, 1]
    # input_tokens excludes cached ones, as Anthropic counts them
    assert evs[-2][1]["usage"] == {"input_tokens": 56, "output_tokens": 30, "cache_read_input_tokens": 64}


def test_parallel_tools_stream_golden():
    evs = events("parallel_tools")
    starts = [d for n, d in evs if n == "content_block_start"]
    # the reasoning item (no summary, encrypted content only) becomes a thinking block whose
    # signature carries the encrypted reasoning to the next request
    assert [s["content_block"] for s in starts] == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "tool_use", "id": "call_A", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "call_B", "name": "get_time", "input": {}},
    ]
    signatures = [d["delta"] for n, d in evs if n == "content_block_delta" and d["index"] == 0]
    assert signatures == [{"type": "signature_delta", "signature": "codexproxy.reasoning.v1:gAAAAABpre-FULL-ENCRYPTED"}]
    for index, expected in ((1, {"city": "Paris"}), (2, {"tz": "CET"})):
        partial = "".join(d["delta"]["partial_json"] for n, d in evs
                          if n == "content_block_delta" and d["index"] == index)
        assert json.loads(partial) == expected
    # one block open at a time: start/stop strictly alternate
    order = [n for n, _ in evs if n in ("content_block_start", "content_block_stop")]
    assert order == ["content_block_start", "content_block_stop"] * 3
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_custom_tool_stream_is_valid_json_input():
    evs = events("custom_tool")
    partial = "".join(d["delta"]["partial_json"] for n, d in evs
                      if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == {"input": '*** Begin Patch\n*** Add File: a.txt\n+say "hi"\n*** End Patch'}


def test_incomplete_stream_is_max_tokens():
    evs = events("incomplete")
    assert evs[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert evs[-1][0] == "message_stop"


@pytest.mark.parametrize("name, kind", [("failed", "invalid_request_error"),
                                        ("error_event", "rate_limit_error"), ("cut", "api_error")])
def test_failures_end_with_an_error_event(name, kind):
    evs = events(name, error=CUT)
    assert evs[-1] == ("error", {"type": "error", "error": {"type": kind, "message": evs[-1][1]["error"]["message"]}})
    assert not any(n in ("message_stop", "message_delta") for n, _ in evs)
    assert sum(1 for n, _ in evs if n == "error") == 1


def test_cut_stream_keeps_partial_text_then_errors():
    evs = events("cut", error=CUT)
    assert "".join(d["delta"]["text"] for n, d in evs if n == "content_block_delta") == "Partial ans"
    assert evs[-1][1]["error"]["message"] == "upstream stream cut"


# --- aggregate -------------------------------------------------------------------------------

def test_aggregate_rebuilds_empty_completed_output():
    _, body = message("reasoning")
    assert body["type"] == "message" and body["id"] == "msg_test" and body["role"] == "assistant"
    assert body["content"] == [
        {"type": "thinking", "thinking": "**Planning**\n\nThe user wants 2+2.\n\nAnswer is 4.",
         "signature": "codexproxy.reasoning.v1:gAAAAABpre-FULL-ENCRYPTED"},
        {"type": "text", "text": "2 + 2 = 4"},
    ]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"] == {"input_tokens": 56, "output_tokens": 30, "cache_read_input_tokens": 64}


def test_aggregate_tools():
    _, body = message("parallel_tools")
    assert body["content"] == [
        {"type": "thinking", "thinking": "", "signature": "codexproxy.reasoning.v1:gAAAAABpre-FULL-ENCRYPTED"},
        {"type": "tool_use", "id": "call_A", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_B", "name": "get_time", "input": {"tz": "CET"}},
    ]
    assert body["stop_reason"] == "tool_use"


def test_aggregate_incomplete_and_failed():
    _, body = message("incomplete")
    assert body["stop_reason"] == "max_tokens"
    transform, body = message("failed")
    assert body == {"type": "error", "error": {"type": "invalid_request_error",
                                               "message": transform.error.message}}
    transform, body = message("cut", error=CUT)
    assert body["error"]["type"] == "api_error" and transform.error is CUT


# --- any chunking gives the same answer ------------------------------------------------------

def _split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    return [raw[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(FIXTURES), cuts=st.lists(st.integers(0, 6000), max_size=25),
       stream=st.booleans())
def test_any_chunking_gives_the_same_output(name, cuts, stream):
    raw = golden(name)
    def run(chunks):
        transform = AnthropicStream("m", "msg") if stream else AnthropicAggregate("m", "msg")
        return drive(transform, chunks, CUT)
    assert run(_split(raw, cuts)) == run([raw])


def test_whole_text_and_arguments_are_sent_once():
    message = {"type": "message", "role": "assistant",
               "content": [{"type": "output_text", "text": "whole text", "annotations": []}]}
    call = {"type": "function_call", "call_id": "call_Z", "name": "f", "arguments": '{"a":1}'}
    raw = b"".join([
        encode("response.output_text.done", {"type": "response.output_text.done", "output_index": 0,
                                              "text": "whole text"}),
        encode("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                              "item": message}),
        encode("response.output_item.done", {"type": "response.output_item.done", "output_index": 1,
                                              "item": call}),
        encode("response.completed", {"type": "response.completed", "response": {"status": "completed"}}),
    ])
    evs = [(e.event, json.loads(e.data)) for e in SSEParser().feed(drive(AnthropicStream("m", "msg"), [raw]))]
    assert [n for n, _ in evs] == ["message_start", "content_block_start", "content_block_delta",
                                   "content_block_stop", "content_block_start", "content_block_delta",
                                   "content_block_stop", "message_delta", "message_stop"]
    assert evs[2][1]["delta"] == {"type": "text_delta", "text": "whole text"}
    assert evs[4][1]["content_block"]["id"] == "call_Z"
    assert evs[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":1}'}
    assert evs[7][1]["delta"]["stop_reason"] == "tool_use"


# --- reasoning carried in the thinking signature, fields mapped or refused --------------------

def test_reasoning_stream_golden_signs_the_thinking_block():
    evs = events("reasoning")
    deltas = [d["delta"] for n, d in evs if n == "content_block_delta" and d["index"] == 0]
    # the signature comes last in its block, just before content_block_stop (as Anthropic sends it)
    assert deltas[-1] == {"type": "signature_delta", "signature": "codexproxy.reasoning.v1:gAAAAABpre-FULL-ENCRYPTED"}
    stop_at = next(i for i, (n, d) in enumerate(evs) if n == "content_block_stop" and d["index"] == 0)
    assert evs[stop_at - 1][1]["delta"]["type"] == "signature_delta"


def test_our_signature_comes_back_as_a_reasoning_item_and_a_foreign_one_is_ignored():
    ours = "codexproxy.reasoning.v1:enc_abc"
    body = anthropic_to_responses({"model": "gpt-5.5", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Need the tool.", "signature": ours},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "from the real API", "signature": "EqQBCkYIBRgCKkD..."},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "text", "text": "Sunny."}]},
        {"role": "user", "content": "thanks"}]})
    items = body["input"]
    assert items[1] == {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Need the tool."}],
                        "encrypted_content": "enc_abc"}
    assert items[2]["type"] == "function_call" and items[3]["type"] == "function_call_output"
    assert items[4] == {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]}
    assert [i["type"] for i in items].count("reasoning") == 1


def test_output_config_format_becomes_text_format():
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    body = anthropic_to_responses({"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}],
                                   "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert body["text"] == {"format": {"type": "json_schema", "name": "output", "schema": schema, "strict": False}}


@pytest.mark.parametrize("extra, param", [
    ({"output_config": {"format": {"type": "yaml"}}}, "output_config.format"),
    ({"mcp_servers": [{"type": "url", "url": "https://x"}]}, "mcp_servers"),
    ({"container": "c1"}, "container"),
    ({"frobnicate": True}, "frobnicate"),
])
def test_unusable_fields_are_refused_by_name(extra, param):
    with pytest.raises(GatewayError) as err:
        anthropic_to_responses({"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}], **extra})
    assert err.value.status == 400 and err.value.param == param and param in err.value.message


def test_session_prefers_the_claude_code_header():
    from codexproxy_plugins.adapter.anthropic import anthropic_session
    body = {"metadata": {"user_id": "user_1_session_a"}}
    by_header = anthropic_session(body, {"x-claude-code-session-id": "3f1c"})
    by_user = anthropic_session(body, {})
    assert by_header != by_user and by_header.startswith("claude-session-") and len(by_header) <= 64
    assert anthropic_session({}, {}) is None
    assert by_user == anthropic_to_responses({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                              **body})["prompt_cache_key"]
