"""Per-account due times: a regular interval with jitter, exponential back-off after failures.

Kept in memory by the process that runs the jobs (the proxy): a restart simply polls again,
which is what a fresh process should do anyway. The clock and the random source are
injectable so the arithmetic is unit-tested without sleeping.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable


class Schedule:
    """`due(key)` says whether a key may run now; `succeeded`/`failed` set its next time.

    After a success the next run is `interval` later (± `jitter`, so accounts drift apart
    instead of hitting the upstream in one burst). After n consecutive failures it is
    `base * 2**n` later, never less than `interval` and never more than `cap`.
    """

    def __init__(self, interval: float, base: float | None = None, cap: float = 1800.0, jitter: float = 0.1,
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random) -> None:
        self.interval = interval
        self.base = base if base is not None else interval
        self.cap = max(cap, interval)
        self.jitter = jitter
        self.clock = clock
        self.rand = rand
        self._next: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def due(self, key: str) -> bool:
        with self._lock:
            return self.clock() >= self._next.get(key, 0.0)

    def next_at(self, key: str) -> float | None:
        with self._lock:
            return self._next.get(key)

    def failures(self, key: str) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def succeeded(self, key: str) -> float:
        """Record a success; returns the delay until the next run."""
        spread = self.interval * self.jitter * (2 * self.rand() - 1)
        delay = max(0.0, self.interval + spread)
        with self._lock:
            self._failures.pop(key, None)
            self._next[key] = self.clock() + delay
        return delay

    def failed(self, key: str) -> float:
        """Record a failure; returns the back-off delay until the next try."""
        with self._lock:
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
            delay = min(self.cap, max(self.interval, self.base * 2 ** n))
            self._next[key] = self.clock() + delay
        return delay

    def forget(self, key: str) -> None:
        with self._lock:
            self._next.pop(key, None)
            self._failures.pop(key, None)
