"""The proxy's own requests to the upstream (usage polls, the model list) go out with one set of
headers and one TLS policy (codexproxy/outbound.py), as the strict upstream (nginx + TLS) sees them."""
from __future__ import annotations

import time

import pytest
import yaml

from codexproxy.app import App
from codexproxy.config import load_config
from codexproxy.models import Account
from tests.conftest import base_config, deep_merge
from tests.strict_upstream import make_test_ca

SHARED = ("host", "authorization", "chatgpt-account-id", "originator", "user-agent", "accept", "cookie")


@pytest.fixture
def make_app(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    if not fake.ca_file:
        pytest.fail("test_outbound.py needs the TLS upstream (run without --upstream=plain)")
    apps = []

    def make(extra: dict | None = None) -> App:
        path = tmp_path / f"app{len(apps)}.yaml"
        path.write_text(yaml.safe_dump(deep_merge(base_config(tmp_path / f"app{len(apps)}", fake), extra or {})))
        apps.append(App(load_config(path)))
        return apps[-1]

    yield make
    for app in apps:
        app.close()


def add_account(app, fake) -> Account:
    acct = fake.add_account()
    return app.accounts.add(Account.from_tokens(acct.id_token, acct.access_token, acct.refresh_token, last_refresh=time.time()))


def background_requests(app, fake):
    """Poll the usage and fetch the model list; return what the upstream received for each."""
    from codexproxy_plugins.accounts import usage
    from codexproxy_plugins.adapter import refresh_models

    account = add_account(app, fake)
    fake.all_requests.clear()
    assert refresh_models(app)
    usage.poll_account(app, account)
    models = [r for r in fake.all_requests if r.path.endswith("/codex/models")]
    polls = [r for r in fake.all_requests if r.path.endswith("/wham/usage")]
    assert len(models) == 1 and len(polls) == 1, [r.path for r in fake.all_requests]
    return account, models[0], polls[0]


def test_usage_poll_and_model_list_send_the_same_headers(make_app, fake):
    app = make_app({"plugins": {"cookies": {"enabled": True, "cookie": "cf_clearance=abc"}},
                    "upstream": {"originator": "codex_test", "user_agent": "codex_test/9.9"}})
    account, models, poll = background_requests(app, fake)
    assert {h: models.headers.get(h) for h in SHARED} == {h: poll.headers.get(h) for h in SHARED}
    assert poll.headers["authorization"] == f"Bearer {account.access_token}"
    assert poll.headers["chatgpt-account-id"] == account.chatgpt_account_id
    assert (poll.headers["originator"], poll.headers["user-agent"]) == ("codex_test", "codex_test/9.9")
    assert poll.headers["cookie"] == "cf_clearance=abc"  # a plugin's upstream_request hook saw them
    assert poll.headers["host"] == fake.url.split("://")[1]
    assert poll.headers["accept"] == "application/json"


def test_ssl_verify_false_skips_verification_for_both_even_with_a_ca_file(make_app, fake, tmp_path):
    """ssl_verify: false with a ca_file of another CA: neither request verifies (one of them did)."""
    other = make_test_ca(tmp_path / "other-ca", name="some other CA").ca_file
    app = make_app({"upstream": {"ssl_verify": False, "ca_file": other}})
    background_requests(app, fake)


@pytest.mark.parametrize("ca", ["another CA", "the system CAs"])
def test_an_untrusted_certificate_stops_both(make_app, fake, tmp_path, ca):
    from codexproxy_plugins.accounts import usage
    from codexproxy_plugins.adapter import refresh_models

    other = make_test_ca(tmp_path / "other-ca", name="some other CA").ca_file if ca == "another CA" else None
    app = make_app({"upstream": {"ca_file": other}})
    account = add_account(app, fake)
    fake.all_requests.clear()
    assert refresh_models(app) is None
    with pytest.raises(usage.UsageError, match="(?i)certificate"):
        usage.poll_account(app, account)
    assert fake.all_requests == []
