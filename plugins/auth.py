"""auth: platform keys. A gateway route needs `Authorization: Bearer <key>` or `x-api-key`.

Keys are stored as a hash (see codexproxy.store.KeyRepo); this plugin only checks them.
Turned off, the gateway is open (the CLI warns loudly at start).
"""

from __future__ import annotations

from codexproxy import hookimpl
from codexproxy.config import PluginConfig
from codexproxy.exchange import GatewayError


class AuthConfig(PluginConfig):
    pass


@hookimpl
def codexproxy_config_model():
    return AuthConfig


def offered_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


@hookimpl(tryfirst=True)
def codexproxy_authenticate(app, exchange):
    secret = offered_key(exchange.headers)
    if not secret:
        raise GatewayError(401, "Missing API key: send your codexproxy platform key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                           type="authentication_error", code="missing_api_key")
    key = app.keys.verify(secret)
    if key is None:
        raise GatewayError(401, "Invalid API key: no platform key matches (create one with `codexproxy keys create NAME`).",
                           type="authentication_error", code="invalid_api_key")
    if key.is_expired():
        raise GatewayError(401, f"API key {key.name!r} has expired.", type="authentication_error", code="key_expired")
    if not key.enabled:
        raise GatewayError(403, f"API key {key.name!r} is disabled.", type="permission_error", code="key_disabled")
    return key
