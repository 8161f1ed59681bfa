"""The embedded mitmproxy reverse proxy and the addon that turns its events into hook calls.

Data flows one way: request -> route -> auth -> prepare -> select account -> upstream headers
-> upstream -> (failover) -> stream transform -> client, with `exchange_done` observers at the
end. See hookspecs.py for what each step may do and failover.py for the retry mechanism.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mitmproxy import http
from mitmproxy.proxy import events

from . import failover, wire
from .exchange import Attempt, Exchange, GatewayError, LocalResponse, Retry, Route
from .streams import HoldWatch, PassthroughTransform, StreamPump
from .upstream import stream_cut_error

log = logging.getLogger("codexproxy.proxy")

EXCHANGE = "codexproxy.exchange"
ACTIVITY = failover.ACTIVITY
CONNECT_TIMEOUT = "codexproxy.connect_timeout"
HEAD_ERROR = "codexproxy.head_error"  # flow.metadata: the GatewayError the head was refused with
MAX_ATTEMPTS_HARD_CAP = 10  # whatever plugins say, one request never loops forever

# Upstream response headers the client never sees: hop-by-hop, and the upstream's cookies
# and host policies (they belong to chatgpt.com, not to this gateway).
DROPPED_RESPONSE_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-encoding", "set-cookie",
                                      "alt-svc", "strict-transport-security"})

def _header_dict(headers: http.Headers) -> dict[str, str]:
    """Lower-case names, repeated fields joined: one pass over the fields (Headers.items()
    looks each name up again, quadratic in the number of headers)."""
    out: dict[str, str] = {}
    for name, value in headers.fields:
        key, text = name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _header_fields(request: http.Request) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.fields]


def _header_bytes(value: str) -> bytes:
    """Client values are latin-1 text of the bytes it sent (they go back as they came);
    a plugin's or the config's text beyond latin-1 goes as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def render_error(app: Any, ex: Exchange | None, err: GatewayError) -> http.Response:
    local = None
    if ex is not None:
        try:
            local = app.hook.codexproxy_render_error(app=app, exchange=ex, error=err)
        except Exception:
            log.exception("render_error hook failed")
    if local is None:
        local = LocalResponse(err.status, err.openai_body())
    body, headers = local.encoded()
    headers.update(err.headers)
    return http.Response.make(local.status, body, headers)


