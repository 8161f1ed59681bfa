"""The numbers behind the status page's charts: a request log with known rows (times, tokens,
statuses, attempts) and usage snapshots with known values, then the series of `usage.history`
(JSON-RPC), of `codexproxy usage history --json` (the CLI) and the tables under the charts of
the dashboard, accounts and keys pages must all say the same, known, numbers. Also: the
buckets survive a restart, follow appends, retention and `logs clear`."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from codexproxy.app import App
from codexproxy.config import load_config
from codexproxy.loghistory import day_start, hour_slots, hour_start
from codexproxy.logstore import LogStore, start_of_today
from codexproxy.models import Account, Window
from codexproxy_plugins.accounts import usage as account_usage
from codexproxy_plugins.admin import charts, rpc, web
from codexproxy_plugins.admin.methods import all_methods

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(tmp_path):
    """An in-process App on a fresh data dir (no upstream needed: nothing here calls it)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "data" / "codexproxy.json")}}))
    application = App(load_config(path))
    application.config_path = path
    yield application
    application.close()


def usage_limit_failover(first: str, then: str) -> list[dict]:
    return [{"account": first, "status": 429, "error": None, "reason": "usage_limit", "ms": 5.0},
            {"account": then, "status": 200, "error": None, "reason": None, "ms": 9.0}]


def write_known_log(app) -> dict:
    """Rows with known contents; returns the ids and times the tests check against.

    In one hour (`anchor`, the middle of the hour two hours ago) for key `laptop`:
      r1 acc1 200, 100+20 tokens, failed over from acc2 (usage_limit): failover + cooldown
      r2 acc1 200,  50+10 tokens, 401 then the same account again (token refreshed): failover only
      r7 acc1 200,   5+ 5 tokens, in the same minute as r1 (the key's busiest minute: 2)
      r6 no key, no account, 401 (an unknown platform key)
    Elsewhere:
      r3 5 hours before: key ci, acc2, 502 with an error: an error and a cooldown (server_error)
      r4 3 days ago: key laptop, acc2, 1000+0 tokens (in the 7 days, not the 24 hours)
      r5 10 days ago: outside every window
    """
    now = time.time()
    acc1 = app.accounts.add(Account(email="one@example.com", access_token="t1"))
    acc2 = app.accounts.add(Account(email="two@example.com", access_token="t2"))
    laptop, _ = app.keys.create("laptop", rpm=3, daily_tokens=150)
    ci, _ = app.keys.create("ci")
    anchor = hour_start(now) - 2 * 3600 + 1800
    minute = anchor // 60 * 60
    rows = [
        dict(id="r1", time=minute + 5, key_id=laptop.id, account_id=acc1.id, status=200, input_tokens=100, output_tokens=20,
             attempts=usage_limit_failover(acc2.id, acc1.id)),
        dict(id="r2", time=minute - 60, key_id=laptop.id, account_id=acc1.id, status=200, input_tokens=50, output_tokens=10,
             attempts=[{"account": acc1.id, "status": 401, "reason": "unauthorized"}, {"account": acc1.id, "status": 200, "reason": None}]),
        dict(id="r7", time=minute + 40, key_id=laptop.id, account_id=acc1.id, status=200, input_tokens=5, output_tokens=5,
             attempts=[{"account": acc1.id, "status": 200, "reason": None}]),
        dict(id="r6", time=minute + 100, key_id=None, account_id=None, status=401, input_tokens=None, output_tokens=None,
             attempts=[], error="invalid platform key"),
        dict(id="r3", time=anchor - 5 * 3600, key_id=ci.id, account_id=acc2.id, status=502, input_tokens=None, output_tokens=None,
             attempts=[{"account": acc2.id, "status": 502, "reason": "server_error"}], error="upstream 502"),
        dict(id="r4", time=now - 3 * 86400, key_id=laptop.id, account_id=acc2.id, status=200, input_tokens=1000, output_tokens=0,
             attempts=[]),
        dict(id="r5", time=now - 10 * 86400, key_id=laptop.id, account_id=acc1.id, status=200, input_tokens=9999, output_tokens=1,
             attempts=[]),
    ]
    for row in sorted(rows, key=lambda r: r["time"]):  # the log is in order of completion
        app.logs.append(row)
    return {"now": now, "anchor": anchor, "acc1": acc1.id, "acc2": acc2.id, "laptop": laptop.id, "ci": ci.id,
            "r3": anchor - 5 * 3600, "r4": now - 3 * 86400, "r6": minute + 100}


