"""The registry client against small real HTTP(S) servers that misbehave on purpose.

Each server is a real socket on 127.0.0.1 (TLS with a CA made in the test): the client's
TLS, timeouts, redirects, authentication and resumption run for real; only the
server's answers are scripted, as a hostile or broken registry would send them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict, Unpack
from urllib.parse import parse_qs, urlsplit

import pytest

from chrootarchive.errors import ImageError, RegistryError
from chrootarchive.registry.auth import find_credentials, parse_challenges
from chrootarchive.registry.client import (
    LOW_SPEED_BYTES,
    MANIFEST_MEDIA_TYPES,
    MAX_RETRIES,
    MAX_RETRY_PAUSE,
    RETRY_PAUSE,
    BlobReader,
    Client,
)
from chrootarchive.registry.reference import parse_reference
from helpers.fake_registry import CA, FakeServer, Handler, make_ca

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {}, "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
USER, PASSWORD = "alice", "s3cret-Pa55"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A certs.d-style base directory (empty until a test adds a host)."""
    base = tmp_path / "certs.d"
    base.mkdir()
    return base


@pytest.fixture(autouse=True)
def no_ambient_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own HOME and runtime directory: no user's auth file is read."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)


def trust(certs: Path, server: FakeServer, ca: CA) -> None:
    host_dir = certs / server.netloc
    host_dir.mkdir(exist_ok=True)
    (host_dir / "ca.crt").write_bytes(ca.ca_crt.read_bytes())


def authfile(path: Path, key: str, entry: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    value = entry or {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    path.write_text(json.dumps({"auths": {key: value}}))
    return path


class _ClientOptions(TypedDict, total=False):
    insecure: bool
    authfile: str | None
    timeout: float
    max_redirects: int


def client(server: FakeServer, certs: Path, repo: str = "team/app",
           **kw: Unpack[_ClientOptions]) -> Client:
    ref = parse_reference(f"{server.netloc}/{repo}:1.0")
    options: _ClientOptions = {"timeout": 5.0, **kw}
    return Client(ref, certs_dirs=[str(certs)], **options)


def serve_manifest(h: Handler) -> None:
    h.reply(200, MANIFEST, {"Content-Type": OCI_MANIFEST,
                            "Docker-Content-Digest": MANIFEST_DIGEST})


@pytest.fixture
def tls_server(ca: CA, certs: Path) -> Iterator[FakeServer]:
    """A trusted HTTPS server; a test sets its ``app``."""
    server = FakeServer(serve_manifest, ca.server_context())
    with server.running():
        trust(certs, server, ca)
        yield server


# -- manifests --------------------------------------------------------------------------


def test_manifest_by_tag_and_by_digest(tls_server: FakeServer, certs: Path) -> None:
    with client(tls_server, certs) as c:
        media_type, body, digest = c.get_manifest("1.0")
        assert (media_type, body, digest) == (OCI_MANIFEST, MANIFEST, MANIFEST_DIGEST)
        assert c.get_manifest(MANIFEST_DIGEST)[2] == MANIFEST_DIGEST
    first = tls_server.seen[0]
    assert first.path == "/v2/team/app/manifests/1.0"
    for media in MANIFEST_MEDIA_TYPES:
        assert media in first.headers["accept"]
    assert "authorization" not in first.headers
    assert first.headers["user-agent"].startswith("chrootarchive/")


def test_manifest_wrong_digest(tls_server: FakeServer, certs: Path) -> None:
    other = "sha256:" + "0" * 64
    with client(tls_server, certs) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest(other)
    assert str(caught.value).startswith(f"{tls_server.netloc}/team/app@{other}: digest mismatch")


def test_manifest_header_digest_disagrees(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = lambda h: h.reply(200, MANIFEST, {
        "Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:" + "1" * 64})
    with client(tls_server, certs) as c, pytest.raises(RegistryError, match="digest mismatch"):
        c.get_manifest("1.0")


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_oversized_manifest(tls_server: FakeServer, certs: Path, length: bool) -> None:
    huge = b"{" + b" " * (8 << 20) + b"}"
    tls_server.app = lambda h: h.reply(200, huge, {"Content-Type": OCI_MANIFEST},
                                       length=length)
    with client(tls_server, certs) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest("1.0", max_size=4 << 20)
    message = str(caught.value)
    assert "manifest too large" in message and str(4 << 20) in message
    if length:
        assert f"{len(huge)} bytes declared" in message


def test_error_status_names_registry_reference_and_code(tls_server: FakeServer,
                                                        certs: Path) -> None:
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "\x1b[2J"}]})
    tls_server.app = lambda h: h.reply(404, body.encode(), {"Content-Type": "application/json"})
    with client(tls_server, certs) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest("1.0")
    assert str(caught.value) == (f"{tls_server.netloc}/team/app:1.0: manifest not found: "
                                 "HTTP 404 (MANIFEST_UNKNOWN)")
    assert isinstance(caught.value, ImageError)
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is RegistryError and str(again) == str(caught.value)


# -- busy answers: 429 and 502/503/504 are asked again ---------------------------------


