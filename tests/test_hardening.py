"""Hardening (issue #13), each against the running proxy or the CLI as a user meets them:

- denial of service: mitmproxy's own 413 really closes the connection; a request head must be
  complete within server.head_timeout_s; a burst of 500 connects is answered whole;
- hostile pages and guessing: DNS rebinding (a foreign Host) gets 421 on every route before
  any auth; wrong admin tokens are limited per client address on every admin surface; hook
  tracing writes no secret (not even the one-time login link of --open);
- leftovers and the CLI: a killed writer's temp copy of the store is removed on start; the
  CLI refuses a past expiry like the admin API; a bad argument is one line and exit 2; a busy
  port is reported in our words only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.adminkit import csrf_of
from tests.conftest import PYTHON, RESPONSES_BODY, wait_for


def host_port(proxy) -> tuple[str, int]:
    host, port = proxy.url.split("//")[1].rsplit(":", 1)
    return host, int(port)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float | None]:
    """What arrives until the peer closes (then the seconds it took) or `limit_s` passes (None)."""
    sock.settimeout(0.2)
    data = b""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, time.monotonic() - start
        if not chunk:
            return data, time.monotonic() - start
        data += chunk
    return data, None


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    """One whole response with a Content-Length body (what /health answers)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if sep and m and len(body) >= int(m.group(1)):
            return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def status_of(raw: bytes) -> int | None:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.") else None


# --- denial of service ---------------------------------------------------------------------------

def test_mitmproxys_own_413_closes_the_connection(make_proxy):
    """A chunked body past mitmproxy's body_size_limit (2 x limits.max_body_bytes + 1 MiB) while
    the client is still sending: the 413 says connection: close, and the socket closes."""
    proxy = make_proxy({"limits": {"max_body_bytes": 1000}}, accounts=0)
    sock = socket.create_connection(host_port(proxy), timeout=10)
    try:
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + proxy.key.encode() +
                     b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (100_000, b"x" * 100_000)
        sent = 0
        try:
            while sent < 3_000_000:  # past the limit, still sending when the answer comes
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed_after = read_until_closed(sock, 10)
    finally:
        sock.close()
    assert status_of(data) == 413, data[:300]
    assert b"connection: close" in data.lower()
    assert closed_after is not None, "the 413 said connection: close but the socket stayed open"
    # The proxy lost no file descriptor on the way and serves on.
    assert httpx.get(proxy.url + "/health", timeout=10).status_code == 200


def test_an_incomplete_request_head_times_out(make_proxy):
    proxy = make_proxy({"server": {"head_timeout_s": 1}}, accounts=0, key=False)
    addr = host_port(proxy)
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
        start = time.monotonic()
        data, closed_after = read_until_closed(sock, 8)
    assert closed_after is not None and closed_after < 5, f"still open after {time.monotonic() - start:.1f}s"
    assert status_of(data) == 408 and b"head_timeout_s" in data, data[:300]
    # A head that trickles in a byte at a time is no way around it.
    with socket.create_connection(addr, timeout=10) as sock:
        start = time.monotonic()
        closed = False
        for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - start > 4:
                break
        if not closed:
            _, closed_after = read_until_closed(sock, 4)
            closed = closed_after is not None
    assert closed, "a head trickling in byte by byte kept the connection open"
    # A kept-alive connection may stay idle between requests longer than the head timeout.
    with socket.create_connection(addr, timeout=10) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        sock.sendall(request)
        assert status_of(read_response(sock)) == 200
        time.sleep(1.8)
        sock.sendall(request)
        assert status_of(read_response(sock)) == 200
    assert httpx.get(proxy.url + "/health", timeout=10).status_code == 200


def test_head_timeout_is_validated_config(make_proxy):
    proxy = make_proxy({"server": {"head_timeout_s": 0}}, accounts=0, key=False, start=False)
    result = proxy.cli("keys", "list")
    assert result.returncode == 2 and result.stderr.strip().startswith("config error: server.head_timeout_s:"), result.stderr


BURST = 500
SYN_RETRY_S = 0.9  # Linux re-sends a dropped SYN after 1 s; a loopback handshake otherwise takes microseconds


