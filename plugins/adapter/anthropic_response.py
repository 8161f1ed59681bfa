"""Anthropic Messages on the client side, the answer: the upstream's Responses events turned
into Messages SSE (event by event) or one Message object, and errors in Anthropic's shape.
The request half is anthropic.py."""

from __future__ import annotations

import json
import uuid
from typing import Any

from codexproxy.exchange import GatewayError
from codexproxy.sse import SSEEvent, new_event

from .common import Aggregate, EventStream, ToolCall, message_text, reasoning_text, usage_counts
from .reasoning import signature_of

_TOOL_ITEMS = ("function_call", "custom_tool_call")


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                529: "overloaded_error"}


def anthropic_error_body(err: GatewayError) -> dict:
    kind = _ERROR_TYPES.get(err.status) or ("api_error" if err.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


# --- response --------------------------------------------------------------------------------

def _stop_reason(terminal: str | None, incomplete_reason: str | None, used_tools: bool) -> str:
    if terminal == "response.incomplete":
        return "refusal" if incomplete_reason == "content_filter" else "max_tokens"
    return "tool_use" if used_tools else "end_turn"


def _usage(usage: dict) -> dict:
    counts = usage_counts(usage)
    # Anthropic counts cached input apart: input_tokens + cache_read_input_tokens = the prompt.
    return {"input_tokens": counts["input"] - counts["cached"], "output_tokens": counts["output"],
            "cache_read_input_tokens": counts["cached"]}


def _tool_input(item: dict) -> dict:
    if item.get("type") == "custom_tool_call":  # free-form input: wrapped in an object
        return {"input": item.get("input") or ""}
    try:
        value = json.loads(item.get("arguments") or "{}")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": item.get("arguments")}


class AnthropicStream(EventStream):
    """Upstream Responses events -> Anthropic Messages events, event by event.

    Anthropic blocks are strictly sequential (one open at a time); Responses output items are
    too, so each reasoning item, message text and tool call becomes one block.
    """

    def __init__(self, model: str, message_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.message_id = message_id or f"msg_{uuid.uuid4().hex}"
        self._started = False
        self._open: tuple[str, Any] | None = None  # (block kind, output index) of the open block
        self._index = 0  # index of the open (or next) block

    def on_created(self) -> list[SSEEvent]:
        return self._message_start()

    def on_text(self, index: Any, text: str) -> list[SSEEvent]:
        return self._open_block(("text", index), {"type": "text", "text": ""}) + \
            self._delta({"type": "text_delta", "text": text})

    def on_reasoning_part(self, index: Any) -> list[SSEEvent]:
        # A new summary part of the open thinking block: a paragraph break.
        return self.on_reasoning(index, "\n\n") if self._open == ("thinking", index) else []

    def on_reasoning(self, index: Any, text: str) -> list[SSEEvent]:
        block = {"type": "thinking", "thinking": "", "signature": ""}
        return self._open_block(("thinking", index), block) + \
            self._delta({"type": "thinking_delta", "thinking": text})

    def on_tool_start(self, index: Any, call: ToolCall, item: dict[str, Any]) -> list[SSEEvent]:
        block = {"type": "tool_use", "id": item.get("call_id") or item.get("id"),
                 "name": item.get("name") or "", "input": {}}
        out = self._open_block(("tool", index), block)
        if call.custom:  # free-form input streams as the string value of {"input": ...}
            out += self._json_delta('{"input":"')
        return out

    def on_tool_input(self, index: Any, call: ToolCall, fragment: str) -> list[SSEEvent]:
        if self._open != ("tool", index):
            return []
        if call.custom:
            fragment = json.dumps(fragment, ensure_ascii=False)[1:-1]
        return self._json_delta(fragment)

    def on_item_done(self, index: Any, item: dict[str, Any]) -> list[SSEEvent]:
        out = []
        signature = signature_of(item) if item.get("type") == "reasoning" else ""
        if signature:
            # The encrypted reasoning rides in the thinking block's signature (a block of its
            # own when the upstream streamed no summary for it).
            out = self._open_block(("thinking", index), {"type": "thinking", "thinking": "", "signature": ""}) + \
                self._delta({"type": "signature_delta", "signature": signature})
        if self._open is not None and self._open[1] == index:
            out += self._close()
        return out

    def on_end(self, kind: str, response: dict[str, Any]) -> list[SSEEvent]:
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        stop = _stop_reason(kind, reason, bool(self.calls))
        return self._message_start() + self._close() + \
            self._ev("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                       "usage": _usage(response.get("usage") or {})}) + \
            self._ev("message_stop", {})

    def render_error(self, error: GatewayError) -> list[SSEEvent]:
        return [new_event("error", anthropic_error_body(error))]

    def _ev(self, name: str, payload: dict) -> list[SSEEvent]:
        return [new_event(name, {"type": name, **payload})]

    def _message_start(self) -> list[SSEEvent]:
        if self._started:
            return []
        self._started = True
        return self._ev("message_start", {"message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def _open_block(self, key: tuple[str, Any], block: dict) -> list[SSEEvent]:
        if self._open == key:
            return []
        out = self._message_start() + self._close()
        self._open = key
        return out + self._ev("content_block_start", {"index": self._index, "content_block": block})

    def _close(self) -> list[SSEEvent]:
        if self._open is None:
            return []
        call = self.calls.get(self._open[1]) if self._open[0] == "tool" else None
        out = self._json_delta('"}') if call is not None and call.custom else []
        out += self._ev("content_block_stop", {"index": self._index})
        self._open = None
        self._index += 1
        return out

    def _delta(self, delta: dict) -> list[SSEEvent]:
        return self._ev("content_block_delta", {"index": self._index, "delta": delta})

    def _json_delta(self, fragment: str) -> list[SSEEvent]:
        return self._delta({"type": "input_json_delta", "partial_json": fragment})


class AnthropicAggregate(Aggregate):
    """Upstream Responses events -> one Anthropic Message JSON (non-stream clients)."""

    def __init__(self, model: str, message_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.message_id = message_id or f"msg_{uuid.uuid4().hex}"

    def error_body(self, error: GatewayError) -> dict[str, Any]:
        return anthropic_error_body(error)

    def body(self) -> dict[str, Any]:
        """The Message object for what the accumulator holds."""
        content: list[dict] = []
        for item in self.acc.output():
            kind = item.get("type")
            if kind == "reasoning" and (reasoning_text(item) or signature_of(item)):
                content.append({"type": "thinking", "thinking": reasoning_text(item), "signature": signature_of(item)})
            elif kind == "message" and message_text(item):
                content.append({"type": "text", "text": message_text(item)})
            elif kind in _TOOL_ITEMS:
                content.append({"type": "tool_use", "id": item.get("call_id") or item.get("id"),
                                "name": item.get("name") or "", "input": _tool_input(item)})
        used_tools = any(block["type"] == "tool_use" for block in content)
        if not content:
            content.append({"type": "text", "text": ""})  # clients read content[0].text
        return {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                "content": content,
                "stop_reason": _stop_reason(self.acc.terminal, self.acc.incomplete_reason, used_tools),
                "stop_sequence": None, "usage": _usage(self.acc.usage)}
