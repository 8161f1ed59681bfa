"""Model lists: the upstream's ChatGPT-format list read, and rendered for OpenAI and Anthropic
clients."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

# The lists carry no real dates; fixed values keep the answers stable (and cacheable).
_CREATED = 1735689600  # 2025-01-01T00:00:00Z
_CREATED_AT = "2025-01-01T00:00:00Z"


def slugs_from_upstream(payload: Any) -> list[str]:
    """Model slugs from `{"models":[{"slug":...}]}` (Codex backend) or `{"data":[{"id":...}]}`
    (OpenAI format), in order, without duplicates."""
    if not isinstance(payload, dict):
        return []
    slugs: list[str] = []
    for key, field in (("models", "slug"), ("data", "id")):
        entries = payload.get(key)
        for entry in entries if isinstance(entries, list) else []:
            slug = entry.get(field) if isinstance(entry, dict) else None
            if isinstance(slug, str) and slug and slug not in slugs:
                slugs.append(slug)
    return slugs


def openai_model_list(slugs: Iterable[str], aliases: Mapping[str, str] | None = None) -> dict:
    """The OpenAI list; an alias is an entry of its own, owned by codexproxy, naming its target."""
    data = [{"id": s, "object": "model", "created": _CREATED, "owned_by": "openai"} for s in slugs]
    data += [{"id": a, "object": "model", "created": _CREATED, "owned_by": "codexproxy", "alias_for": t}
             for a, t in (aliases or {}).items()]
    return {"object": "list", "data": data}


def anthropic_model_list(slugs: Iterable[str], aliases: Mapping[str, str] | None = None) -> dict:
    data = [{"type": "model", "id": s, "display_name": s, "created_at": _CREATED_AT} for s in slugs]
    data += [{"type": "model", "id": a, "display_name": f"{a} -> {t}", "created_at": _CREATED_AT, "alias_for": t}
             for a, t in (aliases or {}).items()]
    return {"data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
