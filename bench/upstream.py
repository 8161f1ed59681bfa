"""The fake upstream (tests/fakeupstream.py) in its own process, for the benchmarks.

    python bench/upstream.py --accounts 2 --auth-dir DIR
    -> prints one JSON line: {"url", "codex_base", "ws_url", "accounts": [{"account_id", "access_token", "auth_json"}]}
    <- then reads JSON commands on stdin, one per line, and answers "ok" (or "error ...") per line:
       {"default": ACCOUNT_ID, "behaviour": "drip", "params": {...}}    set_default
       {"script": ACCOUNT_ID, "behaviour": "server_error", "params": {...}}   script once
       {"reset": true}                   forget scripts and defaults (and recorded requests)
       {"forget": true}                  drop the recorded requests only (long runs)
       {"connects": true}                answers "ok N": TCP connections accepted so far (is a
                                         proxy's upstream connection kept alive across requests?)

The listen backlog is raised to 1024 (socketserver's 5 drops connections under 50 clients).

Send-time stamps: a text delta holding the placeholder PLACEHOLDER leaves with the placeholder
replaced by `@T<time.monotonic()>@` at the moment the event is written to the socket. Text
deltas survive every converter (chat, anthropic), so a client can measure each event's
arrival - send on one clock, through any path.

`ws_url`: the floor of the WebSocket lines, as `url` is of the HTTP ones. A WebSocket server
(the `websockets` library, a thread per socket like the fake's) that answers each
`response.create` message with the first account's current default behaviour, the same events
with the same pauses as the fake streams over HTTP, one JSON text message per event, stamped at
send time. No proxy, no pool: what the transport itself costs a client.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fakeupstream  # noqa: E402
from tests.fakeupstream import B, FakeUpstream  # noqa: E402

PLACEHOLDER = b"@T0000000000.000000@"


def _install_stamps() -> None:
    handler = fakeupstream._BaseHandler
    original = handler.chunk

    def chunk(self, data: bytes):
        if PLACEHOLDER in data:
            data = data.replace(PLACEHOLDER, b"@T%017.6f@" % time.monotonic())
        return original(self, data)

    handler.chunk = chunk


def stamped_text(count: int) -> str:
    """Text for B.drip(count=count, text=...): every delta is exactly one placeholder."""
    return PLACEHOLDER.decode() * count


def _install_backlog() -> None:
    # socketserver's default listen backlog is 5: 50 clients connecting at once overflow it and
    # the kernel drops connections the proxy already wrote a request on ("server closed
    # connection"). A real upstream has a deep backlog; so does this one.
    fakeupstream._Server.request_queue_size = 1024


def _install_connect_count(fake: FakeUpstream) -> list[int]:
    count = [0]
    original = fake._on_connect

    def on_connect(handler):
        count[0] += 1
        return original(handler)

    fake._on_connect = on_connect
    return count


def _start_ws_floor(fake: FakeUpstream, account_id: str) -> str:
    from websockets.sync.server import serve

    def handler(ws) -> None:
        ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the fake: no Nagle pauses
        for message in ws:
            body = json.loads(message)
            behaviour = fake.default_behaviour(account_id)
            params = behaviour.params
            events = fake._events(behaviour.kind, params, body, None)
            for i, (name, data) in enumerate(events):  # the pauses of FakeUpstream._run
                wait = (params.get("delay") if i else 0) or 0
                wait += params.get("delta_delay", 0) if name.endswith("_text.delta") else 0
                if wait:
                    time.sleep(wait)
                text = json.dumps(data).encode()
                if PLACEHOLDER in text:
                    text = text.replace(PLACEHOLDER, b"@T%017.6f@" % time.monotonic())
                ws.send(text.decode())

    server = serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"ws://127.0.0.1:{server.socket.getsockname()[1]}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=2)
    ap.add_argument("--auth-dir", required=True)
    args = ap.parse_args()
    _install_stamps()
    _install_backlog()
    fake = FakeUpstream().start()
    connects = _install_connect_count(fake)
    accounts = []
    for i in range(args.accounts):
        acct = fake.add_account(email=f"bench{i + 1}@example.com")
        folder = Path(args.auth_dir) / f"acct{i + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        accounts.append({"account_id": acct.account_id, "access_token": acct.access_token,
                         "auth_json": fake.write_auth_json(acct, str(folder))})
    ws_url = _start_ws_floor(fake, accounts[0]["account_id"])
    print(json.dumps({"url": fake.url, "codex_base": fake.codex_base, "ws_url": ws_url, "accounts": accounts}), flush=True)
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            if cmd.get("connects"):
                print(f"ok {connects[0]}", flush=True)
                continue
            if cmd.get("reset"):
                fake.reset()
            elif cmd.get("forget"):
                with fake._lock:
                    fake.requests.clear()
                    fake.all_requests.clear()
            else:
                behaviour = getattr(B, cmd["behaviour"])(**cmd.get("params", {}))
                if "default" in cmd:
                    fake.set_default(cmd["default"], behaviour)
                else:
                    fake.script(cmd["script"], behaviour)
            print("ok", flush=True)
        except Exception as exc:  # a bad command must not kill the upstream mid-benchmark
            print(f"error {type(exc).__name__}: {exc}", flush=True)
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
