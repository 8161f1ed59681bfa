"""Helpers shared by the protocol converters: model/effort parsing, upstream error mapping,
and the accumulator that rebuilds a final Response object from the upstream SSE events.

Everything here is pure (no I/O): the converters are state machines fed with SSE events.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

from codexproxy.exchange import GatewayError
from codexproxy.models import EFFORTS
from codexproxy.sse import SSEEvent
# The upstream's error vocabulary lives in the core; re-exported for the converters.
from codexproxy.stream_endings import (TERMINAL_EVENTS, error_status_for_code, gateway_error_from_event,  # noqa: F401
                                 stream_cut_error)


_EFFORT_SUFFIX = re.compile(r"^(?P<name>.+?)\s*\(\s*(?P<effort>[A-Za-z]+)\s*\)$")

def bad_request(message: str, param: str) -> GatewayError:
    """A 400 naming the offending field (OpenAI's `param`)."""
    return GatewayError(400, message, param=param)


def require_model_and_messages(body: Any) -> tuple[str, list]:
    """The checks every messages-based protocol starts with (chat, anthropic)."""
    if not isinstance(body, dict):
        raise GatewayError(400, "Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' is required and must be a non-empty string.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required and must be a non-empty list.", "messages")
    return model, messages


def message_item(role: str, content: list[dict]) -> dict:
    """A Responses `input` message item: what a chat or Anthropic turn becomes."""
    return {"type": "message", "role": role, "content": content}


def checked_role(msg: Any, where: str, roles: tuple[str, ...]) -> str:
    """The role of one message, after checking the message is an object with a known role."""
    if not isinstance(msg, dict):
        raise bad_request(f"'{where}' must be an object.", where)
    role = msg.get("role")
    if role not in roles:
        raise bad_request(f"'{where}.role' must be one of {', '.join(roles)}; got {role!r}.", f"{where}.role")
    return role


def parse_model_effort(model: str) -> tuple[str, str | None]:
    """Split "gpt-5.5(high)" into ("gpt-5.5", "high"); no (known) suffix gives (model, None).

    The suffix lets a user pick the effort in clients that cannot send a reasoning field.
    """
    model = model.strip()
    match = _EFFORT_SUFFIX.match(model)
    if match and match["effort"].lower() in EFFORTS:
        return match["name"].strip(), match["effort"].lower()
    return model, None


def reasoning_fields(effort: str | None) -> dict[str, Any]:
    """The Responses body fields for an effort: summaries and encrypted reasoning on, except
    for "none" (nothing to summarise). No effort means the backend's default effort, and the
    encrypted reasoning is still asked for: a client that names no effort still reasons, and
    without it each tool step would start its reasoning over."""
    if not effort:
        return {"include": ["reasoning.encrypted_content"]}
    if effort == "none":
        return {"reasoning": {"effort": "none"}}
    return {"reasoning": {"effort": effort, "summary": "auto"},
            "include": ["reasoning.encrypted_content"]}


def with_content_type(headers: dict[str, str], content_type: str) -> dict[str, str]:
    """A copy of `headers` for a rewritten body: new content-type, no content-length."""
    out = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "content-type")}
    out["content-type"] = content_type
    return out


# --- rebuilding the final Response ---------------------------------------------------------

# Which delta event fills which field of a not-yet-done output item (see ResponseAccumulator).
_DELTA_FIELDS = {
    "response.output_text.delta": "text",
    "response.refusal.delta": "refusal",
    "response.function_call_arguments.delta": "arguments",
    "response.custom_tool_call_input.delta": "input",
    "response.reasoning_summary_text.delta": "summary",
    "response.reasoning_text.delta": "reasoning",
}


