"""Usage: parsing, the poll schedule with an injected clock, polling through the CLI, header-
driven exhaustion and recovery through the proxy, and /backend-api/wham/usage."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from codexproxy.models import Account, Window
from codexproxy_plugins.accounts import usage
from codexproxy_plugins.accounts.backoff import Schedule
from codexproxy.state import LocalState
from codexproxy.store import Store
from tests.conftest import wait_for, RESPONSES_BODY, read_sse


def settled_mtime(proxy, quiet: float = 1.5) -> int:
    """The store's mtime once nothing has written it for `quiet` seconds."""
    last, since = os.stat(proxy.store_path).st_mtime_ns, time.time()
    while time.time() - since < quiet:
        time.sleep(0.1)
        now = os.stat(proxy.store_path).st_mtime_ns
        if now != last:
            last, since = now, time.time()
    return last


def stream(proxy) -> tuple[int, dict, list]:
    with proxy.client() as client:
        with client.stream("POST", "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth) as r:
            return r.status_code, dict(r.headers), read_sse(r)


# --- pure parts --------------------------------------------------------------------------------------

def test_schedule_interval_jitter_and_backoff_with_an_injected_clock(tmp_path):
    clock = [0.0]
    state = LocalState(Store(tmp_path / "store.json"))
    s = Schedule(state, "t", 600, cap=1800, jitter=0.1, clock=lambda: clock[0], rand=lambda: 1.0)
    assert s.due("a")  # never polled: due at once
    assert s.succeeded("a") == pytest.approx(660)  # interval + 10% jitter (rand=1)
    clock[0] = 659
    assert not s.due("a")
    clock[0] = 660
    assert s.due("a")
    delays = [s.failed("a") for _ in range(4)]
    assert delays == [1200, 1800, 1800, 1800]  # doubling, capped at 30 min
    assert s.next_at("a") == 660 + 1800 and s.failures("a") == 4
    s.succeeded("a")
    assert s.failures("a") == 0
    short = Schedule(state, "t", 30, cap=1800, clock=lambda: 0.0, rand=lambda: 0.5)
    assert [short.failed("b") for _ in range(7)] == [60, 120, 240, 480, 960, 1800, 1800]
    assert short.succeeded("b") == 30  # rand=0.5: no jitter


def test_parse_headers_and_json():
    now = 1_000_000.0
    h = {"x-codex-primary-used-percent": "42.5", "x-codex-primary-window-minutes": "300",
         "x-codex-primary-reset-at": "1003600", "x-codex-secondary-used-percent": "7",
         "x-codex-secondary-reset-after-seconds": "600", "x-codex-credits-has-credits": "true",
         "x-codex-credits-balance": "12.5"}
    parsed = usage.parse_headers(h, now)
    assert parsed["primary"] == Window(used_percent=42.5, window_minutes=300, reset_at=1003600)
    assert parsed["secondary"] == Window(used_percent=7, window_minutes=None, reset_at=now + 600)
    assert parsed["credits"] == {"has_credits": True, "balance": "12.5"}
    assert usage.parse_headers({"content-type": "text/event-stream"}, now) == {}
    data = {"plan_type": "free", "rate_limit": {"limit_reached": False, "primary_window": None,
                                                 "secondary_window": {"used_percent": 3, "limit_window_seconds": 604800,
                                                                      "reset_after_seconds": 100}}}
    parsed = usage.parse_usage_json(data, now)
    assert parsed["plan"] == "free" and parsed["primary"] is None and parsed["limit_reached"] is False
    assert parsed["secondary"] == Window(used_percent=3, window_minutes=10080, reset_at=now + 100)


def test_apply_marks_exhausted_until_the_reset_and_time_heals_it():
    now = 1_000_000.0
    account = Account(access_token="x")
    usage.apply_usage(account, {"primary": Window(used_percent=100, window_minutes=300, reset_at=now + 60)}, now)
    assert account.status == "exhausted_5h" and account.status_until == now + 60
    assert account.effective_status(now + 59) == "exhausted_5h" and account.effective_status(now + 61) == "active"
    usage.apply_usage(account, {"secondary": Window(used_percent=100, reset_at=now + 3600)}, now)
    assert account.status == "exhausted_7d" and account.status_until == now + 3600  # the longer wait wins
    reauth = Account(status="reauth_required")
    usage.apply_usage(reauth, {"primary": Window(used_percent=100, reset_at=now + 60)}, now)
    assert reauth.status == "reauth_required"  # usage never hides a dead login


# --- polling ---------------------------------------------------------------------------------------

def test_usage_refresh_polls_stores_and_keeps_n_snapshots(make_proxy, fake):
    proxy = make_proxy({"jobs": {"usage_snapshots_kept": 2}}, start=False)
    acct = proxy.fake_accounts[0]
    fake.set_usage(acct, primary=42, secondary=10, primary_reset_in=7200, has_credits=True, balance="5")
    data = proxy.cli_json("usage", "--refresh")
    [row] = data["accounts"]
    assert row["primary"]["used_percent"] == 42 and row["primary"]["window_minutes"] == 300
    assert abs(row["primary"]["reset_at"] - (time.time() + 7200)) < 60
    assert row["secondary"]["used_percent"] == 10 and row["credits"]["has_credits"] is True
    assert data["pool"]["available"] == 1 and data["refreshed"] == [{"id": row["id"], "ok": True}]
    for _ in range(2):
        proxy.cli("usage", "--refresh", check=True)
    shown = proxy.cli_json("accounts", "show", row["id"])
    assert len(shown["snapshots"]) == 2
    polls = [r for r in fake.all_requests if r.path == "/backend-api/wham/usage"]
    assert len(polls) == 3 and polls[0].headers["chatgpt-account-id"] == acct.account_id
    text = proxy.cli("usage", check=True).stdout
    assert "42%" in text and "pool: 1 accounts, 1 available now" in text and "(in 1h" in text


def test_usage_poll_401_refreshes_once_and_retries(make_proxy, fake):
    proxy = make_proxy(start=False)
    acct = proxy.fake_accounts[0]
    fake.expire_access_token(acct)
    fake.set_usage(acct, primary=12)
    data = proxy.cli_json("usage", "--refresh")
    assert data["refreshed"][0]["ok"] is True and fake.refresh_calls == 1
    assert data["accounts"][0]["primary"]["used_percent"] == 12


def test_usage_poll_failure_is_a_warning_not_an_error(make_proxy, fake):
    proxy = make_proxy(start=False)
    fake.set_usage_behaviour(proxy.fake_accounts[0], "server_error")
    result = proxy.cli("usage", "--refresh", check=True)
    assert "warning:" in result.stderr and "HTTP 500" in result.stderr




def test_poll_job_backs_off_per_account(app, fake):
    good, bad = fake.add_account(), fake.add_account()
    for acct in (good, bad):
        app.accounts.add(Account.from_tokens(acct.id_token, acct.access_token, acct.refresh_token))
    fake.set_usage_behaviour(bad, "server_error")
    clock = [5000.0]
    schedule = Schedule(app.state, "accounts:poll", 600, cap=1800, clock=lambda: clock[0], rand=lambda: 0.5)
    app._plugin_state["accounts.poll_schedule"] = schedule
    assert usage.poll_job(app) == 1
    ids = {a.chatgpt_account_id: a.id for a in app.accounts.all()}
    assert schedule.next_at(ids[good.account_id]) == 5600 and schedule.next_at(ids[bad.account_id]) == 6200
    clock[0] = 5600
    assert usage.poll_job(app) == 1  # only the good one is due
    clock[0] = 6200
    fake.set_usage_behaviour(bad, "ok")
    assert usage.poll_job(app) == 2 and schedule.failures(ids[bad.account_id]) == 0  # both due again


# --- headers through the proxy -------------------------------------------------------------------------

def test_headers_drive_exhaustion_and_recovery(make_proxy, fake):
    proxy = make_proxy()
    acct = proxy.fake_accounts[0]
    fake.set_usage(acct, primary=100, primary_reset_in=4)
    status, _, _ = stream(proxy)
    assert status == 200  # the answer that used the last of the window
    row = wait_for(lambda: next((a for a in proxy.cli_json("accounts", "list") if a["status"] == "exhausted_5h"), None),
                   what="exhaustion from the headers")
    assert row["primary"]["used_percent"] == 100 and row["status_until"] <= time.time() + 5
    with proxy.client() as client:
        r = client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    assert r.status_code == 429 and r.json()["error"]["code"] == "usage_limit_reached"
    fake.set_usage(acct, primary=0)
    time.sleep(max(0.0, row["status_until"] - time.time()) + 0.2)
    status, _, events = stream(proxy)  # back by itself once the window reset
    assert status == 200 and events[-1][1] == "response.completed"
    assert proxy.cli_json("accounts", "list")[0]["status"] == "active"


def test_unchanged_headers_do_not_rewrite_the_store(make_proxy, fake):
    proxy = make_proxy()
    fake.set_usage(proxy.fake_accounts[0], primary=33)
    stream(proxy)
    account_id = proxy.cli_json("accounts", "list")[0]["id"]
    # The jobs' first pass (usage poll, model list) writes too: wait for it (the poll's snapshot)
    # and for quiet, so only our own writes can move the mtime below.
    wait_for(lambda: proxy.cli_json("accounts", "show", account_id)["snapshots"], what="the first usage poll")
    before = settled_mtime(proxy)
    assert proxy.cli_json("accounts", "show", account_id)["primary"]["used_percent"] == 33
    for _ in range(3):
        stream(proxy)
    time.sleep(0.5)
    assert os.stat(proxy.store_path).st_mtime_ns == before
    fake.set_usage(proxy.fake_accounts[0], primary=34)
    stream(proxy)
    wait_for(lambda: os.stat(proxy.store_path).st_mtime_ns != before, what="a write after a change")


# --- the pool's /wham/usage ------------------------------------------------------------------------------

def test_wham_usage_through_the_proxy(make_proxy, fake):
    proxy = make_proxy(accounts=2, start=False)
    busy, idle = proxy.fake_accounts
    fake.set_usage(busy, primary=80, secondary=40)
    fake.set_usage(idle, primary=15, secondary=20, has_credits=True, balance="3")
    proxy.cli("usage", "--refresh", check=True)
    proxy.start()
    url = proxy.url + "/backend-api/wham/usage"
    assert httpx.get(url).status_code == 401  # platform key required
    body = httpx.get(url, headers=proxy.auth).json()
    assert body["plan_type"] == "plus" and body["rate_limit"]["allowed"] is True
    assert body["rate_limit"]["primary_window"]["used_percent"] == 15  # the account with the most room
    assert body["rate_limit"]["primary_window"]["limit_window_seconds"] == 18000
    assert body["rate_limit"]["secondary_window"]["used_percent"] == 20
    assert 0 < body["rate_limit"]["primary_window"]["reset_after_seconds"] <= 18000
    assert body["credits"]["balance"] == "3"
    assert httpx.post(url, headers=proxy.auth).status_code == 405


def test_the_status_page_and_wham_usage_name_the_same_best_account(make_proxy, fake):
    """One ranking (models.best_account): the most room in the fuller window. The account with
    the emptier 5h window but a nearly full week is not the best one on either surface."""
    from tests.adminkit import login, set_usage

    proxy = make_proxy(accounts=2, start=False)
    set_usage(proxy, fake, 0, primary=10.0, secondary=90.0)
    set_usage(proxy, fake, 1, primary=30.0, secondary=20.0)
    proxy.start()
    body = httpx.get(proxy.url + "/backend-api/wham/usage", headers=proxy.auth, timeout=30).json()
    assert body["rate_limit"]["primary_window"]["used_percent"] == 30
    best = login(proxy).get("/status").text.split("Best account now")[1].split("</section>")[0]
    first, second = (a.email for a in proxy.fake_accounts)
    assert second in best and first not in best
