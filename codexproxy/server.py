"""Running the proxy: a bare mitmproxy Master in reverse mode, started and stopped cleanly.

Why a bare Master: DumpMaster exits the process on any error log at start-up
and prints every flow; we want our own logging and a bind failure reported as one line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from typing import Any, Callable
from urllib.parse import urlsplit

from mitmproxy import options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from . import failover, http1_server, runfile, workers, wsadapter
from .proxy import Gateway
from .wsadapter import WebSocketGateway

log = logging.getLogger("codexproxy")


class StartupError(Exception):
    """The proxy could not start; the message is one line for the user."""


class _ListenFailure(logging.Filter):
    """Keeps mitmproxy's own "failed to listen" error out of the log: we report a bind
    failure ourselves in one line, and its hint (`--mode reverse:...@port`) names an option
    codexproxy does not have. The reason is kept for our line."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "failed to listen on" not in message:
            return True
        self.reason = "address already in use" if "already in use" in message else message.split(" with ", 1)[-1].splitlines()[0]
        return False


_LISTEN_FAILURE = _ListenFailure()
logging.getLogger("mitmproxy.addons.proxyserver").addFilter(_LISTEN_FAILURE)


def listen_backlog() -> int:
    """The most pending connections the OS lets a listener queue (net.core.somaxconn).
    asyncio's default of 100 made a burst of a few hundred clients see resets."""
    try:
        with open("/proc/sys/net/core/somaxconn") as fh:
            return max(int(fh.read().strip()), socket.SOMAXCONN)
    except (OSError, ValueError):
        return socket.SOMAXCONN


