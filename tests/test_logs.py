"""Request logs through the CLI: the query syntax, clear, export, and the retention cap."""

from __future__ import annotations

import csv
import io
import json


from codexproxy.logstore import LogStore
from tests.conftest import RESPONSES_BODY
from tests.fakeupstream import B


def test_query_syntax(make_proxy, fake):
    proxy = make_proxy(accounts=1)
    acct = proxy.fake_accounts[0]
    with proxy.client() as client:
        client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
        client.post("/v1/chat/completions", json={"model": "gpt-5.5", "messages": [{"role": "user", "content": "x"}]},
                    headers=proxy.auth)
        client.post("/v1/responses", json=RESPONSES_BODY, headers={"authorization": "Bearer cpk-wrong"})
        fake.script(acct, B.server_error(status=503))
        client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)

    def query(*words):
        return proxy.cli_json("logs", *words)

    assert len(query()) == 4
    assert [r["status"] for r in query("status:5xx")] == [503]
    assert [r["status"] for r in query("status:401")] == [401]
    assert {r["path"] for r in query("path:/v1/chat")} == {"/v1/chat/completions"}
    assert len(query("model:gpt-5")) == 3  # substring: gpt-5-codex and gpt-5.5
    assert [r["model"] for r in query("model:=gpt-5.5")] == ["gpt-5.5"]
    assert len(query("key:test")) == 3
    assert len(query("method:POST", "status:2xx")) == 2
    assert [r["status"] for r in query("invalid")] == [401]  # bare words search everywhere
    assert len(query("--limit", "1")) == 1
    text = proxy.cli("logs", "status:5xx", check=True).stdout
    assert "503" in text and "POST /v1/responses" in text


def test_export_and_clear(make_proxy, fake, tmp_path):
    proxy = make_proxy()
    with proxy.client() as client:
        for _ in range(3):
            assert client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth).status_code == 200
    jsonl = proxy.cli("logs", "export", "--format", "jsonl", check=True).stdout.splitlines()
    assert len(jsonl) == 3 and all(json.loads(line)["status"] == 200 for line in jsonl)
    out = tmp_path / "logs.csv"
    proxy.cli("logs", "export", "--format", "csv", "--out", str(out), check=True)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 3 and rows[0]["path"] == "/v1/responses"
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert "cleared 3" in proxy.cli("logs", "clear", check=True).stdout
    assert proxy.cli_json("logs") == []
    with proxy.client() as client:
        client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    assert len(proxy.cli_json("logs")) == 1  # the running proxy keeps logging after a clear


def test_retention_drops_the_oldest_rows_through_the_proxy(make_proxy, fake):
    proxy = make_proxy({"plugins": {"logging": {"retention": 100}}})
    with proxy.client() as client:
        for _ in range(260):
            client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
    rows = proxy.cli_json("logs", "--limit", "1000")
    assert 100 <= len(rows) <= 200  # whole segments are dropped: at least `retention` rows stay
    assert len(list((proxy.data_dir / "logs").glob("*.jsonl"))) <= 3


def test_logstore_skips_a_torn_last_line(tmp_path):
    logs = LogStore(tmp_path)
    logs.append({"id": "a", "status": 200})
    logs.close()
    segment = next(tmp_path.glob("*.jsonl"))
    with open(segment, "ab") as fh:
        fh.write(b'{"id": "torn", "sta')  # a crash mid-write
    reopened = LogStore(tmp_path)
    assert [r["id"] for r in reopened.newest_first()] == ["a"]
    reopened.append({"id": "b", "status": 200})
    assert [r["id"] for r in reopened.newest_first()] == ["b", "a"]


def test_probes_pages_and_scrapes_stay_out_of_the_log_while_the_admin_api_is_logged(make_proxy):
    """Each route's plugin says whether it is logged (Route.logged): the logging plugin knows no
    route of another plugin by name."""
    proxy = make_proxy(accounts=0)
    with proxy.client() as client:
        for path in ("/", "/health", "/healthz", "/status/login", "/metrics"):
            assert client.get(path).status_code < 500, path
        client.get("/", headers={"accept": "text/html"})  # a browser at the base URL: sent to /status
        rpc = client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "health"},
                          headers={"authorization": f"Bearer {proxy.admin_token}"})
        assert rpc.status_code == 200
        assert client.get("/no/such/path").status_code == 404
    assert sorted(r["path"] for r in proxy.cli_json("logs")) == ["/no/such/path", "/rpc"]
