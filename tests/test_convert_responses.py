"""Responses API clients: request normalisation, the pass-through stream, the non-stream
aggregate, and the shared helpers (effort suffix, error mapping, output rebuilding)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexproxy.exchange import GatewayError
from codexproxy.sse import SSEEvent, SSEParser, encode, frame
from codexproxy.pipeline import run_transform as drive
from codexproxy_plugins.adapter.common import (ResponseAccumulator, error_status_for_code,
                                               gateway_error_from_event, parse_model_effort)
from codexproxy_plugins.adapter.responses import (ResponsesAggregate, ResponsesStream,
                                                  normalize_responses_request)

GOLDEN = Path(__file__).parent / "golden"
FIXTURES = sorted(p.stem for p in GOLDEN.glob("*.sse"))
CUT = GatewayError(502, "upstream stream cut", type="server_error", code="stream_cut")


def golden(name: str) -> bytes:
    return (GOLDEN / f"{name}.sse").read_bytes()


def stream_events(name: str, drop: bool, error: GatewayError | None = None) -> list[SSEEvent]:
    return SSEParser().feed(drive(ResponsesStream(drop_codex_events=drop), [golden(name)], error))


# --- shared helpers --------------------------------------------------------------------------

@pytest.mark.parametrize("model, expected", [
    ("gpt-5.5(high)", ("gpt-5.5", "high")),
    ("gpt-5.5 (XHigh)", ("gpt-5.5", "xhigh")),
    ("gpt-5-codex(minimal)", ("gpt-5-codex", "minimal")),
    ("gpt-5.5(low)", ("gpt-5.5", "low")),
    ("gpt-5.5(medium)", ("gpt-5.5", "medium")),
    ("gpt-5.5", ("gpt-5.5", None)),
    ("gpt-5.5(turbo)", ("gpt-5.5(turbo)", None)),
    (" gpt-5.5 ", ("gpt-5.5", None)),
])
def test_parse_model_effort(model, expected):
    assert parse_model_effort(model) == expected


@pytest.mark.parametrize("code, status", [
    ("context_length_exceeded", 400), ("insufficient_quota", 429), ("usage_not_included", 429),
    ("rate_limit_exceeded", 429), ("server_is_overloaded", 503), ("something_new", 502), (None, 502),
])
def test_error_status_for_code(code, status):
    assert error_status_for_code(code) == status


def test_gateway_error_from_failed_event():
    ev = SSEParser().feed(golden("failed"))[-1]
    err = gateway_error_from_event(ev)
    assert (err.status, err.code, err.type) == (400, "context_length_exceeded", "invalid_request_error")
    assert err.message.startswith("Your input exceeds the context window")


@pytest.mark.parametrize("payload, status, code, message", [
    ({"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None},
     429, "rate_limit_exceeded", "slow down"),
    ({"type": "error", "error": {"type": "usage_limit_reached", "message": "limit", "resets_in_seconds": 90}},
     429, "usage_limit_reached", "limit"),
    ({"type": "error", "error": {"code": "server_is_overloaded", "message": "busy"}}, 503, "server_is_overloaded", "busy"),
    ({"type": "error"}, 502, None, None),
])
def test_gateway_error_from_error_event(payload, status, code, message):
    err = gateway_error_from_event(SSEEvent("error", json.dumps(payload)))
    assert err.status == status and err.code == code
    assert err.message == (message or "Upstream response failed (unknown error).")
    if "resets_in_seconds" in json.dumps(payload):
        assert err.headers == {"retry-after": "90"}


def test_gateway_error_from_garbage_event():
    err = gateway_error_from_event(SSEEvent("response.failed", "not json"))
    assert err.status == 502 and err.message


def test_accumulator_completes_unfinished_items_from_deltas():
    """Terminal event with an empty output and items never marked done: rebuilt from deltas."""
    acc = ResponseAccumulator()
    for name, payload in [
        ("response.created", {"response": {"id": "r", "output": []}}),
        ("response.output_item.added", {"output_index": 0, "item": {"type": "reasoning", "id": "rs", "summary": []}}),
        ("response.reasoning_summary_text.delta", {"output_index": 0, "delta": "think"}),
        ("response.output_item.added", {"output_index": 1, "item": {"type": "message", "role": "assistant", "content": []}}),
        ("response.output_text.delta", {"output_index": 1, "delta": "Hi "}),
        ("response.output_text.delta", {"output_index": 1, "delta": "there"}),
        ("response.output_item.added", {"output_index": 2, "item": {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}}),
        ("response.function_call_arguments.delta", {"output_index": 2, "delta": "{}"}),
        ("response.completed", {"response": {"id": "r", "status": "completed", "output": [], "usage": {"input_tokens": 1}}}),
        ("response.output_text.delta", {"output_index": 1, "delta": "ignored after the end"}),
    ]:
        acc.feed(SSEEvent(name, json.dumps({"type": name, **payload})))
    out = acc.result()["output"]
    assert out[0]["summary"] == [{"type": "summary_text", "text": "think"}]
    assert out[1]["content"][0]["text"] == "Hi there"
    assert out[2]["arguments"] == "{}"
    assert acc.terminal == "response.completed" and acc.error is None
    assert acc.usage == {"input_tokens": 1}


# --- request normalisation -------------------------------------------------------------------

def test_normalize_forces_backend_rules():
    body = normalize_responses_request({
        "model": "gpt-5.5", "input": "hello", "store": True, "stream": False,
        "temperature": 0.5, "top_p": 1, "max_output_tokens": 99, "truncation": "auto",
        "user": "u", "previous_response_id": "resp_1", "service_tier": "flex",
        "reasoning": {"effort": "high"}, "prompt_cache_key": "k", "client_metadata": {"a": "b"},
    })
    assert body["store"] is False and body["stream"] is True
    assert body["input"] == [{"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": "hello"}]}]
    assert "instructions" not in body  # absent is fine upstream (Codex sends none); never invented
    for dropped in ("temperature", "top_p", "max_output_tokens", "truncation", "user",
                    "previous_response_id", "service_tier"):
        assert dropped not in body
    assert body["reasoning"] == {"effort": "high"}
    assert body["prompt_cache_key"] == "k" and body["client_metadata"] == {"a": "b"}


def test_normalize_keeps_priority_tier_instructions_and_items():
    items = [{"type": "message", "role": "system", "content": [{"type": "input_text", "text": "sys"}]},
             {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c", "output": "ok"}]
    original = json.loads(json.dumps(items))
    body = normalize_responses_request({"model": "m", "input": items, "service_tier": "priority",
                                        "instructions": "Be kind."})
    assert body["service_tier"] == "priority" and body["instructions"] == "Be kind."
    assert body["input"][0]["role"] == "developer"
    assert body["input"][1:] == items[1:]
    assert items == original  # the caller's body is not mutated


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"), ({"model": "", "input": "x"}, "model"), ({"model": 1, "input": "x"}, "model"),
    ({"model": "m"}, "input"), ({"model": "m", "input": 5}, "input"), ({"model": "m", "input": ["x"]}, "input[0]"),
])
def test_normalize_validation(body, param):
    with pytest.raises(GatewayError) as info:
        normalize_responses_request(body)
    assert info.value.status == 400 and info.value.param == param
    assert param in info.value.message


# --- stream ----------------------------------------------------------------------------------

def test_stream_keeps_codex_events_for_codex_clients():
    evs = stream_events("text", drop=False)
    upstream = SSEParser().feed(golden("text"))
    assert [(e.event, json.loads(e.data)) for e in evs] == [(e.event, json.loads(e.data)) for e in upstream]
    assert evs[0].event == "codex.rate_limits"


def test_stream_drops_codex_events_for_sdk_clients():
    evs = stream_events("text", drop=True)
    assert not any(e.type.startswith("codex.") for e in evs)
    assert evs[0].event == "response.created"
    assert evs[-1].event == "response.completed"
    assert "".join(json.loads(e.data)["delta"] for e in evs if e.event == "response.output_text.delta") == \
        "Hello, world! Ünïcode ✓"


def test_stream_reencodes_with_event_names():
    out = drive(ResponsesStream(drop_codex_events=True), [golden("incomplete")], None)
    assert out.startswith(b"event: response.created\ndata: {")
    assert SSEParser().feed(out)[-1].event == "response.incomplete"


def test_cut_stream_gets_a_response_failed_and_no_garbage():
    evs = stream_events("cut", drop=True, error=CUT)
    last = evs[-1]
    assert last.event == "response.failed"
    data = json.loads(last.data)
    assert data["type"] == "response.failed"
    assert data["response"]["id"] == "resp_cut01" and data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "stream_cut", "message": "upstream stream cut"}
    for ev in evs:  # the truncated last upstream event is not forwarded
        assert isinstance(json.loads(ev.data), dict)


@pytest.mark.parametrize("name", ["text", "failed", "incomplete", "error_event"])
def test_terminal_streams_get_exactly_one_ending(name):
    evs = stream_events(name, drop=False, error=CUT)
    endings = [e for e in evs if e.type in ("response.completed", "response.incomplete",
                                             "response.failed", "error")]
    assert len(endings) == 1


def test_second_terminal_event_is_not_forwarded():
    transform = ResponsesStream(drop_codex_events=False)
    done = encode("response.completed", {"type": "response.completed", "response": {"id": "r"}})
    first = frame(transform.feed(SSEParser().feed(done)))
    assert first == done
    assert transform.feed(SSEParser().feed(done)) == []
    assert transform.finish(CUT) == []


def test_stream_headers():
    status, headers = ResponsesStream(True).start(200, {"content-type": "text/event-stream",
                                                        "content-length": "5", "x-request-id": "1"})
    assert status == 200 and headers == {"content-type": "text/event-stream", "x-request-id": "1"}


# --- aggregate -------------------------------------------------------------------------------

def test_aggregate_rebuilds_empty_completed_output():
    transform = ResponsesAggregate()
    _, headers = transform.start(200, {"content-type": "text/event-stream"})
    assert headers["content-type"] == "application/json"
    body = json.loads(drive(transform, [golden("reasoning")], None))
    assert body["object"] == "response" and body["status"] == "completed" and body["id"] == "resp_reason01"
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    assert body["output"][0]["encrypted_content"] == "gAAAAABpre-FULL-ENCRYPTED"
    assert body["output"][1]["content"][0]["text"] == "2 + 2 = 4"
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 64


def test_aggregate_keeps_upstream_output_when_present():
    body = json.loads(drive(ResponsesAggregate(), [golden("parallel_tools")], None))
    assert [item.get("call_id") for item in body["output"]] == [None, "call_A", "call_B"]


def test_aggregate_incomplete():
    body = json.loads(drive(ResponsesAggregate(), [golden("incomplete")], None))
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("name, status", [("failed", 400), ("error_event", 429), ("cut", 502)])
def test_aggregate_failures(name, status):
    transform = ResponsesAggregate()
    body = json.loads(drive(transform, [golden(name)], CUT if name == "cut" else None))
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert transform.error.status == status


# --- any chunking gives the same answer ------------------------------------------------------

def _split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    return [raw[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(FIXTURES), cuts=st.lists(st.integers(0, 6000), max_size=25),
       mode=st.sampled_from(["keep", "drop", "aggregate"]))
def test_any_chunking_gives_the_same_output(name, cuts, mode):
    raw = golden(name)
    def run(chunks):
        transform = ResponsesAggregate() if mode == "aggregate" else ResponsesStream(mode == "drop")
        return drive(transform, chunks, CUT)
    assert run(_split(raw, cuts)) == run([raw])


def test_sdk_stream_fills_an_empty_completed_output():
    evs = stream_events("reasoning", drop=True)
    completed = json.loads(evs[-1].data)
    assert completed["type"] == "response.completed"
    assert [item["id"] for item in completed["response"]["output"]] == ["rs_01", "msg_reason01"]
    assert completed["response"]["usage"]["total_tokens"] == 150


def test_codex_stream_is_left_as_the_upstream_sent_it():
    evs = stream_events("reasoning", drop=False)
    assert json.loads(evs[-1].data)["response"]["output"] == []
