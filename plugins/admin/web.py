"""The /status routes: login and logout, the pages (GET), the forms (POST), static assets.

Browsers without a session are sent to the login form; scripts (no text/html in Accept) get
401. A form POST needs the session's CSRF token and a same-site origin; a request with the
admin token as a Bearer token needs neither (it carries no ambient credential).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from codexproxy.exchange import GatewayError, LocalResponse

from . import forms, pages, render
from .methods import BadParams, NotFound
from .session import (LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions, bearer, check_admin_bearer, check_csrf, cookies, cross_site,
                      guesses, set_cookie)
from .session import sessions as sessions_of

log = logging.getLogger("codexproxy.admin")

MAX_FORM_BYTES = 64 * 1024


@dataclass
class Viewer:
    session: Session | None  # None: a script with the admin token


def _redirect(location: str, cookie: str | None = None) -> LocalResponse:
    headers = {"location": location, "cache-control": "no-store", **render.SECURITY_HEADERS}
    if cookie:
        headers["set-cookie"] = cookie
    return LocalResponse(303, b"", headers)


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/status") and not value.startswith("/status/login") and "\\" not in value and "//" not in value:
        return value
    return "/status"


def _wants_html(exchange) -> bool:
    return "text/html" in exchange.headers.get("accept", "")


def _viewer(app, exchange, sessions: Sessions) -> Viewer | None:
    if bearer(exchange.headers) is not None:
        return Viewer(None) if check_admin_bearer(app, exchange) is None else None
    session = sessions.get(cookies(exchange.headers).get(SESSION_COOKIE))
    return Viewer(session) if session else None


def _unauthorized(exchange) -> LocalResponse:
    if exchange.method in ("GET", "HEAD") and _wants_html(exchange):
        target = exchange.path + ("?" + urlencode(exchange.query) if exchange.query else "")
        return _redirect("/status/login?next=" + quote(_safe_next(target), safe=""))
    return LocalResponse(401, {"error": {"message": "Unauthorized: log in at /status/login, or send the admin token as "
                                                    "'Authorization: Bearer <token>' (see `codexproxy admin-token`).",
                                         "type": "authentication_error", "code": "admin_token_required"}},
                         {"www-authenticate": 'Bearer realm="codexproxy"', "cache-control": "no-store"})


def _form(exchange) -> dict[str, str]:
    ctype = exchange.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-www-form-urlencoded", ""):
        raise BadParams("expected a form (application/x-www-form-urlencoded)")
    if len(exchange.body) > MAX_FORM_BYTES:
        raise BadParams("the form is too large")
    try:
        pairs = parse_qsl(exchange.body.decode("utf-8"), keep_blank_values=True, max_num_fields=100, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadParams(f"the form could not be read ({exc})") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def context(app, viewer: Viewer | None, nav: str, refresh: bool = True) -> dict[str, Any]:
    """What every page needs; `refresh` False for answers to a POST (a reload would re-send it)."""
    flash: list[tuple[str, str]] = []
    if viewer is not None and viewer.session is not None:
        flash = sessions_of(app).take_flash(viewer.session)
    return {"nav": nav, "csrf": viewer.session.csrf if viewer and viewer.session else "", "flash": flash,
            "logged_in": bool(viewer and viewer.session), "refresh_s": app.plugin_config("admin").auto_refresh_s if refresh else 0}


def _page(app, viewer: Viewer, name: str, query: dict[str, str], status: int = 200,
          extra: list[tuple[str, str]] | None = None) -> LocalResponse:
    """A page; with `extra` messages it answers a POST directly (no auto-refresh then)."""
    template, build = pages.PAGES[name]
    ctx = context(app, viewer, name or "dashboard", refresh=extra is None)
    ctx["flash"] = ctx["flash"] + (extra or [])
    try:
        ctx.update(build(app, query))
    except (BadParams, NotFound) as exc:
        return render.error_page(400, "Bad request", str(exc), ctx)
    return render.html(template, ctx, status)


# --- login / logout --------------------------------------------------------------------------

def _login_form(app, exchange, sessions: Sessions, status: int = 200, error: str | None = None,
                next_: str | None = None) -> LocalResponse:
    value = cookies(exchange.headers).get(LOGIN_COOKIE, "")
    if not (20 <= len(value) <= 100 and value.replace("-", "").replace("_", "").isalnum()):
        value = secrets.token_urlsafe(24)
    ctx = {"nav": "login", "csrf": sessions.login_csrf(value), "error": error, "flash": [], "logged_in": False, "refresh_s": 0,
           "next": _safe_next(next_ or exchange.query.get("next"))}
    return render.html("login.html", ctx, status, {"set-cookie": set_cookie(LOGIN_COOKIE, value, 3600, "/status/login")})


def _start_session(app, sessions: Sessions, target: str) -> LocalResponse:
    ttl = app.plugin_config("admin").session_ttl_s
    value, _ = sessions.create(ttl)
    return _redirect(target, set_cookie(SESSION_COOKIE, value, int(ttl)))


def login(app, exchange, sessions: Sessions) -> LocalResponse:
    if exchange.method in ("GET", "HEAD"):
        if "otp" in exchange.query:
            if sessions.use_otp(exchange.query["otp"]):
                return _start_session(app, sessions, "/status")
            return _login_form(app, exchange, sessions, 401, "This one-time login link has expired or was already used. "
                                                             "Log in with the admin token instead.")
        if _viewer(app, exchange, sessions) is not None and bearer(exchange.headers) is None:
            return _redirect(_safe_next(exchange.query.get("next")))
        return _login_form(app, exchange, sessions)
    if exchange.method != "POST":
        return LocalResponse(405, f"{exchange.method} is not allowed on /status/login.\n", {"allow": "GET, POST"})
    why = cross_site(app, exchange.headers)
    if why:
        return render.error_page(403, "Forbidden", f"Cross-site login refused ({why}).")
    try:
        form = _form(exchange)
    except BadParams as exc:
        return _login_form(app, exchange, sessions, 400, str(exc))
    next_ = form.get("next")
    if not sessions.check_login_csrf(cookies(exchange.headers).get(LOGIN_COOKIE), form.get("csrf")):
        return _login_form(app, exchange, sessions, 403, "The login form expired or did not come from this page; try again.", next_)
    if guesses(app).retry_after(exchange.client_addr) is not None:
        return _login_form(app, exchange, sessions, 429, "Too many wrong tokens in the last minute; wait a minute and try again.", next_)
    if not app.check_admin_token(form.get("token", "").strip()):
        guesses(app).failed(exchange.client_addr)
        return _login_form(app, exchange, sessions, 401, "Wrong admin token.", next_)
    return _start_session(app, sessions, _safe_next(form.get("next")))


def logout(app, exchange, sessions: Sessions, viewer: Viewer, form: dict[str, str]) -> LocalResponse:
    sessions.end(cookies(exchange.headers).get(SESSION_COOKIE))
    return _redirect("/status/login", set_cookie(SESSION_COOKIE, "", 0))


# --- dispatch -----------------------------------------------------------------------------------

def handle(app, exchange, sessions: Sessions) -> LocalResponse:
    sub = exchange.path[len("/status"):].strip("/")
    if sub.startswith("static/"):
        if exchange.method not in ("GET", "HEAD"):
            return LocalResponse(405, "use GET\n", {"allow": "GET, HEAD"})
        return render.static(sub[len("static/"):])
    if sub == "login":
        return login(app, exchange, sessions)
    if bearer(exchange.headers) is not None and (wait := guesses(app).retry_after(exchange.client_addr)):
        return LocalResponse(429, {"error": {"message": f"Too many wrong admin tokens from your address; try again in {wait} s.",
                                             "type": "rate_limit_error", "code": "too_many_guesses"}},
                             {"retry-after": str(wait), "cache-control": "no-store"})
    viewer = _viewer(app, exchange, sessions)
    if exchange.method in ("GET", "HEAD"):
        if viewer is None:
            return _unauthorized(exchange)
        if sub not in pages.PAGES:
            return render.error_page(404, "Not found", f"There is no page {exchange.path[:80]!r}.", context(app, viewer, ""))
        return _page(app, viewer, sub, exchange.query)
    if exchange.method != "POST":
        return LocalResponse(405, f"{exchange.method} is not allowed on {exchange.path[:80]}.\n", {"allow": "GET, POST"})
    why = cross_site(app, exchange.headers)
    if why:
        return render.error_page(403, "Forbidden", f"Cross-site form post refused ({why}); nothing was changed.")
    if viewer is None:
        return _unauthorized(exchange)
    return post(app, exchange, sessions, viewer, sub)


def post(app, exchange, sessions: Sessions, viewer: Viewer, sub: str) -> LocalResponse:
    page = sub.split("/")[0] if sub.split("/")[0] in pages.PAGES else ""
    try:
        form = _form(exchange)
    except BadParams as exc:
        return _page(app, viewer, page, {}, 400, [("error", str(exc))])
    if viewer.session is not None and not check_csrf(viewer.session, form.get("csrf")):
        return render.error_page(403, "Forbidden", "The form expired or did not come from this page (CSRF check failed); "
                                                   "nothing was changed. Reload the page and try again.", context(app, viewer, page, False))
    if sub == "logout":
        return logout(app, exchange, sessions, viewer, form)
    action = forms.ACTIONS.get(sub)
    if action is None:
        return render.error_page(404, "Not found", f"There is no form action {exchange.path[:80]!r}.", context(app, viewer, page, False))
    try:
        result = action(app, form)
    except NotFound as exc:
        return _page(app, viewer, page, {}, 404, [("error", str(exc))])
    except (ValueError, LookupError, GatewayError) as exc:  # BadParams, or a plugin method's own error
        return _page(app, viewer, page, {}, 400, [("error", getattr(exc, "message", None) or str(exc))])
    if isinstance(result, forms.Shown):
        return render.html(result.template, {**context(app, viewer, result.context.get("nav", page), refresh=False), **result.context})
    log.info("status page: %s", result.message)
    if viewer.session is None:  # a script: answer with the page itself
        return _page(app, viewer, result.page, {}, 200, [("ok", result.message)])
    sessions.flash(viewer.session, "ok", result.message)
    return _redirect("/status" + (f"/{result.page}" if result.page else ""))
