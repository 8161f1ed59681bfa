"""The request log on Redis against the local segments (issue 15): what a request pays for its row.

    .venv/bin/python bench/logbench.py            # standalone, ~20 s: prints the lines
    (section "logredis" of bench/run.py, when registered there)

Measured in one process, rounds interleaved, medians:
- append, local segments: `LogStore.append` (one O_APPEND write), the default store;
- append, Redis: `RedisLogStore.append` with its shipper running: the spool write and a wake-up,
  all that the event loop pays (exchange_done runs there);
- a synchronous XADD per row: what writing straight to Redis would put on the event loop (the
  design avoided; for scale);
- the history buckets on a 100k-row stream: the first count, the memory it keeps, and a page
  view's cost afterwards (new entries only);
- shipping: the shipper's CPU per row (it shares the GIL with the proxy), rows per round trip (script calls), and
  how long until another instance's reader sees a row (append -> visible in XREVRANGE, p50/p99).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.load import median, percentile  # noqa: E402


def sample_row(i: int) -> dict:
    from bench.run import sample_row as row  # the log section's row: the same ~600 bytes of JSON

    return row(i)


def write_costs(workdir: Path, url: str, rounds: int = 7, burst: int = 1000, history_rows: int = 100_000) -> dict[str, float]:
    import redis

    from codexproxy.logstore import LogStore
    from codexproxy.logstore_redis import RedisLogStore
    from codexproxy.state_redis import RedisState

    client = RedisState.from_url(url).client
    local = LogStore(workdir / "local")
    shared = RedisLogStore(client, workdir / "spool")
    direct = redis.Redis.from_url(url, decode_responses=True)

    def per_row(append) -> float:
        t = time.perf_counter()
        for i in range(burst):
            append(sample_row(i))
        return (time.perf_counter() - t) / burst * 1e6

    def xadd(row: dict) -> None:
        from codexproxy.logstore import encode_row

        direct.xadd("bench:direct", {"r": encode_row(row).decode()}, maxlen=100_000, approximate=True)

    costs: dict[str, list[float]] = {"local": [], "redis": [], "xadd": []}
    for _ in range(rounds):
        costs["local"].append(per_row(local.append))
        costs["redis"].append(per_row(shared.append))
        costs["xadd"].append(per_row(xadd))
        shared.ship()  # the backlog out of the way before the next round
    local.close()
    shared.close()

    # the shipper alone: CPU per row and rows per round trip (script calls), from a spool of `burst * 5` rows
    quiet = RedisLogStore(client, workdir / "quiet", ship=False)
    for i in range(burst * 5):
        quiet.append(sample_row(i))
    def scripts() -> int:
        stats = client.info("commandstats")
        return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))

    before = scripts()
    cpu = time.thread_time()
    wall = time.perf_counter()
    sent = quiet.ship()
    ship_cpu_us = (time.thread_time() - cpu) / sent * 1e6
    ship_wall_us = (time.perf_counter() - wall) / sent * 1e6
    execs = scripts() - before
    quiet.close()

    # another instance's reader: append here, poll there until the row is the newest
    writer = RedisLogStore(client, workdir / "writer")
    reader = redis.Redis.from_url(url, decode_responses=True)
    lags = []
    for i in range(200):
        marker = f"lag-{i}"
        t = time.perf_counter()
        writer.append({"id": marker, "status": 200})
        while True:
            newest = reader.xrevrange(writer.stream, count=1)
            if newest and f'"id":"{marker}"' in newest[0][1]["r"]:
                break
            time.sleep(0.0002)
        lags.append((time.perf_counter() - t) * 1000)
        time.sleep(0.005)
    writer.close()
    # the status page's buckets over a full stream: counted once, then per page view only what is new
    import tracemalloc

    full = RedisLogStore(client, workdir / "full", ship=False)
    files = LogStore(workdir / "files")  # the same rows in local segments: the baseline
    for i in range(history_rows):
        full.append(sample_row(i))
        files.append(sample_row(i))
        if i % 5000 == 4999:
            full.ship()
    full.ship()
    files.close()

    def build(open_store) -> tuple[float, float]:
        """Seconds to count the log into buckets, then (again, under tracemalloc) the MB it keeps."""
        store = open_store()
        t = time.perf_counter()
        store.history()
        seconds = time.perf_counter() - t
        store.close()
        store = open_store()
        tracemalloc.start()
        store.history()
        kept = tracemalloc.get_traced_memory()[0] / 1e6
        tracemalloc.stop()
        store.close()
        return seconds, kept

    file_build_s, file_mb = build(lambda: LogStore(workdir / "files"))
    build_s, kept_mb = build(lambda: RedisLogStore(client, workdir / "viewer", ship=False))
    viewer = RedisLogStore(client, workdir / "viewer", ship=False)
    viewer.history()
    views = []
    for i in range(20):
        full.append(sample_row(history_rows + i))  # one new row between page views
        full.ship()
        t = time.perf_counter()
        viewer.history()
        views.append((time.perf_counter() - t) * 1000)
    full.close()
    viewer.close()
    return {"local_us": median(costs["local"]), "redis_us": median(costs["redis"]), "xadd_us": median(costs["xadd"]),
            "ship_cpu_us": ship_cpu_us, "ship_wall_us": ship_wall_us, "rows_per_exec": sent / max(1, execs),
            "lag_p50_ms": median(lags), "lag_p99_ms": percentile(lags, 0.99),
            "history_rows": history_rows, "history_build_s": build_s, "history_mb": kept_mb,
            "file_build_s": file_build_s, "file_mb": file_mb, "history_view_ms": median(views)}


def lines(c: dict[str, float]) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    ratio = c["redis_us"] / c["local_us"]
    rows = [("request-log write on the request's path: Redis stream / local segments (per row)", f"{ratio:.2f}", "<= 1.5",
             "PASS" if ratio <= 1.5 else "MISS"),
            ("request-log row visible to another instance after append, p50", f"{c['lag_p50_ms']:.2f} ms", "< 50 ms",
             "PASS" if c["lag_p50_ms"] < 50 else "MISS")]
    details = [f"log append per row: local segments {c['local_us']:.1f} us, Redis (spool write + wake the shipper) "
               f"{c['redis_us']:.1f} us, a synchronous XADD instead {c['xadd_us']:.1f} us (a loopback round trip, kept off the path)",
               f"log shipper: {c['ship_cpu_us']:.1f} us CPU and {c['ship_wall_us']:.1f} us wall per row, "
               f"{c['rows_per_exec']:.0f} rows per script call from a backlog; visible to another reader "
               f"p50 {c['lag_p50_ms']:.2f} ms, p99 {c['lag_p99_ms']:.2f} ms",
               f"log history, {c['history_rows']:,} rows counted once (in the background at start-up): stream {c['history_build_s']:.2f} s "
               f"and {c['history_mb']:.0f} MB kept (the tally + ~60 bytes a row in columns, to take trimmed rows back out), local segments "
               f"{c['file_build_s']:.2f} s and {c['file_mb']:.0f} MB; then {c['history_view_ms']:.2f} ms per page view with one new row "
               f"(the stream's new entries only)"]
    return rows, details


async def section_logredis(run) -> None:
    """bench/run.py's section: the lines above, on a redis-server of its own."""
    from bench.run import log, start_redis

    log("request log on Redis: write cost vs local segments, shipping, visibility")
    server = start_redis(run)
    rows, details = lines(write_costs(run.workdir / "logredis", server.url))
    run.rows += rows
    run.details += details


def main() -> int:
    from tests.redis_server import RedisServer

    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="logbench-") as tmp:
        rows, details = lines(write_costs(Path(tmp), server.url))
    print(time.strftime("%Y-%m-%d %H:%M"), f"({threading.active_count()} threads at the end)")
    for measure, value, target, verdict in rows:
        print(f"| {measure} | {value} | {target} | {verdict} |")
    for line in details:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
