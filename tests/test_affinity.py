"""Conversation affinity that holds: bound in the store (a restart keeps it), keyed by the
upstream's turn-state owner or the session, moved only on failover; a turn-state never goes
to an account that did not issue it. And the reset_first strategy."""

from __future__ import annotations

from tests.conftest import RESPONSES_BODY
from tests.fakeupstream import B

BALANCED = {"plugins": {"routing": {"strategy": "balanced"}}}


def turn(proxy, **headers):
    with proxy.client() as client:
        r = client.post("/v1/responses", json=RESPONSES_BODY, headers={**proxy.auth, **headers})
    assert r.status_code == 200, r.text
    return r


def test_a_conversation_keeps_its_account_across_a_restart(make_proxy, fake):
    proxy = make_proxy(BALANCED, accounts=3)
    turn(proxy)
    turn(proxy)  # the round-robin cursor now points at the third account
    turn(proxy, **{"session-id": "conv-restart"})
    bound = fake.requests[-1].account_id
    assert bound == proxy.fake_accounts[2].account_id
    proxy.stop()
    proxy.start()  # a fresh process: its cursor starts at the first account again
    turn(proxy, **{"session-id": "conv-restart"})
    assert fake.requests[-1].account_id == bound


def test_the_turn_state_owner_wins_and_never_leaks_to_another_account(make_proxy, fake):
    proxy = make_proxy(BALANCED, accounts=3)
    first_state = turn(proxy).headers["x-codex-turn-state"]
    turn(proxy)
    assert [r.account_id for r in fake.requests] == [a.account_id for a in proxy.fake_accounts[:2]]
    # Balanced would pick the third account now: the turn-state's owner serves instead, and
    # gets its own token back.
    turn(proxy, **{"x-codex-turn-state": first_state})
    assert fake.requests[-1].account_id == proxy.fake_accounts[0].account_id
    assert fake.requests[-1].headers["x-codex-turn-state"] == first_state
    # The owner is exhausted: the turn fails over, and the next account never sees the token.
    fake.script(proxy.fake_accounts[0], B.usage_limit(resets_in=3600))
    turn(proxy, **{"x-codex-turn-state": first_state})
    owner_try, other_try = fake.requests[-2:]
    assert owner_try.account_id == proxy.fake_accounts[0].account_id
    assert owner_try.headers["x-codex-turn-state"] == first_state
    assert other_try.account_id != owner_try.account_id
    assert "x-codex-turn-state" not in other_try.headers
    # A turn-state nobody here issued goes nowhere either.
    turn(proxy, **{"x-codex-turn-state": "ts_forged_000000"})
    assert "x-codex-turn-state" not in fake.requests[-1].headers


def test_a_failover_moves_the_conversation(make_proxy, fake):
    proxy = make_proxy(accounts=2)
    first, second = proxy.fake_accounts
    turn(proxy, **{"session-id": "conv-move"})
    assert fake.requests[-1].account_id == first.account_id
    fake.script(first, B.server_error(status=503))
    turn(proxy, **{"session-id": "conv-move"})
    assert fake.requests[-1].account_id == second.account_id
    proxy.cli("accounts", "update", proxy.cli_json("accounts", "list")[0]["id"], "--enable", check=True)
    turn(proxy, **{"session-id": "conv-move"})  # stays where it moved, though `ordered` prefers the first
    assert fake.requests[-1].account_id == second.account_id


def test_reset_first_spends_the_window_that_resets_soonest(make_proxy, fake):
    proxy = make_proxy({"plugins": {"routing": {"strategy": "reset_first"}}}, accounts=3)
    a, b, c = proxy.fake_accounts
    fake.set_usage(a, primary=10.0, primary_reset_in=4 * 3600)   # least used: least_used would pick it
    fake.set_usage(b, primary=60.0, primary_reset_in=1 * 3600)   # resets soonest, has room
    fake.set_usage(c, primary=30.0, primary_reset_in=2 * 3600)
    proxy.cli("usage", "--refresh", check=True)
    turn(proxy)
    assert fake.requests[-1].account_id == b.account_id
    fake.set_usage(b, primary=100.0)  # no room left: the next soonest
    proxy.cli("usage", "--refresh", check=True)
    turn(proxy)
    assert fake.requests[-1].account_id == c.account_id
