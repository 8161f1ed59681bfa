"""Security: no secret leaks anywhere, secrets at rest, admin surfaces, not an open proxy, binds.

- No access/refresh/id token the fake issued, platform key, admin token or plugins.cookies
  cookie appears in a log file, a request-log row, the proxy's stdout/stderr (debug logging and
  hook tracing on), CLI output, an HTTP answer or an error message: the test greps all of it.
- Platform keys are stored hashed; the store, logs, run file, admin token and exports are 0600.
- The admin surfaces (/rpc, /status, /metrics with a token) refuse missing and wrong tokens and
  cross-site requests; the admin plugin is built in, so a 404 from /rpc fails these tests.
- Not an open proxy: absolute-form URIs, CONNECT, a forged Host or X-Forwarded-Host never make
  the proxy contact anything but the configured upstream (a CanaryServer stands where they point).
- The default bind is loopback; any other bind logs a warning naming the exposure.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from codexproxy.store import KeyRepo, Store
from tests.adminkit import login as admin_login
from tests.adminkit import csrf_of
from tests.conftest import PYTHON, RESPONSES_BODY, base_config, clean_env, read_sse
from tests.fakeupstream import B, CanaryServer

pytestmark = pytest.mark.reliability

COOKIE = "cf_clearance=COOKIE-SECRET-" + "c0ffee" * 6
CHAT_BODY = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY = {"model": "gpt-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def issued_tokens(fake, accounts) -> list[str]:
    """Every access, refresh and id token the fake ever issued for these accounts."""
    ids = {a.account_id for a in accounts}
    out = [t for t, aid in fake._access.items() if aid in ids]
    out += [t for t, aid in fake._refresh.items() if aid in ids]
    out += list(fake._dead_refresh)  # rotated-out refresh tokens (only ours rotate in this test)
    for acct in accounts:
        out += [acct.id_token, acct.access_token, acct.refresh_token]
    return [t for t in out if t]


def grep_secrets(text: str, secrets: dict[str, str], where: str) -> list[str]:
    return [f"{name} in {where}" for name, value in secrets.items() if value and value in text]


def file_texts(root: Path, skip: set[Path]) -> dict[str, str]:
    out = {}
    for path in root.rglob("*"):
        if not path.is_file() or any(path == s or s in path.parents for s in skip):
            continue
        out[str(path.relative_to(root))] = path.read_bytes().decode("utf-8", "replace")
    return out


# --- no secret anywhere ------------------------------------------------------------------------------

def test_no_secret_in_logs_rows_output_answers_or_cli(make_proxy, fake, tmp_path):
    proxy = make_proxy({"plugins": {"cookies": {"enabled": True, "cookie": COOKIE}}}, accounts=2, start=False,
                       env={"CODEXPROXY_TRACE_HOOKS": "1"})
    originals = [(a.access_token, a.refresh_token, a.id_token) for a in proxy.fake_accounts]
    proxy.start("-v")  # debug logging and hook tracing: the most the proxy ever writes
    first, second = proxy.fake_accounts
    second_key = proxy.create_key("other")
    answers: list[str] = []

    def keep(r: httpx.Response) -> httpx.Response:
        answers.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r

    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            answers.append(str(read_sse(r)))
        keep(client.post("/v1/chat/completions", json=CHAT_BODY, headers=proxy.auth))
        keep(client.post("/v1/messages", json={**ANTHROPIC_BODY, "stream": True}, headers={"x-api-key": second_key}))
        keep(client.post("/v1/messages/count_tokens", json=ANTHROPIC_BODY, headers={"x-api-key": proxy.key}))
        keep(client.get("/v1/models", headers=proxy.auth))
        keep(client.post("/v1/responses?api_key=" + proxy.key, json=RESPONSES_BODY, headers=proxy.auth))
        # Failures on the way: an expired token (refreshed: new tokens are issued, old ones rotate out),
        # a usage limit (failover), a Cloudflare challenge, a request error passed through, a cut.
        fake.script(first, B.unauthorized())
        keep(client.post("/v1/chat/completions", json=CHAT_BODY, headers=proxy.auth))
        fake.script(first, B.usage_limit(resets_in=600))
        keep(client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth))
        fake.script(second, B.cloudflare(), B.bad_request(message="Unsupported parameter: foo"))
        keep(client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth))
        keep(client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth))
        refreshes = fake.refresh_calls
        fake.reset()
        # Wrong keys that look like the right one: the answer must not echo what was offered.
        keep(client.post("/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {proxy.key}x"}))
        keep(client.post("/v1/messages", json=ANTHROPIC_BODY, headers={"x-api-key": proxy.key[:-1]}))
        keep(client.post("/v1/responses", content=b"not json " + proxy.key.encode(), headers=proxy.auth))
        keep(client.get("/health"))
        keep(client.get("/metrics"))
        admin = {"authorization": f"Bearer {proxy.admin_token}"}
        # The admin plugin is built in: its surfaces must answer (and leak nothing), a 404 fails.
        for method in ("keys.list", "accounts.list", "logs.query", "plugins.list", "usage.get", "usage.history", "health", "jobs.list"):
            r = keep(client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}, headers=admin))
            assert r.status_code == 200 and "result" in r.json(), f"{method}: {r.status_code} {r.text[:200]}"
        r = keep(client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "keys.list"}, headers={"authorization": "Bearer " + proxy.key}))
        assert r.status_code == 401, r.text[:200]
        for page in ("/status", "/status/accounts", "/status/keys", "/status/logs", "/status/settings", "/status/plugins"):
            r = keep(client.get(page, headers=admin))
            assert r.status_code == 200, f"{page}: {r.status_code}"
    time.sleep(0.5)
    cli_out = []
    account_id = proxy.cli_json("accounts", "list")[0]["id"]
    for args in (("accounts", "list"), ("accounts", "list", "--json"), ("keys", "list"), ("keys", "list", "--json"),
                 ("logs",), ("logs", "--json", "--limit", "100"), ("logs", "export", "--format", "jsonl"),
                 ("logs", "export", "--format", "csv"), ("plugins",), ("plugins", "--json"), ("codex-config",),
                 ("accounts", "show", account_id, "--json"), ("usage",), ("usage", "--json"), ("rpc", "keys.list"),
                 ("rpc", "accounts.list"), ("keys", "create", "third", "--json")):
        result = proxy.cli(*args)
        text = result.stdout + result.stderr
        if args[:2] == ("keys", "create"):
            text = text.replace(json.loads(result.stdout)["key"], "<the new key, shown once by design>")
        cli_out.append((" ".join(args), text))
    proxy.stop()

    secrets = {"platform key": proxy.key, "second platform key": second_key, "admin token": proxy.admin_token, "cookie": COOKIE}
    for i, token in enumerate(issued_tokens(fake, proxy.fake_accounts) + [t for trio in originals for t in trio]):
        secrets[f"account token #{i} ({token[:6]}...)"] = token
    found: list[str] = []
    found += grep_secrets(proxy.log_text(), secrets, "the proxy's stdout/stderr")
    for i, text in enumerate(answers):
        found += grep_secrets(text, secrets, f"HTTP answer #{i}: {text[:80]!r}")
    for name, text in cli_out:
        found += grep_secrets(text, secrets, f"`codexproxy {name}`")
    # Every file the proxy wrote, except the ones that hold secrets by design.
    data = proxy.data_dir
    skip = {proxy.store_path, data / "admin_token", proxy.dir / "auth", proxy.config_path, data / "mitmproxy"}
    for name, text in file_texts(proxy.dir, skip).items():
        found += grep_secrets(text, secrets, f"file {name}")
    assert not found, "secrets leaked:\n" + "\n".join(found)
    # The request log really has rows (the grep saw something), and a refresh really issued new tokens.
    assert len(proxy.cli_json("logs", "--limit", "100")) >= 8
    assert refreshes >= 1


def test_keys_are_hashed_at_rest_and_files_are_0600(make_proxy, fake, tmp_path):
    proxy = make_proxy(accounts=1)
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth, timeout=30)
    assert r.status_code == 200
    export = tmp_path / "logs-export.csv"
    proxy.cli("logs", "export", "--format", "csv", "--out", str(export), check=True)
    accounts_out = tmp_path / "accounts-export"
    result = proxy.cli("accounts", "export", "--all", "--out", str(accounts_out))
    proxy.stop()

    raw = proxy.store_path.read_text()
    assert proxy.key not in raw
    assert proxy.key[len("cpk-"):] not in raw
    assert hashlib.sha256(proxy.key.encode()).hexdigest() in raw
    stored = KeyRepo(Store(proxy.store_path)).all()[0]
    assert stored.prefix and len(stored.prefix) <= 12 and proxy.key.startswith(stored.prefix)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    data = proxy.data_dir
    assert mode(proxy.store_path) == 0o600
    assert mode(data) == 0o700
    assert mode(data / "admin_token") == 0o600 if (data / "admin_token").exists() else True
    assert mode(data / "logs") == 0o700
    for segment in (data / "logs").glob("*.jsonl"):
        assert mode(segment) == 0o600, segment
    for lock in data.glob("*.lock"):
        assert mode(lock) & 0o077 == 0, lock
    assert mode(export) == 0o600
    if result.returncode == 0:
        files = [p for p in accounts_out.rglob("*") if p.is_file()]
        assert files, result.stdout
        for path in files:
            assert mode(path) == 0o600, path
    else:
        pytest.fail(f"accounts export failed: {result.stderr}")


# --- admin surfaces ------------------------------------------------------------------------------------

@pytest.fixture
def admin_proxy(make_proxy):
    proxy = make_proxy({"metrics": {"token": "metrics-token-" + "9" * 20}}, accounts=1)
    r = httpx.post(proxy.url + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "keys.list"},
                   headers={"authorization": f"Bearer {proxy.admin_token}"}, timeout=10)
    assert r.status_code == 200 and "result" in r.json(), f"the admin plugin is built in; /rpc answered {r.status_code}"
    return proxy


def rpc(proxy, headers, method="keys.list") -> httpx.Response:
    return httpx.post(proxy.url + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method}, headers=headers, timeout=10)


def test_rpc_refuses_missing_wrong_and_non_admin_tokens(admin_proxy):
    good = {"authorization": f"Bearer {admin_proxy.admin_token}"}
    assert rpc(admin_proxy, good).status_code == 200
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {admin_proxy.admin_token[:-1]}"},
                    {"authorization": f"Bearer {admin_proxy.key}"},  # a platform key is not an admin token
                    {"x-api-key": admin_proxy.admin_token}, {"authorization": f"Basic {admin_proxy.admin_token}"},
                    {"cookie": f"codexproxy_session={admin_proxy.admin_token}"}):
        r = rpc(admin_proxy, headers)
        assert r.status_code == 401, f"{list(headers)}: {r.status_code} {r.text[:200]}"
        assert "result" not in r.json()
        assert admin_proxy.admin_token not in r.text


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"origin": "http://127.0.0.1.evil.example"},
    {"origin": "null"},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site", "origin": "http://localhost:1"},
])
def test_rpc_refuses_cross_site_requests_even_with_the_token(admin_proxy, headers):
    before = len(admin_proxy.cli_json("keys", "list"))
    r = rpc(admin_proxy, {"authorization": f"Bearer {admin_proxy.admin_token}", **headers}, method="keys.list")
    assert r.status_code == 403, r.text
    r = httpx.post(admin_proxy.url + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "keys.create", "params": {"name": "csrf"}},
                   headers={"authorization": f"Bearer {admin_proxy.admin_token}", **headers}, timeout=10)
    assert r.status_code == 403
    assert len(admin_proxy.cli_json("keys", "list")) == before


def test_status_page_needs_a_session_and_refuses_cross_site_forms(admin_proxy):
    url = admin_proxy.url
    r = httpx.get(url + "/status", headers={"accept": "application/json"}, timeout=10)
    assert r.status_code == 401
    r = httpx.get(url + "/status/keys", headers={"accept": "text/html"}, timeout=10)
    assert r.status_code == 303 and "/status/login" in r.headers["location"]
    r = httpx.get(url + "/status", headers={"authorization": "Bearer wrong", "accept": "text/html"}, timeout=10)
    assert r.status_code == 303 and "/status/login" in r.headers["location"] and admin_proxy.admin_token not in r.text
    # A wrong token at the login form: refused.
    with httpx.Client(base_url=url, timeout=10, headers={"accept": "text/html"}) as client:
        page = client.get("/status/login")
        r = client.post("/status/login", data={"csrf": csrf_of(page.text), "token": "wrong", "next": "/status"})
        assert r.status_code == 401 and "codexproxy_session" not in r.headers.get("set-cookie", "")
        # A cross-site login post is refused even with the right token.
        r = client.post("/status/login", data={"csrf": csrf_of(page.text), "token": admin_proxy.admin_token},
                        headers={"origin": "http://evil.example"})
        assert r.status_code == 403
    # A logged-in browser: a form posted from another site changes nothing.
    client = admin_login(admin_proxy)
    try:
        before = len(admin_proxy.cli_json("keys", "list"))
        token = csrf_of(client.get("/status/keys").text)
        for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
            r = client.post("/status/keys/create", data={"csrf": token, "name": "csrf-attack"}, headers=headers)
            assert r.status_code == 403, r.text[:300]
        r = client.post("/status/keys/create", data={"csrf": "forged", "name": "csrf-attack"})
        assert r.status_code == 403
        assert len(admin_proxy.cli_json("keys", "list")) == before
    finally:
        client.close()


def test_metrics_token_is_enforced(admin_proxy):
    url = admin_proxy.url + "/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer metrics-token-" + "9" * 20}, timeout=10).status_code == 200


# --- not an open proxy ------------------------------------------------------------------------------------

def raw_request(proxy, data: bytes, wait: float = 5.0) -> bytes:
    host, port = proxy.url.split("//")[1].rsplit(":", 1)
    out = b""
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(data)
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if out.endswith(b"0\r\n\r\n") or _whole(out):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
    return out


def _whole(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    return bool(sep and m and len(body) >= int(m.group(1)))


def test_not_an_open_proxy(make_proxy, fake):
    canary = CanaryServer().start()
    try:
        proxy = make_proxy(accounts=1)
        target = f"127.0.0.1:{canary.port}"
        body = json.dumps(RESPONSES_BODY).encode()
        auth = f"Authorization: Bearer {proxy.key}\r\n".encode()

        def post(line: bytes, extra: bytes = b"", with_auth: bool = True) -> bytes:
            return raw_request(proxy, line + b"\r\nHost: " + target.encode() + b"\r\n" + (auth if with_auth else b"") + extra +
                               b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

        answers = {
            "absolute-form POST": post(f"POST http://{target}/v1/responses HTTP/1.1".encode()),
            "absolute-form https POST": post(f"POST https://{target}/backend-api/codex/responses HTTP/1.1".encode()),
            "absolute-form unauthenticated": post(f"POST http://{target}/v1/responses HTTP/1.1".encode(), with_auth=False),
            "absolute-form GET": raw_request(proxy, f"GET http://{target}/v1/models HTTP/1.1\r\nHost: {target}\r\n".encode() + auth + b"\r\n"),
            "absolute-form unknown path": raw_request(proxy, f"GET http://{target}/anything HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()),
            "forged Host": post(b"POST /v1/responses HTTP/1.1"),
            "X-Forwarded-Host": post(b"POST /v1/responses HTTP/1.1", f"X-Forwarded-Host: {target}\r\nX-Forwarded-Proto: http\r\n"
                                                                     f"Forwarded: host={target};proto=http\r\nX-Forwarded-Port: {canary.port}\r\n".encode()),
            "X-Original-URL": post(b"POST /v1/responses HTTP/1.1", f"X-Original-URL: http://{target}/\r\nX-Rewrite-URL: http://{target}/\r\n".encode()),
            "scheme-relative path": raw_request(proxy, f"GET //{target}/v1/models HTTP/1.1\r\nHost: {target}\r\n".encode() + auth + b"\r\n"),
            "CONNECT": raw_request(proxy, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nGET / HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()),
        }
        for name, raw in answers.items():
            assert raw.startswith(b"HTTP/1.1 "), f"{name}: {raw[:200]!r}"
            status = int(raw.split(b" ", 2)[1])
            assert status < 500, f"{name}: {raw[:300]!r}"
            assert b"canary" not in raw, f"{name} reached the canary: {raw[:300]!r}"
        # mitmproxy in reverse mode refuses CONNECT itself; the HTTP server says what that means.
        assert answers["CONNECT"].startswith(b"HTTP/1.1 405 "), answers["CONNECT"][:300]
        assert b"not a forward proxy" in answers["CONNECT"] and b'"code": "method_not_allowed"' in answers["CONNECT"]
        assert int(answers["absolute-form unauthenticated"].split(b" ", 2)[1]) == 401
        assert canary.connections == [] and canary.requests == [], f"the proxy contacted the canary: {canary.requests[:3]}"
        # The gateway requests that were served went to the configured upstream, with the account's token.
        assert len(fake.requests) >= 4 and all(r.path == "/backend-api/codex/responses" for r in fake.requests)
        assert all(r.headers["authorization"] == f"Bearer {proxy.fake_accounts[0].access_token}" for r in fake.requests)
        assert all(target not in json.dumps(r.headers) for r in fake.requests), "the forged host reached the upstream's headers"
    finally:
        canary.stop()


# --- binding ---------------------------------------------------------------------------------------------

def _run_until_listening(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 30) -> list[str]:
    proc = subprocess.Popen([PYTHON, "-m", "codexproxy", "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd, env=clean_env(env))
    lines: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if "listening on" in line:
                break
    finally:
        proc.terminate()
        try:
            rest, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        lines += rest.splitlines()
    return lines


def test_default_bind_is_loopback(tmp_path, fake):
    cfg = tmp_path / "config.yaml"
    config = base_config(tmp_path, fake)
    del config["server"]["host"]
    cfg.write_text(yaml.safe_dump(config))
    lines = _run_until_listening(["-c", str(cfg)], tmp_path, {"HOME": str(tmp_path)})
    listening = [l for l in lines if "listening on" in l]
    assert listening and "listening on http://127.0.0.1:" in listening[0], lines
    assert not any("reachable from other machines" in l for l in lines)


def test_binding_elsewhere_warns_naming_the_exposure(tmp_path, fake):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tmp_path, fake)))
    lines = _run_until_listening(["-c", str(cfg), "--host", "0.0.0.0", "--port", "0"], tmp_path, {"HOME": str(tmp_path)})
    assert any("listening on" in l for l in lines), lines
    warnings = [l for l in lines if "WARNING" in l and "0.0.0.0" in l]
    assert warnings, lines
    assert any("other machines" in w or "network" in w for w in warnings), warnings
