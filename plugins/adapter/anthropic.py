"""Anthropic Messages on the client side (Anthropic SDK, Claude Code): the request mapped to
the Responses API. The answer's half (Messages SSE, one Message object, errors) is
anthropic_response.py, re-exported here.

Every top-level field of a request is mapped, ignored for a reason written in `IGNORED`, or
refused with a 400 naming it (as Anthropic's API refuses a field it does not know): nothing is
dropped silently. Claude Code's fields (max_tokens, metadata, context_management,
cache_control...) are all accepted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from codexproxy.models import EFFORTS

from .anthropic_response import AnthropicAggregate, AnthropicStream, anthropic_error_body  # noqa: F401  (re-exported)
from .common import bad_request, checked_role, message_item, parse_model_effort, reasoning_fields, require_model_and_messages
from .reasoning import reasoning_input

_ROLES = ("user", "assistant", "system")
# Anthropic's effort names; "max" is its top level, xhigh ours.
_EFFORT_NAMES = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}


_bad = bad_request

# Fields with a Responses equivalent (converted below).
MAPPED = ("model", "messages", "system", "tools", "tool_choice", "thinking", "output_config", "metadata", "stream")
# Fields accepted and not sent upstream, and why.
IGNORED = {
    "max_tokens": "the Codex backend refuses max_output_tokens; the answer ends at the model's own limit",
    "temperature": "reasoning models take no sampling parameters; the backend refuses them",
    "top_p": "reasoning models take no sampling parameters; the backend refuses them",
    "top_k": "reasoning models take no sampling parameters; the backend refuses them",
    "stop_sequences": "the Responses API has no stop sequences",
    "context_management": "Claude's server-side context editing; the client sends the history it wants kept",
    "cache_control": "prompt caching is automatic upstream (keyed by the conversation's prompt_cache_key)",
    "service_tier": "Anthropic's capacity tiers have no counterpart on ChatGPT accounts",
}
# Fields refused: what they ask for runs on Anthropic's servers only.
REFUSED = {
    "mcp_servers": "the MCP connector runs on Anthropic's servers; give the client the MCP servers instead",
    "container": "code-execution containers run on Anthropic's servers",
}


# --- request ---------------------------------------------------------------------------------

def anthropic_to_responses(body: dict) -> dict:
    """The Responses API body for an Anthropic Messages request body."""
    model, messages = require_model_and_messages(body)
    _check_fields(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise _bad("'max_tokens' must be an integer.", "max_tokens")

    items: list[dict] = []
    if body.get("system") is not None:
        system = _text_blocks(body["system"], "system")
        if system:
            items.append(message_item("developer", [{"type": "input_text", "text": system}]))
    call_ids: set[str] = set()
    for i, msg in enumerate(messages):
        items.extend(_convert_message(msg, f"messages[{i}]", call_ids))

    name, suffix_effort = parse_model_effort(model)
    out: dict[str, Any] = {"model": name, "instructions": "", "input": items,
                           "store": False, "stream": True}
    tools = _convert_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        out["parallel_tool_calls"] = True
    choice = body.get("tool_choice")
    if choice is not None:
        out["tool_choice"] = _convert_tool_choice(choice)
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    # The model suffix is the user's explicit choice; Claude Code fills thinking/effort itself.
    out.update(reasoning_fields(suffix_effort or _requested_effort(body)))
    text_format = _text_format(body.get("output_config"))
    if text_format:
        out["text"] = {"format": text_format}
    session = anthropic_session(body, {})
    if session:  # the adapter prefers Claude Code's session header when there is one
        out["prompt_cache_key"] = session
    return out


def _check_fields(body: dict) -> None:
    for field in body:
        if field in REFUSED:
            raise _bad(f"'{field}' is not supported by this gateway: {REFUSED[field]}.", field)
        if field not in MAPPED and field not in IGNORED:
            raise _bad(f"'{field}': Extra inputs are not permitted (not a Messages API field this gateway knows).", field)


def _text_format(config: Any) -> dict | None:
    """`output_config.format` (a JSON schema the answer must follow, as Claude Code's title
    request asks) -> the Responses `text.format`."""
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise _bad("'output_config.format' must be {\"type\": \"json_schema\", \"schema\": {...}}.", "output_config.format")
    # Not strict: OpenAI's strict mode demands every property be required, which Anthropic's does not.
    return {"type": "json_schema", "name": "output", "schema": fmt["schema"], "strict": False}


def anthropic_session(body: dict, headers: dict[str, str]) -> str | None:
    """The conversation an Anthropic request belongs to: Claude Code's session header (the same
    across --continue), else `metadata.user_id` (which names the session too). Hashed: it
    becomes the upstream session header and prompt_cache_key, which are length-limited and
    must not carry a client's raw identifiers."""
    session = headers.get("x-claude-code-session-id")
    if not session:
        metadata = body.get("metadata")
        user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
        session = user_id if isinstance(user_id, str) else None
    if not session:
        return None
    return "claude-session-" + hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _text_blocks(content: Any, where: str) -> str:
    """Text of a string or a list of text blocks (system prompts); cache_control is ignored."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be a string or a list of text blocks.", where)
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"'{where}[{j}].type' must be \"text\".", f"{where}[{j}].type")
        texts.append(block.get("text") or "")
    return "\n\n".join(t for t in texts if t)


def _convert_message(msg: Any, where: str, call_ids: set[str]) -> list[dict]:
    role = checked_role(msg, where, _ROLES)
    content = msg.get("content")
    if role == "system":  # Claude Code's mid-conversation system message
        text = _text_blocks(content, f"{where}.content")
        return [message_item("developer", [{"type": "input_text", "text": text}])]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or a list of blocks.", f"{where}.content")

    items: list[dict] = []
    parts: list[dict] = []
    text_type = "input_text" if role == "user" else "output_text"
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": text_type, "text": block.get("text") or ""})
            continue
        if kind in ("thinking", "redacted_thinking"):
            # Our own signature carries the upstream's encrypted reasoning: replayed as a
            # reasoning item. Anything else (Anthropic's own signatures, redacted blocks) means
            # nothing to the backend and is left out.
            reasoning = reasoning_input(block.get("signature"), block.get("thinking")) if role == "assistant" else None
            if reasoning is not None:
                if parts:
                    items.append(message_item(role, parts))
                    parts = []
                items.append(reasoning)
            continue
        if role == "user" and kind == "image":
            parts.append(_image(block, at))
            continue
        if role == "user" and kind == "document":
            parts.append(_document(block, at))
            continue
        # Tool blocks become items of their own: close the message being built first.
        if parts:
            items.append(message_item(role, parts))
            parts = []
        if role == "assistant" and kind == "tool_use":
            items.append(_tool_use(block, at, call_ids))
        elif role == "user" and kind == "tool_result":
            items.extend(_tool_result(block, at, call_ids))
        else:
            raise _bad(f"'{at}.type' {kind!r} is not supported in a {role} message.", f"{at}.type")
    if parts:
        items.append(message_item(role, parts))
    return items


def _image(block: dict, at: str) -> dict:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") or "image/png"
        return {"type": "input_image", "image_url": f"data:{media_type};base64,{source['data']}"}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "input_image", "image_url": source["url"]}
    raise _bad(f"'{at}.source' must be a base64 or url image source.", f"{at}.source")


def _document(block: dict, at: str) -> dict:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return {"type": "input_text", "text": source["data"]}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") or "application/pdf"
        return {"type": "input_file", "filename": block.get("title") or "document.pdf",
                "file_data": f"data:{media_type};base64,{source['data']}"}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "input_file", "file_url": source["url"]}
    raise _bad(f"'{at}.source' must be a text, base64 or url document source.", f"{at}.source")


def _tool_use(block: dict, at: str, call_ids: set[str]) -> dict:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise _bad(f"'{at}.id' and '{at}.name' must be strings.", f"{at}.id")
    call_ids.add(block["id"])
    return {"type": "function_call", "call_id": block["id"], "name": block["name"],
            "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}


def _tool_result(block: dict, at: str, call_ids: set[str]) -> list[dict]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"'{at}.tool_use_id' is required.", f"{at}.tool_use_id")
    content = block.get("content")
    texts, images = [], []
    for sub in [content] if isinstance(content, str) else content or []:
        if isinstance(sub, str):
            texts.append(sub)
        elif isinstance(sub, dict) and sub.get("type") == "text":
            texts.append(sub.get("text") or "")
        elif isinstance(sub, dict) and sub.get("type") == "image":
            images.append(_image(sub, at))
        else:  # other result blocks (search results...) reach the model as their JSON
            texts.append(json.dumps(sub, ensure_ascii=False))
    output = "\n".join(texts)
    if block.get("is_error"):
        output = "Error: " + output
    if call_id not in call_ids:
        # The backend rejects an output without its call in the input (trimmed history):
        # keep the result as plain context instead of failing the request.
        items = [message_item("user", [{"type": "input_text", "text": f"[tool result {call_id}]\n{output}"}])]
    else:
        items = [{"type": "function_call_output", "call_id": call_id, "output": output}]
    if images:  # a function_call_output carries text only: images follow as a user message
        items.append(message_item("user", [{"type": "input_text", "text": f"[images from tool result {call_id}]"},
                                       *images]))
    return items


def _convert_tools(tools: Any) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list.", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"'tools[{i}].name' must be a non-empty string.", f"tools[{i}].name")
        if tool.get("type") not in (None, "custom") and "input_schema" not in tool:
            continue  # Anthropic-hosted tools (web_search_..., bash_...) cannot run upstream
        flat = {"type": "function", "name": tool["name"],
                "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
                "strict": False}  # Responses defaults to strict; Anthropic schemas are not strict
        if isinstance(tool.get("description"), str):
            flat["description"] = tool["description"]
        out.append(flat)
    return out


def _convert_tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _bad("'tool_choice.name' must be a string.", "tool_choice.name")
        return {"type": "function", "name": choice["name"]}
    raise _bad("'tool_choice.type' must be auto, any, tool or none.", "tool_choice.type")


def _requested_effort(body: dict) -> str | None:
    effort = None
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        kind = thinking.get("type")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            budget = budget if isinstance(budget, int) else 8192
            effort = "low" if budget <= 4096 else "medium" if budget <= 16384 else "high"
        elif kind == "adaptive":
            effort = "medium"
        elif kind == "disabled":
            effort = "none"
    config = body.get("output_config")
    wanted = config.get("effort") if isinstance(config, dict) else None
    if isinstance(wanted, str):
        wanted = wanted.lower()
        effort = _EFFORT_NAMES.get(wanted) or (wanted if wanted in EFFORTS else effort)
    return effort


def estimate_tokens(body: Any) -> int:
    """A count_tokens answer without a tokenizer: about four characters per token."""
    return max(1, len(json.dumps(body, ensure_ascii=False)) // 4)
