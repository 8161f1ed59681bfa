"""Who may use the status page and the admin API, and the checks that keep browsers safe.

- Scripts send `Authorization: Bearer <admin token>` (compared in constant time by the core).
- Browsers log in once with the admin token (or a one-time link from `codexproxy run --open`)
  and get a session cookie: random, HttpOnly, SameSite=Strict, kept (as a hash) in `app.state`:
  proxies sharing a state share the sessions; on the embedded state (this process's memory)
  a restart logs everyone out.
- Every form carries a CSRF token tied to the session (the login form: to a pre-login cookie);
  every state-changing request with a cross-site `Origin` or `Sec-Fetch-Site` is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

SESSION_COOKIE = "codexproxy_session"
LOGIN_COOKIE = "codexproxy_login"
OTP_TTL_S = 60.0
MAX_SESSIONS = 200
GUESSES_PER_MINUTE = 10  # wrong admin tokens per client address and minute
SESSION_KEY = "admin:session:"  # + sha256(cookie value)
OTP_KEY = "admin:otp:"  # + sha256(one-time code)
LOGIN_SECRET_KEY = "admin:login-csrf-secret"
GUESSES_KEY = "admin:guesses:"  # + client address (IPv6: its /64)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class Session:
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message) shown once
    key: str = ""  # where it is kept in the state

    def as_value(self) -> dict[str, Any]:
        return {"csrf": self.csrf, "expires": self.expires, "flash": [list(f) for f in self.flash]}


class Sessions:
    """Sessions, one-time login links and the login form's signing secret, in `app.state`."""

    def __init__(self, state: Any) -> None:
        self.state = state

    # --- sessions --------------------------------------------------------------------------
    def create(self, ttl: float) -> tuple[str, Session]:
        value = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(24), expires=time.time() + ttl, key=SESSION_KEY + _digest(value))
        live = self.state.keys(SESSION_KEY)
        if len(live) >= MAX_SESSIONS:  # drop the one closest to expiry
            expiries = {k: (self.state.get(k) or {}).get("expires", 0) for k in live}
            self.state.delete(min(expiries, key=expiries.__getitem__))
        self.state.set(session.key, session.as_value(), ttl=ttl)
        return value, session

    def get(self, value: str | None) -> Session | None:
        if not value:
            return None
        key = SESSION_KEY + _digest(value)
        stored = self.state.get(key)
        if not isinstance(stored, dict) or stored.get("expires", 0) <= time.time():
            return None
        return Session(csrf=stored["csrf"], expires=stored["expires"],
                       flash=[(kind, text) for kind, text in stored.get("flash") or []], key=key)

    def end(self, value: str | None) -> None:
        if value:
            self.state.delete(SESSION_KEY + _digest(value))

    def _save(self, session: Session) -> None:
        ttl = session.expires - time.time()
        if ttl > 0:
            self.state.set(session.key, session.as_value(), ttl=ttl)

    def flash(self, session: Session, kind: str, message: str) -> None:
        """A message for the session's next page (after a redirect: maybe another process's)."""
        session.flash.append((kind, message))
        self._save(session)

    def take_flash(self, session: Session) -> list[tuple[str, str]]:
        """The session's messages, now shown and so forgotten."""
        shown, session.flash = session.flash, []
        if shown:
            self._save(session)
        return shown

    # --- one-time login links --------------------------------------------------------------
    def new_otp(self) -> str:
        code = secrets.token_urlsafe(24)
        self.state.set(OTP_KEY + _digest(code), True, ttl=OTP_TTL_S)
        return code

    def use_otp(self, code: str | None) -> bool:
        """True once for a fresh code (`pop` is atomic: of two processes, one gets it)."""
        if not code:
            return False
        return self.state.pop(OTP_KEY + _digest(code)) is not None

    # --- the login form's CSRF token: an HMAC of the pre-login cookie ----------------------
    def _secret(self) -> bytes:
        # Created once with `add`, so every process sharing the state signs with the same one
        # (a login form served by one proxy can be posted to another).
        secret = self.state.get(LOGIN_SECRET_KEY)
        if secret is None:
            self.state.add(LOGIN_SECRET_KEY, secrets.token_hex(32))
            secret = self.state.get(LOGIN_SECRET_KEY)
        return bytes.fromhex(secret)

    def login_csrf(self, cookie_value: str) -> str:
        return hmac.new(self._secret(), cookie_value.encode(), hashlib.sha256).hexdigest()

    def check_login_csrf(self, cookie_value: str | None, offered: str | None) -> bool:
        if not cookie_value or not offered:
            return False
        return secrets.compare_digest(self.login_csrf(cookie_value).encode(), offered.encode())