class ResponseAccumulator:
    """Consumes upstream Responses events and rebuilds the final Response object.

    `response.completed.response.output` can be empty on the Codex backend, so the output is
    rebuilt from the `response.output_item.done` items; an item that was added but never
    finished is completed from its deltas. Used by every non-stream path.
    """

    def __init__(self) -> None:
        self.response: dict[str, Any] = {}
        self.terminal: str | None = None  # the terminal event type once seen
        self.error: GatewayError | None = None  # set by response.failed / error
        self._items: dict[int, dict[str, Any]] = {}
        self._done: set[int] = set()
        self._partial: dict[tuple[int, str], list[str]] = {}

    def feed(self, ev: SSEEvent) -> None:
        kind = ev.type
        if self.terminal or kind.startswith("codex."):
            return
        if kind in ("response.failed", "error"):
            self.error = gateway_error_from_event(ev)
        data = ev.json()
        if not isinstance(data, dict):
            if kind in TERMINAL_EVENTS:
                self.terminal = kind
            return
        if isinstance(data.get("response"), dict):
            self.response = data["response"]
        index = data.get("output_index")
        if kind == "response.output_item.added" and isinstance(data.get("item"), dict):
            self._items.setdefault(self._index(index), copy.deepcopy(data["item"]))
        elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            index = self._index(index)
            self._items[index] = data["item"]
            self._done.add(index)
        elif kind in _DELTA_FIELDS and isinstance(index, int) and index not in self._done:
            delta = data.get("delta")
            if isinstance(delta, str):
                self._partial.setdefault((index, _DELTA_FIELDS[kind]), []).append(delta)
        if kind in TERMINAL_EVENTS:
            self.terminal = kind

    def _index(self, index: Any) -> int:
        return index if isinstance(index, int) else len(self._items)

    def output(self) -> list[dict[str, Any]]:
        """The final output items: the terminal response's, else the rebuilt ones."""
        output = self.response.get("output")
        if isinstance(output, list) and output:
            return output
        return [self._finished(i, self._items[i]) for i in sorted(self._items)]

    def _finished(self, index: int, item: dict[str, Any]) -> dict[str, Any]:
        if index in self._done:
            return item
        item = dict(item)

        def joined(field: str) -> str | None:
            parts = self._partial.get((index, field))
            return "".join(parts) if parts is not None else None

        if item.get("type") == "message" and (joined("text") is not None or joined("refusal") is not None):
            item["content"] = [{"type": "output_text", "text": joined("text") or "", "annotations": []}]
            if joined("refusal"):
                item["content"].append({"type": "refusal", "refusal": joined("refusal")})
        elif item.get("type") == "function_call" and joined("arguments") is not None:
            item["arguments"] = joined("arguments")
        elif item.get("type") == "custom_tool_call" and joined("input") is not None:
            item["input"] = joined("input")
        elif item.get("type") == "reasoning" and joined("summary") is not None:
            item["summary"] = [{"type": "summary_text", "text": joined("summary")}]
        return item

    def result(self) -> dict[str, Any]:
        """The Response object as a non-stream Responses API call returns it."""
        result = dict(self.response)
        result["output"] = self.output()
        result.setdefault("object", "response")
        return result

    @property
    def usage(self) -> dict[str, Any]:
        usage = self.response.get("usage")
        return usage if isinstance(usage, dict) else {}

    @property
    def incomplete_reason(self) -> str | None:
        details = self.response.get("incomplete_details")
        if isinstance(details, dict) and isinstance(details.get("reason"), str):
            return details["reason"]
        return "max_output_tokens" if self.terminal == "response.incomplete" else None


# --- reading output items (shared by the chat and anthropic aggregates) ---------------------

def message_text(item: dict[str, Any]) -> str:
    """The visible text of a `message` output item."""
    return "".join(part.get("text") or "" for part in item.get("content") or []
                   if isinstance(part, dict) and part.get("type") == "output_text")


def reasoning_text(item: dict[str, Any]) -> str:
    """The readable reasoning of a `reasoning` item: its summaries, else its raw text."""
    parts = [p.get("text") or "" for p in item.get("summary") or [] if isinstance(p, dict)]
    if not any(parts):
        parts = [p.get("text") or "" for p in item.get("content") or [] if isinstance(p, dict)]
    return "\n\n".join(p for p in parts if p)


