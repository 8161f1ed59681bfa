"""Who may use the status page and the admin API, and the checks that keep browsers safe.

- Scripts send `Authorization: Bearer <admin token>` (compared in constant time by the core).
- Browsers log in once with the admin token (or a one-time link from `codexproxy run --open`)
  and get a session cookie: random, HttpOnly, SameSite=Strict, kept only in this process's
  memory (as a hash), so a restart logs everyone out.
- Every form carries a CSRF token tied to the session (the login form: to a pre-login cookie);
  every state-changing request with a cross-site `Origin` or `Sec-Fetch-Site` is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SESSION_COOKIE = "codexproxy_session"
LOGIN_COOKIE = "codexproxy_login"
OTP_TTL_S = 60.0
MAX_SESSIONS = 200
GUESSES_PER_MINUTE = 10  # wrong admin tokens per client address and minute


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class Session:
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message) shown once


class Sessions:
    """In-memory sessions and one-time login links of this proxy process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: dict[str, Session] = {}  # sha256(cookie value) -> Session
        self.otps: dict[str, float] = {}  # sha256(one-time code) -> expiry
        self.secret = secrets.token_bytes(32)  # signs the login form's CSRF token

    # --- sessions --------------------------------------------------------------------------
    def create(self, ttl: float) -> tuple[str, Session]:
        value = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(24), expires=time.time() + ttl)
        with self.lock:
            self._prune()
            if len(self.sessions) >= MAX_SESSIONS:  # drop the one closest to expiry
                del self.sessions[min(self.sessions, key=lambda k: self.sessions[k].expires)]
            self.sessions[_digest(value)] = session
        return value, session

    def get(self, value: str | None) -> Session | None:
        if not value:
            return None
        with self.lock:
            session = self.sessions.get(_digest(value))
            if session is not None and session.expires <= time.time():
                self.sessions.pop(_digest(value), None)
                return None
            return session

    def end(self, value: str | None) -> None:
        if value:
            with self.lock:
                self.sessions.pop(_digest(value), None)

    def _prune(self) -> None:
        now = time.time()
        for key in [k for k, s in self.sessions.items() if s.expires <= now]:
            del self.sessions[key]
        for key in [k for k, t in self.otps.items() if t <= now]:
            del self.otps[key]

    # --- one-time login links --------------------------------------------------------------
    def new_otp(self) -> str:
        code = secrets.token_urlsafe(24)
        with self.lock:
            self._prune()
            self.otps[_digest(code)] = time.time() + OTP_TTL_S
        return code

    def use_otp(self, code: str | None) -> bool:
        """True once for a fresh code; a used or expired code is gone."""
        if not code:
            return False
        with self.lock:
            expiry = self.otps.pop(_digest(code), None)
        return expiry is not None and expiry > time.time()

    # --- the login form's CSRF token: an HMAC of the pre-login cookie ----------------------
    def login_csrf(self, cookie_value: str) -> str:
        return hmac.new(self.secret, cookie_value.encode(), hashlib.sha256).hexdigest()

    def check_login_csrf(self, cookie_value: str | None, offered: str | None) -> bool:
        if not cookie_value or not offered:
            return False
        return secrets.compare_digest(self.login_csrf(cookie_value).encode(), offered.encode())


class GuessLimiter:
    """Wrong admin tokens per client address (IPv6: per /64, what one host can rotate through):
    after GUESSES_PER_MINUTE wrong ones in a minute that address gets 429 until the oldest
    ages out, on every surface that checks the token (login form, /rpc, /status and /metrics
    with a Bearer token). Per address, so a script guessing elsewhere cannot lock the admin out;
    a script on the same machine shares the admin's address, and sessions already logged in
    are never affected."""

    def __init__(self, per_minute: int = GUESSES_PER_MINUTE, window_s: float = 60.0, max_clients: int = 4096) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self.max_clients = max_clients
        self.lock = threading.Lock()
        self.failures: dict[str, list[float]] = {}

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
        key = self.client_key(addr)
        now = time.time()
        with self.lock:
            recent = [t for t in self.failures.get(key, ()) if t > now - self.window_s]
            if recent:
                self.failures[key] = recent
            else:
                self.failures.pop(key, None)
            if len(recent) < self.per_minute:
                return None
            return max(1, int(recent[0] + self.window_s - now) + 1)

    def failed(self, addr: str) -> None:
        key = self.client_key(addr)
        now = time.time()
        with self.lock:
            if key not in self.failures and len(self.failures) >= self.max_clients:
                for stale in [k for k, ts in self.failures.items() if not ts or ts[-1] <= now - self.window_s]:
                    del self.failures[stale]
                if len(self.failures) >= self.max_clients:  # still full: forget the quietest
                    del self.failures[min(self.failures, key=lambda k: self.failures[k][-1])]
            self.failures.setdefault(key, []).append(now)
            del self.failures[key][:-self.per_minute]  # more than the limit tells nothing new


def guesses(app) -> GuessLimiter:
    """The process's one limiter, shared by every admin surface."""
    return app.plugin_state("admin.guesses", GuessLimiter)


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
