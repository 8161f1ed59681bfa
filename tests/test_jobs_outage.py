"""Background jobs and a shared state that goes away: a turn that cannot reach Redis is skipped
with a warning, and the jobs thread lives on to run the next turns once Redis is back."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from codexproxy.scheduler import Jobs
from codexproxy.state_redis import RedisState
from tests.redis_server import start_redis


def test_a_job_turn_while_redis_is_down_is_skipped_and_the_next_runs(caplog):
    server = start_redis()
    state = RedisState.from_url(server.url)
    try:
        jobs = Jobs(SimpleNamespace(state=state))
        runs: list[str] = []
        jobs.every(1, "poll", lambda app: runs.append("ran") or "ran")
        assert jobs.run_due("poll") == "ran"
        server.stop()
        with caplog.at_level(logging.WARNING, logger="codexproxy.jobs"):
            assert jobs.run_due("poll") is None  # no exception: it would end the jobs thread for good
        assert any("poll" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
        server.start()
        state.delete("job:due:poll")  # the interval's claim is the first run's: the next turn may run
        assert jobs.run_due("poll") == "ran" and runs == ["ran", "ran"]
    finally:
        state.close()
        server.close()