def usage_counts(usage: dict[str, Any]) -> dict[str, int]:
    """Responses usage flattened to plain ints (missing numbers count as 0)."""
    def num(value: Any) -> int:
        return int(value) if isinstance(value, (int, float)) else 0

    input_tokens = num(usage.get("input_tokens"))
    output_tokens = num(usage.get("output_tokens"))
    return {
        "input": input_tokens,
        "cached": num((usage.get("input_tokens_details") or {}).get("cached_tokens")),
        "output": output_tokens,
        "reasoning": num((usage.get("output_tokens_details") or {}).get("reasoning_tokens")),
        "total": num(usage.get("total_tokens")) or input_tokens + output_tokens,
    }


# --- base classes of the converters (the StreamTransform protocol of codexproxy.exchange) ---

@dataclass(slots=True)
class ToolCall:
    """A tool call being streamed: `number` is its position among the calls (0, 1, ...)."""

    number: int
    custom: bool  # a custom_tool_call (free-form `input`) rather than a function_call
    sent: int = 0  # characters of its arguments/input already passed on


_REASONING_DELTAS = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")
_TOOL_DELTAS = ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta")
_TOOL_DONES = ("response.function_call_arguments.done", "response.custom_tool_call_input.done")
_TOOL_ITEMS = ("function_call", "custom_tool_call")


