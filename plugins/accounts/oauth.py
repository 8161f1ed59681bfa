"""OpenAI's OAuth endpoints as Codex CLI uses them (auth.openai.com, client id and scopes as
Codex sends them): PKCE authorize URL,
code exchange, refresh, and the device-code flow. Plain functions over httpx, no state.

Errors are `OAuthError` with the issuer's error code and a `permanent` flag: a permanent
refresh error means the refresh token is dead and only a new login helps.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import ssl
from typing import Any
from urllib.parse import urlencode

import httpx

SCOPE = "openid profile email offline_access"
REFRESH_SCOPE = "openid profile email"
CALLBACK_PATH = "/auth/callback"
DEFAULT_CALLBACK_PORT = 1455  # what Codex registers; used when login_addr says port 0 but nothing listens
# Refresh tokens rotate (each refresh returns a new one and retires the old): these error
# codes mean the one we hold is gone for good.
PERMANENT_REFRESH_ERRORS = ("refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated", "invalid_grant")
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class OAuthError(Exception):
    def __init__(self, message: str, code: str | None = None, status: int | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.permanent = permanent


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_pkce() -> tuple[str, str]:
    """(verifier, S256 challenge): 64 random bytes, as Codex CLI does."""
    verifier = b64url(secrets.token_bytes(64))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def new_state() -> str:
    return b64url(secrets.token_bytes(32))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_addr(addr: str) -> tuple[str, int]:
    """'127.0.0.1:1455' / '[::1]:1455' -> (host, port); ValueError with the reason."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"oauth.login_addr must be HOST:PORT (got {addr!r})")
    return host.strip("[]"), int(port)


def redirect_uri(host: str, port: int) -> str:
    # The issuer only knows http://localhost:<port>/auth/callback: loopback hosts are spelled so.
    shown = "localhost" if is_loopback(host) or host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port or DEFAULT_CALLBACK_PORT}{CALLBACK_PATH}"


def authorize_url(cfg: Any, redirect: str, challenge: str, state: str) -> str:
    params = {
        "response_type": "code",
        "client_id": cfg.client_id,
        "redirect_uri": redirect,
        "scope": SCOPE,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "id_token_add_organizations": "true",
        "codex_cli_simplified_flow": "true",
        "state": state,
        "originator": cfg.originator,
    }
    return f"{cfg.issuer.rstrip('/')}/oauth/authorize?{urlencode(params)}"


def _error_from(resp: httpx.Response, what: str) -> OAuthError:
    """The issuer answers `{"error": {"code", "message"}}` or OAuth's `{"error", "error_description"}`."""
    code, message = None, None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code, message = error.get("code") or error.get("type"), error.get("message")
        elif isinstance(error, str):
            code, message = error, body.get("error_description")
    text = resp.text[:2000]
    if code is None:
        code = next((c for c in PERMANENT_REFRESH_ERRORS if c in text), None)
    detail = message or code or text.strip()[:120] or f"HTTP {resp.status_code}"
    return OAuthError(f"{what} failed ({resp.status_code}): {detail}", code=code, status=resp.status_code)


def _post(url: str, payload: dict[str, Any], form: bool, what: str, verify: Any = True) -> httpx.Response:
    try:
        with httpx.Client(timeout=TIMEOUT, verify=verify) as client:
            if form:
                return client.post(url, data=payload, headers={"accept": "application/json"})
            return client.post(url, json=payload, headers={"accept": "application/json"})
    except httpx.HTTPError as exc:
        raise OAuthError(f"{what} failed: cannot reach {url}: {exc.__class__.__name__}: {exc}") from None


def _tokens(resp: httpx.Response, what: str) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise OAuthError(f"{what} failed: the issuer's answer is not JSON", status=resp.status_code) from None
    if not isinstance(data, dict) or not data.get("access_token"):
        raise OAuthError(f"{what} failed: the issuer's answer has no access_token", status=resp.status_code)
    return data


def exchange_code(cfg: Any, code: str, verifier: str, redirect: str, verify: Any = True) -> dict[str, Any]:
    """authorization_code -> {id_token, access_token, refresh_token, expires_in?}."""
    resp = _post(f"{cfg.issuer.rstrip('/')}/oauth/token", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
        "client_id": cfg.client_id, "code_verifier": verifier}, form=True, what="code exchange", verify=verify)
    if resp.status_code != 200:
        raise _error_from(resp, "code exchange")
    return _tokens(resp, "code exchange")


def refresh_tokens(cfg: Any, refresh_token: str, verify: Any = True) -> dict[str, Any]:
    """A new token set; the old refresh token is dead once this returns (rotation)."""
    resp = _post(f"{cfg.issuer.rstrip('/')}/oauth/token", {
        "client_id": cfg.client_id, "grant_type": "refresh_token", "refresh_token": refresh_token,
        "scope": REFRESH_SCOPE}, form=False, what="token refresh", verify=verify)
    if resp.status_code != 200:
        err = _error_from(resp, "token refresh")
        err.permanent = err.code in PERMANENT_REFRESH_ERRORS or resp.status_code == 401
        raise err
    return _tokens(resp, "token refresh")


def device_start(cfg: Any, verify: Any = True) -> dict[str, Any]:
    """{device_auth_id, user_code, interval (seconds, float), verification_url}."""
    issuer = cfg.issuer.rstrip("/")
    resp = _post(f"{issuer}/api/accounts/deviceauth/usercode", {"client_id": cfg.client_id}, form=False,
                 what="device login", verify=verify)
    if resp.status_code != 200:
        raise _error_from(resp, "device login")
    data = resp.json()
    if not isinstance(data, dict) or not data.get("device_auth_id") or not data.get("user_code"):
        raise OAuthError("device login failed: the issuer's answer has no device_auth_id/user_code")
    try:
        interval = max(1.0, float(data.get("interval") or 5))  # the real API sends it as a string
    except (TypeError, ValueError):
        interval = 5.0
    return {"device_auth_id": data["device_auth_id"], "user_code": data["user_code"], "interval": interval,
            "verification_url": f"{issuer}/codex/device"}


def device_poll(cfg: Any, device_auth_id: str, user_code: str, verify: Any = True) -> dict[str, Any] | None:
    """{authorization_code, code_verifier} once approved; None while pending (403/404)."""
    resp = _post(f"{cfg.issuer.rstrip('/')}/api/accounts/deviceauth/token",
                 {"device_auth_id": device_auth_id, "user_code": user_code}, form=False, what="device login", verify=verify)
    if resp.status_code in (403, 404):
        return None
    if resp.status_code != 200:
        raise _error_from(resp, "device login")
    data = resp.json()
    if not isinstance(data, dict) or not data.get("authorization_code") or not data.get("code_verifier"):
        raise OAuthError("device login failed: the issuer's answer has no authorization_code/code_verifier")
    return data


def device_redirect_uri(cfg: Any) -> str:
    return f"{cfg.issuer.rstrip('/')}/deviceauth/callback"


def tls_verify(config: Any) -> bool | ssl.SSLContext:
    """httpx's `verify` from upstream.ssl_verify / upstream.ca_file (same trust as the proxy path)."""
    return config.upstream.httpx_verify()
