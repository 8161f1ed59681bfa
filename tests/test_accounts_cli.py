"""accounts show/update/remove/export, JSON outputs free of tokens, and bad input: one line,
exit 2, nothing stored."""

from __future__ import annotations

import json
import stat

import pytest

from tests.conftest import Proxy


def issued_tokens(fake) -> set[str]:
    """Every access and refresh token the fake ever issued, and the current id_tokens."""
    with fake._lock:
        found = set(fake._access) | set(fake._refresh) | set(fake._dead_refresh)
        found |= {a.id_token for a in fake.accounts.values()}
    return {t for t in found if t}


def assert_no_tokens(fake, *outputs: str) -> None:
    text = "\n".join(outputs)
    leaked = [t[:12] + "…" for t in issued_tokens(fake) if t in text]
    assert not leaked, f"tokens in output: {leaked}"
    assert '"access_token"' not in text and '"refresh_token"' not in text and '"id_token"' not in text


def one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture
def pool(make_proxy) -> Proxy:
    return make_proxy(accounts=2, start=False)


def test_json_outputs_carry_no_tokens(pool, fake):
    first = pool.cli_json("accounts", "list")[0]
    outputs = [pool.cli("accounts", "list", "--json", check=True).stdout,
               pool.cli("accounts", "show", first["id"], "--json", check=True).stdout,
               pool.cli("accounts", "show", first["id"], check=True).stdout,
               pool.cli("accounts", "update", first["id"], "--note", "n", "--json", check=True).stdout,
               pool.cli("accounts", "refresh", "--json", check=True).stdout,
               pool.cli("usage", "--refresh", "--json", check=True).stdout,
               pool.cli("usage", check=True).stdout]
    assert_no_tokens(fake, *outputs)
    assert fake.refresh_calls == 2  # the refresh really happened, and its new tokens stayed hidden


def test_show_in_text_and_json(pool, fake):
    account = pool.cli_json("accounts", "list")[0]
    text = pool.cli("accounts", "show", account["email"], check=True).stdout  # found by email too
    assert account["id"] in text and "status:" in text and "token expires:" in text
    data = pool.cli_json("accounts", "show", account["id"][:10])  # and by a unique prefix
    assert data["id"] == account["id"] and data["has_refresh_token"] is True and data["snapshots"] == []


def test_update_fields_and_switch_off_and_on(pool, fake):
    account = pool.cli_json("accounts", "list")[0]
    data = pool.cli_json("accounts", "update", account["id"], "--group", "team", "--tag", "x", "--tag", "y",
                         "--note", "shared", "--sort", "5", "--label", "work", "--disable")
    assert (data["group"], data["tags"], data["note"], data["sort"], data["label"]) == ("team", ["x", "y"], "shared", 5, "work")
    assert data["enabled"] is False and data["status"] == "disabled"
    assert [a["id"] for a in pool.cli_json("accounts", "list", "--status", "disabled")] == [account["id"]]
    data = pool.cli_json("accounts", "update", account["id"], "--enable", "--group", "")
    assert data["status"] == "active" and data["group"] is None and data["tags"] == ["x", "y"]


def test_update_and_remove_bad_input(pool):
    account = pool.cli_json("accounts", "list")[0]
    one_line_error(pool.cli("accounts", "update", "acc_nope", "--note", "x"), "no single account matches")
    one_line_error(pool.cli("accounts", "update", account["id"]), "nothing to change")
    one_line_error(pool.cli("accounts", "update", account["id"], "--enable", "--disable"), "not allowed with")
    one_line_error(pool.cli("accounts", "update", account["id"], "--sort", "many"), "invalid int")
    one_line_error(pool.cli("accounts", "remove", "acc_nope"), "no single account matches")
    assert pool.cli_json("accounts", "show", account["id"])["note"] is None


