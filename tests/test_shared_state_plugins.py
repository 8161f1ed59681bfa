"""The auth, admin and accounts plugins keep their cross-request state in `app.state`: two App
objects on one Redis (what two proxy processes or machines are) share each key's rpm and daily
tokens, the admin's sessions, one-time links, login-form secret and guess limit, the pending
logins and the token refresh lock. On the embedded state, old usage snapshots move into it."""
from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from codexproxy.app import App
from codexproxy.config import load_config
from codexproxy.exchange import Exchange, GatewayError
from codexproxy.models import Account
from tests.conftest import base_config, deep_merge
from tests.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)


@pytest.fixture
def make_app(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    apps: list[App] = []

    def make(name: str, extra: dict | None = None) -> App:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(deep_merge(base_config(tmp_path / name, fake), extra or {})))
        apps.append(App(load_config(path)))
        return apps[-1]

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def two(make_app, redis_url):
    """Two Apps with their own data directories on one Redis: two machines of one pool."""
    shared = {"state": {"backend": "redis", "redis_url": redis_url}}
    first, second = make_app("one", shared), make_app("two", shared)
    first.public_url = second.public_url = "http://127.0.0.1:8765"
    return first, second


def get(app, path: str, query: dict | None = None, headers: dict | None = None) -> object:
    from codexproxy_plugins.admin import web
    from codexproxy_plugins.admin.session import sessions

    exchange = Exchange(method="GET", path=path, query=query or {}, headers={"accept": "text/html", **(headers or {})},
                        body=b"", client_addr="10.0.0.7")
    return web.handle(app, exchange, sessions(app))


def cookie_of(response) -> str:
    return response.headers["set-cookie"].split(";")[0]


# --- admin -----------------------------------------------------------------------------------------

def test_a_one_time_link_from_one_proxy_logs_in_once_on_either(two):
    a, b = two
    url = a.hook.codexproxy_browser_url(app=a)
    otp = url.split("otp=")[1]
    first = get(b, "/status/login", {"otp": otp})
    assert first.status == 303 and first.headers["location"] == "/status"
    assert get(a, "/status/login", {"otp": otp}).status == 401  # used: on the proxy that made it too
    session = cookie_of(first)
    assert get(a, "/status", headers={"cookie": session}).status == 200  # the session is known to both
    assert get(b, "/status", headers={"cookie": "codexproxy_session=forged"}).status == 303  # to the login form


def test_sessions_flash_and_the_login_secret_are_shared(two):
    from codexproxy_plugins.admin.session import sessions

    a, b = two
    value, session = sessions(a).create(600)
    sessions(a).flash(session, "ok", "key created")
    seen = sessions(b).get(value)
    assert seen is not None and seen.csrf == session.csrf
    assert sessions(b).take_flash(seen) == [("ok", "key created")]
    assert sessions(a).take_flash(sessions(a).get(value)) == []  # shown once, wherever
    # A login form served by one proxy may be posted to the other.
    assert sessions(b).check_login_csrf("pre-login-cookie", sessions(a).login_csrf("pre-login-cookie"))
    sessions(b).end(value)
    assert sessions(a).get(value) is None


def test_wrong_admin_tokens_count_across_proxies(two):
    from codexproxy_plugins.admin.session import GUESSES_PER_MINUTE, guesses

    a, b = two
    for n in range(GUESSES_PER_MINUTE):
        guesses(a if n % 2 else b).failed("10.0.0.7")
    wait = guesses(b).retry_after("10.0.0.7")
    assert wait is not None and 1 <= wait <= 60
    assert guesses(a).retry_after("10.0.0.8") is None  # another address is not limited
    page = get(a, "/status", headers={"authorization": "Bearer wrong"})
    assert page.status == 429 and page.headers["retry-after"] == str(wait)


# --- auth ------------------------------------------------------------------------------------------

