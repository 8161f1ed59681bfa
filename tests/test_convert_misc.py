"""Legacy completions and the model lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexproxy.exchange import GatewayError
from codexproxy.sse import SSEParser
from codexproxy_plugins.adapter.chat import chat_to_responses
from codexproxy.pipeline import run_transform as drive
from codexproxy_plugins.adapter.completions import (CompletionsAggregate, CompletionsStream,
                                                    completions_to_chat)
from codexproxy_plugins.adapter.modellist import (anthropic_model_list, openai_model_list,
                                               slugs_from_upstream)

GOLDEN = Path(__file__).parent / "golden"
FIXTURES = sorted(p.stem for p in GOLDEN.glob("*.sse"))
CUT = GatewayError(502, "upstream stream cut", type="server_error", code="stream_cut")


def golden(name: str) -> bytes:
    return (GOLDEN / f"{name}.sse").read_bytes()


def stream(name: str, error: GatewayError | None = None) -> list:
    out = drive(CompletionsStream("gpt-5.5", include_usage=True, created=5, completion_id="cmpl-1"),
                [golden(name)], error)
    return [json.loads(e.data) if e.data != "[DONE]" else e.data for e in SSEParser().feed(out)]


# --- completions -----------------------------------------------------------------------------

def test_completions_to_chat():
    chat = completions_to_chat({"model": "gpt-5.5(low)", "prompt": "Say hi", "max_tokens": 5,
                                "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}, "logprobs": None})
    assert chat == {"model": "gpt-5.5(low)", "stream": True, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "Say hi"}]}
    upstream = chat_to_responses(chat)
    assert upstream["model"] == "gpt-5.5" and upstream["reasoning"]["effort"] == "low"
    assert upstream["input"] == [{"type": "message", "role": "user",
                                  "content": [{"type": "input_text", "text": "Say hi"}]}]


@pytest.mark.parametrize("field, value", [("logprobs", 2), ("echo", True), ("suffix", "end"), ("best_of", 3),
                                          ("n", 2), ("frobnicate", 1)])
def test_completions_fields_without_an_equivalent_are_refused_by_name(field, value):
    with pytest.raises(GatewayError) as info:
        completions_to_chat({"model": "m", "prompt": "x", field: value})
    assert info.value.status == 400 and info.value.param == field and field in info.value.message


def test_completions_prompt_list():
    assert completions_to_chat({"model": "m", "prompt": ["a", "b"]})["messages"][0]["content"] == "a\n\nb"


@pytest.mark.parametrize("body", [{"model": "m"}, {"model": "m", "prompt": [1, 2]},
                                  {"model": "m", "prompt": []}, {"model": "m", "prompt": 3}])
def test_completions_prompt_validation(body):
    with pytest.raises(GatewayError) as info:
        completions_to_chat(body)
    assert info.value.status == 400 and info.value.param == "prompt"


def test_completions_stream_golden():
    chunks = stream("reasoning")
    assert chunks[-1] == "[DONE]"
    texts = [c for c in chunks if isinstance(c, dict) and c.get("choices")]
    assert all(c["object"] == "text_completion" and c["id"] == "cmpl-1" and c["created"] == 5 for c in texts)
    assert "".join(c["choices"][0]["text"] for c in texts) == "2 + 2 = 4"  # no reasoning in text
    assert texts[-1]["choices"][0] == {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"] == {"prompt_tokens": 120, "completion_tokens": 30,
                                                                   "total_tokens": 150}


def test_completions_stream_errors():
    chunks = stream("cut", error=CUT)
    assert chunks[-2] == CUT.openai_body() and chunks[-1] == "[DONE]"
    chunks = stream("incomplete")
    assert [c for c in chunks if isinstance(c, dict) and c.get("choices")][-1]["choices"][0]["finish_reason"] == "length"


def test_completions_aggregate():
    transform = CompletionsAggregate("gpt-5.5", created=5, completion_id="cmpl-1")
    body = json.loads(drive(transform, [golden("text")], None))
    assert body == {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "gpt-5.5",
                    "choices": [{"text": "Hello, world! Ünïcode ✓", "index": 0, "logprobs": None,
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}
    transform = CompletionsAggregate("gpt-5.5", created=5, completion_id="cmpl-1")
    body = json.loads(drive(transform, [golden("failed")], None))
    assert body["error"]["code"] == "context_length_exceeded" and transform.error.status == 400


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(FIXTURES), cuts=st.lists(st.integers(0, 6000), max_size=25),
       stream_mode=st.booleans())
def test_any_chunking_gives_the_same_output(name, cuts, stream_mode):
    raw = golden(name)
    points = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    def run(chunks):
        transform = (CompletionsStream("m", True, 1, "c") if stream_mode
                     else CompletionsAggregate("m", 1, "c"))
        return drive(transform, chunks, CUT)
    assert run([raw[a:b] for a, b in zip(points, points[1:])]) == run([raw])


# --- models ----------------------------------------------------------------------------------

def test_slugs_from_chatgpt_format():
    payload = {"models": [{"slug": "gpt-5.5", "display_name": "GPT-5.5"}, {"slug": "gpt-5-codex"},
                          {"slug": "gpt-5.5"}, {"name": "no slug"}, "junk"]}
    assert slugs_from_upstream(payload) == ["gpt-5.5", "gpt-5-codex"]


def test_slugs_from_openai_format_and_garbage():
    assert slugs_from_upstream({"object": "list", "data": [{"id": "gpt-4.1"}, {"id": ""}]}) == ["gpt-4.1"]
    assert slugs_from_upstream(None) == [] and slugs_from_upstream({"models": "x"}) == []


def test_openai_model_list():
    body = openai_model_list(["gpt-5.5", "gpt-5-codex"])
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["gpt-5.5", "gpt-5-codex"]
    for model in body["data"]:
        assert model["object"] == "model" and model["owned_by"] == "openai"
        assert isinstance(model["created"], int)


def test_anthropic_model_list():
    body = anthropic_model_list(["gpt-5.5", "gpt-5-codex"])
    assert body["has_more"] is False
    assert body["first_id"] == "gpt-5.5" and body["last_id"] == "gpt-5-codex"
    assert body["data"][0] == {"type": "model", "id": "gpt-5.5", "display_name": "gpt-5.5",
                               "created_at": body["data"][0]["created_at"]}
    assert body["data"][0]["created_at"].endswith("Z")
    empty = anthropic_model_list([])
    assert empty == {"data": [], "has_more": False, "first_id": None, "last_id": None}


# --- the official SDKs read what the converters produce (mock transport, no network) ---------

def _sdk_client(cls, body: bytes, content_type: str):
    """An SDK client whose every request is answered with `body`."""
    try:  # newer SDKs ship their own fork of httpx and reject plain httpx clients
        import httpx2 as hx
        cls(api_key="x", base_url="http://test", http_client=hx.Client())
    except (ImportError, TypeError):
        import httpx as hx
    transport = hx.MockTransport(lambda request: hx.Response(200, content=body,
                                                              headers={"content-type": content_type}))
    return cls(api_key="x", base_url="http://test", max_retries=0,
               http_client=hx.Client(transport=transport))


def test_anthropic_sdk_reads_the_stream_and_the_message():
    anthropic = pytest.importorskip("anthropic")
    from codexproxy_plugins.adapter.anthropic import AnthropicAggregate, AnthropicStream
    out = drive(AnthropicStream("claude-x", "msg_1"), [golden("parallel_tools")])
    client = _sdk_client(anthropic.Anthropic, out, "text/event-stream")
    with client.messages.stream(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == "codexproxy.reasoning.v1:gAAAAABpre-FULL-ENCRYPTED"
    assert [(b.name, b.input) for b in final.content[1:]] == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    assert final.usage.cache_read_input_tokens == 256
    out = drive(AnthropicAggregate("claude-x", "msg_1"), [golden("reasoning")])
    client = _sdk_client(anthropic.Anthropic, out, "application/json")
    final = client.messages.create(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[1].text == "2 + 2 = 4"


def test_openai_sdk_reads_chat_and_responses_streams():
    openai = pytest.importorskip("openai")
    from codexproxy_plugins.adapter.chat import ChatAggregate, ChatStream
    from codexproxy_plugins.adapter.responses import ResponsesStream
    out = drive(ChatStream("gpt-5.5", True, 1, "c"), [golden("parallel_tools")])
    client = _sdk_client(openai.OpenAI, out, "text/event-stream")
    with client.chat.completions.stream(model="gpt-5.5", messages=[{"role": "user", "content": "hi"}]) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == \
        [("call_A", "get_weather", '{"city":"Paris"}'), ("call_B", "get_time", '{"tz":"CET"}')]
    assert final.usage.prompt_tokens_details.cached_tokens == 256
    out = drive(ChatAggregate("gpt-5.5", 1, "c"), [golden("reasoning")])
    client = _sdk_client(openai.OpenAI, out, "application/json")
    completion = client.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "2 + 2 = 4"
    out = drive(ResponsesStream(drop_codex_events=True), [golden("reasoning")])
    client = _sdk_client(openai.OpenAI, out, "text/event-stream")
    with client.responses.stream(model="gpt-5.5", input="hi") as s:
        response = s.get_final_response()
    assert response.output_text == "2 + 2 = 4"  # filled although completed.output was empty


def test_openai_sdk_raises_on_a_cut_chat_stream():
    openai = pytest.importorskip("openai")
    out = drive(CompletionsStream("m", False, 1, "c"), [golden("cut")], CUT)
    client = _sdk_client(openai.OpenAI, out, "text/event-stream")
    with pytest.raises(openai.APIError, match="upstream stream cut"):
        for _ in client.completions.create(model="m", prompt="hi", stream=True):
            pass
