"""README claims that had no end-to-end test, each checked against the running proxy.

Claim (README section)                                   -> test
"400/404/422 untouched" (What happens to a request)      -> test_client_errors_are_untouched_in_every_protocol,
                                                            and test_mutation_kills.py::test_client_errors_reach_...
"5xx, connect failure, idle timeout: cooling 30-60 s"    -> test_5xx_cools_..., test_connect_failure_and_idle_timeout_cool_...
"other 429: cooling (exponential, or retry-after)"       -> test_mutation_kills.py::test_429_without_retry_after_...,
                                                            test_routing.py::test_rate_limit_cooldown_honours_retry_after_...
"429 usage_limit_reached: exhausted until the reset"     -> test_failover.py::test_failover_on_usage_limit_still_streams
"Installed packages can register through the
 `codexproxy` entry-point group" (Writing a plugin)      -> test_entry_point_plugin_is_loaded_and_runs
"`plugin_paths`: extra plugin files, directories or
 module names" (Configuration)                           -> test_plugin_paths_file_directory_and_module_name
"`adapter` off leaves /v1/responses as a raw
 passthrough" (Configuration)                            -> test_adapter_off_is_a_raw_responses_passthrough
"serve until Ctrl-C (drains in-flight streams)" (CLI)    -> test_sigint_drains_the_stream_in_flight_and_refuses_new_ones
"/v1/completions ... work, streaming or not"             -> test_legacy_completions_stream_event_by_event
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RESPONSES_BODY, read_sse, wait_for
from tests.fakeupstream import B

CHAT_BODY = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY = {"model": "gpt-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def stored_accounts(proxy) -> dict[str, dict]:
    """The accounts as the proxy wrote them (atomically replaced file), by fake account id; keeps
    status_until even once a window is over, unlike `accounts list`."""
    table = json.loads(proxy.store_path.read_text()).get("accounts", {})
    return {doc["chatgpt_account_id"]: doc for doc in table.values()}


def post(proxy, path="/v1/responses", body=None, **kw) -> httpx.Response:
    return httpx.post(proxy.url + path, json=RESPONSES_BODY if body is None else body,
                      headers={**proxy.auth, **kw.pop("headers", {})}, timeout=kw.pop("timeout", 30), **kw)


# --- the failure table ---------------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_untouched_in_every_protocol(make_proxy, fake, status):
    """The client gets the answer (in its own protocol), the account is not cooled, no second
    account is tried."""
    proxy = make_proxy(accounts=2)
    first, _ = proxy.fake_accounts
    message = f"fake {status}: this request is wrong"
    error = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None, "param": None}})
    fake.script(first, *[B.status(status, body=error) for _ in range(3)])
    answers = {"responses": post(proxy), "chat": post(proxy, "/v1/chat/completions", CHAT_BODY),
               "anthropic": post(proxy, "/v1/messages", ANTHROPIC_BODY, headers={"anthropic-version": "2023-06-01"})}
    for protocol, r in answers.items():
        assert r.status_code == status, (protocol, r.text)
        assert message in r.text, (protocol, r.text)
    assert answers["anthropic"].json()["type"] == "error"
    assert [r.account_id for r in fake.requests] == [first.account_id] * 3
    account = stored_accounts(proxy)[first.account_id]
    assert account["status"] == "active" and account["cooldown_level"] == 0 and account["status_until"] is None


def test_5xx_cools_30_to_60_seconds_and_fails_over(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.server_error(status=500))
    before = time.time()
    r = post(proxy)
    after = time.time()
    assert r.status_code == 200
    assert [req.account_id for req in fake.requests] == [first.account_id, second.account_id]
    listed = {a["chatgpt_account_id"]: a for a in proxy.cli_json("accounts", "list")}[first.account_id]
    assert listed["status"] == "cooling" and before + 30 <= listed["status_until"] <= after + 60


def test_connect_failure_and_idle_timeout_cool_30_to_60_seconds(make_proxy, fake):
    # Idle: the first account's upstream never answers; the second one serves.
    proxy = make_proxy({"upstream": {"stream_idle_timeout_s": 1}}, accounts=2)
    first, second = proxy.fake_accounts
    fake.script(first, B.hang(seconds=20))
    before = time.time()
    r = post(proxy)
    after = time.time()
    assert r.status_code == 200
    idle = stored_accounts(proxy)[first.account_id]
    assert idle["status"] == "cooling" and "idle" in idle["status_reason"]
    assert before + 30 <= idle["status_until"] <= after + 60
    assert stored_accounts(proxy)[second.account_id]["status"] == "active"
    fake.reset()  # releases the hanging request

    # Connect failure: nothing listens where the upstream should be; every account cools.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    down = make_proxy({"upstream": {"base_url": f"http://127.0.0.1:{port}/backend-api/codex"}}, accounts=2)
    before = time.time()
    r = post(down)
    after = time.time()
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
    for acct in down.fake_accounts:
        stored = stored_accounts(down)[acct.account_id]
        assert stored["status"] == "cooling" and "connect" in stored["status_reason"]
        assert before + 30 <= stored["status_until"] <= after + 60


# --- plugins from outside the repository ---------------------------------------------------------

def header_plugin(header: str, value: str) -> str:
    return ("from codexproxy import hookimpl\n\n"
            "@hookimpl\n"
            "def codexproxy_upstream_request(app, exchange, headers):\n"
            f"    headers[{header!r}] = {value!r}\n")


def test_entry_point_plugin_is_loaded_and_runs(make_proxy, fake, tmp_path):
    """An installed distribution (a dist-info on sys.path) registering in the `codexproxy` group."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "team_header_plugin.py").write_text(header_plugin("x-team", "blue"))
    dist = site / "team_header_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: team-header-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[codexproxy]\nteam = team_header_plugin\n")
    proxy = make_proxy(env={"PYTHONPATH": str(site)})
    listed = {p["name"]: p for p in proxy.cli_json("plugins")}
    assert listed["team"]["source"] == "entry point" and listed["team"]["enabled"] is True
    assert "codexproxy_upstream_request" in listed["team"]["hooks"]
    assert post(proxy).status_code == 200
    assert fake.requests[0].headers["x-team"] == "blue"