def test_a_burst_of_500_connects_is_answered_whole(make_proxy):
    """500 connects at once: every one is answered, and none had its SYN dropped by a full
    listen queue (here that costs a second per connection; elsewhere it is a reset)."""
    proxy = make_proxy(accounts=0, key=False)
    host, port = host_port(proxy)

    async def one(start: asyncio.Event) -> tuple[str, float]:
        await start.wait()
        began = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        except (OSError, asyncio.TimeoutError) as exc:
            return f"connect: {exc!r}", 0.0
        connect_s = time.monotonic() - began
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 60)
            return ("ok" if data.startswith(b"HTTP/1.1 200") else f"answer: {data[:80]!r}"), connect_s
        except (OSError, asyncio.TimeoutError) as exc:
            return f"read: {exc!r}", connect_s
        finally:
            writer.close()

    async def burst() -> list[tuple[str, float]]:
        start = asyncio.Event()
        tasks = [asyncio.create_task(one(start)) for _ in range(BURST)]
        await asyncio.sleep(0.1)
        start.set()  # every connect at once
        return await asyncio.gather(*tasks)

    results = asyncio.run(burst())
    failures = [r for r, _ in results if r != "ok"]
    assert not failures, f"{len(failures)} of {BURST} connections got no answer, e.g. {sorted(set(failures))[:3]}"
    dropped = sum(1 for _, connect_s in results if connect_s > SYN_RETRY_S)
    assert dropped == 0, f"{dropped} of {BURST} connects waited for a SYN retry: the listen queue overflowed"


# --- DNS rebinding ----------------------------------------------------------------------------------

ROUTES = [("GET", "/"), ("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/responses"), ("POST", "/v1/chat/completions"),
          ("POST", "/v1/messages"), ("GET", "/status"), ("GET", "/status/login"), ("POST", "/rpc"), ("GET", "/metrics"),
          ("GET", "/backend-api/wham/usage"), ("GET", "/nope")]


def test_a_foreign_host_gets_421_on_every_route_before_auth(make_proxy, fake):
    proxy = make_proxy()
    with proxy.client() as client:
        for host in ("evil.example", "evil.example:48760", "127.0.0.1.evil.example", "localhost.evil.example:1", "[::2]", "0.0.0.0",
                     "attacker", "127.0.0.1:x"):
            for method, path in ROUTES:
                for auth in ({}, proxy.auth, {"authorization": f"Bearer {proxy.admin_token}"}):
                    r = client.request(method, path, headers={"host": host, **auth}, content=json.dumps(RESPONSES_BODY))
                    assert r.status_code == 421, f"Host {host}: {method} {path}: {r.status_code} {r.text[:200]}"
                    assert r.headers["content-type"].startswith("application/json")
                    assert "allowed_hosts" in r.json()["error"]["message"]
        # Its own names, with or without a port, are served.
        port = host_port(proxy)[1]
        for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", "[::1]", f"[::1]:{port}"):
            assert client.get("/health", headers={"host": host}).status_code == 200, host
            r = client.post("/v1/responses", json=RESPONSES_BODY, headers={"host": host, **proxy.auth})
            assert r.status_code == 200, f"{host}: {r.status_code} {r.text[:200]}"
    assert len(fake.requests) == 6  # only the requests that named the proxy went upstream
    # The WebSocket upgrade (Codex's transport) too: a page cannot open a socket through a name of its own.
    for host in ("evil.example", f"evil.example:{port}"):
        for auth in ("", proxy.key, proxy.admin_token):
            assert websocket_upgrade(proxy, host, auth).startswith(b"HTTP/1.1 421 "), host
    assert websocket_upgrade(proxy, f"127.0.0.1:{port}", proxy.key).startswith(b"HTTP/1.1 101 ")
    assert len(fake.requests) == 6


def websocket_upgrade(proxy, host: str, key: str) -> bytes:
    """The status line of a WebSocket upgrade of /v1/responses (the headers Codex sends) naming
    `host`, over a raw socket: a client library would put the URL's own host in the request."""
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (f"GET /v1/responses HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            f"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
            f"openai-beta: responses_websockets=2026-02-06\r\n{auth}\r\n")
    with socket.create_connection(host_port(proxy), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0] + b"\r\n"


