"""accounts login: the browser flow (httpx plays the browser), manual paste across two CLI
invocations, the device-code flow, the proxy's login.* RPC methods, and bad input."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PYTHON, Proxy, base_config, deep_merge

AUTHORIZE = re.compile(r"(https?://\S+/oauth/authorize\?\S+)")


def new_proxy(tmp_path: Path, fake, overrides: dict | None = None) -> Proxy:
    return Proxy(tmp_path / "p", deep_merge(base_config(tmp_path / "p", fake), overrides or {}))


def accounts(proxy: Proxy) -> list[dict]:
    return proxy.cli_json("accounts", "list")


def start_login(proxy: Proxy, *extra: str) -> tuple[subprocess.Popen, str]:
    """`accounts login --no-browser` in the background; returns it and the URL it printed."""
    cmd = [PYTHON, "-m", "codexproxy", "accounts", "login", "--no-browser", *extra, "-c", str(proxy.config_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=proxy.dir, env=proxy.env)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = AUTHORIZE.search(line)
        if m:
            return proc, m.group(1)
    proc.wait(5)
    raise AssertionError(f"no authorize URL printed:\n{proc.stderr.read() if proc.stderr else ''}")


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_browser_flow_end_to_end(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake)
    proc, url = start_login(proxy, "--group", "team", "--tag", "a", "--tag", "b", "--note", "laptop")
    assert "code_challenge_method=S256" in url and "state=" in url and "originator=codex_cli_rs" in url
    page = httpx.get(url, follow_redirects=True, timeout=20, verify=fake.verify)  # issuer -> 302 -> our loopback listener
    assert page.status_code == 200 and "Signed in" in page.text
    code, out, err = finish(proc)
    assert code == 0, err
    [acct] = accounts(proxy)
    assert re.search(rf"added\s+{acct['id']}\s+{re.escape(acct['email'])}", out)
    login = next(a for a in fake.accounts.values() if a.email == acct["email"])
    assert acct["chatgpt_account_id"] == login.account_id and acct["plan"] == "plus"
    assert acct["group"] == "team" and acct["tags"] == ["a", "b"] and acct["note"] == "laptop"
    assert acct["token_expires_at"] > time.time() + 3000 and acct["last_refresh"] > time.time() - 60
    assert login.access_token not in out + err and login.refresh_token not in out + err
    # The authorization code works once: the pending login is completed and single-use.
    again = proxy.cli("accounts", "login", "--callback-url", page.history[-1].headers["location"])
    one_line_error(again, "already completed")
    assert len(accounts(proxy)) == 1


@pytest.mark.parametrize("error, words", [("access_denied", "declined"), ("missing_codex_entitlement", "no access to Codex")])
def test_error_callback_is_shown_in_words(tmp_path, fake, error, words):
    proxy = new_proxy(tmp_path, fake)
    fake.authorize_error = error
    proc, url = start_login(proxy)
    page = httpx.get(url, follow_redirects=True, timeout=20, verify=fake.verify)
    assert page.status_code == 400 and words in page.text
    code, _, err = finish(proc)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err and error in err
    assert accounts(proxy) == []


def test_wrong_state_on_the_listener_fails_cleanly(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake)
    proc, url = start_login(proxy)
    redirect = httpx.URL(url).params["redirect_uri"]
    page = httpx.get(redirect, params={"code": "ac_x", "state": "not-the-state"}, timeout=10)
    assert page.status_code == 400
    code, _, err = finish(proc)
    assert code == 2 and "state does not match" in err and len(err.strip().splitlines()) == 1
    assert accounts(proxy) == []


def test_login_times_out_with_a_clear_message(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake, {"oauth": {"login_timeout_s": 1}})
    started = time.monotonic()
    result = proxy.cli("accounts", "login", "--no-browser")
    one_line_error(result, "timed out after 1s", "--callback-url")
    assert time.monotonic() - started < 15


def test_busy_port_names_the_port_and_suggests_paste(tmp_path, fake):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proxy = new_proxy(tmp_path, fake, {"oauth": {"login_addr": f"127.0.0.1:{port}"}})
        result = proxy.cli("accounts", "login", "--no-browser")
    one_line_error(result, f"127.0.0.1:{port}", "--callback-url")


def test_non_loopback_listener_is_refused(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake, {"oauth": {"login_addr": "0.0.0.0:0"}})
    one_line_error(proxy.cli("accounts", "login", "--no-browser"), "not a loopback address", "allow_non_loopback_login")


def test_manual_paste_across_two_invocations(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake)
    first = proxy.cli("accounts", "login", "--no-browser", "--no-listen", "--tag", "remote", check=True)
    url = AUTHORIZE.search(first.stdout).group(1)
    assert "--callback-url" in first.stdout
    assert httpx.URL(url).params["redirect_uri"] == "http://localhost:1455/auth/callback"  # Codex's registered port
    hop = httpx.get(url, follow_redirects=False, timeout=10, verify=fake.verify)  # the browser would land on this unreachable URL
    callback = hop.headers["location"]
    assert callback.startswith("http://localhost:1455/auth/callback?code=")
    assert accounts(proxy) == []
    done = proxy.cli("accounts", "login", "--callback-url", callback, "--json", check=True)
    data = json.loads(done.stdout)
    assert data["created"] is True and data["tags"] == ["remote"] and "access_token" not in data
    one_line_error(proxy.cli("accounts", "login", "--callback-url", callback), "already completed")
    assert len(accounts(proxy)) == 1


@pytest.mark.parametrize("url, needle", [
    ("definitely not a url", "not a login callback URL"),
    ("http://localhost:1455/auth/callback", "not a login callback URL"),
    ("ftp://localhost:1455/auth/callback?code=a&state=b", "not a login callback URL"),
    ("http://localhost:1455/auth/callback?code=abc&state=unknown-state", "no pending login matches"),
])
def test_bad_callback_urls_store_nothing(tmp_path, fake, url, needle):
    proxy = new_proxy(tmp_path, fake)
    proxy.cli("accounts", "login", "--no-browser", "--no-listen", check=True)
    one_line_error(proxy.cli("accounts", "login", "--callback-url", url), needle)
    assert accounts(proxy) == []


def test_expired_pending_login_is_refused(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake, {"oauth": {"pending_login_ttl_s": 1}})
    first = proxy.cli("accounts", "login", "--no-browser", "--no-listen", check=True)
    callback = httpx.get(AUTHORIZE.search(first.stdout).group(1), timeout=10, verify=fake.verify).headers["location"]
    time.sleep(1.2)
    one_line_error(proxy.cli("accounts", "login", "--callback-url", callback), "expired")
    assert accounts(proxy) == []
    assert not any(r.path == "/oauth/token" for r in fake.all_requests)  # the code never reached the issuer


def test_device_flow(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake)
    fake.device_auto_approve_after = 1
    result = proxy.cli("accounts", "login", "--device", "--group", "ci", check=True)
    assert re.search(r"\b[A-Z0-9]{4}-[A-Z0-9]{4}\b", result.stdout) and f"{fake.issuer}/codex/device" in result.stdout
    [acct] = accounts(proxy)
    assert acct["group"] == "ci" and acct["status"] == "active"
    polls = [r for r in fake.all_requests if r.path == "/api/accounts/deviceauth/token"]
    assert len(polls) == 2  # one pending answer, then the code


def test_device_flow_times_out(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake, {"oauth": {"login_timeout_s": 1.5}})
    one_line_error(proxy.cli("accounts", "login", "--device"), "timed out")
    assert accounts(proxy) == []


def test_login_again_renews_the_same_account(tmp_path, fake):
    proxy = new_proxy(tmp_path, fake)
    acct = fake.add_account()
    proxy.import_account(fake, acct)
    fake.invalidate_refresh(acct)
    fake.expire_access_token(acct)
    one_line_error(proxy.cli("accounts", "refresh"), "could not be refreshed")
    assert accounts(proxy)[0]["status"] == "reauth_required"
    fake.next_login_account = acct
    proc, url = start_login(proxy)
    httpx.get(url, follow_redirects=True, timeout=20, verify=fake.verify)
    code, out, _ = finish(proc)
    assert code == 0 and "renewed" in out
    [stored] = accounts(proxy)
    assert stored["status"] == "active" and stored["chatgpt_account_id"] == acct.account_id


# --- the running proxy's side: login.* RPC methods, in process -----------------------------------



def rpc(app, method, params=None):
    """Call a method the way the admin plugin does: from the tables of codexproxy_rpc_methods."""
    table = {}
    for part in app.hook.codexproxy_rpc_methods(app=app):
        table.update(part)
    return table[method](app, params if params is not None else {})


def test_rpc_login_start_listens_and_status_follows(app, fake):
    started = rpc(app, "login.start", {"group": "web"})
    assert started["listening"] is True and started["status"] == "pending" and "verifier" not in started
    page = httpx.get(started["url"], follow_redirects=True, timeout=20, verify=fake.verify)
    assert page.status_code == 200 and "Signed in" in page.text
    status = rpc(app, "login.status", {"id": started["id"]})
    assert status["status"] == "completed" and status["account"]["group"] == "web"
    assert "access_token" not in json.dumps(status)


def test_rpc_login_complete_by_paste_and_bad_params(app, fake):
    started = rpc(app, "login.start", {"listen": False})
    assert started["listening"] is False
    callback = httpx.get(started["url"], timeout=10, verify=fake.verify).headers["location"]
    with pytest.raises(ValueError, match="callback_url is required"):
        rpc(app, "login.complete", {})
    with pytest.raises(ValueError, match="not a login callback URL"):
        rpc(app, "login.complete", {"callback_url": "nope"})
    done = rpc(app, "login.complete", {"callback_url": callback, "id": started["id"]})
    assert done["created"] is True and done["email"] and "refresh_token" not in done
    with pytest.raises(ValueError, match="already completed"):
        rpc(app, "login.complete", {"callback_url": callback})
    with pytest.raises(ValueError, match="no login"):
        rpc(app, "login.status", {"id": "login_nope"})


def test_rpc_device_login_runs_in_the_background(app, fake):
    fake.device_auto_approve_after = 0
    started = rpc(app, "login.start", {"device": True})
    assert started["user_code"] and "device_auth_id" not in started
    deadline = time.time() + 10
    while rpc(app, "login.status", {"id": started["id"]})["status"] != "completed":
        assert time.time() < deadline
        time.sleep(0.1)
    assert len(app.accounts.all()) == 1
