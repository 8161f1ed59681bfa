"""The real Claude Code (npm @anthropic-ai/claude-code) through the proxy, as a user wires it:
ANTHROPIC_BASE_URL = the proxy, ANTHROPIC_API_KEY = a platform key, `--model gpt-5.5`.

It runs with a HOME and config dir of its own and every switch that stops it calling out
(telemetry, error reporting, auto-update, non-essential traffic): there is no internet here and
it must neither hang on it nor phone home from a developer's machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest


from tests.npmclients import claude_code
from tests.fakeupstream import B

pytestmark = pytest.mark.client

def run_claude(proxy, tmp_path: Path, prompt: str, *args: str, model: str | None = "gpt-5.5",
               base_url: str | None = None, name: str = "claude") -> subprocess.CompletedProcess:
    """Claude Code -p at the proxy (or at `base_url` with a dummy key), HOME in tmp_path/<name>-home."""
    return claude_code(tmp_path / f"{name}-home", tmp_path / f"{name}-work", "-p", prompt,
                       *(["--model", model] if model else []), *args, base_url=base_url or proxy.url,
                       api_key="sk-ant-direct-dummy" if base_url else proxy.key)


def check_converted(body: dict) -> None:
    """The README's "What each request field becomes" mapping applied to what Claude Code sends."""
    assert body["model"] == "gpt-5.5"
    assert body["stream"] is True and body["store"] is False
    items = body["input"]
    assert items and all(i.get("type") in ("message", "function_call", "function_call_output") for i in items)
    assert items[0]["role"] == "developer"  # its system blocks
    assert all(i["role"] in ("developer", "user", "assistant") for i in items if i["type"] == "message")
    names = [t.get("name") for t in body["tools"]]
    assert "Bash" in names
    for tool in body["tools"]:  # flattened: no input_schema, no nesting under "function"
        assert tool["type"] == "function" and isinstance(tool.get("parameters"), dict)
        assert "input_schema" not in tool and "function" not in tool
    assert body["reasoning"]["effort"] in ("low", "medium", "high", "xhigh")


def test_claude_code_says_hello(proxy, fake, tmp_path):
    fake.set_default(proxy.fake_accounts[0], B.ok(text="Hello from the pool", deltas=4))
    result = run_claude(proxy, tmp_path, "say hello")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip() == "Hello from the pool"
    assert fake.requests, "nothing reached the upstream"
    seen = fake.requests[-1]
    check_converted(seen.json)
    assert any(i["role"] == "user" and "say hello" in json.dumps(i) for i in seen.json["input"] if i["type"] == "message")
    assert seen.headers["authorization"] == f"Bearer {proxy.fake_accounts[0].access_token}"
    assert not any(k.startswith(("anthropic", "x-api-key", "x-stainless")) for k in seen.headers)
    rows = proxy.cli_json("logs")
    assert rows[0]["status"] == 200 and rows[0]["protocol"] == "anthropic"


def test_claude_code_session_reaches_the_upstream(proxy, fake, tmp_path):
    """wire.py: "a session_id is added from the body's prompt_cache_key when the client sent no
    session" -- the converted body has one (from Claude Code's metadata.user_id), so the
    upstream must get it as the session (prompt-cache hits, one account per conversation)."""
    fake.set_default(proxy.fake_accounts[0], B.ok(text="Hi"))
    result = run_claude(proxy, tmp_path, "say hello")
    assert result.returncode == 0, result.stderr[-2000:]
    seen = fake.requests[-1]
    key = seen.json.get("prompt_cache_key")
    assert key, "the converted body carries no prompt_cache_key"
    sessions = {h: seen.headers.get(h) for h in ("session_id", "session-id")}
    assert key in sessions.values(), f"prompt_cache_key {key!r} but upstream session headers {sessions}"


def test_claude_code_runs_a_tool(proxy, fake, tmp_path):
    acct = proxy.fake_accounts[0]
    fake.script(acct, B.tool_call(name="Bash", arguments=json.dumps({"command": "echo cc-tool-ok", "description": "Print a marker"})),
                B.ok(text="The command printed cc-tool-ok"))
    result = run_claude(proxy, tmp_path, "run echo cc-tool-ok", "--allowedTools", "Bash")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip() == "The command printed cc-tool-ok"
    assert len(fake.requests) == 2
    first, second = fake.requests[-2].json, fake.requests[-1].json
    check_converted(first)
    check_converted(second)
    call = next(i for i in second["input"] if i["type"] == "function_call")
    output = next(i for i in second["input"] if i["type"] == "function_call_output")
    assert call["name"] == "Bash" and json.loads(call["arguments"])["command"] == "echo cc-tool-ok"
    assert output["call_id"] == call["call_id"]
    assert "cc-tool-ok" in output["output"]  # Claude Code really ran it
    assert second["input"].index(call) < second["input"].index(output)
    assert first["prompt_cache_key"] == second["prompt_cache_key"]  # one conversation
