"""The records every plugin shares through the store: accounts and platform keys.

The store schema is the one thing plugins agree on besides the hooks, so it lives in the core.
Secrets (tokens, key hashes) are fields of these models but never leave through `public()`.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

AccountStatus = Literal["active", "cooling", "exhausted_5h", "exhausted_7d", "reauth_required", "disabled"]
TIMED_STATUSES = ("cooling", "exhausted_5h", "exhausted_7d")
# The reasoning efforts the upstream takes, lowest first: what `reasoning.effort`, a model's
# "(high)" suffix and a platform key's binding may say. "none" (no reasoning) is GPT-5.1's and
# later models'; the Anthropic converter maps disabled thinking to it.
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def now() -> float:
    return time.time()


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def decode_jwt_claims(token: str | None) -> dict[str, Any]:
    """The payload of a JWT without verifying it (we only read our own tokens' claims).

    Why not PyJWT: it refuses unverified decoding of `alg: none` tokens only by flags and
    adds a dependency for ten lines of base64; the claims are informational here.
    """
    if not token or token.count(".") < 2:
        return {}
    payload = token.split(".")[1]
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class Window(BaseModel):
    """One rate-limit window: 5h ("primary") or 7d ("secondary")."""

    used_percent: float = 0.0
    window_minutes: int | None = None
    reset_at: float | None = None


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Account(Record):
    id: str = Field(default_factory=lambda: new_id("acc"))
    email: str | None = None
    label: str | None = None
    chatgpt_account_id: str | None = None
    user_id: str | None = None
    plan: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    note: str | None = None
    sort: int = 0
    enabled: bool = True
    status: AccountStatus = "active"
    status_reason: str | None = None
    status_until: float | None = None
    cooldown_level: int = 0  # consecutive cooldowns, for exponential back-off
    # Secrets: never in public().
    access_token: str | None = Field(None, repr=False)
    refresh_token: str | None = Field(None, repr=False)
    id_token: str | None = Field(None, repr=False)
    token_expires_at: float | None = None
    last_refresh: float | None = None
    refresh_failures: int = 0
    primary: Window | None = None
    secondary: Window | None = None
    credits: dict[str, Any] | None = None
    usage_updated_at: float | None = None
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)

    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("access_token", "refresh_token", "id_token")

    def effective_status(self, at: float | None = None) -> str:
        """The status now: a timed status whose time has passed is `active` again, and an
        account switched off is `disabled` whatever it was before."""
        if not self.enabled:
            return "disabled"
        if self.status in TIMED_STATUSES and self.status_until is not None and self.status_until <= (at or now()):
            return "active"
        return self.status

    def is_available(self, at: float | None = None) -> bool:
        return self.effective_status(at) == "active" and bool(self.access_token)

    @property
    def name(self) -> str:
        return self.label or self.email or self.id

    def public(self, at: float | None = None) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude=set(self.SECRET_FIELDS))
        data["status"] = self.effective_status(at)
        if data["status"] == "active":
            data["status_reason"] = None
            data["status_until"] = None
        data["has_refresh_token"] = bool(self.refresh_token)
        return data

    @classmethod
    def from_tokens(cls, id_token: str | None, access_token: str | None, refresh_token: str | None, **extra: Any) -> "Account":
        claims = decode_jwt_claims(id_token)
        auth = claims.get("https://api.openai.com/auth") or {}
        access_exp = decode_jwt_claims(access_token).get("exp")
        fields: dict[str, Any] = {
            "email": claims.get("email"),
            "chatgpt_account_id": auth.get("chatgpt_account_id") or extra.pop("account_id", None),
            "user_id": auth.get("chatgpt_user_id") or auth.get("user_id") or claims.get("sub"),
            "plan": auth.get("chatgpt_plan_type"),
            "access_token": access_token,
            "refresh_token": refresh_token,
            "id_token": id_token,
            "token_expires_at": float(access_exp) if isinstance(access_exp, (int, float)) else None,
        }
        extra.pop("account_id", None)
        fields.update({k: v for k, v in extra.items() if v is not None})
        return cls(**fields)


class PlatformKey(Record):
    id: str = Field(default_factory=lambda: new_id("key"))
    name: str
    key_hash: str = Field(repr=False)  # sha256 hex of the secret: keys are 256-bit random, so a fast hash is enough
    prefix: str  # first characters of the secret, to recognise it in lists
    enabled: bool = True
    model: str | None = None
    effort: str | None = None
    expires_at: float | None = None
    rpm: int | None = None
    daily_tokens: int | None = None
    account_id: str | None = None  # routing pin
    group: str | None = None  # routing pin to a group of accounts
    # Model aliases of this key (glob pattern -> model, tried before the adapter's own).
    aliases: dict[str, str] = Field(default_factory=dict)
    created_at: float = Field(default_factory=now)

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"key_hash"})

    def is_expired(self, at: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (at or now())


def used_now(window: Window | None, at: float) -> float:
    """A window's used percent at `at`: one whose reset time has passed is empty again,
    whatever was last recorded."""
    if window is None or (window.reset_at is not None and window.reset_at <= at):
        return 0.0
    return window.used_percent


def best_account(accounts: list[Account], at: float) -> tuple[Account | None, bool]:
    """(the account the pool would rather use at `at`, whether it is available): the available
    one with the most room left in its fuller window (then in its 5h one), else the one that
    comes back first, else the first enabled. `accounts` in the store's order (`ordered()`)."""
    enabled = [a for a in accounts if a.enabled]
    available = [a for a in enabled if a.is_available(at)]
    if available:
        return min(available, key=lambda a: (max(used_now(a.primary, at), used_now(a.secondary, at)), used_now(a.primary, at))), True
    waiting = [a for a in enabled if a.effective_status(at) in TIMED_STATUSES]
    if waiting:
        return min(waiting, key=lambda a: a.status_until or float("inf")), False
    return (enabled[0] if enabled else None), False
