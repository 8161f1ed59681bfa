"""Claude Code and SDK apps as first-class clients (issue #12): one conversation stays on one
account (its session becomes the upstream session and the routing binding), and the upstream's
encrypted reasoning survives tool steps (carried in the thinking block's signature)."""

from __future__ import annotations

import json
from collections import Counter

import anthropic
import httpx
import openai
import pytest

from tests.fakeupstream import B
from tests.test_models_aliases import claude_code

pytestmark = pytest.mark.client

BALANCED = {"plugins": {"routing": {"strategy": "balanced"}}}


def reasoning_then_call(encrypted: str, name: str, arguments: dict) -> B:
    """One upstream answer: a reasoning item with encrypted content, then a function call."""
    resp = {"id": "resp_step1", "object": "response", "status": "in_progress", "model": "gpt-5.5", "output": []}
    reasoning = {"id": "rs_step1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Use the tool."}],
                 "encrypted_content": encrypted}
    call = {"id": "fc_step1", "type": "function_call", "status": "completed", "call_id": "call_step1", "name": name,
            "arguments": json.dumps(arguments)}
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 15}
    return B.events([
        ("response.created", {"response": resp}),
        ("response.output_item.added", {"output_index": 0, "item": {**reasoning, "summary": [], "encrypted_content": None}}),
        ("response.reasoning_summary_part.added", {"output_index": 0, "item_id": "rs_step1", "summary_index": 0,
                                                   "part": {"type": "summary_text", "text": ""}}),
        ("response.reasoning_summary_text.delta", {"output_index": 0, "item_id": "rs_step1", "summary_index": 0,
                                                   "delta": "Use the tool."}),
        ("response.output_item.done", {"output_index": 0, "item": reasoning}),
        ("response.output_item.added", {"output_index": 1, "item": {**call, "arguments": "", "status": "in_progress"}}),
        ("response.function_call_arguments.done", {"output_index": 1, "item_id": "fc_step1", "arguments": call["arguments"]}),
        ("response.output_item.done", {"output_index": 1, "item": call}),
        ("response.completed", {"response": {**resp, "status": "completed", "output": [reasoning, call], "usage": usage}}),
    ])


# --- affinity --------------------------------------------------------------------------------

def test_four_claude_code_turns_stay_on_one_account(make_proxy, fake, tmp_path):
    proxy = make_proxy(BALANCED, accounts=2)
    for acct in proxy.fake_accounts:
        fake.set_default(acct, B.ok(text="ok"))
    home = tmp_path / "home"
    for n, args in enumerate([("-p", "turn one")] + [("--continue", "-p", f"turn {n}") for n in (2, 3, 4)]):
        result = claude_code(proxy, home, *args, "--model", "gpt-5.5")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    main = [r for r in fake.requests if any("turn" in json.dumps(i) for i in r.json["input"] if i.get("role") == "user")]
    assert len(main) >= 4
    assert len({r.account_id for r in fake.requests}) == 1, Counter(r.account_id for r in fake.requests)
    sessions = {r.headers.get("session_id") for r in fake.requests}
    assert len(sessions) == 1 and None not in sessions
    assert {r.json["prompt_cache_key"] for r in fake.requests} == sessions  # cache key = session


def test_sessions_of_sdk_clients_choose_the_binding(make_proxy, fake):
    """Without any session header: metadata.user_id (Anthropic) and user / prompt_cache_key (chat)
    keep a conversation on one account; two conversations are spread by the strategy."""
    proxy = make_proxy(BALANCED, accounts=2)
    for acct in proxy.fake_accounts:
        fake.set_default(acct, B.ok(text="ok"))
    claude = anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key, max_retries=0, timeout=30)
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)

    def accounts(send, n=4) -> set[str]:
        start = len(fake.requests)
        for _ in range(n):
            send()
        return {r.account_id for r in fake.requests[start:]}

    one = accounts(lambda: claude.messages.create(model="gpt-5.5", max_tokens=10, metadata={"user_id": "session-A"},
                                                  messages=[{"role": "user", "content": "x"}]))
    assert len(one) == 1
    header = accounts(lambda: httpx.post(proxy.url + "/v1/messages", timeout=30, json={
        "model": "gpt-5.5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": proxy.key, "anthropic-version": "2023-06-01", "x-claude-code-session-id": "cc-B"}))
    assert len(header) == 1
    user = accounts(lambda: oai.chat.completions.create(model="gpt-5.5", user="end-user-C",
                                                        messages=[{"role": "user", "content": "x"}]))
    assert len(user) == 1
    sent = fake.requests[-1]
    assert sent.json["prompt_cache_key"] == sent.headers["session_id"] and "end-user-C" not in sent.json["prompt_cache_key"]
    cache_key = accounts(lambda: oai.chat.completions.create(model="gpt-5.5", prompt_cache_key="conversation-D",
                                                             messages=[{"role": "user", "content": "x"}]))
    assert len(cache_key) == 1 and fake.requests[-1].headers["session_id"] == "conversation-D"
    session_header = accounts(lambda: oai.chat.completions.create(model="gpt-5.5", extra_headers={"session-id": "conversation-E"},
                                                                  messages=[{"role": "user", "content": "x"}]))
    assert len(session_header) == 1 and fake.requests[-1].json["prompt_cache_key"] == "conversation-E"
    # the control: no session at all, and balanced spreads the same requests over both accounts
    spread = accounts(lambda: oai.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "x"}]))
    assert len(spread) == 2


