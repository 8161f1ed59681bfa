"""Wire conformance: what reaches the upstream through the proxy is what the client would have
sent itself, except a short, named list of differences (codexproxy/wire.py).

Each client runs once straight at a raw capture upstream (tests/capture_upstream.py) and once
through the proxy pointed at that same capture; the two captured requests are compared header
by header (names case-insensitively, values exactly) and field by field (JSON body). Anything
that differs and is not in ALLOWED_HEADER_DIFFERENCES / ALLOWED_BODY_DIFFERENCES fails. Values
that legitimately differ between two runs of one client are compared by SHAPE (VARYING), never
skipped. For the clients whose protocol the proxy converts (Chat Completions, Anthropic
Messages) the body is checked against the README's "What each request field becomes" mapping instead of the client's bytes.

The check that would have caught the shipped bug: every request through the proxy carries
exactly one `Host`, the capture's own authority (the capture answers 400 without one).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import anthropic
import openai
import pytest

from tests.capture_upstream import Answer, CaptureUpstream, CapturedRequest, zstd
from tests.capture_upstream import capture  # noqa: F401 (a fixture)

from tests.npmclients import codex_binary

pytestmark = pytest.mark.client

# Configured values the proxy sends for non-Codex clients (config.py defaults; the test config
# does not change them).
CONFIG_ORIGINATOR = "codex_cli_rs"
CONFIG_USER_AGENT = "codex_cli_rs/0.169.0 (codexproxy)"

# Client headers the Codex backend understands, passed through for every client,
# under the names the client used (codexproxy/wire.py).
PASS_THROUGH = {"version", "x-client-request-id", "thread-id", "openai-beta", "conversation_id", "conversation-id",
                "session_id", "session-id", "accept-language"}
PASS_THROUGH_PREFIXES = ("x-codex-", "x-openai-")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


@dataclass
class Ctx:
    """What the rules need to know about one proxied request."""

    authority: str            # the capture's host:port
    access_token: str         # the pool account's
    account_id: str
    codex_client: bool
    direct: CapturedRequest | None
    proxied: CapturedRequest
    client_sent: dict[str, str] = field(default_factory=dict)  # the client's headers (direct run), lower-case

    @property
    def client_session(self) -> bool:
        return any(h in self.client_sent for h in ("session_id", "session-id"))


def _passes(name: str) -> bool:
    return name in PASS_THROUGH or name.startswith(PASS_THROUGH_PREFIXES)


# name (lower case) -> (the named difference, check(direct value, proxied value, ctx) -> problem or None).
# This is the whole list of codexproxy/wire.py's docstring; nothing else may differ.
Rule = Callable[[str | None, str | None, Ctx], str | None]


def _expect(expected: Callable[[Ctx], str | None]) -> Rule:
    def check(direct: str | None, proxied: str | None, ctx: Ctx) -> str | None:
        want = expected(ctx)
        return None if proxied == want else f"expected {want!r}"
    return check


def _content_length(direct, proxied, ctx):
    if ctx.proxied.framing == "chunked":
        return None if proxied is None else "Content-Length together with chunked"
    return None if proxied == str(len(ctx.proxied.body)) else f"expected the body length {len(ctx.proxied.body)}"


def _session(direct, proxied, ctx):
    if ctx.client_session or direct is not None:
        return None if proxied == direct else "the client's own session header must pass unchanged"
    key = (ctx.proxied.json or {}).get("prompt_cache_key")
    return None if proxied == key else f"expected the body's prompt_cache_key {key!r} (or nothing without one)"


def _hop_by_hop(direct, proxied, ctx):
    if proxied is None:
        return None
    if ctx.proxied.framing == "chunked" and proxied.lower() == "chunked":
        return None  # the proxy's own framing
    return "a hop-by-hop header went upstream"


def _client_or_configured(configured: str) -> Rule:
    def check(direct, proxied, ctx):
        want = direct if ctx.codex_client and direct else configured
        return None if proxied == want else f"expected {want!r} ({'the client' if ctx.codex_client else 'configured'})"
    return check


ALLOWED_HEADER_DIFFERENCES: dict[str, tuple[str, Rule]] = {
    "host": ("the upstream's own authority", _expect(lambda c: c.authority)),
    "authorization": ("the pool account's token", _expect(lambda c: f"Bearer {c.access_token}")),
    "chatgpt-account-id": ("the pool account's id", _expect(lambda c: c.account_id)),
    "content-length": ("recomputed", _content_length),
    "content-encoding": ("gone: the body goes upstream decoded", _expect(lambda c: None)),
    "accept-encoding": ("identity: the proxy parses the SSE", _expect(lambda c: "identity")),
    "accept": ("text/event-stream: the upstream request always streams", _expect(lambda c: "text/event-stream")),
    "content-type": ("application/json: the upstream body is always JSON", _expect(lambda c: "application/json")),
    **{h: ("hop-by-hop: dropped", _hop_by_hop) for h in HOP_BY_HOP},
    "originator": ("the client's for Codex clients, else the configured one", _client_or_configured(CONFIG_ORIGINATOR)),
    "user-agent": ("the client's for Codex clients, else the configured one", _client_or_configured(CONFIG_USER_AGENT)),
    "session_id": ("added from prompt_cache_key when the client sent no session", _session),
    # any other header of a non-Codex client that is not in PASS_THROUGH: may be dropped (only dropped:
    # sent with another value, it is a difference like any other)
    "*": ("a non-Codex client's header outside the pass-through list: dropped", lambda d, p, c: None if p is None else "sent"),
}


# --- values that vary between two runs of the same client: compared by shape -----------------

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
VARYING = (
    # (what, pattern, placeholder). UUIDs are numbered by first appearance within one run, so a
    # session id that must equal another (session-id = prompt_cache_key = thread-id) still must.
    ("uuid: session/thread/turn/window/request/installation ids, prompt_cache_key", UUID, None),
    ("unix-ms timestamp in Codex's turn metadata", re.compile(r'(?<="turn_started_at_unix_ms":)\d{13}'), "<unix-ms>"),
    ("command wall time in a tool result", re.compile(r"(?<=Wall time: )\d+(\.\d+)? seconds"), "<seconds>"),
    ("output chunk id in a tool result (random hex)", re.compile(r"(?<=Chunk ID: )[0-9a-f]{6}\b"), "<hex6>"),
)


class Shaper:
    """Replaces run-specific values by their shape; one per run (UUID numbering is per run)."""

    def __init__(self, dirs: dict[str, str] | None = None) -> None:
        self.uuids: dict[str, str] = {}
        self.dirs = sorted((dirs or {}).items(), key=lambda kv: -len(kv[1]))

    def text(self, value: str) -> str:
        for name, path in self.dirs:
            value = value.replace(path, f"<{name}>")
        value = UUID.sub(lambda m: self.uuids.setdefault(m.group(0).lower(), f"<uuid#{len(self.uuids) + 1}>"), value)
        for _, pattern, placeholder in VARYING[1:]:
            value = pattern.sub(placeholder, value)
        return value

    def json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, dict):  # sorted: Codex serialises some maps in random key order
            return {self.text(k): self.json(value[k]) for k in sorted(value)}
        return value


def json_diff(a: Any, b: Any, path: str = "body") -> list[str]:
    """Every place where two JSON values differ, by path."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            if key not in b:
                out.append(f"{path}.{key}: direct {_short(a[key])} vs proxied <absent>")
            elif key not in a:
                out.append(f"{path}.{key}: direct <absent> vs proxied {_short(b[key])}")
            else:
                out += json_diff(a[key], b[key], f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items direct vs {len(b)} proxied"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_diff(x, y, f"{path}[{i}]")]
    if a != b or type(a) is not type(b):
        return [f"{path}: direct {_short(a)} vs proxied {_short(b)}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) < 300 else text[:300] + "..."


def spellings(req: CapturedRequest) -> dict[str, str]:
    return {name.lower(): name for name, _ in req.headers}


def headers_of(req: CapturedRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in req.headers:
        assert name.lower() not in out, f"{req.target}: header {name} sent twice"
        out[name.lower()] = value
    return out


def check_framing(req: CapturedRequest) -> list[str]:
    """Exactly one Content-Length (matching the body) or chunked; and exactly one Host."""
    problems = []
    lengths, chunked = req.values("content-length"), req.values("transfer-encoding")
    if len(lengths) + len(chunked) != 1 and not (req.method == "GET" and not lengths and not chunked):
        problems.append(f"framing: Content-Length {lengths}, Transfer-Encoding {chunked}")
    if lengths and lengths[0] != str(len(req.body)):
        problems.append(f"framing: Content-Length {lengths[0]} but {len(req.body)} body bytes")
    if req.error:
        problems.append(f"the capture refused the request: {req.error}")
    return problems


def compare_headers(ctx: Ctx, direct_shaper: Shaper, proxied_shaper: Shaper) -> list[str]:
    """The proxied request's headers against the direct one's, under ALLOWED_HEADER_DIFFERENCES."""
    assert ctx.direct is not None
    direct, proxied = headers_of(ctx.direct), headers_of(ctx.proxied)
    problems = []
    for name in sorted(set(direct) | set(proxied) | set(ALLOWED_HEADER_DIFFERENCES) - {"*"}):  # a rule may want one added
        dv, pv = direct.get(name), proxied.get(name)
        if name in ALLOWED_HEADER_DIFFERENCES:
            what, rule = ALLOWED_HEADER_DIFFERENCES[name]
            if (problem := rule(dv, pv, ctx)) is not None:
                problems.append(f"{name} ({what}): {problem}; direct {dv!r} vs proxied {pv!r}")
            continue
        if not ctx.codex_client and not _passes(name) and ALLOWED_HEADER_DIFFERENCES["*"][1](dv, pv, ctx) is None:
            continue
        if _passes(name) and dv is not None and pv is not None and spellings(ctx.direct)[name] != spellings(ctx.proxied)[name]:
            # wire.py: the pass-through headers go "under the names the client used"
            problems.append(f"{name}: spelled {spellings(ctx.direct)[name]!r} by the client, {spellings(ctx.proxied)[name]!r} upstream")
        ds = direct_shaper.text(dv) if dv is not None else None
        ps = proxied_shaper.text(pv) if pv is not None else None
        if ds != ps:
            problems.append(f"{name}: direct {dv!r} vs proxied {pv!r}" + (f" (shapes {ds!r} vs {ps!r})" if (ds, ps) != (dv, pv) else ""))
    return problems


def assert_host(cap: CaptureUpstream, reqs: list[CapturedRequest]) -> None:
    """The bug that shipped: every request through the proxy has exactly one Host, the capture's."""
    assert reqs, "nothing reached the capture"
    for req in reqs:
        assert req.values("host") == [cap.authority], f"{req.method} {req.target}: Host {req.values('host')}, error {req.error}"


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def wire_proxy(make_proxy, capture):
    """A proxy (one fake account imported through the CLI) whose upstream is the capture."""
    proxy = make_proxy({"upstream": {"base_url": capture.codex_base}})
    proxy.account = proxy.fake_accounts[0]
    return proxy


def ctx_for(cap: CaptureUpstream, proxy, direct, proxied, codex_client: bool) -> Ctx:
    return Ctx(authority=cap.authority, access_token=proxy.account.access_token, account_id=proxy.account.account_id,
               codex_client=codex_client, direct=direct, proxied=proxied,
               client_sent=headers_of(direct) if direct is not None else {})


# --- Codex CLI -------------------------------------------------------------------------------

@dataclass
class CodexRun:
    home: Path
    cwd: Path
    base_url: str
    key: str
    proxy: Any = None  # its log goes into a failure message
    outputs: list[subprocess.CompletedProcess] = field(default_factory=list)

    def run(self, *args: str, resume: bool = False) -> subprocess.CompletedProcess:
        provider = (f'model_providers.wire={{name="wire",base_url="{self.base_url}",'
                    f'env_key="WIRE_TEST_KEY",wire_api="responses"}}')
        cmd = [codex_binary(), "exec", *(["resume", "--last"] if resume else []), "--skip-git-repo-check",
               "-c", "model_provider=wire", "-c", provider, "-m", "gpt-5-codex", *args]
        env = {**os.environ, "CODEX_HOME": str(self.home), "WIRE_TEST_KEY": self.key}
        env.pop("OPENAI_API_KEY", None)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=self.cwd,
                                stdin=subprocess.DEVNULL)
        log = "\n".join(self.proxy.output[-40:]) if self.proxy is not None else ""
        assert result.returncode == 0, f"codex exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}\n{log}"
        self.outputs.append(result)
        return result

    def shaper(self) -> Shaper:
        return Shaper({"codex_home": str(self.home), "cwd": str(self.cwd)})


def codex_runs(tmp_path: Path, cap: CaptureUpstream, proxy) -> tuple[CodexRun, CodexRun]:
    runs = []
    for name, base, key in (("direct", cap.codex_base, "sk-direct-dummy"), ("proxied", proxy.url + "/v1", proxy.key)):
        home, cwd = tmp_path / f"{name}-codex-home", tmp_path / f"{name}-work"
        home.mkdir()
        cwd.mkdir()
        runs.append(CodexRun(home, cwd, base, key, proxy=proxy if name == "proxied" else None))
    return runs[0], runs[1]


def compare_codex(cap: CaptureUpstream, proxy, direct_reqs, proxied_reqs, direct_run: CodexRun, proxied_run: CodexRun):
    assert len(direct_reqs) == len(proxied_reqs), (
        f"{len(direct_reqs)} requests direct vs {len(proxied_reqs)} through the proxy")
    ds, ps = direct_run.shaper(), proxied_run.shaper()
    problems = []
    for i, (d, p) in enumerate(zip(direct_reqs, proxied_reqs)):
        problems += [f"request {i}: {x}" for x in check_framing(p) + check_framing(d)]
        if (d.method, d.target, d.version) != (p.method, p.target, p.version):
            problems.append(f"request {i}: request line {d.method} {d.target} {d.version} vs {p.method} {p.target} {p.version}")
        # bodies first, so UUIDs are numbered in the body's order on both sides
        problems += [f"request {i}: {x}" for x in json_diff(ds.json(d.json), ps.json(p.json))]
        ctx = ctx_for(cap, proxy, d, p, codex_client=True)
        problems += [f"request {i}: {x}" for x in compare_headers(ctx, ds, ps)]
    assert not problems, "the proxy changed the request beyond the named differences:\n" + "\n".join(problems)


@pytest.fixture
def codex_pair(tmp_path, capture, wire_proxy):
    codex_binary()
    return codex_runs(tmp_path, capture, wire_proxy)


def _run_twice(capture, codex_pair, answers: list[Answer], *args: str, resume_args: tuple | None = None,
               response_headers: tuple = ()):
    """The same Codex session straight at the capture, then through the proxy: the /responses
    requests of each run."""
    got = []
    for run in codex_pair:
        capture.reset()
        capture.response_headers = list(response_headers)
        capture.script(*answers)
        run.run(*args)
        if resume_args is not None:
            capture.script(*answers)
            run.run(*resume_args, resume=True)
        got.append(list(capture.responses()))
    assert_host(capture, list(capture.requests))  # the proxied run: its /responses and any other request
    return got


def test_codex_plain_turn(capture, wire_proxy, codex_pair):
    direct, proxied = _run_twice(capture, codex_pair, [Answer.text("Hello over the wire")], "say hello")
    assert all("Hello over the wire" in run.outputs[-1].stdout for run in codex_pair)
    assert len(direct) == 1
    compare_codex(capture, wire_proxy, direct, proxied, *codex_pair)


def test_codex_tool_turn(capture, wire_proxy, codex_pair):
    call = Answer.function_call("exec_command", {"cmd": "echo wire-tool-ok"}, call_id="call_wire_1")
    # the upstream's affinity token: Codex sends it back on the turn's next request
    direct, proxied = _run_twice(capture, codex_pair, [call, Answer.text("The command printed it")],
                                 "--sandbox", "danger-full-access", "-c", "approval_policy=never", "run echo",
                                 response_headers=[("x-codex-turn-state", "ts-capture-1")])
    assert len(direct) == 2
    assert direct[1].header("x-codex-turn-state") == "ts-capture-1"
    for reqs in (direct, proxied):
        outputs = [i for i in reqs[1].json["input"] if i.get("type") == "function_call_output"]
        assert outputs and outputs[0]["call_id"] == "call_wire_1" and "wire-tool-ok" in json.dumps(outputs[0])
    compare_codex(capture, wire_proxy, direct, proxied, *codex_pair)


def test_codex_resume_last(capture, wire_proxy, codex_pair):
    direct, proxied = _run_twice(capture, codex_pair, [Answer.text("First answer")], "say hello",
                                 resume_args=("and again",))
    assert len(direct) == 2
    for reqs in (direct, proxied):
        assert "First answer" in json.dumps(reqs[1].json["input"])  # the second turn carries the first
        assert reqs[0].json["prompt_cache_key"] == reqs[1].json["prompt_cache_key"]
    compare_codex(capture, wire_proxy, direct, proxied, *codex_pair)


# --- openai SDK: Responses API (passed through, normalised) ---------------------------------

# Body fields the proxy changes for the Responses API, by the Codex backend's own
# rules: field -> (why, check(client value, proxied value) -> problem or None).
ALLOWED_BODY_DIFFERENCES: dict[str, tuple[str, Callable[[Any, Any], str | None]]] = {
    "stream": ("must be true upstream", lambda d, p: None if p is True else "expected true"),
    "store": ("must be false upstream", lambda d, p: None if p is False else "expected false"),
    **{f: ("rejected by the backend, stripped", lambda d, p: None if p is None else "expected it stripped")
       for f in ("temperature", "top_p", "max_output_tokens", "truncation", "user", "previous_response_id")},
    # a conversation the proxy keeps for previous_response_id (store not false) carries its
    # reasoning: the encrypted reasoning is asked for, nothing else is added
    "include": ("gains reasoning.encrypted_content when the proxy keeps the conversation",
                lambda d, p: None if p == d or (isinstance(p, list) and set(d or []) <= set(p)
                                                and set(p) - set(d or []) == {"reasoning.encrypted_content"})
                else "expected the client's include"),
    # the Responses API's own meaning of a string input, spelled out (the adapter's normalisation)
    "input": ("a string input becomes one user message item",
              lambda d, p: None if p == d or (isinstance(d, str) and p == [
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": d}]}])
              else "expected the client's input"),
}


def compare_body(direct: dict, proxied: dict) -> list[str]:
    problems = []
    for key in list(direct) + [k for k in proxied if k not in direct]:
        d, p = direct.get(key, None), proxied.get(key, None)
        if key in ALLOWED_BODY_DIFFERENCES:
            why, check = ALLOWED_BODY_DIFFERENCES[key]
            if (problem := check(d, p)) is not None:
                problems.append(f"body.{key} ({why}): {problem}; direct {_short(d)} vs proxied {_short(p)}")
        elif key not in proxied or key not in direct or d != p:
            problems += json_diff({key: direct.get(key, "<absent>")}, {key: proxied.get(key, "<absent>")})
    return problems


def _sdk_twice(capture, wire_proxy, call: Callable[[Any], Any], direct_base: str, proxied_base: str, factory):
    """One SDK call straight at the capture and once through the proxy: both requests."""
    got = []
    for base, key in ((direct_base, "sk-direct-dummy"), (proxied_base, wire_proxy.key)):
        capture.reset()
        with factory(base_url=base, api_key=key, max_retries=0, timeout=30) as client:
            call(client)
        got.append(capture.wait_for(1, match=lambda r: r.method == "POST")[-1])
    assert_host(capture, list(capture.requests))  # the proxied run
    return got


def _compare_sdk(capture, proxy, direct, proxied, body_check: Callable[[dict, dict], list[str]]):
    problems = check_framing(proxied) + check_framing(direct)
    if (direct.method, direct.target, direct.version) != (proxied.method, proxied.target, proxied.version):
        problems.append(f"request line {direct.method} {direct.target} vs {proxied.method} {proxied.target}")
    ctx = ctx_for(capture, proxy, direct, proxied, codex_client=False)
    problems += compare_headers(ctx, Shaper(), Shaper())
    problems += body_check(direct.json, proxied.json)
    assert not problems, "the proxy changed the request beyond the named differences:\n" + "\n".join(problems)


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_openai_responses(capture, wire_proxy, stream):
    answers = []

    def call(client):
        capture.script(Answer.text("Hi from the wire"))
        try:
            r = client.responses.create(model="gpt-5-codex", input="hi", instructions="be brief", stream=stream,
                                        prompt_cache_key="wire-conversation-1")  # -> the upstream's session_id
        except openai.BadRequestError as exc:
            answers.append(exc.body)
            return
        answers.append("".join(e.delta for e in r if e.type == "response.output_text.delta") if stream else r.output_text)

    direct, proxied = _sdk_twice(capture, wire_proxy, call, capture.codex_base, wire_proxy.url + "/v1", openai.OpenAI)
    # The SDK's own request (no store:false, and no stream:true unless asked) is refused by the
    # backend as it is; through the proxy it is answered.
    refused = {"detail": "Stream must be set to true" if not stream else "Store must be set to false"}
    assert answers == [refused, "Hi from the wire"]
    assert (direct.method, direct.target) == (proxied.method, proxied.target) == ("POST", "/backend-api/codex/responses")
    _compare_sdk(capture, wire_proxy, direct, proxied, compare_body)


# --- converted protocols: chat.completions and anthropic messages ---------------------------
# The client's body is another protocol here: the request line, Host, framing and the
# non-protocol headers are compared as above (the protocol's own headers -- anthropic-version,
# x-api-key -- are among the dropped ones), the body is checked against the README's field mapping.

def _converted_twice(capture, wire_proxy, call, factory, direct_base, proxied_base):
    direct, proxied = _sdk_twice(capture, wire_proxy, call, direct_base, proxied_base, factory)
    assert proxied.method == "POST" and proxied.target == "/backend-api/codex/responses"
    problems = check_framing(proxied)
    ctx = ctx_for(capture, wire_proxy, direct, proxied, codex_client=False)
    problems += compare_headers(ctx, Shaper(), Shaper())
    assert not problems, "the proxy changed the request beyond the named differences:\n" + "\n".join(problems)
    return direct, proxied


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_openai_chat_completions_converted(capture, wire_proxy, stream):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather", "strict": False,
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]

    def call(client):
        capture.script(Answer.text("Sunny"))
        try:
            r = client.chat.completions.create(model="gpt-5.5", messages=messages, tools=tools, stream=stream,
                                               tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                               reasoning_effort="high")
            if stream:
                text = "".join(c.choices[0].delta.content or "" for c in r if c.choices)
            else:
                text = r.choices[0].message.content
        except openai.NotFoundError:
            # straight at the capture: there is no chat route there (404); the request is recorded
            assert str(client.base_url).startswith(capture.url + "/chat-direct")
            return
        assert text == "Sunny"

    _, proxied = _converted_twice(capture, wire_proxy, call, openai.OpenAI, capture.url + "/chat-direct", wire_proxy.url + "/v1")
    body = proxied.json
    assert body["model"] == "gpt-5.5" and body["stream"] is True and body["store"] is False
    assert body["reasoning"]["effort"] == "high"
    assert body["input"] == [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    assert body["tools"] == [{"type": "function", "name": "get_weather", "description": "weather", "strict": False,
                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_anthropic_messages_converted(capture, wire_proxy, stream):
    tools = [{"name": "get_weather", "description": "weather",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    messages = [{"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]

    def call(client):
        capture.script(Answer.text("Sunny"))
        kwargs = dict(model="gpt-5.5", max_tokens=100, system="be brief", messages=messages, tools=tools,
                      metadata={"user_id": "user_wire_session_1"})  # the conversation: prompt_cache_key, session
        try:
            if stream:
                with client.messages.stream(**kwargs) as s:
                    text = s.get_final_text()
            else:
                text = client.messages.create(**kwargs).content[0].text
        except anthropic.NotFoundError:
            assert "/backend-api" not in str(client.base_url) and "anthropic-direct" in str(client.base_url)
            return
        assert text == "Sunny"

    _, proxied = _converted_twice(capture, wire_proxy, call, anthropic.Anthropic,
                                  capture.url + "/anthropic-direct", wire_proxy.url)
    body = proxied.json
    assert body["model"] == "gpt-5.5" and body["stream"] is True and body["store"] is False
    assert body["input"][0] == {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]}
    kinds = [i.get("type") for i in body["input"]]
    assert kinds == ["message", "message", "function_call", "function_call_output"]
    call_item, output = body["input"][2], body["input"][3]
    assert call_item["call_id"] == output["call_id"] == "toolu_1" and json.loads(call_item["arguments"]) == {"city": "Paris"}
    assert "sunny" in output["output"]
    assert body["tools"][0]["type"] == "function" and body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["parameters"] == tools[0]["input_schema"]
    assert body["prompt_cache_key"].startswith("claude-session-")


def test_claude_code_converted(tmp_path, capture, wire_proxy):
    """The real Claude Code: straight at the capture (no Messages route there: 404, recorded) and
    through the proxy; its non-protocol headers under the named list, its body per the README's field mapping."""
    from tests.npmclients import claude_binary
    from tests.test_claude_code import check_converted, run_claude

    claude_binary()  # a missing Claude Code fails here, before the capture is touched
    capture.reset()
    run_claude(None, tmp_path, "say hello", base_url=capture.url + "/claude-direct", name="direct")
    direct = capture.wait_for(1, match=lambda r: r.method == "POST")[0]
    assert direct.path == "/claude-direct/v1/messages"
    capture.reset()
    capture.script(Answer.text("Hello over the wire"))
    result = run_claude(wire_proxy, tmp_path, "say hello", name="proxied")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip() == "Hello over the wire"
    assert_host(capture, list(capture.requests))
    proxied = capture.responses()
    assert len(proxied) == 1 and proxied[0].target == "/backend-api/codex/responses"
    check_converted(proxied[0].json)
    ctx = ctx_for(capture, wire_proxy, direct, proxied[0], codex_client=False)
    problems = check_framing(proxied[0]) + compare_headers(ctx, Shaper(), Shaper())
    assert not problems, "the proxy changed the request beyond the named differences:\n" + "\n".join(problems)


# --- the capture itself: as strict as a real front -------------------------------------------

def _raw(cap: CaptureUpstream, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", int(cap.authority.rpartition(":")[2])), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
            if b"\r\n0\r\n\r\n" in out or (b"Content-Length" in out and out.endswith(b"}")):
                break
        return out


@pytest.mark.parametrize("head, why", [
    (b"POST /backend-api/codex/responses HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "0 Host headers"),
    (b"POST /r HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}", "2 Host headers"),
    (b"POST /r HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\n{}", "obsolete line folding"),
    (b"POST /r HTTP/1.1\r\nHost: a\r\nX-A : 1\r\nContent-Length: 2\r\n\r\n{}", "bad header field name"),
    (b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", "both Content-Length"),
    (b"POST /r HTTP/1.1\nHost: a\nContent-Length: 2\n\n{}", "CRLF"),
])
def test_capture_refuses_what_a_real_server_refuses(capture, head, why):
    answer = _raw(capture, head)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert capture.requests[-1].error and why in capture.requests[-1].error


def test_capture_keeps_the_wire_as_sent(capture):
    body = b'{"model":"m","stream":true,"store":false,"input":[]}'
    chunked = b"%X\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = _raw(capture, b"POST /backend-api/codex/responses HTTP/1.1\r\nHost: up.example\r\nX-Mixed-Case: v\r\n"
                           b"session_id: s1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"event: response.completed" in answer
    req = capture.requests[-1]
    assert req.headers == [("Host", "up.example"), ("X-Mixed-Case", "v"), ("session_id", "s1"), ("Transfer-Encoding", "chunked")]
    assert req.framing == "chunked" and req.body == body and req.raw_body == chunked
    packed = zstd.compress(body)
    _raw(capture, b"POST /backend-api/codex/responses HTTP/1.1\r\nHost: h\r\nContent-Encoding: zstd\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(packed), packed))
    assert capture.requests[-1].json == json.loads(body) and capture.requests[-1].status == 200
