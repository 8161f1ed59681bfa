"""Request logs: append-only JSON-lines segments beside the TinyDB store.

TinyDB rewrites its whole file on every write, so a log kept there would make each request
cost more than the last. Here a write is one `write()` of one line to an O_APPEND file: flat
cost, safe from `kill -9` (the kernel keeps what was written), and a torn last line is skipped
on read. Retention drops whole old segments.

Also here: `compile_query`, the log query syntax shared by the CLI, the status page and the API.
`history()` is the log counted into hourly and daily buckets (loghistory.py).

With `state.backend: redis` the log is shared by every instance instead: `open_logs` returns a
RedisLogStore (logstore_redis.py), the same interface over one capped Redis stream.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .loghistory import LogHistory

SEGMENT_PREFIX = "requests-"


def encode_row(row: dict[str, Any]) -> bytes:
    """One log line: the row (its time set if missing) as JSON, newline-terminated."""
    row.setdefault("time", time.time())
    # backslashreplace: a lone surrogate a client sent (its request was refused, but is
    # logged) is written as its JSON escape, which reads back as the same string.
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "backslashreplace")


def open_logs(config: Any, directory: str | os.PathLike, state: Any) -> "LogStore":
    """The request log the config asks for: these local segments, or on a Redis state the
    stream every instance writes to (the state's own client when it has one)."""
    if getattr(getattr(config, "state", None), "backend", "tinydb") != "redis":
        return LogStore(directory)
    from .logstore_redis import RedisLogStore

    return RedisLogStore.from_state(state, config.state.redis_url, directory)


class LogReader:
    """What both log stores derive from `newest_first()`: queries and the rows since a time."""

    def newest_first(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def query(self, match: Callable[[dict[str, Any]], bool] | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        skipped = 0
        for row in self.newest_first():
            if match is not None and not match(row):
                continue
            if skipped < offset:
                skipped += 1
                continue
            out.append(row)
            if len(out) >= limit:
                break
        return out

    def since(self, start: float) -> Iterator[dict[str, Any]]:
        """Rows with time >= start, newest first (stops at the first older row)."""
        for row in self.newest_first():
            if (row.get("time") or 0) < start:
                return
            yield row


class LogStore(LogReader):
    def __init__(self, directory: str | os.PathLike, retention: int = 100_000) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.set_retention(retention)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._segments: list[tuple[int, int]] = []  # (sequence, rows), oldest first
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._history: LogHistory | None = None
        self._history_lock = threading.Lock()  # one count of the files at a time
        self._counted: dict[int, tuple[tuple[int, int], int]] = {}  # seq -> ((inode, size), rows) as last counted
        self._scan()

    def set_retention(self, rows: int) -> None:
        """Keep at least `rows` rows; whole segments of about a tenth of that are dropped."""
        self.retention = max(1, rows)
        self.segment_rows = max(100, min(10_000, self.retention // 10))

    # --- segments -------------------------------------------------------------------------
    def _path(self, seq: int) -> Path:
        return self.dir / f"{SEGMENT_PREFIX}{seq:08d}.jsonl"

    def _scan(self) -> None:
        segments = []
        for path in self.dir.glob(f"{SEGMENT_PREFIX}*.jsonl"):
            try:
                seq = int(path.stem[len(SEGMENT_PREFIX):])
                st = path.stat()
                stamp, rows = self._counted.get(seq, (None, 0))
                if stamp != (st.st_ino, st.st_size):  # count a segment's lines again only when it changed
                    with open(path, "rb") as fh:
                        rows = fh.read().count(b"\n")
                    self._counted[seq] = ((st.st_ino, st.st_size), rows)
            except (ValueError, OSError):
                continue
            segments.append((seq, rows))
        self._segments = sorted(segments)
        self._counted = {seq: self._counted[seq] for seq, _ in segments if seq in self._counted}

    def _open_current(self) -> int:
        if self._fd is not None:
            return self._fd
        if not self._segments or self._segments[-1][1] >= self.segment_rows:
            seq = self._segments[-1][0] + 1 if self._segments else 1
            self._segments.append((seq, 0))
        path = self._path(self._segments[-1][0])
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(self._fd).st_size
        if size:
            with open(path, "rb") as fh:  # a torn line from a crash: end it so ours stays whole
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    os.write(self._fd, b"\n")
        return self._fd

    def _rotate_if_full(self) -> None:
        if self._segments[-1][1] < self.segment_rows:
            return
        os.close(self._fd)  # type: ignore[arg-type]
        self._fd = None
        # Drop the oldest segments while what remains still holds `retention` rows.
        total = sum(rows for _, rows in self._segments)
        while len(self._segments) > 1 and total - self._segments[0][1] >= self.retention:
            seq, rows = self._segments.pop(0)
            total -= rows
            if self._history is not None:
                try:
                    data = self._path(seq).read_bytes()
                except OSError:
                    data = b""
                threading.Thread(target=self._history.forget, args=(data,), name="log-history-forget", daemon=True).start()
            try:
                self._path(seq).unlink()
            except FileNotFoundError:
                pass

    # --- writing --------------------------------------------------------------------------
    def append(self, row: dict[str, Any]) -> dict[str, Any]:
        line = encode_row(row)
        with self._lock:
            fd = self._open_current()
            if os.fstat(fd).st_nlink == 0:  # `logs clear` (another process) removed our segment
                os.close(fd)
                self._fd = None
                self._scan()
                if self._history is not None:
                    self._history.reset()
                fd = self._open_current()
            os.write(fd, line)
            seq, rows = self._segments[-1]
            self._segments[-1] = (seq, rows + 1)
            if self._history is not None:
                self._history.add(row)  # under the lock: the history's build knows exactly which rows it read
            self._rotate_if_full()
        for listener in self._listeners:
            listener(row)
        return row

    def on_append(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(row)` after every append (in-memory counters, metrics)."""
        self._listeners.append(listener)

    def clear(self) -> int:
        with self._lock:
            self._scan()
            count = sum(rows for _, rows in self._segments)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for seq, _ in self._segments:
                try:
                    self._path(seq).unlink()
                except FileNotFoundError:
                    pass
            self._segments = []
            if self._history is not None:
                self._history.reset()
            return count

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # --- reading --------------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            if self._fd is None:
                self._scan()
            return sum(rows for _, rows in self._segments)

    def newest_first(self) -> Iterator[dict[str, Any]]:
        """Every row, newest first; rows that do not parse (a torn line) are skipped."""
        with self._lock:
            if self._fd is None:
                self._scan()
            seqs = [seq for seq, _ in reversed(self._segments)]
        for seq in seqs:
            try:
                data = self._path(seq).read_bytes()
            except FileNotFoundError:
                continue
            for line in reversed(data.split(b"\n")):
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    yield row

    def history(self) -> LogHistory:
        """The log counted into buckets: counted from the files on first use (other readers wait
        for it), then kept up to date by every append of this process."""
        with self._history_lock:
            with self._lock:
                if self._history is None:
                    self._history = LogHistory()
                elif self._segments and not self._path(self._segments[-1][0]).exists():
                    # `logs clear` in another process, and nothing appended here since to notice it.
                    if self._fd is not None:
                        os.close(self._fd)
                        self._fd = None
                    self._scan()
                    self._history.reset()
                history = self._history
                if history.built:
                    return history
                generation = history.start_build()
                segments = [seq for seq, _ in self._segments]
                end = os.fstat(self._fd).st_size if self._fd is not None else None  # the current segment's bytes so far
            history.finish_build(generation, self._rows_newest_first(segments, end))
            return history

    def _rows_newest_first(self, seqs: list[int], end: int | None) -> Iterator[dict[str, Any]]:
        """The rows of these segments, newest first; of the newest only its first `end` bytes
        (None: all of it)."""
        for i, seq in enumerate(reversed(seqs)):
            try:
                data = self._path(seq).read_bytes()
            except FileNotFoundError:
                continue
            if i == 0 and end is not None:
                data = data[:end]
            for line in reversed(data.split(b"\n")):
                try:
                    row = json.loads(line) if line else None
                except ValueError:
                    continue
                if isinstance(row, dict):
                    yield row


def start_of_today() -> float:
    t = time.localtime()
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def key_stats(logs: Any) -> dict[str, dict[str, Any]]:
    """Per platform key: last used, requests and tokens today (from the log's history, counted
    once and then kept up to date, not a counter written per request)."""
    return logs.history().key_stats()


# --- the log query syntax (CLI, status page, admin API) ----------------------------------------
# path: method: model: key: account: status: (status:5xx ranges), field:=value exact, bare words
# search every field.
FIELD_ALIASES = {"path": ("path",), "method": ("method",), "model": ("model",), "key": ("key_name", "key_id"),
                 "account": ("account", "account_id"), "status": ("status",), "protocol": ("protocol",), "error": ("error",)}


def compile_query(query: str) -> Callable[[dict[str, Any]], bool]:
    """`status:5xx model:=gpt-5 timeout` -> a row predicate (all terms must match)."""
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for term in query.split():
        name, sep, value = term.partition(":")
        if sep and name.lower() in FIELD_ALIASES and value:
            tests.append(_field_test(FIELD_ALIASES[name.lower()], value))
        else:
            needle = term.lower()
            tests.append(lambda row, n=needle: n in json.dumps(row, ensure_ascii=False).lower())
    return lambda row: all(t(row) for t in tests)


def _field_test(fields: tuple[str, ...], value: str) -> Callable[[dict[str, Any]], bool]:
    exact = value.startswith("=")
    value = value[1:] if exact else value
    low = value.lower()
    if fields == ("status",) and len(low) == 3 and low.endswith("xx") and low[0].isdigit():
        first = int(low[0])
        return lambda row: isinstance(row.get("status"), int) and row["status"] // 100 == first

    def test(row: dict[str, Any]) -> bool:
        for field in fields:
            have = row.get(field)
            if have is None:
                continue
            have = str(have).lower()
            if (have == low) if exact or field == "status" else (low in have):
                return True
        return False

    return test