class EventStream:
    """Base of the converters that stream to a non-Responses client.

    It reads the Responses events once for all of them and calls the `on_*` hooks with what
    happened (text, reasoning, a tool call and its argument fragments, the end). It also
    covers the upstream's gaps: text or arguments that arrive only in a `.done` event are
    passed on once, never twice. `codex.*` events are dropped; a failure event, or a stream
    that ends without a terminal event, becomes `render_error`; there is only one ending.
    """

    streams = True

    def __init__(self) -> None:
        self._ended = False
        self._texted: set[Any] = set()  # output indexes whose text was passed on
        self.calls: dict[Any, ToolCall] = {}  # output index -> tool call

    def start(self, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        return status, with_content_type(headers, "text/event-stream")

    def feed(self, events: list[SSEEvent]) -> list[SSEEvent]:
        return [out for ev in events for out in self._event(ev)]

    def finish(self, error: GatewayError | None) -> list[SSEEvent]:
        return [] if self._ended else self._fail(error or stream_cut_error())

    def _fail(self, error: GatewayError) -> list[SSEEvent]:
        self._ended = True
        return self.render_error(error)

    def _event(self, ev: SSEEvent) -> list[SSEEvent]:
        kind = ev.type
        if self._ended or kind.startswith("codex."):
            return []
        if kind in ("response.failed", "error"):
            return self._fail(gateway_error_from_event(ev))
        data = ev.json()
        if not isinstance(data, dict):  # a truncated last event (cut mid-event) is not JSON
            return []
        index = data.get("output_index")
        delta = data.get("delta") if isinstance(data.get("delta"), str) else ""
        if kind == "response.created":
            return self.on_created()
        if kind == "response.output_text.delta":
            self._texted.add(index)
            return self.on_text(index, delta) if delta else []
        if kind == "response.output_text.done":
            return self._whole_text(index, data.get("text"))
        if kind == "response.refusal.delta" and delta:
            return self.on_refusal(index, delta)
        if kind == "response.reasoning_summary_part.added":
            return self.on_reasoning_part(index)
        if kind in _REASONING_DELTAS and delta:
            return self.on_reasoning(index, delta)
        if kind == "response.output_item.added":
            return self._tool_start(index, data.get("item"))
        if kind in _TOOL_DELTAS:
            return self._tool_input(index, delta, delta_only=True)
        if kind in _TOOL_DONES:
            return self._tool_input(index, data.get("arguments", data.get("input")))
        if kind == "response.output_item.done":
            return self._item_done(index, data.get("item"))
        if kind in ("response.completed", "response.incomplete"):
            self._ended = True
            return self.on_end(kind, data.get("response") if isinstance(data.get("response"), dict) else {})
        return []

    def _whole_text(self, index: Any, text: Any) -> list[SSEEvent]:
        """Text that came whole (a `.done` event) is passed on only if no delta carried it."""
        if index in self._texted or not isinstance(text, str) or not text:
            return []
        self._texted.add(index)
        return self.on_text(index, text)

    def _tool_start(self, index: Any, item: Any) -> list[SSEEvent]:
        if not isinstance(item, dict) or item.get("type") not in _TOOL_ITEMS or index in self.calls:
            return []
        call = self.calls[index] = ToolCall(len(self.calls), item["type"] == "custom_tool_call")
        return self.on_tool_start(index, call, item) + \
            self._tool_input(index, item.get("input" if call.custom else "arguments"))

    def _tool_input(self, index: Any, text: Any, delta_only: bool = False) -> list[SSEEvent]:
        """Pass on a fragment (delta_only), or whatever of the final text was not sent yet."""
        call = self.calls.get(index)
        if call is None or not isinstance(text, str):
            return []
        fragment = text if delta_only else text[call.sent:]
        if not fragment:
            return []
        call.sent += len(fragment)
        return self.on_tool_input(index, call, fragment)

    def _item_done(self, index: Any, item: Any) -> list[SSEEvent]:
        if not isinstance(item, dict):
            return []
        out: list[SSEEvent] = []
        if item.get("type") in _TOOL_ITEMS:
            field = "input" if item["type"] == "custom_tool_call" else "arguments"
            out = self._tool_start(index, {**item, field: ""}) + self._tool_input(index, item.get(field))
        elif item.get("type") == "message":
            out = self._whole_text(index, message_text(item))
        return out + self.on_item_done(index, item)

    # Hooks: each returns the client's events for what happened.
    def on_created(self) -> list[SSEEvent]:
        return []

    def on_text(self, index: Any, text: str) -> list[SSEEvent]:
        raise NotImplementedError

    def on_refusal(self, index: Any, text: str) -> list[SSEEvent]:
        return []

    def on_reasoning_part(self, index: Any) -> list[SSEEvent]:
        """A new reasoning summary part starts (a paragraph break for readers)."""
        return []

    def on_reasoning(self, index: Any, text: str) -> list[SSEEvent]:
        raise NotImplementedError

    def on_tool_start(self, index: Any, call: ToolCall, item: dict[str, Any]) -> list[SSEEvent]:
        raise NotImplementedError

    def on_tool_input(self, index: Any, call: ToolCall, fragment: str) -> list[SSEEvent]:
        raise NotImplementedError

    def on_item_done(self, index: Any, item: dict[str, Any]) -> list[SSEEvent]:
        return []

    def on_end(self, kind: str, response: dict[str, Any]) -> list[SSEEvent]:
        """`response.completed` or `response.incomplete` arrived."""
        raise NotImplementedError

    def render_error(self, error: GatewayError) -> list[SSEEvent]:
        raise NotImplementedError


class Aggregate:
    """Base of the non-stream converters: collect the whole upstream stream, answer once.

    `error` holds the failure after `finish`, for a core that wants its status. Subclasses
    implement `body()` and may override `error_body()` (OpenAI's error shape by default).
    """

    streams = False

    def __init__(self) -> None:
        self.acc = ResponseAccumulator()
        self.error: GatewayError | None = None

    def start(self, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        return status, with_content_type(headers, "application/json")

    def feed(self, events: list[SSEEvent]) -> list[SSEEvent]:
        for ev in events:
            self.acc.feed(ev)
        return []

    def finish(self, error: GatewayError | None) -> list[SSEEvent]:
        """The whole answer, as the one event of a non-stream transform (`data` is the body)."""
        if self.acc.error:
            self.error = self.acc.error
        elif not self.acc.terminal:
            self.error = error or stream_cut_error()
        body = self.error_body(self.error) if self.error else self.body()
        return [SSEEvent("", json.dumps(body, ensure_ascii=False))]

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def error_body(self, error: GatewayError) -> dict[str, Any]:
        return error.openai_body()
