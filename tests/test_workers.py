"""`server.workers: 2` on Redis, run as a user runs it (`codexproxy run`): one port served by two
worker processes, each a full proxy, whose background jobs run once for the pool; a worker killed
with -9 is replaced and service goes on; SIGTERM or SIGINT to the supervisor stops them all
cleanly (and its death by -9 stops them too); one that keeps dying stops the proxy; without a
shared state, or on a port already served, `codexproxy run` is refused in one line.

Which worker served a connection is read from the operating system, not from the proxy: the
worker whose file descriptors hold the server end of that TCP connection (/proc, Linux)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RESPONSES_BODY, wait_for
from tests.rawhttp import address
from tests.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)

# /proc and SO_REUSEPORT's spreading are Linux's (CI runs Linux: never skipped there).
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]


def two_workers(redis_url: str) -> dict:
    return {"server": {"workers": 2}, "state": {"backend": "redis", "redis_url": redis_url}}


def run_info(proxy) -> dict:
    return json.loads((proxy.data_dir / "run.json").read_text())


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running (a reaped or zombie process is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def holder_of(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The pid among `pids` holding the server end of the connection 127.0.0.1:client_port ->
    :server_port (None while it waits in an accept queue, held by nobody yet)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


def post_on_new_connection(proxy, pids: list[int]) -> tuple[int, bytes]:
    """POST /v1/responses on a connection of its own; (pid of the worker that served it, answer)."""
    host, port = address(proxy)
    body = json.dumps(RESPONSES_BODY).encode()
    with socket.create_connection((host, port), timeout=30) as sock:
        served_by = wait_for(lambda: holder_of(port, sock.getsockname()[1], pids), timeout=30, what="a worker to accept")
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {proxy.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body)
        answer = b""
        while not answer.endswith(b"\r\n0\r\n\r\n") and (chunk := sock.recv(65536)):  # the last chunk, or EOF
            answer += chunk
    return served_by, answer


def serve_many(proxy, pids: list[int], count: int = 16) -> set[int]:
    """`count` requests, each on a new connection, all answered in full; the pids that served them."""
    served = set()
    for _ in range(count):
        pid, answer = post_on_new_connection(proxy, pids)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b"response.completed" in answer
        served.add(pid)
    return served


def test_two_workers_serve_one_port_each_a_full_proxy_and_stop_together_on_sigterm(make_proxy, fake, redis_url):
    proxy = make_proxy(two_workers(redis_url), accounts=1)
    ready_at = time.time()
    info = run_info(proxy)
    assert info["pid"] == proxy.pid and info["url"] == proxy.url  # CLI commands find the supervisor
    workers = info["workers"]
    assert len(set(workers)) == 2 and all(parent_of(pid) == proxy.pid for pid in workers)
    # Linux spreads new connections over the workers' sockets by their addresses: 16 connections
    # all landing on one of two workers would happen once in 2**15 runs.
    assert serve_many(proxy, workers) == set(workers)
    assert len(proxy.cli_json("accounts", "list")) == 1
    # Each worker's jobs make a first pass 0.5-2 s after it serves; a job's turn is claimed in the
    # shared state, so the pool's one account was polled once and the model list fetched once.
    time.sleep(max(0.0, ready_at + 2.5 - time.time()))
    job_calls = [r.path for r in fake.all_requests if r.path in ("/backend-api/wham/usage", "/backend-api/codex/models")]
    assert sorted(job_calls) == ["/backend-api/codex/models", "/backend-api/wham/usage"]
    rows = proxy.cli_json("logs", "--limit", "100")  # both workers append to the one data dir's log
    assert len(rows) == 16 and all(row["status"] == 200 for row in rows), rows
    assert proxy.stop(signal.SIGTERM) == 0
    assert not any(alive(pid) for pid in workers)
    assert not (proxy.data_dir / "run.json").exists()
    assert not any("did not stop in time" in line or "stopped (" in line for line in proxy.output)
    assert sum(line.endswith("codexproxy[worker 1]: stopping: draining in-flight requests") for line in proxy.output) == 1
    assert sum(line.endswith("codexproxy[worker 2]: stopping: draining in-flight requests") for line in proxy.output) == 1
    # The autouse check of conftest.py fails the test on a traceback or "has crashed" in the output.


def test_a_worker_killed_with_sigkill_is_replaced_and_service_continues(make_proxy, fake, redis_url):
    proxy = make_proxy(two_workers(redis_url), accounts=1)
    killed, survivor = run_info(proxy)["workers"]
    os.kill(killed, signal.SIGKILL)
    replacement = wait_for(lambda: next((pid for pid in run_info(proxy)["workers"] if pid not in (killed, survivor)), None),
                           what="a new worker in run.json")
    assert run_info(proxy)["workers"] == [replacement, survivor] and parent_of(replacement) == proxy.pid
    assert any("worker 1" in line and "killed by SIGKILL" in line and "starting a new one" in line for line in proxy.output)
    assert serve_many(proxy, [replacement, survivor]) == {replacement, survivor}
    assert proxy.stop(signal.SIGINT) == 0  # Ctrl-C: only the supervisor gets it (workers have their own group)
    assert not any(alive(pid) for pid in (replacement, survivor))


def test_workers_stop_when_their_supervisor_is_killed(make_proxy, fake, redis_url):
    proxy = make_proxy(two_workers(redis_url), accounts=0, key=False)
    workers = run_info(proxy)["workers"]
    assert proxy.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=30, what="the orphaned workers to stop")


def test_a_worker_that_keeps_dying_stops_the_proxy_after_five_restarts(make_proxy, fake, redis_url):
    proxy = make_proxy(two_workers(redis_url), accounts=0, key=False)
    workers = run_info(proxy)["workers"]
    proxy.config_path.write_text("server: [not a mapping\n")  # every new worker now stops at once
    os.kill(workers[0], signal.SIGKILL)
    proxy.process.wait(90)
    assert proxy.stop() == 1  # (reads the rest of the output)
    assert [line for line in proxy.output if "stopping the proxy" in line][0].endswith(
        "stopped (exit code 2), 6 times within 60 s: stopping the proxy")
    assert sum("starting a new one" in line for line in proxy.output) == 5
    assert not any(alive(pid) for pid in workers)
    assert not (proxy.data_dir / "run.json").exists()


def test_a_port_another_supervisor_serves_is_refused_in_one_line(make_proxy, redis_url):
    # Another supervisor's socket: SO_REUSEPORT, listening. Without the check it would be joined.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proxy = make_proxy({**two_workers(redis_url), "server": {"workers": 2, "port": port}}, accounts=0, key=False, start=False)
        result = proxy.cli("run", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"cannot listen on 127.0.0.1:{port} (address already in use)"


def test_workers_without_a_shared_state_are_refused(make_proxy):
    proxy = make_proxy({"server": {"workers": 2}}, accounts=0, key=False, start=False)
    result = proxy.cli("run", timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: server.workers: 2")
    assert "state.backend: redis" in lines[0] and "state.backend is tinydb" in lines[0]
    zero = proxy.cli("run", env={"CODEXPROXY_SERVER__WORKERS": "0"}, timeout=60)
    assert zero.returncode == 2 and zero.stderr.strip() == "config error: server.workers: Input should be greater than or equal to 1 (got 0)"
