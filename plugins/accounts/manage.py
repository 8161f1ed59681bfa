"""Pool management shared by the CLI and the admin RPC: find, update, remove, export, refresh.

Errors are ValueError worded for the user (the CLI turns them into one line and exit 2; the
RPC into an error answer). Nothing here returns a token: only Account.public().
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from codexproxy.models import Account

from . import oauth, tokens, usage
from .logins import LoginError

UPDATABLE = ("group", "tags", "note", "sort", "enabled", "label")


def find(app: Any, ref: Any) -> Account:
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError("an account id, email or unique id prefix is required")
    account = app.accounts.find(ref.strip())
    if account is None:
        raise ValueError(f"no single account matches {ref!r} (see codexproxy accounts list)")
    return account


def update(app: Any, ref: Any, fields: dict[str, Any]) -> Account:
    """Set group/tags/note/sort/enabled/label; "" clears a text field."""
    account = find(app, ref)
    unknown = sorted(set(fields) - set(UPDATABLE))
    if unknown:
        raise ValueError(f"cannot update {', '.join(unknown)} (updatable: {', '.join(UPDATABLE)})")
    clean: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in ("group", "note", "label"):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            clean[name] = value.strip() or None
        elif name == "tags":
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise ValueError("tags must be a list of strings")
            clean[name] = sorted({t.strip() for t in value if t.strip()})
        elif name == "sort":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"sort must be an integer (got {value!r})")
            clean[name] = value
        elif name == "enabled":
            if not isinstance(value, bool):
                raise ValueError(f"enabled must be true or false (got {value!r})")
            clean[name] = value
    if clean.get("enabled") and account.status == "disabled":
        clean["status"] = "active"  # switching on an account switched off by status, not only by flag
    updated = app.accounts.update(account.id, **clean)
    if updated is None:
        raise ValueError(f"account {account.id} was removed meanwhile")
    return updated


def remove(app: Any, ref: Any) -> Account:
    account = find(app, ref)
    app.accounts.remove(account.id)
    usage.forget(app, account.id)
    return account


def auth_json(account: Account) -> dict[str, Any]:
    """Codex CLI's ~/.codex/auth.json for this account."""
    when = datetime.fromtimestamp(account.last_refresh or time.time(), timezone.utc)
    return {"auth_mode": "chatgpt", "OPENAI_API_KEY": None,
            "tokens": {"id_token": account.id_token, "access_token": account.access_token,
                       "refresh_token": account.refresh_token, "account_id": account.chatgpt_account_id},
            "last_refresh": when.isoformat().replace("+00:00", "Z")}


def export(accounts: list[Account], out_dir: str) -> list[dict[str, Any]]:
    """Write OUT/<email-or-id>/auth.json (0600, folders 0700): CODEX_HOME=that folder works as is."""
    out = Path(out_dir).expanduser()
    missing = [a.name for a in accounts if not a.access_token]
    if missing:
        raise ValueError(f"no tokens to export for {', '.join(missing)} (sign in again first)")
    names = [re.sub(r"[^A-Za-z0-9@._-]+", "_", a.email or a.id) for a in accounts]
    written = []
    for account, name in zip(accounts, names):
        if names.count(name) > 1:
            name = f"{name}-{account.id}"
        folder = out / name
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / "auth.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                os.fchmod(fh.fileno(), 0o600)  # also when the file existed with looser permissions
                json.dump(auth_json(account), fh, indent=2)
        except OSError as exc:
            raise ValueError(f"{folder}: cannot write: {exc.strerror or exc}") from None
        written.append({"id": account.id, "email": account.email, "file": str(path)})
    return written


def refresh(app: Any, ref: Any = None) -> list[dict[str, Any]]:
    """Force a refresh of one account, or of every enabled one that has a refresh token."""
    if ref:
        targets = [find(app, ref)]
    else:
        targets = [a for a in app.accounts.ordered() if a.enabled and a.refresh_token]
    results = []
    for account in targets:
        try:
            updated = tokens.refresh(app, account.id, "asked for")
            results.append({"id": account.id, "ok": True, "account": updated.public()})
        except tokens.RefreshFailed as exc:
            results.append({"id": account.id, "ok": False, "error": str(exc), "permanent": exc.permanent})
    return results


def listen_addr(app: Any) -> tuple[str, int]:
    """oauth.login_addr, refused when not loopback unless oauth.allow_non_loopback_login."""
    cfg = app.config.oauth
    try:
        host, port = oauth.split_addr(cfg.login_addr)
    except ValueError as exc:
        raise LoginError(str(exc)) from None
    if not oauth.is_loopback(host) and not cfg.allow_non_loopback_login:
        raise LoginError(f"oauth.login_addr {cfg.login_addr} is not a loopback address: the callback carries a one-time "
                         "code, so it is only received on loopback unless oauth.allow_non_loopback_login is true")
    return host, port
