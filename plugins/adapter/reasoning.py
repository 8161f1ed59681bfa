"""The upstream's encrypted reasoning carried through clients that cannot hold a Responses
`reasoning` item: it travels in a field of their own protocol (an Anthropic thinking block's
`signature`) and comes back as a `reasoning` input item, so the model's reasoning survives
tool steps instead of restarting at each one.

Chat Completions clients get it as OpenRouter's `reasoning_details` entry of type
`reasoning.encrypted` on the assistant message (the field chat clients that round-trip
reasoning already send back as they received it).

What we hand out is recognisably ours (a prefix before the upstream's encrypted content); a
signature without it (a real Anthropic signature, from a conversation begun elsewhere) is not
ours to replay and is ignored, never an error.
"""

from __future__ import annotations

from typing import Any

SIGNATURE_PREFIX = "codexproxy.reasoning.v1:"


def signature_of(item: dict[str, Any]) -> str:
    """The signature for a finished `reasoning` output item ("" without encrypted content)."""
    encrypted = item.get("encrypted_content")
    return SIGNATURE_PREFIX + encrypted if isinstance(encrypted, str) and encrypted else ""


def reasoning_input(signature: Any, text: Any) -> dict[str, Any] | None:
    """The `reasoning` input item for a signature we issued, or None for anything else."""
    if not isinstance(signature, str) or not signature.startswith(SIGNATURE_PREFIX):
        return None
    encrypted = signature[len(SIGNATURE_PREFIX):]
    if not encrypted:
        return None
    summary = [{"type": "summary_text", "text": text}] if isinstance(text, str) and text else []
    return {"type": "reasoning", "summary": summary, "encrypted_content": encrypted}


def reasoning_detail(item: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The chat `reasoning_details` entry for a finished `reasoning` output item, or None."""
    signature = signature_of(item)
    if not signature:
        return None
    return {"type": "reasoning.encrypted", "data": signature, "format": "openai-responses-v1", "index": index}


def reasoning_from_details(details: Any) -> list[dict[str, Any]]:
    """The `reasoning` input items for the entries of a chat message's `reasoning_details`
    that we issued (any other entry -- summaries, other providers' blobs -- is left out)."""
    items = []
    for entry in details if isinstance(details, list) else []:
        if isinstance(entry, dict) and entry.get("type") == "reasoning.encrypted":
            item = reasoning_input(entry.get("data"), None)
            if item is not None:
                items.append(item)
    return items
