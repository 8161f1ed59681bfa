"""A real redis-server for the tests: its own temp dir and config on a free loopback port.

    server = RedisServer().start()             # RedisMissing when there is no redis-server
    url = server.url                           # redis://127.0.0.1:PORT/0
    server.stop(); server.start()              # the same port again (data kept if appendonly=True)
    server.close()                             # stop and remove the temp dir

Redis is a prerequisite like nginx: `./scripts/dev test` installs it (Debian's redis-server), and
a missing one fails the tests that need it (never a skip). The pytest fixtures `redis_server`
(one per session, emptied before each test) and `redis_url` are defined below; import them into
a test module to use them. Also usable outside pytest (bench/).
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.strict_upstream import TestCA, _die_with_parent, find_binary, free_port

REDIS_CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server")
INSTALL_HINT = ("redis-server is required by the Redis state tests: `./scripts/dev test` installs it "
                "(apt-get install redis-server, as root); elsewhere install Redis and put redis-server on PATH")


class RedisMissing(RuntimeError):
    pass


def redis_binary() -> str:
    return find_binary("redis-server", REDIS_CANDIDATES, RedisMissing(INSTALL_HINT))


class RedisServer:
    """redis-server in the foreground, everything (config, data, log) in one temp dir.

    `password`: requirepass (the URL carries it). `tls`: a TestCA whose server certificate the
    server presents on its TLS port (plain TCP is then off); `url` becomes rediss:// with the CA
    in the query. `appendonly`: keep the data across stop()/start() (a restart test)."""

    def __init__(self, password: str | None = None, tls: TestCA | None = None, appendonly: bool = False) -> None:
        self.binary = redis_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.password = password
        self.tls = tls
        self.appendonly = appendonly
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca_file}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _config(self, port: int) -> str:
        lines = [
            "bind 127.0.0.1",
            f"dir {self.dir}",
            "daemonize no",
            "save ''",  # no RDB snapshots: the tests need no persistence unless appendonly is asked for
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync always",
            f"logfile {self.dir / 'redis.log'}",
            "databases 4",
        ]
        if self.tls:
            lines += ["port 0", f"tls-port {port}", f"tls-cert-file {self.tls.cert_file}",
                      f"tls-key-file {self.tls.key_file}", f"tls-ca-cert-file {self.tls.ca_file}",
                      "tls-auth-clients no"]
        else:
            lines.append(f"port {port}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15) -> "RedisServer":
        last = ""
        for _ in range(5):  # a free port can be taken by a neighbour between our check and the bind
            port = self.port or free_port()
            conf = self.dir / "redis.conf"
            conf.write_text(self._config(port))
            (self.dir / "redis.log").write_text("")
            self.process = subprocess.Popen(
                [self.binary, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT, cwd=self.dir,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                start_new_session=True)  # Ctrl-C reaches pytest, which stops the server itself
            self.port = port
            if self._wait_ready(timeout):
                return self
            last = self.log()
            self._terminate()
            if "Address already in use" not in last or self.appendonly:
                break
            self.port = 0
        raise RuntimeError(f"redis-server did not start ({self.binary}):\n{last[-3000:]}")

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> bool:
        """True once the log says it accepts connections and the port answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if "Ready to accept connections" in self.log():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return True
                except OSError:
                    pass
            time.sleep(0.02)
        return False

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        """Stop the server (start() brings it back on the same port)."""
        self._terminate()

    def close(self) -> None:
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------ fixtures
try:
    import pytest
except ImportError:  # bench/ uses the class alone
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    def start_redis(**kw) -> RedisServer:
        """A started RedisServer; fails the test (never skips) when redis-server is missing."""
        try:
            return RedisServer(**kw).start()
        except RedisMissing as exc:
            pytest.fail(str(exc), pytrace=False)

    @pytest.fixture(scope="session")
    def redis_server():
        server = start_redis()
        yield server
        server.close()

    @pytest.fixture
    def redis_url(redis_server: RedisServer) -> str:
        """The URL of the session's Redis, emptied for this test."""
        with redis_server.client() as client:
            client.flushall()
        return redis_server.url
