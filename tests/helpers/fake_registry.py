"""A certificate authority made in the test (the ``openssl`` command) and small HTTP(S)
servers (``http.server`` in a thread) that misbehave as a hostile registry would.

The servers are real sockets on 127.0.0.1: the client under test connects, negotiates
TLS and reads bodies for real; only what the server answers is scripted.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CA:
    """A CA and one server/client certificate for ``localhost`` and ``127.0.0.1``."""

    directory: Path
    ca_crt: Path
    cert: Path
    key: Path

    def server_context(self, client_ca: Path | None = None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=client_ca)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str = "test") -> CA:
    """A CA (``NAME-ca.crt``) and a certificate signed by it (``NAME.crt``/``NAME.key``)
    for DNS:localhost and IP:127.0.0.1, usable by a server and by a client."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt",
             "-days", "2", "-subj", f"/CN={name} test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", "/CN=localhost", cwd=directory)
    (directory / f"{name}.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.crt",
             "-CAkey", f"{name}-ca.key", "-CAcreateserial", "-out", f"{name}.crt",
             "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    return CA(directory, directory / f"{name}-ca.crt", directory / f"{name}.crt",
                  directory / f"{name}.key")


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]


class Handler(http.server.BaseHTTPRequestHandler):
    """Hands each GET to the server's ``app``; records it first."""

    protocol_version = "HTTP/1.1"
    server: FakeServer._HTTPServer

    def do_GET(self) -> None:
        self.server.owner.seen.append(
            Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.server.owner.app(self)

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              *, length: bool = True) -> None:
        """A whole response; without ``length`` the body ends when the connection does."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def drop(self) -> None:
        """Drop the connection here, mid-body (as a crashed server or proxy would)."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class FakeServer:
    """An HTTP(S) server on 127.0.0.1 whose answers are ``app(handler)``."""

    app: Callable[[Handler], None]
    tls: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    class _HTTPServer(http.server.ThreadingHTTPServer):
        owner: FakeServer
        tls: ssl.SSLContext | None
        daemon_threads = True

        def get_request(self) -> tuple[socket.socket, object]:
            sock, addr = self.socket.accept()
            if self.tls is not None:
                # The handshake happens in the handler's thread, on the first read.
                sock = self.tls.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
            return sock, addr

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that gave up, or a failed handshake: expected here

    def start(self) -> None:
        """Listen (on ``port`` when set: a restarted server) and serve in a thread."""
        server = self._HTTPServer(("127.0.0.1", self.port), Handler)
        server.owner = self
        server.tls = self.tls
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        self._running = (server, thread)

    def stop(self) -> None:
        """Stop listening: new connections are refused."""
        server, thread = self._running
        server.shutdown()
        server.server_close()
        thread.join(5)

    @contextmanager
    def running(self) -> Iterator[FakeServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.netloc}"
