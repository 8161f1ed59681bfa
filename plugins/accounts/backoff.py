"""Per-account due times: a regular interval with jitter, exponential back-off after failures.

Kept in `app.state` (under a prefix per schedule), so whichever process runs the job next —
the proxy, another proxy on a shared state — sees when each account is due. On the embedded
state that is this process's memory: a restart simply polls again, which is what a fresh
process should do anyway. The clock and the random source are injectable so the arithmetic
is unit-tested without sleeping.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable


class Schedule:
    """`due(key)` says whether a key may run now; `succeeded`/`failed` set its next time.

    After a success the next run is `interval` later (± `jitter`, so accounts drift apart
    instead of hitting the upstream in one burst). After n consecutive failures it is
    `base * 2**n` later, never less than `interval` and never more than `cap`.
    """

    def __init__(self, state: Any, prefix: str, interval: float, base: float | None = None, cap: float = 1800.0,
                 jitter: float = 0.1, clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random) -> None:
        self.state = state
        self.prefix = prefix
        self.interval = interval
        self.base = base if base is not None else interval
        self.cap = max(cap, interval)
        self.jitter = jitter
        self.clock = clock
        self.rand = rand

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self.prefix}:next:{key}", f"{self.prefix}:failures:{key}"

    def _keep_s(self, delay: float) -> float:
        # How long the state keeps an entry: past its due time (a due time in the past and an
        # absent one mean the same), and a failure streak for as long as back-off can grow.
        return delay + self.cap + 60.0

    def due(self, key: str) -> bool:
        return self.clock() >= self.state.get(self._keys(key)[0], 0.0)

    def next_at(self, key: str) -> float | None:
        return self.state.get(self._keys(key)[0])

    def failures(self, key: str) -> int:
        return int(self.state.get(self._keys(key)[1], 0))

    def succeeded(self, key: str) -> float:
        """Record a success; returns the delay until the next run."""
        spread = self.interval * self.jitter * (2 * self.rand() - 1)
        delay = max(0.0, self.interval + spread)
        next_key, failures_key = self._keys(key)
        self.state.delete(failures_key)
        self.state.set(next_key, self.clock() + delay, ttl=self._keep_s(delay))
        return delay

    def failed(self, key: str) -> float:
        """Record a failure; returns the back-off delay until the next try."""
        next_key, failures_key = self._keys(key)
        n = self.failures(key) + 1  # one key's failures come from one holder at a time (the job, the refresh lock)
        delay = min(self.cap, max(self.interval, self.base * 2 ** n))
        self.state.set(failures_key, n, ttl=self._keep_s(delay))
        self.state.set(next_key, self.clock() + delay, ttl=self._keep_s(delay))
        return delay

    def forget(self, key: str) -> None:
        for name in self._keys(key):
            self.state.delete(name)