class GuessLimiter:
    """Wrong admin tokens per client address (IPv6: per /64, what one host can rotate through),
    counted in a sliding window of `app.state` (so proxies sharing a state count together):
    after GUESSES_PER_MINUTE wrong ones in a minute that address gets 429 until the oldest
    ages out, on every surface that checks the token (login form, /rpc, /status and /metrics
    with a Bearer token). Per address, so a script guessing elsewhere cannot lock the admin out;
    a script on the same machine shares the admin's address, and sessions already logged in
    are never affected."""

    def __init__(self, state: Any, per_minute: int = GUESSES_PER_MINUTE, window_s: float = 60.0) -> None:
        self.state = state
        self.per_minute = per_minute
        self.window_s = window_s

    @staticmethod
    def client_key(addr: str) -> str:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return addr[:100]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if isinstance(ip, ipaddress.IPv6Address) and not ip.is_loopback:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip)

    def retry_after(self, addr: str) -> int | None:
        """Seconds this address must wait before its next guess, or None when it may try."""
        key = GUESSES_KEY + self.client_key(addr)
        if self.state.window_sum(key, self.window_s) < self.per_minute:
            return None
        # The first whole second after which the window holds fewer than the limit (the sum
        # over the last window_s - wait seconds only shrinks as wait grows: a binary search,
        # a few state calls even for an address that keeps guessing).
        low, high = 1, max(1, math.ceil(self.window_s))
        while low < high:
            mid = (low + high) // 2
            if self.state.window_sum(key, self.window_s - mid) < self.per_minute:
                high = mid
            else:
                low = mid + 1
        return low

    def failed(self, addr: str) -> None:
        self.state.window_add(GUESSES_KEY + self.client_key(addr), 1, self.window_s)


def sessions(app) -> Sessions:
    return app.plugin_state("admin.sessions", lambda: Sessions(app.state))


def guesses(app) -> GuessLimiter:
    """The limiter every admin surface checks (its counts are in app.state)."""
    return app.plugin_state("admin.guesses", lambda: GuessLimiter(app.state))


def check_admin_bearer(app, exchange) -> str | None:
    """For a request that offers the admin token as a Bearer token: None when it is right, else
    why not ("missing", "wrong" or "limited"); a wrong one counts against the client address."""
    limiter = guesses(app)
    if limiter.retry_after(exchange.client_addr) is not None:
        return "limited"
    offered = bearer(exchange.headers)
    if offered is None:
        return "missing"
    if app.check_admin_token(offered):
        return None
    limiter.failed(exchange.client_addr)
    return "wrong"


def check_csrf(session: Session, offered: str | None) -> bool:
    return bool(offered) and secrets.compare_digest(session.csrf.encode(), str(offered).encode())


def cookies(headers: dict[str, str]) -> dict[str, str]:
    """The request's cookies (first value wins); tolerant of malformed pairs."""
    out: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in out:
            out[name] = value.strip().strip('"')
    return out


def set_cookie(name: str, value: str, max_age: int, path: str = "/status") -> str:
    return f"{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict"


def bearer(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    return auth[7:].strip() or None


LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _own_origin(app) -> tuple[int | None, set[str], bool]:
    """(port, host names, bound to every interface) of this proxy. The Host header cannot
    tell: the reverse proxy has replaced it with the upstream's before any hook runs."""
    parts = urlsplit(app.public_url or "")
    host = (app.config.server.host or "").lower().strip("[]")
    hosts = set(LOOPBACK_HOSTS) | {host, (parts.hostname or "").lower()}
    return parts.port, hosts, host in ("0.0.0.0", "::", "")


def cross_site(app, headers: dict[str, str]) -> str | None:
    """Why this request comes from another site (then it must be refused), or None.

    Sec-Fetch-Site decides when the browser sends it; otherwise an Origin must name this
    proxy (its port, and a loopback name or the configured host unless bound to all)."""
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site:
        return None if fetch_site in ("same-origin", "none") else f"Sec-Fetch-Site is {fetch_site!r}"
    origin = headers.get("origin")
    if origin is None:
        return None  # not a browser's cross-origin request (they always send Origin on POST)
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = (parts.hostname or "").lower()
    except ValueError:
        return "Origin is malformed"
    own_port, own_hosts, everywhere = _own_origin(app)
    if parts.scheme != "http" or not host or port != own_port or not (everywhere or host in own_hosts):
        return "Origin is another site"
    return None