def busy_then(status: int, times: int, retry_after: str | None,
              then: Callable[[Handler], None]) -> Callable[[Handler], None]:
    """An app that answers ``status`` (with ``Retry-After``) ``times`` times, then
    as ``then``."""
    count = [0]

    def app(h: Handler) -> None:
        count[0] += 1
        if count[0] <= times:
            body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS"}]}).encode()
            h.reply(status, body, {"Content-Type": "application/json",
                                   **({"Retry-After": retry_after} if retry_after else {})})
        else:
            then(h)
    return app


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_busy_registry_is_asked_again(tls_server: FakeServer, certs: Path,
                                        status: int) -> None:
    tls_server.app = busy_then(status, 2, "0", serve_manifest)
    with client(tls_server, certs) as c:
        assert c.get_manifest("1.0")[2] == MANIFEST_DIGEST
    assert len(tls_server.seen) == 3


def test_retry_after_is_waited_for(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = busy_then(429, 1, "1", serve_manifest)
    start = time.monotonic()
    with client(tls_server, certs) as c:
        assert c.get_manifest("1.0")[2] == MANIFEST_DIGEST
    assert time.monotonic() - start >= 1.0
    assert len(tls_server.seen) == 2


def test_without_retry_after_the_pause_doubles(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = busy_then(503, 2, None, serve_manifest)
    start = time.monotonic()
    with client(tls_server, certs) as c:
        assert c.get_manifest("1.0")[2] == MANIFEST_DIGEST
    assert time.monotonic() - start >= RETRY_PAUSE * 3  # 0.5 s, then 1 s
    assert len(tls_server.seen) == 3


def test_a_registry_busy_for_good_is_an_error_after_the_retries(tls_server: FakeServer,
                                                                certs: Path) -> None:
    tls_server.app = busy_then(503, 1000, "0", serve_manifest)
    with client(tls_server, certs) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest("1.0")
    assert str(caught.value) == (
        f"{tls_server.netloc}/team/app:1.0: manifest failed: HTTP 503 (TOOMANYREQUESTS), "
        f"gave up after {MAX_RETRIES} retries")
    assert len(tls_server.seen) == MAX_RETRIES + 1


def test_a_long_retry_after_is_the_error_not_a_wait(tls_server: FakeServer,
                                                    certs: Path) -> None:
    """Docker Hub's rate limit asks for hours: say so at once."""
    tls_server.app = busy_then(429, 1000, "21600", serve_manifest)
    start = time.monotonic()
    with client(tls_server, certs) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest("1.0")
    assert time.monotonic() - start < MAX_RETRY_PAUSE
    assert str(caught.value).endswith("HTTP 429 (TOOMANYREQUESTS), retry after 21600 s")
    assert len(tls_server.seen) == 1


def test_other_errors_are_not_asked_again(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = busy_then(500, 1000, "0", serve_manifest)
    with client(tls_server, certs) as c, pytest.raises(RegistryError, match="HTTP 500"):
        c.get_manifest("1.0")
    assert len(tls_server.seen) == 1


def test_a_busy_blob_is_asked_again(tls_server: FakeServer, certs: Path) -> None:
    def blob(h: Handler) -> None:
        offset, _ = ranged(h, BLOB)
        h.wfile.write(BLOB[offset:])

    tls_server.app = busy_then(503, 1, "0", blob)
    with client(tls_server, certs) as c, c.open_blob(BLOB_DIGEST, len(BLOB)) as reader:
        assert read_all(reader) == BLOB
    assert len(tls_server.seen) == 2


@pytest.mark.parametrize("head", ["100 Continue over and over", "a header trickled"])
def test_a_response_head_that_never_ends(tls_server: FakeServer, certs: Path,
                                         head: str) -> None:
    """Each read gets bytes within the read timeout, but the status line and headers
    never end: they too must be complete within ten timeouts (this was forever)."""
    def app(h: Handler) -> None:
        try:
            if head.startswith("100"):
                while True:
                    h.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 100)
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while True:
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            h.close_connection = True

    tls_server.app = app
    raised: list[BaseException] = []

    def get() -> None:
        try:
            with client(tls_server, certs, timeout=0.5) as c:
                c.get_manifest("1.0")
        except BaseException as err:
            raised.append(err)

    thread = threading.Thread(target=get, daemon=True)  # a test that fails, not hangs
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the response head was waited for 30 s"
    assert len(raised) == 1 and isinstance(raised[0], RegistryError), raised
    assert "too slow (manifest): no complete response in 5 s" in str(raised[0])


def test_stalled_manifest_body(tls_server: FakeServer, certs: Path) -> None:
    def stall(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(MANIFEST)))
        h.end_headers()
        h.wfile.write(MANIFEST[:10])
        h.wfile.flush()
        time.sleep(3)

    tls_server.app = stall
    start = time.monotonic()
    with client(tls_server, certs, timeout=0.5) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest("1.0")
    assert time.monotonic() - start < 2.5
    assert "manifest stalled: no data for 0.5 s" in str(caught.value)


def test_trickled_manifest_body(tls_server: FakeServer, certs: Path) -> None:
    def trickle(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(MANIFEST)))
        h.end_headers()
        for byte in MANIFEST:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.1)

    tls_server.app = trickle
    start = time.monotonic()
    with client(tls_server, certs, timeout=0.2) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest("1.0")
    assert "manifest too slow: not complete in 2 s" in str(caught.value)
    assert time.monotonic() - start < 4


