"""The codexproxy plugin contract: every extension point, in the order a request meets them.

Built-in features (auth, routing, adapter, cookies, logging, accounts, admin...) are plugins on
exactly these hooks; a third-party plugin is a module with `@hookimpl` functions, registered
through `plugin_paths` in config.yaml or the `codexproxy` entry-point group.

    from codexproxy import hookimpl

Every hook gets `app` (codexproxy.app.App: config, state, accounts, keys, logs, hook caller).
Request hooks get the `exchange` (codexproxy.exchange.Exchange) of the client request.

One pipeline, whatever the transport (codexproxy/pipeline.py). An HTTP request (proxy.py) and
one `response.create` message on a WebSocket (wsadapter.py) are both an Exchange driven through
the same steps, so a plugin never needs to know which it got (`exchange.transport` says, for
logging): exchange_start -> route -> authenticate -> prepare_request -> select_account ->
upstream_request -> [upstream] -> upstream_response -> (upstream_failed -> upstream_request
again on another attempt) -> response_transform -> exchange_done. The adapter frames what the
transform produces for its client (events: SSE for HTTP, one message per event for WebSocket);
errors raised as GatewayError are rendered in the client's protocol by `render_error`.

Shared state (codexproxy/state.py, `app.state`): anything a plugin keeps beyond one request
(counters, rate windows, values with a TTL, leases, named locks, durable collections, large
values kept on disk as blobs) goes
through `app.state`, so the same plugin works in one process (TinyDB, the default) and in a
pool of processes or machines on Redis (`state.backend: redis`). `app.plugin_state(name,
factory)` is for what is truly process-local (thread pools, listeners, caches).

Hooks run in the proxy's event loop unless said otherwise: they must not block (no disk
writes with fsync, no network calls; `app.state` calls are fine, state collection writes on
the local backend are not: hand them to a worker thread). Raising `GatewayError` in a request
hook answers the client with that error; any other exception answers 500 in the client's
protocol (hooks fail closed) and is logged.
Set CODEXPROXY_TRACE_HOOKS=1 to log every hook call with its arguments and results.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("codexproxy")


# --- configuration and lifecycle ------------------------------------------------------------

@hookspec
def codexproxy_config_model():
    """Return the pydantic model (subclass of codexproxy.config.PluginConfig) of this plugin's
    `plugins.<name>` config section. Unknown keys there are config errors."""


@hookspec
def codexproxy_startup(app):
    """The proxy is starting (`codexproxy run`): open resources, warm caches, warn about config."""


@hookspec
def codexproxy_shutdown(app):
    """The proxy is stopping: flush and close what startup opened."""


@hookspec
def codexproxy_register_jobs(app, jobs):
    """Add background jobs: `jobs.every(seconds, name, func, jitter=0.1)`; `func(app)` runs in
    the scheduler thread (blocking I/O is fine there) and can be run now via `jobs.run(name)`."""


@hookspec
def codexproxy_cli_commands(cli):
    """Add CLI commands: `cli.command(group, name, help)` returns an argparse parser whose
    `func(app, args) -> int` runs the command (group None for a top-level command)."""


@hookspec
def codexproxy_listening(app, url):
    """The proxy listens at `url` (`codexproxy run`): return lines to add to the start-up
    banner (e.g. where a status page is), or None."""


@hookspec(firstresult=True)
def codexproxy_browser_url(app):
    """The URL `codexproxy run --open` opens once the proxy listens (e.g. a one-time login
    link to the status page), or None."""


@hookspec
def codexproxy_rpc_methods(app):
    """Return {"group.method": func(app, params) -> JSON value} for the admin JSON-RPC API
    (POST /rpc, `codexproxy rpc`). Called in a worker thread. Raise ValueError for bad params
    (JSON-RPC -32602, HTTP 400), LookupError for something not found (-32001, 404), or a
    GatewayError for its own status; anything else is an internal error (-32603, logged)."""


# --- one request, in order -------------------------------------------------------------------

@hookspec
def codexproxy_exchange_start(app, exchange):
    """A request arrived (before routing): observe it, e.g. count active requests.
    Every exchange that starts also gets `codexproxy_exchange_done`."""


@hookspec(firstresult=True)
def codexproxy_route(app, exchange):
    """Claim the request: return a codexproxy.exchange.Route (upstream or local) or None.
    Unclaimed requests get 404."""


@hookspec(firstresult=True)
def codexproxy_authenticate(app, exchange):
    """Check the platform key of a route with `needs_key`; return the key record, or raise
    GatewayError (401 unknown/expired, 403 disabled, 429 over its limits). When no plugin
    answers, the gateway is open."""


@hookspec
def codexproxy_prepare_request(app, exchange):
    """Build what goes upstream from the client's request: set `exchange.upstream_body` (a
    Responses API body), `model`, `effort`, `client_stream`, `session_id`. Raise
    GatewayError(400) naming the field for bad input."""


@hookspec(firstresult=True)
def codexproxy_select_account(app, exchange):
    """Choose the account for the first attempt: return a codexproxy.models.Account, or raise
    GatewayError (429/503) when none can serve. When no plugin answers, the client's own
    credentials go upstream unchanged."""


@hookspec
def codexproxy_upstream_request(app, exchange, headers):
    """Edit the headers (a dict, lower-case names) of a request to the upstream: the current
    attempt's, after the core set Authorization, ChatGPT-Account-Id and the Codex headers, or
    a background request's (usage polls, model lists), where `exchange` is None."""


@hookspec
def codexproxy_upstream_response(app, exchange, attempt):
    """Observe the head of every upstream answer (status, headers), failed ones included:
    e.g. read the x-codex-* usage headers."""


@hookspec(firstresult=True)
def codexproxy_upstream_failed(app, exchange, attempt):
    """The attempt failed before any byte reached the client (`attempt.status` >= 400 with
    `attempt.body`, or `attempt.error` for connect failures and timeouts). Return
    codexproxy.exchange.Retry to send the request again (another account, the same one after
    a token refresh, or the fallback upstream), a GatewayError to answer with, or None to
    pass the upstream's answer through. Runs in a worker thread: may block."""


@hookspec(firstresult=True)
def codexproxy_response_transform(app, exchange):
    """Return a StreamTransform (codexproxy.exchange) that turns the upstream's events into
    the client's protocol, or None to pass the upstream's stream through (byte for byte on
    HTTP). A transform yields events, never bytes: the HTTP adapter frames them as SSE (or,
    for a non-stream transform, sends its one event's data as the JSON body), the WebSocket
    adapter sends each event's data as one message."""


@hookspec(firstresult=True)
def codexproxy_render_error(app, exchange, error):
    """Render a GatewayError in the client's protocol: return a LocalResponse, or None for
    the OpenAI-style JSON error."""


@hookspec(firstresult=True)
def codexproxy_refresh_account(app, account_id, reason):
    """Refresh the access token of an account now (e.g. after an upstream 401); return the
    updated Account, or None when it could not be refreshed. May block."""


@hookspec
def codexproxy_exchange_done(app, exchange):
    """The request is over (answered, failed, or the client went away): log it, count it,
    release what was held for it. Called exactly once per exchange."""
