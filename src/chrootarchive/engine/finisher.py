"""Finishing small files in a helper process: the second core for plain tar.

The unpacker creates every file itself, in archive order and with ``O_EXCL``, so no
replacement semantics change. For a small file it then hands the new descriptor, the
data and the time to a :class:`Finisher`, whose helper writes the data, sets the time
and closes the file while the unpacker goes on parsing and creating. The helper works
only through descriptors it is given (``SCM_RIGHTS``), never by path: nothing a racer
does inside the destination can redirect its writes.

A process and not a thread: a thread would need the interpreter's lock between its
system calls and would wait for it, as the unpacker's thread holds it while it parses.
The helper is forked from the worker once the worker is jailed and locked down, so it
has the same jail, seccomp filter and limits; it then gives up every capability (it
writes to descriptors it is given and sets the times of files its own user created),
and it dies with the worker (``PR_SET_PDEATHSIG``). It touches no file but those it is
given: it only ever runs for files that need no owner, xattr or special mode set.

A file of a tar the worker reads from a regular file travels as an extent, whatever
its size: the helper copies it from the archive (a read-only descriptor it keeps from
the fork) into the new file, so the worker neither copies its data into a batch nor
sends it (it skips it, seeking over larger ones), and a batch holds :data:`MAX_FILES`
files however large they are. While the helper is as far behind as it may be
(:meth:`Finisher.has_extent_room`), the worker copies the next such file itself: in a
run of large files its core would otherwise wait for the helper's copies.

A file may also travel by name (:meth:`Finisher.add_new`): the helper then creates it
itself, with ``O_CREAT | O_EXCL | O_NOFOLLOW`` as the worker would, in the same jail
(its root and working directory are the worker's), so the worker's core only parses
and decides. What the helper cannot create (something is in the way, or the
directory is not its user's) it leaves to the worker: the reply lists those files,
and :meth:`Finisher.take_returned` gives them back in order. Names in flight are in
:attr:`Finisher.pending`; the unpacker waits for them (:meth:`Finisher.settle`)
before it touches such a name, or a name below it, in any other way.

Batches of at most :data:`MAX_FDS` files travel as one message; at most
:data:`MAX_IN_FLIGHT` batches are unacknowledged, which bounds the descriptors in
flight (the kernel counts them against ``RLIMIT_NOFILE``). A batch the kernel refuses
is finished in the worker itself. The first error, with its entry name, is in
:attr:`Finisher.error` as soon as its reply is read, and returned by
:meth:`Finisher.finish`.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; `signal` imports enum
import _socket
import os
import resource
import select
import struct

from chrootarchive import _linux, _ring
from chrootarchive.engine import fsops

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Finisher"]

MAX_FDS = 32  # descriptors per batch
MAX_FILES = 64  # files per batch
MAX_IN_FLIGHT = 4  # batches sent and not yet acknowledged
_MAX_MESSAGE = 160 << 10  # data of a batch at most (a batch is one message)
_BATCH_EXTENTS = 8 << 20  # bytes of extents in a batch, at most (then it is sent)
MAX_EXTENT = 1 << 62  # bytes of one extent a batch may hold (the helper refuses more)
MAX_BYTES_IN_FLIGHT = 32 << 20  # data and extents sent and not acknowledged, at most
_COPY_CHUNK = 1 << 20  # the helper's buffer for extents
_SNDBUF = 1 << 20  # asked for the worker's socket: MAX_IN_FLIGHT batches fit
# A batch: the number of files n, their n sizes, the n lengths of their names (0: the
# file's descriptor is passed with the batch), then for each file its atime, its
# mtime, the archive offset of its extent (-1: its data is in the batch) and the mode
# to create it with (SYMLINK: a symlink, whose target is its data); then the names;
# then the data of the files that have it.
_COUNT = struct.Struct("<H")
# The reply to a batch: b"k" or b"E", the error's errno and the index of its file,
# then the indexes of the files left to the worker (as H each).
_REPLY = struct.Struct("<cIH")
_OK = b"k"
_ERR = b"E"
_RETURNED = {17, 13, 1}  # EEXIST, EACCES, EPERM: the worker creates those files
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_OPS = fsops.FileOps()  # the helper is in the worker's jail
SYMLINK = -1  # the mode of a symlink sent by name (add_symlink)
_MIN_NOFILE = 256  # descriptors: a batch held here, those in flight, the unpacker's
_EMSGSIZE = 90
_ENODATA = 61  # an extent beyond the end of the archive (a truncated archive)
_NO_SENDFILE = {22, 38, 95}  # EINVAL, ENOSYS, EOPNOTSUPP: copied through a buffer


_LAYOUTS: dict[int, struct.Struct] = {}


def _layout(count: int) -> struct.Struct:
    layout = _LAYOUTS.get(count)
    if layout is None:
        layout = _LAYOUTS[count] = struct.Struct(f"<{count}Q{count}I{4 * count}q")
    return layout


class _Batch:
    """The batch a :class:`Finisher` is making, and :meth:`add_new`, in Python: the
    reference of the compiled ``_finish.Batch`` (tests/test_finish_batch.py runs both on
    the same calls and compares every member), and the fallback where it was not
    built. :class:`Finisher` sets the members and sends the batch."""

    _names: list[str]  # the entry name of each file (for errors)
    # What the worker needs to create a file itself that the helper left to it:
    # (path, token, data start, size, extent offset) of each file sent by name.
    _own: list[tuple[str, object, int, int, int] | None]
    _sizes: list[int]
    _name_sizes: list[int]
    _numbers: list[int]  # atime, mtime, extent offset, mode of each file
    _paths: bytearray  # the names of the files created by name
    _data: bytearray
    #: Paths of the files sent by name and not yet created (or given back).
    pending: set[str]
    _extents: int  # bytes of extents in the batch being made
    _first_extent: int  # stream offset of the batch's first extent, or -1
    in_flight_bytes: int  # file data the helper has not confirmed written
    extents: int  # files given as extents
    taken: int  # files given to add(), add_extent() and add_new()
    by_name: int  # of which given by name
    _max_data: int  # bytes of data and names in a batch, at most
    _batch_extents: int  # bytes of extents in a batch, at most

    def _send(self) -> None:
        raise NotImplementedError

    def _can_send(self, sends: int, extra: int) -> bool:
        raise NotImplementedError

    def add_new(self, path: str, encoded: bytes, mode: int, data: memoryview | bytes,
                offset: int, size: int, atime_ns: int, mtime_ns: int, entry: str,
                token: object, /) -> bool:
        """Create the new file ``path`` (``encoded``: ``os.fsencode(path)``, which the
        caller has already made), which :attr:`pending` must not hold, with ``mode`` in
        the helper, write ``data`` (or, with ``offset`` >= 0, ``size`` bytes of the
        archive from there), set its times and close it; or give it back (with
        ``token``) through :meth:`Finisher.take_returned`.

        With an extent, only while the helper is not too far behind (what
        :meth:`Finisher.has_extent_room` asks for a descriptor, asked here for a name:
        one call, as it is made for most files); False, nothing done, when it is. With
        data, the caller has asked :meth:`Finisher.has_room`; True. An extent of more
        than :data:`MAX_EXTENT` bytes is not taken either (False): the worker copies
        it, and finds the archive short (a header may claim up to 2**63 bytes)."""
        if offset >= 0 and not 0 <= size <= MAX_EXTENT:
            return False
        if offset < 0:
            if self._names and (len(self._names) >= MAX_FILES or len(self._data) + len(
                    self._paths) + len(data) + len(encoded) > self._max_data):
                self._send()
            start = len(self._data)
            size = memoryview(data).nbytes
            self._data += data
        else:
            full = (len(self._names) >= MAX_FILES
                    or len(self._data) + len(self._paths) + len(encoded) > self._max_data)
            after = (0 if full else self._extents) + size >= self._batch_extents
            if (full or after) and not self._can_send(full + after, size if after else 0):
                return False
            if full and self._names:
                self._send()
            start = len(self._data)
            if self._first_extent < 0:
                self._first_extent = offset
            self._extents += size
            self.in_flight_bytes += size
            self.extents += 1
        self._paths += encoded
        self._sizes.append(size)
        self._name_sizes.append(len(encoded))
        self._numbers += (atime_ns, mtime_ns, offset, mode)
        self._names.append(entry)
        self._own.append((path, token, start, size, offset))
        self.pending.add(path)
        self.taken += 1
        self.by_name += 1
        if self._extents >= self._batch_extents:
            self._send()
        return True


if TYPE_CHECKING:
    _BatchBase = _Batch
else:
    try:
        from chrootarchive.engine._finish import Batch as _BatchBase
    except ImportError:  # built without a C compiler: the batch is made in Python
        _BatchBase = _Batch


class Finisher(_BatchBase):
    """The worker's side: batches files for the helper and collects its replies."""

    def __init__(self, sock: _socket.socket, pid: int, source: int = -1, ring: int = 0
                 ) -> None:
        self._sock = sock
        # Asked before each non-blocking read: a read that finds nothing raises, which
        # costs three times the poll, and the worker asks once a file while the
        # helper is behind.
        self._replies = select.poll()
        self._replies.register(sock, select.POLLIN)
        self._pid = pid
        self._source = source  # the archive (for extents), or -1
        # A ring (chrootarchive._ring) holds what is not yet copied: a quarter of it in
        # flight at most, so that the parent always has room to write ahead.
        self._ring = ring
        self._max_in_flight = min(MAX_BYTES_IN_FLIGHT, ring // 4) if ring else MAX_BYTES_IN_FLIGHT
        self._batch_extents = min(_BATCH_EXTENTS, ring // 8) if ring else _BATCH_EXTENTS
        self._first_extent = -1
        self._sent_extents: list[int] = []  # the same, of each batch in flight
        # One batch is one message, which must fit in the socket's send buffer; and
        # several must, or the worker waits at each send until the helper has read the
        # batch before (files of 8 KiB on average made one batch of 160 KiB fill the
        # default buffer). The kernel caps the size asked for (net.core.wmem_max).
        try:  # noqa: SIM105 - the worker does not import contextlib
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, _SNDBUF)
        except OSError:
            pass
        buffer = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF)
        self._max_data = max(min(_MAX_MESSAGE, buffer // 3 - 4096) - MAX_FILES * 48 - 2, 0)
        self._extents = 0
        self._in_flight: list[int] = []  # bytes of each batch not yet acknowledged
        self.in_flight_bytes = 0
        self._data = bytearray()
        self._paths = bytearray()
        self._fds: list[int] = []
        self._sizes = []
        self._name_sizes = []
        self._numbers = []
        self._names = []
        self._own = []
        # The batches not yet acknowledged: entry names, _own, the data.
        self._sent: list[tuple[list[str], list[tuple[str, object, int, int, int] | None],
                               bytearray]] = []
        self.pending = set()
        #: The files the helper left to the worker, in order (:meth:`take_returned`): a
        #: list and not a property, as the worker asks after each file it sends.
        self.returned: list[tuple[str, object, memoryview | None, int, int]] = []
        self.error: tuple[OSError, str] | None = None  # the first, with its entry name
        self.finished_here = 0  # files of batches the kernel refused, finished here
        self.taken = 0
        self.extents = 0
        self.by_name = 0
        self.given_back = 0  # of which the helper left to the worker
        self._done = False
        self._reaped = False

    @classmethod
    def start(cls, source: int = -1, ring: int = 0) -> Finisher | None:
        """Fork the helper; None when that is not possible (the caller works alone).

        ``source``: the archive, a regular file the helper may copy extents from
        (:meth:`add_extent`), or -1; ``ring``: the size of the ring it is, if it is one
        (extents wrap there). Call only while the worker runs no other thread.
        """
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < _MIN_NOFILE:
            return None  # the batches' descriptors would crowd out the unpacker's
        try:
            ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0)
        except OSError:
            return None
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:  # the helper: never returns
            status = 1
            try:
                ours.close()
                _linux.prctl(_linux.PR_SET_PDEATHSIG, _linux.SIGKILL)
                if os.geteuid() == 0:
                    # Writing to descriptors it is given, creating files in directories
                    # of its own user and setting the times of files its user created
                    # needs no capability (what else it meets it leaves to the worker).
                    _linux.clear_capabilities()
                if os.getppid() == parent:
                    # Everything else is closed: the reply pipe, the root, stdio...
                    for low, high in _ranges_without({theirs.fileno(), source}):
                        os.closerange(low, high)
                    _serve(theirs, source, ring)
                    status = 0
            finally:
                os._exit(status)
        theirs.close()
        return cls(ours, pid, source, ring)

    def add(self, fd: int, data: memoryview | bytes, atime_ns: int, mtime_ns: int,
            entry: str) -> None:
        """Finish ``fd`` (which this takes over): write ``data``, set its times, close.

        ``data`` is copied: the caller's buffer may change once this returns.
        """
        if self._names and (len(self._fds) >= MAX_FDS or len(self._names) >= MAX_FILES
                            or len(self._data) + len(self._paths) + len(data) > self._max_data):
            self._send()
        self._fds.append(fd)
        self._sizes.append(len(data))
        self._name_sizes.append(0)
        self._numbers += (atime_ns, mtime_ns, -1, 0)
        self._names.append(entry)
        self._own.append(None)
        self._data += data
        self.taken += 1

    def add_extent(self, fd: int, offset: int, size: int, atime_ns: int, mtime_ns: int,
                   entry: str) -> None:
        """Finish ``fd`` (which this takes over) with ``size`` bytes of the archive from
        ``offset`` (the file given to :meth:`start`), then its times, and close it."""
        assert size <= MAX_EXTENT  # the helper refuses a batch with more (has_extent_room)
        if self._names and (len(self._fds) >= MAX_FDS or len(self._names) >= MAX_FILES):
            self._send()
        self._fds.append(fd)
        self._sizes.append(size)
        self._name_sizes.append(0)
        self._numbers += (atime_ns, mtime_ns, offset, 0)
        self._names.append(entry)
        self._own.append(None)
        if self._first_extent < 0:
            self._first_extent = offset
        self._extents += size
        self.in_flight_bytes += size
        self.taken += 1
        self.extents += 1
        if self._extents >= self._batch_extents:
            self._send()

    def take_over_if_idle(self, fd: int, offset: int, size: int, atime_ns: int,
                          mtime_ns: int, entry: str) -> bool:
        """:meth:`add_extent` and send it at once, if the helper has nothing left to do
        (after reading its replies); False (``fd`` still the caller's) when it has.

        For a copy the worker began: ``fd``'s offset is where it stopped, and the
        helper, which shares it, writes on from there. Not the rest of a file whose
        header claims more than :data:`MAX_EXTENT` bytes: the worker goes on and meets
        the archive's end (the helper refuses such a batch, losing its other files)."""
        self.poll()
        if self._sent or size > MAX_EXTENT:
            return False
        self.add_extent(fd, offset, size, atime_ns, mtime_ns, entry)
        if self._names:
            self._send()
        return True

    def has_room(self, size: int) -> bool:
        """Whether a file of ``size`` bytes of data (and name) can be added now without
        waiting for the helper; False: the helper is behind, the worker does it itself."""
        if (len(self._names) < MAX_FILES
                and len(self._data) + len(self._paths) + size <= self._max_data):
            return True
        return self._can_send(1, 0)

    def has_extent_room(self, size: int) -> bool:
        """:meth:`has_room` for a file of ``size`` bytes of the archive (an extent), sent
        with its descriptor (:meth:`add_extent`; :meth:`add_new` asks the same for a
        file sent by name). False: the helper is that far behind, and the worker
        copies the file itself rather than wait: a run of large files would otherwise
        leave its core idle while the helper copies."""
        if size > MAX_EXTENT:
            return False  # a header's claim (up to 2**63): the worker meets the short archive
        full = len(self._fds) >= MAX_FDS or len(self._names) >= MAX_FILES
        # Sent after it is added: the batch it is in, once its extents reach the limit.
        after = (0 if full else self._extents) + size >= self._batch_extents
        return not (full or after) or self._can_send(full + after, size if after else 0)

    def _can_send(self, sends: int, extra: int) -> bool:
        """Whether ``sends`` batches, holding ``extra`` more bytes, can leave now without
        :meth:`_send` waiting for the helper's replies (after reading those there)."""
        if not sends:
            return True
        for look in (False, True):
            if look:
                self.poll()
            if len(self._sent) + sends <= MAX_IN_FLIGHT and (
                    (not self._in_flight and sends == 1)
                    or self.in_flight_bytes + len(self._data) + extra <= self._max_in_flight):
                return True
        return False

    def add_symlink(self, path: str, target: bytes, atime_ns: int, mtime_ns: int,
                    entry: str, token: object) -> None:
        """Create the symlink ``path`` (which :attr:`pending` must not hold) to
        ``target`` in the helper and set its times through an ``O_PATH`` descriptor
        (refused unless it is the symlink just made); or give it back."""
        self.add_new(path, os.fsencode(path), SYMLINK, target, -1, 0, atime_ns, mtime_ns,
                     entry, token)

    def settle(self) -> None:
        """Send what is batched and wait until the helper has done all it was sent;
        afterwards :attr:`pending` holds only the files given back."""
        if self._names:
            self._send()
        while self._sent:
            self._receive()

    def take_returned(self) -> list[tuple[str, object, memoryview | None, int, int]]:
        """The files the helper left to the worker, in order: (path, token, data or
        None, extent offset, size); they leave :attr:`pending`."""
        returned = self.returned
        self.returned = []
        for item in returned:
            self.pending.discard(item[0])
        return returned

    def copy_extent(self, fd: int, offset: int, size: int) -> None:
        """Copy ``size`` bytes of the archive from ``offset`` into ``fd`` (a file given
        back, or one the worker copies itself)."""
        _copy_extent(fd, self._source, offset, size, None, self._ring)

    def oldest_extent(self) -> int:
        """The stream offset of the oldest extent not yet copied (batched, in flight or
        given back), or ``_ring.NOTHING_PINNED``: what a ring must still hold."""
        oldest = _ring.NOTHING_PINNED
        for item in self.returned:
            if item[3] >= 0:
                oldest = item[3]
                break
        for first in self._sent_extents:
            if first >= 0:
                oldest = min(oldest, first)
                break
        if self._first_extent >= 0:
            oldest = min(oldest, self._first_extent)
        return oldest

    def finish(self) -> tuple[OSError, str] | None:
        """Send what is left, wait for the helper to finish everything; the first error.

        Files given back are still in :meth:`take_returned`."""
        if self._done:
            return self.error
        try:
            self.settle()
        finally:
            self._done = True
            self._sock.close()
            if not self._reaped:
                os.waitpid(self._pid, 0)
        return self.error

    def abort(self) -> None:
        """Stop the helper (the worker failed); close what was not sent."""
        if self._done:
            return
        self._done = True
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        # Not kill(): the seccomp filter lets the worker signal no other process. With
        # its socket closed, the helper's next reply fails and it ends (at most the
        # batch it is writing is finished).
        self._sock.close()
        if not self._reaped:
            os.waitpid(self._pid, 0)

    def _send(self) -> None:
        while len(self._sent) >= MAX_IN_FLIGHT:
            self._receive()
        size = len(self._data) + self._extents
        while self._in_flight and self.in_flight_bytes + len(self._data) > self._max_in_flight:
            self._receive()
        fds, names, own, data, paths = (self._fds, self._names, self._own, self._data,
                                        self._paths)
        count = len(names)
        head = _COUNT.pack(count) + _layout(count).pack(
            *self._sizes, *self._name_sizes, *self._numbers) + paths
        self._fds, self._names, self._own, self._sizes = [], [], [], []
        self._name_sizes, self._numbers = [], []
        self._data = bytearray()
        self._paths = bytearray()
        self._extents = 0
        first_extent, self._first_extent = self._first_extent, -1
        ancillary = ([(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                       struct.pack(f"{len(fds)}i", *fds))] if fds else [])
        try:
            self._sock.sendmsg([head, data], ancillary)
        except OSError:
            # ETOOMANYREFS (descriptors in flight, counted per user) or a helper that
            # ended: this batch is finished here, in order, before anything else.
            self.in_flight_bytes -= size - len(data)
            failed, returned = _finish_batch(memoryview(head + data), fds, self._source,
                                             None, self._ring)
            self.finished_here += count
            self._give_back(returned, own, data)
            if failed is not None:
                self._record(failed[0], names[failed[1]])
            return
        for fd in fds:
            os.close(fd)
        self.in_flight_bytes += len(data)
        self._in_flight.append(size)
        self._sent.append((names, own, data))
        self._sent_extents.append(first_extent)

    def poll(self) -> int:
        """Read the replies already there, without waiting; the bytes still in flight."""
        while self._sent and self._replies.poll(0):
            try:
                reply = self._sock.recv(_REPLY.size + 2 * MAX_FILES, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except ConnectionError:
                reply = b""
            self._receive(reply)
        return self.in_flight_bytes

    def _receive(self, reply: bytes | None = None) -> None:
        try:
            if reply is None:
                reply = self._sock.recv(_REPLY.size + 2 * MAX_FILES)
        except ConnectionError:
            reply = b""  # the helper is gone (ECONNRESET)
        names, own, data = self._sent.pop(0)
        self.in_flight_bytes -= self._in_flight.pop(0)
        self._sent_extents.pop(0)
        if len(reply) < _REPLY.size:
            for item in own:  # nothing of these files is known
                if item is not None:
                    self.pending.discard(item[0])
            for _names, later, _data in self._sent:
                for item in later:
                    if item is not None:
                        self.pending.discard(item[0])
            self._sent.clear()
            self._in_flight.clear()
            self._sent_extents.clear()
            self._record(OSError(0, self._why_ended(reply)), "")
            return
        tag, number, index = _REPLY.unpack_from(reply)
        count = (len(reply) - _REPLY.size) // 2
        returned = struct.unpack_from(f"<{count}H", reply, _REPLY.size)
        self._give_back(returned, own, data)
        if tag != _OK:
            self._record(OSError(number, os.strerror(number)), names[index])

    def _give_back(self, returned: tuple[int, ...] | list[int],
                   own: list[tuple[str, object, int, int, int] | None],
                   data: bytearray) -> None:
        """Keep the files the helper left to the worker; the others are done."""
        if not returned:  # the usual reply: all done
            self.pending.difference_update([item[0] for item in own if item is not None])
            return
        back = set(returned)
        view = memoryview(data)
        for index, item in enumerate(own):
            if item is None:
                continue
            path, token, start, size, offset = item
            if index in back:
                chunk = view[start : start + size] if offset < 0 else None
                self.returned.append((path, token, chunk, offset, size))
                self.given_back += 1
            else:
                self.pending.discard(path)

    def _why_ended(self, reply: bytes) -> str:
        """Why the helper stopped replying. An empty reply is its end of the socket
        closed: it is exiting, so it is waited for here and its status named (the
        kernel's out-of-memory killer sends SIGKILL)."""
        if reply or self._reaped:
            return "the worker's file helper ended early"
        _pid, status = os.waitpid(self._pid, 0)
        self._reaped = True  # finish() and abort() have nothing left to wait for
        if os.WIFSIGNALED(status):
            return (f"the worker's file helper was killed by "
                    f"{signal_name(os.WTERMSIG(status))} before it finished")
        return f"the worker's file helper exited early (status {os.WEXITSTATUS(status)})"

    def _record(self, err: OSError, entry: str) -> None:
        if self.error is None:
            self.error = (err, entry)


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9, without the ``signal`` module (it imports ``enum``: the
    worker's start-up); of two names for one number, the first in order."""
    names = sorted(name for name in dir(_signal)
                   if name.startswith("SIG") and "_" not in name
                   and getattr(_signal, name) == number)
    return names[0] if names else f"signal {number}"


def _ranges_without(keep: set[int]) -> list[tuple[int, int]]:
    """The ranges of descriptor numbers (for ``os.closerange``) that leave out ``keep``.

    No empty range: ``os.closerange(0, 0)`` closes every descriptor (close_range(0, -1)).
    """
    ranges = []
    low = 0
    for fd in sorted(n for n in keep if n >= 0):
        if fd > low:
            ranges.append((low, fd))
        low = fd + 1
    ranges.append((low, 1 << 16))
    return ranges


def _copy_extent(fd: int, source: int, offset: int, size: int,
                 buffer: memoryview | None, ring: int = 0) -> None:
    """Copy ``size`` bytes of ``source`` from ``offset`` to ``fd``: in the kernel
    (``sendfile``, page cache to page cache), else through ``buffer`` (None: one is
    made for this copy). ``ring``: ``source`` is a ring of that size (the offset is in
    the stream)."""
    if ring:
        _ring.send(fd, source, offset, size, ring)
        return
    try:
        while size:
            sent = os.sendfile(fd, source, offset, size)
            if not sent:
                raise OSError(_ENODATA, "the archive ends inside the file's data")
            offset += sent
            size -= sent
        return
    except OSError as err:
        if err.errno not in _NO_SENDFILE:
            raise
    write = os.write
    if buffer is None:
        buffer = memoryview(bytearray(min(_COPY_CHUNK, max(size, 1))))
    while size:
        got = os.preadv(source, [buffer[:min(size, len(buffer))]], offset)
        if not got:
            raise OSError(_ENODATA, "the archive ends inside the file's data")
        chunk = buffer[:got]
        while chunk:
            chunk = chunk[write(fd, chunk):]
        offset += got
        size -= got


def _finish_batch(batch: memoryview, fds: list[int], source: int,
                  buffer: memoryview | None = None, ring: int = 0
                  ) -> tuple[tuple[OSError, int] | None, list[int]]:
    """Create (those sent by name), write, time and close each file of a batch; the
    first error and its index, and the indexes of the files left to the worker.

    After an error the remaining files are only closed.
    """
    count = _COUNT.unpack_from(batch)[0]
    layout = _layout(count)
    numbers = layout.unpack_from(batch, _COUNT.size)
    name_at = _COUNT.size + layout.size
    pos = name_at + sum(numbers[count : 2 * count])
    returned: list[int] = []
    # One copy of all the names, sliced per file (a file's cost is what small files
    # cost: the helper's share of them is mostly this loop).
    names = bytes(batch[name_at:pos])
    nodes = _NodeDirs()
    try:
        failed = _finish_files(batch, fds, source, buffer, ring, count, numbers, names,
                               pos, returned, nodes)
    finally:
        closed = nodes.close()
    if closed is not None and failed is None:
        failed = closed
    return failed, returned


def _finish_files(batch: memoryview, fds: list[int], source: int,
                  buffer: memoryview | None, ring: int, count: int,
                  numbers: tuple[int, ...], names: bytes, pos: int, returned: list[int],
                  nodes: _NodeDirs) -> tuple[OSError, int] | None:
    """:func:`_finish_batch`'s loop over the files (``names``: all of theirs)."""
    failed: tuple[OSError, int] | None = None
    name_at = 0
    write, sendfile, open_, utime, close = os.write, os.sendfile, os.open, os.utime, os.close
    next_fd = 0
    for index in range(count):
        size = numbers[index]
        name_size = numbers[count + index]
        at = 2 * count + 4 * index
        extent = numbers[at + 2]
        fd = -1
        try:
            if name_size:
                name = names[name_at : name_at + name_size]
                name_at += name_size
                if failed is not None:
                    pass
                elif numbers[at + 3] == SYMLINK:
                    if not _symlink(name, bytes(batch[pos : pos + size]), numbers[at],
                                    numbers[at + 1], nodes, index):
                        returned.append(index)
                else:
                    try:
                        fd = open_(name, _CREATE, numbers[at + 3])
                    except OSError as err:
                        if err.errno not in _RETURNED:
                            raise
                        returned.append(index)
            else:
                fd = fds[next_fd]
                next_fd += 1
            if failed is None and fd >= 0:
                if extent < 0:
                    data = batch[pos : pos + size]
                    written = write(fd, data) if size else 0
                    while written < size:
                        written += write(fd, data[written:])
                elif size:  # (the worker sends no empty extent)
                    sent = 0
                    if not ring:  # the usual case written out: one sendfile does it
                        try:
                            sent = sendfile(fd, source, extent, size)
                        except OSError as err:
                            if err.errno not in _NO_SENDFILE:
                                raise
                        if sent != size and buffer is None:
                            buffer = memoryview(bytearray(_COPY_CHUNK))
                    if sent != size:  # the rest (or a ring: by sendfile only)
                        _copy_extent(fd, source, extent + sent, size - sent, buffer, ring)
                utime(fd, ns=(numbers[at], numbers[at + 1]))
        except OSError as err:
            failed = (err, index)
        finally:
            if fd >= 0:
                close(fd)
        if extent < 0:
            pos += size
    return failed


def _finish_either(batch: memoryview, fds: list[int], source: int,
                   buffer: memoryview | None, ring: int
                   ) -> tuple[tuple[OSError, int] | None, Sequence[int]]:
    """:func:`_finish_batch`, compiled where it was built and the batch is one it takes
    (no symlink): the helper's share of a small file is then the kernel's work alone."""
    done = (None if _finish_compiled is None
            else _finish_compiled(batch, fds, source, ring))
    if done is None:
        return _finish_batch(batch, fds, source, buffer, ring)
    code, index, returned = done
    return (OSError(code, os.strerror(code)), index) if code else None, returned


try:
    from chrootarchive.engine._finish import finish as _finish_compiled
except ImportError:  # built without a C compiler: _finish_batch does it all
    _finish_compiled = None  # type: ignore[assignment]


class _NodeDirs:
    """The private directory a batch's symlinks are made in (:func:`_symlink`): one for a
    run of them in the same directory, kept while the directory's path still leads to
    it, removed when the batch ends. Made and removed for each, as most of a root
    file system's symlinks come between files, it cost rootfs.tar 5%."""

    __slots__ = ("last", "parent", "where")

    def __init__(self) -> None:
        self.where: fsops.PrivateDir | None = None
        self.parent = ""
        self.last = -1  # the index of the last symlink made in it

    def get(self, parent: str, index: int) -> fsops.PrivateDir:
        held = self.where
        if held is not None:
            if self.parent == parent and os.fstat(held.private_fd).st_nlink:
                st, pinned = os.stat(parent or "."), os.fstat(held.parent_fd)
                if (st.st_dev, st.st_ino) == (pinned.st_dev, pinned.st_ino):
                    self.last = index
                    return held
            failed = self.close()
            if failed is not None:
                raise failed[0]
        self.where = _FILE_OPS.node_dir(parent)
        self.parent, self.last = parent, index
        return self.where

    def close(self) -> tuple[OSError, int] | None:
        """Remove the directory; what failed, told as the last symlink made in it's."""
        held, self.where = self.where, None
        if held is not None:
            try:
                held.close()
            except OSError as err:
                return err, self.last
        return None


def _symlink(name: bytes, target: bytes, atime_ns: int, mtime_ns: int,
             nodes: _NodeDirs, index: int) -> bool:
    """Make a symlink as the worker does (:class:`fsops.PrivateNode`): in a directory of
    the helper's own beside ``name`` (``nodes``'), timed there through an ``O_PATH``
    descriptor and moved to ``name`` by a rename that replaces nothing. Made at ``name``
    and re-opened there, a racer's node of the helper's user, linked or moved in for the
    moment, took the times. False: left to the worker (something in the way, or not the
    node made)."""
    path, text = os.fsdecode(name), os.fsdecode(target)
    try:
        where = nodes.get(path.rpartition("/")[0], index)
    except OSError as err:
        if err.errno not in _RETURNED:
            raise
        return False
    try:
        with where.make(path, lambda dir_fd, made: os.symlink(text, made, dir_fd=dir_fd)
                        ) as node:
            if node.st.st_mode & 0o170000 != 0o120000 or node.readlink() != text:
                return False  # the worker meets it, and says so
            _linux.utimensat_empty(node.fd, atime_ns, mtime_ns)
            node.place()
    except OSError as err:
        if err.errno not in _RETURNED:
            raise
        return False  # (the node is gone: the directory serves the next)
    return True


def _serve(sock: _socket.socket, source: int, ring: int) -> None:
    """The helper's loop: one batch per message, one reply per batch, until EOF."""
    buf = bytearray(_MAX_MESSAGE + MAX_FILES * 48 + _COUNT.size)
    view = memoryview(buf)
    copy_buffer: memoryview | None = None
    space = _socket.CMSG_SPACE(MAX_FDS * 4)
    failed = False
    while True:
        size, ancillary, flags, _addr = sock.recvmsg_into([buf], space)
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                count = len(data) // 4
                fds.extend(struct.unpack(f"{count}i", data[: count * 4]))
        if not size and not fds:
            return  # the worker closed its end
        problem: tuple[OSError, int] | None = None
        returned: Sequence[int] = ()
        if flags & (_socket.MSG_CTRUNC | _socket.MSG_TRUNC) or not _well_formed(view[:size], fds):
            problem = (OSError(_EMSGSIZE, os.strerror(_EMSGSIZE)), 0)  # files lost
        if failed or problem is not None:
            for fd in fds:  # after an error, files are only closed
                os.close(fd)
        else:
            if copy_buffer is None and source >= 0 and not ring:
                copy_buffer = memoryview(bytearray(_COPY_CHUNK))
            problem, returned = _finish_either(view[:size], fds, source, copy_buffer, ring)
        tail = struct.pack(f"<{len(returned)}H", *returned)
        if problem is not None and not failed:
            failed = True
            sock.send(_REPLY.pack(_ERR, problem[0].errno or 0, problem[1]) + tail)
        else:
            sock.send(_REPLY.pack(_OK, 0, 0) + tail)


def _well_formed(batch: memoryview, fds: list[int]) -> bool:
    """A batch as the worker makes them: its count, its layout, sizes and modes in
    range, names and data that fit in it, and as many descriptors as files without a
    name. Neither loop sees any other (Python's would wait forever on data cut short)."""
    if len(batch) < _COUNT.size:
        return False
    count = _COUNT.unpack_from(batch)[0]
    if not 0 < count <= MAX_FILES:
        return False
    layout = _layout(count)
    if len(batch) < _COUNT.size + layout.size:
        return False
    numbers = layout.unpack_from(batch, _COUNT.size)
    sizes = numbers[:count]
    name_sizes = numbers[count : 2 * count]
    extents = numbers[2 * count + 2 :: 4]
    modes = numbers[2 * count + 3 :: 4]
    inline = sum(size for size, extent in zip(sizes, extents, strict=True) if extent < 0)
    return (name_sizes.count(0) == len(fds) and max(sizes) <= MAX_EXTENT
            and all(mode == SYMLINK or 0 <= mode <= 0o7777 for mode in modes)
            and _COUNT.size + layout.size + sum(name_sizes) + inline <= len(batch))