def test_plugin_paths_file_directory_and_module_name(make_proxy, fake, tmp_path):
    folder = tmp_path / "plugin_dir"
    folder.mkdir()
    (folder / "alpha.py").write_text(header_plugin("x-from-dir-alpha", "1"))
    (folder / "beta.py").write_text(header_plugin("x-from-dir-beta", "2"))
    (folder / "_private.py").write_text("raise RuntimeError('files starting with _ are not plugins')\n")
    single = tmp_path / "single_file.py"
    single.write_text(header_plugin("x-from-file", "3"))
    modules = tmp_path / "modules"
    (modules / "teamplugins").mkdir(parents=True)
    (modules / "teamplugins" / "__init__.py").write_text("")
    (modules / "teamplugins" / "gamma.py").write_text(header_plugin("x-from-module", "4"))
    proxy = make_proxy({"plugin_paths": [str(folder), str(single), "teamplugins.gamma"]},
                       env={"PYTHONPATH": str(modules)})
    listed = {p["name"]: p for p in proxy.cli_json("plugins")}
    assert {"alpha", "beta", "single_file", "gamma"} <= set(listed) and "_private" not in listed
    assert listed["gamma"]["source"] == "teamplugins.gamma"
    assert listed["alpha"]["source"] == str(folder / "alpha.py")
    assert post(proxy).status_code == 200
    sent = fake.requests[0].headers
    assert (sent["x-from-dir-alpha"], sent["x-from-dir-beta"], sent["x-from-file"], sent["x-from-module"]) == ("1", "2", "3", "4")


# --- adapter off -----------------------------------------------------------------------------------

