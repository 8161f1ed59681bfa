"""Legacy `/v1/completions`: the prompt becomes one user chat message, and the answer is
the chat converters' output reshaped into `text_completion` objects.

Only text comes back: reasoning and tool calls have no place in a text completion.
"""

from __future__ import annotations

from typing import Any

from codexproxy.exchange import GatewayError
from codexproxy.sse import SSEEvent, new_event

from .chat import IGNORED as CHAT_IGNORED
from .chat import ChatAggregate, ChatStream

# Every field of a legacy Completions request: carried over to the chat body (and mapped
# there), ignored for the reason given, or refused with a 400 naming it.
_CARRIED = ("model", "stream", "stream_options", "reasoning_effort", "prompt_cache_key", "user")
# The same reasons as chat's, for the fields the two share.
IGNORED = {name: CHAT_IGNORED[name] for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                                                 "logit_bias", "seed", "max_tokens", "stop")}
REFUSED = {  # refused unless off (null, false, 0, or the one value that means "as usual")
    "logprobs": "the backend returns no log probabilities",
    "echo": "the prompt is not echoed back",
    "suffix": "insertion (a suffix after the completion) is not available",
    "best_of": "one completion per request",
    "n": "one completion per request",
}
_USUAL = {"best_of": 1, "n": 1}


def completions_to_chat(body: dict) -> dict:
    """The Chat Completions body for a legacy Completions body (then use chat_to_responses)."""
    if not isinstance(body, dict):
        raise GatewayError(400, "Request body must be a JSON object.")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        # One answer per request: several prompts are read as one text.
        prompt = "\n\n".join(prompt)
    if not isinstance(prompt, str):
        raise GatewayError(400, "'prompt' must be a string or a list of strings.", param="prompt")
    for field, value in body.items():
        if field in REFUSED and value not in (None, False, 0, _USUAL.get(field)):
            raise GatewayError(400, f"'{field}' is not supported by this gateway: {REFUSED[field]}.", param=field)
        if field not in _CARRIED and field not in IGNORED and field not in REFUSED and field != "prompt":
            raise GatewayError(400, f"Unrecognized request argument supplied: {field}", param=field)
    chat = {k: body[k] for k in _CARRIED if k in body}
    chat["messages"] = [{"role": "user", "content": prompt}]
    return chat


def _completion(id_: str, created: int, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": id_, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}


def _legacy_usage(usage: dict) -> dict:
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


class CompletionsStream(ChatStream):
    """ChatStream whose chunks are `text_completion` objects carrying only text."""

    def _chunk(self, delta: dict, finish: str | None = None) -> list[SSEEvent]:
        text = delta.get("content")
        if not text and finish is None:
            return []  # role, reasoning and tool-call deltas have no legacy form
        return [new_event("", _completion(self.completion_id, self.created, self.model, text or "", finish))]

    def _usage_chunk(self, usage: dict) -> list[SSEEvent]:
        body = _completion(self.completion_id, self.created, self.model, "", None)
        body["choices"] = []
        body["usage"] = _legacy_usage(usage)
        return [new_event("", body)]


class CompletionsAggregate(ChatAggregate):
    """ChatAggregate answering with one `text_completion` object."""

    def body(self) -> dict[str, Any]:
        chat = super().body()
        choice = chat["choices"][0]
        body = _completion(self.completion_id, self.created, self.model,
                           choice["message"]["content"] or "", choice["finish_reason"])
        body["usage"] = _legacy_usage(chat["usage"])
        return body
