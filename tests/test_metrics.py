"""GET /metrics: Prometheus text format, counters from the running proxy, gauges from the store."""

from __future__ import annotations

import re
import threading
import time

import httpx

from tests.adminkit import assert_no_secret, result, secrets_of, set_usage
from tests.conftest import RESPONSES_BODY, read_sse
from tests.fakeupstream import B

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|\+Inf|NaN)$')


def scrape(proxy, headers=None) -> str:
    r = httpx.get(proxy.url + "/metrics", headers=headers or {}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample, checking the exposition format on the way."""
    samples: dict[tuple[str, frozenset], float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name = m.group(1)
        assert any(name == t or name.startswith(t + "_") for t in typed), f"{name} has no # TYPE"
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples[(name, labels)] = float(m.group(4).replace("+Inf", "inf"))
    return samples


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def post(proxy, headers=None):
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={**proxy.auth, **(headers or {})}) as r:
            return r.status_code, read_sse(r)


def test_requests_latency_tokens_and_account_gauges(proxy, fake):
    account_id = set_usage(proxy, fake, 0, primary=42.5, secondary=7.0)
    for _ in range(2):
        assert post(proxy)[0] == 200
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": "Bearer cpk-wrong"})
    samples = parse(scrape(proxy))
    assert value(samples, "codexproxy_requests_total", route="responses", protocol="responses", status="2xx") == 2
    assert value(samples, "codexproxy_requests_total", route="responses", protocol="responses", status="4xx") == 1
    assert value(samples, "codexproxy_request_duration_seconds_count", route="responses") == 3
    assert value(samples, "codexproxy_request_duration_seconds_bucket", route="responses", le="+Inf") == 3
    assert value(samples, "codexproxy_time_to_first_byte_seconds_count", route="responses") == 2
    assert value(samples, "codexproxy_tokens_total", key="test", account=account_id, kind="input") > 0
    assert value(samples, "codexproxy_tokens_total", key="test", account=account_id, kind="output") > 0
    assert value(samples, "codexproxy_account_used_percent", account=account_id, window="5h") == 42.5
    assert value(samples, "codexproxy_account_used_percent", account=account_id, window="7d") == 7.0
    assert value(samples, "codexproxy_account_reset_timestamp_seconds", account=account_id, window="5h") > time.time()
    assert value(samples, "codexproxy_account_status", account=account_id, status="active") == 1
    assert value(samples, "codexproxy_active_requests") == 1  # this scrape
    assert value(samples, "codexproxy_active_streams") == 0
    assert value(samples, "codexproxy_account_inflight", account=account_id) == 0


def test_histogram_buckets_are_cumulative(proxy, fake):
    post(proxy)
    samples = parse(scrape(proxy))
    buckets = sorted((float(dict(labels)["le"].replace("+Inf", "inf")), v) for (name, labels), v in samples.items()
                     if name == "codexproxy_request_duration_seconds_bucket" and dict(labels)["route"] == "responses")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == 1


def test_failovers_and_cooldowns_by_reason(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first = proxy.fake_accounts[0]
    fake.script(first, B.server_error())
    status, events = post(proxy)
    assert status == 200 and events[-1][1] == "response.completed"
    samples = parse(scrape(proxy))
    assert value(samples, "codexproxy_failovers_total", reason="server_error") == 1
    assert value(samples, "codexproxy_cooldowns_total", reason="server_error") == 1
    cooling = [dict(labels)["account"] for (name, labels), v in samples.items()
               if name == "codexproxy_account_status" and dict(labels)["status"] == "cooling" and v == 1]
    assert len(cooling) == 1


def test_active_streams_and_inflight_while_streaming(proxy, fake):
    account_id = result(proxy, "accounts.list")[0]["id"]
    fake.script(proxy.fake_accounts[0], B.slow(delay=0.5, deltas=4))
    worker = threading.Thread(target=post, args=(proxy,))
    worker.start()
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            samples = parse(scrape(proxy))
            if value(samples, "codexproxy_active_streams") == 1:
                break
            time.sleep(0.1)
        assert value(samples, "codexproxy_active_streams") == 1
        assert value(samples, "codexproxy_active_requests") == 2  # the stream and this scrape
        assert value(samples, "codexproxy_account_inflight", account=account_id) == 1
    finally:
        worker.join(20)
    samples = parse(scrape(proxy))
    assert value(samples, "codexproxy_active_streams") == 0
    assert value(samples, "codexproxy_account_inflight", account=account_id) == 0


def test_job_runs(proxy, fake):
    result(proxy, "jobs.run", {"name": "models"})
    samples = parse(scrape(proxy))
    assert value(samples, "codexproxy_job_last_success", job="models") == 1
    assert value(samples, "codexproxy_job_last_run_timestamp_seconds", job="models") > time.time() - 60
    assert value(samples, "codexproxy_job_runs_total", job="models", result="ok") >= 1


def test_optional_token(make_proxy, fake):
    proxy = make_proxy({"metrics": {"token": "scrape-secret-123"}})
    r = httpx.get(proxy.url + "/metrics")
    assert r.status_code == 401 and "metrics.token" in r.text
    assert httpx.get(proxy.url + "/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    parse(scrape(proxy, {"authorization": "Bearer scrape-secret-123"}))
    parse(scrape(proxy, {"authorization": f"Bearer {proxy.admin_token}"}))
    assert httpx.post(proxy.url + "/metrics").status_code == 405


def test_open_without_a_token_and_free_of_secrets_and_emails(proxy, fake):
    post(proxy)
    text = scrape(proxy)
    assert_no_secret(text, secrets_of(proxy), "/metrics")
    # An open /metrics is readable by any local process: accounts by id, never by email.
    account = result(proxy, "accounts.list")[0]
    assert account["email"] and "@" not in text, "an email is in an open /metrics"
    names = {dict(labels)["account"]: dict(labels)["name"] for (name, labels), _ in parse(text).items() if name == "codexproxy_account_info"}
    assert names == {account["id"]: account["id"]}


def test_emails_only_behind_the_metrics_token(make_proxy, fake):
    proxy = make_proxy({"metrics": {"token": "scrape-secret-123"}})
    account = result(proxy, "accounts.list")[0]
    text = scrape(proxy, {"authorization": "Bearer scrape-secret-123"})
    assert_no_secret(text, secrets_of(proxy), "/metrics")
    names = {dict(labels)["name"] for (name, labels), _ in parse(text).items() if name == "codexproxy_account_info"}
    assert names == {account["email"]}


# --- counters in the shared state ------------------------------------------------------------------

from codexproxy.exchange import Exchange, Route  # noqa: E402
from tests.test_shared_state_plugins import make_app  # noqa: E402,F401 (fixture)
from tests.redis_server import redis_server, redis_url  # noqa: E402,F401 (fixtures)


def answered(app, status: int, route: str = "responses") -> None:
    """One request through the admin plugin's observers, as the pipeline reports it."""
    exchange = Exchange(method="POST", path="/v1/responses", query={}, headers={}, body=b"")
    exchange.route = Route(kind="upstream", name=route)
    app.hook.codexproxy_exchange_start(app=app, exchange=exchange)
    exchange.status, exchange.ttfb_ms = status, 30.0
    app.hook.codexproxy_exchange_done(app=app, exchange=exchange)


def rendered(app) -> dict:
    from codexproxy_plugins.admin import metrics
    from codexproxy_plugins.admin import _metrics

    return parse(metrics.render(app, _metrics(app)))


def test_two_proxies_on_one_redis_scrape_the_same_totals(make_app, redis_url):
    from codexproxy_plugins.admin import _metrics

    shared = {"state": {"backend": "redis", "redis_url": redis_url}}
    a, b = make_app("one", shared), make_app("two", shared)
    for status in (200, 200, 502):
        answered(a, status)
    answered(b, 200)
    # Before a flush each process sees the state plus its own pending deltas.
    assert value(rendered(a), "codexproxy_requests_total", route="responses", protocol="responses", status="2xx") == 2
    assert value(rendered(b), "codexproxy_requests_total", route="responses", protocol="responses", status="2xx") == 1
    deadline = time.time() + 10  # the flusher thread runs about once a second
    while time.time() < deadline and (_metrics(a).pending or _metrics(b).pending):
        time.sleep(0.1)
    for app in (a, b):
        samples = rendered(app)
        assert value(samples, "codexproxy_requests_total", route="responses", protocol="responses", status="2xx") == 3
        assert value(samples, "codexproxy_requests_total", route="responses", protocol="responses", status="5xx") == 1
        assert value(samples, "codexproxy_request_duration_seconds_count", route="responses") == 4
        assert value(samples, "codexproxy_request_duration_seconds_bucket", route="responses", le="+Inf") == 4
        assert value(samples, "codexproxy_time_to_first_byte_seconds_bucket", route="responses", le="0.05") == 4
        assert value(samples, "codexproxy_time_to_first_byte_seconds_sum", route="responses") == 0.12
        assert value(samples, "codexproxy_active_requests") == 0  # process-local: none in progress here
    # At shutdown the last deltas go to the state too: the other proxy sees them at once.
    answered(a, 429)
    a.hook.codexproxy_shutdown(app=a)
    assert not _metrics(a).pending and not _metrics(a).flusher.is_alive()
    assert value(rendered(b), "codexproxy_requests_total", route="responses", protocol="responses", status="4xx") == 1


def test_the_embedded_state_scrape_is_exact_before_and_after_a_flush(make_app):
    from codexproxy_plugins.admin import _metrics

    app = make_app("local")
    for status in (200, 200, 404):
        answered(app, status, route="chat")
    before = rendered(app)
    _metrics(app).flush()
    assert not _metrics(app).pending and app.state.keys("metrics:")
    after = rendered(app)
    uptime = ("codexproxy_uptime_seconds", frozenset())
    assert {k: v for k, v in before.items() if k != uptime} == {k: v for k, v in after.items() if k != uptime}
    assert value(after, "codexproxy_requests_total", route="chat", protocol="responses", status="2xx") == 2
    assert value(after, "codexproxy_requests_total", route="chat", protocol="responses", status="4xx") == 1
    buckets = [after[key] for key in after if key[0] == "codexproxy_request_duration_seconds_bucket"]
    assert len(buckets) == 13 and max(buckets) == 3
