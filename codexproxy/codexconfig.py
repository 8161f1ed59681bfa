"""The Codex CLI `config.toml` block that points Codex at this proxy (`codexproxy codex-config`).

What Codex CLI 0.169 does, found by driving it against a local server and by `strings` on its
native binary (node_modules/@openai/codex-linux-x64/.../bin/codex):

WebSocket transport
- Used with a custom provider that sets `supports_websockets = true`, and with the built-in
  `openai` provider (`openai_base_url = ".../v1"`). Upgrade: `GET {base_url}/responses` with
  `OpenAI-Beta: responses_websockets=2026-02-06`, `x-codex-beta-features: remote_compaction_v2`,
  originator, user-agent, session-id, thread-id, x-client-request-id, x-codex-window-id and
  x-codex-turn-metadata (the socket's first request_kind, e.g. "prewarm").
- Auth on the upgrade: a custom provider sends `Authorization: Bearer $<env_key>`. The built-in
  provider sends `Bearer $CODEX_API_KEY` or the key saved by `codex login --with-api-key`
  (OPENAI_API_KEY in the environment is NOT used: no Authorization header at all); with a
  ChatGPT login it sends the ChatGPT access token and `chatgpt-account-id` to openai_base_url.
- First message on a new socket is a prewarm: `{"type": "response.create", ..., "generate":
  false}` with only the instructions as input. When its answer has no output, the first real
  turn carries `previous_response_id` = the prewarm's response id and only the NEW input items.
  Likewise every follow-up on the same socket (a tool result, a compaction) carries
  `previous_response_id` and only the items added since: a server that speaks HTTP/SSE upstream
  must keep, per socket, the last request's full input plus its output items and expand the id.
  `client_metadata` gains `x-codex-ws-stream-request-start-ms`.
- A failed upgrade (405, 401...) is retried ~6 s ("ERROR: Reconnecting... 2/5" .. "5/5" on stderr)
  and then "warning: Falling back from WebSockets to HTTPS transport. unexpected status ...";
  a 426 makes it fall back to HTTP at once and silently. An `error` message answering the
  prewarm makes it drop that socket and open a new one for the turn (full input, no id).

Remote compaction
- 0.169 never calls `/responses/compact` (the path is not in the binary). Compaction is remote
  ("v2") only for a provider whose `name` is exactly "OpenAI" ("openai" is not: the built-in
  provider, or a custom provider named so); any auth works (an env_key API key does, and with
  a ChatGPT login present such a provider still sends its env_key); the `remote_compaction_v2`
  feature cannot be turned off (features.remote_compaction_v2=false changes nothing). Any other provider name compacts locally: an ordinary turn with a
  summarization prompt (over WebSocket on a second socket).
- A v2 compaction is an ordinary `/responses` request (HTTP or WebSocket) whose
  x-codex-turn-metadata says `"request_kind": "compaction"` and whose last input item is
  `{"type": "compaction_trigger"}`. Codex expects exactly one output item of type `compaction`
  (`encrypted_content`) and sends it back as an input item of the following turns.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
PROVIDER_ID = re.compile(r"[A-Za-z0-9_-]+\Z")

# Codex 0.169 compacts remotely only for a provider with this exact name (see above).
REMOTE_COMPACTION_PROVIDER_NAME = "OpenAI"


def proxy_url(app) -> str:
    """Where Codex should find this proxy: the running one's URL (run.json), else the configured
    address (a wildcard host as loopback)."""
    running = app.running_proxy_url()
    if running:
        return running
    host = app.config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{app.config.server.port}"


def codex_config_text(url: str, key: str | None = None, env_key: str = "CODEXPROXY_API_KEY") -> str:
    """What `codexproxy codex-config` prints: valid TOML as a whole (the hints are comments), so
    it can go into ~/.codex/config.toml as it is."""
    if key is not None and (not key or any(c.isspace() or not c.isprintable() for c in key)):
        raise ValueError("--key must be a platform key (no spaces or control characters)")
    shown_key = key or "<your platform key: codexproxy keys create NAME>"
    return "\n".join([
        "# ~/.codex/config.toml (top-level keys go above any [table] already there)",
        render_codex_config(url, env_key),
        "# and in your shell:",
        f"# export {env_key}={shown_key}",
        "",
    ])


def _toml_string(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string (same escapes).
    return json.dumps(value, ensure_ascii=False)


def render_codex_config(proxy_url: str, env_key: str = "CODEXPROXY_API_KEY", provider_id: str = "codexproxy") -> str:
    """The config.toml block under which Codex 0.169 talks to the proxy at `proxy_url` over
    WebSockets and compacts remotely through it, with the platform key read from `env_key`.

    ValueError names the argument that is wrong."""
    parts = urlsplit(proxy_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"proxy URL must look like http://127.0.0.1:48760, got {proxy_url!r}")
    if not ENV_NAME.match(env_key):
        raise ValueError(f"env key must be an environment variable name (letters, digits, _), got {env_key!r}")
    if not PROVIDER_ID.match(provider_id):
        raise ValueError(f"provider id must be letters, digits, - or _, got {provider_id!r}")
    base_url = proxy_url.rstrip("/") + "/v1"
    return "\n".join([
        f"model_provider = {_toml_string(provider_id)}",
        "",
        f"[model_providers.{provider_id}]",
        "# \"OpenAI\": the only provider name Codex compacts remotely for (0.169); the",
        "# compaction then goes through the proxy to a pool account like any turn.",
        f"name = {_toml_string(REMOTE_COMPACTION_PROVIDER_NAME)}",
        f"base_url = {_toml_string(base_url)}",
        f"env_key = {_toml_string(env_key)}",
        'wire_api = "responses"',
        "# one WebSocket per session instead of an HTTP request per turn",
        "supports_websockets = true",
        "",
    ])
