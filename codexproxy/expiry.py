"""One reading of a key's expiry for every surface (CLI, admin API, status page forms), so a
value one of them refuses is refused by all: a duration (30d, 12h, 90m, 2w), a date or time
(2026-12-31, 2026-12-31T18:00, in local time unless it names its zone), epoch seconds, or
none/never for no expiry. A moment that has already passed is an error, not a dead key."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime

DURATION = re.compile(r"(\d{1,9})\s*([smhdw])")
SCALE = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
NEVER = ("", "none", "never")
HINT = "a duration like 30d or 12h, or a date like 2026-12-31"


def parse_expiry(value: object, now: float | None = None) -> float | None:
    """Epoch seconds of the expiry, None for none/never; ValueError says what is wrong."""
    if value is None or (isinstance(value, str) and value.strip().lower() in NEVER):
        return None
    now = time.time() if now is None else now
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        at = float(value)
        if not math.isfinite(at):
            raise ValueError(f"expected {HINT} (got {value!r})")
    elif isinstance(value, str):
        text = value.strip()
        m = DURATION.fullmatch(text.lower())
        if m:
            at = now + int(m.group(1)) * SCALE[m.group(2)]
        else:
            try:
                at = datetime.fromisoformat(text).timestamp()
            except (ValueError, OverflowError, OSError):
                raise ValueError(f"expected {HINT} (got {text[:40]!r})") from None
    else:
        raise ValueError(f"expected {HINT}, or epoch seconds")
    if at <= now:
        raise ValueError(f"must be in the future (got {str(value)[:40]!r})")
    return at
