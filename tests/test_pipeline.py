"""The request pipeline without a proxy: driven by small fakes of the two transports.

Each fake does what its adapter does (proxy.py for HTTP, wsadapter.py for WebSocket) with no
network: it builds the Exchange, calls the pipeline's steps in order, "sends" each UpstreamCall
to a scripted upstream and frames the output for its client. The same app, plugins and
pipeline serve both; what differs is only the framing.
"""

from __future__ import annotations

import asyncio
import json

from mitmproxy import http

from codexproxy import sse, wire
from codexproxy.exchange import GatewayError, LocalResponse
from codexproxy.models import Account
from codexproxy.pipeline import Pipeline, StreamOutput, UpstreamCall
from codexproxy.proxy import exchange_from_request
from codexproxy.streams import HoldWatch

BODY = {"model": "gpt-5", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}], "stream": True}


def _events(*pairs: tuple[str, dict]) -> bytes:
    return b"".join(sse.encode(name, {"type": name, **data}) for name, data in pairs)


OK_STREAM = _events(("response.created", {"response": {"id": "r1"}}),
                    ("response.output_text.delta", {"delta": "Hello"}),
                    ("response.completed", {"response": {"id": "r1", "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}}))
OVERLOADED_200 = _events(("response.created", {"response": {"id": "r0"}}),
                         ("response.failed", {"response": {"error": {"code": "server_is_overloaded", "message": "busy"}}}))


class ScriptedUpstream:
    """Answers each UpstreamCall with the next scripted (status, headers, body) and records the calls."""

    def __init__(self, *answers: tuple[int, dict, bytes]) -> None:
        self.answers = list(answers)
        self.calls: list[UpstreamCall] = []

    def __call__(self, call: UpstreamCall) -> tuple[int, dict, bytes]:
        self.calls.append(call)
        return self.answers.pop(0)


async def _run_attempts(pipeline: Pipeline, ex, step, upstream: ScriptedUpstream, chunks_out: list[StreamOutput]):
    """What both adapters do per attempt: answered -> hold back the prelude -> stream, or failed."""
    while isinstance(step, UpstreamCall):
        status, headers, body = upstream(step)
        verdict = pipeline.answered(ex, status, headers)
        if verdict == "retry":
            step = await pipeline.failed(ex, body=body)
            continue
        session = pipeline.open_stream(ex, status, headers)
        hold = HoldWatch()
        failure = hold(body, final=True)
        if isinstance(failure, GatewayError):
            step = await pipeline.failed(ex, stream_failure=failure)
            continue
        chunks_out.append(session.feed(body))
        chunks_out.append(session.finish())
        return None
    return step


async def _through_pipeline(pipeline: Pipeline, ex, raw: bytes, upstream: ScriptedUpstream) -> LocalResponse | list[StreamOutput]:
    """What both adapters do with one exchange: start, admit, begin, the attempts, done. The
    answer is the client's events, or a LocalResponse (an error), for the adapter to frame."""
    pipeline.start(ex)
    out: list[StreamOutput] = []
    try:
        pipeline.admit(ex, len(raw))
        step = await pipeline.begin(ex, raw)
        step = await _run_attempts(pipeline, ex, step, upstream, out)
        return step if isinstance(step, LocalResponse) else out
    except GatewayError as err:
        return pipeline.error_answer(ex, err)
    finally:
        pipeline.done(ex)


class FakeHTTPTransport:
    """proxy.py's part: a request head and body in, one HTTP answer (status, SSE bytes) out."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def request(self, headers: dict[str, str], body: dict) -> tuple[int, bytes]:
        raw = json.dumps(body).encode()
        req = http.Request.make("POST", "http://gateway/v1/responses", raw, {**headers, "content-type": "application/json"})
        ex = exchange_from_request(req, "127.0.0.1")
        answer = await _through_pipeline(self.pipeline, ex, raw, self.upstream)
        if isinstance(answer, LocalResponse):
            return answer.status, answer.encoded()[0]
        return ex.status, b"".join(output.http_bytes() for output in answer)  # SSE framing


class FakeSocketTransport:
    """wsadapter.py's part: one `response.create` message in, one message per event out."""

    def __init__(self, pipeline: Pipeline, headers: dict[str, str]) -> None:
        self.pipeline = pipeline
        self.headers = headers

    async def turn(self, message: dict) -> list[dict]:
        raw = json.dumps({k: v for k, v in message.items() if k != "type"}).encode()
        ex = exchange_from_request(http.Request.make("POST", "http://gateway/v1/responses", b"", self.headers), "127.0.0.1")
        ex.transport = "websocket"
        answer = await _through_pipeline(self.pipeline, ex, raw, self.upstream)
        if isinstance(answer, LocalResponse):
            return [{"type": "error", "status": answer.status, "error": json.loads(answer.encoded()[0]).get("error")}]
        return [event.json() for output in answer for event in output.events]  # a message each


def _setup(app, accounts: int = 2):
    made = [app.accounts.add(Account(email=f"a{i}@example.com", access_token=f"token-{i}", chatgpt_account_id=f"acct-{i}"))
            for i in range(accounts)]
    _, secret = app.keys.create("tests")
    logged: list = []

    class Recorder:
        @staticmethod
        def codexproxy_exchange_done(app, exchange):
            logged.append(exchange)

    from codexproxy import hookimpl

    Recorder.codexproxy_exchange_done = staticmethod(hookimpl(Recorder.codexproxy_exchange_done))
    app.pm.register(Recorder(), name="test-recorder")
    return made, {"authorization": f"Bearer {secret}"}, logged


def test_http_fake_transport_streams_and_fails_over_on_a_429(app):
    accounts, auth, logged = _setup(app)
    pipeline = Pipeline(app)
    transport = FakeHTTPTransport(pipeline)
    transport.upstream = ScriptedUpstream(
        (429, {"content-type": "application/json"}, b'{"error": {"type": "rate_limit_exceeded", "message": "slow down"}}'),
        (200, {"content-type": "text/event-stream"}, OK_STREAM))
    status, body = asyncio.run(transport.request(auth, BODY))
    assert status == 200 and body == OK_STREAM  # passthrough: the client's bytes are the upstream's
    first, second = transport.upstream.calls
    assert dict(first.headers)["authorization"] != dict(second.headers)["authorization"]  # another account
    assert dict(second.headers)["host"] == wire.authority(app.config.upstream.base_url)  # the upstream's authority
    assert "Bearer cpk" not in json.dumps(second.headers)  # the platform key never goes upstream
    (ex,) = logged
    assert ex.completed and ex.usage.total_tokens == 4 and len(ex.attempts) == 2 and ex.transport == "http"


def test_socket_fake_transport_gets_one_message_per_event_and_fails_over_a_200_that_fails_before_output(app):
    accounts, auth, logged = _setup(app)
    pipeline = Pipeline(app)
    transport = FakeSocketTransport(pipeline, auth)
    transport.upstream = ScriptedUpstream((200, {"content-type": "text/event-stream"}, OVERLOADED_200),
                                          (200, {"content-type": "text/event-stream"}, OK_STREAM))
    messages = asyncio.run(transport.turn({"type": "response.create", **BODY}))
    assert [m["type"] for m in messages] == ["response.created", "response.output_text.delta", "response.completed"]
    assert messages[0]["response"]["id"] == "r1"  # the failed attempt's prelude never reached the client
    (ex,) = logged
    assert ex.transport == "websocket" and ex.completed and [a.status for a in ex.attempts] == [503, 200]


def test_both_fakes_get_the_same_refusal_for_a_bad_key_in_their_own_framing(app):
    _setup(app)
    pipeline = Pipeline(app)
    bad = {"authorization": "Bearer cpk-not-a-key"}
    http_transport = FakeHTTPTransport(pipeline)
    http_transport.upstream = ScriptedUpstream()
    status, body = asyncio.run(http_transport.request(bad, BODY))
    socket_transport = FakeSocketTransport(pipeline, bad)
    socket_transport.upstream = ScriptedUpstream()
    (message,) = asyncio.run(socket_transport.turn({"type": "response.create", **BODY}))
    assert status == 401 and message["type"] == "error" and message["status"] == 401
    assert json.loads(body)["error"] == message["error"]
    assert not http_transport.upstream.calls and not socket_transport.upstream.calls


def test_an_upstream_error_that_no_account_can_fix_is_passed_through_as_it_came(app):
    _setup(app, accounts=1)
    pipeline = Pipeline(app)
    transport = FakeHTTPTransport(pipeline)
    error = b'{"error": {"type": "invalid_request_error", "message": "bad input item"}}'
    transport.upstream = ScriptedUpstream((400, {"content-type": "application/json"}, error))
    status, body = asyncio.run(transport.request({"authorization": _setup_key(app)}, BODY))
    assert status == 400 and body == error and len(transport.upstream.calls) == 1


def _setup_key(app) -> str:
    _, secret = app.keys.create("another")
    return f"Bearer {secret}"


def test_the_hold_back_lets_a_prelude_go_once_it_grows_past_its_cap():
    # A prelude is small; an upstream that sends nothing but prelude events for long must not
    # be held (and buffered) forever: past MAX_HELD bytes it goes to the client as it is.
    hold = HoldWatch()
    rate_limits = sse.encode("codex.rate_limits", {"type": "codex.rate_limits", "pad": "x" * 1000})
    verdicts = [hold(rate_limits) for _ in range(HoldWatch.MAX_HELD // len(rate_limits) + 2)]
    assert verdicts[0] is None and verdicts[-1] == "release"
    assert verdicts.index("release") * len(rate_limits) <= HoldWatch.MAX_HELD + len(rate_limits)


def test_the_hold_back_releases_on_the_first_output_event_and_fails_a_prelude_only_stream():
    hold = HoldWatch()
    assert hold(_events(("response.created", {"response": {"id": "r"}}))) is None
    assert hold(_events(("response.output_text.delta", {"delta": "x"}))) == "release"
    cut = HoldWatch()
    assert cut(_events(("response.created", {"response": {"id": "r"}}))) is None
    assert isinstance(cut(b"", final=True), GatewayError)  # ended with nothing but a prelude: failed over
