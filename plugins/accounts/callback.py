"""The loopback listener the browser is redirected to (http://localhost:PORT/auth/callback).

It answers the browser with a small page saying what happened, and completes the pending
login whose `state` the callback carries. The CLI runs one for its own login and waits;
the proxy runs one in a thread for logins started from the status page (RPC `login.start`)
and closes it when none of them is pending any more.
"""

from __future__ import annotations

import html
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import logins, oauth

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>codexproxy login</title>
<style>body{{font:16px system-ui,sans-serif;margin:4em auto;max-width:36em;color:#222}}h1{{font-size:1.4em}}</style>
</head><body><h1>{title}</h1><p>{message}</p><p>You can close this tab.</p></body></html>"""


@dataclass
class Outcome:
    state: str | None  # None: the callback matched none of this listener's logins
    ok: bool
    message: str
    account: Any = None
    created: bool = False


class _HTTPServer(HTTPServer):
    def server_bind(self) -> None:  # HTTPServer.server_bind calls getfqdn(): a DNS lookup we do not need
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = 5  # a browser's speculative preconnect that never sends must not block the listener

    def log_message(self, fmt: str, *args: Any) -> None:  # the query holds the one-time code: never log it
        pass

    def do_GET(self) -> None:
        owner: CallbackServer = self.server.owner  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        if url.path != oauth.CALLBACK_PATH:
            return self._page(404, "Not found", "This address only receives the codexproxy login callback.")
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        outcome = owner.handle(query)
        if outcome.ok:
            who = html.escape(outcome.account.email or outcome.account.id)
            self._page(200, "Signed in", f"{who} is {'now in' if outcome.created else 'renewed in'} the codexproxy pool.", raw=True)
        else:
            self._page(400, "Sign-in failed", outcome.message)

    def _page(self, status: int, title: str, message: str, raw: bool = False) -> None:
        body = PAGE.format(title=html.escape(title), message=message if raw else html.escape(message)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class CallbackServer:
    """Serves the callbacks of the logins whose states are in `states`."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.states: dict[str, float] = {}  # state -> when added
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.closing = False
        cls = type("Server", (_HTTPServer,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        try:
            self.httpd = cls((host, port), _Handler)
        except OSError as exc:
            raise logins.LoginError(
                f"cannot listen for the login callback on {host}:{port} ({exc.strerror or exc}); free that port, "
                "or run `codexproxy accounts login --no-listen` and finish with --callback-url") from None
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.httpd.timeout = 0.5
        self.port: int = self.httpd.server_address[1]

    @property
    def redirect_uri(self) -> str:
        return oauth.redirect_uri(self.host, self.port)

    def add(self, state: str) -> None:
        with self.lock:
            self.states[state] = time.time()

    def handle(self, query: dict[str, str]) -> Outcome:
        state = query.get("state") or ""
        with self.lock:
            ours = state in self.states
        try:
            if not ours:
                raise logins.LoginError("the callback's state does not match any login in progress (a stale browser tab?); nothing was stored")
            if not query.get("code") and not query.get("error"):
                raise logins.LoginError("the callback carries neither a code nor an error")
            account, created = logins.complete_callback(self.app, query)
            outcome = Outcome(state, True, "signed in", account, created)
        except logins.LoginError as exc:
            outcome = Outcome(state if ours else None, False, str(exc))
        with self.lock:
            self.outcomes.append(outcome)
            if ours and outcome.state:
                self.states.pop(state, None)
        return outcome

    def handle_once(self) -> None:
        self.httpd.handle_request()  # returns after one request or `timeout`

    def take_outcomes(self) -> list[Outcome]:
        with self.lock:
            out, self.outcomes = self.outcomes, []
        return out

    def close(self) -> None:
        self.closing = True
        self.httpd.server_close()


def wait_for(server: CallbackServer, app: Any, rec: dict[str, Any], deadline: float) -> tuple[Any, bool]:
    """The CLI's wait: our callback, a paste completing it elsewhere, or the deadline."""
    while time.time() < deadline:
        server.handle_once()
        for outcome in server.take_outcomes():
            if outcome.ok and outcome.state == rec["state"]:
                return outcome.account, outcome.created
            raise logins.LoginError(outcome.message)
        current = logins.get(app, rec["id"])
        if current and current["status"] == "completed" and current.get("account_id"):
            account = app.accounts.get(current["account_id"])
            if account is not None:
                return account, True
        if current and current["status"] == "failed":
            raise logins.LoginError(current.get("error") or "the login failed")
    raise logins.LoginError(f"login timed out after {app.config.oauth.login_timeout_s:.0f}s without a callback "
                            "(oauth.login_timeout_s); run it again, or finish it with `codexproxy accounts login --callback-url URL`")


# --- the proxy's shared listener (RPC login.start) --------------------------------------------

class BackgroundListener:
    """One listener thread in the proxy, shared by the logins started from the status page."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.server: CallbackServer | None = None

    def reserve(self, app: Any, host: str, port: int, state: str) -> CallbackServer:
        with self.lock:
            server = self.server
            if server is None or server.closing:
                server = self.server = CallbackServer(app, host, port)
                threading.Thread(target=self._run, args=(server,), name="accounts-login-callback", daemon=True).start()
            server.add(state)  # under self.lock: the thread cannot close it between the two steps
            return server

    def _run(self, server: CallbackServer) -> None:
        try:
            while True:
                server.handle_once()
                server.take_outcomes()  # the store records the result; nobody waits here
                with self.lock:
                    self._prune(server)
                    if not server.states:
                        server.close()
                        return
        finally:
            if not server.closing:
                server.close()

    @staticmethod
    def _prune(server: CallbackServer) -> None:
        now = time.time()
        table = {d.get("state"): d for d in logins.records(server.app)}
        for state, added in list(server.states.items()):
            rec = table.get(state)
            done = rec is not None and (rec.get("status") != "pending" or rec.get("expires_at", 0) <= now)
            if done or (rec is None and now - added > 30):
                server.states.pop(state, None)
