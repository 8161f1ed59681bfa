"""What the `workers` and `redis` sections of bench/run.py measure (issue 15), apart from the
sections themselves: where the CPU goes between the processes sharing the machine's cores, the
per-event lag of many streams open at once, and the Redis commands a request makes.

    shares = CpuShares({"client": [os.getpid()], "fake upstream": [pid], ...})
    shares.start(); ...; shares.stop()  ->  shares.cores: {"client": 0.61, ...}  (cores used)
    lag = await many_streams(port, make, 1000, count)          # StreamsLag
    counts = await redis_commands(client, send, requests=50)  # CommandCounts
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import STAMP_RE, Conn, median, percentile

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, its ended threads included (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


class CpuShares:
    """Cores used by each group of processes between start() and stop(): how the client, the
    fake upstream, the proxy's processes and Redis shared the machine during a run, and what the
    machine's other work (the neighbours: other engineers' tests) took meanwhile."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.cores: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: sum(process_cpu(pid) for pid in pids) for name, pids in self.groups.items()}
        now["machine"] = machine_busy()
        return now

    def start(self) -> None:
        self._began, self._before = time.monotonic(), self._now()

    def stop(self) -> None:
        elapsed, after = time.monotonic() - self._began, self._now()
        self.cores = {name: (after[name] - self._before[name]) / elapsed for name in self.groups}
        self.machine = (after["machine"] - self._before["machine"]) / elapsed

    def line(self) -> str:
        ours = sum(self.cores.values())
        return (", ".join(f"{name} {cores:.2f}" for name, cores in self.cores.items())
                + f" (ours {ours:.2f}; other work on the machine {max(0.0, self.machine - ours):.2f}; "
                f"idle {max(0.0, (os.cpu_count() or 1) - self.machine):.2f})")


@dataclass
class StreamsLag:
    """Per-event lag (arrival - send) of the events sent while every stream was open at once."""

    opened: int  # streams that answered 200 with every stamped event
    failed: list[str]  # what the others got, a few
    lags: list[float]  # seconds, the events in the window
    open_s: float  # from the first connect to the last stream's first event
    window_s: float  # how long all were open at once (0: never)

    def p(self, q: float) -> float:
        return percentile(self.lags, q) * 1000


async def many_streams(port: int, make, streams: int, count: int, connect_at_once: int = 50) -> StreamsLag:
    """`streams` connections, each one streamed request (a stamped drip of `count` deltas) held
    open at once. Only the events sent between the moment the last stream got its first event and
    the moment the first stream ended count: the lag of `streams` concurrent streams, not of the
    opening storm."""
    gate = asyncio.Semaphore(connect_at_once)  # connects in waves: the storm is not the measure

    async def one():
        async with gate:
            conn = await Conn.open("127.0.0.1", port, timeout=60)
        try:
            return await conn.request(*make(), track_events=True, timeout=300)
        finally:
            await conn.close()

    began = time.monotonic()
    answers = await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)
    good, failed = [], []
    for a in answers:
        if isinstance(a, BaseException):
            failed.append(f"{type(a).__name__}: {a}")
            continue
        pairs = [(arrival, float(m.group(1))) for arrival, raw in a.events if (m := STAMP_RE.search(raw))]
        if a.status != 200 or len(pairs) < count:
            failed.append(f"{a.status}, {len(pairs)} stamped events: {a.body[:120]!r}")
            continue
        good.append((a, pairs))
    if not good:
        return StreamsLag(0, failed[:3], [], 0.0, 0.0)
    all_open = max(pairs[0][0] for _, pairs in good)
    first_end = min(a.done for a, _ in good)
    lags = [arrival - sent for _, pairs in good for arrival, sent in pairs if all_open <= sent <= first_end]
    return StreamsLag(len(good), failed[:3], lags, all_open - began, max(0.0, first_end - all_open))


