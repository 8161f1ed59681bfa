"""The request log counted into buckets: requests, errors, tokens, failovers and cooldowns per
local hour (the last 24) and per local day (the last 7), with each account's and key's share.
What the status page charts and `usage.history` / `codexproxy usage history` return.

`LogStore.history()` counts the log files once, then the store hands it every row this process
appends, so a page view copies 31 small buckets instead of reading 100k rows. Retention takes
dropped rows back out and `logs clear` starts it over: a restart (which counts the files
afresh) never changes the numbers. On Redis the store feeds it the shared stream's new entries
instead (`count`), so the buckets hold every instance's rows. It also keeps each key's last use and today's counts
(`key_stats`), which the keys page and `keys list` show.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from typing import Any, Iterable, Iterator

HISTORY_HOURS = 24
HISTORY_DAYS = 7
RECENT_FAILURES = 5


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

    __slots__ = ("requests", "errors", "tokens", "failovers", "cooldowns", "accounts", "keys", "key_minutes", "peaks")

    def __init__(self) -> None:
        self.requests = self.errors = self.tokens = 0
        self.failovers: dict[str, int] = {}
        self.cooldowns: dict[str, int] = {}
        self.accounts: dict[str, list[int]] = {}  # account id -> [requests, tokens]
        self.keys: dict[str, list[int]] = {}  # key id -> [requests, tokens]
        self.key_minutes: dict[tuple[str, int], int] = {}  # (key id, minute) -> requests
        self.peaks: dict[str, int] | None = {}  # key id -> its busiest minute; None: recount (a row went out)

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
            key_id = row["key_id"]
            minute = (key_id, int(row.get("time") or 0) // 60)
            n = self.key_minutes[minute] = self.key_minutes.get(minute, 0) + sign
            if sign < 0:
                self.peaks = None
            elif self.peaks is not None and n > self.peaks.get(key_id, 0):
                self.peaks[key_id] = n

    def view(self, start: int, peaks: bool) -> dict[str, Any]:
        if peaks and self.peaks is None:
            self.peaks = {}
            for (key_id, _), n in self.key_minutes.items():
                self.peaks[key_id] = max(self.peaks.get(key_id, 0), n)
        peak = self.peaks or {}
        return {"start": start, "requests": self.requests, "errors": self.errors, "tokens": self.tokens,
                "failovers": {r: n for r, n in sorted(self.failovers.items()) if n},
                "cooldowns": {r: n for r, n in sorted(self.cooldowns.items()) if n},
                "accounts": {a: {"requests": r, "tokens": t} for a, (r, t) in sorted(self.accounts.items()) if r},
                "keys": {k: {"requests": r, "tokens": t, **({"peak_rpm": peak.get(k, 0)} if peaks else {})}
                         for k, (r, t) in sorted(self.keys.items()) if r}}


class Tally:
    """Everything counted from a set of rows: the buckets of the window, the newest failures,
    and per platform key its rows and last use over the whole log (the keys page's columns)."""

    def __init__(self) -> None:
        self.hours: dict[int, Bucket] = {}
        self.days: dict[int, Bucket] = {}
        self.failures: list[dict[str, Any]] = []  # the newest failed rows of the window, newest first
        self.keys: dict[str, list[float]] = {}  # key id -> [rows in the log, last use]
        self._bounds = (0, 0, 0.0)  # (oldest day kept, oldest hour kept, recompute after): a clock read per hour

    def count(self, row: dict[str, Any], sign: int) -> None:
        at = row.get("time")
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            return
        key_id = row.get("key_id")
        if key_id:
            seen = self.keys.setdefault(key_id, [0, at])
            seen[0] += sign
            seen[1] = max(seen[1], at)
            if seen[0] <= 0:  # its rows are all gone (retention): as if never used
                del self.keys[key_id]
        oldest_day, oldest_hour, until = self._bounds
        if at >= until or not until:
            now = time.time()
            self._bounds = oldest_day, oldest_hour, until = day_slots(now)[0], hour_slots(now)[0], hour_start(now) + 3600.0
        if at < oldest_day:
            return
        tm = time.localtime(at)
        self.days.setdefault(_midnight(tm.tm_year, tm.tm_mon, tm.tm_mday), Bucket()).count(row, sign, minutes=True)
        hour = int(at) - tm.tm_min * 60 - tm.tm_sec
        if hour >= oldest_hour:
            self.hours.setdefault(hour, Bucket()).count(row, sign, minutes=False)
        if failed(row):
            if sign < 0:
                self.failures = [r for r in self.failures if r is not row and r.get("id", r) != row.get("id", row)]
            elif len(self.failures) < RECENT_FAILURES or at > self.failures[-1]["time"]:
                self.failures = sorted(self.failures + [row], key=lambda r: r["time"], reverse=True)[:RECENT_FAILURES]


class LogHistory:
    """The tally of one LogStore. The store drives it: `start_build` and `add` run under the
    store's lock, so every row is either in the files the build reads or handed over by `add`,
    never both and never neither. Thread-safe: appends come from the event loop, reads from
    worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tally = Tally()
        self._state = "empty"  # -> "building" -> "built"; back to "empty" on reset
        self._generation = 0
        self._arrived: list[dict[str, Any]] = []  # rows appended while the files were read

    @property
    def built(self) -> bool:
        return self._state == "built"

    def reset(self) -> None:
        with self._lock:
            self._tally, self._arrived, self._state = Tally(), [], "empty"
            self._generation += 1

    def start_build(self) -> int:
        """Under the store's lock: rows appended from now on are handed over, not read."""
        with self._lock:
            self._state, self._arrived = "building", []
            return self._generation

    def finish_build(self, generation: int, rows: Iterator[dict[str, Any]]) -> None:
        """Count `rows` (the files as they were at `start_build`), then the rows handed over."""
        tally = Tally()
        for row in rows:
            tally.count(row, 1)
        with self._lock:
            if self._generation != generation:
                return  # cleared meanwhile: the next reader builds again
            for row in self._arrived:
                tally.count(row, 1)
            self._tally, self._arrived, self._state = tally, [], "built"

    def add(self, row: dict[str, Any]) -> None:
        """Under the store's lock, after each append."""
        with self._lock:
            if self._state == "built":
                self._tally.count(row, 1)
            elif self._state == "building":
                self._arrived.append(row)

    def count(self, added: Iterable[dict[str, Any]], removed: Iterable[dict[str, Any]]) -> None:
        """The Redis log's way (logstore_redis.py): it reads the shared stream's new entries
        itself, so it hands over rows that arrived (from any instance) and rows the stream's cap
        trimmed, and the tally is built from then on."""
        with self._lock:
            for row in added:
                self._tally.count(row, 1)
            for row in removed:
                self._tally.count(row, -1)
            self._state = "built"

    def forget(self, data: bytes) -> None:
        """Retention deleted a segment holding these bytes: take its rows back out. Runs in a
        thread of its own (a segment is thousands of rows: no stall for the event loop)."""
        with self._lock:
            if self._state != "built":
                self._tally, self._arrived, self._state = Tally(), [], "empty"
                self._generation += 1
                return
            generation = self._generation
        rows = []
        for line in data.split(b"\n"):
            try:
                row = json.loads(line) if line else None
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        with self._lock:
            if self._generation == generation:
                for row in rows:
                    self._tally.count(row, -1)

    def recent_failures(self) -> list[dict[str, Any]]:
        """The newest failed rows of the window (at most RECENT_FAILURES), newest first."""
        with self._lock:
            return list(self._tally.failures)

    def key_stats(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per platform key with rows in the log: last used, requests and tokens today."""
        today = day_start(time.time() if now is None else now)
        with self._lock:
            bucket = self._tally.days.get(today) or Bucket()
            return {key_id: {"last_used": last, "requests_today": bucket.keys.get(key_id, [0, 0])[0],
                             "tokens_today": bucket.keys.get(key_id, [0, 0])[1]} for key_id, (_, last) in self._tally.keys.items()}

    def series(self, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """{"hours": 24 buckets, "days": 7 buckets}, oldest first, quiet ones included as zeros."""
        now = time.time() if now is None else now
        hours, days = hour_slots(now), day_slots(now)
        with self._lock:
            tally = self._tally
            for table, first in ((tally.hours, hours[0]), (tally.days, days[0])):
                for start in [s for s in table if s < first]:
                    del table[start]
            return {"hours": [(tally.hours.get(s) or Bucket()).view(s, peaks=False) for s in hours],
                    "days": [(tally.days.get(s) or Bucket()).view(s, peaks=True) for s in days]}
