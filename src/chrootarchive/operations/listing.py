"""Listing an archive (``tar -t``): read its headers in the caller's process.

Nothing is written, so no jail is needed: the reader only parses (with the same bounds
on PAX records, long names and sparse maps as when unpacking), and decompression runs
here as it always does. The limits of an unpack that bound reading hold here too
(``Limits``: ``max_bytes`` counts the decompressed stream read, as every byte of it is
read to list what follows; the reserve has no destination to keep): 1 MB of bzip2
declaring a 1 TiB file is refused at its header, not decompressed for an hour.
"""

from __future__ import annotations

import os
import posixpath
import stat
import threading
import time
from collections.abc import Iterator

from chrootarchive import _fdio
from chrootarchive._fdio import write_all
from chrootarchive._record import record
from chrootarchive._threads import wait_ended
from chrootarchive.errors import (
    NOT_A_TAR,
    ChrootArchiveError,
    LimitExceededError,
    MalformedArchiveError,
    SourceError,
    from_os_error,
    printable,
)
from chrootarchive.operations import compression
from chrootarchive.operations.source import (
    Source,
    name_archive,
    open_source,
    plain_regular_fd,
)
from chrootarchive.options import Limits
from chrootarchive.runner.launch import InterruptsHeld
from chrootarchive.tarformat import reader as tarreader

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["ListedEntry", "list_entries"]

#: What follows the end of the archive is read so that the writer of a pipe never sees
#: EPIPE; beyond this much of the decompressed stream, the rest is read as it comes, not
#: decompressed (1 MB of bzip2 holds 1 TiB of zeros: two hours, for nothing to list).
_TRAILING_DECOMPRESSED = 16 << 20


class _MoreAfterTheEnd(Exception):
    """More than _TRAILING_DECOMPRESSED follow the end of the archive."""

_TYPE_BITS = {
    tarreader.REGULAR: stat.S_IFREG, tarreader.DIRECTORY: stat.S_IFDIR,
    tarreader.SYMLINK: stat.S_IFLNK, tarreader.HARDLINK: stat.S_IFREG,
    tarreader.CHARDEV: stat.S_IFCHR, tarreader.BLOCKDEV: stat.S_IFBLK,
    tarreader.FIFO: stat.S_IFIFO,
}


@record(frozen=True)  # a dataclass, without importing dataclasses (_record)
class ListedEntry:
    """One archive entry, as ``tar -tv`` shows it.

    ``kind`` is ``file``, ``dir``, ``symlink``, ``hardlink``, ``chardev``,
    ``blockdev`` or ``fifo``; ``linkname`` is a link's target; ``mtime`` in seconds.
    """

    name: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0

    def line(self, verbose: bool = False) -> str:
        """``tar -t`` (the name) or ``tar -tv`` (mode, owner, size, time, name) output,
        with names escaped: an archive controls them."""
        name = printable(self.name, 0, backslash=True)
        if not verbose:
            return name
        mode = stat.filemode(_TYPE_BITS[self.kind] | self.mode)
        if self.kind == tarreader.HARDLINK:
            mode = "h" + mode[1:]
        size = (f"{self.devmajor},{self.devminor}"
                if self.kind in (tarreader.CHARDEV, tarreader.BLOCKDEV) else str(self.size))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(_clamped(self.mtime)))
        text = f"{mode} {self.uid}/{self.gid} {size:>9} {when} {name}"
        if self.kind == tarreader.SYMLINK:
            text += f" -> {printable(self.linkname, 0, backslash=True)}"
        elif self.kind == tarreader.HARDLINK:
            text += f" link to {printable(self.linkname, 0, backslash=True)}"
        return text


def _clamped(seconds: float) -> float:
    return min(max(seconds, -(2**40)), 2**40)  # what localtime can show