async def paired_latency(targets: dict[str, tuple], requests: int, check, pids: dict[str, list[int]]
                         ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Sequential requests on one kept-alive connection per target, the targets taking turns
    request by request (the first of each turn rotating), so that a neighbour's burst falls on
    all of them alike: a difference of ~0.3 ms between two ~3 ms latencies survives a noisy
    machine only this way. targets: name -> (port, make). Returns each target's latencies
    (seconds) and the CPU milliseconds per request of the processes in `pids[name]`."""
    conns = {name: await Conn.open("127.0.0.1", port) for name, (port, _) in targets.items()}
    names = list(targets)

    async def one(name: str) -> float:
        resp = await conns[name].request(*targets[name][1]())
        if not check(resp):
            raise RuntimeError(f"{name}: {resp.status} {resp.body[:200]!r}")
        return resp.done - resp.sent

    for _ in range(20):  # warm-up: connections, caches, the upstream keep-alive
        for name in names:
            await one(name)
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, float] = {name: 0.0 for name in names}
    for i in range(requests):
        for name in names[i % len(names):] + names[:i % len(names)]:
            before = sum(process_cpu(pid) for pid in pids.get(name, []))
            samples[name].append(await one(name))
            cpu[name] += sum(process_cpu(pid) for pid in pids.get(name, [])) - before
    for conn in conns.values():
        await conn.close()
    return samples, {name: 1000 * cpu[name] / requests for name in names}


# --- the Redis commands of one request -----------------------------------------------------------

ID_LIKE = re.compile(r"^(?=.*\d)[0-9A-Za-z_.@-]{8,}$")


def key_shape(key: str) -> str:
    """A key with its ids replaced by *: cxp:acct:1a2b3c4d... -> cxp:acct:*"""
    if "[" in key:  # a JSON-labelled key (metrics: codexproxy:v:metrics:latency:["responses", ...]) holds spaces
        key = key[:key.index("[")] + "[...]"
    return ":".join("*" if ID_LIKE.match(part) else part for part in key.split(":"))


def script_names() -> dict[str, str]:
    """SHA1 -> name of the Lua scripts codexproxy's Redis state registers (what EVALSHA names)."""
    from codexproxy import state_redis

    return {hashlib.sha1(text.encode()).hexdigest(): name.strip("_").lower()
            for name, text in vars(state_redis).items() if name.startswith("_") and name.isupper() and isinstance(text, str)}


@dataclass
class CommandCounts:
    requests: int
    sent: dict[str, int] = field(default_factory=dict)  # "GET cxp:key:*" -> count, commands the proxy sent
    in_scripts: dict[str, int] = field(default_factory=dict)  # commands run inside its Lua scripts
    one_request: list[str] = field(default_factory=list)  # the commands of one request, in order, timed from its send
    before_last_byte: dict[str, float] = field(default_factory=dict)  # kind -> share sent before the response's last byte
    stats_total: float = 0.0  # INFO commandstats: calls per request, the idle rate taken out
    idle_per_s: float = 0.0  # commands per second with no request (background jobs, health checks)
    trips: float = 0.0  # round trips per request on the proxy's other connections (see TRIP_GAP_S)
    background_trips: float = 0.0  # round trips per request of `state.later`'s connection (its batches)
    log_trips: float = 0.0  # round trips per request of the request log's shipper and the /metrics flusher (threads of their own)

    def per_request(self, counts: dict[str, int]) -> list[tuple[str, float]]:
        return sorted(((kind, n / self.requests) for kind, n in counts.items()), key=lambda x: (-x[1], x[0]))


def _eval_words(words: list[str]) -> tuple[str, list[str]]:
    """EVAL's script named (codexproxy's, by its text: MONITOR shows it whole, its newlines as
    backslash-n) and the words after it: numkeys, keys, args."""
    from codexproxy import state_redis

    text = " ".join(words[1:]).replace("\\n", " ").split()
    best: tuple[str, list[str]] = ("", [])
    for name, script in vars(state_redis).items():
        if name.startswith("_") and name.isupper() and isinstance(script, str):
            body = script.split()
            if body and text[:len(body)] == body and len(body) > len(best[1]):  # the longest: scripts share a prefix (_NOW)
                best = (name.strip("_").lower(), body)
    return (best[0], text[len(best[1]):]) if best[1] else ("(inline)", [])


def _kind(words: list[str], scripts: dict[str, str]) -> str:
    name = words[0].upper()
    if name == "EVAL":
        label, rest = _eval_words(words)
        keys = int(rest[0]) if rest and rest[0].isdigit() else 0
        return f"EVAL {label} " + " ".join(key_shape(k) for k in rest[1:1 + keys])
    if name == "EVALSHA" and len(words) > 3:
        label = scripts.get(words[1], words[1][:8])
        keys = int(words[2]) if words[2].isdigit() else 0
        return f"{name} {label} " + " ".join(key_shape(k) for k in words[3:3 + keys])
    if name in ("MULTI", "EXEC", "DISCARD", "UNWATCH", "PING", "SCRIPT", "CLIENT", "HELLO", "SELECT"):
        return name
    return f"{name} {key_shape(words[1])}" if len(words) > 1 else name


# Commands one connection sends in one pipeline reach Redis in one read and run back to back
# (a few microseconds apart, ~20 us with MONITOR on a loaded machine); a client waiting for each
# answer leaves a loopback round trip and redis-py's work between two (~100 us and more; the
# Python between two state calls of a request adds far more). A gap above this starts a new trip.
TRIP_GAP_S = 100e-6
BACKGROUND = " (background)"  # the label suffix of `state.later`'s commands (its own named connection)


def _trips(lines: list[tuple[float, str, str, str]]) -> list[list[str]]:
    """Round trips in (time, client type, command, client address) lines, each as its commands:
    per connection, a run of commands each within TRIP_GAP_S of the one before is one trip."""
    last: dict[str, float] = {}
    open_trip: dict[str, list[str]] = {}
    trips: list[list[str]] = []
    for at, _, command, addr in sorted(lines):
        if at - last.get(addr, float("-inf")) > TRIP_GAP_S:
            open_trip[addr] = []
            trips.append(open_trip[addr])
        open_trip[addr].append(command)
        last[addr] = at
    return trips


def _commandstats(client) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


async def redis_commands(client, send_one, requests: int, idle_s: float = 3.0) -> CommandCounts:
    """The commands `requests` sequential requests (`await send_one()`) make Redis run: by kind and
    key shape from MONITOR, and in total from INFO commandstats with the idle rate (what runs with
    no request, over `idle_s`) taken out."""
    import redis

    scripts = script_names()
    counts = CommandCounts(requests)
    s0 = _commandstats(client)
    await asyncio.sleep(idle_s)
    s1 = _commandstats(client)
    marker = f"bench-monitor-end-{os.getpid()}"
    lines: list[tuple[float, str, str, str]] = []  # (Redis's time, client type, command, client address)
    started = threading.Event()

    def watch() -> None:
        with redis.Redis(connection_pool=client.connection_pool).monitor() as m:
            started.set()
            for entry in m.listen():
                if marker in entry["command"]:
                    return
                lines.append((float(entry["time"]), entry.get("client_type", ""), entry["command"],
                              f"{entry.get('client_address')}:{entry.get('client_port')}"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started.wait(10)
    await asyncio.sleep(0.2)
    began = time.monotonic()
    bounds: list[tuple[float, float]] = []  # wall clock (Redis's clock too: one machine) of each request's send, last byte
    for _ in range(requests):
        sent = time.time()
        await send_one()
        bounds.append((sent, time.time()))
    await asyncio.sleep(0.3)  # what a request does after its last byte (the log row, a lease's release)
    elapsed = time.monotonic() - began
    from codexproxy import state_redis

    later_name = getattr(getattr(state_redis, "_RedisLater", None), "CLIENT_NAME", None)  # None: a codexproxy before `later`
    background = {c["addr"] for c in client.client_list() if later_name and c.get("name") == later_name}
    client.echo(marker)
    await asyncio.to_thread(watcher.join, 10)
    ours = [line for line in lines if line[1] != "lua" and line[2].split()[:1] and line[2].split()[0].upper() not in ("MONITOR", "INFO", "CLIENT")]
    # The request log's shipper (codexproxy/logstore_redis.py) and the /metrics flusher
    # (plugins/admin/metrics.py, about once a second) run on threads of their own and share the
    # state's connections: their trips are told apart by their keys.
    shared_trips = _trips([line for line in ours if line[3] not in background])
    log_trips = [t for t in shared_trips if any("{log}" in c or ":v:metrics:" in c for c in t)]
    counts.trips = (len(shared_trips) - len(log_trips)) / requests
    counts.log_trips = len(log_trips) / requests
    counts.background_trips = len(_trips([line for line in ours if line[3] in background])) / requests

    def kind_of(words: list[str], addr: str) -> str:
        return _kind(words, scripts) + (BACKGROUND if addr in background else "")

    s2 = _commandstats(client)
    ours = {"info", "echo", "monitor"}
    idle = sum(n - s0.get(k, 0) for k, n in s1.items() if k not in ours)
    busy = sum(n - s1.get(k, 0) for k, n in s2.items() if k not in ours)
    counts.idle_per_s = idle / idle_s
    counts.stats_total = (busy - counts.idle_per_s * elapsed) / requests
    middle = requests // 2  # a request in the middle: caches warm, its neighbours' commands outside its bounds
    start, done = bounds[middle]
    end = bounds[middle + 1][0] if middle + 1 < requests else done + 0.3
    for at, kind, command, addr in lines:
        words = command.split()
        if start <= at < end and words and kind != "lua":
            where = "before its last byte" if at <= done else "after its last byte"
            counts.one_request.append(f"+{(at - start) * 1000:6.2f} ms ({where}): {kind_of(words, addr)}")
    starts = [b[0] for b in bounds]
    seen: dict[str, list[int]] = {}  # kind -> [before the last byte, all]
    for at, kind, command, addr in lines:
        words = command.split()
        i = bisect.bisect_right(starts, at) - 1
        if i < 0 or kind == "lua" or not words:
            continue
        tally = seen.setdefault(kind_of(words, addr), [0, 0])
        tally[0] += at <= bounds[i][1]
        tally[1] += 1
    counts.before_last_byte = {k: before / total for k, (before, total) in seen.items()}
    for _, kind, command, addr in lines:
        words = command.split()
        if not words or words[0].upper() in ("MONITOR", "INFO", "CLIENT"):
            continue
        bucket = counts.in_scripts if kind == "lua" else counts.sent
        label = kind_of(words, addr)
        bucket[label] = bucket.get(label, 0) + 1
    return counts


def lag_line(name: str, lag: StreamsLag, streams: int) -> str:
    return (f"{name:22s}: {lag.opened}/{streams} streams; lag p50 {lag.p(0.5):7.2f} ms  p99 {lag.p(0.99):7.2f} ms  "
            f"max {lag.p(1.0):7.1f} ms  (n={len(lag.lags)} events while all were open, for {lag.window_s:.1f} s; "
            f"opening took {lag.open_s:.1f} s)" + (f"; failed: {lag.failed}" if lag.failed else ""))


__all__ = ["CpuShares", "StreamsLag", "many_streams", "redis_commands", "CommandCounts", "lag_line", "median"]