def test_allowed_hosts_adds_names(make_proxy, fake):
    proxy = make_proxy({"server": {"allowed_hosts": ["codexproxy.lan", "Box.Example"]}}, accounts=0, key=False)
    with proxy.client() as client:
        for host in ("codexproxy.lan", "codexproxy.lan:8080", "box.example", "127.0.0.1"):
            assert client.get("/health", headers={"host": host}).status_code == 200, host
        assert client.get("/health", headers={"host": "other.lan"}).status_code == 421
    bad = make_proxy({"server": {"allowed_hosts": ["http://x.lan/"]}}, accounts=0, key=False, start=False)
    result = bad.cli("keys", "list")
    assert result.returncode == 2 and "server.allowed_hosts" in result.stderr, result.stderr


# --- guessing the admin token ---------------------------------------------------------------------------

GUESS_LIMIT = 10


def client_from(proxy, source: str) -> httpx.Client:
    """A client whose connections come from `source` (another loopback address: another client)."""
    return httpx.Client(base_url=proxy.url, timeout=15, transport=httpx.HTTPTransport(local_address=source))


def rpc_status(client: httpx.Client, token: str) -> int:
    return client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "health"}, headers={"authorization": f"Bearer {token}"}).status_code


def test_wrong_admin_tokens_are_limited_per_client_address_on_every_surface(make_proxy):
    proxy = make_proxy({"metrics": {"token": "scrape-" + "7" * 20}}, accounts=0, key=False)
    token = proxy.admin_token
    with client_from(proxy, "127.0.0.1") as guesser, client_from(proxy, "127.0.0.2") as admin:
        assert rpc_status(guesser, token) == 200
        # Wrong tokens spread over every surface that checks one; each is refused as wrong.
        surfaces = [
            lambda: rpc_status(guesser, "guess"),
            lambda: guesser.get("/status", headers={"authorization": "Bearer guess"}).status_code,
            lambda: guesser.get("/metrics", headers={"authorization": "Bearer guess"}).status_code,
        ]
        page = guesser.get("/status/login", headers={"accept": "text/html"})
        surfaces.append(lambda: guesser.post("/status/login", data={"csrf": csrf_of(page.text), "token": "guess"},
                                             headers={"accept": "text/html"}).status_code)
        for i in range(GUESS_LIMIT):
            assert surfaces[i % len(surfaces)]() == 401, f"guess {i + 1}"
        # Now this address is refused everywhere, even with the right token, and told when to retry...
        r = guesser.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "health"}, headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and r.json()["error"]["message"]
        assert guesser.get("/status", headers={"authorization": f"Bearer {token}"}).status_code == 429
        assert guesser.get("/metrics", headers={"authorization": f"Bearer {token}"}).status_code == 429
        page = guesser.get("/status/login", headers={"accept": "text/html"})
        r = guesser.post("/status/login", data={"csrf": csrf_of(page.text), "token": token}, headers={"accept": "text/html"})
        assert r.status_code == 429
        # ...while the admin at another address is not locked out on any surface.
        assert rpc_status(admin, token) == 200
        assert admin.get("/status", headers={"authorization": f"Bearer {token}"}).status_code == 200
        assert admin.get("/metrics", headers={"authorization": f"Bearer {token}"}).status_code == 200
        page = admin.get("/status/login", headers={"accept": "text/html"})
        r = admin.post("/status/login", data={"csrf": csrf_of(page.text), "token": token}, headers={"accept": "text/html"})
        assert r.status_code == 303


def test_guess_limiter_keys_and_forgets(tmp_path):
    from codexproxy.state import LocalState
    from codexproxy.store import Store
    from plugins.admin.session import GuessLimiter

    assert GuessLimiter.client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert GuessLimiter.client_key("2001:db8::1") == GuessLimiter.client_key("2001:db8::ffff") == "2001:db8::/64"
    limiter = GuessLimiter(LocalState(Store(tmp_path / "store.json")), per_minute=2, window_s=0.5)
    for _ in range(2):
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") and limiter.retry_after("10.0.0.2") is None
    wait_for(lambda: GuessLimiter.retry_after(limiter, "10.0.0.1") is None, 3, "the window to pass")


