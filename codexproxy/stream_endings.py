"""How a Codex backend stream ends: its terminal events, its failure codes (which are the
account's fault and which the request's), the prelude before the first output, and the
errors a cut or a failure event amounts to.

One place for it: the core reads it to log and to decide the status of a buffered answer,
the adapter to render errors in each client protocol.
"""

from __future__ import annotations

from .exchange import GatewayError
from .sse import SSEEvent

TERMINAL_OK = frozenset({"response.completed", "response.incomplete"})
TERMINAL_FAILED = frozenset({"response.failed", "error"})
TERMINAL_EVENTS = TERMINAL_OK | TERMINAL_FAILED

STATUS_BY_CODE = {"context_length_exceeded": 400, "invalid_prompt": 400, "insufficient_quota": 429,
                  "usage_not_included": 429, "usage_limit_reached": 429, "rate_limit_exceeded": 429,
                  "server_is_overloaded": 503}


# Failures that say "this account, not this request": a stream that ends with one of these
# before any output is failed over exactly like an HTTP 429/5xx. Anything else (a context
# that is too long, an invalid prompt) is the request's fault and goes to the client.
ACCOUNT_FAILURE_CODES = frozenset({"server_is_overloaded", "rate_limit_exceeded", "usage_limit_reached",
                                   "insufficient_quota", "usage_not_included", "server_error", "internal_error"})
# Events that may come before a stream's first output: held back, and dropped with a failure.
PRELUDE_EVENTS = frozenset({"response.created", "response.in_progress", "codex.rate_limits",
                            "codex.response.metadata"})


def error_status_for_code(code: str | None) -> int:
    """The HTTP status a client should see for a `response.failed` error code."""
    return STATUS_BY_CODE.get(code or "", 502)


def error_type_for_status(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error"


def gateway_error_from_event(ev: SSEEvent) -> GatewayError:
    """The GatewayError for a `response.failed` or bare `error` event.

    `error` events come as {"type":"error","code","message","param"} (Responses API) or with a
    nested "error" object (seen from the Codex backend); both are read.
    """
    data = ev.json()
    data = data if isinstance(data, dict) else {}
    if ev.type == "response.failed":
        err = (data.get("response") or {}).get("error") or {}
    else:
        err = data.get("error") if isinstance(data.get("error"), dict) else data
    if not isinstance(err, dict):
        err = {}
    code = err.get("code") or (err.get("type") if err.get("type") != "error" else None)
    code = code if isinstance(code, str) else None
    status = error_status_for_code(code)
    message = err.get("message") if isinstance(err.get("message"), str) else None
    resets = err.get("resets_in_seconds")  # usage-limit errors say when the window reopens
    headers = {"retry-after": str(int(resets))} if isinstance(resets, (int, float)) else {}
    return GatewayError(status, message or f"Upstream response failed ({code or 'unknown error'}).",
                        type=error_type_for_status(status), code=code, headers=headers,
                        param=err.get("param") if isinstance(err.get("param"), str) else None)


def stream_cut_error(detail: str | None = None) -> GatewayError:
    """A stream that ended without a terminal event (or broke, or went idle)."""
    message = "Upstream stream closed before response.completed." if detail is None else f"Upstream stream failed: {detail}"
    return GatewayError(502, message, type="server_error", code="stream_closed" if detail is None else "stream_error")
