"""Shared fixtures: the fake upstream, and codexproxy run as a user runs it (a subprocess).

    def test_x(make_proxy, fake):
        proxy = make_proxy({"plugins": {"routing": {"strategy": "balanced"}}}, accounts=2)
        r = httpx.post(proxy.url + "/v1/responses", headers=proxy.auth, json={...})
        proxy.cli("accounts", "list", "--json")

The fake upstream runs behind nginx with TLS (tests/strict_upstream.py): `fake.codex_base`,
`fake.issuer`... are https URLs of a server as strict as the real one, and `base_config` makes the
proxy trust the test CA through `upstream.ca_file`. `pytest --upstream=plain` talks to the lenient
fake directly (to tell a proxy bug from an nginx one; never in CI).

Isolation: every proxy subprocess and CLI call gets its own HOME and no CODEXPROXY_* variable of
the outer environment. A proxy whose output shows a crash (a traceback, mitmproxy's "has crashed")
fails the test that ran it, unless the test sets `proxy.allow_log_errors = True`. With CI set in
the environment, a skipped test is a failed one (a missing prerequisite must not pass unseen).
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakeupstream import FakeAccount, FakeUpstream

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_HOMES: str | None = None


def fresh_home() -> str:
    """An empty directory to be a subprocess's HOME (all removed when the test session ends)."""
    global _HOMES
    if _HOMES is None:
        _HOMES = tempfile.mkdtemp(prefix="codexproxy-test-homes-")
        atexit.register(shutil.rmtree, _HOMES, True)
    return tempfile.mkdtemp(prefix="home-", dir=_HOMES)


