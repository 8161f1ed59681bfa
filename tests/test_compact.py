"""Remote compaction: `POST .../responses/compact` on a pool account, with failover, the body
and the JSON answer passed through unchanged (the encrypted compaction item intact)."""

from __future__ import annotations

import json

import pytest

from tests.fakeupstream import B

COMPACT_BODY = {"model": "gpt-5-codex", "instructions": "You are Codex.",
                "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
                          {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                          {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}]}],
                "tools": [], "parallel_tool_calls": True}


@pytest.mark.parametrize("path", ["/v1/responses/compact", "/responses/compact", "/backend-api/codex/responses/compact"])
def test_compaction_passes_through_on_a_pool_account(proxy, fake, path):
    raw = json.dumps(COMPACT_BODY, separators=(",", ":")).encode()
    with proxy.client() as client:
        r = client.post(path, content=raw, headers={**proxy.auth, "content-type": "application/json",
                                                    "originator": "codex_exec", "user-agent": "codex_exec/0.169.0"})
    assert r.status_code == 200, r.text
    output = r.json()["output"]
    assert output[-1]["type"] == "compaction" and output[-1]["encrypted_content"].startswith("enc_compaction_")
    seen = fake.requests[-1]
    assert seen.path == "/backend-api/codex/responses/compact"
    assert seen.body == raw  # unchanged: no stream/store forced, nothing re-serialised
    assert seen.headers["authorization"] == f"Bearer {proxy.fake_accounts[0].access_token}"
    assert seen.headers["accept"] == "application/json"
    row = proxy.cli_json("logs")[0]
    assert row["status"] == 200 and row["path"] == path


def test_compaction_fails_over_on_429_and_5xx(make_proxy, fake):
    proxy = make_proxy(accounts=3)
    first, second, third = proxy.fake_accounts
    fake.script(first, B.usage_limit(resets_in=600))
    fake.script(second, B.server_error(status=502))
    with proxy.client() as client:
        r = client.post("/v1/responses/compact", json=COMPACT_BODY, headers=proxy.auth)
    assert r.status_code == 200 and r.json()["output"][-1]["type"] == "compaction"
    assert [rec.account_id for rec in fake.requests] == [first.account_id, second.account_id, third.account_id]
    assert [a["status"] for a in proxy.cli_json("logs")[0]["attempts"]] == [429, 502, 200]


def test_a_compaction_the_upstream_refuses_reaches_the_client_as_it_was(proxy, fake):
    fake.script(proxy.fake_accounts[0], B.bad_request(message="input too short to compact"))
    with proxy.client() as client:
        r = client.post("/v1/responses/compact", json=COMPACT_BODY, headers=proxy.auth)
        wrong = client.get("/v1/responses/compact", headers=proxy.auth)
    assert r.status_code == 400 and r.json()["error"]["message"] == "input too short to compact"
    assert wrong.status_code == 405


def test_compaction_names_its_model_as_the_turns_do(proxy, fake):
    """The aliases and a key's bound model apply to the compaction's model too (an effort suffix
    or an alias went to the backend as written, which refused it; a key bound to one model could
    compact with another); a name the pool serves goes byte for byte."""
    with proxy.client() as client:
        for asked, sent in (("gpt-5.5(high)", "gpt-5.5"), ("claude-opus-4-8", "gpt-5.5")):
            r = client.post("/v1/responses/compact", json={**COMPACT_BODY, "model": asked}, headers=proxy.auth)
            assert r.status_code == 200, r.text
            seen = fake.requests[-1].json
            assert seen["model"] == sent and seen["input"] == COMPACT_BODY["input"], (asked, seen["model"])
        bound = proxy.create_key("bound", "--model", "gpt-5-codex")
        r = client.post("/v1/responses/compact", json={**COMPACT_BODY, "model": "gpt-5.5"},
                        headers={"authorization": f"Bearer {bound}"})
        assert r.status_code == 200 and fake.requests[-1].json["model"] == "gpt-5-codex"
    assert proxy.cli_json("logs")[0]["model"] == "gpt-5-codex"
