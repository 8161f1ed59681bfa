"""Pending logins: started by one process (CLI, or the proxy for the status page), completed
by whichever sees the callback. They live in the state collection `pending_logins`, expire
after oauth.pending_login_ttl_s (the record stays as long again, at least 10 minutes, so its outcome can be asked),
and are single-use: completing one first claims it with an atomic update (pending ->
exchanging), so two completions of the same callback cannot both reach the issuer.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from codexproxy.models import Account

from . import oauth

PENDING = "pending_logins"
SECRET_FIELDS = ("verifier", "device_auth_id")
ERROR_WORDS = {
    "access_denied": "the sign-in was declined or cancelled in the browser (access_denied)",
    "missing_codex_entitlement": "this ChatGPT account has no access to Codex (missing_codex_entitlement): "
                                 "sign in with an account or workspace whose plan includes Codex",
}


class LoginError(Exception):
    """A login problem worded for the user, in one line."""


KEPT_AFTER_EXPIRY_S = 600.0


def _logins(app: Any) -> Any:
    return app.state.collection(PENDING)


def public(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in SECRET_FIELDS}


def _insert(app: Any, rec: dict[str, Any]) -> dict[str, Any]:
    # Kept a while after it expires (at least 10 minutes), so its status can be asked and a late
    # callback is told "expired" rather than "unknown".
    keep = max(app.config.oauth.pending_login_ttl_s, KEPT_AFTER_EXPIRY_S)
    return _logins(app).put(rec, ttl=rec["expires_at"] - time.time() + keep)


def _new(app: Any, kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    return {"id": "login_" + secrets.token_hex(6), "kind": kind, "status": "pending", "created_at": now,
            "expires_at": now + app.config.oauth.pending_login_ttl_s, "account_id": None, "error": None,
            "group": meta.get("group"), "tags": list(meta.get("tags") or []), "note": meta.get("note")}


def start_browser(app: Any, redirect: str, meta: dict[str, Any], state: str | None = None) -> dict[str, Any]:
    """Record a PKCE login and return it (with the authorize `url`)."""
    verifier, challenge = oauth.new_pkce()
    state = state or oauth.new_state()
    rec = _new(app, "browser", meta)
    rec.update(state=state, verifier=verifier, redirect_uri=redirect,
               url=oauth.authorize_url(app.config.oauth, redirect, challenge, state))
    return _insert(app, rec)


def start_device(app: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Ask the issuer for a device code and record the login (user_code, verification_url, interval)."""
    try:
        info = oauth.device_start(app.config.oauth, verify=oauth.tls_verify(app.config))
    except oauth.OAuthError as exc:
        raise LoginError(str(exc)) from None
    rec = _new(app, "device", meta)
    rec.update(state=oauth.new_state(), **info)
    return _insert(app, rec)


def records(app: Any) -> list[dict[str, Any]]:
    return _logins(app).all()


def get(app: Any, login_id: str) -> dict[str, Any] | None:
    return _logins(app).get(login_id)


def parse_callback(url: str) -> dict[str, str]:
    """The query of a pasted callback URL (or of its bare `code=...&state=...` part)."""
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme in ("http", "https"):
        query = parts.query
    elif "://" not in text and "=" in text:
        query = text.lstrip("?")
    else:
        query = ""
    values = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if not values.get("state") or not (values.get("code") or values.get("error")):
        raise LoginError("not a login callback URL: expected http://localhost:1455/auth/callback?code=...&state=... "
                         "(copy the whole address from the browser)")
    return values


def _claim(app: Any, state: str | None = None, login_id: str | None = None) -> dict[str, Any]:
    """Take a pending login for completion (single use); LoginError when it cannot be."""
    now = time.time()
    logins = _logins(app)
    found = logins.find(state=state) if state else [d for d in [logins.get(login_id or "")] if d]
    if not found:
        raise LoginError("no pending login matches this callback's state (wrong or stale URL, or a login "
                         "started with another store); start one with `codexproxy accounts login`")
    rec = found[0]
    if rec["status"] == "pending" and rec["expires_at"] <= now:
        logins.remove(rec["id"])
        ago = int(now - rec["expires_at"])
        raise LoginError(f"this login expired {ago}s ago (oauth.pending_login_ttl_s); start a new one with "
                         "`codexproxy accounts login`")

    def claim(doc: dict[str, Any]) -> None:
        if doc["status"] != "pending":  # checked again inside the atomic update: one claim wins
            raise LoginError(f"this login is already {doc['status']} (a login URL works once); start a new one")
        doc["status"] = "exchanging"

    if logins.update(rec["id"], claim) is None:
        raise LoginError("this login was removed meanwhile; start a new one with `codexproxy accounts login`")
    return rec


