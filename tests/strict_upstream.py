"""nginx with TLS in front of the fake upstream: a test world as strict as the real one.

chatgpt.com and auth.openai.com sit behind Cloudflare, a strict HTTP/1.1 + TLS edge. The fake
(`tests/fakeupstream.py`) is built on Python's lenient `http.server`, which accepts requests no real
server would (no `Host`, duplicate `Content-Length`, control characters in headers...). Here a real
web server, nginx, plays the edge: it terminates TLS with a certificate signed by a test CA (the
proxy trusts it through `upstream.ca_file`, like any other CA) and reverse-proxies to the in-process
fake on plain HTTP::

    fake = FakeUpstream().start()
    front = NginxFront(fake.port).start()      # NginxMissing when there is no nginx
    fake.set_public(front.url, front.ca_file)  # codex_base, issuer... now give https URLs
    ...
    front.stop(); fake.stop()

Also used by the benchmarks (`bench/`), so this module does not import pytest.
"""
from __future__ import annotations

import ctypes
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
INSTALL_HINT = ("nginx is required by the test-suite (the fake upstream runs behind it, with TLS, as the real "
                "backend runs behind Cloudflare): `./scripts/dev test` installs it (apt-get install nginx-light, as "
                "root); elsewhere install nginx and put it on PATH")


class NginxMissing(RuntimeError):
    pass


def find_binary(name: str, candidates: tuple[str, ...], missing: Exception) -> str:
    """A server binary on PATH or in the usual sbin places (apt puts some outside a user's PATH);
    raises `missing` (which says how to install it) when there is none."""
    found = shutil.which(name) or next((p for p in candidates if os.access(p, os.X_OK)), None)
    if not found:
        raise missing
    return found


def nginx_binary() -> str:
    """The nginx executable, or NginxMissing with what to do about it."""
    return find_binary("nginx", NGINX_CANDIDATES, NginxMissing(INSTALL_HINT))


# ----------------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class TestCA:
    """A CA certificate (what a client trusts) and a server certificate + key it signed."""
    __test__ = False  # not a pytest test class, whatever its name

    ca_file: str     # PEM: the CA certificate
    cert_file: str   # PEM: the server certificate
    key_file: str    # PEM: the server's private key (unencrypted)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "codexproxy tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_test_ca(directory: str | os.PathLike, name: str = "codexproxy test CA",
                 hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TestCA:
    """A fresh CA and a server certificate for `hosts` (IP addresses become IP SANs, names DNS SANs).

    The extensions are those strict verifiers insist on (Python 3.13's VERIFY_X509_STRICT, OpenSSL):
    CA basicConstraints critical + keyCertSign, key identifiers on both, serverAuth on the leaf."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(_name(name)).issuer_name(_name(name))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))

    pem = serialization.Encoding.PEM
    paths = TestCA(str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key"))
    Path(paths.ca_file).write_bytes(ca_cert.public_bytes(pem))
    Path(paths.cert_file).write_bytes(cert.public_bytes(pem))
    fd = os.open(paths.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


# ------------------------------------------------------------------------------------------ nginx
# Every directive below is either what makes nginx a faithful stand-in for the fake (it must not
# change what the fake's behaviours do on the wire) or what keeps nginx as strict as a real edge.
# nginx's own defaults stay for the rest: they reject a request without Host, a duplicate
# Content-Length, CR/NUL in a header, bad chunked framing -- all with 400.
NGINX_CONF = """\
# generated by tests/strict_upstream.py; nginx runs in the foreground, everything under {dir}
daemon off;
master_process on;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log info;  # "info" names the reason of every 400 nginx answers itself