# --- tracing writes no secret ------------------------------------------------------------------------

def test_hook_tracing_with_open_does_not_log_the_login_link(make_proxy, tmp_path):
    seen = tmp_path / "opened.txt"
    opener = tmp_path / "browser.sh"
    opener.write_text(f"#!/bin/sh\necho \"$1\" >> {seen}\n")
    opener.chmod(opener.stat().st_mode | stat.S_IEXEC)
    proxy = make_proxy(start=False, env={"BROWSER": f"{opener} %s", "CODEXPROXY_TRACE_HOOKS": "1"})
    proxy.start("--open", "-v")
    url = wait_for(lambda: seen.exists() and seen.read_text().strip(), 15, "the browser to be opened")
    otp = url.split("otp=")[1]
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth, timeout=30)
    httpx.post(proxy.url + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "keys.list"},
               headers={"authorization": f"Bearer {proxy.admin_token}"}, timeout=30)
    proxy.stop()
    text = proxy.log_text()
    assert "done codexproxy_browser_url" in text  # tracing was on
    for secret in (otp, proxy.key, proxy.admin_token, proxy.fake_accounts[0].access_token):
        assert secret not in text, f"a secret ({secret[:6]}…) is in the log"


# --- leftovers and the CLI ---------------------------------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_temp_copy_is_removed_on_start(make_proxy):
    proxy = make_proxy(accounts=0, key=False, start=False)
    store = proxy.store_path
    store.parent.mkdir(parents=True, exist_ok=True)
    stale = store.with_name(f".{store.name}.{dead_pid()}.140000000000.tmp")
    stale.write_text('{"accounts": {"1": {"refresh_token": "secret"}}}')
    live = store.with_name(f".{store.name}.{os.getpid()}.1.tmp")  # a writer that is still alive
    live.write_text("{}")
    other = store.with_name(f".{store.name}.notapid.1.tmp")
    other.write_text("{}")
    try:
        assert proxy.cli("keys", "list").returncode == 0
        assert not stale.exists(), "the temp copy of a dead writer is still there"
        assert live.exists() and other.exists(), "a temp file that is not a dead writer's was removed"
    finally:
        live.unlink(missing_ok=True)
        other.unlink(missing_ok=True)


def test_kill_9_mid_write_leaves_no_temp_copy_after_the_next_start(make_proxy):
    """A real writer killed between writing its temp file and renaming it."""
    proxy = make_proxy(accounts=0, key=False, start=False)
    script = (
        "import os, signal, sys\n"
        "from codexproxy import store as s\n"
        "def die(src, dst): os.kill(os.getpid(), signal.SIGKILL)\n"
        "s.os.replace = die\n"
        "s.KeyRepo(s.Store(sys.argv[1])).create('x')\n"
    )
    child = subprocess.run([PYTHON, "-c", script, str(proxy.store_path)], cwd=str(proxy.dir.parent), env=proxy.env, timeout=60)
    assert child.returncode == -9
    leftovers = list(proxy.data_dir.glob(".*.tmp"))
    assert leftovers, "the killed writer left no temp file: the test proves nothing"
    assert proxy.cli("keys", "list").returncode == 0
    assert not list(proxy.data_dir.glob(".*.tmp"))


DISK_CALLS = """\
import json, os, sys
calls = []  # ("open", path, is_dir, fd) / ("fsync", fd) / ("replace", src, dst), in the order made
real_open, real_fsync, real_replace = os.open, os.fsync, os.replace
def traced_open(path, flags, *a, **kw):
    fd = real_open(path, flags, *a, **kw)
    calls.append(("open", os.fspath(path), bool(flags & os.O_DIRECTORY), fd))
    return fd
def traced_fsync(fd):
    fd = fd if isinstance(fd, int) else fd.fileno()
    calls.append(("fsync", fd))
    return real_fsync(fd)
def traced_replace(src, dst, *a, **kw):
    calls.append(("replace", os.fspath(src), os.fspath(dst)))
    return real_replace(src, dst, *a, **kw)
os.open, os.fsync, os.replace = traced_open, traced_fsync, traced_replace
from codexproxy.cli import main
try:
    code = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as fh:
        json.dump(calls, fh)
sys.exit(code)
"""


