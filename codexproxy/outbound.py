"""Requests the proxy makes to the upstream on its own (usage polls, the model list), not on a
client's behalf: one header builder and one HTTP client, so each goes out with the same
credentials, identity and TLS trust as the proxy's own attempts.

A plugin's `codexproxy_upstream_request` sees these headers too (with `exchange=None`): a
cookie it adds to every upstream request (the WAF cookie) reaches these as well.
"""

from __future__ import annotations

from typing import Any

import httpx

from . import wire

BACKGROUND_TIMEOUT_S = 30.0


def account_headers(app: Any, url: str, account: Any, accept: str = "application/json") -> dict[str, str]:
    """The headers of a background request to `url` made with `account`'s credentials."""
    upstream = app.config.upstream
    headers = {"host": wire.authority(url), **wire.account_credentials(account),
               "originator": upstream.originator, "user-agent": upstream.user_agent, "accept": accept}
    app.hook.codexproxy_upstream_request(app=app, exchange=None, headers=headers)
    headers["host"] = wire.authority(url)  # not a plugin's to change: the URL decides
    return headers


def client(app: Any, timeout: float = BACKGROUND_TIMEOUT_S) -> httpx.Client:
    """An httpx client that trusts the upstream as the proxy path does (upstream.ssl_verify and
    upstream.ca_file); the caller closes it (`with outbound.client(app) as http: ...`)."""
    upstream = app.config.upstream
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=upstream.connect_timeout_s), verify=upstream.httpx_verify())
