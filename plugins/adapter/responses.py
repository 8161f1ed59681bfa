"""The Responses API on the client side: normalise the request for the Codex backend, and
re-emit (stream) or aggregate (non-stream) its answer.

The Codex backend speaks the Responses API already, so this is mostly about what it refuses:
`store` must be false, `stream` must be true, and some sampling fields are rejected.
"""

from __future__ import annotations

import hashlib
from typing import Any

from codexproxy.exchange import GatewayError
from codexproxy.sse import SSEEvent, new_event

from .common import TERMINAL_EVENTS, Aggregate, stream_cut_error, with_content_type

# Fields accepted and not sent upstream, and why (the Codex backend answers 400 "Unsupported
# parameter" to each). Everything else goes upstream as the client sent it.
IGNORED = {
    "temperature": "reasoning models take no sampling parameters; the backend refuses them",
    "top_p": "reasoning models take no sampling parameters; the backend refuses them",
    "max_output_tokens": "the Codex backend refuses it; the answer ends at the model's own limit",
    "truncation": "the backend refuses it; an over-long input is a context_length_exceeded error",
}
# Mapped by the adapter, not sent as they are: `user` becomes the prompt_cache_key (and the
# session) when the client set none; `previous_response_id` is expanded into the kept
# conversation (conversations.py).
MAPPED_ELSEWHERE = ("user", "previous_response_id")


def normalize_responses_request(body: dict) -> dict:
    """A copy of a client's Responses request body that the Codex backend accepts."""
    if not isinstance(body, dict):
        raise GatewayError(400, "Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise GatewayError(400, "'model' is required and must be a non-empty string.", param="model")
    source = body.get("input")
    if isinstance(source, str):
        items: list[Any] = [{"type": "message", "role": "user",
                             "content": [{"type": "input_text", "text": source}]}]
    elif isinstance(source, list):
        items = [_normalize_item(item, i) for i, item in enumerate(source)]
    elif source is None:
        raise GatewayError(400, "'input' is required (a string or a list of items).", param="input")
    else:
        raise GatewayError(400, "'input' must be a string or a list of items.", param="input")

    out = {k: v for k, v in body.items() if k not in IGNORED and k not in MAPPED_ELSEWHERE}
    user = body.get("user")
    if isinstance(user, str) and user and not isinstance(body.get("prompt_cache_key"), str):
        out["prompt_cache_key"] = user_cache_key(user)
    out["input"] = items
    out["store"] = False
    out["stream"] = True
    if out.get("service_tier") != "priority":
        out.pop("service_tier", None)
    return out


def user_cache_key(user: str) -> str:
    """OpenAI's `user` (an end-user id) as a prompt_cache_key: one cache (and one account) per
    user. Hashed: it may be an e-mail, and it becomes an upstream header."""
    return "user-" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _normalize_item(item: Any, index: int) -> Any:
    if not isinstance(item, dict):
        raise GatewayError(400, f"'input[{index}]' must be an object.", param=f"input[{index}]")
    # The backend has no "system" role in input; "developer" is its equivalent.
    if item.get("role") == "system":
        return {**item, "role": "developer"}
    return item


class ResponsesStream:
    """Streams the upstream events to a Responses client.

    `drop_codex_events`: OpenAI SDK clients choke on the non-standard `codex.*` events, Codex
    clients want them. For those SDK clients an empty `response.completed.response.output` is
    also filled from the `output_item.done` items (the SDK's final response reads it; Codex
    reads the items), which costs keeping the finished items, never the deltas. A stream that
    ends without a terminal event gets a `response.failed`.
    """

    streams = True

    def __init__(self, drop_codex_events: bool) -> None:
        self.drop_codex_events = drop_codex_events
        self._ended = False
        self._response_id: str | None = None
        self._items: dict[int, Any] = {}  # output index -> finished item (SDK clients only)
        self.final: dict[str, Any] | None = None  # the finished Response (kept for previous_response_id)

    def start(self, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        return status, with_content_type(headers, "text/event-stream")

    def feed(self, events: list[SSEEvent]) -> list[SSEEvent]:
        return [out for ev in events for out in self._event(ev)]

    def _event(self, ev: SSEEvent) -> list[SSEEvent]:
        kind = ev.type
        if self.drop_codex_events and kind.startswith("codex."):
            return []
        data = ev.json()
        # A truncated last event (connection cut mid-event) is not JSON: never forward garbage.
        if not isinstance(data, dict):
            return []
        if kind in TERMINAL_EVENTS:
            if self._ended:
                return []
            self._ended = True
            response = data.get("response")
            filled = self._items and isinstance(response, dict) and not response.get("output")
            if filled:
                response = {**response, "output": [self._items[i] for i in sorted(self._items)]}
            if kind in ("response.completed", "response.incomplete") and isinstance(response, dict):
                self.final = response
            if filled:
                return [new_event(ev.event, {**data, "response": response})]
        elif kind == "response.created" and isinstance(data.get("response"), dict):
            self._response_id = data["response"].get("id")
        elif kind == "response.output_item.done" and self.drop_codex_events:
            index = data.get("output_index")
            self._items[index if isinstance(index, int) else len(self._items)] = data.get("item")
        return [ev]  # as it came (its framing: the transport's)

    def finish(self, error: GatewayError | None) -> list[SSEEvent]:
        if self._ended:
            return []
        self._ended = True
        error = error or stream_cut_error()
        failed = {
            "type": "response.failed",
            "response": {
                "id": self._response_id,
                "object": "response",
                "status": "failed",
                "error": {"code": error.code or "server_error", "message": error.message},
                "output": [],
            },
        }
        return [new_event("response.failed", failed)]


class ResponsesAggregate(Aggregate):
    """Answers a non-stream Responses request with the whole Response object as JSON."""

    def body(self) -> dict[str, Any]:
        return self.acc.result()

    @property
    def final(self) -> dict[str, Any] | None:
        """The finished Response (kept for previous_response_id), None when it failed."""
        if self.acc.error or self.acc.terminal not in ("response.completed", "response.incomplete"):
            return None
        return self.acc.result()