def clean_env(extra: dict[str, str] | None = None, home: str | os.PathLike | None = None) -> dict[str, str]:
    """The outer environment without CODEXPROXY_* and with a HOME of its own (`home`, else a fresh
    empty one): nothing from the developer's machine (~/.codexproxy, ~/.codex) leaks into a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEXPROXY_")}
    if home is not None:
        Path(home).mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home) if home is not None else fresh_home()
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


CRASH_MARKERS = ("has crashed", "Traceback (most recent call last)")


class Proxy:
    """One codexproxy: its config file and data dir, the CLI, and (once started) the server."""

    live: "weakref.WeakSet[Proxy]" = weakref.WeakSet()  # every Proxy made (crash checks, see below)

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = self.dir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = clean_env(env, home=self.dir / "home")
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self.output: list[str] = []
        self.key: str | None = None
        self.allow_log_errors = False  # set True in a test that provokes a logged traceback on purpose
        self._pump: threading.Thread | None = None
        Proxy.live.add(self)

    def crash_lines(self, since: int = 0) -> list[int]:
        """Indexes (into self.output) of the lines that show a crash."""
        return [i for i in range(since, len(self.output))
                if any(m in self.output[i] for m in CRASH_MARKERS)]

    @property
    def store_path(self) -> Path:
        return Path(self.config["storage"]["path"])

    @property
    def data_dir(self) -> Path:
        return self.store_path.parent

    # --- CLI ------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = False, timeout: float = 60, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [PYTHON, "-m", "codexproxy", *args, "-c", str(self.config_path)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir, input=input,
                                env={**self.env, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"codexproxy {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "--json", check=True)
        return json.loads(result.stdout)

    def import_account(self, fake: FakeUpstream, acct: FakeAccount, *extra: str) -> dict:
        folder = self.dir / "auth" / acct.account_id
        folder.mkdir(parents=True, exist_ok=True)
        path = fake.write_auth_json(acct, str(folder))
        return self.cli_json("accounts", "import", path, *extra)[0]

    def create_key(self, name: str = "test", *extra: str) -> str:
        data = self.cli_json("keys", "create", name, *extra)
        return data["key"]

    @property
    def auth(self) -> dict[str, str]:
        assert self.key, "no platform key created"
        return {"authorization": f"Bearer {self.key}"}

    @property
    def admin_token(self) -> str:
        token = (self.config.get("admin") or {}).get("token")
        return token or (self.data_dir / "admin_token").read_text().strip()

    # --- server ---------------------------------------------------------------------------
    def start(self, *extra: str, timeout: float = 30) -> "Proxy":
        cmd = [PYTHON, "-m", "codexproxy", "run", "-c", str(self.config_path), *extra]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.dir,
                                        env=self.env, bufsize=1)
        ready = threading.Event()

        def pump() -> None:
            assert self.process and self.process.stdout
            for line in self.process.stdout:
                self.output.append(line.rstrip("\n"))
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not ready.wait(timeout) or self.url is None:
            self.stop()
            raise AssertionError("codexproxy did not start:\n" + "\n".join(self.output))
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        code = self.process.returncode
        self.process = None
        if self._pump is not None:  # the last lines (a crash on shutdown) are read before anyone checks
            self._pump.join(5)
        return code

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return "\n".join(self.output)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)


def pytest_addoption(parser):
    parser.addoption("--upstream", choices=("tls", "plain"), default="tls",
                     help="tls (default): the fake upstream behind nginx with TLS, as strict as the real one; "
                          "plain: the lenient fake directly (for telling a proxy bug from an nginx one)")


def start_strict_front(fake: FakeUpstream):
    """nginx with TLS in front of `fake` (its public URLs become the front's); fails the test when
    nginx is missing -- it is a prerequisite like any other, never a reason to skip."""
    from tests.strict_upstream import NginxFront, NginxMissing

    try:
        front = NginxFront(fake.port).start()
    except NginxMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    fake.set_public(front.url, front.ca_file)
    return front


@pytest.fixture(scope="session")
def fake_server(request):
    server = FakeUpstream().start()
    front = None
    try:
        if request.config.getoption("--upstream") == "plain":
            if os.environ.get("CI"):
                pytest.fail("--upstream=plain is for local debugging; CI runs against the TLS upstream")
        else:
            front = start_strict_front(server)
        yield server
    finally:
        if front is not None:
            front.stop()
        server.stop()


@pytest.fixture
def fake(fake_server: FakeUpstream) -> FakeUpstream:
    fake_server.reset()
    return fake_server


def base_config(tmp: Path, fake: FakeUpstream) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "drain_timeout_s": 2},
        "storage": {"path": str(tmp / "data" / "codexproxy.json")},
        "upstream": {"base_url": fake.codex_base, "usage_base_url": fake.usage_base, "stream_idle_timeout_s": 5,
                     "connect_timeout_s": 3, "ssl_verify": True,
                     # the test CA only (like any private CA): the proxy must verify the upstream with it
                     **({"ca_file": fake.ca_file} if fake.ca_file else {})},
        "oauth": {"issuer": fake.issuer, "login_addr": "127.0.0.1:0"},
    }


@pytest.fixture
def make_proxy(tmp_path: Path, fake: FakeUpstream):
    """make_proxy(config_overrides=None, accounts=1, key=True, start=True, env=None) -> Proxy.

    Each account is a new fake account imported through the CLI (proxy.fake_accounts)."""
    made: list[Proxy] = []

    def factory(overrides: dict | None = None, accounts: int = 1, key: bool = True, start: bool = True,
                env: dict[str, str] | None = None, name: str = "proxy") -> Proxy:
        proxy = Proxy(tmp_path / f"{name}{len(made)}", deep_merge(base_config(tmp_path / f"{name}{len(made)}", fake), overrides or {}), env)
        proxy.fake_accounts = []
        for _ in range(accounts):
            acct = fake.add_account()
            proxy.import_account(fake, acct)
            proxy.fake_accounts.append(acct)
        if key:
            proxy.key = proxy.create_key()
        made.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield factory
    for proxy in made:
        proxy.stop()


@pytest.fixture
def proxy(make_proxy) -> Proxy:
    """A running proxy with one account and one platform key."""
    return make_proxy()


def closed_port() -> int:
    """A loopback port nobody listens on (connections to it are refused)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def wait_for(predicate, timeout: float = 15, what: str = "condition"):
    """Poll `predicate` until it returns something true; that value, or AssertionError."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def app(tmp_path: Path, fake: FakeUpstream, monkeypatch):
    """An in-process App on a fresh store pointed at the fake (for plugin-level tests); like the
    subprocesses, it sees its own HOME and no CODEXPROXY_* from the outer environment."""
    from codexproxy.app import App
    from codexproxy.config import load_config

    for name in [n for n in os.environ if n.startswith("CODEXPROXY_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path / "app", fake)))
    application = App(load_config(path))
    yield application
    application.close()


def read_sse(response: httpx.Response) -> list[tuple[float, str, str]]:
    """(arrival time, event, data) for each SSE event of a streamed httpx response."""
    out: list[tuple[float, str, str]] = []
    event, data = "", []
    for line in response.iter_lines():
        if line == "":
            if data or event:
                out.append((time.monotonic(), event or "message", "\n".join(data)))
            event, data = "", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data or event:
        out.append((time.monotonic(), event or "message", "\n".join(data)))
    return out


RESPONSES_BODY = {"model": "gpt-5-codex", "instructions": "", "stream": True, "store": False,
                  "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}


# ----------------------------------------------------------------------------- crashes and skips
@pytest.fixture(autouse=True)
def _proxy_output_has_no_crash():
    """After each test: a traceback or "has crashed" in the output of a proxy (any Proxy, also a
    module-scoped one) printed during the test fails it, unless proxy.allow_log_errors is set."""
    seen = {id(p): len(p.output) for p in list(Proxy.live)}
    yield
    problems = []
    for proxy in list(Proxy.live):
        if proxy.allow_log_errors:
            continue
        crashes = proxy.crash_lines(seen.get(id(proxy), 0))
        if crashes:
            first = crashes[0]
            problems.append(f"{proxy.dir.name}:\n" + "\n".join(proxy.output[max(0, first - 5):first + 40]))
    if problems:
        pytest.fail("a proxy logged a crash (set proxy.allow_log_errors = True if the test provokes it):\n"
                    + "\n\n".join(problems), pytrace=False)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_as_failure(report, what: str) -> None:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"{what} skipped in CI, which is a failure here (a missing prerequisite must not pass unseen): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _skip_as_failure(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped:  # a module-level skip / importorskip
        _skip_as_failure(report, collector.nodeid)


# --- a failed test must not hang the run ------------------------------------------------------------
# A test that times out in the middle of its round leaves its helper threads looping (their stop
# event is never set); non-daemon ones keep the interpreter -- and CI -- waiting after the summary
# until CI's own limit kills it, and then nothing of the run is reported. Name them and leave.

LINGER_GRACE_S = 10.0


def pytest_sessionfinish(session, exitstatus):
    session.config._codexproxy_exitstatus = int(exitstatus)


def _lingering_threads() -> list[threading.Thread]:
    # Thread-pool workers are not daemons either, but the interpreter stops them at exit.
    from concurrent.futures import thread as pool_threads

    pooled = set(getattr(pool_threads, "_threads_queues", {}).keys())
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive() and t not in pooled]


def pytest_unconfigure(config):
    deadline = time.monotonic() + LINGER_GRACE_S
    for thread in _lingering_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t.name for t in _lingering_threads()]
    if lingering:
        sys.stdout.flush()
        sys.stderr.write(f"tests left non-daemon threads running ({', '.join(lingering)}); exiting instead of waiting for them\n")
        sys.stderr.flush()
        atexit._run_exitfuncs()  # the servers the fixtures registered still get stopped
        os._exit(getattr(config, "_codexproxy_exitstatus", 1))
