"""The status page over HTTP: login (form, one-time link, Bearer token), every page, every form,
CSRF and cross-site refusals, bad input, and no secret anywhere on a page."""

from __future__ import annotations

import html
import os
import re
import socket
import stat
import time
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.adminkit import assert_no_secret, csrf_of, login, post_form, result, secrets_of, set_usage
from tests.conftest import RESPONSES_BODY

PAGES = ("/status", "/status/accounts", "/status/keys", "/status/logs", "/status/plugins", "/status/settings")


def bearer(proxy) -> dict[str, str]:
    return {"authorization": f"Bearer {proxy.admin_token}"}


def key_names(proxy) -> dict[str, dict]:
    return {k["name"]: k for k in result(proxy, "keys.list")}


# --- who may look --------------------------------------------------------------------------------

def test_without_login_scripts_get_401_and_browsers_the_login_form(proxy):
    r = httpx.get(proxy.url + "/status/keys")
    assert r.status_code == 401 and r.json()["error"]["code"] == "admin_token_required"
    r = httpx.get(proxy.url + "/status/logs?q=status:5xx", headers={"accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"].startswith("/status/login?next=")
    assert parse_qs(urlsplit(r.headers["location"]).query)["next"] == ["/status/logs?q=status%3A5xx"]
    r = httpx.get(proxy.url + "/", headers={"accept": "text/html,*/*"})
    assert r.status_code == 303 and r.headers["location"] == "/status"
    assert httpx.get(proxy.url + "/").json()["status"] == "ok"  # API clients probing the base URL


def test_login_form_sets_a_strict_httponly_session(proxy):
    client = httpx.Client(base_url=proxy.url, headers={"accept": "text/html"})
    page = client.get("/status/login?next=/status/keys")
    assert page.status_code == 200 and 'type="password"' in page.text
    token = csrf_of(page.text)
    # Wrong token: refused, no session.
    r = client.post("/status/login", data={"csrf": token, "token": "not-the-token", "next": "/status/keys"})
    assert r.status_code == 401 and "Wrong admin token" in r.text and "codexproxy_session" not in r.headers.get("set-cookie", "")
    # No CSRF token: refused even with the right admin token.
    r = client.post("/status/login", data={"token": proxy.admin_token})
    assert r.status_code == 403 and "codexproxy_session" not in r.headers.get("set-cookie", "")
    r = client.post("/status/login", data={"csrf": token, "token": proxy.admin_token, "next": "/status/keys"})
    assert r.status_code == 303 and r.headers["location"] == "/status/keys"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("codexproxy_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/status/keys").status_code == 200
    # An open redirect is not possible through `next`.
    r = client.post("/status/login", data={"csrf": token, "token": proxy.admin_token, "next": "https://evil.example/"})
    assert r.headers["location"] == "/status"


def test_logout_ends_the_session(proxy):
    client = login(proxy)
    r = post_form(client, "/status/logout", {}, page="/status")
    assert r.status_code == 303 and r.headers["location"] == "/status/login"
    assert "Max-Age=0" in r.headers["set-cookie"]
    assert client.get("/status").status_code == 303  # back to the login form


def test_a_forged_or_stale_cookie_is_no_session(proxy):
    r = httpx.get(proxy.url + "/status", headers={"cookie": "codexproxy_session=forged", "accept": "text/html"})
    assert r.status_code == 303
    cookie = login(proxy).cookies.get("codexproxy_session")
    proxy.stop()
    proxy.start()  # sessions live in the proxy's memory only
    r = httpx.get(proxy.url + "/status", headers={"cookie": f"codexproxy_session={cookie}", "accept": "text/html"})
    assert r.status_code == 303


def test_bearer_admin_token_works_for_scripts(proxy):
    for path in PAGES:
        r = httpx.get(proxy.url + path, headers=bearer(proxy))
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert httpx.get(proxy.url + "/status", headers={"authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(proxy.url + "/status", headers={"authorization": f"Bearer {proxy.key}"}).status_code == 401


def test_one_time_login_link_from_run_open(make_proxy, tmp_path):
    seen = tmp_path / "opened.txt"
    opener = tmp_path / "browser.sh"
    opener.write_text(f"#!/bin/sh\necho \"$1\" >> {seen}\n")
    opener.chmod(opener.stat().st_mode | stat.S_IEXEC)
    proxy = make_proxy(accounts=0, start=False, env={"BROWSER": f"{opener} %s"})
    proxy.start("--open")
    deadline = time.time() + 10
    while not (seen.exists() and seen.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    url = seen.read_text().strip()
    assert url.startswith(proxy.url + "/status/login?otp=")
    r = httpx.get(url)
    assert r.status_code == 303 and r.headers["location"] == "/status" and "HttpOnly" in r.headers["set-cookie"]
    session = r.headers["set-cookie"].split(";")[0]
    assert httpx.get(proxy.url + "/status", headers={"cookie": session}).status_code == 200
    again = httpx.get(url)  # single use
    assert again.status_code == 401 and "expired or was already used" in again.text
    assert "codexproxy_session" not in again.headers.get("set-cookie", "")
    assert url.split("otp=")[1] not in proxy.log_text()


# --- pages --------------------------------------------------------------------------------------

def test_pages_show_accounts_with_usage_bars_and_local_times(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first = set_usage(proxy, fake, 0, primary=35.0, secondary=12.0)
    set_usage(proxy, fake, 1, primary=95.0, secondary=40.0)
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    client = login(proxy)
    accounts = client.get("/status/accounts").text
    one, two = (a.email for a in proxy.fake_accounts)
    assert one in accounts and two in accounts
    bars = re.findall(r'<progress class="bar (\w+)" max="100" value="([\d.]+)"', accounts)
    assert ("ok", "35.0") in bars and ("bad", "95.0") in bars and ("ok", "12.0") in bars
    assert re.search(r'<time datetime="[^"]+Z" data-epoch="\d+" data-rel="1">\d{4}-\d\d-\d\d \d\d:\d\d UTC</time>', accounts)
    dashboard = client.get("/status").text
    assert "Pool usage" in dashboard and "Best account now" in dashboard
    assert one in dashboard.split("Best account now")[1]  # the least used
    assert first in accounts
    for path in PAGES:
        assert client.get(path).status_code == 200, path


def test_logs_page_searches_and_pages(proxy, fake):
    for _ in range(3):
        httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": "Bearer cpk-nope"})
    client = login(proxy)
    everything = client.get("/status/logs").text
    assert everything.count('<span class="method">POST</span> /v1/responses') == 4
    failed = client.get("/status/logs", params={"q": "status:4xx"}).text
    assert failed.count('<span class="method">POST</span> /v1/responses') == 1 and "invalid" in failed.lower()
    none = client.get("/status/logs", params={"q": "model:=no-such-model"}).text
    assert "No request matches this search." in none
    bad = client.get("/status/logs", params={"page": "abc"})
    assert bad.status_code == 400 and "page: expected a whole number" in bad.text


def test_plugins_and_settings_pages(make_proxy):
    proxy = make_proxy({"metrics": {"token": "metrics-secret-value"}, "admin": {"token": "configured-admin-token-123"},
                        "plugins": {"cookies": {"enabled": True, "cookie": "cf_clearance=cookie-secret-value"}}}, accounts=0)
    client = login(proxy)
    plugins = client.get("/status/plugins").text
    assert "routing" in plugins and "select_account" in plugins and "keys.create" in plugins
    settings = client.get("/status/settings").text
    assert "server.port" in settings or ">port<" in settings
    for secret in ("metrics-secret-value", "configured-admin-token-123", "cookie-secret-value"):
        assert secret not in settings
    assert "***" in settings


def test_static_assets_need_no_login(proxy):
    css = httpx.get(proxy.url + "/status/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and "progress.bar" in css.text
    js = httpx.get(proxy.url + "/status/static/app.js")
    assert js.status_code == 200 and "data-epoch" in js.text
    # Path traversal, as sent on the wire (httpx would normalise a literal "../" away): not found.
    host, port = proxy.url.split("//")[1].rsplit(":", 1)
    for path in ("/status/static/../../config.yaml", "/status/static/%2e%2e/%2e%2e/config.yaml",
                 "/status/static/..%2f..%2fconfig.yaml"):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.split(b" ", 2)[1] == b"404", (path, answer[:300])
        assert b"plugins:" not in answer and b"storage" not in answer, path
    assert httpx.get(proxy.url + "/status/static/secret.txt").status_code == 404


# --- forms -----------------------------------------------------------------------------------------

def test_create_a_key_shows_the_secret_once(proxy, fake):
    client = login(proxy)
    r = post_form(client, "/status/keys/create", {"name": "web-made", "rpm": "30", "effort": "medium", "expires": "30d"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    secret = re.search(r'id="new-key" class="secret" value="(cpk-[^"]+)"', r.text).group(1)
    assert "only time it is shown" in r.text
    made = key_names(proxy)["web-made"]
    assert made["rpm"] == 30 and made["effort"] == "medium" and made["expires_at"]
    assert httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {secret}"}).status_code == 200
    for path in PAGES:
        assert secret not in client.get(path).text, path


def test_key_actions(proxy, fake):
    client = login(proxy)
    key_id = key_names(proxy)["test"]["id"]
    r = post_form(client, "/status/keys/disable", {"id": key_id})
    assert r.status_code == 303 and r.headers["location"] == "/status/keys"
    assert "Disabled key test." in client.get("/status/keys").text  # the flash, shown once
    assert "Disabled key test." not in client.get("/status/keys").text
    assert httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth).status_code == 403
    post_form(client, "/status/keys/enable", {"id": key_id})
    assert key_names(proxy)["test"]["enabled"] is True
    post_form(client, "/status/keys/update", {"id": key_id, "name": "renamed", "model": "gpt-5", "rpm": "7",
                                              "daily_tokens": "", "effort": "", "expires": "", "account": "", "group": ""})
    assert key_names(proxy)["renamed"]["rpm"] == 7 and key_names(proxy)["renamed"]["model"] == "gpt-5"
    post_form(client, "/status/keys/remove", {"id": key_id})
    assert key_names(proxy) == {}


def test_account_actions(proxy, fake):
    client = login(proxy)
    account_id = result(proxy, "accounts.list")[0]["id"]
    r = post_form(client, "/status/accounts/disable", {"id": account_id}, page="/status/accounts")
    assert r.status_code == 303
    assert result(proxy, "accounts.list")[0]["status"] == "disabled"
    post_form(client, "/status/accounts/enable", {"id": account_id}, page="/status/accounts")
    r = post_form(client, "/status/accounts/update", {"id": account_id, "label": "work", "group": "team-a", "tags": "fast, eu",
                                                       "note": "main one", "sort": "3"}, page="/status/accounts")
    assert r.status_code == 303
    account = result(proxy, "accounts.list")[0]
    assert account["label"] == "work" and account["group"] == "team-a" and sorted(account["tags"]) == ["eu", "fast"]
    assert account["note"] == "main one" and account["sort"] == 3 and account["status"] == "active"
    r = post_form(client, "/status/accounts/refresh-usage", {"id": account_id}, page="/status/accounts")
    assert r.status_code == 303, r.text
    r = post_form(client, "/status/accounts/refresh-token", {"id": account_id}, page="/status/accounts")
    assert r.status_code == 303, r.text
    assert "Refreshed the access token of work." in client.get("/status/accounts").text
    post_form(client, "/status/accounts/remove", {"id": account_id}, page="/status/accounts")
    assert result(proxy, "accounts.list") == []


def test_start_a_login_from_the_page(make_proxy, fake):
    proxy = make_proxy(accounts=0)
    client = login(proxy)
    r = post_form(client, "/status/accounts/login-start", {}, page="/status/accounts")
    assert r.status_code == 200 and "Open the OpenAI login page" in r.text
    url = re.search(r'href="([^"]+)" target="_blank"', r.text).group(1).replace("&amp;", "&")
    assert url.startswith(fake.issuer) and "code_challenge=" in url
    # Follow the issuer's redirect by hand and paste the callback URL, as a user on a remote machine would.
    callback = httpx.get(url, follow_redirects=False, verify=fake.verify).headers["location"]
    login_id = re.search(r'name="login_id" value="([^"]+)"', r.text).group(1)
    r = post_form(client, "/status/accounts/login-complete", {"callback_url": callback, "login_id": login_id}, page="/status/accounts")
    assert r.status_code == 303, r.text  # the redirect was not followed: only the pasted URL completes it
    assert len(result(proxy, "accounts.list")) == 1


def test_jobs_can_be_run_from_the_dashboard(proxy, fake):
    client = login(proxy)
    r = post_form(client, "/status/jobs/run", {"name": "models"}, page="/status")
    assert r.status_code == 303 and r.headers["location"] == "/status"
    assert "Ran job models" in client.get("/status").text


# --- refusals: nothing changes --------------------------------------------------------------------

def test_csrf_less_and_cross_site_posts_are_refused(proxy):
    client = login(proxy)
    before = result(proxy, "keys.list")
    token = csrf_of(client.get("/status/keys").text)
    r = client.post("/status/keys/create", data={"name": "no-csrf"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/status/keys/create", data={"name": "bad-csrf", "csrf": token + "x"})
    assert r.status_code == 403
    for headers in ({"origin": "https://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
        r = client.post("/status/keys/create", data={"name": "xsite", "csrf": token}, headers=headers)
        assert r.status_code == 403 and "Cross-site" in r.text, headers
    r = httpx.post(proxy.url + "/status/login", data={"token": proxy.admin_token}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    r = httpx.post(proxy.url + "/status/keys/create", data={"name": "anon"})
    assert r.status_code == 401
    assert result(proxy, "keys.list") == before
    # The same origin is fine.
    r = client.post("/status/keys/create", data={"name": "same-origin", "csrf": token}, headers={"origin": proxy.url})
    assert r.status_code == 200


BAD_FORMS = [
    ("/status/keys/create", {"name": ""}, 400, "give the key a name"),
    ("/status/keys/create", {"name": "x", "rpm": "abc"}, 400, "rpm: expected a whole number"),
    ("/status/keys/create", {"name": "x", "rpm": "0"}, 400, "rpm: must be between"),
    ("/status/keys/create", {"name": "x", "daily_tokens": "-3"}, 400, "daily_tokens: expected a whole number"),
    ("/status/keys/create", {"name": "x", "effort": "extreme"}, 400, "effort: must be one of"),
    ("/status/keys/create", {"name": "x", "expires": "tomorrow"}, 400, "expires: expected a duration"),
    ("/status/keys/create", {"name": "x", "expires": "2000-01-01"}, 400, "must be in the future"),
    ("/status/keys/create", {"name": "x", "account": "acc_nope"}, 400, "account: no account matches"),
    ("/status/keys/create", {"name": "x" * 150}, 400, "at most 100"),
    ("/status/keys/update", {"id": "key_nope", "name": "y"}, 404, "no key matches"),
    ("/status/keys/update", {"id": "test", "name": ""}, 400, "name: must not be empty"),
    ("/status/keys/update", {"id": "test", "rpm": "1.5"}, 400, "rpm: expected a whole number"),
    ("/status/keys/enable", {"id": "key_nope"}, 404, "no key matches"),
    ("/status/keys/disable", {}, 400, "missing parameter 'id'"),
    ("/status/keys/remove", {"id": "key_nope"}, 404, "no key matches"),
    ("/status/accounts/enable", {"id": "acc_nope"}, 404, "no account with id"),
    ("/status/accounts/disable", {}, 404, "no account with id"),
    ("/status/accounts/remove", {"id": "acc_nope"}, 404, "no account with id"),
    ("/status/accounts/refresh-usage", {"id": "acc_nope"}, 404, "no account with id"),
    ("/status/accounts/refresh-token", {"id": "acc_nope"}, 404, "no account with id"),
    ("/status/accounts/update", {"id": "ACCOUNT", "sort": "first"}, 400, "sort: expected a whole number"),
    ("/status/accounts/update", {"id": "ACCOUNT", "tags": ",".join(f"t{i}" for i in range(30))}, 400, "at most 20 tags"),
    ("/status/accounts/update", {"id": "ACCOUNT", "label": "x" * 300}, 400, "label: at most 100"),
    ("/status/accounts/login-complete", {"callback_url": ""}, 400, "paste the whole address"),
    ("/status/accounts/login-complete", {"callback_url": "http://localhost:1455/auth/callback?state=zzz"}, 400, ""),
    ("/status/jobs/run", {"name": "nope"}, 404, "no job named"),
    ("/status/keys/frobnicate", {}, 404, "no form action"),
]


def test_bad_input_to_every_form_is_a_clear_error_and_changes_nothing(proxy, fake):
    client = login(proxy)
    account_id = result(proxy, "accounts.list")[0]["id"]
    kept = ("id", "label", "group", "tags", "note", "sort", "enabled")
    snapshot = lambda: (result(proxy, "keys.list"), [{f: a[f] for f in kept} for a in result(proxy, "accounts.list")])
    before = snapshot()
    token = csrf_of(client.get("/status/keys").text)
    for path, fields, status, needle in BAD_FORMS:
        fields = {k: (account_id if v == "ACCOUNT" else v) for k, v in fields.items()}
        r = client.post(path, data={"csrf": token, **fields})
        assert r.status_code == status, (path, fields, r.status_code)
        assert needle in html.unescape(r.text), (path, fields)
        assert "Traceback" not in r.text and 'class="flash error"' in r.text, path
        assert snapshot() == before, (path, fields)
    r = client.post("/status/keys/create", content=b'{"name": "json"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "expected a form" in r.text
    r = client.post("/status/keys/create", content=b"name=%ff%fe&csrf=" + token.encode(),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    assert client.put("/status/keys").status_code == 405
    assert snapshot() == before


# --- secrets ---------------------------------------------------------------------------------------

def test_no_page_or_log_contains_a_secret(make_proxy, fake):
    proxy = make_proxy({"metrics": {"token": "metrics-token-abcdef"}}, accounts=2)
    created = []
    client = login(proxy)
    for name in ("alpha", "beta"):
        page = post_form(client, "/status/keys/create", {"name": name}).text
        created.append(re.search(r'value="(cpk-[^"]+)"', page).group(1))
    for key in created + [proxy.key]:
        httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {key}"})
    secrets = secrets_of(proxy, created + ["metrics-token-abcdef"])
    session = client.cookies.get("codexproxy_session")
    assert session
    for path in PAGES + ("/status/logs?q=POST",):
        text = client.get(path).text
        assert_no_secret(text, secrets + [session], path)
    proxy.stop()
    assert_no_secret(proxy.log_text(), secrets + [session], "the proxy output")
    for root, _, files in os.walk(proxy.data_dir / "logs"):
        for name in files:
            assert_no_secret((proxy.data_dir / "logs" / name).read_text(), secrets + [session], name)