def test_rpm_is_counted_across_proxies_and_refused_requests_do_not_count(two):
    from codexproxy_plugins.auth import check_limits

    a, b = two
    key, _ = a.keys.create("shared", rpm=3)
    check_limits(a, key)
    check_limits(b, key)
    check_limits(a, key)
    for app in (b, a, b):
        with pytest.raises(GatewayError) as refused:
            check_limits(app, key)
        assert refused.value.status == 429 and 55 <= int(refused.value.headers["retry-after"]) <= 60
    assert a.state.window_sum("auth:rpm:" + key.id, 60) == 3  # the refused ones were taken back


def test_daily_tokens_add_up_across_proxies_and_a_restart_does_not_count_twice(two, make_app, redis_url):
    from codexproxy_plugins.auth import check_limits, daily_tokens

    a, b = two
    key, _ = a.keys.create("budget", daily_tokens=100)
    daily_tokens(a), daily_tokens(b)
    a.logs.append({"id": "r1", "key_id": key.id, "input_tokens": 30, "output_tokens": 10})
    b.logs.append({"id": "r2", "key_id": key.id, "input_tokens": 40, "output_tokens": 0})
    # Counted in the background (`state.later`): sent a few milliseconds after the row.
    assert a.state.later.flush(5) and b.state.later.flush(5)
    assert daily_tokens(a).today(key.id) == daily_tokens(b).today(key.id) == 80
    check_limits(b, key)
    # "one" restarts: its log holds r1, which the shared counter has already.
    again = make_app("one", {"state": {"backend": "redis", "redis_url": redis_url}})
    assert daily_tokens(again).seeded.wait(10)
    assert daily_tokens(again).today(key.id) == 80
    again.logs.append({"id": "r3", "key_id": key.id, "input_tokens": 20, "output_tokens": 0})
    assert again.state.later.flush(5)
    with pytest.raises(GatewayError) as refused:
        check_limits(b, key)
    assert refused.value.status == 429 and "100 tokens" in refused.value.message


def test_the_embedded_state_reads_todays_tokens_from_the_log_once(make_app):
    from codexproxy_plugins.auth import daily_tokens

    app = make_app("solo")
    key, _ = app.keys.create("budget", daily_tokens=100)
    app.logs.append({"id": "old", "key_id": key.id, "input_tokens": 500, "time": time.time() - 2 * 86400})
    app.logs.append({"id": "r1", "key_id": key.id, "input_tokens": 5, "output_tokens": 6, "time": time.time()})
    app.close()
    restarted = make_app("solo")  # same data dir, fresh memory: today's row is read back, once
    assert daily_tokens(restarted).seeded.wait(10)  # read in the background: start-up does not wait for it
    assert daily_tokens(restarted).today(key.id) == 11
    restarted.logs.append({"id": "r2", "key_id": key.id, "input_tokens": 1, "output_tokens": 0})
    assert daily_tokens(restarted).today(key.id) == 12


# --- accounts --------------------------------------------------------------------------------------

def add_account(app, fake) -> tuple[object, Account]:
    acct = fake.add_account()
    account = Account.from_tokens(acct.id_token, acct.access_token, acct.refresh_token, last_refresh=time.time() - 3600)
    return acct, app.accounts.add(account)


