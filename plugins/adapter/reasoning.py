"""The upstream's encrypted reasoning carried through clients that cannot hold a Responses
`reasoning` item: it travels in a field of their own protocol (an Anthropic thinking block's
`signature`) and comes back as a `reasoning` input item, so the model's reasoning survives
tool steps instead of restarting at each one.

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
