"""What the client receives of an upstream stream: the pump mitmproxy calls per chunk, and
the passthrough transform used when no plugin converts the stream."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import http

from . import sse
from .exchange import Exchange, GatewayError, Usage
from .upstream import (ACCOUNT_FAILURE_CODES, PRELUDE_EVENTS, TERMINAL_FAILED, TERMINAL_OK, gateway_error_from_event,
                       stream_cut_error)

log = logging.getLogger("codexproxy.proxy")


class StreamPump:
    """flow.response.stream callable: watches the upstream SSE for usage and terminal events
    and lets the transform produce the client's bytes. Never raises, never returns b"" before
    the end (mitmproxy would end the chunked body there)."""

    def __init__(self, flow: http.HTTPFlow, ex: Exchange, transform: Any) -> None:
        self.flow = flow
        self.ex = ex
        self.transform = transform
        self.parser = sse.SSEParser()
        self.failed: GatewayError | None = None
        self.finished = False

    def __call__(self, chunk: bytes):
        try:
            if chunk == b"":
                # Only non-empty chunks: an empty one would be sent as a chunked terminator.
                tail = self._finish(None) if not self.finished else b""
                return [tail] if tail else []
            events_ = self.parser.feed(chunk)
            for event in events_:
                self._observe(event)
            out = self.transform.feed(chunk, events_)
        except Exception:
            log.exception("stream transform failed")
            return []
        if out:
            if self.ex.ttfb_ms is None:
                self.ex.ttfb_ms = self.ex.elapsed_ms()
            return [out]
        return []

    def _observe(self, event: sse.SSEEvent) -> None:
        kind = event.event
        if kind == "message" and '"response.' in event.data[:80]:
            kind = event.type  # an upstream that puts the type only in the data
        if kind in TERMINAL_OK:
            self.ex.completed = True
            payload = event.json() or {}
            self.ex.usage = Usage.from_response((payload.get("response") or {}).get("usage"))
        elif kind in TERMINAL_FAILED:
            self.failed = gateway_error_from_event(event)
            self.ex.error = f"upstream {kind}: {self.failed.code or ''} {self.failed.message}".strip()

    def _finish(self, error: GatewayError | None) -> bytes:
        self.finished = True
        out = b""
        try:
            tail = self.parser.flush()
            for event in tail:
                self._observe(event)
            if tail:
                out += self.transform.feed(b"", tail)
            if error is None and not self.ex.completed and self.failed is None:
                error = stream_cut_error()
                self.ex.error = self.ex.error or error.message
            out += self.transform.finish(error or self.failed)
        except Exception:
            log.exception("stream transform failed at the end")
        return out

    def abort(self, message: str) -> list[bytes]:
        """The upstream broke mid-stream (cut or idle): the client's last bytes."""
        if self.finished:
            return []
        error = stream_cut_error(message)
        self.ex.error = error.message
        tail = self._finish(error)
        return [tail] if tail else []


class PassthroughTransform:
    """Byte-for-byte passthrough; on a broken stream, a final `response.failed` event
    (an upstream failure event already went through as it was)."""

    def __init__(self) -> None:
        self.ended = False

    def start(self, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        return status, headers

    def feed(self, raw: bytes, events_: list) -> bytes:
        for event in events_:
            if event.event in TERMINAL_OK or event.event in TERMINAL_FAILED:
                self.ended = True
        return raw

    def finish(self, error: GatewayError | None) -> bytes:
        if error is None or self.ended:
            return b""
        self.ended = True
        return sse.encode("response.failed", {"type": "response.failed", "response": {
            "status": "failed", "error": {"code": error.code, "message": error.message}}})


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
