"""Platform keys: the CLI, bindings, and the limits the auth plugin enforces (expired 401,
disabled 403, rpm and daily tokens 429 with retry-after) in both error styles."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import RESPONSES_BODY

ANTHROPIC_BODY = {"model": "claude-sonnet-4", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def ask(proxy, key: str, path: str = "/v1/responses", body=None) -> httpx.Response:
    return httpx.post(proxy.url + path, json=body or RESPONSES_BODY, headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_create_prints_the_key_once_and_stores_only_a_hash(make_proxy):
    proxy = make_proxy(accounts=0, key=False, start=False)
    created = proxy.cli_json("keys", "create", "laptop", "--model", "gpt-5-codex", "--effort", "high", "--rpm", "5",
                             "--daily-tokens", "1000", "--expires", "30d")
    assert set(created) == {"id", "name", "key"} and created["key"].startswith("cpk-")
    listed = proxy.cli_json("keys", "list")
    assert len(listed) == 1
    row = listed[0]
    assert row["name"] == "laptop" and row["model"] == "gpt-5-codex" and row["effort"] == "high"
    assert row["rpm"] == 5 and row["daily_tokens"] == 1000 and row["expires_at"] > time.time() + 29 * 86400
    text = json.dumps(listed) + proxy.cli("keys", "list", check=True).stdout + proxy.store_path.read_text()
    assert created["key"] not in text and "key_hash" not in json.dumps(listed)


def test_update_enable_disable_remove(proxy, fake):
    key_id = proxy.cli_json("keys", "list")[0]["id"]
    assert ask(proxy, proxy.key).status_code == 200
    proxy.cli("keys", "disable", key_id, check=True)
    r = ask(proxy, proxy.key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "key_disabled"
    proxy.cli("keys", "enable", key_id, check=True)
    assert ask(proxy, proxy.key).status_code == 200
    updated = proxy.cli_json("keys", "update", key_id, "--model", "gpt-5", "--rpm", "9")
    assert updated["model"] == "gpt-5" and updated["rpm"] == 9
    proxy.cli("keys", "remove", key_id, check=True)
    r = ask(proxy, proxy.key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_list_shows_last_use_and_todays_counts(proxy, fake):
    for _ in range(2):
        assert ask(proxy, proxy.key).status_code == 200
    row = proxy.cli_json("keys", "list")[0]
    assert row["requests_today"] == 2 and row["tokens_today"] > 0 and row["last_used"] > time.time() - 60


def test_bound_model_overrides_the_request(make_proxy, fake):
    proxy = make_proxy()
    key = proxy.create_key("bound", "--model", "gpt-5", "--effort", "low")
    assert ask(proxy, key).status_code == 200
    sent = fake.requests[-1].json
    assert sent["model"] == "gpt-5" and sent["reasoning"]["effort"] == "low"


def test_expired_key_is_401(proxy, fake):
    key = proxy.create_key("short", "--expires", "1s")
    time.sleep(1.2)
    r = ask(proxy, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_expired"
    assert "short" in r.json()["error"]["message"]


def test_rpm_limit_is_429_with_retry_after(proxy, fake):
    key = proxy.create_key("slow", "--rpm", "2")
    assert [ask(proxy, key).status_code for _ in range(2)] == [200, 200]
    r = ask(proxy, key)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded" and "2 requests per minute" in error["message"]
    assert len(fake.requests) == 2  # the refused one never went upstream
    # Another key is not affected.
    assert ask(proxy, proxy.key).status_code == 200


def test_rpm_limit_in_anthropic_style_on_messages(proxy, fake):
    key = proxy.create_key("claude", "--rpm", "1")
    assert ask(proxy, key, "/v1/messages", ANTHROPIC_BODY).status_code == 200
    r = ask(proxy, key, "/v1/messages", ANTHROPIC_BODY)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"


def test_daily_tokens_limit_is_429_until_midnight(proxy, fake):
    key = proxy.create_key("budget", "--daily-tokens", "5")
    assert ask(proxy, key).status_code == 200  # under the limit when it starts; its tokens count after
    r = ask(proxy, key)
    assert r.status_code == 429
    error = r.json()["error"]
    assert error["code"] == "daily_token_limit_exceeded" and "5 tokens" in error["message"]
    wait = int(r.headers["retry-after"])
    assert 1 <= wait <= 86400 + 3600
    assert ask(proxy, proxy.key).status_code == 200


def test_daily_tokens_are_read_from_the_log_after_a_restart(proxy, fake):
    key = proxy.create_key("budget", "--daily-tokens", "5")
    assert ask(proxy, key).status_code == 200
    proxy.stop()
    proxy.start()
    r = ask(proxy, key)
    assert r.status_code == 429 and r.json()["error"]["code"] == "daily_token_limit_exceeded"


def test_raising_a_limit_takes_effect_at_once(proxy, fake):
    key = proxy.create_key("grow", "--rpm", "1")
    assert ask(proxy, key).status_code == 200
    assert ask(proxy, key).status_code == 429
    key_id = next(k["id"] for k in proxy.cli_json("keys", "list") if k["name"] == "grow")
    proxy.cli("keys", "update", key_id, "--rpm", "5", check=True)
    assert ask(proxy, key).status_code == 200


@pytest.mark.parametrize("args,needle", [
    (["keys", "create", " "], "must not be empty"),
    (["keys", "create", "x", "--expires", "soonish"], "--expires"),
    (["keys", "create", "x", "--effort", "huge"], "invalid choice"),
    (["keys", "create", "x", "--rpm", "many"], "expected a whole number"),
    (["keys", "disable", "key_nope"], "no key matches"),
])
def test_bad_cli_input_is_one_line_and_changes_nothing(make_proxy, args, needle):
    proxy = make_proxy(accounts=0, key=False, start=False)
    result = proxy.cli(*args)
    assert result.returncode == 2 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert proxy.cli_json("keys", "list") == []


@pytest.mark.parametrize("option,value,param", [
    ("--rpm", "0", "rpm"),
    ("--daily-tokens", "lots", "daily_tokens"),
    ("--expires", "2001-01-01", "expires"),
    ("--account", "acc_nope", "account"),
    ("--alias", "gpt-*=\u0007", "aliases"),
])
def test_cli_and_admin_api_refuse_the_same_key_input_for_the_same_reason(make_proxy, option, value, param):
    proxy = make_proxy(accounts=0, key=False, start=False)
    rpc_value = {"gpt-*": "\u0007"} if param == "aliases" else value
    rpc = proxy.cli("rpc", "keys.create", json.dumps({"name": "x", param: rpc_value}))
    cli = proxy.cli("keys", "create", "x", f"{option}={value}")
    assert rpc.returncode == cli.returncode == 2
    reason = rpc.stderr.strip().split(": ", 3)[-1].rsplit(" (", 1)[0]  # "rpc keys.create: Invalid params: rpm: <reason> (-32602)"
    assert cli.stderr.strip().endswith(reason) and f"{option}: " in cli.stderr, (rpc.stderr, cli.stderr)
    assert proxy.cli_json("keys", "list") == []


def test_update_switches_a_key_off_and_on_with_disable_and_enable(proxy, fake):
    key_id = proxy.cli_json("keys", "list")[0]["id"]
    assert proxy.cli_json("keys", "update", key_id, "--disable")["enabled"] is False
    assert ask(proxy, proxy.key).status_code == 403
    assert proxy.cli_json("keys", "update", key_id, "--enable")["enabled"] is True
    assert ask(proxy, proxy.key).status_code == 200
    both = proxy.cli("keys", "update", key_id, "--enable", "--disable")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr and len(both.stderr.strip().splitlines()) == 1


def test_effort_default_removes_the_binding_and_none_binds_no_reasoning(proxy, fake):
    key = proxy.create_key("fast", "--effort", "high")
    key_id = next(k["id"] for k in proxy.cli_json("keys", "list") if k["name"] == "fast")
    out = proxy.cli("keys", "update", key_id, "--effort", "none", check=True).stdout
    assert "--effort default removes" in out  # the old spelling of "remove" is told what it does now
    assert ask(proxy, key).status_code == 200
    assert fake.requests[-1].json["reasoning"] == {"effort": "none"}
    assert proxy.cli_json("keys", "update", key_id, "--effort", "default")["effort"] is None
    assert ask(proxy, key).status_code == 200
    assert "reasoning" not in fake.requests[-1].json
    bad = proxy.cli("keys", "update", key_id, "--effort", "unbind")
    assert bad.returncode == 2 and "or default to remove it" in bad.stderr


def test_create_takes_the_keys_own_aliases(proxy, fake):
    key = proxy.create_key("aliased", "--alias", "claude-*=gpt-5(low)")
    assert proxy.cli_json("keys", "list")[-1]["aliases"] == {"claude-*": "gpt-5(low)"}
    assert ask(proxy, key, "/v1/messages", ANTHROPIC_BODY).status_code == 200
    sent = fake.requests[-1].json
    assert sent["model"] == "gpt-5" and sent["reasoning"]["effort"] == "low"
