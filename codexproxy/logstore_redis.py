"""The request log on Redis: every instance's rows in one capped stream (`state.backend: redis`).

Why a stream: it is Redis's append-only log, ordered by arrival, trimmed to a length in the same
command that adds (`XADD ... MAXLEN ~ retention`), read newest first in pages (`XREVRANGE`) and
read incrementally from an id (`XRANGE (last-id +`), which is what the status page's buckets
need to count every instance's rows without reading the log again per page view. Per-instance
files merged at read time would need every reader to reach every machine's disk.

The write path: `append` writes the row to this process's local spool file (one O_APPEND
`write`, the cost of the local log, safe from `kill -9`) and wakes a shipper thread, which sends
the spool's new lines in one script call (atomic, like MULTI/EXEC): the XADDs and the spool's
shipped offset (`{log}:shipped:<spool>`). A request never waits on Redis for its log row (exchange_done runs on
the event loop, for a non-streamed answer before the client has it). The spool is the buffer:
while Redis is down rows pile up there and go out when it is back; a process killed meanwhile
leaves its spool to the next process on that data dir, which takes it over (its flock is free)
and ships it from the offset Redis holds. Offset and rows commit together, so a row is shipped
exactly once, even when the answer to the script call is lost (the next try asks for the offset). A buffer in memory would lose what a killed
or restarted process held; the spool costs a local write we measured at ~10 us.

Rows appended here are visible to this process's reads at once (a read ships what is pending
first); another instance's rows as soon as its shipper ran (milliseconds, batched).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from array import array
from pathlib import Path
from typing import Any, Callable, Iterator

import redis

from .loghistory import LogHistory, failed, row_tokens
from .logstore import LogReader, encode_row
from .state_redis import PREFIX, StateUnavailable, _where

log = logging.getLogger("codexproxy.logs")

SPOOL_PREFIX = "spool-"
SHIP_BATCH = 500  # rows per script call: one round trip for a burst, a bounded command
SHIP_READ = 1 << 20  # bytes read from a spool at a time (a batch is ~300 KB)
LINGER_S = 0.003  # the shipper waits this long after a wake-up: a burst goes out as one batch
PAGE = 500  # rows per XRANGE/XREVRANGE page
MARKER_TTL_S = 7 * 86400  # a shipped offset outlives its spool file (a late takeover finds it)
ADOPT_EVERY_S = 30.0  # how often a live process looks for spools of dead ones
RETRY_MAX_S = 5.0
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class CountedRows:
    """The stream entries counted into the history, oldest first, kept so the ones the cap trims
    (or `logs clear` empties) can be taken back out. In columns of machine numbers, ~50 bytes a
    row (a dict per row would be ~1 KB: 100 MB at 100k rows); a row's id and attempts only when
    it failed or failed over (the recent failures are found by id, the failover counts need the
    attempts)."""

    def __init__(self) -> None:
        self.ms, self.seq = array("Q"), array("Q")  # the stream id
        self.time, self.tokens = array("d"), array("q")
        self.key, self.account, self.status = array("L"), array("L"), array("l")  # key/account: index in `names`
        self.error = array("b")
        self.extra: dict[int, tuple[Any, tuple]] = {}  # position -> (row id, attempts)
        self.names: list[Any] = [None]
        self._name_at: dict[Any, int] = {None: 0}
        self.start = 0  # rows before this position are out

    def __len__(self) -> int:
        return len(self.ms) - self.start

    def _name(self, value: Any) -> int:
        value = value if isinstance(value, str) else None
        at = self._name_at.get(value)
        if at is None:
            at = self._name_at[value] = len(self.names)
            self.names.append(value)
        return at

    def add(self, entry_id: str, row: dict[str, Any]) -> None:
        at = row.get("time")
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            return  # the history does not count it either
        ms, _, seq = entry_id.partition("-")
        status = row.get("status")
        attempts = row.get("attempts")
        if isinstance(attempts, list) and any(isinstance(a, dict) and a.get("reason") for a in attempts) or failed(row):
            events = tuple((a.get("reason"), a.get("account")) if isinstance(a, dict) else (None, None)
                           for a in (attempts if isinstance(attempts, list) else ()))
            self.extra[len(self.ms)] = (row.get("id"), events)
        self.ms.append(int(ms))
        self.seq.append(int(seq or 0))
        self.time.append(float(at))
        self.tokens.append(row_tokens(row))
        self.key.append(self._name(row.get("key_id")))
        self.account.append(self._name(row.get("account_id")))
        self.status.append(status if isinstance(status, int) and not isinstance(status, bool) and abs(status) < 2**31 else -1)
        self.error.append(1 if row.get("error") else 0)

    def pop_older(self, oldest: tuple[int, int] | None) -> list[dict[str, Any]]:
        """Take out the rows with a stream id below `oldest` (None: all), as the rows the
        history's counts read."""
        out = []
        i, end = self.start, len(self.ms)
        while i < end and (oldest is None or (self.ms[i], self.seq[i]) < oldest):
            row_id, events = self.extra.pop(i, (None, ()))
            row = {"time": self.time[i], "key_id": self.names[self.key[i]], "account_id": self.names[self.account[i]],
                   "input_tokens": self.tokens[i], "error": "failed" if self.error[i] else None,
                   "status": None if self.status[i] == -1 else self.status[i],
                   "attempts": [{"reason": r, "account": a} for r, a in events]}
            if row_id is not None:
                row["id"] = row_id
            out.append(row)
            i += 1
        self.start = i
        if self.start > 4096 and self.start * 2 > end:  # drop the columns' dead front now and then
            for name in ("ms", "seq", "time", "tokens", "key", "account", "status", "error"):
                setattr(self, name, getattr(self, name)[self.start:])
            self.extra = {pos - self.start: v for pos, v in self.extra.items()}
            self.start = 0
        return out


