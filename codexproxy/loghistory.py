"""The request log counted into buckets: requests, errors, tokens, failovers and cooldowns per
local hour (the last 24) and per local day (the last 7), with each account's and key's share.
What the status page charts and `usage.history` / `codexproxy usage history` return.

`LogStore.history()` builds it once from the log files (the last week only, newest first) and
then feeds it every row this process appends, so a page view copies 31 small buckets instead of
reading 100k rows. Retention takes dropped rows back out and `logs clear` starts it over: a
restart (which counts the files afresh) never changes the numbers.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .logstore import LogStore

HISTORY_HOURS = 24
HISTORY_DAYS = 7
SLACK_S = 3600  # rows are appended when a request ends but stamped when it began: read a bit further back


@functools.lru_cache(maxsize=64)
def _midnight(year: int, month: int, day: int) -> int:
    return int(time.mktime((year, month, day, 0, 0, 0, 0, 0, -1)))


def hour_start(t: float) -> int:
    """The start of the local hour holding epoch second `t` (half-hour time zones included)."""
    tm = time.localtime(t)
    return int(t) - tm.tm_min * 60 - tm.tm_sec


def day_start(t: float) -> int:
    """Local midnight of the day holding `t` (the day `start_of_today` and key limits count)."""
    tm = time.localtime(t)
    return _midnight(tm.tm_year, tm.tm_mon, tm.tm_mday)


def hour_slots(now: float) -> list[int]:
    last = hour_start(now)
    return [last - 3600 * i for i in range(HISTORY_HOURS - 1, -1, -1)]


def day_slots(now: float) -> list[int]:
    noon = day_start(now) + 12 * 3600  # stepping from noon lands in the right day across DST changes
    return [day_start(noon - 86400 * i) for i in range(HISTORY_DAYS - 1, -1, -1)]


def failed(row: dict[str, Any]) -> bool:
    status = row.get("status")
    return (isinstance(status, int) and status >= 400) or bool(row.get("error"))


def row_tokens(row: dict[str, Any]) -> int:
    return sum(v for v in (row.get("input_tokens"), row.get("output_tokens")) if isinstance(v, int))


def attempt_events(attempts: Any) -> Iterator[tuple[str, str]]:
    """("failover" | "cooldown", reason) for each failed attempt of a log row: a failover when
    another attempt followed it, a cooldown when its account was set aside (no next attempt, or
    the next went to another account). The rule of the /metrics counters of the same names."""
    if not isinstance(attempts, list):
        return
    for i, attempt in enumerate(attempts):
        reason = attempt.get("reason") if isinstance(attempt, dict) else None
        if not reason or reason == "client_error":  # the request's fault: nobody failed over
            continue
        following = attempts[i + 1] if i + 1 < len(attempts) and isinstance(attempts[i + 1], dict) else None
        if following is not None:
            yield "failover", reason
        if attempt.get("account") and (following is None or following.get("account") != attempt.get("account")):
            yield "cooldown", reason


class Bucket:
    """The counts of one hour or one day. `sign` -1 takes a row back out (retention)."""

    __slots__ = ("requests", "errors", "tokens", "failovers", "cooldowns", "accounts", "keys", "key_minutes")

    def __init__(self) -> None:
        self.requests = self.errors = self.tokens = 0
        self.failovers: dict[str, int] = {}
        self.cooldowns: dict[str, int] = {}
        self.accounts: dict[str, list[int]] = {}  # account id -> [requests, tokens]
        self.keys: dict[str, list[int]] = {}  # key id -> [requests, tokens]
        self.key_minutes: dict[tuple[str, int], int] = {}  # (key id, minute) -> requests: the day's peak rpm

    def count(self, row: dict[str, Any], sign: int, minutes: bool) -> None:
        tokens = row_tokens(row) * sign
        self.requests += sign
        self.errors += sign if failed(row) else 0
        self.tokens += tokens
        for kind, reason in attempt_events(row.get("attempts")):
            table = self.failovers if kind == "failover" else self.cooldowns
            table[reason] = table.get(reason, 0) + sign
        for table, who in ((self.accounts, row.get("account_id")), (self.keys, row.get("key_id"))):
            if who:
                entry = table.setdefault(who, [0, 0])
                entry[0] += sign
                entry[1] += tokens
        if minutes and row.get("key_id"):
            minute = (row["key_id"], int(row.get("time") or 0) // 60)
            self.key_minutes[minute] = self.key_minutes.get(minute, 0) + sign

    def view(self, start: int, peaks: bool) -> dict[str, Any]:
        peak: dict[str, int] = {}
        for (key_id, _), n in self.key_minutes.items():
            peak[key_id] = max(peak.get(key_id, 0), n)
        return {"start": start, "requests": self.requests, "errors": self.errors, "tokens": self.tokens,
                "failovers": {r: n for r, n in sorted(self.failovers.items()) if n},
                "cooldowns": {r: n for r, n in sorted(self.cooldowns.items()) if n},
                "accounts": {a: {"requests": r, "tokens": t} for a, (r, t) in sorted(self.accounts.items()) if r},
                "keys": {k: {"requests": r, "tokens": t, **({"peak_rpm": peak.get(k, 0)} if peaks else {})}
                         for k, (r, t) in sorted(self.keys.items()) if r}}


def _identity(row: dict[str, Any]) -> str:
    return str(row.get("id") or json.dumps(row, sort_keys=True, default=str))


class LogHistory:
    """The buckets of one LogStore; thread-safe (appends come from the event loop, reads from
    worker threads)."""

    def __init__(self, logs: "LogStore") -> None:
        self.logs = logs
        self._lock = threading.Lock()  # the buckets: appends (event loop) and readers (workers)
        self._build_lock = threading.Lock()  # one build at a time; readers wait for it
        self._hours: dict[int, Bucket] = {}
        self._days: dict[int, Bucket] = {}
        self._state = "empty"  # -> "building" -> "built"; back to "empty" on reset
        self._generation = 0
        self._arrived: list[dict[str, Any]] = []  # rows appended while the files were read

    def reset(self) -> None:
        with self._lock:
            self._hours, self._days, self._arrived = {}, {}, []
            self._state = "empty"
            self._generation += 1

    def build(self) -> None:
        with self._build_lock:
            with self._lock:
                if self._state == "built":
                    return
                self._state, self._arrived, generation = "building", [], self._generation
            cutoff = day_slots(time.time())[0]
            scanned = [row for row in self.logs.since(cutoff - SLACK_S) if (row.get("time") or 0) >= cutoff]
            with self._lock:
                if self._generation != generation:
                    return  # cleared meanwhile: the next reader builds again
                late = self._arrived
                if late:  # an append may have landed in the files before the scan reached them
                    seen = {_identity(row) for row in scanned}
                    late = [row for row in late if _identity(row) not in seen]
                for row in scanned + late:
                    self._count(row, 1)
                self._state, self._arrived = "built", []

    def add(self, row: dict[str, Any]) -> None:
        """The LogStore listener: count a row just appended."""
        with self._lock:
            if self._state == "built":
                self._count(row, 1)
            elif self._state == "building":
                self._arrived.append(row)

    def forget_file(self, path: Path) -> None:
        """Retention is about to delete this segment: take its rows of the last week back out."""
        with self._lock:
            if self._state != "built":
                self._hours, self._days, self._state = {}, {}, "empty"
                self._generation += 1
                return
            try:
                lines = path.read_bytes().split(b"\n")
            except OSError:
                return
            cutoff = day_slots(time.time())[0] - SLACK_S
            for line in reversed(lines):  # newest first: stop at the first row older than a week
                try:
                    row = json.loads(line) if line else None
                except ValueError:
                    continue
                if isinstance(row, dict):
                    if (row.get("time") or 0) < cutoff:
                        break
                    self._count(row, -1)

    def _count(self, row: dict[str, Any], sign: int) -> None:
        at = row.get("time")
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            return
        tm = time.localtime(at)
        day = _midnight(tm.tm_year, tm.tm_mon, tm.tm_mday)
        hour = int(at) - tm.tm_min * 60 - tm.tm_sec
        now = time.time()
        if day >= day_start(now) - (HISTORY_DAYS + 1) * 86400:
            self._days.setdefault(day, Bucket()).count(row, sign, minutes=True)
        if hour > now - (HISTORY_HOURS + 1) * 3600:
            self._hours.setdefault(hour, Bucket()).count(row, sign, minutes=False)

    def series(self, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """{"hours": 24 buckets, "days": 7 buckets}, oldest first, quiet ones included as zeros."""
        now = time.time() if now is None else now
        hours, days = hour_slots(now), day_slots(now)
        with self._lock:
            for table, first in ((self._hours, hours[0]), (self._days, days[0])):
                for start in [s for s in table if s < first]:
                    del table[start]
            return {"hours": [(self._hours.get(s) or Bucket()).view(s, peaks=False) for s in hours],
                    "days": [(self._days.get(s) or Bucket()).view(s, peaks=True) for s in days]}
