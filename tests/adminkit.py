"""Helpers for the admin plugin's tests: the admin API, a logged-in browser session over httpx,
CSRF tokens from pages, account usage written straight into the store, and every secret a
proxy knows (to grep answers and files for them)."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import httpx

from codexproxy.models import Window
from codexproxy.store import AccountRepo, Store


def rpc(proxy, method: str, params: Any = None, token: str | None = None, headers: dict | None = None) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    auth = {"authorization": f"Bearer {token or proxy.admin_token}"}
    return httpx.post(proxy.url + "/rpc", json=body, headers={**auth, **(headers or {})}, timeout=30)


def result(proxy, method: str, params: Any = None) -> Any:
    r = rpc(proxy, method, params)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]*)"', page)
    assert m, "no CSRF field in the page"
    return html.unescape(m.group(1))


def login(proxy) -> httpx.Client:
    """An httpx client logged in through the login form, like a browser."""
    client = httpx.Client(base_url=proxy.url, timeout=30, headers={"accept": "text/html"})
    page = client.get("/status/login")
    assert page.status_code == 200
    r = client.post("/status/login", data={"csrf": csrf_of(page.text), "token": proxy.admin_token, "next": "/status"})
    assert r.status_code == 303, r.text
    return client


def post_form(client: httpx.Client, path: str, fields: dict[str, str], page: str = "/status/keys", **kw) -> httpx.Response:
    """POST a form the way the page would: with the CSRF token of `page`."""
    token = csrf_of(client.get(page).text)
    return client.post(path, data={"csrf": token, **fields}, **kw)


def set_usage(proxy, fake, index: int, primary: float | None, secondary: float | None,
              primary_reset_in: int = 3 * 3600, secondary_reset_in: int = 4 * 86400) -> str:
    """Give account `index` this 5h/7d usage: on the fake upstream (what the accounts plugin
    polls and reads from response headers) and in the store at once. Returns the account id."""
    acct = proxy.fake_accounts[index]
    fake.set_usage(acct, primary=primary, secondary=secondary, primary_reset_in=primary_reset_in,
                   secondary_reset_in=secondary_reset_in)
    repo = AccountRepo(Store(proxy.store_path))
    account = next(a for a in repo.all() if a.chatgpt_account_id == acct.account_id)
    now = time.time()
    fields = {"primary": Window(used_percent=primary, window_minutes=300, reset_at=int(now + primary_reset_in)) if primary is not None else None,
              "secondary": Window(used_percent=secondary, window_minutes=10080, reset_at=int(now + secondary_reset_in)) if secondary is not None else None,
              "usage_updated_at": now}
    assert repo.update(account.id, **fields) is not None
    return account.id


def secrets_of(proxy, extra: list[str] = ()) -> list[str]:
    """The admin token, the platform keys the test made, every account token."""
    found = [proxy.admin_token, *extra]
    if proxy.key:
        found.append(proxy.key)
    for acct in getattr(proxy, "fake_accounts", []):
        found += [acct.access_token, acct.refresh_token, acct.id_token]
    for account in AccountRepo(Store(proxy.store_path)).all():
        found += [t for t in (account.access_token, account.refresh_token, account.id_token) if t]
    return [s for s in found if s]


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:6]}…) appears in {where}"