def by_start(buckets: list[dict], start: float) -> dict:
    return next(b for b in buckets if b["start"] == start)


def history(app) -> dict:
    answer = rpc.call(app, all_methods(app), {"jsonrpc": "2.0", "id": 1, "method": "usage.history"})
    assert "result" in answer, answer
    return json.loads(json.dumps(answer["result"]))  # what goes over the wire


def check_log_series(data: dict, known: dict) -> None:
    hours, days = data["hours"], data["days"]
    assert len(hours) == 24 and len(days) == 7
    assert [b["start"] for b in hours] == hour_slots(data["generated_at"])
    hour = by_start(hours, hour_start(known["anchor"]))
    assert (hour["requests"], hour["errors"], hour["tokens"]) == (4, 1, 190)
    assert hour["failovers"] == {"unauthorized": 1, "usage_limit": 1}
    assert hour["cooldowns"] == {"usage_limit": 1}
    earlier = by_start(hours, hour_start(known["r3"]))
    assert (earlier["requests"], earlier["errors"], earlier["tokens"], earlier["cooldowns"], earlier["failovers"]) == \
        (1, 1, 0, {"server_error": 1}, {})
    assert sum(b["requests"] for b in hours) == 5 and sum(b["tokens"] for b in hours) == 190
    assert sum(b["requests"] for b in days) == 6 and sum(b["tokens"] for b in days) == 1190  # r4 in, r5 out
    assert sum(b["errors"] for b in days) == 2
    assert by_start(days, day_start(known["r4"]))["tokens"] == 1000


def test_usage_history_rpc_counts_a_known_log(app):
    known = write_known_log(app)
    data = history(app)
    check_log_series(data, known)
    shares = {a["id"]: a["share"] for a in data["accounts"]}
    assert shares[known["acc1"]]["24h"] == {"requests": 3, "tokens": 190, "requests_pct": 75.0, "tokens_pct": 100.0}
    assert shares[known["acc2"]]["24h"] == {"requests": 1, "tokens": 0, "requests_pct": 25.0, "tokens_pct": 0.0}
    assert shares[known["acc2"]]["7d"] == {"requests": 2, "tokens": 1000, "requests_pct": 40.0, "tokens_pct": 84.0}
    keys = {k["name"]: k for k in data["keys"]}
    assert (keys["laptop"]["rpm"], keys["laptop"]["daily_tokens"]) == (3, 150)
    laptop_day = by_start(keys["laptop"]["days"], day_start(known["anchor"]))
    same_day_as_anchor = 1 if day_start(known["r4"]) == day_start(known["anchor"]) else 0  # never, but say why if so
    assert laptop_day == {"start": day_start(known["anchor"]), "requests": 3 + same_day_as_anchor, "tokens": 190, "peak_rpm": 2}
    assert sum(d["tokens"] for d in keys["ci"]["days"]) == 0 and sum(d["requests"] for d in keys["ci"]["days"]) == 1
    assert by_start(keys["laptop"]["days"], day_start(known["r4"]))["tokens"] == 1000


def test_key_stats_come_from_the_history_over_the_whole_log(app):
    known = write_known_log(app)
    old, _ = app.keys.create("old")
    app.logs.append(dict(id="r8", time=known["now"] - 20 * 86400, key_id=old.id, status=200, input_tokens=1, output_tokens=1))
    keys = {k["name"]: k for k in all_methods(app)["keys.list"](app, {})}
    assert keys["laptop"]["last_used"] == known["anchor"] + 40
    # r1, r2 and r7 lie within half an hour of each other at hh:30: all today, or (before 02:30) none.
    today = (3, 190) if known["anchor"] >= start_of_today() else (0, 0)
    assert (keys["laptop"]["requests_today"], keys["laptop"]["tokens_today"]) == today
    assert keys["old"]["last_used"] == known["now"] - 20 * 86400 and keys["old"]["requests_today"] == 0
    assert keys["ci"]["last_used"] == known["r3"]