class Spool:
    """One process's local file of rows not yet (or just) shipped. Its owner holds an flock on
    it for as long as it lives: a spool whose lock can be taken belongs to a dead process."""

    def __init__(self, path: Path, fd: int, size: int, shipped: int, owned: bool) -> None:
        self.path = path
        self.fd = fd
        self.size = size  # bytes of whole lines
        self.shipped = shipped  # bytes already in the stream
        self.lines = 0
        self.owned = owned  # written by this process (False: taken over from a dead one)
        self.sealed = not owned  # no more rows go in: deleted once shipped

    @property
    def name(self) -> str:
        return self.path.stem[len(SPOOL_PREFIX):]

    @classmethod
    def create(cls, directory: Path) -> "Spool":
        name = uuid.uuid4().hex
        tmp = directory / f".{SPOOL_PREFIX}{name}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = directory / f"{SPOOL_PREFIX}{name}.jsonl"
        os.rename(tmp, path)  # locked before anyone can see it: never taken for a dead one's
        return cls(path, fd, 0, 0, owned=True)

    @classmethod
    def adopt(cls, path: Path) -> "Spool | None":
        """The spool at `path` if its owner is dead (its lock is free), else None."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            if st.st_nlink == 0:  # its owner finished it and deleted it meanwhile
                raise BlockingIOError
        except OSError:
            os.close(fd)
            return None
        data = os.pread(fd, st.st_size, 0)
        whole = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is not shipped
        return cls(path, fd, whole, 0, owned=False)

    def unshipped(self, limit: int) -> tuple[list[str], int]:
        """Up to `limit` unshipped lines and the offset after them."""
        data = os.pread(self.fd, min(self.size - self.shipped, SHIP_READ), self.shipped)
        if data.rfind(b"\n") < 0:  # one line longer than the read: take it whole
            data = os.pread(self.fd, self.size - self.shipped, self.shipped)
        lines, start = [], 0
        while len(lines) < limit:
            end = data.find(b"\n", start)
            if end < 0:
                break
            lines.append(data[start:end])
            start = end + 1
        return [line.decode("utf-8", "replace") for line in lines if line.strip()], self.shipped + start

    def drop(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)  # after the unlink: the lock covers the file until it is gone


# KEYS[1] stream, KEYS[2] the spool's shipped offset; ARGV cap, offset, offset's ttl s, rows...
# One script per batch, atomic like MULTI/EXEC: the rows and the offset after them commit
# together. One command of N+3 arguments costs the client a fraction of N XADDs' packing.
_SHIP = """
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return #ARGV - 3
"""


# KEYS[1] stream; ARGV XRANGE or XREVRANGE, start, end, count. A page as one string, "id row" a
# line (a row's JSON has no raw newline): one reply to parse instead of five per entry, which
# made the client's parser most of the cost of reading 100k rows.
_PAGE = """
local entries = redis.call(ARGV[1], KEYS[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
local out = {}
for i, entry in ipairs(entries) do out[i] = entry[1] .. ' ' .. entry[2][2] end
return table.concat(out, '\\n')
"""


class RedisLogStore(LogReader):
    """The LogStore interface (append, on_append, query, newest_first, since, count, clear,
    history, set_retention, close) over one Redis stream shared by every instance."""

    def __init__(self, client: redis.Redis, directory: str | os.PathLike, retention: int = 100_000,
                 where: str = "redis", prefix: str = PREFIX, ship: bool = True) -> None:
        self.client = client
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._where = where
        # One hash tag: the rows and the shipped offsets go through one script (one slot on a cluster).
        self.stream = f"{prefix}{{log}}:rows"
        self._marker = f"{prefix}{{log}}:shipped:"
        self.set_retention(retention)
        self._ship_script = client.register_script(_SHIP)
        self._page_script = client.register_script(_PAGE)
        self._lock = threading.Lock()  # the spools' list and sizes
        self._ship_lock = threading.Lock()  # one shipment at a time (the thread, or a read flushing)
        self._spools: list[Spool] = []  # oldest first; the last unsealed one is written to
        self._resync = False  # after a failed shipment: ask Redis what it holds before sending again
        self._adopt_lock = threading.Lock()
        self._adopted = False  # dead processes' spools looked for once (then every ADOPT_EVERY_S by the thread)
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._history = LogHistory()
        self._history_lock = threading.Lock()
        self._history_last: str | None = None  # the newest stream id counted into the history
        self._counted = CountedRows()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if ship:
            self._thread = threading.Thread(target=self._run, name="codexproxy-log-shipper", daemon=True)
            self._thread.start()

    @classmethod
    def from_state(cls, state: Any, url: str, directory: str | os.PathLike) -> "RedisLogStore":
        """On the state's client (one connection pool per process), or a client of its own for `url`."""
        client = getattr(state, "client", None)
        if client is None:
            from .state_redis import RedisState

            client = RedisState.from_url(url).client
        return cls(client, directory, where=_where(url), prefix=getattr(state, "prefix", PREFIX))

    def set_retention(self, rows: int) -> None:
        """The stream keeps about `rows` rows (MAXLEN ~: Redis trims whole nodes, so a few more)."""
        self.retention = max(1, rows)
        self.segment_rows = max(100, min(10_000, self.retention // 10))  # rows per spool file

    def _unavailable(self, exc: Exception) -> StateUnavailable:
        return StateUnavailable(self._where, exc)

    # --- writing ----------------------------------------------------------------------------
    def append(self, row: dict[str, Any]) -> dict[str, Any]:
        line = encode_row(row)
        with self._lock:
            spool = self._spools[-1] if self._spools and not self._spools[-1].sealed else None
            if spool is None:
                spool = Spool.create(self.dir)
                self._spools.append(spool)
            os.write(spool.fd, line)
            spool.size += len(line)
            spool.lines += 1
            if spool.lines >= self.segment_rows:
                spool.sealed = True  # the next row starts a new file; this one goes once shipped
                self._drop_beyond_retention()
        self._wake.set()
        for listener in self._listeners:
            listener(row)
        return row

    def _drop_beyond_retention(self) -> None:
        """Redis down for long: spools beyond what the stream's cap would keep anyway go, oldest
        first (a row that would be trimmed on arrival is not worth the disk)."""
        keep = self.retention // self.segment_rows + 2
        while len(self._spools) > keep and self._spools[0].sealed:
            old = self._spools.pop(0)
            log.warning("request log: Redis unreachable for more than %s rows; the oldest unshipped ones (%s) are dropped, "
                        "as the stream's cap would", self.retention, old.path.name)
            old.drop()

    def on_append(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(row)` after every append of this process (in-memory counters, metrics)."""
        self._listeners.append(listener)

    def ship(self) -> int:
        """Send every pending row to the stream now; the rows sent. Raises StateUnavailable."""
        sent = 0
        with self._ship_lock:
            with self._lock:
                spools = list(self._spools)
            resync = self._resync
            for spool in spools:
                if resync:
                    try:
                        held = self.client.get(self._marker + spool.name)
                    except _UNAVAILABLE as exc:
                        raise self._unavailable(exc) from None
                    spool.shipped = max(spool.shipped, int(held or 0))
                while spool.shipped < spool.size:
                    lines, offset = spool.unshipped(SHIP_BATCH)
                    try:
                        self._ship_script(keys=[self.stream, self._marker + spool.name],
                                          args=[self.retention, offset, MARKER_TTL_S, *lines])
                    except _UNAVAILABLE as exc:
                        self._resync = True  # the script may have run: the marker says
                        raise self._unavailable(exc) from None
                    spool.shipped = offset
                    sent += len(lines)
                with self._lock:
                    if spool.sealed and spool.shipped >= spool.size and spool in self._spools:
                        self._spools.remove(spool)
                        spool.drop()
            self._resync = False
        return sent

    def _adopt_orphans(self) -> None:
        with self._adopt_lock:
            self._adopt_orphans_locked()
            self._adopted = True

    def _adopt_orphans_locked(self) -> None:
        with self._lock:
            known = {s.path for s in self._spools}
        adopted = []
        for path in sorted(self.dir.glob(f"{SPOOL_PREFIX}*.jsonl")):
            if path in known:
                continue
            spool = Spool.adopt(path)
            if spool is None:
                continue
            try:
                spool.shipped = int(self.client.get(self._marker + spool.name) or 0)
            except _UNAVAILABLE as exc:
                for taken in adopted + [spool]:
                    os.close(taken.fd)  # taken over later
                raise self._unavailable(exc) from None
            log.info("request log: shipping %s bytes left by a stopped process (%s)", spool.size - spool.shipped, path.name)
            adopted.append(spool)
        with self._lock:
            self._spools[0:0] = adopted  # before this process's own rows

    def _run(self) -> None:
        delay = 0.0
        next_adopt = 0.0
        first = True  # a dead process's spool is looked for at once, not after the first wait
        while not self._stop.is_set():
            if first:
                first = False
            elif delay:
                self._stop.wait(delay)
            elif self._wake.wait(ADOPT_EVERY_S):
                self._stop.wait(LINGER_S)
            self._wake.clear()
            try:
                if time.monotonic() >= next_adopt:
                    self._adopt_orphans()
                    next_adopt = time.monotonic() + ADOPT_EVERY_S
                self.ship()
                delay = 0.0
            except (StateUnavailable, *_UNAVAILABLE) as exc:
                if not delay:
                    log.warning("request log: Redis unreachable (%s); rows wait in %s and go out when it is back",
                                type(exc).__name__, self.dir)
                delay = min(RETRY_MAX_S, max(0.2, delay * 2))
            except Exception:  # e.g. a Redis refusing writes (OOM, ACL): said once, retried
                if delay < RETRY_MAX_S:
                    log.exception("request log: shipping failed; rows wait in %s, retried every %s s", self.dir, RETRY_MAX_S)
                delay = RETRY_MAX_S

    def clear(self) -> int:
        """Empty the shared stream (every instance's rows, this process's pending ones too)."""
        self.ship()
        pipe = self.client.pipeline(transaction=True)
        pipe.xlen(self.stream)
        # XTRIM, not DEL: the stream keeps its last id, so new ids stay above every id already
        # counted, and each instance's history sees the clear as "all counted rows trimmed".
        pipe.xtrim(self.stream, maxlen=0, approximate=False)
        try:
            count, _ = pipe.execute()
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from None
        return int(count)

    def close(self) -> None:
        """Stop the shipper after a last shipment; what Redis did not take stays in the spool
        for the next process on this data dir."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            with self._lock:
                for spool in self._spools:
                    spool.sealed = True
            self.ship()
        except StateUnavailable:
            pass
        with self._lock:
            for spool in self._spools:
                os.close(spool.fd)  # unshipped: left, unlocked, for a takeover
            self._spools = []

    # --- reading -----------------------------------------------------------------------------
    def _flush_for_read(self) -> None:
        """This process's own rows are in what it reads next, and at the first read the rows a
        dead process left on this data dir (a `codexproxy logs` right after a crash shows them)."""
        if not self._adopted:
            self._adopt_orphans()
        with self._lock:
            pending = any(s.shipped < s.size for s in self._spools)
        if pending:
            self.ship()

    def _entries(self, reverse: bool, after: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(id, row) of the stream in pages, newest first (reverse) or oldest first after `after`."""
        bound = None
        while True:
            low = bound or after
            if reverse:
                args = ["XREVRANGE", f"({bound}" if bound else "+", "-", PAGE]
            else:
                args = ["XRANGE", f"({low}" if low else "-", "+", PAGE]
            try:
                page = self._page_script(keys=[self.stream], args=args)
            except _UNAVAILABLE as exc:
                raise self._unavailable(exc) from None
            count = 0
            for line in page.split("\n") if page else ():
                entry_id, _, text = line.partition(" ")
                count += 1
                bound = entry_id
                try:
                    row = json.loads(text)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    yield entry_id, row
            if count < PAGE:
                return

    def newest_first(self) -> Iterator[dict[str, Any]]:
        self._flush_for_read()
        for _, row in self._entries(reverse=True):
            yield row

    def count(self) -> int:
        self._flush_for_read()
        try:
            return int(self.client.xlen(self.stream))
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from None

    def _new_rows(self) -> Iterator[dict[str, Any]]:
        """The stream's entries after the last counted, each noted as counted as it is handed over."""
        for entry_id, row in self._entries(reverse=False, after=self._history_last):
            self._counted.add(entry_id, row)
            self._history_last = entry_id
            yield row

    def history(self) -> LogHistory:
        """The stream counted into buckets: read whole on first use, then only its entries newer
        than the last counted (every instance's) and out again the ones the cap trimmed."""
        with self._history_lock:
            self._flush_for_read()
            self._history.count(self._new_rows(), [])  # streamed: 100k rows are never all in memory at once
            try:
                first = self.client.xrange(self.stream, min="-", max="+", count=1)
            except _UNAVAILABLE as exc:
                raise self._unavailable(exc) from None
            oldest = _stream_id(first[0][0]) if first else None
            self._history.count([], self._counted.pop_older(oldest))
            return self._history