def finish(app: Any, login_id: str, status: str, account_id: str | None = None, error: str | None = None) -> None:
    """Record the outcome; the verifier is wiped (it is useless now and a secret)."""
    _logins(app).update(login_id, lambda d: d.update(status=status, account_id=account_id, error=error, verifier=None,
                                                    device_auth_id=None, finished_at=time.time()))


def error_words(code: str, description: str | None = None) -> str:
    words = ERROR_WORDS.get(code) or f"the issuer refused the sign-in ({code})"
    return f"login failed: {words}" + (f": {description}" if description and code not in ERROR_WORDS else "")


def complete_callback(app: Any, query: dict[str, str], meta: dict[str, Any] | None = None,
                      expect_state: str | None = None) -> tuple[Account, bool]:
    """Finish a browser login from its callback query; returns (account, created)."""
    state = query.get("state") or ""
    if expect_state is not None and state != expect_state:
        raise LoginError("the callback's state does not match this login (a stale browser tab?); nothing was stored")
    if query.get("error"):
        words = error_words(query["error"], query.get("error_description"))
        try:
            rec = _claim(app, state=state)
            finish(app, rec["id"], "failed", error=words)
        except LoginError:
            pass  # the issuer's words matter more than the state of an unknown login
        raise LoginError(words)
    rec = _claim(app, state=state)
    try:
        tokens = oauth.exchange_code(app.config.oauth, query["code"], rec["verifier"], rec["redirect_uri"],
                                     verify=oauth.tls_verify(app.config))
        account, created = store_account(app, tokens, {**rec, **{k: v for k, v in (meta or {}).items() if v}})
    except (oauth.OAuthError, LoginError) as exc:
        finish(app, rec["id"], "failed", error=str(exc))
        raise LoginError(str(exc)) from None
    finish(app, rec["id"], "completed", account_id=account.id)
    return account, created


def complete_device(app: Any, rec: dict[str, Any], deadline: float, sleep=time.sleep) -> tuple[Account, bool]:
    """Poll the issuer until the user approved the device code (or the deadline), then exchange."""
    cfg, verify = app.config.oauth, oauth.tls_verify(app.config)
    deadline = min(deadline, rec["expires_at"])
    while True:
        try:
            result = oauth.device_poll(cfg, rec["device_auth_id"], rec["user_code"], verify=verify)
        except oauth.OAuthError as exc:
            finish(app, rec["id"], "failed", error=str(exc))
            raise LoginError(str(exc)) from None
        if result is not None:
            break
        current = get(app, rec["id"])
        if current is None or current["status"] != "pending":
            raise LoginError("this device login was ended elsewhere")
        if time.time() + rec["interval"] > deadline:
            finish(app, rec["id"], "failed", error="timed out")
            raise LoginError(f"device login timed out: the code {rec['user_code']} was not approved in time; run it again")
        sleep(rec["interval"])
    rec = _claim(app, login_id=rec["id"])
    try:
        tokens = oauth.exchange_code(cfg, result["authorization_code"], result["code_verifier"],
                                     oauth.device_redirect_uri(cfg), verify=verify)
        account, created = store_account(app, tokens, rec)
    except (oauth.OAuthError, LoginError) as exc:
        finish(app, rec["id"], "failed", error=str(exc))
        raise LoginError(str(exc)) from None
    finish(app, rec["id"], "completed", account_id=account.id)
    return account, created


def store_account(app: Any, tokens: dict[str, Any], meta: dict[str, Any]) -> tuple[Account, bool]:
    """Add the signed-in account, or renew the tokens of the one already in the pool."""
    now = time.time()
    account = Account.from_tokens(tokens.get("id_token"), tokens["access_token"], tokens.get("refresh_token"),
                                  last_refresh=now, group=meta.get("group"), tags=list(meta.get("tags") or []),
                                  note=meta.get("note"))
    if account.token_expires_at is None and isinstance(tokens.get("expires_in"), (int, float)):
        account.token_expires_at = now + float(tokens["expires_in"])
    if not account.chatgpt_account_id:
        raise LoginError("the issuer's id_token names no ChatGPT account (chatgpt_account_id); nothing was stored")
    stored, created = app.accounts.upsert_by_chatgpt_id(account)
    if not created:
        extra = {k: meta[k] for k in ("group", "note") if meta.get(k)}
        if meta.get("tags"):
            extra["tags"] = list(meta["tags"])
        stored = app.accounts.update(stored.id, last_refresh=now, refresh_failures=0, **extra) or stored
    return stored, created
