"""POST /rpc: the admin API, JSON-RPC 2.0 (batches too) over the methods of every plugin.

Auth: `Authorization: Bearer <admin token>` only (no cookies, so no CSRF is possible), and a
cross-site Origin / Sec-Fetch-Site is refused even with the token. A method raising
ValueError (e.g. BadParams) answers -32602 with its message, LookupError -32001, a
GatewayError its own status; anything else is an internal error, logged, never a traceback.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from codexproxy.exchange import GatewayError, LocalResponse

from .methods import all_methods
from .session import check_admin_bearer, cross_site, guesses

log = logging.getLogger("codexproxy.admin")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL = -32700, -32600, -32601, -32602, -32603
NOT_FOUND, FAILED, UNAUTHORIZED, FORBIDDEN, RATE_LIMITED = -32001, -32000, -32010, -32011, -32012
HTTP_STATUS = {PARSE_ERROR: 400, INVALID_REQUEST: 400, INVALID_PARAMS: 400, METHOD_NOT_FOUND: 404, NOT_FOUND: 404,
               UNAUTHORIZED: 401, FORBIDDEN: 403, RATE_LIMITED: 429, INTERNAL: 500}
MAX_BATCH = 50


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _reply(status: int, body: Any, headers: dict[str, str] | None = None) -> LocalResponse:
    data = json.dumps(body, ensure_ascii=False, default=_json_default).encode()
    return LocalResponse(status, data, {"cache-control": "no-store", **(headers or {})}, content_type="application/json")


def error(code: int, message: str, id_: Any = None, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id_}


def _gateway_error(exc: GatewayError) -> tuple[int, str, Any]:
    if exc.status == 404:
        return NOT_FOUND, exc.message, None
    if exc.status in (400, 422):
        return INVALID_PARAMS, exc.message, None
    return FAILED, exc.message, {"status": exc.status, "code": exc.code}


def call(app, methods: dict, request: Any) -> dict[str, Any] | None:
    """One JSON-RPC request object -> its response object (None for a notification)."""
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
        return error(INVALID_REQUEST, 'Invalid request: expected {"jsonrpc": "2.0", "method": "...", "params": {...}, "id": 1}')
    id_ = request.get("id")
    if isinstance(id_, bool) or (id_ is not None and not isinstance(id_, (str, int, float))):
        return error(INVALID_REQUEST, "Invalid request: id must be a string or a number")
    notification = "id" not in request
    name = request["method"]
    func = methods.get(name)
    params = request.get("params")
    if func is None:
        response = error(METHOD_NOT_FOUND, f"Method not found: {name[:100]!r} (see plugins.list; methods: {', '.join(sorted(methods))})", id_)
    elif params is not None and not isinstance(params, (dict, list)):
        response = error(INVALID_PARAMS, "Invalid params: params must be an object", id_)
    else:
        try:
            response = {"jsonrpc": "2.0", "result": func(app, params if params is not None else {}), "id": id_}
        except GatewayError as exc:
            code, message, data = _gateway_error(exc)
            response = error(code, message, id_, data)
        except LookupError as exc:
            response = error(NOT_FOUND, str(exc.args[0]) if exc.args else "not found", id_)
        except (ValueError, TypeError) as exc:
            response = error(INVALID_PARAMS, f"Invalid params: {exc}", id_)
        except Exception:
            # In the message (not exc_info) so the CLI's secret-redacting filter sees it.
            log.error("admin method %s failed: %s", name, traceback.format_exc(limit=6))
            response = error(INTERNAL, f"Internal error in {name}; see the proxy log.", id_)
    return None if notification else response


def handle(app, exchange) -> LocalResponse:
    if exchange.method != "POST":
        return _reply(405, error(INVALID_REQUEST, f"{exchange.method} is not allowed on /rpc; use POST with a JSON-RPC 2.0 body."),
                      {"allow": "POST"})
    why = cross_site(app, exchange.headers)
    if why:
        return _reply(403, error(FORBIDDEN, f"Cross-site request refused ({why})."))
    refused = check_admin_bearer(app, exchange)
    if refused == "limited":
        wait = guesses(app).retry_after(exchange.client_addr) or 60
        return _reply(429, error(RATE_LIMITED, f"Too many wrong admin tokens from your address; try again in {wait} s."),
                      {"retry-after": str(wait)})
    if refused:
        return _reply(401, error(UNAUTHORIZED, "Unauthorized: send the admin token as 'Authorization: Bearer <token>' "
                                               "(see `codexproxy admin-token`)."), {"www-authenticate": 'Bearer realm="codexproxy"'})
    try:
        payload = json.loads(exchange.body)
        # JSON may spell a lone UTF-16 surrogate (\ud800), which no UTF-8 store or answer can hold.
        json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # before ValueError, of which it is a kind
        return _reply(400, error(PARSE_ERROR, "Parse error: the body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                                              "escape), which is not valid Unicode."))
    except (ValueError, UnicodeDecodeError) as exc:
        return _reply(400, error(PARSE_ERROR, f"Parse error: the body is not valid JSON ({exc})."))
    except RecursionError:
        return _reply(400, error(PARSE_ERROR, "Parse error: the body is nested too deeply."))
    methods = all_methods(app)
    if isinstance(payload, list):
        if not payload:
            return _reply(400, error(INVALID_REQUEST, "Invalid request: an empty batch."))
        if len(payload) > MAX_BATCH:
            return _reply(400, error(INVALID_REQUEST, f"Invalid request: at most {MAX_BATCH} calls per batch."))
        answers = [a for a in (call(app, methods, r) for r in payload) if a is not None]
        return _reply(200, answers) if answers else LocalResponse(204, b"")
    answer = call(app, methods, payload)
    if answer is None:
        return LocalResponse(204, b"")
    if "error" not in answer:
        return _reply(200, answer)
    err = answer["error"]
    status = (err.get("data") or {}).get("status") if err["code"] == FAILED else HTTP_STATUS.get(err["code"])
    return _reply(status if isinstance(status, int) and 400 <= status < 600 else 400, answer)