def test_adapter_off_is_a_raw_responses_passthrough(make_proxy, fake):
    proxy = make_proxy({"plugins": {"adapter": {"enabled": False}}})
    # What the adapter would change: a sampling field, a system role, store; bytes as the client wrote them.
    raw = (b'{"model": "gpt-5-codex(high)",  "stream": true, "store": false, "temperature": 0.3,\n'
           b' "input": [{"type": "message", "role": "system", "content": [{"type": "input_text", "text": "hi"}]}]}')
    fake.script(proxy.fake_accounts[0], B.ok(text="raw", rate_limits=True))
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", content=raw,
                           headers={**proxy.auth, "content-type": "application/json"}) as r:
            body = r.read()
    assert r.status_code == 200
    assert fake.requests[0].body == raw  # not re-serialised, nothing stripped or renamed
    kinds = [line[7:] for line in body.decode().splitlines() if line.startswith("event: ")]
    assert kinds[0] == "codex.rate_limits"  # the adapter drops it for SDK clients; raw keeps it
    assert kinds[-1] == "response.completed"
    # The adapter's own routes are gone with it.
    assert post(proxy, "/v1/chat/completions", CHAT_BODY).status_code == 404
    assert httpx.get(proxy.url + "/v1/models", headers=proxy.auth, timeout=30).status_code == 404


# --- Ctrl-C ----------------------------------------------------------------------------------------

def test_sigint_drains_the_stream_in_flight_and_refuses_new_ones(make_proxy, fake):
    proxy = make_proxy({"server": {"drain_timeout_s": 30}})
    fake.script(proxy.fake_accounts[0], B.drip(delay=1.0, count=8))  # 8 s in flight
    first_event = threading.Event()
    result: dict = {}

    def client() -> None:
        try:
            with proxy.client(timeout=60) as c:
                with c.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
                    events = []
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            events.append(line[7:])
                            first_event.set()
                    result["status"], result["events"] = r.status_code, events
        except Exception as exc:  # reported by the assertions below
            result["error"] = repr(exc)
        finally:
            first_event.set()

    thread = threading.Thread(target=client)
    thread.start()
    assert first_event.wait(30) and "error" not in result, result
    proxy.process.send_signal(signal.SIGINT)

    def refused() -> bool:
        try:
            httpx.get(proxy.url + "/health", timeout=2)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            return False
        return False

    wait_for(refused, timeout=20, what="new connections to be refused after SIGINT")
    assert thread.is_alive(), "the stream should still be in flight while new requests are refused"
    thread.join(60)
    assert result.get("status") == 200, result
    assert result["events"][-1] == "response.completed"
    assert result["events"].count("response.output_text.delta") == 8
    assert proxy.process.wait(30) == 0
    assert "draining" in proxy.log_text()


# --- legacy completions, streamed ------------------------------------------------------------------

def test_legacy_completions_stream_event_by_event(proxy, fake):
    fake.script(proxy.fake_accounts[0], B.drip(delay=0.5, count=4, text="one two three four"))
    with proxy.client() as client:
        with client.stream("POST", "/v1/completions", headers=proxy.auth,
                           json={"model": "gpt-5", "prompt": "Count", "stream": True}) as r:
            events = read_sse(r)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = [d for _, _, d in events]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "one two three four"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    texts = [t for t, _, d in events[:-1] if json.loads(d)["choices"] and json.loads(d)["choices"][0]["text"]]
    assert len(texts) == 4 and all(b - a > 0.25 for a, b in zip(texts, texts[1:])), "not streamed chunk by chunk"
    assert fake.requests[0].json["input"][0]["content"][0]["text"] == "Count"


def test_the_admin_plugin_adds_keys_rpc_and_admin_token(make_proxy):
    """"The admin plugin adds the `keys` commands above ..., `rpc` and `admin-token`" (CLI): off,
    they are gone; the core's own commands stay."""
    on = make_proxy(accounts=0, key=False, start=False)
    off = make_proxy({"plugins": {"admin": {"enabled": False}}}, accounts=0, key=False, start=False, name="off")
    for command in (("keys", "list"), ("rpc", "health"), ("admin-token",)):
        assert on.cli(*command).returncode == 0
        refused = off.cli(*command)
        assert refused.returncode == 2 and "invalid choice" in refused.stderr and "Traceback" not in refused.stderr
    assert off.cli("plugins", check=True).stdout and off.cli("accounts", "list", check=True).stdout
