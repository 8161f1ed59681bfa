"""Chat Completions on the client side: the request mapped to the Responses API (each field in
MAPPED or IGNORED below), and the upstream Responses events turned into `chat.completion.chunk`s
or one `chat.completion`.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from codexproxy.exchange import GatewayError
from codexproxy.sse import SSEEvent, new_event

from .reasoning import reasoning_detail, reasoning_from_details
from .common import (Aggregate, EventStream, ToolCall, bad_request, checked_role, message_item, message_text, parse_model_effort,
                     reasoning_fields, reasoning_text, require_model_and_messages, usage_counts)

_ROLES = ("system", "developer", "user", "assistant", "tool")


_bad = bad_request

# Every top-level field of a Chat Completions request: mapped (below), ignored for the reason
# given, or refused with a 400 naming it -- as OpenAI refuses an argument it does not know.
MAPPED = ("model", "messages", "n", "tools", "tool_choice", "parallel_tool_calls", "response_format",
          "verbosity", "reasoning_effort", "reasoning", "prompt_cache_key", "service_tier", "stream",
          "stream_options", "user")
_SAMPLING = "reasoning models take no sampling parameters; the backend refuses them"
IGNORED = {
    "temperature": _SAMPLING, "top_p": _SAMPLING, "presence_penalty": _SAMPLING,
    "frequency_penalty": _SAMPLING, "logit_bias": _SAMPLING, "seed": _SAMPLING,
    "max_tokens": "the Codex backend refuses max_output_tokens; the answer ends at the model's own limit",
    "max_completion_tokens": "the Codex backend refuses max_output_tokens; the answer ends at the model's own limit",
    "stop": "the Responses API has no stop sequences",
    "metadata": "the backend stores nothing to tag (store is false)",
    "store": "the backend stores nothing (store must be false)",
    "safety_identifier": "no end-user safety tracking on ChatGPT accounts",
    "prompt_cache_retention": "the backend decides how long its prompt cache lives",
}
# Refused unless off: what they ask for cannot be produced here.
REFUSED = {
    "logprobs": "the backend returns no log probabilities",
    "top_logprobs": "the backend returns no log probabilities",
    "audio": "audio output is not available on the Codex backend",
    "prediction": "predicted outputs are not available on the Codex backend",
    "web_search_options": "send a web_search tool instead",
    "functions": "the legacy functions field is not supported; send tools",
    "function_call": "the legacy function_call field is not supported; send tool_choice",
}
_OFF_VALUES = (None, False, 0, [], {})


def _check_fields(body: dict) -> None:
    for field, value in body.items():
        if field in REFUSED and value not in _OFF_VALUES:
            raise _bad(f"'{field}' is not supported by this gateway: {REFUSED[field]}.", field)
        if field == "modalities" and value not in (None, ["text"]):
            raise _bad("'modalities' can only be [\"text\"] here.", field)
        if field not in MAPPED and field not in IGNORED and field not in REFUSED and field != "modalities":
            raise _bad(f"Unrecognized request argument supplied: {field}", field)


# --- request ---------------------------------------------------------------------------------

def chat_to_responses(body: dict) -> dict:
    """The Responses API body for a Chat Completions request body."""
    model, messages = require_model_and_messages(body)
    _check_fields(body)
    if body.get("n") not in (None, 1):
        raise _bad("Only n=1 is supported.", "n")

    name, suffix_effort = parse_model_effort(model)
    out: dict[str, Any] = {"model": name, "instructions": "", "input": _convert_messages(messages),
                           "store": False, "stream": True}
    if body.get("tools") is not None:
        out["tools"] = _convert_tools(body["tools"])
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _convert_tool_choice(body["tool_choice"])
    if isinstance(body.get("parallel_tool_calls"), bool):
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    text = _text_options(body)
    if text:
        out["text"] = text
    # The model suffix wins: it is the user's deliberate choice, while clients often fill the
    # effort fields automatically.
    out.update(reasoning_fields(suffix_effort or _requested_effort(body)))
    if isinstance(body.get("prompt_cache_key"), str):
        out["prompt_cache_key"] = body["prompt_cache_key"]
    if body.get("service_tier") == "priority":  # the only tier the backend takes
        out["service_tier"] = "priority"
    return out


def chat_session(body: dict, headers: dict[str, str]) -> str | None:
    """The conversation a chat request belongs to: the client's session header, else its
    `prompt_cache_key`, else its `user` (hashed: an end-user id, maybe an e-mail)."""
    session = headers.get("session_id") or headers.get("session-id")
    if session:
        return session
    if isinstance(body.get("prompt_cache_key"), str) and body["prompt_cache_key"]:
        return body["prompt_cache_key"]
    if isinstance(body.get("user"), str) and body["user"]:
        return "user-" + hashlib.sha256(body["user"].encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return None


def _requested_effort(body: dict) -> str | None:
    effort = body.get("reasoning_effort")
    if effort is None and isinstance(body.get("reasoning"), dict):
        effort = body["reasoning"].get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str):
        raise _bad("'reasoning_effort' must be a string.", "reasoning_effort")
    return effort.strip().lower() or None


def _convert_messages(messages: list) -> list[dict]:
    items: list[dict] = []
    call_kinds: dict[str, str] = {}  # call_id -> "function" | "custom", from assistant turns
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = checked_role(msg, where, _ROLES)
        content = msg.get("content")
        if role in ("system", "developer"):
            items.append(message_item("developer", [{"type": "input_text", "text": _text_of(content, where)}]))
        elif role == "user":
            if content is None:
                raise _bad(f"'{where}.content' is required.", f"{where}.content")
            items.append(message_item("user", _user_parts(content, where)))
        elif role == "assistant":
            # Encrypted reasoning we issued (reasoning_details) goes first: it led to this turn.
            items.extend(reasoning_from_details(msg.get("reasoning_details")))
            text = _text_of(content, where)
            if text:
                items.append(message_item("assistant", [{"type": "output_text", "text": text}]))
            items.extend(_assistant_calls(msg.get("tool_calls"), where, call_kinds))
        else:
            items.append(_tool_output(msg, where, call_kinds))
    return items


def _text_of(content: Any, where: str) -> str:
    """Text of a string or list-of-text-parts content (system, assistant and tool turns)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or a list of parts.", f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text"):
            texts.append(part.get("text") or "")
        elif kind == "refusal":
            texts.append(part.get("refusal") or "")
        else:
            raise _bad(f"'{where}.content[{j}]' must be a text part here; got type {kind!r}.",
                       f"{where}.content[{j}].type")
    return "".join(texts)


