"""`server.workers: N`: N worker processes on one machine serving one port, each a full proxy (its
own mitmproxy, pipeline and jobs) on the shared state (`state.backend: redis`, required by config.py).

Who binds: this supervisor, not the workers. It binds one socket per worker to the port with
SO_REUSEPORT (Linux spreads new connections over them evenly) and hands socket i to worker i as an
inherited file descriptor. Why not let each worker bind its own (the plain SO_REUSEPORT recipe):
- the connections waiting in a killed worker's accept queue would be reset with its socket; here
  that socket stays open in the supervisor and the worker started in its place serves them;
- port 0 (any free port) must be one port for all, which only a single binder can pick;
- a bind failure is one line, before any worker starts.
The price: while a killed worker's replacement starts (seconds), the new connections Linux hands
its socket wait in that socket's queue for it instead of going to another worker.
Why not one socket shared by all: every worker would wake for each connection and the first to
accept takes a whole burst (asyncio accepts up to 100 per wake-up), so load would not spread.

A worker is `codexproxy run` again with WORKER_ENV set (its sockets, a pipe to say it serves, the
supervisor's pid). It listens on the inherited sockets (`listen_on`, a narrow rebinding inside
mitmproxy 12.3.1 like failover.py's; tests/test_workers.py fails if it stops working) and writes
no run.json: the supervisor's (its own pid, the URL, the workers' pids) is what CLI commands find.
Background jobs run in every worker but once per pool: each run holds a state lock (scheduler.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from . import runfile

log = logging.getLogger("codexproxy.workers")

WORKER_ENV = "CODEXPROXY_WORKER"  # no "__": never read as a config override (config._apply_env)
# A worker that dies more often than this within RESTART_WINDOW_S stops the whole proxy (exit 1):
# its socket still gets its share of new connections, which no one would serve, and something
# that kills every new worker (a broken config file, a full disk) is for a person or a service
# manager to see, not for a loop to hide.
RESTARTS_ALLOWED = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 0.5  # between a death and the new worker: no hot loop when a start fails at once
POLL_S = 0.1


# --- the worker's side ----------------------------------------------------------------------------

@dataclass
class WorkerSeat:
    """What a worker process got from its supervisor."""

    index: int
    sockets: list[socket.socket]
    ready_fd: int

    def ready(self) -> None:
        """Tell the supervisor this worker serves (once)."""
        if self.ready_fd >= 0:
            try:
                os.write(self.ready_fd, b"ready\n")
                os.close(self.ready_fd)
            except OSError:
                pass
            self.ready_fd = -1


def this_worker() -> WorkerSeat | None:
    """The seat of this process if a supervisor started it as a worker, else None."""
    raw = os.environ.pop(WORKER_ENV, None)  # popped: a process this worker starts is no worker
    if not raw:
        return None
    info = json.loads(raw)
    if sys.platform.startswith("linux"):
        # A supervisor killed with -9 cannot stop its workers: the kernel sends them SIGTERM instead.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != info["supervisor"]:  # it died before the line above took effect
        raise SystemExit(0)
    sockets = [socket.socket(fileno=fd) for fd in info["fds"]]
    _name_worker_in_log_lines(info["index"])
    return WorkerSeat(index=info["index"], sockets=sockets, ready_fd=info["ready_fd"])


class _WorkerName(logging.Filter):
    """Every worker writes to the supervisor's stderr: its lines name it ("codexproxy[worker 2]: ...")."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.suffix = f"[worker {index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.suffix):
            record.name += self.suffix
        return True


def _name_worker_in_log_lines(index: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerName(index))


