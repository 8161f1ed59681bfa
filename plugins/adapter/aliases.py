"""Model aliases: the names clients ask for (Claude Code's own `claude-opus-4-8`, a team's
`fast`) mapped to what the pool can serve (`gpt-5.5`, `gpt-5.5(low)`), and the one clear 400
for a name that is neither.

Patterns are shell globs (fnmatch), matched case-insensitively, first match wins; a platform
key's own aliases are tried before the config's. A target may carry the effort suffix.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Mapping

from codexproxy.exchange import GatewayError

from .common import parse_model_effort

# Without --model Claude Code asks for its own defaults (opus for the main loop, haiku for
# side calls such as titles): these make it work out of the box.
DEFAULT_ALIASES: dict[str, str] = {
    "claude-*opus*": "gpt-5.5",
    "claude-*sonnet*": "gpt-5.5",
    "claude-*haiku*": "gpt-5.5(low)",
    "claude-*": "gpt-5.5",
}


def match_alias(name: str, alias_maps: Iterable[Mapping[str, str]]) -> str | None:
    """The target of the first pattern (across the maps, in order) that matches `name`."""
    lowered = name.lower()
    for aliases in alias_maps:
        for pattern, target in aliases.items():
            if fnmatchcase(lowered, pattern.lower()):
                return target
    return None


def resolve_model(requested: str, known: list[str], alias_maps: list[Mapping[str, str]],
                  strict: bool) -> tuple[str, str | None]:
    """(model, effort) to send upstream for the name a client asked for.

    A known model is used as it is; else the first matching alias; else, when `strict` (the
    pool's model list came from the upstream), a 400 listing what is available -- instead of
    the backend's "model is not supported when using Codex with a ChatGPT account". The
    client's own effort suffix wins over the alias target's.
    """
    name, effort = parse_model_effort(requested)
    if name in known:
        return name, effort
    target = match_alias(name, alias_maps)
    if target is not None:
        target_name, target_effort = parse_model_effort(target)
        return target_name, effort or target_effort
    if strict:
        aliases = [p for m in alias_maps for p in m]
        raise GatewayError(
            400, f"The model '{name}' is neither a model of this pool nor an alias. "
                 f"Models: {', '.join(known) or '(none)'}. Aliases: {', '.join(aliases) or '(none)'}.",
            code="model_not_found", param="model")
    return name, effort


def listed_aliases(alias_maps: list[Mapping[str, str]], known: list[str]) -> dict[str, str]:
    """Aliases to show next to the models in /v1/models (a pattern matches itself, so a
    client that picks one from the list gets its target); real model names are not shadowed."""
    out: dict[str, str] = {}
    for aliases in alias_maps:
        for pattern, target in aliases.items():
            if pattern not in known and pattern not in out:
                out[pattern] = target
    return out
