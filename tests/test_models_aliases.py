"""Model aliases (issue #12): Claude Code's own model names served by the pool, a platform key's
own alias map, /v1/models listing the aliases, and one clear 400 for a name that is neither a
model nor an alias -- instead of the backend's "not supported when using Codex with a ChatGPT
account"."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from codexproxy.exchange import GatewayError
from codexproxy_plugins.adapter.aliases import DEFAULT_ALIASES, listed_aliases, match_alias, resolve_model
from tests.adminkit import result, rpc
from tests import npmclients
from tests.conftest import wait_for
from tests.fakeupstream import B

KNOWN = ["gpt-5.5", "gpt-5-codex", "gpt-5"]


# --- pure resolution -----------------------------------------------------------------------

@pytest.mark.parametrize("asked, expected", [
    ("claude-opus-4-8", ("gpt-5.5", None)),
    ("claude-sonnet-4-5-20250929", ("gpt-5.5", None)),
    ("claude-3-5-haiku-latest", ("gpt-5.5", "low")),
    ("Claude-Haiku-4-5", ("gpt-5.5", "low")),  # case does not matter
    ("claude-haiku-4-5(high)", ("gpt-5.5", "high")),  # the client's own suffix wins over the target's
    ("claude-next", ("gpt-5.5", None)),  # the catch-all
    ("gpt-5-codex", ("gpt-5-codex", None)),  # a real model is never aliased
    ("gpt-5(xhigh)", ("gpt-5", "xhigh")),
])
def test_default_aliases(asked, expected):
    assert resolve_model(asked, KNOWN, [DEFAULT_ALIASES], strict=True) == expected


def test_first_map_wins_and_unknown_names_are_refused_only_when_the_list_is_the_upstreams():
    key_map = {"claude-*haiku*": "gpt-5-codex", "fast": "gpt-5(minimal)"}
    assert resolve_model("claude-haiku-4-5", KNOWN, [key_map, DEFAULT_ALIASES], True) == ("gpt-5-codex", None)
    assert resolve_model("fast", KNOWN, [key_map, DEFAULT_ALIASES], True) == ("gpt-5", "minimal")
    assert match_alias("gpt-9", [key_map, DEFAULT_ALIASES]) is None
    assert resolve_model("gpt-9", KNOWN, [DEFAULT_ALIASES], strict=False) == ("gpt-9", None)
    with pytest.raises(GatewayError) as info:
        resolve_model("gpt-9", KNOWN, [DEFAULT_ALIASES], strict=True)
    err = info.value
    assert err.status == 400 and err.param == "model" and err.code == "model_not_found"
    assert "'gpt-9'" in err.message and "gpt-5-codex" in err.message and "claude-*haiku*" in err.message


def test_listed_aliases_do_not_shadow_models():
    assert listed_aliases([{"gpt-5": "gpt-5.5", "fast": "gpt-5"}, {"fast": "x", "slow": "gpt-5"}], KNOWN) == \
        {"fast": "gpt-5", "slow": "gpt-5"}


# --- through the running proxy --------------------------------------------------------------

def served(proxy, headers=None) -> list[dict]:
    r = httpx.get(proxy.url + "/v1/models", headers=headers or proxy.auth, timeout=30)
    assert r.status_code == 200
    return r.json()["data"]


def upstream_list_loaded(proxy, fake):
    """Wait until the pool's model list is the upstream's (only then are unknown names refused)."""
    wanted = [m["slug"] for m in fake.models]
    wait_for(lambda: [m["id"] for m in served(proxy) if not m.get("alias_for")] == wanted, timeout=30,
             what="the upstream's model list")


def test_aliases_models_list_and_unknown_names(make_proxy, fake):
    proxy = make_proxy()
    fake.set_default(proxy.fake_accounts[0], B.ok(text="ok"))
    upstream_list_loaded(proxy, fake)

    claude = anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key, max_retries=0, timeout=30)
    msg = claude.messages.create(model="claude-opus-4-8", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "ok" and msg.model == "claude-opus-4-8"  # the client sees its own name
    assert fake.requests[-1].json["model"] == "gpt-5.5"
    claude.messages.create(model="claude-haiku-4-5-20251001", max_tokens=100, thinking={"type": "adaptive"},
                           messages=[{"role": "user", "content": "title?"}])
    sent = fake.requests[-1].json
    assert sent["model"] == "gpt-5.5" and sent["reasoning"]["effort"] == "low"

    # /v1/models: the pool's models, then the aliases with their targets, in both formats
    entries = served(proxy)
    aliases = {m["id"]: m["alias_for"] for m in entries if m.get("alias_for")}
    assert aliases == DEFAULT_ALIASES
    anthropic_entries = served(proxy, {"x-api-key": proxy.key, "anthropic-version": "2023-06-01"})
    assert {m["id"]: m.get("alias_for") for m in anthropic_entries if m.get("alias_for")} == DEFAULT_ALIASES
    r = httpx.get(proxy.url + "/v1/models/claude-*haiku*", headers=proxy.auth, timeout=30)
    assert r.status_code == 200 and r.json()["alias_for"] == "gpt-5.5(low)"

    # neither a model nor an alias: one clear 400 in each protocol, nothing sent upstream
    before = len(fake.requests)
    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="gpt-9-turbo", messages=[{"role": "user", "content": "x"}])
    error = info.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "'gpt-9-turbo'" in error["message"] and "gpt-5-codex-mini" in error["message"] and "claude-*" in error["message"]
    with pytest.raises(anthropic.BadRequestError) as ainfo:
        claude.messages.create(model="gemini-3", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert ainfo.value.body["type"] == "error" and "'gemini-3'" in ainfo.value.body["error"]["message"]
    r = httpx.post(proxy.url + "/v1/responses", headers=proxy.auth, timeout=30,
                   json={"model": "o9", "input": "x", "stream": False})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"
    assert len(fake.requests) == before


def test_a_key_with_its_own_alias_map(make_proxy, fake):
    proxy = make_proxy()
    fake.set_default(proxy.fake_accounts[0], B.ok(text="ok"))
    own = proxy.create_key("own")
    key_id = next(k["id"] for k in proxy.cli_json("keys", "list") if k["name"] == "own")
    proxy.cli("keys", "update", key_id, "--alias", "claude-*haiku*=gpt-5-codex(high)", "--alias", "fast=gpt-5", check=True)
    proxy.cli("keys", "update", key_id, "--alias", "fast=", check=True)  # PATTERN= removes one
    stored = next(k for k in proxy.cli_json("keys", "list") if k["name"] == "own")
    assert stored["aliases"] == {"claude-*haiku*": "gpt-5-codex(high)"}
    bad = proxy.cli("keys", "update", key_id, "--alias", "no-equals-sign")
    assert bad.returncode == 2 and "--alias" in bad.stderr

    def ask(key: str) -> dict:
        r = httpx.post(proxy.url + "/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                       json={"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]},
                       timeout=30)
        assert r.status_code == 200, r.text
        return fake.requests[-1].json

    sent = ask(own)
    assert sent["model"] == "gpt-5-codex" and sent["reasoning"]["effort"] == "high"
    sent = ask(proxy.key)  # the other key keeps the config's aliases
    assert sent["model"] == "gpt-5.5" and sent["reasoning"]["effort"] == "low"
    ids = {m["id"]: m["alias_for"] for m in served(proxy, {"authorization": f"Bearer {own}"}) if m.get("alias_for")}
    assert ids["claude-*haiku*"] == "gpt-5-codex(high)" and list(ids)[0] == "claude-*haiku*"

    # the admin API sets the whole map (the status page and `codexproxy rpc` use it)
    updated = result(proxy, "keys.update", {"id": key_id, "aliases": {"claude-*": "gpt-5"}})
    assert updated["aliases"] == {"claude-*": "gpt-5"}
    assert ask(own)["model"] == "gpt-5"
    r = rpc(proxy, "keys.update", {"id": key_id, "aliases": {"claude-*": 5}})
    assert r.status_code == 400 and "aliases.claude-*" in r.json()["error"]["message"]
    r = rpc(proxy, "keys.update", {"id": key_id, "aliases": ["claude-*"]})
    assert r.status_code == 400 and "aliases" in r.json()["error"]["message"]


def test_config_aliases_replace_the_defaults(make_proxy, fake):
    proxy = make_proxy({"plugins": {"adapter": {"models": {"team-*": "gpt-5-codex"}}}})
    fake.set_default(proxy.fake_accounts[0], B.ok(text="ok"))
    r = httpx.post(proxy.url + "/v1/chat/completions", headers=proxy.auth, timeout=30,
                   json={"model": "team-fast", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and fake.requests[-1].json["model"] == "gpt-5-codex"
    assert {m["id"] for m in served(proxy) if m.get("alias_for")} == {"team-*"}


# --- Claude Code with no --model -------------------------------------------------------------

def claude_code(proxy, home: Path, *args: str) -> subprocess.CompletedProcess:
    """The real Claude Code at the proxy, with its own HOME and nothing calling out."""
    return npmclients.claude_code(home, home / "work", *args, base_url=proxy.url, api_key=proxy.key)


@pytest.mark.client
def test_claude_code_without_model_answers(make_proxy, fake, tmp_path):
    proxy = make_proxy()
    fake.set_default(proxy.fake_accounts[0], B.ok(text="Hello from the pool"))
    upstream_list_loaded(proxy, fake)  # strict from here: an unresolved claude-* name would be a 400
    result = claude_code(proxy, tmp_path / "home", "-p", "say hello")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip() == "Hello from the pool"
    models = [r.json.get("model") for r in fake.requests]
    assert models and set(models) <= {m["slug"] for m in fake.models}, models
