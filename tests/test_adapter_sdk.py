"""The real openai and anthropic SDKs (and curl-like httpx calls) through the running proxy."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.conftest import read_sse, wait_for
from tests.fakeupstream import B

pytestmark = pytest.mark.client


@pytest.fixture
def oai(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)


@pytest.fixture
def claude(proxy):
    return anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key, max_retries=0, timeout=30)


def upstream_body(fake):
    return fake.requests[-1].json


# --- OpenAI Chat Completions -------------------------------------------------------------------

def test_chat_non_stream(oai, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.ok(text="Hello there", deltas=3))
    r = oai.chat.completions.create(model="gpt-5.5", messages=[{"role": "system", "content": "be brief"},
                                                              {"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    sent = upstream_body(fake)
    assert sent["stream"] is True and sent["store"] is False
    assert sent["input"][0]["role"] == "developer"
    assert sent["input"][1]["content"][0] == {"type": "input_text", "text": "hi"}


def test_chat_stream_with_usage_and_effort_suffix(oai, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.reasoning(summary="Let me think.", text="Done", deltas=2))
    chunks = list(oai.chat.completions.create(model="gpt-5.5(high)", messages=[{"role": "user", "content": "x"}],
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert text == "Done" and "think" in reasoning
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    sent = upstream_body(fake)
    assert sent["model"] == "gpt-5.5" and sent["reasoning"]["effort"] == "high"
    row = proxy.cli_json("logs")[0]
    assert row["protocol"] == "chat" and row["effort"] == "high"


def test_chat_tool_call_round_trip(oai, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.tool_call(name="get_weather", arguments='{"city": "Paris"}'), B.ok(text="Sunny"))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "weather in Paris?"}]
    first = oai.chat.completions.create(model="gpt-5.5", messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    second = oai.chat.completions.create(model="gpt-5.5", messages=messages, tools=tools)
    assert second.choices[0].message.content == "Sunny"
    items = upstream_body(fake)["input"]
    kinds = [i.get("type") for i in items]
    assert "function_call" in kinds and "function_call_output" in kinds
    assert kinds.index("function_call") < kinds.index("function_call_output")
    assert upstream_body(fake)["tools"][0]["name"] == "get_weather"


def test_chat_streamed_parallel_tool_calls(oai, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.tool_call(parallel=True))
    chunks = list(oai.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "x"}], stream=True,
                                              tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]))
    calls: dict[int, dict] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            entry["id"] = entry["id"] or tc.id
            entry["name"] = entry["name"] or (tc.function.name if tc.function else None)
            entry["args"] += (tc.function.arguments or "") if tc.function else ""
    assert sorted(calls) == [0, 1]
    assert [json.loads(calls[i]["args"])["city"] for i in (0, 1)] == ["Paris", "Tokyo"]
    assert all(calls[i]["id"] and calls[i]["name"] == "get_weather" for i in (0, 1))


def test_chat_errors_are_sdk_exceptions(oai, proxy, fake):
    bad = openai.OpenAI(base_url=proxy.url + "/v1", api_key="cpk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "x"}])
    fake.script(proxy.fake_accounts[0], B.usage_limit(resets_in=120))
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "x"}])
    retry_after = int(info.value.response.headers["retry-after"])
    assert 100 <= retry_after <= 121
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="gpt-5.5", messages=[{"role": "wizard", "content": "x"}])
    assert "messages[0].role" in str(info.value)


def test_chat_stream_failure_midway_is_an_error(oai, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.cut(after_events=5))
    with proxy.client() as client:
        with client.stream("POST", "/v1/chat/completions", headers=proxy.auth,
                           json={"model": "gpt-5.5", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
            events = read_sse(r)
    data = [e[2] for e in events]
    assert data[-1] == "[DONE]"
    assert "error" in json.loads(data[-2])
    assert not any('"finish_reason":"stop"' in d for d in data)


def test_legacy_completions(oai, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.ok(text="Once upon", deltas=2))
    r = oai.completions.create(model="gpt-5.5", prompt="Tell me a story")
    assert r.choices[0].text == "Once upon"
    assert upstream_body(fake)["input"][0]["content"][0]["text"] == "Tell me a story"


# --- OpenAI Responses API (non-Codex SDK clients) ------------------------------------------

def test_responses_sdk_non_stream_rebuilds_empty_output(oai, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.ok(text="Rebuilt", empty_output=True))
    r = oai.responses.create(model="gpt-5-codex", input="hi", temperature=0.5, max_output_tokens=50)
    assert r.output_text == "Rebuilt"
    sent = upstream_body(fake)
    assert "temperature" not in sent and "max_output_tokens" not in sent
    assert sent["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]


def test_responses_sdk_stream_drops_codex_events(oai, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.ok(text="Hi!", rate_limits=True))
    events = list(oai.responses.create(model="gpt-5-codex", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert not any(t.startswith("codex.") for t in types)


def test_codex_client_gets_codex_events(proxy, fake):
    fake.script(proxy.fake_accounts[0], B.ok(rate_limits=True))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", headers={**proxy.auth, "originator": "codex_cli_rs"},
                           json={"model": "gpt-5-codex", "stream": True, "input": "hi"}) as r:
            kinds = [e[1] for e in read_sse(r)]
    assert kinds[0] == "codex.rate_limits"


def test_key_bound_model_and_effort_override(make_proxy, fake):
    proxy = make_proxy(key=False)
    proxy.key = proxy.create_key("bound", "--model", "gpt-5-codex", "--effort", "low")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0)
    client.chat.completions.create(model="gpt-5.5(high)", messages=[{"role": "user", "content": "x"}])
    sent = upstream_body(fake)
    assert sent["model"] == "gpt-5-codex" and sent["reasoning"]["effort"] == "low"


def pool_ids(entries) -> list[str]:
    """The model ids of a /v1/models answer without the aliases listed beside them."""
    return [m["id"] for m in entries if not m.get("alias_for")]


def test_models_in_both_formats(proxy, fake, oai):
    ids = pool_ids(m.model_dump() for m in oai.models.list())
    # The configured fallback list until the keepalive job fetched the upstream's (it runs soon
    # after start, so either can be served here), and never anything else.
    assert ids in (["gpt-5.5", "gpt-5-codex", "gpt-5"], [m["slug"] for m in fake.models]), ids
    r = httpx.get(proxy.url + "/v1/models", headers={"x-api-key": proxy.key, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200
    assert {m["type"] for m in r.json()["data"]} == {"model"}
    assert pool_ids(r.json()["data"]) in (["gpt-5.5", "gpt-5-codex", "gpt-5"], [m["slug"] for m in fake.models])
    r = httpx.get(proxy.url + "/v1/models", headers={})
    assert r.status_code == 401


def test_models_come_from_upstream_after_keepalive(make_proxy, fake):
    proxy = make_proxy()
    upstream = [m["slug"] for m in fake.models]
    assert upstream != ["gpt-5.5", "gpt-5-codex", "gpt-5"]  # else this test could not tell them apart

    def served() -> list[str]:
        return pool_ids(httpx.get(proxy.url + "/v1/models", headers=proxy.auth, timeout=30).json()["data"])

    wait_for(lambda: served() == upstream, timeout=30, what="/v1/models to serve the upstream's list")


# --- Anthropic Messages --------------------------------------------------------------------

def test_anthropic_non_stream(claude, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.ok(text="Bonjour"))
    msg = claude.messages.create(model="gpt-5.5", max_tokens=100, system="be brief",
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Bonjour" and msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0


def test_anthropic_stream_text_and_thinking(claude, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.reasoning(summary="Pondering", text="Answer"))
    with claude.messages.stream(model="gpt-5.5", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                thinking={"type": "enabled", "budget_tokens": 2048}) as stream:
        final = stream.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds == ["thinking", "text"]
    assert final.content[1].text == "Answer" and "Ponder" in final.content[0].thinking
    assert upstream_body(fake)["reasoning"]["effort"] == "low"


def test_anthropic_tool_use_round_trip(claude, fake, proxy):
    fake.script(proxy.fake_accounts[0], B.tool_call(name="get_weather", arguments='{"city": "Paris"}'), B.ok(text="It is sunny"))
    tools = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = claude.messages.create(model="gpt-5.5", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "weather?"}])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.input == {"city": "Paris"}
    second = claude.messages.create(model="gpt-5.5", max_tokens=100, tools=tools, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "boom", "is_error": True}]},
    ])
    assert second.content[0].text == "It is sunny"
    items = upstream_body(fake)["input"]
    output = next(i for i in items if i.get("type") == "function_call_output")
    assert output["call_id"] == use.id and "boom" in output["output"]


def test_anthropic_errors(claude, proxy, fake):
    bad = anthropic.Anthropic(base_url=proxy.url, api_key="cpk-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="gpt-5.5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error"
    fake.script(proxy.fake_accounts[0], B.usage_limit(resets_in=60))
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="gpt-5.5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    r = httpx.post(proxy.url + "/v1/messages", headers={"x-api-key": proxy.key}, content=b"{not json")
    assert r.status_code == 400 and r.json()["type"] == "error"


def test_anthropic_count_tokens(claude):
    count = claude.messages.count_tokens(model="gpt-5.5", messages=[{"role": "user", "content": "hello " * 100}])
    assert count.input_tokens > 50


CLAUDE_CODE_BODY = {
    "model": "gpt-5.5",
    "max_tokens": 32000,
    "stream": True,
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
               {"type": "text", "text": "Env info"}, {"type": "text", "text": "More", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "A mid-conversation system note."},
        {"role": "user", "content": [{"type": "text", "text": "now"}]},
    ],
    "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
    "metadata": {"user_id": "user_abc_session_123"},
    "thinking": {"type": "adaptive"},
    "output_config": {"effort": "high"},
    "context_management": {"edits": []},
}


def test_claude_code_request_shape_is_accepted(proxy, fake):
    with proxy.client() as client:
        with client.stream("POST", "/v1/messages?beta=true", json=CLAUDE_CODE_BODY, headers={
            "x-api-key": proxy.key, "anthropic-version": "2023-06-01", "x-app": "cli",
            "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}) as r:
            assert r.status_code == 200
            events = read_sse(r)
    kinds = [e[1] for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds
    sent = upstream_body(fake)
    assert sent["reasoning"]["effort"] == "high"
    assert any(i.get("role") == "developer" and "mid-conversation" in json.dumps(i) for i in sent["input"])
    assert "anthropic" not in json.dumps(fake.requests[-1].headers).lower()


def test_anthropic_output_config_format_reaches_the_upstream_as_text_format(claude, fake, proxy):
    """Claude Code's title request asks for a JSON schema: the backend gets it as text.format,
    and the answer comes back as the text it wrote."""
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    fake.set_default(proxy.fake_accounts[0], B.ok(text='{"title": "Weather"}'))
    message = claude.messages.create(model="gpt-5.5", max_tokens=50, messages=[{"role": "user", "content": "name this"}],
                                     extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert json.loads(message.content[0].text) == {"title": "Weather"}
    assert fake.requests[-1].json["text"] == {"format": {"type": "json_schema", "name": "output", "schema": schema, "strict": False}}
    r = httpx.post(proxy.url + "/v1/messages", timeout=30, headers={"x-api-key": proxy.key, "anthropic-version": "2023-06-01"},
                   json={"model": "gpt-5.5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                         "output_config": {"format": {"type": "yaml"}}})
    assert r.status_code == 400 and "output_config.format" in r.json()["error"]["message"]