def _user_parts(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or a list of parts.", f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            parts.append({"type": "input_text", "text": part.get("text") or ""})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise _bad(f"'{at}.image_url.url' must be a non-empty string.", f"{at}.image_url.url")
            converted = {"type": "input_image", "image_url": url}
            if isinstance(image, dict) and image.get("detail"):
                converted["detail"] = image["detail"]
            parts.append(converted)
        elif kind == "file" and isinstance(part.get("file"), dict):
            file = part["file"]
            parts.append({"type": "input_file", **{k: file[k] for k in ("file_data", "file_id", "filename")
                                                   if isinstance(file.get(k), str)}})
        elif kind in ("input_image", "input_file"):
            parts.append(part)
        else:
            raise _bad(f"'{at}.type' {kind!r} is not supported.", f"{at}.type")
    return parts


def _assistant_calls(tool_calls: Any, where: str, call_kinds: dict[str, str]) -> list[dict]:
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, list):
        raise _bad(f"'{where}.tool_calls' must be a list.", f"{where}.tool_calls")
    items = []
    for j, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("id"), str):
            raise _bad(f"'{at}.id' must be a string.", f"{at}.id")
        if call.get("type") == "custom":
            custom = call.get("custom") if isinstance(call.get("custom"), dict) else {}
            items.append({"type": "custom_tool_call", "call_id": call["id"],
                          "name": custom.get("name") or "", "input": custom.get("input") or ""})
            call_kinds[call["id"]] = "custom"
            continue
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"'{at}.function.name' must be a string.", f"{at}.function.name")
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):  # some clients send the object itself
            arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
        items.append({"type": "function_call", "call_id": call["id"], "name": fn["name"],
                      "arguments": arguments})
        call_kinds[call["id"]] = "function"
    return items