def test_the_store_syncs_its_directory_after_the_rename(make_proxy, tmp_path):
    """A store write is durable across a power cut only once the rename is on disk: after each
    os.replace of the temp copy onto the store, the data dir itself is opened and fsync'ed. The
    CLI runs as a user runs it, with os.open/os.fsync/os.replace wrapped to record the order."""
    proxy = make_proxy(accounts=0, key=False, start=False)
    record = tmp_path / "calls.json"
    child = subprocess.run([PYTHON, "-c", DISK_CALLS, str(record), "keys", "create", "laptop", "-c", str(proxy.config_path)],
                           cwd=str(proxy.dir), env=proxy.env, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stdout + child.stderr
    calls = json.loads(record.read_text())
    store, data_dir = str(proxy.store_path), str(proxy.data_dir)
    renames = [i for i, c in enumerate(calls) if c[0] == "replace" and c[2] == store]
    assert renames, f"no rename onto the store: the test proves nothing ({calls})"
    for n, i in enumerate(renames):
        before_next = calls[i + 1:renames[n + 1] if n + 1 < len(renames) else len(calls)]
        dir_fds = [c[3] for c in before_next if c[0] == "open" and c[2] and os.path.realpath(c[1]) == os.path.realpath(data_dir)]
        synced = [c[1] for c in before_next if c[0] == "fsync"]
        assert any(fd in synced for fd in dir_fds), f"rename {n + 1} onto the store: the data dir was not fsync'ed after it ({before_next})"
        temp = calls[i][1]
        temp_fds = [c[3] for c in calls[:i] if c[0] == "open" and c[1] == temp]
        assert temp_fds and temp_fds[-1] in [c[1] for c in calls[:i] if c[0] == "fsync"], "the temp copy was not synced before the rename"


def test_keys_create_refuses_a_past_expiry_like_the_admin_api(make_proxy):
    proxy = make_proxy(accounts=0, key=False, start=False)
    for value in ("2020-01-01", "0d", "yesterday"):
        result = proxy.cli("keys", "create", "old", "--expires", value)
        assert result.returncode == 2, f"--expires {value}: {result.stdout}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("--expires:"), result.stderr
    assert proxy.cli_json("keys", "list") == []
    key_id = proxy.cli_json("keys", "create", "new", "--expires", "30d")["id"]
    assert proxy.cli("keys", "update", key_id, "--expires", "2020-01-01").returncode == 2
    assert proxy.cli("keys", "update", key_id, "--expires", "never").returncode == 0
    # The admin API says the same words about the same value.
    from plugins.admin.methods import BadParams, expires

    with pytest.raises(BadParams, match="must be in the future"):
        expires({"expires": "2020-01-01"})
    assert "must be in the future" in proxy.cli("keys", "create", "old", "--expires", "2020-01-01").stderr


BAD_ARGUMENTS = [
    (("run", "--port", "99999"), "--port"),
    (("run", "--port", "-1"), "--port"),
    (("run", "--port", "http"), "--port"),
    (("run", "--host", ""), "--host"),
    (("run", "--host", "a b"), "--host"),
    (("keys", "create", "x", "--rpm", "0"), "--rpm"),
    (("keys", "create", "x", "--daily-tokens", "-5"), "--daily-tokens"),
    (("keys", "create", "x", "--rpm", "1e3"), "--rpm"),
    (("keys", "create", "bad\x07name"), "name"),
    (("keys", "create", "x", "--expires", "30x"), "--expires"),
    (("rpc", "health", "--timeout", "-1"), "--timeout"),
    (("rpc", "health", "--timeout", "inf"), "--timeout"),
]


@pytest.mark.parametrize("argv,named", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_line_and_exit_2(make_proxy, argv, named):
    proxy = make_proxy(accounts=0, key=False, start=False)
    result = proxy.cli(*argv, timeout=60)
    assert result.returncode == 2, f"{argv}: exit {result.returncode}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], f"{argv}: {result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout


def test_a_busy_port_is_told_in_our_words_only(make_proxy):
    first = make_proxy(accounts=0, key=False)
    port = host_port(first)[1]
    second = make_proxy(accounts=0, key=False, start=False)
    result = second.cli("run", "--port", str(port), timeout=60)
    assert result.returncode == 2
    out = (result.stdout + result.stderr).strip()
    assert out.splitlines() == [f"cannot listen on 127.0.0.1:{port} (address already in use)"], out
    assert "--mode" not in out


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_data_dir() -> dict[str, re.Pattern]:
    """The README's list of what `~/.codexproxy` holds, as {listed name: pattern of the paths it
    stands for}: each bullet's leading `name`, the other file names its text gives in backticks
    (the store's locks), `<name>` filled in with the collection names the bullet lists."""
    text = README.read_text()
    start = text.index("`~/.codexproxy` (the folder of `storage.path`")
    section = text[start:text.index("\n\n", start)]
    listed: dict[str, re.Pattern] = {}
    for bullet in re.split(r"\n- ", section)[1:]:
        ticked = re.findall(r"`([^`]+)`", bullet)
        names = [ticked[0]] + [t for t in ticked[1:] if re.fullmatch(r"[\w.<>/-]+\.(json|lock|jsonl|sqlite3(-wal|-shm)?)", t)]
        collections = [t for t in ticked[1:] if re.fullmatch(r"[a-z_]+", t)]
        for name in names:
            pattern = re.escape(name).replace(re.escape("<hash>"), "[0-9a-f]+").replace("NNNNNNNN", r"\d{8}")
            pattern = pattern.replace(re.escape("<name>"), "(" + "|".join(collections) + ")")
            listed[name] = re.compile(pattern.rstrip("/") + ("(/.*)?" if name.endswith("/") else ""))
    return listed


def test_the_data_dir_holds_only_what_the_readme_says(make_proxy):
    """What ~/.codexproxy holds after a run is exactly the README's list: every path in it is one
    the README names, and every name the README gives is there (except what this run does not
    make: kept conversations, a pending login). run.json goes when the proxy stops; nothing is
    readable by others."""
    listed = readme_data_dir()
    assert {"codexproxy.json", "admin_token", "run.json", "logs/requests-NNNNNNNN.jsonl", "mitmproxy/"} <= set(listed), listed
    proxy = make_proxy()
    with proxy.client() as client:
        assert client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth).status_code == 200
        kept = client.post("/v1/responses", json={**RESPONSES_BODY, "store": True}, headers=proxy.auth)  # an SDK app's
        assert kept.status_code == 200
        assert client.get("/v1/models", headers=proxy.auth).status_code == 200

    def found(writer: int | None = None) -> dict[str, list[str]]:
        """README name -> the paths it stands for; paths no name stands for under None."""
        out: dict = {}
        for path in sorted(proxy.data_dir.rglob("*")):
            rel = path.relative_to(proxy.data_dir).as_posix()
            if rel.startswith("mitmproxy/") or (rel == "logs" and path.is_dir()):
                continue  # mitmproxy's own files; the log folder (its files are checked)
            if writer and re.fullmatch(rf"\.codexproxy\.[\w.]+\.{writer}\.\d+\.tmp", rel):
                continue  # the running proxy's write in progress (renamed onto its file a moment later)
            out.setdefault(next((n for n, p in listed.items() if p.fullmatch(rel)), None), []).append(rel)
        return out

    running = found(writer=proxy.pid)
    assert None not in running, f"in the data dir, not in the README's list: {running[None]}"
    # Made only by what this run may not do: a named lock (codexproxy.json.<hash>.lock) once a job
    # or refresh takes one.
    maybe = {"codexproxy.json.<hash>.lock"}
    expected = set(listed) - maybe
    assert expected <= set(running) <= set(listed), f"listed but not there: {expected - set(running)}"
    proxy.stop()
    stopped = found()
    while_running = {"run.json", "codexproxy.<name>.sqlite3-wal", "codexproxy.<name>.sqlite3-shm"}
    assert None not in stopped and set(stopped) == set(running) - while_running, stopped
    for path in proxy.data_dir.rglob("*"):
        if path.is_file() and not re.search(r"\.(pem|p12|cer)$", path.name):
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