def list_entries(source: Source, *, detect_compression: bool = True,
                 limits: Limits | None = None) -> Iterator[ListedEntry]:
    """The entries of a tar archive (compression detected), in order, without
    unpacking anything.

    ``limits`` (default ``Limits()``): those of an unpack but ``reserve``;
    ``max_bytes`` counts the decompressed tar stream (headers and data: a listing reads
    through every entry's data to reach the next header, or skips it by ``lseek`` in a
    plain tar in a regular file).

    Raises:
        LimitExceededError: a limit was crossed (after the entries before).
        MalformedArchiveError: the archive is corrupt (after the entries before).
        SourceError: the archive cannot be read.
    """
    try:
        yield from _entries(source, detect_compression,
                            Limits() if limits is None else limits)
    except MalformedArchiveError as err:
        name_archive(err, source)
        raise
    except ChrootArchiveError:
        raise
    except OSError as err:  # reading the archive (EIO): not the caller's standard output
        named = isinstance(source, (str, os.PathLike)) and os.fspath(source) != "-"
        raise from_os_error(err, os.fspath(source) if named else None,  # type: ignore[arg-type]
                            kind=SourceError, action="cannot read the archive") from err


def _limit(limit: str, value: float, unit: str, entry: str | None,
           more: str = "") -> LimitExceededError:
    """The unpacker's message (``Unpacker._limit``), for the same limit."""
    shown = f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
    return LimitExceededError(f"limit {limit} ({shown} {unit}) exceeded{more}", entry)


def _check(entry: tarreader.TarEntry, limits: Limits, entries: int, read: int) -> None:
    """Refuse ``entry`` before its data is read: ``entries`` counted with it, ``read``
    bytes of the stream read up to its data."""
    if limits.max_entries is not None and entries > limits.max_entries:
        raise _limit("max_entries", limits.max_entries, "entries", entry.name)
    if (limits.max_file_size is not None and entry.kind == tarreader.REGULAR
            and entry.size > limits.max_file_size):
        raise _limit("max_file_size", limits.max_file_size, "bytes", entry.name)
    if limits.max_bytes is not None and read + entry.stored_size > limits.max_bytes:
        raise _limit("max_bytes", limits.max_bytes, "bytes", entry.name,
                     f": listing reads its {entry.stored_size:,} bytes of data after "
                     f"{read:,} bytes of the archive")
    name = entry.name
    if limits.max_path_length is not None and len(name) * 4 > limits.max_path_length:
        # the length and depth of the name as unpacking cleans it (engine.names)
        clean = posixpath.normpath(name.removeprefix("./").lstrip("/") or ".")
        if len(os.fsencode(clean)) > limits.max_path_length:
            raise _limit("max_path_length", limits.max_path_length, "bytes", name)
    if limits.max_path_depth is not None and name.count("/") >= limits.max_path_depth:
        clean = posixpath.normpath(name.removeprefix("./").lstrip("/") or ".")
        if clean.count("/") + 1 > limits.max_path_depth:
            raise _limit("max_path_depth", limits.max_path_depth, "components", name)
    if entry.xattrs and limits.max_xattr_bytes is not None and (
            sum(len(k) + len(v) for k, v in entry.xattrs.items()) > limits.max_xattr_bytes):
        raise _limit("max_xattr_bytes", limits.max_xattr_bytes, "bytes", name)


