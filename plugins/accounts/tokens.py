"""Token lifecycle: refresh an account's tokens, one refresh per account at a time.

Refresh tokens rotate and a reused one is dead for good (`refresh_token_reused`), so:
- every refresh holds the state's named lock `accounts:refresh:<id>`, exclusive across
  threads AND processes (the proxy's 401 path, its scheduler, `codexproxy accounts refresh`,
  other proxies on a shared state);
- after getting the lock it re-reads the account: if someone else refreshed while we waited,
  their tokens are used and no second upstream refresh happens;
- the rotated pair is written to the store (atomic rename) before anyone uses it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from codexproxy.models import Account

from . import oauth
from .backoff import Schedule

log = logging.getLogger("codexproxy.accounts")

MAX_TOKEN_AGE_S = 8 * 86400  # Codex CLI refreshes a login older than 8 days even if the token lives on
# Held for the whole refresh: the issuer's answer (TIMEOUT: 10 s connect, 30 s read) and two
# store writes fit well inside. A holder that dies loses the lock after this.
REFRESH_LOCK_TTL_S = 120.0
# How long a refresh waits for another one of the same account (whose result it then uses).
REFRESH_LOCK_WAIT_S = 90.0


class RefreshFailed(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def backoff(app: Any) -> Schedule:
    """Retry times after transient refresh failures (30 s doubling, at most 30 min), in app.state."""
    return app.plugin_state("accounts.refresh_backoff",
                            lambda: Schedule(app.state, "accounts:refresh-backoff", interval=0, base=30, cap=1800))


def apply_tokens(account: Account, tokens: dict[str, Any]) -> None:
    """Put a token answer on the account (a refresh may omit id_token or refresh_token: keep ours)."""
    fresh = Account.from_tokens(tokens.get("id_token") or account.id_token, tokens["access_token"],
                                tokens.get("refresh_token") or account.refresh_token)
    account.access_token, account.refresh_token, account.id_token = fresh.access_token, fresh.refresh_token, fresh.id_token
    expires_in = tokens.get("expires_in")
    account.token_expires_at = fresh.token_expires_at or (time.time() + float(expires_in) if isinstance(expires_in, (int, float)) else None)
    account.email = fresh.email or account.email
    account.plan = fresh.plan or account.plan
    account.chatgpt_account_id = account.chatgpt_account_id or fresh.chatgpt_account_id
    account.last_refresh = time.time()  # the completion time: refreshes asked before it are satisfied by it
    account.refresh_failures = 0
    if account.status == "reauth_required":
        account.status, account.status_reason, account.status_until = "active", None, None


def needs_refresh(account: Account, now: float, lead: float) -> bool:
    """What the scheduled job refreshes: tokens about to expire, or logins older than 8 days."""
    if not account.refresh_token or not account.enabled or account.status == "reauth_required":
        return False
    if account.token_expires_at is not None and account.token_expires_at - now <= lead:
        return True
    return account.last_refresh is not None and now - account.last_refresh > MAX_TOKEN_AGE_S


def refresh(app: Any, account_id: str, reason: str, still_needed: Callable[[Account], bool] | None = None) -> Account:
    """Refresh now, unless another thread or process did it after we were asked (then its
    result is returned). `still_needed(account)` overrides that test. Raises RefreshFailed."""
    asked_at = time.time()
    if still_needed is None:
        still_needed = lambda acc: (acc.last_refresh or 0) < asked_at  # noqa: E731
    with app.state.lock(f"accounts:refresh:{account_id}", ttl=REFRESH_LOCK_TTL_S, wait=REFRESH_LOCK_WAIT_S) as held:
        if not held:
            raise RefreshFailed(f"account {account_id}: another refresh of it has not finished in {REFRESH_LOCK_WAIT_S:.0f}s")
        account = app.accounts.get(account_id)  # re-read under the lock
        if account is None:
            raise RefreshFailed(f"account {account_id} no longer exists")
        if not account.refresh_token:
            raise RefreshFailed(f"account {account.name} has no refresh token: sign in again with `codexproxy accounts login`", permanent=True)
        if not still_needed(account):
            return account
        used = account.refresh_token
        try:
            tokens = oauth.refresh_tokens(app.config.oauth, used, verify=oauth.tls_verify(app.config))
        except oauth.OAuthError as exc:
            _failed(app, account, used, exc)
            raise RefreshFailed(f"{account.name}: {exc}", permanent=exc.permanent) from None
        updated = app.accounts.update(account_id, lambda acc: apply_tokens(acc, tokens))
        if updated is None:
            raise RefreshFailed(f"account {account_id} was removed during the refresh")
    backoff(app).forget(account_id)
    log.info("refreshed the tokens of account %s (%s)", updated.name, reason)
    return updated


def _failed(app: Any, account: Account, used: str, exc: oauth.OAuthError) -> None:
    def change(acc: Account) -> None:
        acc.refresh_failures += 1
        # A re-login or import may have replaced the refresh token meanwhile: then it is not dead.
        if exc.permanent and acc.refresh_token == used:
            acc.status = "reauth_required"
            acc.status_reason = f"refresh token {exc.code or 'rejected'}: sign in again (codexproxy accounts login)"
            acc.status_until = None

    app.accounts.update(account.id, change)
    if exc.permanent:
        log.warning("account %s needs a new login: %s", account.name, exc)
    else:
        delay = backoff(app).failed(account.id)
        log.warning("refreshing account %s failed (retry in %.0fs): %s", account.name, delay, exc)


def refresh_job(app: Any) -> int:
    """Scheduled: refresh the accounts whose token expires within oauth.refresh_lead_s (JWT
    `exp`) or whose last refresh is older than 8 days; transient failures back off."""
    lead = app.config.oauth.refresh_lead_s
    done = 0
    for account in app.accounts.all():
        if not needs_refresh(account, time.time(), lead) or not backoff(app).due(account.id):
            continue
        try:
            refresh(app, account.id, "scheduled", still_needed=lambda acc: needs_refresh(acc, time.time(), lead))
            done += 1
        except RefreshFailed:
            pass  # logged and recorded by _failed
    return done


def refresh_for_hook(app: Any, account_id: str, reason: str) -> Account | None:
    """`codexproxy_refresh_account`: the refreshed account, or None (never raises)."""
    try:
        return refresh(app, account_id, reason)
    except RefreshFailed as exc:
        log.warning("refresh after %s failed: %s", reason, exc)
        return None
