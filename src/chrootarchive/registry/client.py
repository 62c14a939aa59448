"""A client for one repository of a registry (OCI distribution spec, Docker registry v2).

The registry is untrusted input: every body is bounded or streamed, every digest is
checked (the caller checks streamed blobs), redirects are followed by hand (a bounded
number, no loops, and no ``Authorization`` header to another origin), every request
has connect and read timeouts, and every failure is one :class:`RegistryError` line
naming the registry, the reference and the problem, never a credential.

HTTP and TLS are urllib3's; nothing here parses HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from urllib.parse import urlencode, urljoin, urlsplit

from chrootarchive import __version__
from chrootarchive.errors import (
    ChrootArchiveError,
    LimitExceededError,
    RegistryError,
    printable,
)
from chrootarchive.registry.auth import Credentials, find_credentials, parse_challenges
from chrootarchive.registry.reference import Reference
from chrootarchive.registry.tls import ssl_context

# urllib3 is imported with the first Client, not with this module: the package imports
# no third-party module before it needs one (a daemon imports every module at start).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import urllib3
    import urllib3.exceptions as _ux


def _load_urllib3() -> None:
    global urllib3, _ux, _HAS_READ1, _UNREACHABLE
    import urllib3
    import urllib3.exceptions as _ux

    # urllib3 2.3 added ``read1``; older 2.x waits for ``n`` bytes in ``read``.
    _HAS_READ1 = hasattr(urllib3.HTTPResponse, "read1")
    _UNREACHABLE = (_ux.NewConnectionError, _ux.ConnectTimeoutError, _ux.ProtocolError)
    if not _POOL_CLASSES:
        _POOL_CLASSES.update(_head_timed_pools())


#: The seconds the response head (status line and headers) of the request this thread
#: sends may take in all: each read has the read timeout, but a registry that sends
#: "100 Continue" over and over, or a header a byte at a time, never trips it.
_head = threading.local()
_POOL_CLASSES: dict[str, type[urllib3.HTTPConnectionPool]] = {}


def _cut(sock: socket.socket) -> None:
    """Shut ``sock`` down under a read that waits on it (the read then ends): the base
    class's call, which an SSL socket's own would race with its reader."""
    with contextlib.suppress(OSError):  # closed meanwhile: nothing to cut
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _head_within(conn: urllib3.connection.HTTPConnection,
                 get: Callable[[], urllib3.response.HTTPResponse]
                 ) -> urllib3.response.HTTPResponse:
    """``get()`` the response of ``conn``, its socket cut when ``_head.seconds`` pass."""
    seconds = getattr(_head, "seconds", None)
    sock = conn.sock
    if seconds is None or sock is None:
        return get()
    timer = threading.Timer(seconds, _cut, (sock,))
    timer.daemon = True
    timer.start()
    try:
        return get()
    finally:
        timer.cancel()


def _head_timed_pools() -> dict[str, type[urllib3.HTTPConnectionPool]]:
    """Connection pools whose connections wait for a response head at most
    ``_head.seconds``."""
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class Conn(HTTPConnection):
        def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
            return _head_within(self, super().getresponse)

    class SConn(HTTPSConnection):
        def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
            return _head_within(self, super().getresponse)

    class Pool(urllib3.HTTPConnectionPool):
        ConnectionCls = Conn

    class SPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = SConn

    return {"http": Pool, "https": SPool}

__all__ = ["MANIFEST_MEDIA_TYPES", "BlobReader", "Client"]

#: What a manifest request accepts, preferred first.
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
#: Bounds for what is read only to make a message or a token.
ERROR_BODY_MAX = 64 << 10
TOKEN_BODY_MAX = 1 << 20
#: A bounded body (manifest, config, token, error) must arrive within this many
#: timeouts in all.
BODY_TIME_FACTOR = 10
#: Resumes of one blob after a dropped connection.
MAX_RESUMES = 5
#: The slowest a blob's body may arrive: at least this many bytes a second over every
#: window of LOW_SPEED_TIMEOUTS timeouts (60 s by default), as curl's ``--speed-limit``.
#: A byte just within each read timeout never trips it, and a layer of a gigabyte
#: would take decades.
LOW_SPEED_BYTES = 1024
LOW_SPEED_TIMEOUTS = 2
#: The first pause before a resume when the registry cannot be reached (then doubled).
RESUME_PAUSE = 0.5
#: Answers that mean "busy now, ask again" (rate limited, a proxy or the registry
#: overloaded or restarting): a request is sent again up to MAX_RETRIES times, after the
#: server's ``Retry-After`` (at most MAX_RETRY_PAUSE seconds: a longer wait is the
#: error, naming it) or else RETRY_PAUSE seconds, doubled each time.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRIES = 4
RETRY_PAUSE = 0.5
MAX_RETRY_PAUSE = 10.0
#: Failures that mean "not reachable now" (a resume tries again after a pause).
_UNREACHABLE: tuple[type[Exception], ...] = ()
_CHUNK = 1 << 20
_USER_AGENT = f"chrootarchive/{__version__}"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_HAS_READ1 = False
# ASCII digits, at most 20 (2**64 has 20): ``\d`` alone takes other scripts' digits,
# and int() refuses more than 4,300 digits with a ValueError.
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20}|\*)")
_NUMBER = re.compile(r"[0-9]{1,20}")


def _header_number(value: str | None) -> int | None:
    """A header's decimal number (Content-Length); None when it is not one: the
    registry chooses the text, and ``str.isdigit`` takes ``\xb9`` that int() refuses."""
    if value is None or _NUMBER.fullmatch(value.strip()) is None:
        return None
    return int(value)


def _is_digest(text: str) -> bool:
    return _DIGEST.fullmatch(text) is not None


def _digest_of(algorithm: str, data: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Give up a response whose body is not read to its end: its connection is closed,
    never reused."""
    response.close()
    response.release_conn()


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
    """The server's ``Retry-After`` in seconds (a number or an HTTP date, read by
    urllib3); None without one, or with one that cannot be read."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds: float = urllib3.util.Retry().parse_retry_after(value)
    except (_ux.InvalidHeader, ValueError, OverflowError):
        # Not a number or a date urllib3 reads: 5,000 digits (int()'s limit), a date
        # in the year 99999999999 (OverflowError).
        return None
    return seconds


def _retry_pause(response: urllib3.BaseHTTPResponse, retries: int) -> float | None:
    """How long to wait before asking again after a busy answer; None: do not (the
    server asks for longer than MAX_RETRY_PAUSE)."""
    asked = _retry_after(response)
    if asked is None:
        return min(RETRY_PAUSE * (1 << retries), MAX_RETRY_PAUSE)
    return asked if asked <= MAX_RETRY_PAUSE else None


def _why_not_again(response: urllib3.BaseHTTPResponse) -> str:
    """For a busy answer that ends the request: why it was not asked again."""
    if response.status not in RETRY_STATUSES:
        return ""
    pause = _retry_after(response)
    if pause is None or pause <= MAX_RETRY_PAUSE:
        return f", gave up after {MAX_RETRIES} retries"
    return f", retry after {pause:.0f} s"


def _netloc(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]


def _cause(err: BaseException) -> str:
    """A short, credential-free reason for a network failure."""
    seen: set[int] = set()
    stack: list[BaseException] = [err]
    reasons: list[str] = []
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verification failed: {current.verify_message}"
        if isinstance(current, ssl.SSLError):
            reasons.append(f"TLS error: {current.reason or current.strerror or 'handshake failed'}")
        elif isinstance(current, ConnectionRefusedError):
            reasons.append("connection refused")
        elif isinstance(current, ConnectionResetError):
            reasons.append("connection reset")
        elif isinstance(current, socket.gaierror):
            reasons.append("host name not resolved")
        elif isinstance(current, OSError) and current.strerror:
            reasons.append(current.strerror.lower())
        for arg in current.args:
            if isinstance(arg, BaseException):
                stack.append(arg)
        for linked in (current.__cause__, current.__context__,
                       getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                stack.append(linked)
    return reasons[0] if reasons else type(err).__name__


class _Secret(str):
    """A header value that never shows in a ``repr`` (of the client, in a traceback)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<hidden>"