# --- reasoning across tool steps ----------------------------------------------------------------

def test_encrypted_reasoning_comes_back_on_the_tool_step(proxy, fake):
    acct = proxy.fake_accounts[0]
    fake.script(acct, reasoning_then_call("enc_first_step", "get_weather", {"city": "Paris"}), B.ok(text="Sunny."))
    claude = anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key, max_retries=0, timeout=30)
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    with claude.messages.stream(model="gpt-5.5", max_tokens=100, thinking={"type": "adaptive"}, tools=tools,
                                messages=ask) as stream:
        step1 = stream.get_final_message()
    assert fake.requests[-1].json["include"] == ["reasoning.encrypted_content"]
    thinking, call = step1.content
    assert thinking.type == "thinking" and thinking.thinking == "Use the tool."
    assert thinking.signature.endswith("enc_first_step") and thinking.signature != "enc_first_step"
    assert call.type == "tool_use" and call.input == {"city": "Paris"}

    history = ask + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in step1.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
    final = claude.messages.create(model="gpt-5.5", max_tokens=100, thinking={"type": "adaptive"}, tools=tools,
                                   messages=history)
    assert final.content[-1].text == "Sunny."
    items = fake.requests[-1].json["input"]
    kinds = [i["type"] for i in items]
    assert kinds == ["message", "reasoning", "function_call", "function_call_output"]
    assert items[1]["encrypted_content"] == "enc_first_step"
    assert items[1]["summary"] == [{"type": "summary_text", "text": "Use the tool."}]

    # a signature the proxy did not issue is left out, not an error
    history[1]["content"][0]["signature"] = "EqQBCkgIARABGAIiQL-anthropic-own-signature"
    claude.messages.create(model="gpt-5.5", max_tokens=100, tools=tools, messages=history)
    assert [i["type"] for i in fake.requests[-1].json["input"]] == ["message", "function_call", "function_call_output"]


def test_claude_code_tool_step_carries_the_reasoning(proxy, fake, tmp_path):
    acct = proxy.fake_accounts[0]
    fake.script(acct, reasoning_then_call("enc_cc_step", "Bash", {"command": "echo cc-ok", "description": "marker"}),
                B.ok(text="done"))
    result = claude_code(proxy, tmp_path / "home", "-p", "run echo cc-ok", "--model", "gpt-5.5", "--allowedTools", "Bash")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    step2 = [r.json for r in fake.requests if any(i.get("type") == "function_call_output" for i in r.json["input"])]
    assert step2, [r.json["input"] for r in fake.requests]
    items = step2[-1]["input"]
    reasoning = [i for i in items if i["type"] == "reasoning"]
    assert [r["encrypted_content"] for r in reasoning] == ["enc_cc_step"]
    assert items.index(reasoning[0]) < next(i for i, it in enumerate(items) if it["type"] == "function_call")


def test_chat_client_tool_step_carries_the_reasoning(proxy, fake):
    """The openai SDK keeps unknown message fields: reasoning_details goes back as received."""
    fake.script(proxy.fake_accounts[0], reasoning_then_call("enc_chat_step", "get_weather", {"city": "Paris"}),
                B.ok(text="Sunny."))
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = oai.chat.completions.create(model="gpt-5.5(medium)", messages=ask, tools=tools)
    message = first.choices[0].message
    assert message.model_extra["reasoning_details"][0]["data"].endswith("enc_chat_step")
    call = message.tool_calls[0]
    oai.chat.completions.create(model="gpt-5.5(medium)", tools=tools, messages=ask + [
        message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    items = fake.requests[-1].json["input"]
    assert [i["type"] for i in items] == ["message", "reasoning", "function_call", "function_call_output"]
    assert items[1]["encrypted_content"] == "enc_chat_step"


def test_a_streaming_chat_client_naming_no_effort_still_carries_the_reasoning(proxy, fake):
    """No reasoning_effort and no suffix: the backend's default effort, and the encrypted
    reasoning still asked for and carried to the tool step (reasoning_details in a stream delta)."""
    fake.script(proxy.fake_accounts[0], reasoning_then_call("enc_streamed", "get_weather", {"city": "Paris"}),
                B.ok(text="Sunny."))
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    details, calls = [], {}
    for chunk in oai.chat.completions.create(model="gpt-5.5", messages=ask, tools=tools, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        details += (delta.model_extra or {}).get("reasoning_details") or []
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": call.id, "type": "function", "function": {"name": "", "arguments": ""}})
            entry["function"]["name"] += call.function.name or ""
            entry["function"]["arguments"] += call.function.arguments or ""
    first = fake.requests[-1].json
    assert "reasoning" not in first and first["include"] == ["reasoning.encrypted_content"]
    assert details and details[0]["data"].endswith("enc_streamed")
    assistant = {"role": "assistant", "content": None, "tool_calls": list(calls.values()), "reasoning_details": details}
    oai.chat.completions.create(model="gpt-5.5", tools=tools, messages=ask + [
        assistant, {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"}])
    items = fake.requests[-1].json["input"]
    assert [i["type"] for i in items] == ["message", "reasoning", "function_call", "function_call_output"]
    assert items[1]["encrypted_content"] == "enc_streamed"
