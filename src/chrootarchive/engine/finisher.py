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

Batches of at most :data:`MAX_FDS` files travel as one message; at most
:data:`MAX_IN_FLIGHT` batches are unacknowledged, which bounds the descriptors in
flight (the kernel counts them against ``RLIMIT_NOFILE``). A batch the kernel refuses
is finished in the worker itself. The first error, with its entry name, is in
:attr:`Finisher.error` as soon as its reply is read, and returned by
:meth:`Finisher.finish`.
"""

from __future__ import annotations

import _socket
import os
import resource
import struct

from chrootarchive import _linux

__all__ = ["Finisher"]

MAX_FDS = 32  # files per batch
MAX_IN_FLIGHT = 4  # batches sent and not yet acknowledged
_MAX_MESSAGE = 160 << 10  # data of a batch at most (a batch is one message)
_SNDBUF = 1 << 20  # asked for the worker's socket: MAX_IN_FLIGHT batches fit
# A batch: the number of files n, their n data sizes, an atime and an mtime for each
# file, then the data.
_COUNT = struct.Struct("<H")
_ERROR = struct.Struct("<cIH")  # b"E", errno, index of the file in its batch
_OK = b"k"
_MIN_NOFILE = 256  # descriptors: a batch held here, those in flight, the unpacker's
_EMSGSIZE = 90


_LAYOUTS: dict[int, struct.Struct] = {}


def _layout(count: int) -> struct.Struct:
    layout = _LAYOUTS.get(count)
    if layout is None:
        layout = _LAYOUTS[count] = struct.Struct(f"<{count}I{2 * count}q")
    return layout


class Finisher:
    """The worker's side: batches files for the helper and collects its replies."""

    def __init__(self, sock: _socket.socket, pid: int) -> None:
        self._sock = sock
        self._pid = pid
        # One batch is one message, which must fit in the socket's send buffer; and
        # several must, or the worker waits at each send until the helper has read the
        # batch before (files of 8 KiB on average made one batch of 160 KiB fill the
        # default buffer). The kernel caps the size asked for (net.core.wmem_max).
        try:  # noqa: SIM105 - the worker does not import contextlib
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, _SNDBUF)
        except OSError:
            pass
        buffer = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF)
        self._max_data = max(min(_MAX_MESSAGE, buffer // 3 - 4096) - MAX_FDS * 20 - 2, 0)
        self._data = bytearray()
        self._fds: list[int] = []
        self._sizes: list[int] = []
        self._times: list[int] = []  # atime, mtime of each file
        self._names: list[str] = []
        self._sent: list[list[str]] = []  # entry names of the batches not yet acknowledged
        self.error: tuple[OSError, str] | None = None  # the first, with its entry name
        self.finished_here = 0  # files of batches the kernel refused, finished here
        self.taken = 0  # files given to add()
        self._done = False

    @classmethod
    def start(cls) -> Finisher | None:
        """Fork the helper; None when that is not possible (the caller works alone).

        Call only while the worker runs no other thread.
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
                    # Writing to descriptors it is given, and setting the times of files
                    # its own user created, needs no capability.
                    _linux.clear_capabilities()
                if os.getppid() == parent:
                    keep = theirs.fileno()
                    os.closerange(0, keep)  # the archive, the reply pipe, the root...
                    os.closerange(keep + 1, 1 << 16)
                    _serve(theirs)
                    status = 0
            finally:
                os._exit(status)
        theirs.close()
        return cls(ours, pid)

    def add(self, fd: int, data: memoryview | bytes, atime_ns: int, mtime_ns: int,
            entry: str) -> None:
        """Finish ``fd`` (which this takes over): write ``data``, set its times, close.

        ``data`` is copied: the caller's buffer may change once this returns.
        """
        if self._fds and (len(self._fds) >= MAX_FDS
                          or len(self._data) + len(data) > self._max_data):
            self._send()
        self._fds.append(fd)
        self._sizes.append(len(data))
        self._times += (atime_ns, mtime_ns)
        self._names.append(entry)
        self._data += data
        self.taken += 1

    def finish(self) -> tuple[OSError, str] | None:
        """Send what is left, wait for the helper to finish everything; the first error."""
        if self._done:
            return self.error
        try:
            if self._fds:
                self._send()
            while self._sent:
                self._receive()
        finally:
            self._done = True
            self._sock.close()
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
        os.waitpid(self._pid, 0)

    def _send(self) -> None:
        while len(self._sent) >= MAX_IN_FLIGHT:
            self._receive()
        fds, names = self._fds, self._names
        head = _COUNT.pack(len(fds)) + _layout(len(fds)).pack(*self._sizes, *self._times)
        batch = head + self._data
        self._fds, self._names, self._sizes, self._times = [], [], [], []
        self._data = bytearray()
        rights = struct.pack(f"{len(fds)}i", *fds)
        try:
            self._sock.sendmsg([batch], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        except OSError:
            # ETOOMANYREFS (descriptors in flight, counted per user) or a helper that
            # ended: this batch is finished here, in order, before anything else.
            failed = _finish_batch(memoryview(batch), fds)
            self.finished_here += len(fds)
            if failed is not None:
                self._record(failed[0], names[failed[1]])
            return
        for fd in fds:
            os.close(fd)
        self._sent.append(names)

    def _receive(self) -> None:
        try:
            reply = self._sock.recv(64)
        except ConnectionError:
            reply = b""  # the helper is gone (ECONNRESET)
        names = self._sent.pop(0)
        if not reply:
            self._sent.clear()
            self._record(OSError(0, "the file helper ended early"), "")
        elif reply[:1] != _OK:
            _tag, number, index = _ERROR.unpack_from(reply)
            self._record(OSError(number, os.strerror(number)), names[index])

    def _record(self, err: OSError, entry: str) -> None:
        if self.error is None:
            self.error = (err, entry)


def _finish_batch(batch: memoryview, fds: list[int]) -> tuple[OSError, int] | None:
    """Write, time and close each file of a batch; the first error and its index.

    After an error the remaining files are only closed.
    """
    count = len(fds)
    layout = _layout(count)
    numbers = layout.unpack_from(batch, _COUNT.size)
    pos = _COUNT.size + layout.size
    failed: tuple[OSError, int] | None = None
    write = os.write
    for index, fd in enumerate(fds):
        size = numbers[index]
        try:
            if failed is None:
                data = batch[pos : pos + size]
                written = write(fd, data) if size else 0
                while written < size:
                    written += write(fd, data[written:])
                times = count + 2 * index
                os.utime(fd, ns=(numbers[times], numbers[times + 1]))
        except OSError as err:
            failed = (err, index)
        finally:
            os.close(fd)
        pos += size
    return failed


def _serve(sock: _socket.socket) -> None:
    """The helper's loop: one batch per message, one reply per batch, until EOF."""
    buf = bytearray(_MAX_MESSAGE)
    view = memoryview(buf)
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
        if flags & (_socket.MSG_CTRUNC | _socket.MSG_TRUNC) or (
            size < _COUNT.size or _COUNT.unpack_from(buf)[0] != len(fds)
        ):
            problem = (OSError(_EMSGSIZE, os.strerror(_EMSGSIZE)), 0)  # files lost
        if failed or problem is not None:
            for fd in fds:  # after an error, files are only closed
                os.close(fd)
        else:
            problem = _finish_batch(view[:size], fds)
        if problem is not None and not failed:
            failed = True
            sock.send(_ERROR.pack(b"E", problem[0].errno or 0, problem[1]))
        else:
            sock.send(_OK)
