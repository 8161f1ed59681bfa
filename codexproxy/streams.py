"""What the adapters share about an upstream stream besides the pipeline's StreamSession:
the watch that holds a 200 back until its first output event (HTTP and WebSocket), and the
pump mitmproxy calls per chunk (HTTP)."""

from __future__ import annotations

from . import sse
from .exchange import GatewayError
from .pipeline import StreamSession
from .stream_endings import ACCOUNT_FAILURE_CODES, PRELUDE_EVENTS, TERMINAL_FAILED, gateway_error_from_event, stream_cut_error


class StreamPump:
    """flow.response.stream callable: hands each upstream chunk to the exchange's
    StreamSession and returns the client's bytes (its events framed as SSE). Never raises, never returns b"" before
    the end (mitmproxy would end the chunked body there)."""

    def __init__(self, session: StreamSession) -> None:
        self.session = session

    def __call__(self, chunk: bytes) -> list[bytes]:
        # Only non-empty chunks: an empty one would be sent as a chunked terminator.
        out = (self.session.finish() if chunk == b"" else self.session.feed(chunk)).http_bytes()
        return [out] if out else []

    def abort(self, message: str) -> list[bytes]:
        """The upstream broke mid-stream (cut or idle): the client's last bytes."""
        tail = self.session.finish(stream_cut_error(message)).http_bytes()
        return [tail] if tail else []


class HoldWatch:
    """Reads the first events of an HTTP 200 stream, which the failover stream holds back
    until this says: "release" (the first output event, or any event a client needs), or a
    GatewayError (the stream failed before any output, for a reason that is the account's:
    it is failed over like an HTTP 429/5xx, and the client never sees the held events).

    The backend often answers 200 and then `response.failed` (server_is_overloaded,
    usage_limit_reached ...) or a bare `error` before any output; looking only at the HTTP
    status would keep sending users to such an account.
    """

    MAX_HELD = 256 * 1024  # a prelude is small; past this, whatever it is goes to the client

    def __init__(self) -> None:
        self.parser = sse.SSEParser()
        self.held = 0

    def __call__(self, chunk: bytes, final: bool = False) -> str | GatewayError | None:
        events_ = self.parser.feed(chunk) + (self.parser.flush() if final else [])
        for event in events_:
            kind = event.type
            if kind in TERMINAL_FAILED:
                error = gateway_error_from_event(event)
                return error if (error.code in ACCOUNT_FAILURE_CODES or (kind == "error" and error.code is None)) else "release"
            if kind not in PRELUDE_EVENTS:
                return "release"
        self.held += len(chunk)
        if final:
            return stream_cut_error()  # ended (or was cut) with nothing but a prelude
        return "release" if self.held > self.MAX_HELD else None