def listen_on(sockets: list[socket.socket]) -> None:
    """Make mitmproxy's reverse-mode server listen on `sockets` instead of binding its own.

    mitmproxy 12.3.1 (pinned in pyproject.toml) binds in AsyncioServerInstance.listen(host, port)
    with asyncio.start_server(handler, host, port); this replaces that method on ReverseInstance
    (the only mode codexproxy runs) with one that serves the given, already bound sockets."""
    from mitmproxy.proxy import mode_servers

    if not callable(getattr(mode_servers.AsyncioServerInstance, "listen", None)):
        raise RuntimeError("mitmproxy moved AsyncioServerInstance.listen: server.workers needs codexproxy's pinned mitmproxy 12.3.1")

    async def listen(self: Any, host: str, port: int) -> list[asyncio.Server]:
        return [await asyncio.start_server(self.handle_stream, sock=sock) for sock in sockets]

    mode_servers.ReverseInstance.listen = listen


# --- the supervisor's side ------------------------------------------------------------------------

def bind_seats(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """`count` lists of listening sockets on host:port (one per address of `host`), all with
    SO_REUSEPORT. First the port is taken once without SO_REUSEPORT, the way a single proxy binds:
    a port already served (by one proxy or by another supervisor) is refused, and port 0 becomes
    one free port for all."""
    from .server import StartupError, listen_backlog

    if not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError("server.workers > 1 needs SO_REUSEPORT, which this system does not have")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    addresses = list(dict.fromkeys((info[0], info[4][:2]) for info in infos))
    seats: list[list[socket.socket]] = []
    try:
        with _bind(*addresses[0], reuse_port=False) as probe:
            port = probe.getsockname()[1]
        for _ in range(count):
            seats.append([])
            for family, (addr, _) in addresses:
                sock = _bind(family, (addr, port), reuse_port=True)
                seats[-1].append(sock)
                sock.listen(listen_backlog())  # connections queue from now on, before a worker runs
    except OSError as exc:
        for sock in (s for seat in seats for s in seat):
            sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"cannot listen on {host}:{port} ({why})") from None
    return seats


