"""A WebSocket client for the benchmarks, as Codex uses the transport (the `websockets` library).

    sock = await Socket.open(port, key)              # GET /v1/responses + Upgrade, the key on the head
    turn = await sock.turn(body)                     # one `response.create`, read to its terminal message
    turn.sent, turn.events                           # events: [(arrival, text)], one per message
    await sock.close()

Arrival times are taken the moment `recv()` hands a message over, before anything is parsed, so
they compare with bench/load.py's (which notes an SSE event when its chunk is read). The
messages carry the fake upstream's send-time stamps like the SSE events do (`stamps(turn)`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

from bench.load import STAMP_RE

TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")
CODEX_HEADERS = {"originator": "codex_exec", "openai-beta": "responses_websockets=2026-02-06"}
CODEX_USER_AGENT = "codex_exec/0.169.0 (bench)"


@dataclass
class Turn:
    sent: float  # monotonic time the response.create message was handed to the socket
    events: list[tuple[float, str]] = field(default_factory=list)  # (arrival, message text)

    @property
    def last_type(self) -> str | None:
        return json.loads(self.events[-1][1]).get("type") if self.events else None


class Socket:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, port: int, key: str, path: str = "/v1/responses", timeout: float = 10.0) -> "Socket":
        ws = await connect(f"ws://127.0.0.1:{port}{path}", additional_headers={"authorization": f"Bearer {key}", **CODEX_HEADERS},
                           user_agent_header=CODEX_USER_AGENT, proxy=None, compression=None, max_size=None,
                           open_timeout=timeout, ping_interval=None)
        return cls(ws)

    async def turn(self, body: dict, timeout: float = 60.0) -> Turn:
        return await asyncio.wait_for(self._turn(body), timeout)

    async def _turn(self, body: dict) -> Turn:
        message = json.dumps({"type": "response.create", **body})
        turn = Turn(sent=time.monotonic())
        await self.ws.send(message)
        while True:
            text = await self.ws.recv()
            turn.events.append((time.monotonic(), text))
            # the type is near the start of every event the proxy sends: no full parse per message
            head = text[:80]
            if any(f'"type": "{t}"' in head or f'"type":"{t}"' in head for t in TERMINAL):
                return turn

    async def close(self) -> None:
        await self.ws.close()


def stamps(turn: Turn) -> list[float]:
    """arrival - send time (seconds) of every stamped message of a turn (see bench/load.py)."""
    out = []
    for arrival, text in turn.events:
        m = STAMP_RE.search(text.encode())
        if m:
            out.append(arrival - float(m.group(1)))
    return out
