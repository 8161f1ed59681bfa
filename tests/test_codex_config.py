"""`codexproxy codex-config` prints a config.toml block that the real Codex CLI (0.169) uses as it
is: through the proxy, over WebSockets, compacting remotely on a pool account under the provider
name "OpenAI" (codexproxy/codexconfig.py has what Codex requires for each)."""

from __future__ import annotations

import json
import tomllib

import pytest

from tests.fakeupstream import B
from tests.npmclients import codex_exec

pytestmark = pytest.mark.client

# Codex compacts once its context passes this many tokens; the fake upstream reports ~10k input
# tokens for an ordinary Codex request and the scripted first answer reports far more.
COMPACT_LIMIT = 50_000
BIG_USAGE = {"input_tokens": 100_000}


def tool_then_compaction(fake, acct, marker: str) -> None:
    """A tool call whose answer fills the context (Codex compacts before sending the tool's
    output back), then whatever comes next answers normally; the fake answers a request whose
    last input item is a compaction_trigger with one compaction item."""
    fake.script(acct, B.tool_call(name="exec_command", arguments=json.dumps({"cmd": f"echo {marker}"}), usage=BIG_USAGE))
    fake.set_default(acct, B.ok(text="Compacted and done"))


def assert_compacted_remotely(fake, marker: str) -> None:
    bodies = [rec.json for rec in fake.requests]
    triggers = [i for i, b in enumerate(bodies) if b["input"] and b["input"][-1] == {"type": "compaction_trigger"}]
    assert len(triggers) == 1, [[item.get("type") for item in b["input"]][-3:] for b in bodies]
    asked = fake.requests[triggers[0]]
    assert asked.headers.get("x-codex-beta-features") == "remote_compaction_v2"
    # the tool's output is in what was compacted, and the compaction item comes back intact
    assert marker in json.dumps(asked.json["input"])
    later = [item for b in bodies[triggers[0] + 1:] for item in b["input"] if item.get("type") == "compaction"]
    assert later and later[0]["encrypted_content"].startswith("enc_compaction_")


def test_codex_compacts_remotely_through_the_proxy_when_its_provider_is_named_openai(proxy, fake, tmp_path):
    # Over HTTP: what the name "OpenAI" in the printed block buys, whatever the transport.
    acct = proxy.fake_accounts[0]
    tool_then_compaction(fake, acct, "compact-http-ok")
    provider = (f'model_providers.codexproxy={{name="OpenAI",base_url="{proxy.url}/v1",'
                f'env_key="CODEXPROXY_API_KEY",wire_api="responses"}}')
    result = codex_exec(tmp_path, "-c", "model_provider=codexproxy", "-c", provider, "-m", "gpt-5-codex",
                        "-c", f"model_auto_compact_token_limit={COMPACT_LIMIT}",
                        "--sandbox", "danger-full-access", "-c", "approval_policy=never", "run echo",
                        env={"CODEXPROXY_API_KEY": proxy.key})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Compacted and done" in result.stdout
    assert_compacted_remotely(fake, "compact-http-ok")
    assert all(row["status"] == 200 for row in proxy.cli_json("logs"))


# --- `codexproxy codex-config`: the block, printed and used as it is ------------------------------

SHELL_FLAGS = ("--sandbox", "danger-full-access", "-c", "approval_policy=never")


def printed_block(proxy, *args: str) -> str:
    return proxy.cli("codex-config", *args, check=True).stdout


def test_the_printed_block_is_toml_naming_the_running_proxy(proxy):
    out = printed_block(proxy, "--key", proxy.key)
    parsed = tomllib.loads(out)  # all of it: the hints are comments
    assert parsed["model_provider"] == "codexproxy"
    assert parsed["model_providers"]["codexproxy"] == {
        "name": "OpenAI", "base_url": f"{proxy.url}/v1", "env_key": "CODEXPROXY_API_KEY",
        "wire_api": "responses", "supports_websockets": True}
    assert f"# export CODEXPROXY_API_KEY={proxy.key}" in out.splitlines()


def test_with_no_proxy_running_the_block_names_the_configured_address(make_proxy):
    proxy = make_proxy({"server": {"host": "0.0.0.0", "port": 48999}}, start=False, accounts=0, key=False)
    parsed = tomllib.loads(printed_block(proxy))
    assert parsed["model_providers"]["codexproxy"]["base_url"] == "http://127.0.0.1:48999/v1"


def test_a_key_that_cannot_go_in_the_block_is_refused_in_one_line(make_proxy):
    proxy = make_proxy(start=False, accounts=0, key=False)
    result = proxy.cli("codex-config", "--key", "two\nlines")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "--key" in result.stderr


def test_codex_uses_the_printed_block_as_its_config_over_websocket_compacting_remotely(proxy, fake, tmp_path):
    acct = proxy.fake_accounts[0]
    tool_then_compaction(fake, acct, "compact-ws-ok")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(printed_block(proxy, "--key", proxy.key))
    result = codex_exec(tmp_path, "-m", "gpt-5-codex", "-c", f"model_auto_compact_token_limit={COMPACT_LIMIT}",
                        *SHELL_FLAGS, "run echo", env={"CODEXPROXY_API_KEY": proxy.key})
    shown = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reconnecting" not in shown and "Falling back" not in shown, result.stderr[-3000:]
    assert "Compacted and done" in result.stdout
    assert_compacted_remotely(fake, "compact-ws-ok")
    rows = proxy.cli_json("logs")
    assert rows and all(row.get("transport") == "websocket" and row["status"] == 200 for row in rows), rows