def test_concurrent_refreshes_on_two_proxies_reach_the_issuer_once(two, fake):
    from codexproxy_plugins.accounts import tokens

    a, b = two
    acct, account = add_account(a, fake)
    old_refresh = acct.refresh_token
    fake.refresh_delay = 1.0  # the first refresh is in flight while the others ask
    results: list[Account] = []
    threads = [threading.Thread(target=lambda app=app: results.append(tokens.refresh(app, account.id, "test")))
               for app in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert fake.refresh_calls == 1 and len(results) == 4
    assert {r.access_token for r in results} == {b.accounts.get(account.id).access_token}
    assert acct.refresh_token != old_refresh and b.accounts.get(account.id).refresh_token == acct.refresh_token


def test_refresh_backoff_is_shared(two):
    from codexproxy_plugins.accounts import tokens

    a, b = two
    delay = tokens.backoff(a).failed("acc_x")
    assert delay == 60 and not tokens.backoff(b).due("acc_x") and tokens.backoff(b).failures("acc_x") == 1
    tokens.backoff(b).forget("acc_x")
    assert tokens.backoff(a).due("acc_x")


def test_a_pending_login_is_claimed_once_across_proxies(two):
    from codexproxy_plugins.accounts import logins

    a, b = two
    rec = logins.start_browser(a, "http://localhost:1455/auth/callback", {"group": "team"})
    assert logins.public(logins.get(b, rec["id"]))["url"] == rec["url"]
    claimed = logins._claim(b, state=rec["state"])
    assert claimed["id"] == rec["id"]
    with pytest.raises(logins.LoginError, match="already exchanging"):
        logins._claim(a, state=rec["state"])
    logins.finish(a, rec["id"], "failed", error="test")
    done = logins.get(b, rec["id"])
    assert done["status"] == "failed" and done["verifier"] is None


def test_old_usage_snapshots_move_into_the_store_once(make_app):
    from codexproxy_plugins.accounts import usage

    app = make_app("old", {"jobs": {"usage_snapshots_kept": 3}})
    old = app.data_dir / "usage_snapshots.json"
    rows = {str(n): {"account_id": "acc_1", "time": 1000.0 + n, "primary": {"used_percent": n}} for n in range(1, 6)}
    rows["9"] = {"account_id": "acc_2", "time": 5000.0, "primary": None}
    old.write_text(json.dumps({"usage_snapshots": rows}))
    assert [s["time"] for s in usage.snapshots(app, "acc_1")] == [1003.0, 1004.0, 1005.0]  # the newest kept
    assert [s["primary"] for s in usage.snapshots(app, "acc_2")] == [None]
    assert not old.exists() and old.with_name("usage_snapshots.json.migrated").exists()
    usage.save_snapshot(app, "acc_1", {"time": 2000.0, "primary": {"used_percent": 50}})
    assert [s["time"] for s in usage.snapshots(app, "acc_1", limit=2)] == [1005.0, 2000.0]
    # Another process on the same store (a CLI): nothing is moved twice, everything is seen.
    other = make_app("old", {"jobs": {"usage_snapshots_kept": 3}})
    assert [s["time"] for s in usage.snapshots(other, "acc_1")] == [1004.0, 1005.0, 2000.0]
    usage.forget(other, "acc_1")
    assert usage.snapshots(app, "acc_1") == []


# --- over HTTP: two proxy processes on one Redis ----------------------------------------------------

def test_a_login_link_opened_by_one_proxy_works_once_through_either_over_http(make_proxy, redis_url, tmp_path):
    import stat

    import httpx

    from tests.conftest import wait_for

    seen = tmp_path / "opened.txt"
    opener = tmp_path / "browser.sh"
    opener.write_text(f"#!/bin/sh\necho \"$1\" >> {seen}\n")
    opener.chmod(opener.stat().st_mode | stat.S_IEXEC)
    shared = {"state": {"backend": "redis", "redis_url": redis_url}}
    a = make_proxy(shared, accounts=0, key=False, start=False, env={"BROWSER": f"{opener} %s"}, name="a")
    a.start("--open")
    b = make_proxy(shared, accounts=0, key=False, name="b")
    otp = wait_for(lambda: seen.exists() and seen.read_text().strip(), 15, "the browser to be opened").split("otp=")[1]
    with httpx.Client(base_url=b.url, timeout=30, follow_redirects=False) as browser:
        r = browser.get("/status/login", params={"otp": otp}, headers={"accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/status"
        session = r.headers["set-cookie"].split(";")[0]
    again = httpx.get(a.url + "/status/login", params={"otp": otp}, headers={"accept": "text/html"}, timeout=30)
    assert again.status_code == 401 and "already used" in again.text  # used once, on the proxy that made it too
    page = httpx.get(a.url + "/status", headers={"accept": "text/html", "cookie": session}, timeout=30)
    assert page.status_code == 200  # the session made through b is known to a