def test_usage_history_rejects_params(app):
    answer = rpc.call(app, all_methods(app), {"jsonrpc": "2.0", "id": 1, "method": "usage.history", "params": {"days": 30}})
    assert answer["error"]["code"] == rpc.INVALID_PARAMS and "days" in answer["error"]["message"]


def test_buckets_survive_a_restart_and_follow_appends_and_clear(app, tmp_path):
    known = write_known_log(app)
    before = app.logs.history().series(known["now"])
    again = LogStore(app.logs.dir)  # what a restarted proxy (or the CLI) counts from the files
    assert again.history().series(known["now"]) == before
    app.logs.append(dict(id="late", time=known["anchor"], key_id=known["laptop"], account_id=known["acc2"], status=200,
                         input_tokens=7, output_tokens=3, attempts=[]))
    hour = by_start(app.logs.history().series()["hours"], hour_start(known["anchor"]))
    assert (hour["requests"], hour["tokens"]) == (5, 200)
    assert again.history().series()["hours"] != app.logs.history().series()["hours"]  # it did not append: it does not know
    assert LogStore(app.logs.dir).history().series()["hours"] == app.logs.history().series()["hours"]
    again.clear()  # `codexproxy logs clear` in another process
    assert all(b["requests"] == 0 for b in app.logs.history().series()["days"])
    app.logs.append(dict(id="after", time=time.time(), status=200, input_tokens=1, output_tokens=1, attempts=[]))
    assert sum(b["requests"] for b in app.logs.history().series()["days"]) == 1


def test_retention_takes_dropped_rows_back_out(tmp_path):
    logs = LogStore(tmp_path / "logs", retention=100)  # segments of 100 rows; old ones are deleted
    start = time.time() - 3600
    for i in range(120):
        logs.append({"id": f"a{i}", "time": start + i, "status": 200, "input_tokens": 1, "output_tokens": 0})
    history = logs.history()
    for i in range(300):
        logs.append({"id": f"b{i}", "time": start + 200 + i, "status": 200, "input_tokens": 1, "output_tokens": 0})
    kept = logs.count()
    assert kept < 420  # retention dropped whole segments
    deadline = time.time() + 10  # dropped rows are taken out in a thread of their own
    while sum(b["requests"] for b in history.series()["days"]) != kept and time.time() < deadline:
        time.sleep(0.05)
    days = history.series()["days"]
    assert sum(b["requests"] for b in days) == kept and sum(b["tokens"] for b in days) == kept
    assert LogStore(tmp_path / "logs").history().series()["days"] == days


def test_rows_appended_while_the_buckets_are_built_count_once(tmp_path):
    old = LogStore(tmp_path / "logs")
    for i in range(500):
        old.append({"id": f"old{i}", "time": time.time() - 60, "status": 200, "input_tokens": 1, "output_tokens": 0})
    fresh = LogStore(tmp_path / "logs")  # a proxy just started: requests end while it counts the files
    fresh.append({"id": "first", "time": time.time(), "status": 200, "input_tokens": 1, "output_tokens": 0})
    read_files = fresh._rows_newest_first

    def read_with_traffic(seqs, end):
        def row(name):
            return {"id": name, "time": time.time(), "status": 200, "input_tokens": 1, "output_tokens": 0}
        fresh.append(row("before-the-read"))  # already in the file when it is read, past the end the count reads to
        for n, item in enumerate(read_files(seqs, end)):
            if n == 10:
                fresh.append(row("during-the-read"))
            yield item

    fresh._rows_newest_first = read_with_traffic
    counted = fresh.history()
    assert sum(b["requests"] for b in counted.series()["days"]) == 503
    assert sum(b["requests"] for b in LogStore(tmp_path / "logs").history().series()["days"]) == 503


