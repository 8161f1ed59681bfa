"""The real Codex CLI (0.169) over the proxy's WebSocket transport: a custom provider with
`supports_websockets = true`, and the built-in provider pointed at the proxy with
`openai_base_url`. A failed upgrade would cost ~6 s of "Reconnecting... n/5" and then
"Falling back from WebSockets to HTTPS transport" (codexproxy/codexconfig.py)."""

from __future__ import annotations

import json

import pytest

from tests.fakeupstream import B
from tests.npmclients import codex_exec

pytestmark = pytest.mark.client

TOOL_FLAGS = ("--sandbox", "danger-full-access", "-c", "approval_policy=never")


def custom_provider(proxy) -> tuple[tuple[str, ...], dict[str, str]]:
    provider = (f'model_providers.codexproxy={{name="codexproxy",base_url="{proxy.url}/v1",'
                f'env_key="CODEXPROXY_API_KEY",wire_api="responses",supports_websockets=true}}')
    return ("-c", "model_provider=codexproxy", "-c", provider), {"CODEXPROXY_API_KEY": proxy.key}


def builtin_provider(proxy) -> tuple[tuple[str, ...], dict[str, str]]:
    # The built-in provider takes its API key from CODEX_API_KEY (not OPENAI_API_KEY).
    return ("-c", f'openai_base_url="{proxy.url}/v1"'), {"CODEX_API_KEY": proxy.key}


PROVIDERS = {"custom-provider": custom_provider, "builtin-provider": builtin_provider}


def run(proxy, tmp_path, how: str, *args: str):
    flags, env = PROVIDERS[how](proxy)
    return codex_exec(tmp_path, *flags, "-m", "gpt-5-codex", *args, env=env)


def assert_all_over_websocket(result, proxy) -> list[dict]:
    shown = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reconnecting" not in shown and "Falling back" not in shown, result.stderr[-3000:]
    rows = proxy.cli_json("logs")
    assert rows and all(row.get("transport") == "websocket" for row in rows), rows
    return rows


@pytest.mark.parametrize("how", PROVIDERS)
def test_a_plain_turn_goes_over_the_websocket(proxy, fake, tmp_path, how):
    acct = proxy.fake_accounts[0]
    fake.set_default(acct, B.ok(text="Hello over the socket", deltas=4))
    result = run(proxy, tmp_path, how, "say hello")
    rows = assert_all_over_websocket(result, proxy)
    assert "Hello over the socket" in result.stdout
    assert rows[0]["status"] == 200 and rows[0]["key_name"] == "test"
    seen = fake.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {acct.access_token}"
    assert seen.headers["originator"] == "codex_exec"
    assert seen.json["input"][-1]["content"][0]["text"] == "say hello"
    assert "previous_response_id" not in seen.json and "generate" not in seen.json


@pytest.mark.parametrize("how", PROVIDERS)
def test_a_tool_turn_goes_over_the_websocket(proxy, fake, tmp_path, how):
    # Codex sends the tool's output as the only new item with previous_response_id: the
    # upstream must still get the whole conversation, the function call included.
    acct = proxy.fake_accounts[0]
    fake.script(acct, B.tool_call(name="exec_command", arguments=json.dumps({"cmd": "echo ws-tool-ok"})),
                B.ok(text="The command printed it"))
    result = run(proxy, tmp_path, how, *TOOL_FLAGS, "run echo")
    assert_all_over_websocket(result, proxy)
    assert "The command printed it" in result.stdout
    assert len(fake.requests) == 2
    first, second = (rec.json["input"] for rec in fake.requests)
    assert second[:len(first)] == first
    calls = [i for i in second if i.get("type") == "function_call"]
    outputs = [i for i in second if i.get("type") == "function_call_output"]
    assert calls and outputs and outputs[0]["call_id"] == calls[0]["call_id"]
    assert "ws-tool-ok" in json.dumps(outputs[0])
    assert {rec.account_id for rec in fake.requests} == {acct.account_id}


def test_codex_over_the_websocket_survives_an_exhausted_account(make_proxy, fake, tmp_path):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.set_default(first, B.usage_limit(resets_in=3600))
    fake.set_default(second, B.ok(text="Served by the second account"))
    result = run(proxy, tmp_path, "custom-provider", "say hello")
    rows = assert_all_over_websocket(result, proxy)
    assert "Served by the second account" in result.stdout
    assert any([a["status"] for a in row["attempts"]] == [429, 200] for row in rows), rows