def _bind(family: int, address: tuple[str, int], reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Worker:
    """One worker slot: its sockets, and the process serving them now (replaced when it dies)."""

    def __init__(self, index: int, sockets: list[socket.socket]) -> None:
        self.index = index
        self.sockets = sockets
        self.process: subprocess.Popen | None = None
        self.ready = False
        self.deaths: deque[float] = deque()
        self._ready_pipe = -1

    def start(self, argv: list[str]) -> None:
        self._close_pipe()  # the one of a worker that died before it served
        read_fd, write_fd = os.pipe()
        fds = [sock.fileno() for sock in self.sockets]
        seat = {"index": self.index, "fds": fds, "ready_fd": write_fd, "supervisor": os.getpid()}
        try:
            # Its own process group: Ctrl-C reaches the supervisor only, which stops the workers in order.
            self.process = subprocess.Popen(argv, env={**os.environ, WORKER_ENV: json.dumps(seat)},
                                            pass_fds=[write_fd, *fds], process_group=0)
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._ready_pipe, self.ready = read_fd, False

    def poll_ready(self) -> bool:
        if not self.ready and self._ready_pipe >= 0:
            try:
                self.ready = b"ready" in os.read(self._ready_pipe, 64)
            except BlockingIOError:
                pass
            if self.ready:
                self._close_pipe()
        return self.ready

    def _close_pipe(self) -> None:
        if self._ready_pipe >= 0:
            os.close(self._ready_pipe)
            self._ready_pipe = -1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.process and self.process.poll() is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self._close_pipe()
        for sock in self.sockets:
            sock.close()


class Supervisor:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.config = app.config
        self.workers: list[Worker] = []
        self.stopping = asyncio.Event()
        self.base = ""

    def worker_argv(self, port: int) -> list[str]:
        """`codexproxy run` for a worker: the same config, the host and the port actually bound
        (so its URL and warnings match); the sockets come through the environment."""
        argv = [sys.executable, "-m", "codexproxy", "run", "--host", self.config.server.host, "--port", str(port)]
        if self.config.source is not None:
            argv += ["-c", str(self.config.source)]
        if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            argv.append("-v")
        return argv

    async def run(self, on_ready: Callable[[str], None] | None) -> None:
        from .server import StartupError

        cfg = self.config.server
        seats = bind_seats(cfg.host, cfg.port, cfg.workers)
        self.workers = [Worker(i + 1, seat) for i, seat in enumerate(seats)]
        port = seats[0][0].getsockname()[1]
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.base = f"http://{shown}:{port}"
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        argv = self.worker_argv(port)
        try:
            # The first worker alone, then the others: what a first start creates once (the admin
            # token, mitmproxy's certificate files, the store's one-time moves) is not raced for.
            self.workers[0].start(argv)
            failed = await self._wait_until_ready(self.workers[:1])
            if failed is None and not self.stopping.is_set():
                for worker in self.workers[1:]:
                    worker.start(argv)
                failed = await self._wait_until_ready(self.workers)
            if failed is not None:
                raise StartupError(f"worker {failed.index} stopped before it served ({_describe_exit(failed.exit_code())}; its error is above)")
            if not self.stopping.is_set():
                self.app.public_url = self.base
                runfile.write(self.app.data_dir, self.base, workers=[w.pid for w in self.workers])
                log.info("%d workers serving %s (pids %s)", len(self.workers), self.base, ", ".join(str(w.pid) for w in self.workers))
                if on_ready:
                    on_ready(self.base)
                await self._watch(argv)
        finally:
            await self._stop_all()
            runfile.remove(self.app.data_dir)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _wait_until_ready(self, workers: list[Worker]) -> Worker | None:
        """None once `workers` all serve (or a stop was asked for); else the one that died first."""
        while not self.stopping.is_set():
            for worker in workers:
                if not worker.poll_ready() and worker.exit_code() is not None:
                    return worker
            if all(w.ready for w in workers):
                return None
            await self._sleep(POLL_S)
        return None

    async def _watch(self, argv: list[str]) -> None:
        """Until a stop is asked for: start a new worker in the place of one that died."""
        while not self.stopping.is_set():
            for worker in self.workers:
                worker.poll_ready()
                code = worker.exit_code()
                if code is None or self.stopping.is_set():
                    continue
                now = time.monotonic()
                worker.deaths.append(now)
                while worker.deaths and worker.deaths[0] < now - RESTART_WINDOW_S:
                    worker.deaths.popleft()
                if len(worker.deaths) > RESTARTS_ALLOWED:
                    log.error("worker %d (pid %s) stopped (%s), %d times within %.0f s: stopping the proxy",
                              worker.index, worker.pid, _describe_exit(code), len(worker.deaths), RESTART_WINDOW_S)
                    raise SystemExit(1)
                log.warning("worker %d (pid %s) stopped (%s); starting a new one on its socket",
                            worker.index, worker.pid, _describe_exit(code))
                await self._sleep(RESTART_DELAY_S)
                if self.stopping.is_set():
                    return
                worker.start(argv)
                runfile.write(self.app.data_dir, self.base, workers=[w.pid for w in self.workers])
            await self._sleep(POLL_S)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _stop_all(self) -> None:
        """Close the supervisor's copies of the sockets (so new connections are refused once the
        workers close theirs), ask every worker to drain and stop, wait, then kill what is left."""
        for worker in self.workers:
            worker.close()
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.drain_timeout_s + 15
        while time.monotonic() < deadline and any(w.running for w in self.workers):
            await asyncio.sleep(POLL_S)
        for worker in self.workers:
            if worker.running:
                log.warning("worker %d (pid %s) did not stop in time: killing it", worker.index, worker.pid)
                worker.signal(signal.SIGKILL)
                worker.process.wait()


async def supervise(app: Any, on_ready: Callable[[str], None] | None = None) -> None:
    """Run `server.workers` workers until SIGINT/SIGTERM, then stop them all."""
    try:
        await Supervisor(app).run(on_ready)
    finally:
        app.close()