# --- accounts: usage snapshots, resets, headroom ------------------------------------------------

def write_snapshots(app) -> dict:
    """acc1: 5h 30% (reset 2h later), then after that reset 10%; 7d 20% then 25%.
    acc2: 5h 100% until an hour from now; 7d 50%."""
    now = time.time()
    acc1 = app.accounts.add(Account(email="one@example.com", access_token="t1"))
    acc2 = app.accounts.add(Account(email="two@example.com", access_token="t2"))
    t0, t1 = now - 6 * 3600, now - 3 * 3600
    week_reset = now + 3 * 86400
    snap = lambda at, p, p_reset, s: {"time": at, "primary": {"used_percent": p, "window_minutes": 300, "reset_at": p_reset},  # noqa: E731
                                      "secondary": {"used_percent": s, "window_minutes": 10080, "reset_at": week_reset}}
    account_usage.save_snapshot(app, acc1.id, snap(t0, 30.0, t0 + 2 * 3600, 20.0))
    account_usage.save_snapshot(app, acc1.id, snap(t1, 10.0, t1 + 4 * 3600, 25.0))
    account_usage.save_snapshot(app, acc2.id, snap(t1, 100.0, now + 3600, 50.0))
    return {"now": now, "acc1": acc1.id, "acc2": acc2.id, "reset": t0 + 2 * 3600, "t0": t0, "t1": t1}


def test_account_usage_over_time_with_resets_and_headroom(app):
    known = write_snapshots(app)
    data = history(app)
    accounts = {a["id"]: a for a in data["accounts"]}
    one = accounts[known["acc1"]]
    assert [(p["time"], p["5h"]["used"], p["7d"]["used"]) for p in one["usage"]] == [(known["t0"], 30.0, 20.0), (known["t1"], 10.0, 25.0)]
    assert one["resets"] == [{"window": "5h", "at": known["reset"]}]
    assert accounts[known["acc2"]]["resets"] == []
    room = data["pool_headroom"]
    assert room[-1]["time"] == pytest.approx(data["generated_at"])
    assert (room[-1]["5h"], room[-1]["7d"], room[-1]["accounts"]) == (0.9, 1.25, 2)  # (100-10 + 100-100), (100-25 + 100-50)
    # Between acc1's first snapshot and its 5h reset only acc1 is known (30% used); after the reset it counts 0%.
    before_reset = next(r for r in room if known["t0"] < r["time"] < known["reset"])
    after_reset = next(r for r in room if known["reset"] < r["time"] < known["t1"])
    assert (before_reset["5h"], before_reset["accounts"]) == (0.7, 1)
    assert after_reset["5h"] == 1.0
    assert all(r["5h"] is None for r in room if r["time"] < known["t0"])


def test_account_charts_fall_back_without_the_accounts_plugin(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "data" / "s.json")}, "plugins": {"accounts": {"enabled": False}}}))
    application = App(load_config(path))
    try:
        application.accounts.add(Account(email="solo@example.com", access_token="t"))
        data = history(application)
        assert [a["usage"] for a in data["accounts"]] == [[]] and data["pool_headroom"][-1]["5h"] is None
        page = render_page(application, "accounts")
        assert "No usage recorded yet" in page
    finally:
        application.close()


# --- the pictures ---------------------------------------------------------------------------------

