"""The core through the running proxy: passthrough, headers, auth, plugins on/off, config, store."""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import subprocess
import threading
import time

import httpx
import pytest
import yaml

from tests.conftest import PYTHON, RESPONSES_BODY, Proxy, clean_env, read_sse
from tests.fakeupstream import B


def post_stream(proxy: Proxy, body=None, headers=None, path="/v1/responses"):
    with proxy.client() as client:
        with client.stream("POST", path, json=body or RESPONSES_BODY, headers={**proxy.auth, **(headers or {})}) as r:
            return r.status_code, dict(r.headers), read_sse(r)


def test_health_needs_no_key(proxy):
    r = httpx.get(proxy.url + "/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["accounts"] == 1


def test_passthrough_streams_with_account_credentials(proxy, fake):
    acct = proxy.fake_accounts[0]
    body = dict(RESPONSES_BODY, prompt_cache_key="conv-123")
    status, headers, events = post_stream(proxy, body, headers={"originator": "codex_exec", "user-agent": "codex_exec/0.169.0",
                                                                "x-codex-turn-metadata": '{"a":1}', "x-api-key": "leak?",
                                                                "cookie": "client-cookie=1"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    types = [e[1] for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    seen = fake.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {acct.access_token}"
    assert seen.headers["chatgpt-account-id"] == acct.account_id
    assert seen.headers["originator"] == "codex_exec"  # a Codex client keeps its own
    assert seen.headers["user-agent"].startswith("codex_exec/")
    assert seen.headers["session_id"] == "conv-123"  # from prompt_cache_key
    assert seen.headers["accept"] == "text/event-stream"
    assert seen.headers["x-codex-turn-metadata"] == '{"a":1}'
    assert "x-api-key" not in seen.headers and "cookie" not in seen.headers
    assert proxy.key not in json.dumps(seen.headers)
    assert seen.json["input"] == RESPONSES_BODY["input"]


def test_backend_api_path_and_non_codex_client_headers(proxy, fake):
    status, _, events = post_stream(proxy, path="/backend-api/codex/responses", headers={"session_id": "s-1"})
    assert status == 200 and events[-1][1] == "response.completed"
    seen = fake.requests[-1]
    assert seen.headers["originator"] == "codex_cli_rs"
    assert seen.headers["session_id"] == "s-1"
    assert "codex" in seen.headers["user-agent"]


def test_stream_is_not_buffered(proxy, fake):
    fake.script(proxy.fake_accounts[0], B.slow(delay=0.4, deltas=3))
    status, _, events = post_stream(proxy)
    assert status == 200
    deltas = [t for t, kind, _ in events if kind == "response.output_text.delta"]
    assert len(deltas) == 3
    gaps = [b - a for a, b in zip(deltas, deltas[1:])]
    assert all(g > 0.25 for g in gaps), gaps  # spaced as sent, not delivered in one burst


def test_request_log_row(proxy, fake):
    post_stream(proxy)
    rows = proxy.cli_json("logs")
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == 200 and row["path"] == "/v1/responses" and row["model"] == "gpt-5-codex"
    assert row["key_name"] == "test" and row["account_id"]
    assert row["input_tokens"] and row["output_tokens"]
    assert row["latency_ms"] > 0 and len(row["attempts"]) == 1


@pytest.mark.parametrize("headers,status,code", [
    ({}, 401, "missing_api_key"),
    ({"authorization": "Bearer cpk-wrong"}, 401, "invalid_api_key"),
    ({"x-api-key": "cpk-wrong"}, 401, "invalid_api_key"),
])
def test_wrong_or_missing_key(proxy, fake, headers, status, code):
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert not fake.requests


def test_x_api_key_and_disabled_key(proxy, fake):
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"x-api-key": proxy.key})
    assert r.status_code == 200
    key_id = proxy.cli_json("keys", "list")[0]["id"]
    proxy.cli("keys", "disable", key_id, check=True)
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    assert r.status_code == 403 and r.json()["error"]["code"] == "key_disabled"


def test_unknown_route_and_bad_method(proxy):
    r = httpx.get(proxy.url + "/nope", headers=proxy.auth)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(proxy.url + "/v1/responses", headers=proxy.auth)
    assert r.status_code == 405 and "error" in r.json()


def test_body_over_limit_is_413(make_proxy, fake):
    proxy = make_proxy({"limits": {"max_body_bytes": 1000}})
    r = httpx.post(proxy.url + "/v1/responses", content=b"x" * 5000, headers=proxy.auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert not fake.requests


def test_no_accounts_is_503(make_proxy, fake):
    proxy = make_proxy(accounts=0)
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_accounts"


# --- plugins on and off -----------------------------------------------------------------------

def test_auth_off_opens_the_gateway_with_a_warning(make_proxy, fake):
    proxy = make_proxy({"plugins": {"auth": {"enabled": False}}}, key=False)
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY)
    assert r.status_code == 200
    assert "OPEN" in proxy.log_text()


def test_logging_off_writes_no_rows(make_proxy, fake):
    proxy = make_proxy({"plugins": {"logging": {"enabled": False}}})
    post_stream(proxy)
    proxy.stop()
    logs_dir = proxy.data_dir / "logs"
    assert not any(p.stat().st_size for p in logs_dir.glob("*.jsonl"))
    proxy.config["plugins"]["logging"]["enabled"] = True
    proxy.config_path.write_text(yaml.safe_dump(proxy.config))
    assert proxy.cli_json("logs") == []


def test_routing_off_forwards_the_clients_credentials(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"enabled": False}, "auth": {"enabled": False}}}, key=False)
    acct = proxy.fake_accounts[0]
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY,
                   headers={"authorization": f"Bearer {acct.access_token}", "chatgpt-account-id": acct.account_id})
    assert r.status_code == 200
    assert fake.requests[-1].headers["authorization"] == f"Bearer {acct.access_token}"


