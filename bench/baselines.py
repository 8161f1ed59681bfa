"""The processes a benchmark run starts on loopback, each on a free port, and stops at the end.

- Upstream: the fake Codex backend in its own process (bench/upstream.py).
- Mitmdump: bare `mitmdump --mode reverse:URL` with the 4-line streaming addon below
  (plain mitmdump buffers SSE whole; this is the floor of codexproxy's core).
- CodexProxy: `python -m codexproxy run` over the fake, accounts imported and a key made with its CLI.
- TLS front: nginx with TLS in front of the fake (tests/strict_upstream.py, as the test-suite
  runs it); mitmdump and codexproxy can be pointed at it instead (`front=`), trusting its test CA.
- LiteLLM: LiteLLM proxy in a venv of its own (bench/.venv-litellm, created here on first use,
  so it never touches the project's dependencies): no database, local cost map, a master key,
  its OpenAI provider pointed at the fake's Responses endpoint with an account's token.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
LITELLM_VENV = BENCH / ".venv-litellm"
# Pinned: a release from before the litellm supply-chain incident of 2026 (1.82.7/1.82.8 were
# malicious and pulled); a benchmark must not install whatever is newest.
LITELLM_SPEC = "litellm[proxy]==1.81.13"
PROFILERS = ("py-spy==0.4.3",)  # to profile the proxy while it serves (--profile)

MITM_ADDON = '''\
def responseheaders(flow):
    if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
        flow.response.stream = True
'''

RESPONSES_BODY = {"model": "gpt-5-codex", "instructions": "", "stream": True, "store": False,
                  "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, ok=(200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Service:
    name = "service"
    proc: subprocess.Popen | None = None
    port = 0
    host = "127.0.0.1"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class Upstream(Service):
    name = "fake upstream"

    def __init__(self, workdir: Path, accounts: int = 2) -> None:
        self.proc = subprocess.Popen([PYTHON, str(BENCH / "upstream.py"), "--accounts", str(accounts), "--auth-dir", str(workdir / "auth")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
        info = json.loads(self.proc.stdout.readline())
        self.url, self.codex_base, self.accounts = info["url"], info["codex_base"], info["accounts"]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.ws_port = int(info["ws_url"].rsplit(":", 1)[1])  # the WebSocket floor (bench/upstream.py)

    def command(self, **cmd) -> str:
        """Send one command; returns what followed the "ok" (empty for most commands)."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        status, _, rest = answer.partition(" ")
        if status != "ok":
            raise RuntimeError(f"fake upstream: {answer}")
        return rest

    def connects(self) -> int:
        """TCP connections the fake has accepted so far."""
        return int(self.command(connects=True))

    def default(self, index: int, behaviour: str, **params) -> None:
        self.command(default=self.accounts[index]["account_id"], behaviour=behaviour, params=params)

    def direct_request(self, body: dict | None = None) -> tuple[str, str, dict[str, str], bytes]:
        acct = self.accounts[0]
        headers = {"authorization": f"Bearer {acct['access_token']}", "chatgpt-account-id": acct["account_id"],
                   "content-type": "application/json", "accept": "text/event-stream"}
        return "POST", "/backend-api/codex/responses", headers, json.dumps(body or RESPONSES_BODY).encode()


