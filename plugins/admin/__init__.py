"""admin: the status page (/status), the admin JSON-RPC API (/rpc) and Prometheus metrics
(/metrics), all served by the proxy itself over the same store.

    web.py      login, pages and forms of /status      pages.py   what each page shows
    forms.py    the form actions                        render.py  Jinja2 and page headers
    rpc.py      JSON-RPC 2.0 over every plugin's methods methods.py the core methods (keys, logs...)
    session.py  sessions, one-time links, CSRF, origin   metrics.py counters and /metrics
    charts.py   inline-SVG chart geometry                history.py usage.history (the charts' series)
    cli.py      the keys, rpc and admin-token commands
"""

from __future__ import annotations

from pydantic import Field

from codexproxy import hookimpl
from codexproxy.config import PluginConfig
from codexproxy.exchange import LocalResponse, Route

from . import methods, metrics, rpc, web
from .cli import register as register_commands
from .session import sessions as _sessions


class AdminPluginConfig(PluginConfig):
    session_ttl_s: float = Field(12 * 3600.0, ge=60)
    auto_refresh_s: int = Field(30, ge=0)  # the page's optional auto-refresh period (0: no toggle)


@hookimpl
def codexproxy_config_model():
    return AdminPluginConfig


def _metrics(app) -> metrics.Metrics:
    return app.plugin_state("admin.metrics", lambda: metrics.Metrics(app.state))


def _local(name: str, handler, logged: bool = True) -> Route:
    return Route(kind="local", protocol="none", needs_key=False, handler=handler, name=name, logged=logged)


@hookimpl
def codexproxy_startup(app):
    app.admin_token  # generated now (if not configured), so the file named at start-up exists


@hookimpl
def codexproxy_route(app, exchange):
    path = exchange.path
    if path == "/status" or path.startswith("/status/"):
        return _local("status", lambda app, ex: web.handle(app, ex, _sessions(app)), logged=False)
    if path == "/rpc":
        return _local("rpc", rpc.handle)
    if path == "/metrics":
        return _local("metrics", lambda app, ex: metrics.handle(app, ex, _metrics(app)), logged=False)
    if path == "/" and exchange.method == "GET" and "text/html" in exchange.headers.get("accept", ""):
        return _local("status", lambda app, ex: LocalResponse(303, b"", {"location": "/status"}), logged=False)  # a browser at the base URL
    return None


@hookimpl
def codexproxy_cli_commands(cli):
    register_commands(cli)  # keys, rpc, admin-token (cli.py)


@hookimpl
def codexproxy_rpc_methods(app):
    return dict(methods.CORE_METHODS)


@hookimpl
def codexproxy_listening(app, url):
    where = "config admin.token" if app.config.admin.token else app.admin_token_file
    return [f"status page: {url}/status  (admin token in {where})"]


@hookimpl
def codexproxy_browser_url(app):
    base = app.public_url or ""
    for wildcard, loopback in (("//0.0.0.0:", "//127.0.0.1:"), ("//[::]:", "//[::1]:")):
        base = base.replace(wildcard, loopback)
    return f"{base}/status/login?otp={_sessions(app).new_otp()}" if base else None


@hookimpl
def codexproxy_exchange_start(app, exchange):
    _metrics(app).start(exchange)


@hookimpl
def codexproxy_exchange_done(app, exchange):
    _metrics(app).done(exchange)


@hookimpl
def codexproxy_shutdown(app):
    _metrics(app).shutdown()  # the last deltas into the shared counters