events {{
    worker_connections 4096;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    upstream fake {{
        server {backend};
        keepalive 64;               # reuse connections to the fake, as an edge does to its origin
        keepalive_timeout 600s;
        keepalive_requests 100000;
    }}

    server {{
        listen 127.0.0.1:{port} ssl http2;  # chatgpt.com offers h2 too; the proxy must pick http/1.1 itself
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;

        underscores_in_headers on;          # else `session_id` and friends vanish silently
        client_max_body_size 64m;           # 2-5 MB conversation bodies must pass
        client_body_buffer_size 1m;
        large_client_header_buffers 4 32k;
        keepalive_timeout 300s;
        keepalive_requests 100000;          # long keep-alive runs (benchmarks) never see a forced close
        send_timeout 3600s;                 # slow SSE readers are not cut
        client_body_timeout 300s;

        location / {{
            proxy_pass http://fake;         # no URI part: the request target goes to the fake untouched
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # The fake's keep-alive checks compare the CLIENT's connection (the proxy's), not nginx's.
            proxy_set_header X-Fake-Peer $remote_addr:$remote_port;
            proxy_buffering off;            # SSE goes out event by event
            # The whole request body is read (and its framing checked) before the fake sees it, as
            # Cloudflare buffers uploads; the fake then always gets a Content-Length.
            proxy_request_buffering on;
            proxy_buffer_size 16k;          # the fake's answer heads; with buffering off, also the read size
            proxy_buffers 8 16k;
            proxy_connect_timeout 5s;
            proxy_send_timeout 3600s;
            proxy_read_timeout 3600s;       # hanging upstreams hang; the proxy's idle timeout decides
            # Never re-send a request to the fake: a script entry must be consumed exactly once.
            proxy_next_upstream off;
            # The fake closing without an answer (B.hang, a crash) must reach the client as exactly
            # that -- a closed connection -- not as an nginx error page the proxy would take for an
            # upstream 502. (The fake's own 5xx answers are passed through: no proxy_intercept_errors.)
            error_page 502 504 = @closed;
        }}

        location @closed {{
            return 444;                     # nginx: close the connection without an answer
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If the test process is killed (SIGKILL, a crash), nginx goes too: no leftover listener.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class NginxFront:
    """nginx terminating TLS on a free loopback port, reverse-proxying to http://backend_host:backend_port.

    `url` is the https URL to give clients; `ca_file` is the CA they must trust. Everything
    (config, certificates, logs, temp files) lives in one temp dir removed by stop()."""

    def __init__(self, backend_port: int, backend_host: str = "127.0.0.1", ca: TestCA | None = None):
        self.backend = f"{backend_host}:{backend_port}"
        self.binary = nginx_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="strict-upstream-"))
        self.ca = ca or make_test_ca(self.dir / "pki")
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return self.ca.ca_file

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the test CA."""
        return ssl.create_default_context(cafile=self.ca_file)

    def error_log(self) -> str:
        try:
            return (self.dir / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def _write_config(self, port: int) -> Path:
        (self.dir / "tmp").mkdir(exist_ok=True)
        # Workers of a root master run as `nobody` by default: they could not enter this 0700 temp dir.
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, user=user, port=port, backend=self.backend,
                                          cert=self.ca.cert_file, key=self.ca.key_file))
        return conf

    def start(self, timeout: float = 15) -> "NginxFront":
        last = ""
        for _ in range(5):  # a free port can be taken by a neighbour between our check and nginx's bind
            port = free_port()
            conf = self._write_config(port)
            (self.dir / "error.log").write_text("")
            self.process = subprocess.Popen(
                [self.binary, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                start_new_session=True)  # Ctrl-C in the terminal reaches pytest, which stops nginx itself
            self.port = port
            if self._wait_ready(timeout):
                return self
            last = self.error_log()
            self._terminate()
            if "Address already in use" not in last:
                break
        shutil.rmtree(self.dir, ignore_errors=True)
        raise RuntimeError(f"nginx did not start ({self.binary}):\n{last[-3000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        """True once a TLS handshake with the test CA succeeds; False if nginx exits or time runs out."""
        ctx = self.ssl_context()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                    with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                        return True
            except (OSError, ssl.SSLError):
                time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown: open streams are closed, not drained
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker too
                proc.wait(5)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "NginxFront":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
