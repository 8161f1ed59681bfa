"""cookies: send a configured Cookie header upstream (for Cloudflare/WAF challenges).

Off by default. The cookie is a secret: it is never logged or shown (settings mask it).
"""

from __future__ import annotations

from codexproxy import hookimpl
from codexproxy.config import PluginConfig


class CookiesConfig(PluginConfig):
    enabled: bool = False
    cookie: str | None = None


@hookimpl
def codexproxy_config_model():
    return CookiesConfig


@hookimpl
def codexproxy_upstream_request(app, exchange, headers):
    cookie = app.plugin_config("cookies").cookie
    if cookie:
        headers["cookie"] = cookie