class Client:
    """The registry of one reference, for one repository: manifests and blobs.

    Thread-safe for concurrent requests (one layer downloading while another is read).
    """

    def __init__(self, ref: Reference, *, insecure: bool = False, authfile: str | None = None,
                 certs_dirs: Sequence[str] | None = None, timeout: float = 30.0,
                 max_redirects: int = 5, time_limit: float | None = None) -> None:
        """``timeout``: of each request (to connect, for the next bytes);
        ``time_limit``: seconds for all of them, their pauses and retries included
        (``Limits.timeout``: the whole operation's)."""
        _load_urllib3()
        self.ref = ref
        self.insecure = insecure
        self._certs_dirs = certs_dirs
        self.timeout = timeout
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._time_limit = time_limit
        self._deadline = None if time_limit is None else time.monotonic() + time_limit
        self.max_redirects = max_redirects
        self._scheme = "https"
        self._plain_tried = False
        self._authfile = authfile
        self._credentials: Credentials | None = None
        self._credentials_read = False
        self._authorization: str | None = None
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str, int], urllib3.PoolManager] = {}
        if insecure:
            # --insecure was asked for this host: urllib3's warning on each request would
            # only repeat it (other hosts keep theirs).
            host = urlsplit(f"//{ref.endpoint}").hostname or ""
            warnings.filterwarnings(
                "ignore", message=f"Unverified HTTPS request is being made to host "
                f"'{re.escape(host)}'", category=_ux.InsecureRequestWarning)

    # -- naming -------------------------------------------------------------------------

    def _entry(self, reference: str | None = None) -> str:
        reference = reference or self.ref.object
        sep = "@" if _is_digest(reference) else ":"
        return f"{self.ref.registry}/{self.ref.repository}{sep}{reference}"

    def _error(self, problem: str, reference: str | None = None) -> RegistryError:
        return RegistryError(printable(problem, 0), self._entry(reference))

    def _out_of_time(self, what: str, reference: str | None) -> LimitExceededError:
        return LimitExceededError(f"limit timeout ({self._time_limit or 0:g} seconds) "
                                  f"exceeded{f' ({what})' if what else ''}",
                                  self._entry(reference))

    def _left(self, what: str, reference: str | None) -> float | None:
        """Seconds until ``time_limit`` runs out (None: no limit); the limit's error
        once it has: retries, pauses and slow bodies stop there, not after minutes."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._out_of_time(what, reference)
        return left

    def _expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _pause(self, seconds: float, what: str, reference: str | None) -> None:
        """Sleep, unless ``time_limit`` runs out first: then its error at once."""
        left = self._left(what, reference)
        if left is not None and seconds >= left:
            raise self._out_of_time(what, reference)
        time.sleep(seconds)

    @property
    def base_url(self) -> str:
        """``SCHEME://ENDPOINT/v2/REPOSITORY`` (http only after ``insecure`` fell back)."""
        return f"{self._scheme}://{self.ref.endpoint}/v2/{self.ref.repository}"

    def _is_registry(self, url: str) -> bool:
        return _origin(url) == _origin(f"{self._scheme}://{self.ref.endpoint}/")

    # -- connections --------------------------------------------------------------------

    def _pool(self, url: str) -> urllib3.PoolManager:
        key = _origin(url)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                netloc = _netloc(url)
                registry = self._is_registry(url)
                context = None
                if key[0] == "https":
                    context = ssl_context(netloc, certs_dirs=self._certs_dirs,
                                          insecure=self.insecure and registry,
                                          entry=self._entry())
                pool = urllib3.PoolManager(num_pools=2, maxsize=4, ssl_context=context,
                                           retries=False, timeout=self._timeout)
                pool.pool_classes_by_scheme = _POOL_CLASSES
                self._pools[key] = pool
            return pool

    def _send(self, url: str, headers: dict[str, str], what: str,
              reference: str | None) -> urllib3.BaseHTTPResponse:
        """One request, no redirect followed, body not read."""
        left = self._left(what, reference)
        timeout = (self._timeout if left is None or left >= self.timeout
                   else urllib3.Timeout(connect=left, read=left))
        head = self.timeout * BODY_TIME_FACTOR if left is None else min(
            self.timeout * BODY_TIME_FACTOR, left)
        pool = self._pool(url)
        _head.seconds = head
        started = time.monotonic()
        cause: Exception | None = None
        try:
            response = pool.request(
                "GET", url, headers={"User-Agent": _USER_AGENT, **headers}, redirect=False,
                retries=False, preload_content=False, decode_content=False,
                timeout=timeout)
        except _ux.HTTPError as err:
            if time.monotonic() - started < head:
                raise self._send_error(err, url, what, reference) from err
            cause = err
        finally:
            _head.seconds = None
        if cause is None:
            if time.monotonic() - started < head:
                return response
            _discard(response)  # its head was cut short: what it says is not all
        if self._expired():
            raise self._out_of_time(what, reference) from cause
        raise self._error(f"{_netloc(url)} too slow ({what}): no complete response in "
                          f"{head:g} s", reference) from cause

    def _send_error(self, err: Exception, url: str, what: str,
                    reference: str | None) -> ChrootArchiveError:
        """The error of a request that failed before its response came."""
        if isinstance(err, _ux.ConnectTimeoutError | _ux.ReadTimeoutError) and self._expired():
            return self._out_of_time(what, reference)
        # NewConnectionError first: urllib3 2 makes it a ConnectTimeoutError.
        if isinstance(err, _ux.ConnectTimeoutError) and not isinstance(
                err, _ux.NewConnectionError):
            return self._error(f"cannot connect to {_netloc(url)} ({what}): no answer in "
                               f"{self.timeout:g} s", reference)
        if isinstance(err, _ux.ReadTimeoutError):
            return self._error(f"{_netloc(url)} stalled ({what}): no response in "
                               f"{self.timeout:g} s", reference)
        # SSLError, NewConnectionError, ProtocolError...
        return self._error(f"cannot connect to {_netloc(url)} ({what}): {_cause(err)}",
                           reference)

    def _first_contact(self, url: str, headers: dict[str, str], what: str,
                       reference: str | None) -> urllib3.BaseHTTPResponse:
        """``_send``, falling back to plain HTTP once for an ``insecure`` registry whose
        HTTPS cannot be reached (as Docker's insecure-registries)."""
        try:
            return self._send(url, headers, what, reference)
        except RegistryError:
            if not (self.insecure and self._scheme == "https" and not self._plain_tried
                    and self._is_registry(url)):
                raise
            self._plain_tried = True
            plain = "http://" + url.split("://", 1)[1]
            try:
                response = self._send(plain, headers, what, reference)
            except RegistryError:
                pass
            else:
                self._scheme = "http"
                return response
            raise

    def _drain(self, response: urllib3.BaseHTTPResponse, limit: int = ERROR_BODY_MAX) -> bytes:
        try:
            return self._read_bounded(response, limit, "", None)
        except RegistryError:
            return b""

    # -- authentication -----------------------------------------------------------------

    def _get_credentials(self) -> Credentials | None:
        if not self._credentials_read:
            self._credentials = find_credentials(
                self.ref.registry, self.ref.repository, authfile=self._authfile,
                entry=self._entry())
            self._credentials_read = True
        return self._credentials

    def _authenticate(self, header: str, what: str, reference: str | None) -> None:
        """Answer a 401's challenge: set the ``Authorization`` for the registry."""
        challenges = dict(parse_challenges(header))
        if "bearer" in challenges:
            self._authorization = _Secret(
                "Bearer " + self._token(challenges["bearer"], what, reference))
        elif "basic" in challenges:
            credentials = self._get_credentials()
            if credentials is None:
                raise self._error(f"authentication required ({what}): no credentials for "
                                  f"{self.ref.registry} in the auth files", reference)
            self._authorization = _Secret(credentials.basic())
        else:
            raise self._error(f"authentication required ({what}) with an unsupported "
                              "challenge", reference)

    def _token(self, params: dict[str, str], what: str, reference: str | None) -> str:
        realm = params.get("realm", "")
        try:
            parts = urlsplit(realm)
            usable = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        except ValueError:  # "http://[::1": an IPv6 address that does not parse
            usable = False
        if not usable:
            raise self._error("the bearer challenge has no usable realm", reference)
        scheme = parts.scheme.lower()
        credentials = self._get_credentials()
        if scheme != "https" and credentials is not None and not (
                self.insecure and self._is_registry(realm)):
            # Basic credentials over plain HTTP to whoever the registry named: no.
            raise self._error(f"the token realm {_netloc(realm)} is not HTTPS; credentials "
                              "are not sent there", reference)
        query = {"scope": f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = realm + ("&" if parts.query else "?") + urlencode(query)
        headers = {"Accept": "application/json"}
        if credentials is not None:
            headers["Authorization"] = credentials.basic()
        retries = 0
        while True:
            response = self._send(url, headers, f"token from {_netloc(realm)}", reference)
            if not self._waited_if_busy(response, retries, "token", reference):
                break
            retries += 1
        try:
            if response.status != 200:
                raise self._error(f"token request to {_netloc(realm)} refused: HTTP "
                                  f"{response.status}{self._error_code(response)}"
                                  f"{_why_not_again(response)}", reference)
            body = self._read_bounded(response, TOKEN_BODY_MAX, "token", reference)
        finally:
            response.release_conn()
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise self._error(f"the token from {_netloc(realm)} is not JSON", reference) from err
        token = document.get("token") or document.get("access_token") if isinstance(
            document, dict) else None
        if not isinstance(token, str) or not token or not token.isascii() or any(
                c in token for c in "\r\n"):
            raise self._error(f"{_netloc(realm)} gave no token", reference)
        return token

    # -- requests -----------------------------------------------------------------------

    def _open(self, path: str, headers: dict[str, str], what: str,
              reference: str | None) -> urllib3.BaseHTTPResponse:
        """GET ``BASE_URL + path``: authenticate on a 401, follow redirects by hand."""
        url = self.base_url + path
        seen = {url}
        redirects = retries = 0
        authenticated = False
        while True:
            to_registry = self._is_registry(url)
            sent = dict(headers)
            if to_registry and self._authorization is not None:
                sent["Authorization"] = self._authorization
            if to_registry and redirects == 0:
                response = self._first_contact(url, sent, what, reference)
                url = self.base_url + path  # the scheme may have changed
                seen.add(url)
            else:
                response = self._send(url, sent, what, reference)
            if response.status == 401 and to_registry and not authenticated:
                header = response.headers.get("WWW-Authenticate", "")
                self._drain(response)
                response.release_conn()
                authenticated = True
                self._authenticate(header, what, reference)
                continue
            if self._waited_if_busy(response, retries, what, reference):
                retries += 1
                continue
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location")
            self._drain(response)
            response.release_conn()
            if not location:
                raise self._error(f"HTTP {response.status} without a Location ({what})",
                                  reference)
            redirects += 1
            if redirects > self.max_redirects:
                raise self._error(f"more than {self.max_redirects} redirects ({what})",
                                  reference)
            try:
                target = urljoin(url, location.strip())
            except ValueError:  # "http://[::1": an IPv6 address that does not parse
                raise self._error(f"redirect to an unusable location ({what})",
                                  reference) from None
            if urlsplit(target).scheme.lower() not in ("http", "https"):
                raise self._error(f"redirect to an unsupported scheme ({what})", reference)
            if urlsplit(target).scheme.lower() == "http" and not self.insecure:
                raise self._error(f"redirect from HTTPS to plain HTTP refused ({what})",
                                  reference)
            if target in seen:
                raise self._error(f"redirect loop ({what})", reference)
            seen.add(target)
            url = target

    def _waited_if_busy(self, response: urllib3.BaseHTTPResponse, retries: int,
                        what: str, reference: str | None) -> bool:
        """For a busy answer that may be asked again (RETRY_STATUSES): discard it, wait
        the pause and say so; else False (the answer is the caller's to read)."""
        if response.status not in RETRY_STATUSES or retries >= MAX_RETRIES:
            return False
        pause = _retry_pause(response, retries)
        if pause is None:
            return False
        self._drain(response)
        response.release_conn()
        self._pause(pause, what, reference)
        return True

    def _error_code(self, response: urllib3.BaseHTTPResponse) -> str:
        """`` (CODE)`` from the registry's JSON error body, if it has one."""
        body = self._drain(response)
        try:
            errors = json.loads(body).get("errors")
            code = errors[0].get("code")
        except (ValueError, UnicodeDecodeError, AttributeError, IndexError, KeyError,
                TypeError):
            return ""
        if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
            return f" ({code})"
        return ""

    def _check_status(self, response: urllib3.BaseHTTPResponse, what: str,
                      reference: str | None, ok: tuple[int, ...] = (200,)) -> None:
        if response.status in ok:
            return
        code = self._error_code(response)
        response.release_conn()
        if response.status == 401:
            problem = "access denied"
        elif response.status == 404:
            problem = "not found"
        else:
            problem = "failed"
        raise self._error(f"{what} {problem}: HTTP {response.status}{code}"
                          f"{_why_not_again(response)}", reference)

    def _read_bounded(self, response: urllib3.BaseHTTPResponse, limit: int, what: str,
                      reference: str | None) -> bytes:
        """The whole body, at most ``limit`` bytes: the declared length is checked first,
        then what arrives is counted (a lying or missing Content-Length)."""
        declared = _header_number(response.headers.get("Content-Length"))
        if declared is not None and declared > limit:
            _discard(response)
            raise self._error(f"{what} too large: {declared} bytes declared, the limit "
                              f"is {limit}", reference)
        # One buffer, not a list of what each read gave: a chunked body of 1-byte chunks
        # makes each read a byte, and 4 MiB of 1-byte objects took 390 MB.
        body = bytearray()
        total = 0
        # A server that trickles a byte now and then never trips the read timeout.
        deadline = time.monotonic() + self.timeout * BODY_TIME_FACTOR
        if self._deadline is not None:
            deadline = min(deadline, self._deadline)
        try:
            while True:
                want = min(_CHUNK, limit + 1 - total)
                data = response.read1(want) if _HAS_READ1 else response.read(want)
                if not data:
                    break
                if time.monotonic() > deadline:
                    _discard(response)
                    if self._expired():
                        raise self._out_of_time(what, reference)
                    raise self._error(f"{what} too slow: not complete in "
                                      f"{self.timeout * BODY_TIME_FACTOR:g} s", reference)
                body += data
                total += len(data)
                if total > limit:
                    _discard(response)
                    raise self._error(f"{what} too large: over the limit of {limit} bytes",
                                      reference)
        except _ux.ReadTimeoutError as err:
            _discard(response)
            if self._expired():
                raise self._out_of_time(what, reference) from err
            raise self._error(f"{what} stalled: no data for {self.timeout:g} s",
                              reference) from err
        except (_ux.HTTPError, OSError) as err:
            _discard(response)
            raise self._error(f"{what} cut short: {_cause(err)}", reference) from err
        return bytes(body)

    # -- the API ------------------------------------------------------------------------

    def _check_reference(self, reference: str) -> None:
        if not (_is_digest(reference) or _TAG.fullmatch(reference)):
            raise self._error("not a tag or a sha256/sha512 digest", reference)

    def get_manifest(self, reference: str, *, max_size: int = 4 << 20
                     ) -> tuple[str, bytes, str]:
        """The manifest or index ``reference`` (a tag or a digest):
        ``(media type, body, digest)``; the digest is checked when it was asked for."""
        self._check_reference(reference)
        what = "manifest"
        response = self._open(f"/manifests/{reference}",
                              {"Accept": ", ".join(MANIFEST_MEDIA_TYPES),
                               "Accept-Encoding": "identity"}, what, reference)
        try:
            self._check_status(response, what, reference)
            body = self._read_bounded(response, max_size, what, reference)
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = response.headers.get("Docker-Content-Digest", "").strip()
        finally:
            response.release_conn()
        if _is_digest(reference):
            digest = _digest_of(reference.split(":")[0], body)
            if digest != reference:
                raise self._error(f"digest mismatch: the manifest's digest is {digest}",
                                  reference)
        else:
            digest = _digest_of("sha256", body)
            if header_digest.startswith("sha256:") and header_digest != digest:
                raise self._error(f"digest mismatch: the registry says {header_digest}, "
                                  f"the manifest's digest is {digest}", reference)
        if media_type not in MANIFEST_MEDIA_TYPES:
            # Some registries send text/plain or nothing: the document says what it is.
            try:
                declared = json.loads(body).get("mediaType")
            except (ValueError, UnicodeDecodeError, AttributeError):
                declared = None
            media_type = declared if isinstance(declared, str) else media_type
        return media_type, body, digest

    def get_blob(self, digest: str, *, max_size: int) -> bytes:
        """A small blob (an image config) whole: bounded, and its digest checked."""
        if not _is_digest(digest):
            raise self._error("not a sha256/sha512 digest", digest)
        what = "blob"
        response = self._open(f"/blobs/{digest}", {"Accept-Encoding": "identity"}, what,
                              digest)
        try:
            self._check_status(response, what, digest)
            body = self._read_bounded(response, max_size, what, digest)
        finally:
            response.release_conn()
        actual = _digest_of(digest.split(":")[0], body)
        if actual != digest:
            raise self._error(f"digest mismatch: the blob's digest is {actual}", digest)
        return body

    def open_blob(self, digest: str, size: int | None) -> BlobReader:
        """A blob as a stream (a layer): read it in pieces; the caller checks its digest."""
        if not _is_digest(digest):
            raise self._error("not a sha256/sha512 digest", digest)
        return BlobReader(self, digest, size)

    def _blob_response(self, digest: str, offset: int) -> urllib3.BaseHTTPResponse:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        return self._open(f"/blobs/{digest}", headers, "blob", digest)

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobReader:
    """One blob's body as a stream, resumed with a range request when the connection
    drops (at most :data:`MAX_RESUMES` times; a read timeout once).

    Attributes:
        size: the size the caller declared (None: unknown).
        bytes_read: the bytes returned so far.
    """

    def __init__(self, client: Client, digest: str, size: int | None) -> None:
        self._client = client
        self.digest = digest
        self.size = size
        self.bytes_read = 0
        self.resumes = 0
        self._timeouts = 0
        self._closed = False
        self._interrupted = False
        self._response: urllib3.BaseHTTPResponse | None = self._start(0)
        self._window = client.timeout * LOW_SPEED_TIMEOUTS
        self._window_ends = time.monotonic() + self._window
        self._window_bytes = 0

    def _error(self, problem: str) -> RegistryError:
        return self._client._error(problem, self.digest)

    def _start(self, offset: int) -> urllib3.BaseHTTPResponse:
        client = self._client
        response = client._blob_response(self.digest, offset)
        if offset and response.status == 200:
            # The server ignored the range: only usable from the start.
            _discard(response)
            raise self._error(f"the registry cannot resume (no range support) after "
                              f"{offset} bytes")
        client._check_status(response, "blob", self.digest, (206,) if offset else (200,))
        declared = _header_number(response.headers.get("Content-Length"))
        if offset:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                _discard(response)
                raise self._error(f"the registry resumed at the wrong place (asked for "
                                  f"byte {offset})")
        if self.size is not None and declared is not None and declared != self.size - offset:
            _discard(response)
            raise self._error(f"size mismatch: the registry sends {declared + offset} "
                              f"bytes, the manifest declares {self.size}")
        return response

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (b"" at the end)."""
        if self._closed:
            raise ValueError("read of a closed BlobReader")
        want = _CHUNK if n is None or n < 0 else n
        if want == 0:
            return b""
        while True:
            self._check_interrupted()
            response = self._response
            if response is None:
                return b""
            if self._client._expired():  # a byte now and then: each read is in time
                _discard(response)
                self._response = None
                raise self._client._out_of_time(
                    f"blob, after {self.bytes_read} bytes", self.digest)
            try:
                # read1: what has arrived (up to n), not a wait for n bytes.
                data = (response.read1(want) if _HAS_READ1 else response.read(want))
                self._check_interrupted()
            except _ux.ReadTimeoutError as err:
                if self._complete():
                    return b""
                self._timeouts += 1
                if self._timeouts > 1:
                    _discard(response)
                    self._response = None
                    raise self._error(f"stalled: no data for {self._client.timeout:g} s "
                                      f"after {self.bytes_read} bytes") from err
                self._resume(err)
                continue
            except (_ux.HTTPError, OSError) as err:
                self._check_interrupted()
                if self._complete():
                    return b""
                self._resume(err)
                continue
            if data:
                self.bytes_read += len(data)
                self._check_speed()
                return data
            if self.size is not None and self.bytes_read < self.size:
                # A close-delimited body cut short looks like an end: resume it.
                self._resume(None)
                continue
            response.release_conn()
            self._response = None
            return b""

    def _complete(self) -> bool:
        """After a failure: whether every declared byte had arrived (only the end of
        the response was lost; nothing to resume, the caller checks the digest)."""
        if self.size is None or self.bytes_read < self.size:
            return False
        if self._response is not None:
            _discard(self._response)
            self._response = None
        return True

    def _resume(self, cause: BaseException | None) -> None:
        """Ask for the rest of the blob; a registry that cannot be reached (restarting)
        is asked again after a pause, within the same :data:`MAX_RESUMES`."""
        if self._response is not None:
            _discard(self._response)
            self._response = None
        while True:
            self._check_interrupted()
            self.resumes += 1
            if self.resumes > MAX_RESUMES:
                reason = _cause(cause) if cause is not None else "the body ended early"
                raise self._error(f"the connection dropped {self.resumes} times; last: "
                                  f"{reason} after {self.bytes_read} bytes")
            try:
                self._response = self._start(self.bytes_read)
                return
            except RegistryError as err:
                if not isinstance(err.__cause__, _UNREACHABLE):
                    raise
                cause = err.__cause__
            self._client._pause(min(RESUME_PAUSE * 2 ** (self.resumes - 1), 4.0), "blob",
                                self.digest)

    def interrupt(self) -> None:
        """From another thread: end the read that waits on the registry now (its socket
        shut down), not at the read timeout, and resume nothing; the reading thread
        gets a :class:`RegistryError` and closes the reader."""
        self._interrupted = True
        connection = getattr(self._response, "connection", None)
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            _cut(sock)

    def _check_speed(self) -> None:
        """The error when the window that just ended brought fewer bytes than
        :data:`LOW_SPEED_BYTES` a second."""
        now = time.monotonic()
        if now < self._window_ends:
            return
        got = self.bytes_read - self._window_bytes
        if got < LOW_SPEED_BYTES * self._window:
            if self._response is not None:
                _discard(self._response)
                self._response = None
            raise self._error(f"too slow: {got} bytes in {self._window:g} s, under "
                              f"{LOW_SPEED_BYTES} bytes a second, after {self.bytes_read} "
                              f"bytes")
        self._window_ends = now + self._window
        self._window_bytes = self.bytes_read

    def _check_interrupted(self) -> None:
        if self._interrupted:
            if self._response is not None:
                _discard(self._response)
                self._response = None
            raise self._error(f"given up after {self.bytes_read} bytes")

    def close(self) -> None:
        """Drop the connection (what is unread is not read)."""
        self._closed = True
        if self._response is not None:
            _discard(self._response)
            self._response = None

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
