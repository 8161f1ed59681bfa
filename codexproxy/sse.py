"""Incremental Server-Sent Events framing: bytes in, events out, any chunk boundary.

Why hand-written: the SSE libraries on PyPI (httpx-sse, sseclient) pull events from a
client response iterator; the proxy is pushed raw chunks by mitmproxy and must emit events
as soon as their blank line arrives. This parser is a small push state machine with no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event. `data` is the raw data string; `json()` decodes it lazily."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """The data decoded as JSON, or None when it is not JSON (e.g. `[DONE]`)."""
        try:
            return json.loads(self.data)
        except ValueError:
            return None

    @property
    def type(self) -> str:
        """The event type: the `event:` field, else the JSON data's `type`, else "message"."""
        if self.event and self.event != "message":
            return self.event
        payload = self.json()
        if isinstance(payload, dict) and isinstance(payload.get("type"), str):
            return payload["type"]
        return self.event or "message"


class SSEParser:
    """Feed bytes with `feed()`; get back the events completed by them.

    Handles events split across chunks, several events per chunk, and LF, CRLF or CR line
    endings (a CR at the end of a chunk is held until the next byte shows whether LF follows).
    """

    __slots__ = ("_buffer", "_event", "_data", "_id", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buffer + chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                self._pending_cr = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buffer = lines.pop()
        out: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw)
            if event is not None:
                out.append(event)
        return out

    def flush(self) -> list[SSEEvent]:
        """End of stream: an event whose final blank line never came is still dispatched."""
        out: list[SSEEvent] = []
        if self._buffer:
            event = self._line(self._buffer)
            self._buffer = b""
            if event is not None:
                out.append(event)
        event = self._line(b"")
        if event is not None:
            out.append(event)
        return out

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            if not self._data and not self._event:
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event = ""
            self._data = []
            return event
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


def encode(event: str | None, data: Any) -> bytes:
    """Frame one event. `data` that is not a str is JSON-encoded compactly."""
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    body = "".join(f"data: {line}\n" for line in data.split("\n"))
    return (head + body + "\n").encode("utf-8")


def new_event(name: str, data: Any) -> SSEEvent:
    """An event for a client, before framing: `name` is "" for data-only protocols (chat
    completions); `data` that is not a str is JSON-encoded compactly."""
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return SSEEvent(name, data)


def frame(events: list[SSEEvent]) -> bytes:
    """Events as SSE bytes (no `event:` line for "" or the default "message")."""
    return b"".join(encode(ev.event if ev.event != "message" else None, ev.data) for ev in events)