def test_cookies_plugin_adds_the_cookie_only_when_on(make_proxy, fake):
    off = make_proxy()
    post_stream(off)
    assert "cookie" not in fake.requests[-1].headers
    on = make_proxy({"plugins": {"cookies": {"enabled": True, "cookie": "cf_clearance=abc123"}}})
    post_stream(on)
    assert fake.requests[-1].headers["cookie"] == "cf_clearance=abc123"
    # Background requests (usage polls) pass the same cookie.
    on.cli("usage", "--refresh", check=True)
    polls = [r for r in fake.all_requests if r.path.endswith("/wham/usage")]
    assert polls and polls[-1].headers.get("cookie") == "cf_clearance=abc123"
    assert "abc123" not in on.log_text()


def test_plugins_command_lists_hooks(make_proxy):
    proxy = make_proxy(start=False, accounts=0, key=False)
    plugins = {p["name"]: p for p in proxy.cli_json("plugins")}
    assert plugins["routing"]["enabled"] and "codexproxy_select_account" in plugins["routing"]["hooks"]
    assert not plugins["cookies"]["enabled"]


FAILING_PLUGIN = '''
from codexproxy import hookimpl

@hookimpl
def codexproxy_prepare_request(app, exchange):
    raise RuntimeError("boom from a third-party plugin")
'''


