"""GET /metrics: Prometheus text format (0.0.4).

Counters and histograms are counted by the `exchange_done` observer into `app.state` (under
`metrics:`, flushed from memory about once a second, see `Metrics`), so every process sharing a
state reports the same totals; the exchanges in progress (`codexproxy_active_requests`,
`codexproxy_active_streams`) stay process-local, as they are live objects. Gauges about
accounts (usage %, status, requests in flight: the leases in `app.state` that routing holds,
so pool-wide) are read at scrape time, and job runs from `app.jobs.last_run`. Auth is
optional: with `metrics.token` set, scrapers send it (or the admin token) as a Bearer token.
Accounts are labelled by id; their emails appear (in `codexproxy_account_info`) only when
`metrics.token` is set.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from typing import Any, Iterable

from codexproxy.exchange import LocalResponse
from codexproxy.state import account_inflight_key

from .session import bearer, guesses

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)
TOKEN_KINDS = ("input", "cached", "output", "reasoning")


PREFIX = "metrics:"
FLUSH_EVERY_S = 1.0
# Counter families kept in the state, each with its label names (a key is PREFIX + family + ":" +
# the JSON list of label values, so any label text survives the round trip).
COUNTERS = {"requests": ("route", "protocol", "status"), "failovers": ("reason",), "cooldowns": ("reason",),
            "tokens": ("key", "account", "kind")}
HISTOGRAMS = ("latency", "ttfb")  # label "route"; parts: bucket index, "sum", "count"

log = logging.getLogger(__name__)


def counter_key(family: str, *labels: Any) -> str:
    return f"{PREFIX}{family}:{json.dumps(list(labels))}"


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.sum = 0.0
        self.count = 0


class Metrics:
    """What this process adds to the pool's counters, and the exchanges it is serving.

    Counters and histograms live in `app.state` (under `metrics:`), so every process sharing a
    state (server.workers, proxies on one Redis) scrapes the same totals. A request never waits on
    the state for them: `done` adds its deltas to `pending` in memory, and `flush` (a daemon thread
    every FLUSH_EVERY_S, and once at shutdown) moves them there with `state.incr`. A scrape reads
    the state plus this process's pending deltas, so one process's scrape is always exact.
    `active` (the exchanges in progress) stays process-local: they are live objects; the pool-wide
    in-flight gauge comes from the state's leases. Job runs are counted from `app.jobs.last_run`
    as this process sees it."""

    def __init__(self, state: Any = None) -> None:
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()  # a scrape does not read between a flush's take and its incr
        self.state = state
        self.active: dict[str, Any] = {}  # exchange id -> Exchange, while it runs
        self.pending: dict[str, float] = {}  # state key -> delta not yet flushed
        self.job_seen: dict[str, float] = {}
        self.job_runs: dict[tuple[str, str], int] = {}
        self.stopping = threading.Event()
        self.flusher: threading.Thread | None = None

    def _add(self, key: str, amount: float) -> None:
        self.pending[key] = self.pending.get(key, 0) + amount

    def _observe(self, family: str, route: str, value: float) -> None:
        index = next(i for i, bound in enumerate(BUCKETS) if value <= bound)  # stored per bucket; rendered cumulative
        self._add(counter_key(family, route, index), 1)
        self._add(counter_key(family, route, "sum"), value)
        self._add(counter_key(family, route, "count"), 1)

    def start(self, exchange) -> None:
        with self.lock:
            self.active[exchange.id] = exchange
            if self.state is not None and self.flusher is None and not self.stopping.is_set():
                self.flusher = threading.Thread(target=self._flush_loop, name="metrics-flush", daemon=True)
                self.flusher.start()

    def done(self, exchange) -> None:
        route = exchange.route.name if exchange.route and exchange.route.name else "unknown"
        status = f"{exchange.status // 100}xx" if exchange.status else "none"
        with self.lock:
            self.active.pop(exchange.id, None)
            self._add(counter_key("requests", route, exchange.protocol, status), 1)
            self._observe("latency", route, exchange.elapsed_ms() / 1000)
            if exchange.ttfb_ms is not None:
                self._observe("ttfb", route, exchange.ttfb_ms / 1000)
            attempts = exchange.attempts
            for i, attempt in enumerate(attempts):
                if not attempt.reason or attempt.reason == "client_error":
                    continue
                following = attempts[i + 1] if i + 1 < len(attempts) else None
                if following is not None:
                    self._add(counter_key("failovers", attempt.reason), 1)
                if attempt.account_id and (following is None or following.account_id != attempt.account_id):
                    self._add(counter_key("cooldowns", attempt.reason), 1)
            if exchange.usage is not None:
                who = (getattr(exchange.key, "name", None) or "none", getattr(exchange.account, "id", None) or "none")
                usage = exchange.usage
                for kind, value in zip(TOKEN_KINDS, (usage.input_tokens, usage.cached_tokens, usage.output_tokens, usage.reasoning_tokens)):
                    self._add(counter_key("tokens", *who, kind), value)

    def flush(self, state: Any = None) -> None:
        """Add the pending deltas to the state's counters; on a state error they stay pending."""
        state = state if state is not None else self.state
        if state is None:
            return
        with self.flush_lock:
            with self.lock:
                taken, self.pending = self.pending, {}
            done: list[str] = []
            try:
                for key, amount in taken.items():
                    if amount:
                        state.incr(key, amount)
                    done.append(key)
            except Exception as exc:  # the state is down or closed: keep what was not added
                log.warning("metrics: could not flush counters to the state (%s); kept for the next flush", type(exc).__name__)
                with self.lock:
                    for key, amount in taken.items():
                        if key not in done:
                            self._add(key, amount)

    def _flush_loop(self) -> None:
        while not self.stopping.wait(FLUSH_EVERY_S):
            self.flush()

    def shutdown(self) -> None:
        """Stop the flusher and flush what is left (codexproxy_shutdown)."""
        self.stopping.set()
        self.flush()

    def totals(self, state: Any) -> dict[str, float]:
        """The pool's counters: the state's plus this process's pending deltas."""
        with self.flush_lock:
            values = {key: state.get(key, 0) for key in state.keys(PREFIX)}
            with self.lock:
                for key, amount in self.pending.items():
                    values[key] = values.get(key, 0) + amount
        return values

    def seen_jobs(self, last_run: dict[str, dict[str, Any]]) -> None:
        """Count job runs not seen before (last_run keeps only the latest run of each job)."""
        with self.lock:
            for name, info in list(last_run.items()):
                at = info.get("at")
                if at is not None and self.job_seen.get(name) != at:
                    self.job_seen[name] = at
                    result = "ok" if info.get("ok") else "failed"
                    self.job_runs[(name, result)] = self.job_runs.get((name, result), 0) + 1


