"""POST /rpc: JSON-RPC 2.0 with the admin token, the core methods, other plugins' methods,
protocol errors, bad params (a clear error, nothing changed), and the `rpc` CLI command."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.adminkit import assert_no_secret, login, result, rpc, secrets_of
from tests.conftest import RESPONSES_BODY


def raw(proxy, body, headers=None) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(proxy.url + "/rpc", content=data, timeout=30,
                      headers={"authorization": f"Bearer {proxy.admin_token}", "content-type": "application/json", **(headers or {})})


# --- who may call ------------------------------------------------------------------------------

def test_needs_the_admin_token(proxy):
    r = httpx.post(proxy.url + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "health"})
    assert r.status_code == 401 and r.json()["error"]["code"] == -32010
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = rpc(proxy, "health", token="wrong-" + proxy.admin_token)
    assert r.status_code == 401
    r = rpc(proxy, "health", token=proxy.key)  # a platform key is not the admin token
    assert r.status_code == 401
    assert rpc(proxy, "health").status_code == 200


def test_a_status_page_session_does_not_open_the_api(proxy):
    browser = login(proxy)
    r = browser.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "keys.list"})
    assert r.status_code == 401


@pytest.mark.parametrize("headers", [
    {"origin": "https://evil.example"},
    {"origin": "null"},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
])
def test_cross_site_requests_are_refused_even_with_the_token(proxy, headers):
    before = result(proxy, "keys.list")
    r = rpc(proxy, "keys.create", {"name": "csrf"}, headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == -32011
    assert result(proxy, "keys.list") == before


def test_same_origin_is_fine(proxy):
    r = rpc(proxy, "health", headers={"origin": proxy.url, "sec-fetch-site": "same-origin"})
    assert r.status_code == 200 and r.json()["result"]["status"] == "ok"


def test_get_is_405(proxy):
    r = httpx.get(proxy.url + "/rpc", headers={"authorization": f"Bearer {proxy.admin_token}"})
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "use POST" in r.json()["error"]["message"]


# --- the protocol --------------------------------------------------------------------------------

@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, -32700),
    (b"", 400, -32700),
    ('"health"', 400, -32600),
    ({"method": "health", "id": 1}, 400, -32600),
    ({"jsonrpc": "2.0", "id": 1}, 400, -32600),
    ({"jsonrpc": "2.0", "method": "health", "id": {"x": 1}}, 400, -32600),
    ({"jsonrpc": "2.0", "method": "nope.nothing", "id": 1}, 404, -32601),
    ({"jsonrpc": "2.0", "method": "health", "params": "x", "id": 1}, 400, -32602),
    ([], 400, -32600),
])
def test_protocol_errors(proxy, body, status, code):
    r = raw(proxy, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert "Traceback" not in r.text


def test_batch_and_notifications(proxy):
    r = raw(proxy, [{"jsonrpc": "2.0", "id": "a", "method": "health"},
                    {"jsonrpc": "2.0", "id": "b", "method": "nope"},
                    {"jsonrpc": "2.0", "method": "health"},  # a notification: no answer
                    42])
    assert r.status_code == 200
    answers = r.json()
    assert len(answers) == 3
    assert answers[0]["id"] == "a" and answers[0]["result"]["status"] == "ok"
    assert answers[1]["id"] == "b" and answers[1]["error"]["code"] == -32601
    assert answers[2]["error"]["code"] == -32600
    assert raw(proxy, {"jsonrpc": "2.0", "method": "health"}).status_code == 204
    assert raw(proxy, [{"jsonrpc": "2.0", "id": i, "method": "health"} for i in range(51)]).status_code == 400


# --- core methods ----------------------------------------------------------------------------------

def test_keys_lifecycle(proxy, fake):
    created = result(proxy, "keys.create", {"name": "ci", "model": "gpt-5", "effort": "low", "rpm": 10,
                                            "daily_tokens": 10000, "expires": "7d"})
    secret, key_id = created["key"], created["id"]
    assert secret.startswith("cpk-") and created["rpm"] == 10 and created["expires_at"]
    listed = result(proxy, "keys.list")
    assert {k["name"] for k in listed} == {"test", "ci"}
    assert secret not in json.dumps(listed) and "key_hash" not in json.dumps(listed)
    assert result(proxy, "keys.get", {"id": "ci"})["id"] == key_id  # by name too
    updated = result(proxy, "keys.update", {"id": key_id, "rpm": None, "model": "gpt-5-codex", "name": "ci-2"})
    assert updated["rpm"] is None and updated["model"] == "gpt-5-codex" and updated["name"] == "ci-2"
    assert httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {secret}"}).status_code == 200
    assert result(proxy, "keys.disable", {"id": key_id})["enabled"] is False
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 403
    assert result(proxy, "keys.enable", {"id": key_id})["enabled"] is True
    assert result(proxy, "keys.remove", {"id": key_id}) == {"removed": key_id, "name": "ci-2"}
    assert [k["name"] for k in result(proxy, "keys.list")] == ["test"]


def test_logs_query_and_clear(proxy, fake):
    for _ in range(3):
        httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": "Bearer cpk-wrong"})
    everything = result(proxy, "logs.query")
    gateway = [r for r in everything["rows"] if r["path"] == "/v1/responses"]
    assert len(gateway) == 4 and everything["more"] is False
    ok = result(proxy, "logs.query", {"query": "status:2xx path:/v1/responses"})
    assert len(ok["rows"]) == 3 and all(r["status"] == 200 for r in ok["rows"])
    assert len(result(proxy, "logs.query", {"query": "status:401"})["rows"]) == 1
    page = result(proxy, "logs.query", {"query": "path:/v1/responses", "limit": 2, "offset": 1})
    assert len(page["rows"]) == 2 and page["more"] is True
    assert result(proxy, "logs.clear")["cleared"] >= 4
    assert [r for r in result(proxy, "logs.query")["rows"] if r["path"] == "/v1/responses"] == []


def test_plugins_health_and_jobs(proxy, fake):
    plugins = {p["name"]: p for p in result(proxy, "plugins.list")}
    assert plugins["admin"]["enabled"] and "codexproxy_rpc_methods" in plugins["admin"]["hooks"]
    health = result(proxy, "health")
    assert health["status"] == "ok" and health["accounts"] == 1 and health["running"] is True
    jobs = {j["name"]: j for j in result(proxy, "jobs.list")}
    assert "models" in jobs
    ran = result(proxy, "jobs.run", {"name": "models"})
    assert ran["name"] == "models" and ran["last"]["ok"] is True
    r = rpc(proxy, "jobs.run", {"name": "nope"})
    assert r.status_code == 404 and "no job named 'nope'" in r.json()["error"]["message"]


def test_other_plugins_methods_are_merged(proxy):
    accounts = result(proxy, "accounts.list")
    assert len(accounts) == 1 and "access_token" not in json.dumps(accounts)


# --- bad params: a clear error and nothing changed -----------------------------------------------

BAD_PARAMS = [
    ("keys.create", {}, "missing parameter 'name'"),
    ("keys.create", {"name": ""}, "missing parameter 'name'"),
    ("keys.create", {"name": 7}, "name: expected a string"),
    ("keys.create", {"name": "x" * 101}, "at most 100"),
    ("keys.create", {"name": "x", "rpm": 0}, "rpm: must be between"),
    ("keys.create", {"name": "x", "rpm": "lots"}, "rpm: expected a whole number"),
    ("keys.create", {"name": "x", "rpm": True}, "rpm: expected a whole number"),
    ("keys.create", {"name": "x", "daily_tokens": -5}, "daily_tokens: must be between"),
    ("keys.create", {"name": "x", "effort": "huge"}, "effort: must be one of"),
    ("keys.create", {"name": "x", "expires": "someday"}, "expires: expected a duration"),
    ("keys.create", {"name": "x", "expires": "2001-01-01"}, "expires: must be in the future"),
    ("keys.create", {"name": "x", "account": "acc_nope"}, "account: no account matches"),
    ("keys.create", {"name": "x", "colour": "red"}, "unknown parameter 'colour'"),
    ("keys.create", ["x"], "params must be an object"),
    ("keys.update", {"id": "key_nope", "rpm": 3}, "no key matches"),
    ("keys.update", {"rpm": 3}, "missing parameter 'id'"),
    ("keys.update", {"id": "test", "enabled": "yes"}, "enabled: expected true or false"),
    ("keys.update", {"id": "test", "name": ""}, "name: must not be empty"),
    ("keys.get", {"id": "key_nope"}, "no key matches"),
    ("keys.enable", {}, "missing parameter 'id'"),
    ("keys.disable", {"id": "key_nope"}, "no key matches"),
    ("keys.remove", {"id": ["test"]}, "id: expected a string"),
    ("logs.query", {"limit": 0}, "limit: must be between"),
    ("logs.query", {"limit": 5000}, "limit: must be between"),
    ("logs.query", {"offset": -1}, "offset: must be between"),
    ("logs.query", {"query": 5}, "query: expected a string"),
    ("logs.clear", {"all": True}, "unknown parameter 'all'"),
    ("plugins.list", {"x": 1}, "unknown parameter 'x'"),
    ("health", {"deep": True}, "unknown parameter 'deep'"),
    ("jobs.list", {"x": 1}, "unknown parameter 'x'"),
    ("jobs.run", {}, "missing parameter 'name'"),
]


def test_bad_params_are_a_clear_error_and_change_nothing(proxy, fake):
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    before = (result(proxy, "keys.list"), result(proxy, "logs.query", {"query": "path:/v1/responses"})["rows"])
    for method, params, needle in BAD_PARAMS:
        r = rpc(proxy, method, params)
        # A record named by id that does not exist is "not found"; everything else is invalid params.
        expected = (404, -32001) if needle.startswith("no key matches") else (400, -32602)
        err = r.json()["error"]
        assert (r.status_code, err["code"]) == expected and needle in err["message"], (method, params, r.status_code, err)
        assert "Traceback" not in r.text
        after = (result(proxy, "keys.list"), result(proxy, "logs.query", {"query": "path:/v1/responses"})["rows"])
        assert after == before, (method, params)


# --- methods of another plugin: its errors are mapped, never a traceback ----------------------------

DEMO_PLUGIN = '''
from codexproxy import hookimpl
from codexproxy.exchange import GatewayError

def echo(app, params):
    return {"echo": params}

def bad(app, params):
    raise ValueError("color must be red or blue")

def missing(app, params):
    raise GatewayError(404, "no widget 7")

def busy(app, params):
    raise GatewayError(503, "widgets are busy")

def boom(app, params):
    raise RuntimeError("secret internals")

@hookimpl
def codexproxy_rpc_methods(app):
    return {"demo.echo": echo, "demo.bad": bad, "demo.missing": missing, "demo.busy": busy, "demo.boom": boom}
'''


def test_methods_from_a_third_party_plugin(make_proxy, tmp_path):
    plugin = tmp_path / "demo.py"
    plugin.write_text(DEMO_PLUGIN)
    proxy = make_proxy({"plugin_paths": [str(plugin)]}, accounts=0)
    proxy.allow_log_errors = True  # demo.boom's traceback is logged on purpose (never sent to the client)
    assert result(proxy, "demo.echo", {"a": [1, 2]}) == {"echo": {"a": [1, 2]}}
    cases = {"demo.bad": (400, -32602, "color must be red or blue"), "demo.missing": (404, -32001, "no widget 7"),
             "demo.busy": (503, -32000, "widgets are busy"), "demo.boom": (500, -32603, "Internal error in demo.boom")}
    for method, (status, code, needle) in cases.items():
        r = rpc(proxy, method, {})
        assert r.status_code == status and r.json()["error"]["code"] == code and needle in r.json()["error"]["message"], r.text
        assert "Traceback" not in r.text and "secret internals" not in r.text


# --- the CLI ----------------------------------------------------------------------------------------

def test_cli_rpc_uses_the_running_proxy(proxy, fake):
    out = proxy.cli("rpc", "keys.create", '{"name": "from-cli"}', check=True).stdout
    created = json.loads(out)
    assert created["key"].startswith("cpk-")
    assert "from-cli" in {k["name"] for k in result(proxy, "keys.list")}
    health = json.loads(proxy.cli("rpc", "health", check=True).stdout)
    assert health["running"] is True  # answered by the proxy, not by the CLI process
    bad = proxy.cli("rpc", "keys.create", '{"name": ""}')
    assert bad.returncode == 2 and "missing parameter 'name'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = proxy.cli("rpc", "keys.list", "{nope")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_cli_rpc_without_a_running_proxy_runs_locally(make_proxy):
    proxy = make_proxy(accounts=0, key=False, start=False)
    created = json.loads(proxy.cli("rpc", "keys.create", '{"name": "offline"}', check=True).stdout)
    listed = json.loads(proxy.cli("rpc", "keys.list", check=True).stdout)
    assert [k["id"] for k in listed] == [created["id"]]
    bad = proxy.cli("rpc", "nope.nope")
    assert bad.returncode == 2 and "Method not found: 'nope.nope'" in bad.stderr  # rpc.call's words, as on /rpc


def test_admin_token_command(proxy):
    assert proxy.cli("admin-token", check=True).stdout.strip() == proxy.admin_token
    assert proxy.cli("admin-token", "--path", check=True).stdout.strip() == str(proxy.data_dir / "admin_token")


def test_answers_and_logs_carry_no_secret(proxy, fake):
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    secrets = secrets_of(proxy)
    texts = [rpc(proxy, m).text for m in ("keys.list", "logs.query", "plugins.list", "health", "jobs.list", "accounts.list", "usage.get")]
    texts.append(rpc(proxy, "keys.get", {"id": "test"}).text)
    for i, text in enumerate(texts):
        assert_no_secret(text, secrets, f"answer {i}")
    proxy.stop()
    assert_no_secret(proxy.log_text(), secrets, "the proxy output")
    for path in (proxy.data_dir / "logs").glob("*.jsonl"):
        assert_no_secret(path.read_text(), secrets, str(path))


def test_every_token_check_is_constant_time(tmp_path, monkeypatch):
    """The admin token (API, pages), the metrics token and CSRF tokens are compared with
    secrets.compare_digest, never with ==."""
    import secrets

    from codexproxy.app import App
    from codexproxy.config import load_config
    from codexproxy.exchange import Exchange
    from codexproxy_plugins.admin import metrics, rpc as admin_rpc, session

    config = load_config(None, environ={"CODEXPROXY_STORAGE__PATH": str(tmp_path / "db.json"),
                                        "CODEXPROXY_METRICS__TOKEN": "scrape-me"})
    app = App(config)
    compared: list[tuple] = []
    real = secrets.compare_digest
    monkeypatch.setattr(secrets, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))

    def exchange(path: str, token: str, method: str = "POST") -> Exchange:
        return Exchange(method=method, path=path, query={}, headers={"authorization": f"Bearer {token}"}, body=b"{}")

    assert admin_rpc.handle(app, exchange("/rpc", "guess")).status == 401
    assert compared and compared[-1][1] == app.admin_token.encode()
    compared.clear()
    assert metrics.handle(app, exchange("/metrics", "guess", "GET"), metrics.Metrics()).status == 401
    assert (b"guess", b"scrape-me") in compared
    compared.clear()
    assert not session.check_csrf(session.Session(csrf="right", expires=0), "wrong")
    assert compared == [(b"right", b"wrong")]
    app.close()


def test_cli_rpc_answers_the_same_with_or_without_a_running_proxy(make_proxy):
    """One dispatcher (rpc.call) for POST /rpc and for `codexproxy rpc` in the CLI's process."""
    proxy = make_proxy(accounts=0, key=False, start=False)
    calls = [("nope.nope", "{}"), ("keys.create", '{"name": "x", "rpm": 0}'), ("keys.get", '{"id": "key_nope"}'),
             ("health", '{"deep": true}'), ("keys.list", "[1]")]

    def answers() -> list[tuple[int, str]]:
        return [(r.returncode, r.stderr) for r in (proxy.cli("rpc", method, params) for method, params in calls)]

    offline = answers()
    proxy.start()
    online = answers()
    assert offline == online and all(code == 2 and len(err.strip().splitlines()) == 1 for code, err in online), (offline, online)


def test_health_over_http_is_the_admin_apis_health_without_the_admin_fields(proxy):
    """One health report (builtin.health_report): GET /health tells anyone what the admin API's
    `health` says about liveness and the pool, and nothing about keys, jobs or statuses."""
    public = httpx.get(proxy.url + "/health", timeout=30).json()
    admin = result(proxy, "health")
    assert set(public) == {"status", "version", "uptime_s", "accounts", "accounts_available"}
    assert set(admin) - set(public) == {"running", "accounts_by_status", "keys", "jobs"}
    assert {k: public[k] for k in public if k != "uptime_s"} == {k: admin[k] for k in public if k != "uptime_s"}