def _tool_output(msg: dict, where: str, call_kinds: dict[str, str]) -> dict:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"'{where}.tool_call_id' is required.", f"{where}.tool_call_id")
    output = _text_of(msg.get("content"), where)
    kind = call_kinds.get(call_id)
    if kind is None:
        # The backend rejects an output whose call is not in the input (clients that trim
        # history do this); keep the result as plain context instead of failing the request.
        return message_item("user", [{"type": "input_text", "text": f"[tool result {call_id}]\n{output}"}])
    kind = "custom_tool_call_output" if kind == "custom" else "function_call_output"
    return {"type": kind, "call_id": call_id, "output": output}


def _convert_tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list.", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"'tools[{i}]' must be an object.", f"tools[{i}]")
        kind = tool.get("type", "function")
        if kind in ("function", "custom"):
            spec = tool.get(kind)
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
                raise _bad(f"'tools[{i}].{kind}.name' must be a non-empty string.", f"tools[{i}].{kind}.name")
            flat = {"type": kind, "name": spec["name"]}
            if isinstance(spec.get("description"), str):
                flat["description"] = spec["description"]
            if kind == "function":
                flat["parameters"] = spec.get("parameters") or {"type": "object", "properties": {}}
                # Responses defaults `strict` to true, Chat Completions to false: keep chat's.
                flat["strict"] = bool(spec.get("strict", False))
            elif spec.get("format") is not None:
                flat["format"] = spec["format"]
            out.append(flat)
        else:
            out.append(tool)  # hosted tools (web_search...) have the same shape in both APIs
    return out


def _convert_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        spec = choice.get(kind) if kind in ("function", "custom") else None
        if isinstance(spec, dict):
            if not isinstance(spec.get("name"), str):
                raise _bad(f"'tool_choice.{kind}.name' must be a string.", f"tool_choice.{kind}.name")
            return {"type": kind, "name": spec["name"]}
        return choice
    raise _bad("'tool_choice' must be a string or an object.", "tool_choice")


def _text_options(body: dict) -> dict:
    text: dict[str, Any] = {}
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict):
                raise _bad("'response_format.json_schema' must be an object.", "response_format.json_schema")
            text["format"] = {"type": "json_schema", "name": spec.get("name") or "response",
                              "schema": spec.get("schema") or {}}
            for key in ("strict", "description"):
                if spec.get(key) is not None:
                    text["format"][key] = spec[key]
        elif kind == "json_object":
            text["format"] = {"type": "json_object"}
        elif kind != "text":
            raise _bad(f"'response_format.type' {kind!r} is not supported.", "response_format.type")
    elif fmt is not None:
        raise _bad("'response_format' must be an object.", "response_format")
    if isinstance(body.get("verbosity"), str):
        text["verbosity"] = body["verbosity"]
    return text


# --- response --------------------------------------------------------------------------------

def finish_reason(terminal: str | None, incomplete_reason: str | None, used_tools: bool) -> str:
    if terminal == "response.incomplete":
        return "content_filter" if incomplete_reason == "content_filter" else "length"
    return "tool_calls" if used_tools else "stop"


def chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    counts = usage_counts(usage)
    return {"prompt_tokens": counts["input"], "completion_tokens": counts["output"],
            "total_tokens": counts["total"],
            "prompt_tokens_details": {"cached_tokens": counts["cached"]},
            "completion_tokens_details": {"reasoning_tokens": counts["reasoning"]}}


def _data(payload: Any) -> list[SSEEvent]:
    """A data-only event: chat completions' SSE has no `event:` lines."""
    return [new_event("", payload)]


def _done() -> list[SSEEvent]:
    return [SSEEvent("", "[DONE]")]


