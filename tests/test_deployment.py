"""The README's deployment, run as written: two codexproxy processes on one Redis behind nginx
with `config/nginx-two-instances.conf` (only its placeholders filled in, included from a minimal
main config as /etc/nginx/nginx.conf includes conf.d/). Streamed requests and WebSocket turns
sent to nginx come back complete and event by event, both instances serve some (their own
/metrics), what Codex sends passes through (a 2 MB body, the session_id header), the Host check
still holds behind nginx, and with one instance stopped nginx sends everything to the other."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from websockets.sync.client import connect

from tests.conftest import REPO, RESPONSES_BODY, read_sse
from tests.fakeupstream import B
from tests.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)
from tests.strict_upstream import NginxFront, NginxMissing, nginx_binary
from tests.test_websocket import body, text_of, turn

pytestmark = pytest.mark.slow

TEMPLATE = REPO / "config" / "nginx-two-instances.conf"
PUBLIC_NAME = "codexproxy.example"  # the name clients use for nginx; in the instances' allowed_hosts

MAIN_CONF = """\
# what /etc/nginx/nginx.conf is on a server, here in the foreground with everything under {dir}
daemon off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    include {dir}/codexproxy.conf;
}}
"""


def fill(template: str, listen: str, instances: list[str]) -> str:
    text = template.replace("@LISTEN@", listen).replace("@INSTANCE_1@", instances[0]).replace("@INSTANCE_2@", instances[1])
    assert "@" not in re.sub(r"#.*", "", text), "a placeholder was left unfilled"
    return text


class NginxInFront(NginxFront):
    """nginx on a free loopback port serving the deployment template in front of `instances`
    (host:port each); started, retried and stopped the way NginxFront does it."""

    def __init__(self, instances: list[str]) -> None:
        self.binary = nginx_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-deployment-"))
        self.instances = instances
        self.port = 0
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self, port: int) -> Path:
        (self.dir / "tmp").mkdir(exist_ok=True)
        (self.dir / "codexproxy.conf").write_text(fill(TEMPLATE.read_text(), f"127.0.0.1:{port}", self.instances))
        conf = self.dir / "nginx.conf"
        conf.write_text(MAIN_CONF.format(dir=self.dir, user="user root root;" if os.geteuid() == 0 else ""))
        return conf

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False


@pytest.fixture
def deployment(make_proxy, redis_url):
    """(nginx, a, b): the accounts and the key are made through a's CLI; b shares them through Redis."""
    config = instance_config(redis_url)
    a = make_proxy(config, accounts=2, name="a")
    b = make_proxy(config, accounts=0, key=False, name="b")
    b.key, b.fake_accounts = a.key, a.fake_accounts
    try:
        nginx = NginxInFront([p.url.removeprefix("http://") for p in (a, b)]).start()
    except NginxMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield nginx, a, b
    nginx.stop()


def answered(proxy) -> int:
    """Responses requests (HTTP and WebSocket turns) this instance answered with a 2xx, from its
    own /metrics (counted per process)."""
    text = httpx.get(proxy.url + "/metrics", timeout=30).text
    samples = re.findall(r'^codexproxy_requests_total\{(.*)\} (\S+)$', text, re.M)
    return sum(int(float(n)) for labels, n in samples if 'route="responses"' in labels and 'status="2xx"' in labels)


def through_nginx(nginx, key: str, session: str, body_: dict = RESPONSES_BODY) -> tuple[int, list]:
    headers = {"authorization": f"Bearer {key}", "host": PUBLIC_NAME, "session_id": session}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", nginx.url + "/v1/responses", json=body_, headers=headers) as r:
            return r.status_code, read_sse(r)


def answer_text(events: list) -> str:
    return "".join(json.loads(data)["delta"] for _, event, data in events if event == "response.output_text.delta")


def instance_config(redis_url: str) -> dict:
    return {"state": {"backend": "redis", "redis_url": redis_url}, "server": {"allowed_hosts": [PUBLIC_NAME]}}