def test_a_refused_connection_says_so_at_once(certs: Path) -> None:
    """urllib3 2 makes NewConnectionError a ConnectTimeoutError: a refused connection
    (or a name not resolved) read "no answer in 30 s" after a few milliseconds."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: refused
        ref = parse_reference(f"127.0.0.1:{port}/team/app:1.0")
        started = time.monotonic()
        with Client(ref, certs_dirs=[str(certs)], timeout=30.0) as c:
            with pytest.raises(RegistryError, match="connection refused") as caught:
                c.get_manifest("1.0")
    assert "no answer" not in str(caught.value)
    assert time.monotonic() - started < 10


def test_bad_reference_is_refused_before_a_request(tls_server: FakeServer, certs: Path) -> None:
    with client(tls_server, certs) as c:
        with pytest.raises(RegistryError, match="not a tag"):
            c.get_manifest("../../x")
        with pytest.raises(RegistryError, match="not a sha256"):
            c.open_blob("sha256:../x", None)
    assert tls_server.seen == []


# -- blobs ------------------------------------------------------------------------------


def test_get_blob_wrong_digest(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = lambda h: h.reply(200, b"not the config")
    with client(tls_server, certs) as c, pytest.raises(RegistryError, match="digest mismatch"):
        c.get_blob(BLOB_DIGEST, max_size=1 << 20)
    tls_server.app = lambda h: h.reply(200, BLOB)
    with client(tls_server, certs) as c:
        assert c.get_blob(BLOB_DIGEST, max_size=len(BLOB)) == BLOB
        with pytest.raises(RegistryError, match="too large"):
            c.get_blob(BLOB_DIGEST, max_size=1000)


def read_all(reader: BlobReader) -> bytes:
    parts = []
    while data := reader.read(65536):
        parts.append(data)
    return b"".join(parts)


def ranged(h: Handler, data: bytes) -> tuple[int, bool]:
    """Start a blob response, honouring a Range header: (offset, whether ranged)."""
    offset = 0
    wanted = h.headers.get("Range")
    if wanted:
        offset = int(wanted.removeprefix("bytes=").rstrip("-"))
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {offset}-{len(data) - 1}/{len(data)}")
    else:
        h.send_response(200)
    h.send_header("Content-Length", str(len(data) - offset))
    h.end_headers()
    return offset, bool(wanted)


def test_blob_resumed_after_a_dropped_connection(tls_server: FakeServer, certs: Path) -> None:
    cut = 300_000
    calls = []

    def drop_once(h: Handler) -> None:
        calls.append(h.headers.get("Range"))
        offset, _ = ranged(h, BLOB)
        if len(calls) == 1:
            h.wfile.write(BLOB[:cut])
            h.drop()
            return
        h.wfile.write(BLOB[offset:])

    tls_server.app = drop_once
    with client(tls_server, certs) as c, c.open_blob(BLOB_DIGEST, len(BLOB)) as reader:
        assert read_all(reader) == BLOB
        assert reader.bytes_read == len(BLOB) and reader.resumes == 1
    assert calls[0] is None and calls[1] is not None
    resumed_at = int(calls[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut


def test_blob_resumed_after_the_registry_restarts(ca: CA, certs: Path) -> None:
    def first_life(h: Handler) -> None:
        ranged(h, BLOB)
        h.wfile.write(BLOB[:100_000])
        h.wfile.flush()
        gone.wait(5)
        h.drop()

    def second_life(h: Handler) -> None:
        offset, _ = ranged(h, BLOB)
        h.wfile.write(BLOB[offset:])

    gone = threading.Event()
    first = FakeServer(first_life, ca.server_context())
    first.start()
    trust(certs, first, ca)
    second = FakeServer(second_life, ca.server_context(), port=first.port)
    restart = threading.Timer(1.0, second.start)
    try:
        with client(first, certs) as c, c.open_blob(BLOB_DIGEST, len(BLOB)) as reader:
            head = reader.read(50_000)
            first.stop()  # the registry goes away: connections are refused
            gone.set()
            restart.start()  # and comes back a second later
            assert head + read_all(reader) == BLOB
            assert reader.resumes >= 2  # at least one attempt was refused
    finally:
        restart.join()
        second.stop()
    assert second.seen[0].headers["range"].startswith("bytes=")


def test_blob_complete_but_its_end_lost_is_not_resumed(tls_server: FakeServer,
                                                       certs: Path) -> None:
    def no_last_chunk(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(BLOB), BLOB))
        h.drop()  # the closing 0-length chunk never comes

    tls_server.app = no_last_chunk
    with client(tls_server, certs) as c, c.open_blob(BLOB_DIGEST, len(BLOB)) as reader:
        assert read_all(reader) == BLOB
        assert reader.resumes == 0
    assert len(tls_server.seen) == 1


def test_blob_resume_without_range_support_is_an_error(tls_server: FakeServer,
                                                       certs: Path) -> None:
    def no_ranges(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(BLOB)))
        h.end_headers()
        h.wfile.write(BLOB[:200_000])
        h.drop()

    tls_server.app = no_ranges
    with client(tls_server, certs) as c, c.open_blob(BLOB_DIGEST, len(BLOB)) as reader, \
            pytest.raises(RegistryError, match="cannot resume"):
        read_all(reader)


def test_blob_gives_up_after_five_resumes(tls_server: FakeServer, certs: Path) -> None:
    def always_drop(h: Handler) -> None:
        offset, _ = ranged(h, BLOB)
        h.wfile.write(BLOB[offset:offset + 1000])
        h.drop()

    tls_server.app = always_drop
    with client(tls_server, certs) as c, c.open_blob(BLOB_DIGEST, len(BLOB)) as reader, \
            pytest.raises(RegistryError, match="dropped 6 times"):
        read_all(reader)
    assert len(tls_server.seen) == 6


def test_stalled_blob_body(tls_server: FakeServer, certs: Path) -> None:
    def stall(h: Handler) -> None:
        offset, _ = ranged(h, BLOB)
        h.wfile.write(BLOB[offset:offset + 1000])
        h.wfile.flush()
        time.sleep(3)

    tls_server.app = stall
    start = time.monotonic()
    with client(tls_server, certs, timeout=0.4) as c, c.open_blob(BLOB_DIGEST, None) as r, \
            pytest.raises(RegistryError) as caught:
        read_all(r)
    # One read timeout is resumed; the second is the error.
    assert "stalled: no data for 0.4 s after 2000 bytes" in str(caught.value)
    assert time.monotonic() - start < 2.5


def test_a_trickled_blob_body_is_too_slow(tls_server: FakeServer, certs: Path) -> None:
    """Ten bytes every 0.1 s: each read is in time (the read timeout is 0.4 s), so only
    the whole pull's --timeout, if given, ended it; with none, a layer took forever. A
    blob must bring LOW_SPEED_BYTES a second over each window of two timeouts."""
    stop = threading.Event()

    def trickle(h: Handler) -> None:
        if h.headers.get("Range"):  # a resume: the floor was not kept (or ended early)
            h.reply(404)
            return
        ranged(h, BLOB)
        for at in range(0, 500, 10):  # 5 s, then the connection drops
            if stop.wait(0.1):
                return
            h.wfile.write(BLOB[at:at + 10])
            h.wfile.flush()
        h.drop()

    tls_server.app = trickle
    start = time.monotonic()
    try:
        with client(tls_server, certs, timeout=0.4) as c, c.open_blob(BLOB_DIGEST, None) as r, \
                pytest.raises(RegistryError) as caught:
            read_all(r)
    finally:
        stop.set()
    assert re.search(rf"too slow: \d+ bytes in 0.8 s, under {LOW_SPEED_BYTES} bytes a "
                     rf"second, after \d+ bytes$", str(caught.value)), caught.value
    assert time.monotonic() - start < 3


def test_a_slow_blob_above_the_floor_is_read(tls_server: FakeServer, certs: Path) -> None:
    """A blob sent at four times the floor, in small pieces over several windows,
    arrives whole."""
    piece = LOW_SPEED_BYTES * 4 // 10
    small = BLOB[:LOW_SPEED_BYTES * 6]

    def slow(h: Handler) -> None:
        offset, _ = ranged(h, small)
        for at in range(offset, len(small), piece):
            time.sleep(0.1)
            h.wfile.write(small[at:at + piece])
            h.wfile.flush()

    tls_server.app = slow
    with client(tls_server, certs, timeout=0.4) as c, c.open_blob(BLOB_DIGEST, len(small)) as r:
        assert read_all(r) == small


def test_two_blobs_at_once_from_one_client(tls_server: FakeServer, certs: Path,
                                           tmp_path: Path) -> None:
    """pull reads the next layer while one is applied: one client, two threads."""
    other = BLOB[::-1]
    blobs = {BLOB_DIGEST: BLOB, "sha256:" + hashlib.sha256(other).hexdigest(): other}

    def app(h: Handler) -> None:
        data = blobs[h.path.rsplit("/", 1)[1]]
        ranged(h, data)
        for start in range(0, len(data), 65536):
            h.wfile.write(data[start:start + 65536])
            time.sleep(0.002)

    tls_server.app = basic_protected(app)
    auth = authfile(tmp_path / "a.json", tls_server.netloc)
    results: dict[str, bytes] = {}

    def fetch(c: Client, digest: str) -> None:
        with c.open_blob(digest, len(blobs[digest])) as reader:
            results[digest] = read_all(reader)

    with client(tls_server, certs, authfile=str(auth)) as c:
        threads = [threading.Thread(target=fetch, args=(c, d)) for d in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert results == blobs


def test_blob_size_disagrees_with_content_length(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = lambda h: h.reply(200, BLOB)
    with client(tls_server, certs) as c, pytest.raises(RegistryError, match="size mismatch"):
        c.open_blob(BLOB_DIGEST, len(BLOB) - 1)


# -- redirects --------------------------------------------------------------------------


def basic_protected(inner: Callable[[Handler], None]) -> Callable[[Handler], None]:
    def app(h: Handler) -> None:
        if h.headers.get("Authorization") != BASIC:
            h.reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="registry"'})
            return
        inner(h)
    return app


def test_cross_host_redirect_drops_authorization(ca: CA, certs: Path,
                                                 tmp_path: Path) -> None:
    storage = FakeServer(lambda h: h.reply(200, BLOB), ca.server_context(), host="localhost")
    with storage.running():
        trust(certs, storage, ca)
        registry = FakeServer(basic_protected(lambda h: h.reply(
            307, b"", {"Location": f"{storage.url}/blobs/x?sig=1"})), ca.server_context())
        with registry.running():
            trust(certs, registry, ca)
            auth = authfile(tmp_path / "auth.json", registry.netloc)
            with client(registry, certs, authfile=str(auth)) as c:
                with c.open_blob(BLOB_DIGEST, len(BLOB)) as reader:
                    assert read_all(reader) == BLOB
                assert c.get_blob(BLOB_DIGEST, max_size=len(BLOB)) == BLOB
    assert [s.headers.get("authorization") for s in registry.seen] == [None, BASIC, BASIC]
    assert storage.seen and all("authorization" not in s.headers for s in storage.seen)
    assert storage.seen[0].path == "/blobs/x?sig=1"


def test_same_host_other_port_is_another_origin(ca: CA, certs: Path,
                                                tmp_path: Path) -> None:
    other = FakeServer(lambda h: h.reply(200, BLOB), ca.server_context())
    with other.running():
        trust(certs, other, ca)
        registry = FakeServer(basic_protected(lambda h: h.reply(
            302, b"", {"Location": f"{other.url}/b"})), ca.server_context())
        with registry.running():
            trust(certs, registry, ca)
            auth = authfile(tmp_path / "auth.json", registry.netloc)
            with client(registry, certs, authfile=str(auth)) as c:
                assert c.get_blob(BLOB_DIGEST, max_size=len(BLOB)) == BLOB
    assert "authorization" not in other.seen[0].headers


def test_relative_redirect_on_the_registry_keeps_authorization(
        tls_server: FakeServer, certs: Path, tmp_path: Path) -> None:
    def app(h: Handler) -> None:
        if h.path.startswith("/v2/"):
            h.reply(302, b"", {"Location": "../../../../elsewhere/blob"})
        else:
            h.reply(200, BLOB)

    tls_server.app = basic_protected(app)
    auth = authfile(tmp_path / "auth.json", tls_server.netloc)
    with client(tls_server, certs, authfile=str(auth)) as c:
        assert c.get_blob(BLOB_DIGEST, max_size=len(BLOB)) == BLOB
    assert tls_server.seen[-1].path == "/elsewhere/blob"
    assert tls_server.seen[-1].headers.get("authorization") == BASIC


def test_redirect_loop(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = lambda h: h.reply(
        302, b"", {"Location": "/a" if h.path != "/a" else "/v2/team/app/blobs/" + BLOB_DIGEST})
    with client(tls_server, certs) as c, pytest.raises(RegistryError, match="redirect loop"):
        c.get_blob(BLOB_DIGEST, max_size=100)
    assert len(tls_server.seen) == 2


def test_too_many_redirects(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = lambda h: h.reply(302, b"", {"Location": f"/r{len(tls_server.seen)}"})
    with client(tls_server, certs, max_redirects=3) as c, \
            pytest.raises(RegistryError, match="more than 3 redirects"):
        c.get_manifest("1.0")
    assert len(tls_server.seen) == 4


def test_redirect_to_plain_http_refused(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = lambda h: h.reply(302, b"", {"Location": "http://127.0.0.1:9/x"})
    with client(tls_server, certs) as c, pytest.raises(RegistryError, match="plain HTTP"):
        c.get_manifest("1.0")




def chunked_by_byte(h: Handler, body: bytes) -> None:
    """``body`` as a chunked response of 1-byte chunks (each read gets one byte)."""
    h.send_response(200)
    h.send_header("Content-Type", OCI_MANIFEST)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    out = bytearray()
    for i in range(len(body)):
        out += b"1\r\n" + body[i:i + 1] + b"\r\n"
        if len(out) >= 1 << 16:
            h.wfile.write(out)
            out.clear()
    h.wfile.write(out + b"0\r\n\r\n")
    h.wfile.flush()


def test_a_manifest_in_1_byte_chunks_takes_its_size_in_memory(tls_server: FakeServer,
                                                              certs: Path) -> None:
    """Each read of a chunked body gives at most a chunk: kept as a list of what each
    read gave, 1-byte chunks took 90 times their size (4 MiB, the bound: 390 MB)."""
    import tracemalloc

    body = MANIFEST[:-1] + b" " * (256 << 10) + b"}"
    tls_server.app = lambda h: chunked_by_byte(h, body)
    with client(tls_server, certs) as c:
        tracemalloc.start()
        try:
            got = c.get_manifest("1.0")[1]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert got == body
    assert peak < 4 * len(body), peak


# -- header values no parser expects ----------------------------------------------------
# The registry writes its headers' text: a value that str.isdigit() takes but int()
# refuses (a superscript digit), 5,000 digits (int()'s limit), an IPv6 address that does
# not parse. Each used to escape as a ValueError or OverflowError: "this is a bug" and
# exit status 70 from the command line, not a RegistryError.

UNREADABLE_NUMBERS = ["\xb9", "\xb2\xb3", "9" * 5000]


def close_delimited(h: Handler, body: bytes, headers: dict[str, str]) -> None:
    """A 200 whose body ends with the connection, with exactly ``headers``."""
    h.send_response(200)
    for key, value in headers.items():
        h.send_header(key, value)  # encoded as latin-1: "\xb9" is one byte on the wire
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(body)
    h.wfile.flush()
    h.close_connection = True


@pytest.mark.parametrize("length", UNREADABLE_NUMBERS)
def test_an_unreadable_content_length_of_a_manifest_is_no_length(
        tls_server: FakeServer, certs: Path, length: str) -> None:
    tls_server.app = lambda h: close_delimited(h, MANIFEST, {
        "Content-Type": OCI_MANIFEST, "Content-Length": length})
    with client(tls_server, certs) as c:
        assert c.get_manifest("1.0")[1:] == (MANIFEST, MANIFEST_DIGEST)


@pytest.mark.parametrize("length", UNREADABLE_NUMBERS)
def test_an_unreadable_content_length_of_a_blob_is_no_length(
        tls_server: FakeServer, certs: Path, length: str) -> None:
    tls_server.app = lambda h: close_delimited(h, BLOB, {"Content-Length": length})
    with client(tls_server, certs) as c, c.open_blob(BLOB_DIGEST, len(BLOB)) as reader:
        assert read_all(reader) == BLOB


@pytest.mark.parametrize("retry_after", ["9" * 5000, "Mon, 01 Jan 99999999999 00:00:00 GMT"])
def test_an_unreadable_retry_after_is_the_usual_pause(tls_server: FakeServer, certs: Path,
                                                      retry_after: str) -> None:
    tls_server.app = busy_then(429, 1, retry_after, serve_manifest)
    with client(tls_server, certs) as c:
        assert c.get_manifest("1.0")[2] == MANIFEST_DIGEST
    assert len(tls_server.seen) == 2


def test_an_unreadable_content_range_is_the_wrong_place(tls_server: FakeServer,
                                                        certs: Path) -> None:
    def app(h: Handler) -> None:
        if h.headers.get("Range") is None:
            h.send_response(200)
            h.send_header("Content-Length", str(len(BLOB)))
            h.end_headers()
            h.wfile.write(BLOB[:1000])
            h.drop()
        else:
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {'1' * 5000}-{len(BLOB) - 1}/{len(BLOB)}")
            h.send_header("Content-Length", str(len(BLOB) - 1000))
            h.end_headers()
            h.wfile.write(BLOB[1000:])

    tls_server.app = app
    with client(tls_server, certs) as c, c.open_blob(BLOB_DIGEST, len(BLOB)) as reader, \
            pytest.raises(RegistryError, match="resumed at the wrong place"):
        read_all(reader)


def test_a_redirect_to_an_unparsable_location_is_refused(tls_server: FakeServer,
                                                         certs: Path) -> None:
    tls_server.app = lambda h: h.reply(302, b"", {"Location": "https://[::1/x"})
    with client(tls_server, certs) as c, \
            pytest.raises(RegistryError, match="redirect to an unusable location"):
        c.get_manifest("1.0")


def test_a_token_realm_that_does_not_parse_is_refused(tls_server: FakeServer,
                                                      certs: Path) -> None:
    tls_server.app = lambda h: h.reply(401, b"", {
        "WWW-Authenticate": 'Bearer realm="https://[::1/token"'})
    with client(tls_server, certs) as c, pytest.raises(RegistryError, match="no usable realm"):
        c.get_manifest("1.0")


# -- authentication ---------------------------------------------------------------------


def bearer_registry(server: FakeServer, token: str = "T0KEN", key: str = "token") -> list[
        dict[str, list[str]]]:
    """The registry asks for a bearer token, which its /token endpoint hands out."""
    queries: list[dict[str, list[str]]] = []

    def app(h: Handler) -> None:
        if h.path.startswith("/token"):
            queries.append(parse_qs(urlsplit(h.path).query))
            h.reply(200, json.dumps({key: token}).encode())
        elif h.headers.get("Authorization") == f"Bearer {token}":
            serve_manifest(h)
        else:
            h.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {
                "WWW-Authenticate": f'Bearer realm="{server.url}/token?x=1",'
                                    'service="reg, \\"test\\"",scope="repository:team/app:pull"'})

    server.app = app
    return queries


@pytest.mark.parametrize("key", ["token", "access_token"])
def test_anonymous_bearer_token(tls_server: FakeServer, certs: Path, key: str) -> None:
    queries = bearer_registry(tls_server, key=key)
    with client(tls_server, certs) as c:
        assert c.get_manifest("1.0")[1] == MANIFEST
        c.get_manifest("1.0")  # the token is kept
    assert queries == [{"x": ["1"], "scope": ["repository:team/app:pull"],
                        "service": ['reg, "test"']}]
    token_request = next(s for s in tls_server.seen if s.path.startswith("/token"))
    assert "authorization" not in token_request.headers
    assert len(tls_server.seen) == 4


def busy_token_endpoint(server: FakeServer, times: int) -> None:
    """A bearer registry whose token endpoint answers 503 ``times`` times first."""
    bearer_registry(server)
    registry = server.app
    token = busy_then(503, times, "0", registry)

    def app(h: Handler) -> None:
        (token if h.path.startswith("/token") else registry)(h)

    server.app = app


def test_a_busy_token_endpoint_is_asked_again(tls_server: FakeServer, certs: Path) -> None:
    busy_token_endpoint(tls_server, 2)
    with client(tls_server, certs) as c:
        assert c.get_manifest("1.0")[1] == MANIFEST
    assert [s.path.startswith("/token") for s in tls_server.seen] == [
        False, True, True, True, False]


def test_a_token_endpoint_busy_for_good_is_an_error_after_the_retries(
        tls_server: FakeServer, certs: Path) -> None:
    busy_token_endpoint(tls_server, 1000)
    with client(tls_server, certs) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest("1.0")
    assert str(caught.value) == (
        f"{tls_server.netloc}/team/app:1.0: token request to {tls_server.netloc} refused: "
        f"HTTP 503 (TOOMANYREQUESTS), gave up after {MAX_RETRIES} retries")
    assert len(tls_server.seen) == 1 + MAX_RETRIES + 1


def test_bearer_token_with_credentials(tls_server: FakeServer, certs: Path,
                                       tmp_path: Path) -> None:
    bearer_registry(tls_server)
    auth = authfile(tmp_path / "a.json", f"https://{tls_server.netloc}")
    with client(tls_server, certs, authfile=str(auth)) as c:
        c.get_manifest("1.0")
    token_request = next(s for s in tls_server.seen if s.path.startswith("/token"))
    assert token_request.headers["authorization"] == BASIC
    manifest_requests = [s for s in tls_server.seen if s.path.startswith("/v2/")]
    assert [s.headers.get("authorization") for s in manifest_requests] == [None, "Bearer T0KEN"]


def test_token_realm_on_plain_http_gets_no_credentials(tls_server: FakeServer, certs: Path,
                                                       tmp_path: Path) -> None:
    seen_elsewhere = FakeServer(lambda h: h.reply(200, b'{"token":"x"}'))
    with seen_elsewhere.running():
        tls_server.app = lambda h: h.reply(401, b"", {
            "WWW-Authenticate": f'Bearer realm="{seen_elsewhere.url}/token"'})
        auth = authfile(tmp_path / "a.json", tls_server.netloc)
        with client(tls_server, certs, authfile=str(auth)) as c, \
                pytest.raises(RegistryError, match="not HTTPS"):
            c.get_manifest("1.0")
    assert seen_elsewhere.seen == []


def test_basic_auth_and_no_secret_in_errors(tls_server: FakeServer, certs: Path,
                                            tmp_path: Path) -> None:
    tls_server.app = basic_protected(lambda h: h.reply(500, b"{}"))
    auth = authfile(tmp_path / "a.json", tls_server.netloc)
    with client(tls_server, certs, authfile=str(auth)) as c, \
            pytest.raises(RegistryError) as caught:
        c.get_manifest("1.0")
    assert "HTTP 500" in str(caught.value)
    assert tls_server.seen[1].headers["authorization"] == BASIC
    text = str(caught.value) + repr(caught.value) + repr(c.__dict__)
    assert PASSWORD not in text and BASIC.split()[1] not in text


def test_basic_challenge_without_credentials(tls_server: FakeServer, certs: Path) -> None:
    tls_server.app = basic_protected(serve_manifest)
    with client(tls_server, certs) as c, \
            pytest.raises(RegistryError, match="authentication required"):
        c.get_manifest("1.0")


def test_wrong_credentials_are_access_denied(tls_server: FakeServer, certs: Path,
                                             tmp_path: Path) -> None:
    tls_server.app = basic_protected(serve_manifest)
    auth = authfile(tmp_path / "a.json", tls_server.netloc,
                    {"username": USER, "password": "wrong"})
    with client(tls_server, certs, authfile=str(auth)) as c, \
            pytest.raises(RegistryError, match="access denied: HTTP 401"):
        c.get_manifest("1.0")
    assert len(tls_server.seen) == 2


@pytest.mark.parametrize("where", ["authfile", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR",
                                   "config-containers", "docker-config"])
def test_credentials_file_locations(tls_server: FakeServer, certs: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    tls_server.app = basic_protected(serve_manifest)
    home = tmp_path / "home"
    path = {
        "authfile": tmp_path / "explicit.json",
        "REGISTRY_AUTH_FILE": tmp_path / "env.json",
        "XDG_RUNTIME_DIR": tmp_path / "run" / "containers" / "auth.json",
        "config-containers": home / ".config" / "containers" / "auth.json",
        "docker-config": home / ".docker" / "config.json",
    }[where]
    authfile(path, tls_server.netloc)
    if where == "REGISTRY_AUTH_FILE":
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    with client(tls_server, certs,
                authfile=str(path) if where == "authfile" else None) as c:
        assert c.get_manifest("1.0")[1] == MANIFEST


def test_credentials_lookup_rules(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"u:p:with:colons").decode()
    docker = tmp_path / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(json.dumps({
        "auths": {"https://index.docker.io/v1/": {"auth": encoded},
                  "reg.example:5000/team": {"username": "team", "password": "t"},
                  "https://reg.example:5000": {"username": "any", "password": "a"},
                  "id.example": {"identitytoken": "tok"}},
        "credHelpers": {"helper.example": "secretservice"}, "credsStore": "desktop"}))
    env = {"HOME": str(tmp_path)}
    hub = find_credentials("docker.io", "library/debian", environ=env)
    assert hub is not None and (hub.username, hub.password) == ("u", "p:with:colons")
    team = find_credentials("reg.example:5000", "team/app", environ=env)
    assert team is not None and team.username == "team"
    other = find_credentials("reg.example:5000", "other/app", environ=env)
    assert other is not None and other.username == "any"
    # Identity tokens and credential helpers are not used: anonymous, no error.
    assert find_credentials("id.example", "x", environ=env) is None
    assert find_credentials("helper.example", "x", environ=env) is None
    assert "p:with:colons" not in repr(hub)
    # An explicit file must exist; a broken one is named, its content is not quoted.
    with pytest.raises(RegistryError, match="does not exist"):
        find_credentials("docker.io", environ={"REGISTRY_AUTH_FILE": str(tmp_path / "no")})
    broken = tmp_path / "broken.json"
    broken.write_text('{"auths": {"x": {"auth": "SECRET"')
    with pytest.raises(RegistryError) as caught:
        find_credentials("x", authfile=str(broken), environ={})
    assert "not valid JSON" in str(caught.value) and "SECRET" not in str(caught.value)


def test_challenge_parser() -> None:
    assert parse_challenges(
        'Basic realm="a, b", Bearer realm="https://x/t",service="s\\"q",scope=repo:x:pull'
    ) == [("basic", {"realm": "a, b"}),
          ("bearer", {"realm": "https://x/t", "service": 's"q', "scope": "repo:x:pull"})]
    assert parse_challenges("") == []


# -- TLS --------------------------------------------------------------------------------


def test_tls_needs_the_hosts_ca(ca: CA, certs: Path) -> None:
    server = FakeServer(serve_manifest, ca.server_context())
    with server.running():
        with client(server, certs) as c, pytest.raises(RegistryError) as caught:
            c.get_manifest("1.0")
        assert "certificate verification failed" in str(caught.value)
        trust(certs, server, ca)  # /etc/containers/certs.d/HOST:PORT/ca.crt
        with client(server, certs) as c:
            assert c.get_manifest("1.0")[1] == MANIFEST


def test_tls_client_certificate_from_certs_dir(ca: CA, certs: Path,
                                               tmp_path: Path) -> None:
    client_ca = make_ca(tmp_path / "client-ca", "client")
    server = FakeServer(serve_manifest, ca.server_context(client_ca=client_ca.ca_crt))
    with server.running():
        trust(certs, server, ca)
        with client(server, certs) as c, pytest.raises(RegistryError):
            c.get_manifest("1.0")
        host_dir = certs / server.netloc
        (host_dir / "client.cert").write_bytes(client_ca.cert.read_bytes())
        (host_dir / "client.key").write_bytes(client_ca.key.read_bytes())
        with client(server, certs) as c:
            assert c.get_manifest("1.0")[1] == MANIFEST
        (host_dir / "client.key").unlink()
        with client(server, certs) as c, pytest.raises(RegistryError, match="has no"):
            c.get_manifest("1.0")


def test_insecure_is_for_the_named_registry_only(ca: CA, certs: Path) -> None:
    untrusted = make_ca(certs.parent / "untrusted", "untrusted")
    storage = FakeServer(lambda h: h.reply(200, BLOB), untrusted.server_context(),
                         host="localhost")
    with storage.running():
        registry = FakeServer(lambda h: h.reply(
            307, b"", {"Location": f"{storage.url}/blob"}) if "/blobs/" in h.path
            else serve_manifest(h), untrusted.server_context())
        with registry.running():
            with client(registry, certs, insecure=True) as c:
                assert c.get_manifest("1.0")[1] == MANIFEST
                with pytest.raises(RegistryError, match="certificate verification failed"):
                    c.get_blob(BLOB_DIGEST, max_size=len(BLOB))
            with client(registry, certs) as c, \
                    pytest.raises(RegistryError, match="certificate verification failed"):
                c.get_manifest("1.0")
    assert storage.seen == []


def test_insecure_falls_back_to_plain_http(certs: Path) -> None:
    server = FakeServer(serve_manifest)
    with server.running():
        with client(server, certs) as c, pytest.raises(RegistryError, match="TLS"):
            c.get_manifest("1.0")
        with client(server, certs, insecure=True) as c:
            assert c.get_manifest("1.0")[1] == MANIFEST
            assert c.base_url.startswith("http://")