def test_chart_geometry_follows_the_numbers():
    chart = charts.bars("t", "T", ["a", "b", "c"], [("ok", "c-ok", [1, 3, 0]), ("bad", "c-bad", [1, 0, 0])], limit=("cap", 2))
    assert [t["label"] for t in chart["yticks"]] == ["0", "1", "2", "3", "4", "5"]  # 4 tall at most: the axis goes to 5
    heights = [(b["tip"], b["h"]) for b in chart["bars"]]
    unit = (chart["y1"] - chart["y0"]) / 5
    assert [h for _, h in heights] == [round(unit, 1), round(unit, 1), round(3 * unit, 1)]  # no bar for a zero
    assert [b["cls"] for b in chart["bars"]] == ["c-ok", "c-bad", "c-bad"]  # b (3) is over the cap of 2: alarm colour
    assert chart["limits"][0]["y"] == round(chart["y1"] - 2 * unit, 1)
    assert chart["table"]["rows"] == [["a", "1", "1", "2"], ["b", "3", "0", "3"], ["c", "0", "0", "0"]]
    line = charts.lines("l", "L", 0, 100, [("u", "c-5h", [(0, 0.0), (50, 50.0), (60, None), (100, 100.0)])])
    x0, x1, y0, y1 = (float(line[k]) for k in ("x0", "x1", "y0", "y1"))
    assert line["paths"] == [{"cls": "c-5h", "d": f"M{x0},{y1} L{(x0 + x1) / 2},{(y0 + y1) / 2}"}]  # 0 and 50 joined
    assert line["dots"] == [{"cls": "c-5h", "cx": x1, "cy": y0}]  # 100 after the break: alone


# --- the pages' tables --------------------------------------------------------------------------

def render_page(app, name: str, query: dict | None = None) -> str:
    response = web._page(app, web.Viewer(None), name, query or {})
    assert response.status == 200, response.body
    assert response.headers["cache-control"] == "no-store" and "script-src 'self'" in response.headers["content-security-policy"]
    return response.body.decode() if isinstance(response.body, bytes) else response.body


def chart_table(page: str, chart_id: str) -> list[list[str]]:
    """The rows (cell texts) of the table behind one chart."""
    m = re.search(rf'<table class="table chart-table" data-chart="{re.escape(chart_id)}">(.*?)</table>', page, re.S)
    assert m, f"no table for chart {chart_id}"
    body = m.group(1).split("<tbody>")[1]
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def column(rows: list[list[str]], header_page: str, chart_id: str, name: str) -> list[int]:
    m = re.search(rf'data-chart="{re.escape(chart_id)}">.*?<thead><tr>(.*?)</tr></thead>', header_page, re.S)
    heads = [html.unescape(re.sub(r"<[^>]+>", "", h)) for h in re.findall(r"<th[^>]*>(.*?)</th>", m.group(1))]
    i = heads.index(name)
    return [int(r[i].replace(",", "")) for r in rows]


def test_dashboard_tables_hold_the_hourly_and_daily_numbers(app):
    known = write_known_log(app)
    page = render_page(app, "")
    hour_label = time.strftime("%a %H:%M", time.localtime(hour_start(known["anchor"])))
    rows = chart_table(page, "requests-24h")
    assert len(rows) == 24
    row = next(r for r in rows if r[0] == hour_label)
    assert row[1:] == ["3", "1", "4"]  # answered, failed, total
    assert sum(column(rows, page, "requests-24h", "Total")) == 5
    tokens = chart_table(page, "tokens-24h")
    assert next(r for r in tokens if r[0] == hour_label)[1] == "190"
    failovers = chart_table(page, "failovers-24h")
    assert next(r for r in failovers if r[0] == hour_label)[1:] == ["1", "1", "2"]  # unauthorized, usage_limit, total
    assert sum(column(failovers, page, "failovers-24h", "usage_limit")) == 1
    assert sum(column(chart_table(page, "cooldowns-24h"), page, "cooldowns-24h", "server_error")) == 1
    assert '<svg class="chart"' in page and 'role="img"' in page and "<title id=\"chart-requests-24h-title\">" in page
    assert "<script>" not in page and "style=" not in page  # the CSP allows neither
    week = render_page(app, "", {"window": "7d"})
    days = chart_table(week, "requests-7d")
    assert len(days) == 7 and sum(column(days, week, "requests-7d", "Total")) == 6
    assert sum(column(chart_table(week, "tokens-7d"), week, "tokens-7d", "tokens")) == 1190
    assert web._page(app, web.Viewer(None), "", {"window": "1y"}).status == 400
    # "Recent errors today" comes from the buckets too: the failed rows of today, newest first.
    listed = re.findall(r"<td class=\"wrap\">([^<]*)</td>", page.split("Recent errors today")[1])
    expected = [error for at, error in ((known["r6"], "invalid platform key"), (known["r3"], "upstream 502"))
                if at >= start_of_today()]
    assert listed == expected