def test_remove_deletes_the_account_and_its_snapshots(pool, fake):
    pool.cli("usage", "--refresh", check=True)
    first, second = pool.cli_json("accounts", "list")
    assert pool.cli("accounts", "remove", first["id"], check=True).stdout.startswith(f"removed {first['id']}")
    assert [a["id"] for a in pool.cli_json("accounts", "list")] == [second["id"]]
    snapshots = pool.store_path.with_name("codexproxy.usage_snapshots.json")  # a collection's own file
    kept = json.loads(snapshots.read_text())["usage_snapshots"].values()
    assert kept and all(s["account_id"] != first["id"] for s in kept)


def test_export_writes_private_auth_json_that_imports_back(pool, fake, make_proxy, tmp_path):
    out = tmp_path / "export"
    first = pool.cli_json("accounts", "list")[0]
    written = pool.cli_json("accounts", "export", first["id"], "--out", str(out))
    [entry] = written
    path = out / first["email"] / "auth.json"
    assert entry["file"] == str(path) and stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["auth_mode"] == "chatgpt" and data["tokens"]["account_id"] == first["chatgpt_account_id"]
    assert data["tokens"]["refresh_token"] in issued_tokens(fake) and data["last_refresh"].endswith("Z")
    everything = pool.cli("accounts", "export", "--all", "--out", str(out), check=True)
    assert "rotate" in everything.stdout and len(list(out.glob("*/auth.json"))) == 2
    assert_no_tokens(fake, everything.stdout, everything.stderr)
    other = make_proxy(accounts=0, start=False, name="other")
    imported = other.cli_json("accounts", "import", str(out))
    assert sorted(a["chatgpt_account_id"] for a in imported) == sorted(a["chatgpt_account_id"] for a in pool.cli_json("accounts", "list"))


def test_export_bad_input(pool, tmp_path):
    one_line_error(pool.cli("accounts", "export", "--out", str(tmp_path / "x")), "one account ID or --all")
    one_line_error(pool.cli("accounts", "export", "acc_nope", "--out", str(tmp_path / "x")), "no single account matches")
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(pool.cli("accounts", "export", "--all", "--out", str(blocker)), "cannot write")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"tokens": {}}', "not a Codex auth.json"),
])
def test_unreadable_auth_json_stores_nothing(make_proxy, tmp_path, content, needle):
    proxy = make_proxy(accounts=0, start=False)
    bad = tmp_path / "auth.json"
    bad.write_text(content)
    one_line_error(proxy.cli("accounts", "import", str(bad)), needle)
    missing = proxy.cli("accounts", "import", str(tmp_path / "missing.json"))
    one_line_error(missing, "no such file")
    assert proxy.cli_json("accounts", "list") == []


def test_rpc_account_methods(pool, fake):
    from codexproxy.app import App
    from codexproxy.config import load_config

    app = App(load_config(pool.config_path))
    try:
        table: dict = {}
        for part in app.hook.codexproxy_rpc_methods(app=app):
            table.update(part)
        assert {"accounts.list", "accounts.show", "accounts.update", "accounts.remove", "accounts.refresh", "usage.get",
                "usage.refresh", "login.start", "login.complete", "login.status"} <= set(table)
        listed = table["accounts.list"](app, {})
        first = listed[0]["id"]
        assert table["accounts.update"](app, {"id": first, "tags": ["a"], "enabled": False})["status"] == "disabled"
        assert [a["id"] for a in table["accounts.list"](app, {"tag": "a"})] == [first]
        for params, message in (({"id": first, "sort": "x"}, "sort must be an integer"), ({"id": first, "token": "x"}, "cannot update token"),
                                ({}, "account id"), ({"id": "acc_nope"}, "no single account")):
            with pytest.raises(ValueError, match=message):
                table["accounts.update"](app, params)
        with pytest.raises(ValueError, match="params must be an object"):
            table["accounts.list"](app, [])
        refreshed = table["usage.refresh"](app, {})
        assert refreshed["refreshed"] == [{"id": listed[1]["id"], "ok": True}]  # the disabled one is not polled
        assert table["usage.get"](app, {})["pool"]["accounts"] == 2
        assert table["accounts.remove"](app, {"id": first}) == {"removed": first}
        assert_no_tokens(fake, json.dumps([listed, refreshed, table["accounts.refresh"](app, {})]))
    finally:
        app.close()
