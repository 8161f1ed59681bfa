"""Token lifecycle: exactly one upstream refresh for concurrent triggers (proxy threads and a
CLI process at once), refresh-on-401 through the proxy, rotation persisted, permanent errors,
the scheduled refresh job and its back-off."""

from __future__ import annotations

import concurrent.futures
import subprocess
import time

import pytest
import yaml

from codexproxy.app import App
from codexproxy.config import load_config
from codexproxy.models import Account
from codexproxy_plugins.accounts import tokens
from codexproxy_plugins.accounts.backoff import Schedule
from tests.conftest import wait_for, PYTHON, RESPONSES_BODY, base_config, deep_merge, read_sse


def wait_first_poll(proxy) -> None:
    """The jobs' first pass polls usage right after start: let it finish so it cannot race
    the refresh counts below."""
    wait_for(lambda: all(a.get("usage_updated_at") for a in proxy.cli_json("accounts", "list")), what="first usage poll")


def stream(proxy) -> tuple[int, list]:
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            return r.status_code, read_sse(r)


def test_concurrent_triggers_cause_one_upstream_refresh(make_proxy, fake):
    proxy = make_proxy()
    acct = proxy.fake_accounts[0]
    wait_first_poll(proxy)
    old_refresh = acct.refresh_token
    fake.refresh_delay = 1.5  # keeps the first refresh in flight while the others arrive
    fake.expire_access_token(acct)
    cli = subprocess.Popen([PYTHON, "-m", "codexproxy", "accounts", "refresh", "-c", str(proxy.config_path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=proxy.dir, env=proxy.env)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: stream(proxy), range(4)))
    out, err = cli.communicate(timeout=30)
    assert cli.returncode == 0, err
    assert all(status == 200 and events[-1][1] == "response.completed" for status, events in results)
    assert fake.refresh_calls == 1
    assert acct.refresh_token != old_refresh  # rotated once, and the new one is what we hold
    [stored] = proxy.cli_json("accounts", "list")
    assert stored["status"] == "active" and stored["refresh_failures"] == 0
    assert not fake.errors and "refresh_token_reused" not in proxy.log_text() + out + err
    # The rotated pair was persisted: the next refresh uses it and succeeds.
    proxy.cli("accounts", "refresh", stored["id"], check=True)
    assert fake.refresh_calls == 2


def test_refresh_on_401_through_the_proxy(make_proxy, fake):
    proxy = make_proxy()
    acct = proxy.fake_accounts[0]
    wait_first_poll(proxy)
    old_access = acct.access_token
    fake.expire_access_token(acct)
    status, events = stream(proxy)
    assert status == 200 and events[-1][1] == "response.completed"
    assert fake.refresh_calls == 1
    auths = [r.headers["authorization"] for r in fake.requests]
    assert auths == [f"Bearer {old_access}", f"Bearer {acct.access_token}"]  # same account, new token
    row = proxy.cli_json("logs")[0]
    assert [a["status"] for a in row["attempts"]] == [401, 200]


def test_permanent_refresh_error_needs_a_new_login(make_proxy, fake):
    proxy = make_proxy()
    acct = proxy.fake_accounts[0]
    wait_first_poll(proxy)
    fake.invalidate_refresh(acct, "refresh_token_expired")
    fake.expire_access_token(acct)
    with proxy.client() as client:
        r = client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    # The only account needs a new login: no account can serve (503), not the upstream's 401.
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "no_available_account"
    assert fake.refresh_calls == 1
    [stored] = proxy.cli_json("accounts", "list")
    assert stored["status"] == "reauth_required"  # the reason is the routing plugin's (401 after a refresh)
    result = proxy.cli("accounts", "refresh", stored["id"])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "refresh_token_expired" in result.stderr
    [stored] = proxy.cli_json("accounts", "list")
    assert stored["status"] == "reauth_required" and "refresh_token_expired" in stored["status_reason"]


def test_cli_refresh_all_and_unknown_account(make_proxy, fake):
    proxy = make_proxy(accounts=2, start=False)
    data = proxy.cli_json("accounts", "refresh")
    assert [r["ok"] for r in data] == [True, True] and fake.refresh_calls == 2
    assert all("access_token" not in r["account"] for r in data)
    result = proxy.cli("accounts", "refresh", "acc_nope")
    assert result.returncode == 2 and "no single account matches" in result.stderr


