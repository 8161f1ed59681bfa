"""Background jobs on the `schedule` library, run by one thread inside the proxy process.

Once per pool, not once per process: every run holds the state lock `job:<name>` (a second
process or thread skips it while it runs), and a scheduled run first claims `job:due:<name>` for
most of the interval, so when several proxies share the state only one of them runs each turn.
A run asked for by hand (`jobs.run`, `codexproxy jobs run`) skips only the first check."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable

import schedule

from .exchange import GatewayError

log = logging.getLogger("codexproxy.jobs")


class Jobs:
    """What `codexproxy_register_jobs` receives: `every()` to add a job, `run()` to run one now."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.scheduler = schedule.Scheduler()
        self.funcs: dict[str, Callable[[Any], Any]] = {}
        self.last_run: dict[str, dict[str, Any]] = {}
        self.intervals: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, seconds: float, name: str, func: Callable[[Any], Any], jitter: float = 0.1) -> None:
        self.funcs[name] = func
        low = max(1, int(seconds))
        high = max(low, int(seconds * (1 + jitter)))
        self.intervals[name] = float(low)
        job = self.scheduler.every(low)
        if high > low:
            job = job.to(high)
        job.seconds.do(self.run_due, name).tag(name)

    def run_due(self, name: str) -> Any:
        """The scheduled run: skipped if another process on the state ran this turn already,
        or when the shared state cannot be reached (the thread lives on for the next turn)."""
        try:
            if not self.app.state.add(f"job:due:{name}", time.time(), ttl=self.intervals[name] * 0.9):
                return None
            return self.run(name)
        except GatewayError as exc:  # StateUnavailable: Redis is down
            log.warning("job %s skipped: %s", name, exc.message)
            return None

    def run(self, name: str) -> Any:
        """Run a job now, in this thread (skipped if it is running here or in another process)."""
        func = self.funcs.get(name)
        if func is None:
            raise KeyError(name)
        # The lock outlives any sane run; one that hangs longer lets the next turn start anyway.
        lock_name = f"job:{name}"
        token = self.app.state.try_lock(lock_name, ttl=max(2 * self.intervals[name], 600.0))
        if token is None:
            return None
        started = time.time()
        try:
            result = func(self.app)
            self.last_run[name] = {"at": started, "ok": True, "seconds": round(time.time() - started, 3)}
            return result
        except Exception as exc:  # a failing job must not kill the scheduler thread
            log.warning("job %s failed: %s: %s", name, exc.__class__.__name__, exc)
            self.last_run[name] = {"at": started, "ok": False, "error": str(exc)[:200]}
            return None
        finally:
            self.app.state.unlock(lock_name, token)

    def start(self) -> None:
        if self._thread is not None or not self.funcs:
            return
        self._thread = threading.Thread(target=self._loop, name="codexproxy-jobs", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # A first pass soon after start (with jitter) so fresh state does not wait a full interval.
        self._stop.wait(random.uniform(0.5, 2.0))
        for name in list(self.funcs):
            if self._stop.is_set():
                return
            self.run_due(name)
        while not self._stop.wait(0.5):
            self.scheduler.run_pending()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for job in self.scheduler.get_jobs():
            name = next(iter(job.tags), "?")
            out.append({"name": name, "next_run": job.next_run.timestamp() if job.next_run else None, **({"last": self.last_run[name]} if name in self.last_run else {})})
        return out