def _whole(value: float) -> float:
    return int(value) if float(value).is_integer() else value


def _decode(totals: dict[str, float]) -> tuple[dict[str, dict[tuple, float]], dict[str, dict[str, Histogram]]]:
    """The state's keys back into counter samples by family and histograms by family and route."""
    counters: dict[str, dict[tuple, float]] = {family: {} for family in COUNTERS}
    hists: dict[str, dict[str, Histogram]] = {family: {} for family in HISTOGRAMS}
    for key, total in totals.items():
        family, _, raw = key[len(PREFIX):].partition(":")
        try:
            labels = json.loads(raw)
        except ValueError:
            continue  # not ours
        if family in COUNTERS and len(labels) == len(COUNTERS[family]):
            counters[family][tuple(labels)] = _whole(total)
        elif family in HISTOGRAMS and len(labels) == 2:
            hist = hists[family].setdefault(labels[0], Histogram())
            part = labels[1]
            if part == "sum":
                hist.sum = float(total)
            elif part == "count":
                hist.count = _whole(total)
            elif isinstance(part, int) and 0 <= part < len(BUCKETS):
                hist.counts[part] = _whole(total)
    return counters, hists


def _esc(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return "+Inf" if value == math.inf else repr(float(value))


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, Any], float]], suffix: str = "") -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            self.sample(name + suffix, labels, value)

    def sample(self, name: str, labels: dict[str, Any], value: float) -> None:
        inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{inner}}} {_num(value)}" if inner else f"{name} {_num(value)}")

    def histograms(self, name: str, help_: str, label: str, hists: dict[str, Histogram]) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        for value, hist in sorted(hists.items()):
            running = 0
            for bound, count in zip(BUCKETS, hist.counts):
                running += count
                self.sample(f"{name}_bucket", {label: value, "le": "+Inf" if bound == math.inf else repr(bound)}, running)
            self.sample(f"{name}_sum", {label: value}, hist.sum)
            self.sample(f"{name}_count", {label: value}, hist.count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(app, m: Metrics) -> str:
    m.seen_jobs(app.jobs.last_run)
    now = time.time()
    accounts = app.accounts.ordered()
    counters, hists = _decode(m.totals(app.state))
    w = Writer()
    w.family("codexproxy_requests_total", "counter", "Client requests answered, by route, client protocol and status class.",
             [({"route": r, "protocol": p, "status": s}, n) for (r, p, s), n in sorted(counters["requests"].items())])
    w.histograms("codexproxy_request_duration_seconds", "Time from request to the last byte.", "route", hists["latency"])
    w.histograms("codexproxy_time_to_first_byte_seconds", "Time from request to the first byte sent to the client.", "route", hists["ttfb"])
    w.family("codexproxy_failovers_total", "counter", "Requests sent again to another account (or the same after a token refresh), by reason.",
             [({"reason": r}, n) for (r,), n in sorted(counters["failovers"].items())])
    w.family("codexproxy_cooldowns_total", "counter", "Accounts set aside after a failed attempt, by reason.",
             [({"reason": r}, n) for (r,), n in sorted(counters["cooldowns"].items())])
    w.family("codexproxy_tokens_total", "counter", "Tokens reported by the upstream, by platform key, account and kind.",
             [({"key": k, "account": a, "kind": kind}, n) for (k, a, kind), n in sorted(counters["tokens"].items())])
    with m.lock:
        active = list(m.active.values())
        w.family("codexproxy_job_runs_total", "counter", "Background job runs seen, by result.",
                 [({"job": j, "result": r}, n) for (j, r), n in sorted(m.job_runs.items())])
    upstream = [ex for ex in active if ex.route is not None and ex.route.kind == "upstream"]
    w.family("codexproxy_active_requests", "gauge", "Client requests in progress.", [({}, len(active))])
    w.family("codexproxy_active_streams", "gauge", "Streaming answers in progress.",
             [({}, sum(1 for ex in upstream if ex.client_stream and ex.status is not None and ex.status < 400))])
    # The leases routing holds per account: the count its inflight cap sees (pool-wide on a shared state).
    w.family("codexproxy_account_inflight", "gauge", "Requests in progress per account.",
             [({"account": a.id}, app.state.leases(account_inflight_key(a.id))) for a in accounts])
    # Emails only behind metrics.token: an open /metrics is readable by every local process and
    # by any page that can reach it, and an email says whose accounts these are.
    private = bool(app.config.metrics.token)
    w.family("codexproxy_account_info", "gauge", "Accounts of the pool (value 1), with their labels (emails only when metrics.token is set).",
             [({"account": a.id, "name": a.name if private else (a.label or a.id), "plan": a.plan or "", "group": a.group or ""}, 1)
              for a in accounts])
    w.family("codexproxy_account_status", "gauge", "The status of each account (value 1).",
             [({"account": a.id, "status": a.effective_status(now)}, 1) for a in accounts])
    windows = [(a.id, name, window) for a in accounts for name, window in (("5h", a.primary), ("7d", a.secondary)) if window is not None]
    w.family("codexproxy_account_used_percent", "gauge", "Usage of the 5h and 7d windows per account, in percent.",
             [({"account": a, "window": name}, win.used_percent) for a, name, win in windows])
    w.family("codexproxy_account_reset_timestamp_seconds", "gauge", "When each usage window resets (epoch seconds).",
             [({"account": a, "window": name}, win.reset_at) for a, name, win in windows if win.reset_at])
    last = app.jobs.last_run
    w.family("codexproxy_job_last_run_timestamp_seconds", "gauge", "When each background job last ran (epoch seconds).",
             [({"job": j}, info["at"]) for j, info in sorted(last.items()) if info.get("at")])
    w.family("codexproxy_job_last_success", "gauge", "Whether the last run of each job succeeded (1) or failed (0).",
             [({"job": j}, bool(info.get("ok"))) for j, info in sorted(last.items())])
    w.family("codexproxy_job_last_duration_seconds", "gauge", "How long the last successful run of each job took.",
             [({"job": j}, info["seconds"]) for j, info in sorted(last.items()) if "seconds" in info])
    w.family("codexproxy_uptime_seconds", "gauge", "Seconds since the proxy started.", [({}, round(now - app.started_at, 1))])
    return w.text()


def handle(app, exchange, metrics: Metrics) -> LocalResponse:
    if exchange.method not in ("GET", "HEAD"):
        return LocalResponse(405, f"{exchange.method} is not allowed on /metrics; use GET.\n", {"allow": "GET, HEAD"})
    token = app.config.metrics.token
    if token:
        # The admin token is accepted here too: guesses of either count like any admin guess.
        limiter = guesses(app)
        if wait := limiter.retry_after(exchange.client_addr):
            return LocalResponse(429, f"Too many wrong tokens from your address; try again in {wait} s.\n", {"retry-after": str(wait)})
        offered = bearer(exchange.headers) or ""
        if not (secrets.compare_digest(offered.encode(), token.encode()) or app.check_admin_token(offered)):
            if offered:  # a scraper without a token is not guessing
                limiter.failed(exchange.client_addr)
            return LocalResponse(401, "Unauthorized: send metrics.token as 'Authorization: Bearer <token>'.\n",
                                 {"www-authenticate": 'Bearer realm="codexproxy metrics"'})
    return LocalResponse(200, render(app, metrics), {"cache-control": "no-store"},
                         content_type="text/plain; version=0.0.4; charset=utf-8")
