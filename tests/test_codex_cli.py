"""The real Codex CLI (npm @openai/codex) through the proxy, as a user wires it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import clean_env
from tests.npmclients import codex_binary
from tests.fakeupstream import B

pytestmark = pytest.mark.client


def run_codex(proxy, tmp_path, prompt="say hello", extra=()):
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    provider = (f'model_providers.codexproxy={{name="codexproxy",base_url="{proxy.url}/v1",'
                f'env_key="CODEXPROXY_API_KEY",wire_api="responses"}}')
    cmd = [codex_binary(), "exec", "--skip-git-repo-check", "-c", "model_provider=codexproxy", "-c", provider,
           "-m", "gpt-5-codex", *extra, prompt]
    env = clean_env({"CODEX_HOME": str(home), "CODEXPROXY_API_KEY": proxy.key})
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path, stdin=subprocess.DEVNULL)


def test_codex_exec_through_the_proxy(proxy, fake, tmp_path):
    fake.set_default(proxy.fake_accounts[0], B.ok(text="Hello from the pool", deltas=4))
    result = run_codex(proxy, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hello from the pool" in result.stdout
    seen = fake.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {proxy.fake_accounts[0].access_token}"
    assert seen.headers["originator"].startswith("codex")
    assert seen.json["stream"] is True and seen.json["store"] is False
    rows = proxy.cli_json("logs")
    assert rows and rows[0]["status"] == 200 and rows[0]["key_name"] == "test"


def test_codex_exec_survives_an_exhausted_account(make_proxy, fake, tmp_path):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.set_default(first, B.usage_limit(resets_in=3600))
    fake.set_default(second, B.ok(text="Served by the second account"))
    result = run_codex(proxy, tmp_path, extra=("--json",))
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert any("Served by the second account" in json.dumps(e) for e in events)
    row = proxy.cli_json("logs")[0]
    assert [a["status"] for a in row["attempts"]] == [429, 200]


def test_codex_tells_its_user_at_once_when_the_pool_is_exhausted(make_proxy, fake, tmp_path):
    # Against the real backend Codex prints the usage-limit message at once: the 429 says
    # error.type "usage_limit_reached". Any other 429 makes it sleep through retry-after
    # (up to an hour, five times): the pool must answer in the upstream's own shape.
    proxy = make_proxy(accounts=2)
    for acct in proxy.fake_accounts:
        fake.set_default(acct, B.usage_limit(resets_in=3600))
    started = time.monotonic()
    result = run_codex(proxy, tmp_path)
    took = time.monotonic() - started
    assert result.returncode != 0
    assert "usage limit" in (result.stdout + result.stderr).lower(), result.stderr[-2000:]
    assert took < 30, f"Codex took {took:.0f}s: it retried instead of telling the user"
    # Once the store knows, the pool answers without asking the upstream again.
    asked = len(fake.requests)
    result = run_codex(proxy, tmp_path)
    assert "usage limit" in (result.stdout + result.stderr).lower()
    assert len(fake.requests) == asked