def test_keys_page_tables_hold_tokens_peaks_and_limits(app):
    known = write_known_log(app)
    page = render_page(app, "keys")
    day = time.strftime("%a %Y-%m-%d", time.localtime(day_start(known["anchor"])))
    tokens = chart_table(page, f"key-tokens-{known['laptop']}")
    assert next(r for r in tokens if r[0] == day)[1:] == ["190", "3"]  # tokens, requests
    assert "daily limit 150" in page
    peaks = chart_table(page, f"key-rpm-{known['laptop']}")
    assert next(r for r in peaks if r[0] == day)[1] == "2"
    assert "rpm limit 3" in page
    assert sum(column(chart_table(page, f"key-tokens-{known['ci']}"), page, f"key-tokens-{known['ci']}", "requests")) == 1


def test_accounts_page_tables_hold_usage_resets_headroom_and_shares(app):
    known = write_snapshots(app)
    app.logs.append(dict(id="x", time=time.time(), key_id=None, account_id=known["acc1"], status=200, input_tokens=30,
                         output_tokens=10, attempts=[]))
    page = render_page(app, "accounts")
    usage_rows = chart_table(page, f"usage-{known['acc1']}")
    values = sorted((r[1], r[2]) for r in usage_rows)
    assert values == sorted([("5h used", "30"), ("5h used", "10"), ("7d used", "20"), ("7d used", "25"), ("5h reset", "—")])
    assert 'class="marker c-5h"' in page
    # acc1's two 5h points lie either side of a reset (two lone points), acc2 has one: dots, no 5h line
    figures = [page.split(f'id="chart-usage-{known[a]}"')[1].split("</figure>")[0] for a in ("acc1", "acc2")]
    assert [f.count('<circle class="dot c-5h"') for f in figures] == [2, 1] and not any('class="line c-5h"' in f for f in figures)
    room = chart_table(page, "headroom")
    assert ("5h left", "0.9") in [(r[1], r[2]) for r in room] and ("7d left", "1.2") in [(r[1], r[2]) for r in room]
    share = re.search(r'<table class="table share" id="share">(.*?)</table>', page, re.S).group(1)
    first = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", share.split("<tbody>")[1].split("</tr>")[0])).strip()
    assert first == "one@example.com 1 (100.0%) 40 (100.0%) 1 (100.0%) 40 (100.0%)"
    load = chart_table(page, "load-tokens")
    assert sum(column(load, page, "load-tokens", "one@example.com")) == 40


# --- the CLI and the HTTP API -----------------------------------------------------------------