def test_scheduled_job_refreshes_tokens_about_to_expire(make_proxy, fake):
    fake.token_ttl = 120  # inside the default refresh lead (600 s)
    try:
        proxy = make_proxy(start=False)
    finally:
        fake.token_ttl = 3600
    before = proxy.cli_json("accounts", "list")[0]["token_expires_at"]
    proxy.start()
    wait_for(lambda: fake.refresh_calls >= 1, what="the scheduled refresh")
    after = wait_for(lambda: proxy.cli_json("accounts", "list")[0]["token_expires_at"] > before + 1000 and
                     proxy.cli_json("accounts", "list")[0], what="the new expiry")
    assert after["status"] == "active"
    assert fake.refresh_calls == 1


# --- in process: the due test and the back-off on transient failures ---------------------------------

@pytest.fixture
def app(tmp_path, fake):
    config = deep_merge(base_config(tmp_path / "app", fake), {})
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    application = App(load_config(path))
    yield application
    application.close()


def add(app, fake):
    acct = fake.add_account()
    account = Account.from_tokens(acct.id_token, acct.access_token, acct.refresh_token, last_refresh=time.time())
    app.accounts.add(account)
    return acct, account


def test_needs_refresh_rules(app, fake):
    _, account = add(app, fake)
    now = time.time()
    assert not tokens.needs_refresh(account, now, 600)
    assert tokens.needs_refresh(account, account.token_expires_at - 599, 600)  # within the lead time
    old = account.model_copy(update={"last_refresh": now - 9 * 86400})
    assert tokens.needs_refresh(old, now, 600)  # Codex's 8-day rule
    assert not tokens.needs_refresh(old.model_copy(update={"status": "reauth_required"}), now, 600)
    assert not tokens.needs_refresh(old.model_copy(update={"enabled": False}), now, 600)


def test_transient_failure_backs_off_and_keeps_the_account(app, fake):
    _, account = add(app, fake)
    app.accounts.update(account.id, token_expires_at=time.time() + 60)
    clock = [1000.0]
    app._plugin_state["accounts.refresh_backoff"] = Schedule(app.state, "accounts:refresh-backoff", interval=0, base=30, cap=1800,
                                                        clock=lambda: clock[0])
    app.config.oauth.issuer = "http://127.0.0.1:9"  # nothing listens: a transient failure
    assert tokens.refresh_job(app) == 0
    stored = app.accounts.get(account.id)
    assert stored.status == "active" and stored.refresh_failures == 1
    schedule = tokens.backoff(app)
    assert schedule.next_at(account.id) == 1060.0  # 30 s doubled
    tokens.refresh_job(app)  # not due yet: no new attempt
    assert app.accounts.get(account.id).refresh_failures == 1
    clock[0] = 1061.0
    app.config.oauth.issuer = fake.issuer
    assert tokens.refresh_job(app) == 1
    stored = app.accounts.get(account.id)
    assert stored.refresh_failures == 0 and stored.token_expires_at > time.time() + 3000
    assert schedule.next_at(account.id) is None


def test_refresh_hook_returns_none_on_failure(app, fake):
    acct, account = add(app, fake)
    fake.invalidate_refresh(acct, "refresh_token_invalidated")
    assert app.hook.codexproxy_refresh_account(app=app, account_id=account.id, reason="test") is None
    stored = app.accounts.get(account.id)
    assert stored.status == "reauth_required" and "refresh_token_invalidated" in stored.status_reason


def test_a_refresh_slower_than_the_idle_timeout_neither_times_out_nor_crashes(make_proxy, fake):
    # The watchdog measures upstream silence; a token refresh between two attempts is the proxy's
    # own wait, and the first attempt's connection is between requests meanwhile (an idle timeout
    # injected there made mitmproxy assert: "has crashed", which conftest fails on).
    proxy = make_proxy({"upstream": {"stream_idle_timeout_s": 0.5}})
    acct = proxy.fake_accounts[0]
    wait_first_poll(proxy)
    fake.refresh_delay = 2.0
    fake.expire_access_token(acct)
    status, events = stream(proxy)
    assert status == 200 and events[-1][1] == "response.completed"
    assert fake.refresh_calls == 1
