"""A small asyncio HTTP/1.1 client for the benchmarks and the load tests (standard library only).

httpx costs more CPU per request than the proxy under test does, and the client shares the two
cores with the fake upstream and the proxy: this one reads raw bytes, keeps connections alive,
understands Content-Length and chunked bodies, and notes when each SSE event arrived.

    conn = await Conn.open("127.0.0.1", port)
    resp = await conn.request("POST", "/v1/responses", headers, body)   # -> Response
    resp.status, resp.body, resp.first_byte, resp.done, resp.events     # events: [(arrival, raw)]
    await conn.close()

`stamps(resp)` reads the send times the bench upstream writes into text deltas (see
bench/upstream.py), so per-event forwarding delay is arrival - stamp on one clock
(CLOCK_MONOTONIC is shared by every process of the machine).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

STAMP_RE = re.compile(rb"@T(\d{10}\.\d{6})@")  # what bench/upstream.py writes into a delta at send time


class HTTPError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    sent: float = 0.0  # monotonic time the request was written
    first_byte: float = 0.0  # the status line arrived
    done: float = 0.0  # the last body byte arrived
    events: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, raw event) when track_events


def _head(data: bytes) -> tuple[int, dict[str, str]]:
    lines = data.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HTTPError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class Conn:
    """One keep-alive connection; requests on it run one after the other."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        self.reader, self.writer, self.host, self.port = reader, writer, host, port
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 10.0) -> "Conn":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 22), timeout)
        return cls(reader, writer, host, port)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (OSError, ConnectionError):
                pass

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
                      track_events: bool = False, timeout: float = 60.0) -> Response:
        return await asyncio.wait_for(self._request(method, path, headers or {}, body, track_events), timeout)

    async def _request(self, method: str, path: str, headers: dict[str, str], body: bytes, track_events: bool) -> Response:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        sent = time.monotonic()
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        reader = self.reader
        raw = await reader.readuntil(b"\r\n\r\n")
        resp = Response(*_head(raw[:-4]), sent=sent, first_byte=time.monotonic())
        if resp.headers.get("connection", "").lower() == "close":
            self.closed = True
        if method == "HEAD" or resp.status in (204, 304):
            resp.done = resp.first_byte
            return resp
        if "chunked" in resp.headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            pending = b""
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # the empty trailer section
                    break
                chunk = await reader.readexactly(size + 2)
                chunk = chunk[:-2]
                parts.append(chunk)
                if track_events:
                    now = time.monotonic()
                    pending += chunk
                    while True:
                        cut = pending.find(b"\n\n")
                        if cut < 0:
                            break
                        resp.events.append((now, pending[:cut]))
                        pending = pending[cut + 2:]
            resp.body = b"".join(parts)
        elif "content-length" in resp.headers:
            resp.body = await reader.readexactly(int(resp.headers["content-length"]))
        else:
            resp.body = await reader.read()  # until the server closes
            self.closed = True
        resp.done = time.monotonic()
        if track_events and not resp.events and resp.body:
            resp.events = [(resp.done, e) for e in resp.body.split(b"\n\n") if e.strip()]
        return resp


def stamps(resp: Response) -> list[float]:
    """arrival - send time (seconds) of every stamped event of a tracked response (one value per
    event: a `.done` event repeats the whole text, every stamp in it the same send time)."""
    out = []
    for arrival, raw in resp.events:
        m = STAMP_RE.search(raw)
        if m:
            out.append(arrival - float(m.group(1)))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


async def closed_loop(host: str, port: int, make_request, clients: int, duration: float,
                      check=None) -> tuple[int, int, list[float], list[str]]:
    """`clients` keep-alive connections, each sending requests back to back for `duration` s.

    make_request() -> (method, path, headers, body). Returns (completed, errors, latencies, error samples);
    a request counts as completed when `check(resp)` (default: status 200) holds."""
    deadline = time.monotonic() + duration
    done = 0
    errors = 0
    latencies: list[float] = []
    samples: list[str] = []

    async def one() -> None:
        nonlocal done, errors
        conn: Conn | None = None
        while time.monotonic() < deadline:
            try:
                if conn is None or conn.closed:
                    conn = await Conn.open(host, port)
                method, path, headers, body = make_request()
                resp = await conn.request(method, path, headers, body, timeout=max(1.0, deadline - time.monotonic() + 30))
                if (check or (lambda r: r.status == 200))(resp):
                    done += 1
                    latencies.append(resp.done - resp.sent)
                else:
                    errors += 1
                    if len(samples) < 5:
                        samples.append(f"{resp.status} {resp.body[:200]!r}")
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError, HTTPError, ValueError) as exc:
                errors += 1
                if len(samples) < 5:
                    samples.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    await conn.close()
                conn = None
        if conn is not None:
            await conn.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return done, errors, latencies, samples