class Mitmdump(Service):
    name = "mitmdump"

    def __init__(self, workdir: Path, upstream: Upstream, front=None) -> None:
        """front: a tests.strict_upstream.NginxFront over `upstream` to go through (TLS, its CA trusted)."""
        addon = workdir / "stream_sse.py"
        addon.write_text(MITM_ADDON)
        self.port = free_port()
        target = front.url if front else upstream.url
        tls = ["--set", f"ssl_verify_upstream_trusted_ca={front.ca_file}"] if front else []
        conf = workdir / ("mitm-conf-tls" if front else "mitm-conf")
        self.proc = subprocess.Popen([str(VENV_BIN / "mitmdump"), "-q", "--mode", f"reverse:{target}", "--listen-host", "127.0.0.1",
                                      "--listen-port", str(self.port), "-s", str(addon), "--set", f"confdir={conf}", *tls],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.upstream = upstream
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {self.proc.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mitmdump did not listen")

    def request(self, body: dict | None = None):
        return self.upstream.direct_request(body)


class CodexProxy(Service):
    name = "codexproxy"
    redis = None  # the tests.redis_server.RedisServer its state is on, when bench/run.py put it on Redis

    def __init__(self, workdir: Path, upstream: Upstream, extra: dict | None = None, front=None, name: str | None = None) -> None:
        """front: a tests.strict_upstream.NginxFront over `upstream` to go through (TLS, its CA trusted).
        extra: config sections merged in (e.g. {"state": {"backend": "redis", ...}}); name: its own
        directory under `workdir` when several run at once."""
        import yaml

        self.dir = workdir / (name or ("codexproxy-tls" if front else "codexproxy"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        url = front.url if front else upstream.url
        config = {"server": {"host": "127.0.0.1", "port": self.port, "drain_timeout_s": 1},
                  "storage": {"path": str(self.dir / "data" / "codexproxy.json")},
                  "upstream": {"base_url": url + "/backend-api/codex", "usage_base_url": url + "/backend-api",
                               "stream_idle_timeout_s": 60, **({"ca_file": front.ca_file} if front else {})},
                  "oauth": {"issuer": url, "login_addr": "127.0.0.1:0"}}
        for section, values in (extra or {}).items():
            config.setdefault(section, {}).update(values)
        self.config_path = self.dir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.store_path = Path(config["storage"]["path"])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CODEXPROXY_")}
        self.cli("accounts", "import", *[a["auth_json"] for a in upstream.accounts])
        self.key = json.loads(self.cli("keys", "create", "bench", "--json"))["key"]
        self.account_ids = [a["id"] for a in json.loads(self.cli("accounts", "list", "--json"))]
        self.upstream = upstream
        self.start()

    def cli(self, *args: str) -> str:
        out = subprocess.run([PYTHON, "-m", "codexproxy", *args, "-c", str(self.config_path)], capture_output=True, text=True,
                             cwd=ROOT, env=self.env, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"codexproxy {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def start(self) -> float:
        """Start serving; returns seconds from launch to the first answered /health."""
        started = time.monotonic()
        self.log = open(self.dir / "proxy.log", "a")
        self.proc = subprocess.Popen([PYTHON, "-m", "codexproxy", "run", "-c", str(self.config_path)], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT, env=self.env, start_new_session=True)
        try:
            wait_http(f"http://{self.host}:{self.port}/health", 60, self.proc)
        except RuntimeError as exc:
            self.log.flush()
            tail = (self.dir / "proxy.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"codexproxy ({self.dir.name}): {exc}: " + " | ".join(tail)) from None
        workers = self.configured_workers()
        if workers > 1:  # /health answers once the first worker serves; run.json lists them once all do
            deadline = time.monotonic() + 60
            while len(self.worker_pids()) < workers:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"codexproxy: {workers} workers did not all start (see {self.dir / 'proxy.log'})")
                time.sleep(0.1)
        return time.monotonic() - started

    def configured_workers(self) -> int:
        import yaml

        return int((yaml.safe_load(self.config_path.read_text()).get("server") or {}).get("workers", 1))

    def worker_pids(self) -> list[int]:
        """The worker processes' pids from the supervisor's run.json (empty with one process)."""
        try:
            return list(json.loads((self.store_path.parent / "run.json").read_text()).get("workers") or [])
        except (OSError, ValueError):
            return []

    def pids(self) -> list[int]:
        """Every process serving: the one process, or the supervisor and its workers."""
        return [self.proc.pid, *self.worker_pids()]

    def headers(self, codex: bool = True) -> dict[str, str]:
        h = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        if codex:
            h.update({"originator": "codex_exec", "user-agent": "codex_exec/0.169.0 (bench)"})
        return h

    def request(self, body: dict | None = None):
        return "POST", "/v1/responses", self.headers(), json.dumps(body or RESPONSES_BODY).encode()

    def reset_accounts(self) -> None:
        """Every account active again (the failover benchmark cools the first one each time)."""
        from codexproxy.store import AccountRepo, Store

        repo = AccountRepo(Store(self.store_path))
        for account_id in self.account_ids:
            repo.update(account_id, status="active", status_until=None, status_reason=None, cooldown_level=0)


def ensure_litellm(log) -> Path:
    """bench/.venv-litellm/bin/litellm, installing it (pinned) on first use. Raises on failure."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    log(f"installing {LITELLM_SPEC} into {LITELLM_VENV.relative_to(ROOT)} (once; a few minutes)")
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_SPEC, *PROFILERS], capture_output=True,
                         text=True, timeout=1500)
    if out.returncode != 0 or not exe.exists():
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["pip failed"]
        raise RuntimeError(f"pip install {LITELLM_SPEC} failed: {tail[0][:160]}")
    return exe


def py_spy() -> Path | None:
    """py-spy from the LiteLLM venv, else from the one running the bench (`pip install py-spy`)."""
    for exe in (LITELLM_VENV / "bin" / "py-spy", Path(sys.executable).parent / "py-spy"):
        if exe.exists():
            return exe
    return None


class LiteLLM(Service):
    name = "litellm"
    MASTER_KEY = "sk-bench-master-key"

    def __init__(self, workdir: Path, upstream: Upstream, log) -> None:
        exe = ensure_litellm(log)
        acct = upstream.accounts[0]
        config = {"model_list": [{"model_name": "gpt-5-codex", "litellm_params": {
            "model": "openai/gpt-5-codex", "api_base": upstream.codex_base, "api_key": acct["access_token"],
            "extra_headers": {"chatgpt-account-id": acct["account_id"]}}}],
            "general_settings": {"master_key": self.MASTER_KEY},
            "litellm_settings": {"drop_params": True, "telemetry": False}}
        path = workdir / "litellm.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.port = free_port()
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true",
               "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true"}
        env.pop("DATABASE_URL", None)
        self.proc = subprocess.Popen([str(exe), "--config", str(path), "--host", self.host, "--port", str(self.port), "--num_workers", "1"],
                                     stdout=open(workdir / "litellm.log", "w"), stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                     start_new_session=True)
        try:
            wait_http(f"http://{self.host}:{self.port}/health/liveliness", 120, self.proc)
        except RuntimeError:
            self.stop()
            raise

    def request(self, body: dict | None = None):
        headers = {"authorization": f"Bearer {self.MASTER_KEY}", "content-type": "application/json"}
        return "POST", "/v1/responses", headers, json.dumps(body or RESPONSES_BODY).encode()