def test_the_readme_shows_this_nginx_file_and_instance_config():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Deployment: several instances"):]
    assert "```nginx\n" + TEMPLATE.read_text() + "```" in section
    shown = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    assert shown == instance_config("redis://127.0.0.1:6379/0")


def test_streams_through_nginx_are_complete_event_by_event_and_served_by_both(deployment, fake):
    nginx, a, b = deployment
    for acct in a.fake_accounts:
        fake.set_default(acct, B.drip(delay=0.25, count=4))
    before = answered(a) + answered(b)
    results: list = [None] * 6

    def one(i: int) -> None:
        results[i] = through_nginx(nginx, a.key, f"session-{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for status, events in results:
        assert status == 200, events
        assert events[-1][1] == "response.completed" and answer_text(events) == "t0 t1 t2 t3 "
        deltas = [at for at, event, _ in events if event == "response.output_text.delta"]
        assert deltas[-1] - deltas[0] >= 0.5, "nginx held the stream back instead of passing each event on"
    by_a, by_b = answered(a), answered(b)
    assert by_a >= 1 and by_b >= 1 and by_a + by_b - before == 6, (by_a, by_b)
    sessions = [r.headers.get("session_id") or "" for r in fake.requests if r.path.endswith("/responses")]
    assert sorted(sessions) == [f"session-{i}" for i in range(6)]


def test_websocket_turns_through_nginx_on_both_paths_and_both_instances(deployment, fake):
    nginx, a, b = deployment
    for acct in a.fake_accounts:
        fake.set_default(acct, B.ok(text="over the socket, through nginx", deltas=4))
    served = {"a": answered(a), "b": answered(b)}
    url = "ws://127.0.0.1:%d" % nginx.port
    auth = {"authorization": f"Bearer {a.key}", "openai-beta": "responses_websockets=2026-02-06"}
    # both sockets open at once: least_conn gives the second to the instance without the first
    with connect(url + "/v1/responses", additional_headers=auth, proxy=None, open_timeout=10) as first, \
         connect(url + "/backend-api/codex/responses", additional_headers=auth, proxy=None, open_timeout=10) as second:
        for ws in (first, second, first, second):
            events = turn(ws, body("hi"))
            assert events[-1]["type"] == "response.completed"
            assert text_of(events) == "over the socket, through nginx"
    assert answered(a) - served["a"] == 2 and answered(b) - served["b"] == 2


def test_what_codex_sends_passes_and_the_host_check_holds(deployment, fake):
    nginx, a, b = deployment
    for acct in a.fake_accounts:
        fake.set_default(acct, B.ok(text="big body ok"))
    big = {**RESPONSES_BODY, "input": [{"type": "message", "role": "user",
                                        "content": [{"type": "input_text", "text": "x" * (2 * 1024 * 1024)}]}]}
    status, events = through_nginx(nginx, a.key, "big-session", big)
    assert status == 200 and answer_text(events) == "big body ok"
    assert len(fake.requests[-1].body) > 2 * 1024 * 1024 and fake.requests[-1].headers.get("session_id") == "big-session"

    refused = httpx.post(nginx.url + "/v1/responses", json=RESPONSES_BODY, timeout=30,
                         headers={"authorization": f"Bearer {a.key}", "host": "rebound.example"})
    assert refused.status_code == 421 and refused.json()["error"]["code"] == "misdirected_request"


def test_with_one_instance_stopped_nginx_sends_everything_to_the_other(deployment, fake):
    nginx, a, b = deployment
    for acct in a.fake_accounts:
        fake.set_default(acct, B.ok(text="still served"))
    assert b.stop() == 0
    before = answered(a)
    for i in range(4):
        status, events = through_nginx(nginx, a.key, f"after-stop-{i}")
        assert status == 200 and answer_text(events) == "still served"
    assert answered(a) - before == 4