def test_a_failing_plugin_fails_closed(make_proxy, fake, tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(FAILING_PLUGIN)
    proxy = make_proxy({"plugin_paths": [str(plugin)]})
    proxy.allow_log_errors = True  # the plugin's traceback is logged on purpose
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    assert r.status_code == 500 and r.json()["error"]["code"] == "plugin_error"
    assert "Traceback" not in r.text
    assert not fake.requests  # never forwarded half-processed
    assert "broken" in {p["name"] for p in proxy.cli_json("plugins")}


# --- config ----------------------------------------------------------------------------------

def run_cli(args, cwd, env=None):
    return subprocess.run([PYTHON, "-m", "codexproxy", *args], capture_output=True, text=True, cwd=cwd, env=clean_env(env), timeout=60)


@pytest.mark.parametrize("doc,needle", [
    ({"server": {"prot": 1}}, "server.prot: unknown key"),
    ({"server": {"port": "abc"}}, "server.port"),
    ({"plugins": {"routing": {"strategy": "random"}}}, "plugins.routing.strategy"),
    ({"plugins": {"nosuch": {"enabled": True}}}, "plugins.nosuch: unknown plugin"),
    ({"bogus": {}}, "bogus: unknown key"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, doc, needle):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "s.json")}, **doc}))
    result = run_cli(["accounts", "list", "-c", str(cfg)], tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_config_file_and_bad_yaml(tmp_path):
    result = run_cli(["keys", "list", "-c", str(tmp_path / "nope.yaml")], tmp_path)
    assert result.returncode == 2 and "not found" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [1, 2\n")
    result = run_cli(["keys", "list", "-c", str(bad)], tmp_path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_env_overrides_and_env_file(tmp_path, fake):
    store = tmp_path / "envstore" / "db.json"
    (tmp_path / "codexproxy.env").write_text(f"CODEXPROXY_STORAGE__PATH={store}\nCODEXPROXY_SERVER__PORT=0\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"upstream": {"base_url": fake.codex_base}}))
    result = run_cli(["keys", "create", "k", "--json", "-c", str(cfg)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert store.exists()
    # The real environment wins over the file.
    other = tmp_path / "other" / "db.json"
    result = run_cli(["keys", "create", "k2", "-c", str(cfg)], tmp_path, env={"CODEXPROXY_STORAGE__PATH": str(other)})
    assert result.returncode == 0 and other.exists()
    # A bad env value names the key.
    result = run_cli(["keys", "list", "-c", str(cfg)], tmp_path, env={"CODEXPROXY_SERVER__PORT": "notaport"})
    assert result.returncode == 2 and "server.port" in result.stderr


def test_runs_without_a_config_file(tmp_path, fake):
    env = {"CODEXPROXY_STORAGE__PATH": str(tmp_path / "d" / "db.json"), "CODEXPROXY_UPSTREAM__BASE_URL": fake.codex_base, "HOME": str(tmp_path)}
    proc = subprocess.Popen([PYTHON, "-m", "codexproxy", "run", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path, env=clean_env(env))
    try:
        line = ""
        deadline = time.time() + 20
        while time.time() < deadline and "listening on" not in line:
            line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.split("listening on ")[1].split()[0]
        banner = [proc.stdout.readline() for _ in range(3)]
        # the admin plugin adds its line through codexproxy_listening (the core names no plugin)
        assert any(f"status page: {url}/status" in b for b in banner), banner
        assert httpx.get(url + "/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_busy_port_is_one_clear_line(make_proxy, fake):
    first = make_proxy()
    port = first.url.rsplit(":", 1)[1]
    second = make_proxy(start=False, accounts=0, key=False)
    result = second.cli("run", "--port", port, timeout=30)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# --- store -------------------------------------------------------------------------------------

def test_store_file_is_private_and_keys_hashed(proxy):
    mode = os.stat(proxy.store_path).st_mode & 0o777
    assert mode == 0o600
    text = proxy.store_path.read_text()
    assert proxy.key not in text and "key_hash" in text


def test_store_survives_kill_9(make_proxy, fake):
    proxy = make_proxy(accounts=1)
    for _ in range(5):
        post_stream(proxy)
    os.kill(proxy.pid, signal.SIGKILL)
    proxy.process.wait(10)
    proxy.process = None
    assert len(proxy.cli_json("accounts", "list")) == 1
    assert len(proxy.cli_json("logs")) == 5
    proxy.start()
    status, _, _ = post_stream(proxy)
    assert status == 200


def test_cli_writes_while_the_proxy_serves_lose_nothing(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    # The proxy writes account state (a cooldown) while the CLI writes keys.
    fake.set_default(proxy.fake_accounts[0], B.rate_limited(retry_after=1))
    stop = threading.Event()
    errors: list[str] = []

    def traffic():
        with proxy.client() as client:
            while not stop.is_set():
                r = client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
                if r.status_code != 200:
                    errors.append(r.text)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        created = [proxy.cli_json("keys", "create", f"k{i}")["id"] for i in range(8)]
    finally:
        stop.set()
        worker.join(30)
    listed = {k["id"] for k in proxy.cli_json("keys", "list")}
    assert set(created) <= listed and len(listed) == 9
    assert len(proxy.cli_json("accounts", "list")) == 2
    assert not errors


def test_sigterm_drains_an_inflight_stream(make_proxy, fake):
    proxy = make_proxy({"server": {"drain_timeout_s": 10}})
    fake.script(proxy.fake_accounts[0], B.slow(delay=0.3, deltas=4))
    result: dict = {}

    def client():
        result["value"] = post_stream(proxy)

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.5)
    code = proxy.stop(signal.SIGTERM)
    t.join(20)
    status, _, events = result["value"]
    assert status == 200 and events[-1][1] == "response.completed"
    assert code == 0


def test_codex_config_prints_a_working_block(make_proxy):
    proxy = make_proxy(start=False, accounts=0, key=False)
    out = proxy.cli("codex-config", "--key", "cpk-example", check=True).stdout
    assert 'wire_api = "responses"' in out and "/v1" in out and "export CODEXPROXY_API_KEY=cpk-example" in out
    import tomllib

    toml_part = "\n".join(line for line in out.splitlines() if not line.startswith(("#", "export")))
    parsed = tomllib.loads(toml_part)
    assert parsed["model_providers"]["codexproxy"]["base_url"].endswith("/v1")


def test_example_config_is_valid_and_complete(tmp_path):
    from codexproxy.config import Config, load_config
    from codexproxy.plugins import load_plugins

    example = Path(__file__).resolve().parent.parent / "config" / "config.yaml"
    config = load_config(example, environ={})
    load_plugins(config)
    text = example.read_text()
    for section, model in Config.model_fields.items():
        if section in ("source", "plugin_sections"):
            continue
        assert f"{section}:" in text, f"config/config.yaml does not document {section}"


def test_hook_tracing_shows_calls_but_no_secrets(make_proxy, fake):
    proxy = make_proxy({"plugins": {"cookies": {"enabled": True, "cookie": "cf_clearance=topsecretcookie"}}},
                       env={"CODEXPROXY_TRACE_HOOKS": "1"})
    post_stream(proxy)
    proxy.stop()
    text = proxy.log_text()
    assert "call codexproxy_select_account" in text and "call codexproxy_exchange_done" in text
    acct = proxy.fake_accounts[0]
    for secret in (proxy.key, acct.access_token, acct.refresh_token, acct.id_token, "topsecretcookie"):
        assert secret not in text