def _raise_backlog(proxyserver: Any, backlog: int) -> None:
    """mitmproxy listens through asyncio.start_server() without a backlog argument; calling
    listen() again on the bound socket raises its queue (Linux and the BSDs allow this)."""
    for instance in proxyserver.servers:
        for server in getattr(instance, "_servers", ()):  # mitmproxy 12.3's list of asyncio.Server
            for transport_socket in getattr(server, "sockets", ()):
                with socket.socket(fileno=os.dup(transport_socket.fileno())) as sock:
                    sock.listen(backlog)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _quiet_cancelled_connections(loop: asyncio.AbstractEventLoop) -> None:
    """Stopping cancels the handlers of idle kept-alive client connections; CPython 3.12.1's
    asyncio then reports each cancellation as an error with a traceback (its stream callback
    calls task.exception() on a cancelled task). A cancelled connection is the plan, not a
    crash: every other error still goes to the handler that was there before (mitmproxy's while
    it runs, asyncio's default after)."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if isinstance(context.get("exception"), asyncio.CancelledError):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class ProxyServer:
    def __init__(self, app: Any, listeners: list[socket.socket] | None = None) -> None:
        self.app = app
        # A worker of `server.workers` (workers.py) serves the sockets its supervisor bound and
        # leaves run.json to it; None: this process binds server.host:port itself.
        self.listeners = listeners
        self.master: Master | None = None
        self.gateway = Gateway(app)
        self.sockets = WebSocketGateway(app, self.gateway.pipeline)  # the same pipeline, another transport
        self.port: int | None = None
        self._watchdog: asyncio.Task | None = None

    async def start(self) -> str:
        """Bind and start serving; returns the base URL (http://host:port)."""
        cfg = self.app.config
        failover.install()
        http1_server.install(head_timeout_s=cfg.server.head_timeout_s)
        wsadapter.install(max_message_bytes=cfg.limits.max_body_bytes)
        origin = urlsplit(cfg.upstream.base_url)
        opts = options.Options(
            listen_host=cfg.server.host,
            listen_port=cfg.server.port,
            mode=[f"reverse:{origin.scheme}://{origin.netloc}"],
            confdir=str(self.app.data_dir / "mitmproxy"),
        )
        self.master = Master(opts, event_loop=asyncio.get_running_loop())
        if self.listeners is not None:
            workers.listen_on(self.listeners)
        self.proxyserver = proxyserver.Proxyserver()
        self.sockets.proxyserver = self.proxyserver
        self.master.addons.add(core.Core(), self.proxyserver, next_layer.NextLayer(), tlsconfig.TlsConfig(),
                               self.sockets, self.gateway)
        limit = cfg.limits.max_body_bytes
        opts.update(
            # lazy: never connect upstream before our hooks chose where (and whether) to go.
            connection_strategy="lazy",
            # A hard cap well above ours: our own check answers 413 in the client's protocol,
            # this one only stops absurd bodies from being buffered at all.
            body_size_limit=str(limit * 2 + 1024 * 1024),
            # The client's Host stays on the flow (the admin and DNS-rebinding checks read
            # it); every upstream request gets the upstream's own Host from the gateway.
            keep_host_header=True,
            http2=False,  # the failover re-send needs HTTP/1.1 upstream
            ssl_insecure=not cfg.upstream.ssl_verify,
            ssl_verify_upstream_trusted_ca=cfg.upstream.ca_file,
            tcp_timeout=max(600, int(cfg.upstream.stream_idle_timeout_s) + 60),
        )
        self.app.running = True
        self.app.hook.codexproxy_startup(app=self.app)
        # Before run(): mitmproxy's run() puts back the handler it found when it ends, and the
        # connections it cancels at shutdown report after that (see the function).
        _quiet_cancelled_connections(asyncio.get_running_loop())
        self._run_task = asyncio.create_task(self.master.run())
        for _ in range(200):
            await asyncio.sleep(0.02)
            if self.proxyserver.is_running or self._run_task.done():
                break
        addrs = self.proxyserver.listen_addrs()
        if not addrs:
            self.master.shutdown()
            why = _LISTEN_FAILURE.reason or "address in use or not available"
            raise StartupError(f"cannot listen on {cfg.server.host}:{cfg.server.port} ({why})")
        _raise_backlog(self.proxyserver, listen_backlog())
        self.port = addrs[0][1]
        host = cfg.server.host
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{self.port}"
        self.app.public_url = base
        if not _is_loopback(host):
            log.warning("listening on %s:%s, which is reachable from other machines: anyone who can reach it and holds a platform key can use your accounts", host, self.port)
        runfile.write(self.app.data_dir, base)
        self._watchdog = asyncio.create_task(self.gateway.watch_idle(self.proxyserver))
        self.app.start_background()
        return base

    async def stop(self) -> None:
        """Close the listeners, let in-flight streams finish (bounded), then shut down."""
        if self.master is None:
            return
        self.gateway.closing = True
        _quiet_cancelled_connections(asyncio.get_running_loop())  # closing listeners cancels connections
        try:
            await self.proxyserver.servers.update([])
        except Exception:
            log.debug("closing listeners failed", exc_info=True)
        deadline = asyncio.get_running_loop().time() + self.app.config.server.drain_timeout_s
        while (self.gateway.active or self.sockets.busy) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._watchdog:
            self._watchdog.cancel()
        await self.sockets.close()
        self.master.shutdown()
        try:
            await asyncio.wait_for(self._run_task, timeout=5)
        except (asyncio.TimeoutError, Exception):
            pass
        runfile.remove(self.app.data_dir)
        try:
            self.app.hook.codexproxy_shutdown(app=self.app)
        finally:
            self.app.close()
            self.app.running = False


async def serve(app: Any, on_ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM: this process, or with server.workers > 1 a supervisor of that
    many worker processes (workers.py), each of which comes back here as a worker."""
    seat = workers.this_worker()
    if seat is None and app.config.server.workers > 1:
        await workers.supervise(app, on_ready)
        return
    server = ProxyServer(app, listeners=seat.sockets if seat else None)
    base = await server.start()
    if seat:
        seat.ready()  # the supervisor says "listening on" once every worker serves
    elif on_ready:
        on_ready(base)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()
    log.info("stopping: draining in-flight requests")
    await server.stop()
