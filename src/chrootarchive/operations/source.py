"""The archive a call was given: what it may be, opening it, naming it in errors.

A path (``-``: standard input), bytes, or a binary file object. Shared by the
operations that read an archive: :mod:`.untar` (and the layers and images built on it)
and :mod:`.listing`, which runs no worker and so does without the runner's modules
(the command line's start: docs/performance.md, issue 16).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
from collections.abc import Iterator

from chrootarchive import _fdio
from chrootarchive.errors import (
    NOT_A_TAR,
    ChrootArchiveError,
    MalformedArchiveError,
    SourceError,
    from_os_error,
)
from chrootarchive.operations import compression
from chrootarchive.runner.launch import InterruptsHeld

__all__ = ["Source", "check_source", "name_archive", "open_source", "plain_regular_fd"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, Protocol

    class Readable(Protocol):
        """What a source may be besides a path or bytes: any object with ``read``
        (a file, a socket's ``makefile``, a raw stream that returns None when empty)."""

        def read(self, size: int = ..., /) -> bytes | None: ...

    Source = str | os.PathLike[str] | Readable | bytes | bytearray | memoryview
else:  # no typing at run time (the command line's start): io.IOBase for BinaryIO
    Source = str | os.PathLike[str] | io.IOBase | bytes | bytearray | memoryview


def check_source(source: object) -> None:
    """A source of the wrong kind is the caller's ``TypeError``, before anything is
    created: it was an ``AttributeError`` or a ``UnicodeDecodeError`` from deep in the
    pipeline (a ``tarfile.TarFile``, a file opened in text mode), after ``dest`` was
    made."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        return
    kind = f"{type(source).__module__}.{type(source).__qualname__}".removeprefix("builtins.")
    if isinstance(source, io.TextIOBase):
        raise TypeError(f"source must be a binary file, not a text one ({kind}): open it "
                        "with 'rb' (standard input: sys.stdin.buffer, or '-')")
    if not callable(getattr(source, "read", None)):
        if kind.startswith("tarfile."):  # an open TarFile: a tarfile user's first try
            raise TypeError("source must be what tarfile.open() was given (a path, bytes or "
                            f"a binary file object), not a {kind}: the archive is read by "
                            "chrootarchive's own reader")
        raise TypeError("source must be a path, '-', bytes or a binary file object (with "
                        f"read()), not {kind}")


@contextlib.contextmanager
def open_source(source: Source) -> Iterator[BinaryIO]:
    """``source`` as a binary file for the ``with``: a path opened (and closed after;
    ``-`` is standard input), bytes wrapped, a file object as it is."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path == "-":
            yield sys.stdin.buffer
            return
        # Held until the file object owns the descriptor: a KeyboardInterrupt as the
        # open returned left it open.
        f: BinaryIO | None = None
        try:
            with InterruptsHeld():
                try:
                    fd, st = _fdio.open_input(path)
                except OSError as err:
                    raise from_os_error(
                        err, path, kind=SourceError, action="cannot open the archive") from err
                f = open(fd, "rb") if fd >= 0 else None  # noqa: SIM115 - closed below
        except BaseException:
            if f is not None:
                f.close()  # the interrupt held back came once it was open
            raise
        if f is None and stat.S_ISDIR(st.st_mode):
            raise SourceError("cannot open the archive: Is a directory", path, errno.EISDIR)
        if f is None:
            raise SourceError(f"{_fdio.describe(st)}: not opened (a device, named FIFO or "
                              "socket never is); give its data on standard input ('-')", path)
        with f:
            yield f
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
        return
    # Any object with read(): the pipeline asks no more of it (typing has no cast here).
    readable: BinaryIO = source  # type: ignore[assignment]
    yield readable


def name_archive(err: ChrootArchiveError, source: Source) -> None:
    """An archive that is malformed as a whole ("not a tar archive", "corrupt gzip
    data": no entry to name) is named by its path, as a layer of several is.

    ``bytes`` are the archive itself, where ``tarfile.open`` takes them as a path: bytes
    that are no tar archive but name a file say so."""
    if not isinstance(err, MalformedArchiveError) or err.entry is not None:
        return
    if isinstance(source, (str, os.PathLike)) and os.fspath(source) != "-":
        err.entry = os.fspath(source)
    elif isinstance(source, bytes) and err.message.startswith(NOT_A_TAR) and _names_a_file(source):
        err.message += ("; the bytes given are the archive itself, and these name a file: "
                        "give a path as a str (os.fsdecode(path))")


def _names_a_file(data: bytes) -> bool:
    if not data or len(data) > 4096 or b"\0" in data:
        return False
    try:
        return os.path.isfile(data)
    except (OSError, ValueError):
        return False


def plain_regular_fd(raw: BinaryIO, compressed: bool) -> int | None:
    """The fd of a plain tar in a regular file, unread: the worker reads it directly, and
    a listing skips each entry's data by ``lseek``. ``compressed``: the file may be
    compressed (its first bytes are looked at; a compressed one gives None).

    Only for a file the standard library opened (a path, standard input, ``open(...,
    "rb")``): another object's ``fileno`` may be that of what it reads from, not of what
    it gives (``gzip.open``'s is the compressed file's), and a caller's wrapper that
    checks what it reads (a digest, a limit) must be read through."""
    buffered = type(raw) in (io.BufferedReader, io.BufferedRandom)
    inner = getattr(raw, "raw", None) if buffered else raw
    if type(inner) is not io.FileIO:
        return None
    try:
        fd = raw.fileno()
        st = os.fstat(fd)
    except (OSError, ValueError):  # ValueError: closed
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if buffered:
        # A buffered reader may hold bytes already; only trust an unread file.
        try:
            pos = raw.tell()
        except OSError:
            return None
        if pos != os.lseek(fd, 0, os.SEEK_CUR):
            return None
    else:
        pos = os.lseek(fd, 0, os.SEEK_CUR)
    if compressed:
        head = os.pread(fd, 6, pos)
        if compression.detect(head) != "none":
            return None
    return fd