def test_cli_usage_history_json_is_the_rpc_series(app):
    known = write_known_log(app)
    write_snapshot = account_usage.save_snapshot
    write_snapshot(app, known["acc1"], {"time": time.time() - 600, "primary": {"used_percent": 12.0, "reset_at": time.time() + 999},
                                        "secondary": None})
    cli = subprocess.run([sys.executable, "-m", "codexproxy", "usage", "history", "--json", "-c", str(app.config_path)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    data = json.loads(cli.stdout)
    check_log_series(data, known)
    mine = history(app)
    assert data["keys"] == mine["keys"] and data["days"] == mine["days"]
    assert [(a["id"], a["share"], a["usage"], a["resets"]) for a in data["accounts"]] == \
        [(a["id"], a["share"], a["usage"], a["resets"]) for a in mine["accounts"]]
    assert data["accounts"][0]["usage"][0]["5h"]["used"] == 12.0
    text = subprocess.run([sys.executable, "-m", "codexproxy", "usage", "history", "-c", str(app.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert text.returncode == 0 and "usage_limit 1" in text.stdout and "laptop" in text.stdout


def test_usage_history_over_http_needs_the_admin_token(proxy):
    body = {"jsonrpc": "2.0", "id": 1, "method": "usage.history"}
    assert httpx.post(proxy.url + "/rpc", json=body).status_code == 401
    assert httpx.post(proxy.url + "/rpc", json=body, headers={"authorization": f"Bearer {proxy.key}"}).status_code == 401
    r = httpx.post(proxy.url + "/rpc", json=body, headers={"authorization": f"Bearer {proxy.admin_token}"})
    assert r.status_code == 200 and len(r.json()["result"]["hours"]) == 24
    for path in ("/status", "/status?window=7d", "/status/accounts", "/status/keys"):
        page = httpx.get(proxy.url + path, headers={"accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/status/login")
        page = httpx.get(proxy.url + path, headers={"authorization": f"Bearer {proxy.admin_token}"})
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store" and 'class="chart"' in page.text


def test_requests_through_a_running_proxy_reach_the_charts_and_the_rpc(make_proxy, fake):
    """End to end on the default (local) log: real requests through the proxy, one failing over on
    a 429 from the first account, one refused for a bad key; then the dashboard's numbers tables
    (GET /status, admin token) and `usage.history` over /rpc count exactly those."""
    from tests.conftest import RESPONSES_BODY
    from tests.fakeupstream import B

    proxy = make_proxy(accounts=2)  # routing "ordered": the first account is tried first
    first, second = proxy.fake_accounts
    for acct in (first, second):
        fake.set_default(acct, B.ok(usage={"input_tokens": 100, "output_tokens": 7, "total_tokens": 107}))
    fake.script(first, B.rate_limited(retry_after=600))  # cooling for the rest of the test: all go to `second`
    n = 4
    with proxy.client() as client:
        for _ in range(n):
            r = client.post("/v1/responses", json=RESPONSES_BODY, headers=proxy.auth)
            assert r.status_code == 200 and "response.completed" in r.text, r.text
        assert client.post("/v1/responses", json=RESPONSES_BODY, headers={"authorization": "Bearer sk-wrong"}).status_code == 401
    assert [r.account_id for r in fake.requests] == [first.account_id] + [second.account_id] * n
    deadline = time.monotonic() + 10  # a row is written after its answer; the CLI's reading adds none
    while len(proxy.cli_json("logs")) < n + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    admin = {"authorization": f"Bearer {proxy.admin_token}"}

    for window in ("24h", "7d"):  # the pages first: a /rpc call is a logged request itself
        page = httpx.get(proxy.url + f"/status?window={window}", headers=admin, timeout=30).text
        requests = chart_table(page, f"requests-{window}")
        assert len(requests) == (24 if window == "24h" else 7)
        assert sum(column(requests, page, f"requests-{window}", "answered")) == n
        assert sum(column(requests, page, f"requests-{window}", "failed")) == 1
        assert sum(column(requests, page, f"requests-{window}", "Total")) == n + 1
        assert sum(column(chart_table(page, f"tokens-{window}"), page, f"tokens-{window}", "tokens")) == n * 107
        for chart_id in (f"failovers-{window}", f"cooldowns-{window}"):
            assert sum(column(chart_table(page, chart_id), page, chart_id, "rate_limited")) == 1

    r = httpx.post(proxy.url + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "usage.history"}, headers=admin, timeout=30)
    data = r.json()["result"]
    for buckets in (data["hours"], data["days"]):
        assert sum(b["requests"] for b in buckets) == n + 1 and sum(b["errors"] for b in buckets) == 1
        assert sum(b["tokens"] for b in buckets) == n * 107
        assert [r for b in buckets for r in b["failovers"].items()] == [("rate_limited", 1)]
        assert [r for b in buckets for r in b["cooldowns"].items()] == [("rate_limited", 1)]
    ids = {a["email"]: a["id"] for a in proxy.cli_json("accounts", "list")}
    shares = {a["id"]: a["share"]["24h"] for a in data["accounts"]}
    assert (shares[ids[second.email]]["requests"], shares[ids[second.email]]["tokens"]) == (n, n * 107)
    assert (shares[ids[first.email]]["requests"], shares[ids[first.email]]["tokens"]) == (0, 0)  # it only failed over
    days = {k["name"]: k["days"] for k in data["keys"]}["test"]
    assert (sum(d["requests"] for d in days), sum(d["tokens"] for d in days)) == (n, n * 107)