class ChatStream(EventStream):
    """Upstream Responses events -> `chat.completion.chunk` events, event by event.

    Subclasses change the chunk shape by overriding `_chunk` and `_usage_chunk`.
    """

    def __init__(self, model: str, include_usage: bool = False, created: int | None = None,
                 completion_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self.completion_id = completion_id or f"chatcmpl-{uuid.uuid4().hex}"
        self._role_sent = False
        self._reasoned = False
        self._details = 0  # reasoning_details entries sent

    def on_created(self) -> list[SSEEvent]:
        return [] if self._role_sent else self._chunk({"content": ""})

    def on_text(self, index: Any, text: str) -> list[SSEEvent]:
        return self._chunk({"content": text})

    def on_refusal(self, index: Any, text: str) -> list[SSEEvent]:
        return self._chunk({"refusal": text})

    def on_reasoning_part(self, index: Any) -> list[SSEEvent]:
        # Summary parts (and reasoning items) are paragraphs: keep them apart.
        return self._chunk({"reasoning_content": "\n\n"}) if self._reasoned else []

    def on_reasoning(self, index: Any, text: str) -> list[SSEEvent]:
        self._reasoned = True
        return self._chunk({"reasoning_content": text})

    def on_tool_start(self, index: Any, call: ToolCall, item: dict[str, Any]) -> list[SSEEvent]:
        key, field = ("custom", "input") if call.custom else ("function", "arguments")
        head = {"index": call.number, "id": item.get("call_id") or item.get("id"),
                "type": key, key: {"name": item.get("name") or "", field: ""}}
        return self._chunk({"tool_calls": [head]})

    def on_tool_input(self, index: Any, call: ToolCall, fragment: str) -> list[SSEEvent]:
        key, field = ("custom", "input") if call.custom else ("function", "arguments")
        return self._chunk({"tool_calls": [{"index": call.number, key: {field: fragment}}]})

    def on_item_done(self, index: Any, item: dict[str, Any]) -> list[SSEEvent]:
        detail = reasoning_detail(item, self._details) if item.get("type") == "reasoning" else None
        if detail is None:
            return []
        self._details += 1
        return self._chunk({"reasoning_details": [detail]})

    def on_end(self, kind: str, response: dict[str, Any]) -> list[SSEEvent]:
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        out = self._chunk({}, finish_reason(kind, reason, bool(self.calls)))
        if self.include_usage:
            out += self._usage_chunk(chat_usage(response.get("usage") or {}))
        return out + _done()

    def render_error(self, error: GatewayError) -> list[SSEEvent]:
        # An error object in the stream, never a silent truncated success.
        return _data(error.openai_body()) + _done()

    def _chunk(self, delta: dict, finish: str | None = None) -> list[SSEEvent]:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        return _data({"id": self.completion_id, "object": "chat.completion.chunk",
                      "created": self.created, "model": self.model,
                      "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    def _usage_chunk(self, usage: dict) -> list[SSEEvent]:
        return _data({"id": self.completion_id, "object": "chat.completion.chunk",
                      "created": self.created, "model": self.model, "choices": [], "usage": usage})


class ChatAggregate(Aggregate):
    """Upstream Responses events -> one `chat.completion` JSON (non-stream clients)."""

    def __init__(self, model: str, created: int | None = None, completion_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.completion_id = completion_id or f"chatcmpl-{uuid.uuid4().hex}"

    def body(self) -> dict[str, Any]:
        """The `chat.completion` object for what the accumulator holds."""
        text, refusal, reasoning, calls, details = [], [], [], [], []
        for item in self.acc.output():
            kind = item.get("type")
            if kind == "reasoning" and (detail := reasoning_detail(item, len(details))):
                details.append(detail)
            if kind == "message":
                text.append(message_text(item))
                refusal += [p.get("refusal") or "" for p in item.get("content") or []
                            if isinstance(p, dict) and p.get("type") == "refusal"]
            elif kind == "reasoning":
                reasoning.append(reasoning_text(item))
            elif kind == "function_call":
                function = {"name": item.get("name"), "arguments": item.get("arguments") or ""}
                calls.append({"id": item.get("call_id"), "type": "function", "function": function})
            elif kind == "custom_tool_call":
                calls.append({"id": item.get("call_id"), "type": "custom",
                              "custom": {"name": item.get("name"), "input": item.get("input") or ""}})
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(text) if (any(text) or not calls) else None,
                                   "refusal": "".join(refusal) or None}
        if any(reasoning):
            message["reasoning_content"] = "\n\n".join(r for r in reasoning if r)
        if details:
            message["reasoning_details"] = details
        if calls:
            message["tool_calls"] = calls
        reason = finish_reason(self.acc.terminal, self.acc.incomplete_reason, bool(calls))
        return {"id": self.completion_id, "object": "chat.completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
                "usage": chat_usage(self.acc.usage)}
