"""Digests: their form is checked before a digest names a file, and data is hashed to match one."""

from __future__ import annotations

import hashlib
import queue
import re
import threading

from chrootarchive._threads import wait_ended
from chrootarchive.errors import ImageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class _Hash(Protocol):
        def update(self, data: bytes, /) -> None: ...

_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_ENCODED_RE = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
_DIGEST_REF_RE = re.compile(r"(?:[^@]+@)?((?:sha256:[a-f0-9]{64})|(?:sha512:[a-f0-9]{128}))")


def short_digest(digest: str | None) -> str:
    """``sha256:0123456789ab``: enough to tell digests apart in a message."""
    if not digest:
        return "?"
    alg, _, hexpart = digest.partition(":")
    return f"{alg}:{hexpart[:12]}"


def check_digest(value: object, where: str) -> str:
    """Return ``value`` if it is a digest we can verify (sha256 or sha512), else raise.

    The check happens before the digest names a file: ``..``, ``/`` and anything but
    lower-case hex digits of the right length are refused.
    """
    if not isinstance(value, str):
        raise ImageError(f"digest is not a string: {clip(value)}", where)
    if not _DIGEST_RE.fullmatch(value):
        raise ImageError(f"invalid digest {clip(value)}", where)
    alg, _, encoded = value.partition(":")
    pattern = _ENCODED_RE.get(alg)
    if pattern is None:
        raise ImageError(f"unsupported digest algorithm {alg!r} (sha256, sha512)", where)
    if not pattern.fullmatch(encoded):
        raise ImageError(f"invalid {alg} digest {clip(value)}", where)
    return value


def clip(value: object, limit: int = 100) -> str:
    """An untrusted value quoted for an error message, never longer than ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def blob_name(digest: str) -> str:
    """The file of a blob in an OCI layout (``digest`` must have been checked)."""
    alg, _, encoded = digest.partition(":")
    return f"blobs/{alg}/{encoded}"


class Hasher:
    """Hashes data with the algorithm of ``digest``, to compare the result with it; in
    ``thread`` (a :class:`HashThread`) if given, else in the caller's thread."""

    def __init__(self, digest: str, thread: HashThread | None = None) -> None:
        self.expected = digest
        self.alg = digest.partition(":")[0]
        self._h = hashlib.new(self.alg)
        self._thread = thread

    def update(self, data: bytes | memoryview) -> None:
        if self._thread is None:
            self._h.update(data)
        else:  # queued: a view's buffer may change before it is hashed
            self._thread.update(self._h, data if isinstance(data, bytes) else bytes(data))

    @property
    def actual(self) -> str:
        if self._thread is not None:
            self._thread.wait()
        return f"{self.alg}:{self._h.hexdigest()}"

    def matches(self) -> bool:
        return self.actual == self.expected


_MAX_QUEUED = 8  # chunks (of at most 1 MiB each) waiting for the hash thread, at most


class HashThread:
    """A thread that hashes what is queued to it, in order: a layer's two digests (the
    blob's and the DiffID, 300 MB of SHA-256 for a root filesystem) leave the thread
    that decompresses it. hashlib lets go of the interpreter's lock while it hashes, so
    the two run on two cores (a one-layer image of a root filesystem: from 1.64x the
    ``untar`` of its blob to 1.40x, docs/performance.md). At most :data:`_MAX_QUEUED`
    chunks wait; the feeding thread then waits for the hashing."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[_Hash, bytes] | threading.Event | None] = (
            queue.Queue(maxsize=_MAX_QUEUED))
        self._failed: BaseException | None = None
        # Held while an item is queued and while closing: nothing is queued after the
        # end (a put blocked on a full queue still ends, as the thread runs until then).
        self._lock = threading.Lock()
        self._closed = False
        self._ended = threading.Event()
        threading.Thread(target=self._run, name="chrootarchive-hash", daemon=True).start()

    def update(self, hasher: _Hash, data: bytes) -> None:
        """Queue ``data`` for ``hasher`` (a ``hashlib`` object); nothing once closed."""
        with self._lock:
            if not self._closed:
                self._queue.put((hasher, data))

    def wait(self) -> None:
        """Return once everything queued so far is hashed (at once, once closed)."""
        done = threading.Event()
        with self._lock:
            if self._closed:
                return
            self._queue.put(done)
        wait_ended(done)  # in steps: an interrupt_main is seen
        if self._failed is not None:
            raise self._failed

    def close(self) -> None:
        """Stop the thread once it has hashed what is queued. Idempotent.

        A feeding thread still running (its source stalled after the job ended) never
        waits on a closed one: it queues nothing more, and its waits return at once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        wait_ended(self._ended)  # not Thread.join (see wait_ended)

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                if isinstance(item, threading.Event):
                    item.set()
                elif self._failed is None:
                    try:
                        item[0].update(item[1])
                    except BaseException as err:  # raised by wait()
                        self._failed = err
        finally:
            self._ended.set()


def digest_ref(ref: str) -> str | None:
    """The digest that ``ref`` pins (``sha256:...`` or ``name@sha256:...``), if any."""
    match = _DIGEST_REF_RE.fullmatch(ref)
    return match.group(1) if match else None
