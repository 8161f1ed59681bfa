"""Raw HTTP/1.1 over a socket, for requests no client library would send (control characters in
headers, a head without its body) and for reading exactly what the proxy answered."""

from __future__ import annotations

import json
import socket

import httpx


def address(proxy) -> tuple[str, int]:
    url = httpx.URL(proxy.url)
    return url.host, url.port


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one answer with a Content-Length (or none) read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def read_json_answer(sock: socket.socket) -> tuple[int, dict]:
    status, body = read_answer(sock)
    return status, json.loads(body) if body else {}


def raw_request(proxy, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(address(proxy), timeout=15) as sock:
        sock.sendall(data)
        return read_answer(sock)