def _entries(source: Source, detect_compression: bool,
             limits: Limits) -> Iterator[ListedEntry]:
    deadline = None if limits.timeout is None else time.monotonic() + limits.timeout
    # What needs no closer look (_check: a tenth of a listing's time), as the unpacker's
    # safe_name_chars: a name of n characters has at most 4n bytes and n components.
    huge = 1 << 80
    most_entries, most_bytes, most_size = (
        huge if value is None else value
        for value in (limits.max_entries, limits.max_bytes, limits.max_file_size))
    safe_chars = min(huge if limits.max_path_length is None else limits.max_path_length // 4,
                     huge if limits.max_path_depth is None else limits.max_path_depth - 1)

    def check_time(entry: str | None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            assert limits.timeout is not None
            raise _limit("timeout", limits.timeout, "seconds", entry)

    def listed(reader: tarreader.TarReader) -> Iterator[ListedEntry]:
        """The entries, each checked against the limits before its data is read."""
        seen = 0
        for entry in reader:
            seen += 1
            if (seen + reader.extra_headers > most_entries
                    or reader.offset + entry.stored_size > most_bytes
                    or entry.size > most_size or len(entry.name) > safe_chars
                    or entry.xattrs or deadline is not None):  # else: all within
                _check(entry, limits, seen + reader.extra_headers, reader.offset)
                check_time(entry.name)
            yield ListedEntry(
                name=entry.name, kind=entry.kind, mode=entry.mode & 0o7777,
                uid=entry.uid, gid=entry.gid, size=entry.size,
                mtime=entry.mtime_ns / 1e9, linkname=entry.linkname,
                devmajor=entry.devmajor, devminor=entry.devminor)
        if not seen and not reader.offset:
            raise MalformedArchiveError(f"{NOT_A_TAR}: empty input")

    with open_source(source) as raw:
        direct = plain_regular_fd(raw, detect_compression)
        if direct is not None:
            # A plain tar in a regular file: read in place, each entry's data skipped
            # by lseek (as GNU tar's -t does), not read through a pipe. What follows
            # the end is not read.
            yield from listed(tarreader.TarReader(direct))
            return
        _, chunks = compression.decompressed_chunks(raw, compressed=detect_compression,
                                                    max_memory=limits.max_memory)
        failure: list[BaseException] = []
        fed = threading.Event()
        open_fds: list[int] = []

        def feed(write_fd: int) -> None:
            try:
                for chunk in chunks:
                    check_time(None)  # within one entry's data too: the reader ends
                    write_all(write_fd, chunk)  # at the stream's end, then raises it
            except BrokenPipeError:
                pass  # the listing stopped early
            except BaseException as err:  # raised again in the caller's thread
                failure.append(err)
            finally:
                _fdio.close(write_fd)
                fed.set()

        def stop_feeding(wait: bool = True) -> None:
            """Close our end (a feeder still writing gets EPIPE) and wait for it; not
            after an error or an early stop: it may be blocked reading the source
            (a stalled pipe), and ends at its next write."""
            while open_fds:
                os.close(open_fds.pop())
            if wait:
                wait_ended(fed)

        try:
            # Interrupts held: a KeyboardInterrupt between the pipe and its feeder's
            # start left the pipe open.
            with InterruptsHeld():
                read_fd, write_fd = _fdio.pipe(big=True)  # 1 MiB: fewer switches
                open_fds.append(read_fd)
                _fdio.guard(write_fd)  # the listing reads to its end: no fork may hold it
                try:
                    threading.Thread(target=feed, args=(write_fd,), name="chrootarchive-list",
                                     daemon=True).start()
                except BaseException:
                    _fdio.close(write_fd)
                    fed.set()
                    raise
            reader = tarreader.TarReader(read_fd)
            try:
                yield from listed(reader)
                try:
                    reader.drain(_TRAILING_DECOMPRESSED, lambda _: _MoreAfterTheEnd())
                except _MoreAfterTheEnd:
                    stop_feeding()  # the feeder stops at its next chunk
                    _read_to_end(raw)
            except MalformedArchiveError:
                stop_feeding()
                if failure:  # the decompressor's error says more than "truncated"
                    raise failure[0] from None
                raise
            stop_feeding()
            if failure:
                raise failure[0]
        finally:
            stop_feeding(wait=False)


def _read_to_end(raw: BinaryIO) -> None:
    """Read (and drop) the rest of the source as it comes, so that a pipe's writer
    finishes normally; a regular file's rest is not read."""
    try:
        if stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
            return
    except (AttributeError, OSError, ValueError):
        pass  # not a file (BytesIO, a caller's object): read it
    while raw.read(1 << 20):
        pass
