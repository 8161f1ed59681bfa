"""Jinja2 rendering of the status page (templates from the `codexproxy_templates` package, so
they ship inside the wheel) and the HTTP headers every page and asset carries."""

from __future__ import annotations

import functools
import importlib.resources
import time
from datetime import datetime, timezone
from typing import Any

import jinja2
from markupsafe import Markup, escape

from codexproxy import __version__
from codexproxy.exchange import LocalResponse

# No inline script or style anywhere: the page works with this strict policy.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
STATIC = {"style.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


def when(epoch: float | None, relative: bool = False, seconds: bool = False) -> Markup:
    """A <time> in UTC that the page script rewrites into the browser's local time."""
    if not epoch:
        return Markup('<span class="muted">—</span>')
    moment = datetime.fromtimestamp(float(epoch), timezone.utc)
    flags = (' data-rel="1"' if relative else "") + (' data-seconds="1"' if seconds else "")
    return Markup('<time datetime="{iso}" data-epoch="{epoch}"{flags}>{text}</time>').format(
        iso=moment.isoformat(timespec="seconds").replace("+00:00", "Z"), epoch=int(epoch), flags=Markup(flags),
        text=moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"))


def span(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(abs(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


def number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("codexproxy_templates", "."), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.globals.update(when=when, version=__version__)
    env.filters.update(span=span, number=number)
    return env


def html(template: str, context: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> LocalResponse:
    body = environment().get_template(template).render(**context, now=time.time())
    return LocalResponse(status, body.encode(), {**SECURITY_HEADERS, "cache-control": "no-store", **(headers or {})},
                         content_type="text/html; charset=utf-8")


def error_page(status: int, title: str, message: str, context: dict[str, Any] | None = None) -> LocalResponse:
    return html("error.html", {**(context or {}), "title": title, "message": message, "status": status}, status)


@functools.lru_cache(maxsize=8)
def _asset(name: str) -> bytes:
    return (importlib.resources.files("codexproxy_templates") / name).read_bytes()


def static(name: str) -> LocalResponse:
    if name not in STATIC:
        return LocalResponse(404, f"no such asset: {escape(name)[:80]}\n", dict(SECURITY_HEADERS))
    return LocalResponse(200, _asset(name), {**SECURITY_HEADERS, "cache-control": "no-cache"}, content_type=STATIC[name])
