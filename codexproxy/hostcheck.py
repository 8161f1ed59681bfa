"""The Host check against DNS rebinding. Registered as plugin "hostcheck" (always on).

A web page can rebind its own DNS name to 127.0.0.1 and then talk to this proxy from the
browser as if same-origin: the browser sends the page's name as `Host`. So the proxy answers
only requests whose Host names it: 127.0.0.1, localhost, [::1] (any port), the host it is
bound to, and the names in `server.allowed_hosts`. Anything else gets 421 on every route,
before any key or token is looked at.

Bound to every interface (0.0.0.0 / ::) the names people use to reach it are unknown, so the
check applies there only once `server.allowed_hosts` lists them.
"""

from __future__ import annotations

import ipaddress

from . import hookimpl
from .exchange import GatewayError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
EVERY_INTERFACE = frozenset({"0.0.0.0", "::"})


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name in a Host header value, lower-case, without port or IPv6 brackets ("" if unusable)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:]
        if end <= 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return ""
        return value[1:end]
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return ""
    return name.rstrip(".")


def allowed(config, host_header: str | None) -> bool:
    bound = config.server.host.strip().lower().strip("[]")
    extra = set(config.server.allowed_hosts)
    if bound in EVERY_INTERFACE and not extra:
        return True
    if host_header is None:
        # HTTP/1.0 clients may send none; browsers always do (and only browsers rebind).
        return True
    name = host_name(host_header)
    return bool(name) and (_is_loopback(name) or name == bound or name in extra)


@hookimpl(tryfirst=True)
def codexproxy_route(app, exchange):
    host = exchange.headers.get("host")
    if not allowed(app.config, host):
        raise GatewayError(421, f"Host {str(host)[:100]!r} is not this proxy's: requests must name it as 127.0.0.1, localhost "
                                "or a name in server.allowed_hosts (a refused Host is how DNS rebinding attacks look).",
                           code="misdirected_request")
    return None
