"""The status page with a week of history: render times with 100k request-log rows.

    .venv/bin/python bench/status_render.py            # ~30 s
    .venv/bin/python bench/status_render.py --strict   # exit 1 if a page with charts misses the target
    .venv/bin/python bench/status_render.py --rows 20000 --views 10

In-process, one core: an App on a temporary data dir, `--rows` log rows spread over the last
7 days (3 accounts, 2 keys, some failed and failed-over requests), 200 usage snapshots per
account. Then: the one-time count of the log into buckets (what a proxy does a few seconds
after start), the cost an append adds for keeping the buckets up to date, and the median and
worst of `--views` renders of each page (the HTML the browser gets, built as GET /status builds
it) and of the `usage.history` method. Target (issue 16): every page with charts (dashboard 24 h
and 7 days, accounts, keys) renders in under 100 ms, median of the views.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from codexproxy.app import App  # noqa: E402
from codexproxy.config import load_config  # noqa: E402
from codexproxy.logstore import LogStore  # noqa: E402
from codexproxy.models import Account  # noqa: E402

TARGET_MS = 100.0
REASONS = ("usage_limit", "rate_limited", "server_error", "transport")


def make_app(workdir: Path) -> App:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": {"path": str(workdir / "data" / "codexproxy.json")}}))
    return App(load_config(path))


def fill(app: App, rows: int, rng: random.Random) -> None:
    accounts = [app.accounts.add(Account(email=f"user{i}@example.com", access_token=f"t{i}")) for i in range(3)]
    keys = [app.keys.create("laptop", rpm=60, daily_tokens=5_000_000)[0], app.keys.create("ci")[0]]
    now = time.time()
    start = now - 7 * 86400 + 60
    for i in range(rows):
        at = start + (now - start - 1) * i / rows  # oldest first, as a log is written
        account, other = rng.sample(accounts, 2)
        key = keys[i % 3 == 0]
        status = 502 if rng.random() < 0.02 else 200
        attempts = [{"account": other.id, "status": 429, "error": None, "reason": rng.choice(REASONS), "ms": 120.0}] if rng.random() < 0.05 else []
        attempts.append({"account": account.id, "status": status, "error": None, "reason": "server_error" if status >= 500 else None, "ms": 200.0})
        app.logs.append({"time": at, "id": f"{i:016x}", "key_id": key.id, "key_name": key.name, "account_id": account.id,
                         "account": account.email, "protocol": "responses", "method": "POST", "path": "/v1/responses",
                         "model": "gpt-5-codex", "effort": "medium", "status": status, "latency_ms": 812.4, "ttfb_ms": 211.9,
                         "input_tokens": rng.randint(500, 9000), "cached_tokens": 1024, "output_tokens": rng.randint(20, 900),
                         "reasoning_tokens": 16, "attempts": attempts, "error": "upstream 502" if status >= 500 else None})
    from codexproxy_plugins.accounts import usage

    for n, account in enumerate(accounts):
        for k in range(app.config.jobs.usage_snapshots_kept):
            at = now - 7 * 86400 + k * 3000 + n * 60
            usage.save_snapshot(app, account.id, {"time": at, "primary": {"used_percent": (k * 7 % 100), "window_minutes": 300,
                                                                          "reset_at": at + 3600},
                                                  "secondary": {"used_percent": min(100, k / 3), "window_minutes": 10080,
                                                                "reset_at": now + 86400}})


def timed(func, views: int) -> tuple[float, float]:
    """Median and worst milliseconds of `views` calls (after one warm-up call)."""
    func()
    samples = []
    for _ in range(views):
        t = time.perf_counter()
        func()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), max(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a page with charts misses the target (median)")
    args = parser.parse_args()
    from codexproxy_plugins.admin import web
    from codexproxy_plugins.admin.methods import usage_history

    with tempfile.TemporaryDirectory(prefix="codexproxy-bench-") as tmp:
        app = make_app(Path(tmp))
        t = time.perf_counter()
        fill(app, args.rows, random.Random(16))
        print(f"wrote {args.rows:,} log rows over 7 days and {app.config.jobs.usage_snapshots_kept} snapshots per account "
              f"in {time.perf_counter() - t:.1f} s")

        fresh = LogStore(app.logs.dir)  # as a restarted proxy: count the files once
        t = time.perf_counter()
        fresh.history()
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(2000):
            fresh.append({"time": time.time(), "id": f"extra{i}", "status": 200, "input_tokens": 10, "output_tokens": 2,
                          "key_id": "key_x", "account_id": "acc_x", "attempts": []})
        with_buckets_us = (time.perf_counter() - t) / 2000 * 1e6
        plain = LogStore(Path(tmp) / "plain-logs")
        t = time.perf_counter()
        for i in range(2000):
            plain.append({"time": time.time(), "id": f"extra{i}", "status": 200, "input_tokens": 10, "output_tokens": 2,
                          "key_id": "key_x", "account_id": "acc_x", "attempts": []})
        plain_us = (time.perf_counter() - t) / 2000 * 1e6

        viewer = web.Viewer(None)
        results = []
        # (label, held to the target, what is timed): the pages with charts are; the RPC is not a page.
        for label, charted, func in (("dashboard (/status)", True, lambda: web._page(app, viewer, "", {})),
                                     ("dashboard, 7 days (/status?window=7d)", True, lambda: web._page(app, viewer, "", {"window": "7d"})),
                                     ("accounts (/status/accounts)", True, lambda: web._page(app, viewer, "accounts", {})),
                                     ("keys (/status/keys)", True, lambda: web._page(app, viewer, "keys", {})),
                                     ("usage.history (RPC)", False, lambda: usage_history(app, {}))):
            results.append((label, charted, *timed(func, args.views)))
        app.close()

    print(f"\ncounting {args.rows:,} rows into buckets once (at start): {build_s * 1000:.0f} ms")
    print(f"append with the buckets kept up to date: {with_buckets_us:.1f} us/row (without: {plain_us:.1f} us/row)\n")
    print(f"{'render, ' + str(args.views) + ' views':<42} {'median':>9} {'worst':>9}")
    for label, _, med, worst in results:
        print(f"{label:<42} {med:>6.1f} ms {worst:>6.1f} ms")
    missed = [f"{label} {med:.1f} ms" for label, charted, med, _ in results if charted and med >= TARGET_MS]
    slowest = max(med for _, charted, med, _ in results if charted)
    print(f"\npages with charts, slowest median {slowest:.1f} ms with {args.rows:,} rows: "
          f"{'MISS: ' + ', '.join(missed) if missed else 'PASS'} (target < {TARGET_MS:.0f} ms each)")
    return 0 if not missed or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