class Gateway:
    """The mitmproxy addon hosting the plugin pipeline (methods named after mitmproxy events)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.hook = app.hook
        self.active: dict[str, http.HTTPFlow] = {}
        self.closing = False

    # --- helpers --------------------------------------------------------------------------
    def _answer(self, flow: http.HTTPFlow, ex: Exchange | None, err: GatewayError) -> None:
        if ex is not None:
            ex.error = ex.error or err.message
        flow.response = render_error(self.app, ex, err)

    def _fail_closed(self, flow: http.HTTPFlow, ex: Exchange | None, where: str) -> None:
        log.error("plugin error in %s: %s", where, traceback.format_exc(limit=6))
        self._answer(flow, ex, GatewayError(500, f"internal error in {where}; see the proxy log", type="server_error", code="plugin_error"))

    def _exchange(self, flow: http.HTTPFlow) -> Exchange:
        req = flow.request
        split = urlsplit(req.path)
        return Exchange(
            method=req.method.upper(),
            path=split.path or "/",
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=_header_dict(req.headers),
            header_fields=_header_fields(req),
            body=b"",  # the head only: request() fills it once the body has arrived
            client_addr=f"{flow.client_conn.peername[0]}" if flow.client_conn.peername else "",
        )

    def _target(self, ex: Exchange, fallback: bool) -> str:
        upstream = self.app.config.upstream
        base = upstream.fallback_base_url if fallback and upstream.fallback_base_url else upstream.base_url
        return base + (ex.route.upstream_path if ex.route else "/responses")

    def _upstream_headers(self, ex: Exchange, url: str, account: Any, fallback: bool) -> list[tuple[str, str]]:
        """The attempt's request headers (the policy and its named exceptions: wire.py)."""
        cfg = self.app.config.upstream
        client = ex.headers
        names: dict[str, str] = {}
        headers: dict[str, str] = {"host": wire.authority(url)}
        for name, value in wire.passed_client_headers(ex.header_fields):
            names[name.lower()] = name
            headers[name.lower()] = value
        if fallback:
            if cfg.fallback_api_key:
                headers["authorization"] = f"Bearer {cfg.fallback_api_key}"
        elif account is not None:
            headers["authorization"] = f"Bearer {account.access_token}"
            if account.chatgpt_account_id:
                headers["chatgpt-account-id"] = account.chatgpt_account_id
        else:
            # No routing plugin: the client's own credentials go upstream unchanged.
            for name in ("authorization", "chatgpt-account-id"):
                if name in client:
                    headers[name] = client[name]
        for name, own in (("originator", cfg.originator), ("user-agent", cfg.user_agent)):
            if ex.is_codex_client and client.get(name):
                names[name] = next((n for n, _ in ex.header_fields if n.lower() == name), name)
                headers[name] = client[name]
            else:
                headers[name] = own
        if ex.session_id and not any(h in headers for h in wire.SESSION_HEADERS):
            headers["session_id"] = ex.session_id
        headers["accept"] = "text/event-stream" if ex.route is None or ex.route.upstream_streams else "application/json"
        headers["content-type"] = "application/json"
        headers["accept-encoding"] = "identity"  # SSE must not come compressed: we parse it
        self.hook.codexproxy_upstream_request(app=self.app, exchange=ex, headers=headers)
        headers["host"] = wire.authority(url)  # not a plugin's to change: the URL decides
        return wire.spelled(headers, names)

    @staticmethod
    def _upstream_body(ex: Exchange) -> bytes:
        """The client's own bytes when no plugin changed the body; else the new JSON."""
        if ex.upstream_body is None or ex.upstream_body == ex.json():
            return ex.body
        try:
            return json.dumps(ex.upstream_body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise GatewayError(400, "Request body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), "
                                    "which is not valid Unicode.", code="invalid_body") from None

    def _prepare_attempt(self, flow: http.HTTPFlow, ex: Exchange, account: Any, fallback: bool = False) -> None:
        """Point the flow at the upstream with this account's credentials."""
        url = self._target(ex, fallback)
        ex.account = account
        ex.attempts.append(Attempt(account_id=getattr(account, "id", None), url=url))
        headers = self._upstream_headers(ex, url, account, fallback)
        body = self._upstream_body(ex)
        req = flow.request
        req.url = url
        # A fresh Headers object: Headers.clear() removes fields one by one (quadratic).
        req.headers = http.Headers([(name.encode("latin-1"), _header_bytes(value)) for name, value in headers])
        req.content = body
        flow.metadata[ACTIVITY] = time.monotonic()
        self.active[flow.id] = flow

    # --- mitmproxy events -----------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Admit on the head: route, the body-size check and the key check need no body.
        A request refused here is answered before its body is read (failover.py), so an
        unauthenticated or oversized upload costs no memory."""
        ex: Exchange | None = None
        try:
            ex = self._exchange(flow)
            flow.metadata[EXCHANGE] = ex
            self.hook.codexproxy_exchange_start(app=self.app, exchange=ex)
            if self.closing:
                raise GatewayError(503, "The proxy is shutting down.", type="server_error", code="shutting_down")
            route = self.hook.codexproxy_route(app=self.app, exchange=ex)
            if route is None:
                ex.route = Route(kind="local", protocol="none", needs_key=False, name="unknown")
                raise GatewayError(404, f"Unknown route: {ex.method} {ex.path}", code="not_found")
            ex.route = route
            if route.needs_key:
                ex.key = self.hook.codexproxy_authenticate(app=self.app, exchange=ex)
            limit = self.app.config.limits.max_body_bytes
            length = flow.request.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise self._too_large(limit)
            # A chunked body is capped as it arrives, answered in the client's protocol.
            flow.metadata[failover.BODY_CAP] = (limit, lambda: self._rendered(ex, self._too_large(limit)))
        except GatewayError as err:
            self._refuse_on_head(flow, ex, err)
        except Exception:
            log.error("plugin error in request admission: %s", traceback.format_exc(limit=6))
            self._refuse_on_head(flow, ex, GatewayError(500, "internal error in request admission; see the proxy log",
                                                         type="server_error", code="plugin_error"))

    @staticmethod
    def _too_large(limit: int) -> GatewayError:
        return GatewayError(413, f"Request body is larger than limits.max_body_bytes ({limit} bytes).", code="request_too_large")

    def _rendered(self, ex: Exchange | None, err: GatewayError) -> http.Response:
        return render_error(self.app, ex, err)

    def _refuse_on_head(self, flow: http.HTTPFlow, ex: Exchange | None, err: GatewayError) -> None:
        if ex is not None:
            ex.error = ex.error or err.message
            ex.status = err.status
        flow.metadata[HEAD_ERROR] = err
        # Answered now, without reading the body (failover.py closes the connection after).
        flow.metadata[failover.HEAD_ANSWER] = self._rendered(ex, err)

    async def request(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        try:
            if (err := flow.metadata.pop(HEAD_ERROR, None)) is not None:
                raise err  # refused on the head, and the request had no body to skip
            if ex is None or ex.route is None:
                return
            route = ex.route
            ex.body = flow.request.raw_content or b""
            limit = self.app.config.limits.max_body_bytes
            if len(ex.body) > limit:
                raise self._too_large(limit)
            if coding := ex.headers.pop("content-encoding", None):
                # Codex compresses its bodies (zstd); decoded once here, after the key
                # check, so every plugin and the upstream see plain JSON.
                ex.body = wire.decode_body(ex.body, coding, limit)
            if route.kind == "local":
                assert route.handler is not None
                local = await asyncio.to_thread(route.handler, self.app, ex)
                body, headers = local.encoded()
                ex.status = local.status
                flow.response = http.Response.make(local.status, body, headers)
                return
            self.hook.codexproxy_prepare_request(app=self.app, exchange=ex)
            account = await self._select_account(ex)
            self._prepare_attempt(flow, ex, account)
        except GatewayError as err:
            self._answer(flow, ex, err)
        except Exception:
            self._fail_closed(flow, ex, "request handling")

    async def _select_account(self, ex: Exchange) -> Any:
        """Ask routing for an account; while every account is at its inflight cap (the
        "accounts_busy" answer), wait up to limits.queue_wait_ms for one to free up."""
        deadline = time.monotonic() + self.app.config.limits.queue_wait_ms / 1000
        while True:
            try:
                return self.hook.codexproxy_select_account(app=self.app, exchange=ex)
            except GatewayError as err:
                if err.code != "accounts_busy" or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(min(0.02, max(0.001, deadline - time.monotonic())))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None or not ex.attempts or ex.route is None or ex.route.kind != "upstream" or flow.response is None:
            return
        try:
            attempt = ex.attempts[-1]
            resp = flow.response
            attempt.status = resp.status_code
            attempt.headers = _header_dict(resp.headers)
            self.hook.codexproxy_upstream_response(app=self.app, exchange=ex, attempt=attempt)
            if resp.status_code >= 400:
                flow.metadata[failover.RETRY] = True
                return
            attempt.finish()
            if not ex.route.upstream_streams:  # one JSON answer (compaction): as it came
                ex.status, ex.completed = resp.status_code, True
                self._set_client_headers(resp, dict(attempt.headers))
                return
            transform = self.hook.codexproxy_response_transform(app=self.app, exchange=ex) or PassthroughTransform()
            status, headers = transform.start(resp.status_code, dict(attempt.headers))
            ex.status = status
            resp.status_code = status
            self._set_client_headers(resp, headers)
            # Held back until the first output event: a 200 that fails before any output is
            # failed over like an error answer (failover.py, streams.HoldWatch).
            is_sse = attempt.headers.get("content-type", "").startswith("text/event-stream")
            flow.metadata[failover.HOLD] = HoldWatch() if is_sse else None
            if ex.client_stream:
                resp.headers["transfer-encoding"] = "chunked"
                resp.headers.pop("content-length", None)
                resp.stream = StreamPump(flow, ex, transform)
            else:
                flow.metadata["codexproxy.transform"] = transform
        except Exception:
            log.error("responseheaders failed: %s", traceback.format_exc(limit=6))
            flow.metadata[failover.RETRY] = True  # never stream a half-processed answer

    @staticmethod
    def _set_client_headers(resp: http.Response, headers: dict[str, str]) -> None:
        resp.headers = http.Headers([(name.encode(), value.encode("utf-8", "replace")) for name, value in headers.items()
                                     if name not in DROPPED_RESPONSE_HEADERS])

    async def upstream_retry(self, flow: http.HTTPFlow) -> None:
        """Custom blocking hook from failover.py: the attempt failed before the first byte."""
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None or not ex.attempts:
            return
        try:
            attempt = ex.attempts[-1]
            transport_error = flow.metadata.pop("codexproxy.transport_error", None)
            if transport_error and (timeout := flow.metadata.pop(CONNECT_TIMEOUT, None)):
                transport_error = f"connect timeout: no connection within {timeout:g}s"
            failure: GatewayError | None = flow.metadata.pop(failover.STREAM_FAILURE, None)
            flow.metadata.pop("codexproxy.transform", None)  # a failed attempt's converter is done
            if transport_error:
                attempt.error = transport_error
                attempt.status = None
            elif failure is not None:
                self._as_error_answer(attempt, failure)
            elif flow.response is not None:
                attempt.body = flow.response.raw_content or b""
            attempt.finish()
            if transport_error:
                self.hook.codexproxy_upstream_response(app=self.app, exchange=ex, attempt=attempt)
            decision = None
            if len(ex.attempts) < MAX_ATTEMPTS_HARD_CAP:
                decision = await asyncio.to_thread(self.hook.codexproxy_upstream_failed, app=self.app, exchange=ex, attempt=attempt)
            if isinstance(decision, Retry):
                attempt.reason = attempt.reason or decision.reason or None
                self._prepare_attempt(flow, ex, decision.account, fallback=decision.use_fallback)
                flow.metadata[failover.RETRY_AGAIN] = True
                return
            if isinstance(decision, GatewayError):
                self._answer(flow, ex, decision)
            elif transport_error:
                self._answer(flow, ex, GatewayError(502, f"Upstream unreachable: {transport_error}", type="upstream_error", code="upstream_unreachable"))
            else:
                self._pass_error_through(flow, ex, attempt)
        except Exception:
            self._fail_closed(flow, ex, "upstream failure handling")
        if flow.response is not None:
            ex.status = flow.response.status_code

    @staticmethod
    def _as_error_answer(attempt: Attempt, failure: GatewayError) -> None:
        """A stream that failed before any output, recorded as the error answer it amounts to
        (429 for limits, 503 overloaded, 502 cut) so routing decides as for any other."""
        attempt.status = failure.status
        attempt.error = f"stream failed before any output: {failure.code or failure.message}"
        error = {"type": failure.code or failure.type, "code": failure.code, "message": failure.message, **failure.details}
        if "retry-after" in failure.headers:
            attempt.headers["retry-after"] = failure.headers["retry-after"]
            error.setdefault("resets_in_seconds", int(failure.headers["retry-after"]))
        attempt.body = json.dumps({"error": error}).encode()

    def _pass_error_through(self, flow: http.HTTPFlow, ex: Exchange, attempt: Attempt) -> None:
        payload = attempt.json_body()
        error = payload.get("error") if isinstance(payload, dict) else None
        message = (error.get("message") if isinstance(error, dict) else None) or (payload.get("detail") if isinstance(payload, dict) else None)
        ex.error = f"upstream {attempt.status}: {message or attempt.body[:200].decode('utf-8', 'replace')}"
        if ex.protocol in ("responses", "compact") and payload is not None:
            resp = http.Response.make(attempt.status or 502, attempt.body, {"content-type": "application/json"})
            for name in ("retry-after",):
                if name in attempt.headers:
                    resp.headers[name] = attempt.headers[name]
            flow.response = resp
            return
        err = GatewayError(attempt.status or 502, message or f"Upstream answered {attempt.status}.",
                           type=(error or {}).get("type") or ("invalid_request_error" if (attempt.status or 500) < 500 else "upstream_error"),
                           code=(error or {}).get("code"))
        if "retry-after" in attempt.headers:
            err.headers["retry-after"] = attempt.headers["retry-after"]
        self._answer(flow, ex, err)

    def response(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None:
            return
        transform = flow.metadata.pop("codexproxy.transform", None)
        if transform is not None and flow.response is not None:
            self._finish_buffered(flow, ex, transform)
        if ex.status is None and flow.response is not None:
            ex.status = flow.response.status_code
        self._done(flow, ex)

    def _finish_buffered(self, flow: http.HTTPFlow, ex: Exchange, transform: Any) -> None:
        """A client that asked for no stream: the whole upstream SSE is here; convert it."""
        try:
            pump = StreamPump(flow, ex, transform)
            body = flow.response.raw_content or b""
            events_ = pump.parser.feed(body) + pump.parser.flush()
            for event in events_:
                pump._observe(event)
            out = transform.feed(body, events_)
            error = pump.failed or (None if ex.completed else stream_cut_error())
            if error is not None:
                self._answer(flow, ex, error)
                ex.status = flow.response.status_code
                return
            out += transform.finish(None)
            flow.response.content = out
            ex.ttfb_ms = ex.elapsed_ms()
        except Exception:
            self._fail_closed(flow, ex, "response conversion")

    def error(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None:
            return
        if flow.error is not None and not ex.error:
            ex.error = "client disconnected" if "disconnect" in flow.error.msg.lower() else flow.error.msg
        self._done(flow, ex)

    def _done(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        self.active.pop(flow.id, None)
        if ex.meta.get("_done"):
            return
        ex.meta["_done"] = True
        if ex.attempts:
            ex.attempts[-1].finish()
        if transport_error := flow.metadata.get("codexproxy.transport_error"):
            ex.error = ex.error or f"upstream stream failed: {transport_error}"
        try:
            self.hook.codexproxy_exchange_done(app=self.app, exchange=ex)
        except Exception:
            log.error("exchange_done hook failed: %s", traceback.format_exc(limit=6))

    # --- idle upstreams and hanging connects ----------------------------------------------
    async def watch_idle(self, proxyserver: Any) -> None:
        """Inject IdleTimeout into flows whose upstream has been silent too long, and cancel
        upstream connects that take longer than connect_timeout_s (the layer cannot: it is
        paused on the connect until it completes)."""
        cfg = self.app.config.upstream
        idle, connect = cfg.stream_idle_timeout_s, cfg.connect_timeout_s
        period = max(0.05, min(1.0, idle / 4, connect / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for flow_id, flow in list(self.active.items()):
                if not flow.live:
                    continue
                self._cancel_slow_connect(proxyserver, flow, connect)
                last = flow.metadata.get(ACTIVITY, now)
                if now - last < idle:
                    continue
                flow.metadata[ACTIVITY] = now  # once per idle period
                try:
                    proxyserver.inject_event(events.MessageInjected(flow, failover.IdleTimeout(f"upstream idle timeout: no data for {idle:g}s")))
                except (ValueError, KeyError):
                    self.active.pop(flow_id, None)

    @staticmethod
    def _cancel_slow_connect(proxyserver: Any, flow: http.HTTPFlow, timeout: float) -> None:
        handler = proxyserver.connections.get(flow.client_conn.id)
        if handler is None:
            return
        wall = time.time()
        for conn, io in list(handler.transports.items()):
            if conn is flow.client_conn or conn.timestamp_tcp_setup is not None or not conn.timestamp_start:
                continue
            task = io.handler
            if wall - conn.timestamp_start > timeout and task is not None and not task.done():
                flow.metadata[CONNECT_TIMEOUT] = timeout
                task.cancel()  # open_connection turns this into a connect error: the retry path
