"""What goes on the wire to the upstream, as pure functions: the request's headers and the
decoding of compressed request bodies.

The rule for headers: the upstream sees what the client would have sent it itself, under the
names the client used, except for this short list of differences (the wire-conformance test
holds the proxy to it):

- `Host`: the upstream's own authority (HTTP/1.1 requires it; every real server answers 400
  without it), never the client's;
- `Authorization` / `ChatGPT-Account-Id`: the pool account's (or the fallback upstream's key);
- `Content-Length` recomputed; `Content-Encoding` gone (the body goes upstream decoded);
  `Accept-Encoding: identity` (the proxy reads the SSE stream, it must not come compressed);
- `Accept: text/event-stream` (`application/json` for compaction) and `Content-Type:
  application/json`: the upstream request is always a JSON POST whose answer streams, whatever
  the client asked of the proxy;
- hop-by-hop headers and the client's platform key are dropped, and so is every header that
  is not in the pass-through list below (an SDK's telemetry headers are no business of
  chatgpt.com);
- `originator` / `User-Agent` are the client's for Codex clients, the configured ones otherwise;
- a `session_id` is added from the body's `prompt_cache_key` when the client sent no session.

The body goes upstream as the client's own bytes unless a plugin changed it (the adapter:
`stream` true, `store` false, fields the backend rejects stripped, a string `input` spelled out
as one message, `include` gaining `reasoning.encrypted_content` for a conversation the proxy
keeps for `previous_response_id`; converted protocols per its mapping).

No value with a control character ever reaches the upstream: a CR, LF or NUL in a header value
would let a key holder split the upstream request (inject headers, or a second request under
the account's token). Such a request is refused with a 400 naming the header, not stripped.
"""

from __future__ import annotations

import re
import zlib
from typing import Iterable
from urllib.parse import urlsplit

from .exchange import GatewayError

# Client headers the Codex backend understands (what Codex CLI sends), passed under the
# client's own names.
PASS_HEADERS = frozenset({"version", "x-client-request-id", "thread-id", "openai-beta", "conversation_id",
                          "conversation-id", "session_id", "session-id", "accept-language"})
PASS_PREFIXES = ("x-codex-", "x-openai-")
SESSION_HEADERS = ("session_id", "session-id")


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def has_control_char(value: str) -> bool:
    """True for any C0 control character but HTAB, and DEL (RFC 9110 field-value)."""
    return _CONTROL.search(value) is not None


def check_value(name: str, value: str, source: str | None = None) -> None:
    if has_control_char(value):
        what = source or f"header '{name}'"
        raise GatewayError(400, f"The {what} holds a control character (CR, LF, NUL or similar); "
                                f"it cannot be sent upstream.", code="invalid_header_value", param=source or name)


def authority(url: str) -> str:
    """The Host header for a request to `url`: host[:port], the port only when not the default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def header_dict(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header fields as the hooks see them: lower-case names, repeated fields joined with ", ".
    One pass over the raw (name, value) pairs, whichever HTTP library read them (mitmproxy's
    `Headers.fields`, httpx's `Headers.raw`); `items()` would look each name up again."""
    out: dict[str, str] = {}
    for name, value in fields:
        key, text = name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def account_credentials(account) -> dict[str, str]:
    """What an account puts on every request to the upstream (the proxied ones and the
    proxy's own: usage polls, model lists)."""
    headers = {"authorization": f"Bearer {account.access_token}"}
    if account.chatgpt_account_id:
        headers["chatgpt-account-id"] = account.chatgpt_account_id
    return headers


def passed_client_headers(fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers that go upstream, in the client's order and spelling (duplicates
    joined with ", " as RFC 9110 allows)."""
    out: dict[str, tuple[str, str]] = {}
    for name, value in fields:
        lower = name.lower()
        if lower in PASS_HEADERS or lower.startswith(PASS_PREFIXES):
            check_value(name, value)
            if lower in out:
                out[lower] = (out[lower][0], f"{out[lower][1]}, {value}")
            else:
                out[lower] = (name, value)
    return list(out.values())


def spelled(headers: dict[str, str], client_names: dict[str, str]) -> list[tuple[str, str]]:
    """The final header list: lower-case keys of the hooks' dict back in the client's spelling,
    every value checked once more (plugins add headers too)."""
    out = []
    for lower, value in headers.items():
        if value is None:
            continue
        value = str(value)
        check_value(lower, value)
        out.append((client_names.get(lower, lower), value))
    return out


# --- compressed request bodies --------------------------------------------------------------

def _zstd_decompressor():
    try:
        from compression import zstd  # Python 3.14+
    except ImportError:
        from backports import zstd  # the same module for 3.12/3.13 (a mitmproxy dependency too)
    return zstd.ZstdDecompressor(), zstd.ZstdError


def decode_body(body: bytes, encoding: str, limit: int) -> bytes:
    """The body decoded from its Content-Encoding (zstd, gzip, deflate, or a list of them in
    the order applied), never more than `limit` bytes: a decompression bomb gets 413 after
    `limit` bytes of output, not an out-of-memory."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    for coding in reversed(codings):
        body = _decode_one(body, coding, limit)
    return body


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than limits.max_body_bytes ({limit} bytes) once decompressed.",
                        code="request_too_large")


def _decode_one(body: bytes, coding: str, limit: int) -> bytes:
    if coding == "zstd":
        decompressor, error = _zstd_decompressor()
        try:
            out = decompressor.decompress(body, max_length=limit + 1)
        except error as exc:
            raise GatewayError(400, f"Request body is not valid zstd: {exc}", code="invalid_body_encoding") from None
        if len(out) > limit:
            raise _too_large(limit)
        if not decompressor.eof:
            raise GatewayError(400, "Request body is truncated zstd data.", code="invalid_body_encoding")
        return out
    if coding in ("gzip", "x-gzip", "deflate"):
        # gzip: header + deflate; deflate: zlib-wrapped per RFC 9110, raw deflate seen in the wild.
        attempts = (16 + zlib.MAX_WBITS,) if coding != "deflate" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
        for wbits in attempts:
            decompressor = zlib.decompressobj(wbits)
            try:
                out = decompressor.decompress(body, limit + 1)
            except zlib.error as exc:
                if wbits == attempts[-1]:
                    raise GatewayError(400, f"Request body is not valid {coding}: {exc}", code="invalid_body_encoding") from None
                continue
            if len(out) > limit:
                raise _too_large(limit)
            if not decompressor.eof:
                raise GatewayError(400, f"Request body is truncated {coding} data.", code="invalid_body_encoding")
            return out
    raise GatewayError(415, f"Content-Encoding '{coding}' is not supported (zstd, gzip and deflate are).",
                       code="unsupported_content_encoding")
