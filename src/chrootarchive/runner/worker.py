"""A job in a confined worker process, seen from the parent.

:class:`Worker` hands a booted interpreter (:mod:`chrootarchive.runner.spawn`) its job:
the :class:`~chrootarchive.contract.JobRequest` as one JSON document, and with it
(SCM_RIGHTS) the jail's root, a result pipe, stdin (the data the job reads: the
uncompressed tar stream for ``unpack``), stdout if the job writes data (the tar stream
for ``pack``; else /dev/null), the caller's stderr, and for ``userns`` a socket to
synchronise the id mapping. The result pipe carries one document back: the job's
reply, or its error, raised here as the same class
(:func:`~chrootarchive.contract.decode_reply`).

The worker itself is :mod:`chrootarchive.jail.main`.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import threading

from chrootarchive import _fdio, _wire
from chrootarchive._ring import RingWriter
from chrootarchive.contract import JobReply, JobRequest, decode_reply
from chrootarchive.errors import ChrootArchiveError, WorkerError
from chrootarchive.jail.main import READY
from chrootarchive.runner import standby
from chrootarchive.runner.launch import InterruptsHeld
from chrootarchive.runner.spawn import (
    EXIT_LOADER,
    EXIT_NO_PACKAGE,
    Booted,
    cannot_import_error,
    interpreter_error,
    loader_error,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from chrootarchive.jail.confine.userns import IdRanges
else:
    Protocol = object  # no typing at run time (start-up): a plain class stands in

__all__ = ["Running", "Worker"]

_MAX_RESULT = 16 << 20
# Seconds between looks for a KeyboardInterrupt while the caller waits for the worker:
# one that ``_thread.interrupt_main`` raised (no signal) waits for the next bytecode.
_INTERRUPTIBLE = 0.05


class Running(Protocol):
    """A started job, jailed in a worker or run in-process: feed it, read it, finish it."""

    stdin_w: int
    stdout_r: int
    ring: RingWriter | None

    def wait_ready(self) -> None: ...

    def alive(self) -> bool: ...

    def outcome(self) -> bool | None: ...

    def close_stdin(self) -> None: ...

    def kill(self) -> None: ...

    def finish(self) -> JobReply: ...

    def close(self) -> None: ...


def _boot(job: str) -> Booted:
    """A worker for ``job``: this thread's standby if it may be used, else a new one."""
    booted = standby.take(job)
    return booted if isinstance(booted, Booted) else _spawn(job)


def _spawn(job: str) -> Booted:
    try:
        return Booted(job)
    except OSError as err:
        raise interpreter_error(err) from err


def _has_stderr() -> bool:
    try:
        os.fstat(2)
    except OSError:
        return False  # no stderr to pass (a daemon's, closed)
    return True


class Worker:
    """One confined worker process running one job.

    Args:
        root_fd: directory descriptor of the jail's root, pinned by the caller.
        request: the job (its ``mechanism`` one that runs in a worker).
        stdin: an fd the worker reads as its stdin, or None for a pipe
            (:attr:`stdin_w` is then its write end).
        stdout_pipe: give the worker a stdout pipe (:attr:`stdout_r` is its read end).
        channel: the worker's end of a layer channel (:mod:`chrootarchive._channel`),
            passed to it (the caller keeps and closes its own copy).
        ring: with ``stdin`` None, feed the worker through a ring
            (:mod:`chrootarchive._ring`, :attr:`ring`) instead of a pipe.
    """

    def __init__(
        self,
        root_fd: int,
        request: JobRequest,
        *,
        stdin: int | None = None,
        stdout_pipe: bool = False,
        channel: int | None = None,
        ring: bool = False,
    ) -> None:
        job = request.job
        self.stdin_w = -1
        self.stdout_r = -1
        self.ring: RingWriter | None = None
        self._reply = bytearray()
        self._ready = threading.Event()
        self._read_all = threading.Event()  # the reader has seen the result pipe's end
        self._is_ready = False
        self._closed = False
        id_ranges = None
        if request.mechanism == "userns":
            from chrootarchive.jail.confine import userns  # _linux: only for this mechanism

            id_ranges = userns.subordinate_ranges()
        sync_parent: _socket.socket | None = None
        sync_child: _socket.socket | None = None
        self._res_r = res_w = child_stdin = -1
        child_stdout: int | None = None
        own_stdin = stdin is None and not ring
        booted: Booted | None = None
        try:
            # The descriptors are made with interrupts held: a KeyboardInterrupt between
            # two of them left the first ones open (none is a wait).
            with InterruptsHeld():
                if id_ranges:
                    sync_parent, sync_child = _socket.socketpair(
                        _socket.AF_UNIX, _socket.SOCK_STREAM, 0)
                    _fdio.guard(sync_child.fileno())
                # What a fork made meanwhile must not keep (_fdio.guard): the ends whose
                # closing tells the worker, or us, that the other side is done.
                self._res_r, res_w = _fdio.pipe()
                _fdio.guard(res_w)
                if ring:
                    self.ring = RingWriter()
                    request = request.replace(ring=self.ring.size)
                    passed = {"result": res_w, "root": root_fd, **self.ring.child_fds()}
                else:
                    if stdin is None:
                        child_stdin, self.stdin_w = _fdio.pipe(big=True)
                        _fdio.guard(self.stdin_w)
                    else:
                        child_stdin = stdin
                    passed = {"result": res_w, "root": root_fd, "stdin": child_stdin}
                if stdout_pipe:
                    self.stdout_r, child_stdout = _fdio.pipe(big=True)
                    _fdio.guard(child_stdout)
            if child_stdout is not None:
                passed["stdout"] = child_stdout
            if _has_stderr():
                passed["stderr"] = 2
            if sync_child is not None:
                passed["sync"] = sync_child.fileno()
            if channel is not None:
                passed["channel"] = channel
            document = _wire.dumps({"request": request.to_wire(), "fds": list(passed)})
            fds = list(passed.values())
            with InterruptsHeld():  # a standby taken, or a worker spawned, is tracked
                booted = _boot(job)
            try:
                booted.hand_over(document, fds)
            except OSError:
                booted.discard()  # a standby that died meanwhile: spawn one now
                booted = _spawn(job)
                with contextlib.suppress(OSError):  # it died at once: finish() says why
                    booted.hand_over(document, fds)
        except BaseException:
            if booted is not None:
                booted.discard()  # interrupted: no worker may outlive this call
            for fd in (self._res_r, self.stdin_w, self.stdout_r):
                if fd >= 0:
                    _fdio.close(fd)
            if self.ring is not None:
                self.ring.close()
            if sync_parent is not None:
                sync_parent.close()
            raise
        finally:
            if res_w >= 0:
                _fdio.close(res_w)
            if sync_child is not None:
                _fdio.unguard(sync_child.fileno())
                sync_child.close()
            if own_stdin and child_stdin >= 0:
                os.close(child_stdin)
            if self.ring is not None:
                self.ring.close_child_ends()
            if child_stdout is not None:
                _fdio.close(child_stdout)
        assert booted is not None
        self.proc = booted.proc
        self._reader = threading.Thread(target=self._read_result, daemon=True)
        try:
            # Held: an interrupt inside start() left a thread running that close() took
            # for never started, and the result pipe was closed under its read (or the
            # number reused meanwhile read from).
            with InterruptsHeld():
                self._reader.start()
            standby.replenish(job, lambda: Booted(job, standby=True))
            if sync_parent is not None and id_ranges:
                self._map_ids(sync_parent, id_ranges)
        except BaseException:
            # Interrupted (a KeyboardInterrupt while the next standby is spawned): the
            # worker has its job, and must not unpack on, unwatched, once the call has
            # raised.
            self.close()
            raise
        finally:
            if sync_parent is not None:
                sync_parent.close()

    def _map_ids(self, sync: _socket.socket, ranges: IdRanges) -> None:
        """Map the worker's user namespace to the caller's subordinate ranges."""
        from chrootarchive.jail.confine import userns

        sync.settimeout(30)
        try:
            if sync.recv(1) != b"U":
                return  # the worker failed before unsharing; its reply says why
            try:
                userns.map_ids(self.proc.pid, ranges)
            except ChrootArchiveError as err:
                sync.sendall(b"F" + err.message.encode())
                return
            sync.sendall(b"M")
        except OSError:
            return

    def _read_result(self) -> None:
        first = True
        try:
            while len(self._reply) <= _MAX_RESULT:
                data = os.read(self._res_r, 65536)
                if not data:
                    return
                if first:
                    first = False
                    if data.startswith(READY):
                        self._is_ready = True
                        data = data[1:]
                        self._ready.set()
                self._reply += data
        finally:
            self._ready.set()
            self._read_all.set()

    def wait_ready(self) -> None:
        """Block until the worker is confined; raise its error if it never got there."""
        while not self._ready.wait(_INTERRUPTIBLE):  # in steps: see finish()
            pass
        if not self._is_ready:
            self.finish()  # raises the worker's error
            raise WorkerError("the worker stopped before it was confined")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def outcome(self) -> bool | None:
        """None while the worker runs; then whether it exited successfully."""
        code = self.proc.poll()
        return None if code is None else code == 0

    def close_stdin(self) -> None:
        if self.stdin_w >= 0:
            _fdio.close(self.stdin_w)
            self.stdin_w = -1

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def finish(self) -> JobReply:
        """Wait for the worker; return its reply or raise its error (same class)."""
        try:
            self.close_stdin()
            # The reader ends with the worker (it closes the result pipe as it exits):
            # waited for in steps, since a blocking wait (waitpid) runs no bytecode
            # until the worker ends, and an archive of minutes would hold back the
            # interrupt_main of a watchdog or an IDE that much. On an Event, not with
            # Thread.join: under 3.11 a join that a KeyboardInterrupt cuts short marks
            # the thread ended, and a later join returns at once while it reads on.
            while not self._read_all.wait(_INTERRUPTIBLE):
                pass
            code = self.proc.wait()
            return _decode(bytes(self._reply), code)
        finally:
            self.close()

    def close(self) -> None:
        """Release everything; kills the worker if it still runs. Idempotent, and done
        again in full when a KeyboardInterrupt cut it short (in a wait): it was marked
        done first, and the next call left the worker unreaped and the pipe open."""
        if self._closed:
            return
        self.close_stdin()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._reader.ident is not None:  # started (else an interrupt came first)
            self._read_all.wait()  # the worker is gone: the pipe's end comes at once
        self._closed = True
        os.close(self._res_r)
        if self.ring is not None:
            self.ring.close()
        if self.stdout_r >= 0:
            os.close(self.stdout_r)
            self.stdout_r = -1


def _decode(reply: bytes, returncode: int) -> JobReply:
    if not reply:
        if returncode == EXIT_NO_PACKAGE:
            raise cannot_import_error()
        if returncode == EXIT_LOADER:
            raise loader_error()
        if returncode < 0:
            import signal  # only now: it loads enum (the command line's start)

            name = signal.Signals(-returncode).name
            raise WorkerError(f"the worker was killed by {name} before it finished")
        raise WorkerError(f"the worker exited with status {returncode} without a result")
    try:
        message = _wire.loads(reply)
    except ValueError as err:
        raise WorkerError(f"the worker sent an unreadable reply: {err}") from None
    result = decode_reply(message)  # raises the worker's error
    if returncode != 0:
        raise WorkerError(f"the worker exited with status {returncode}")
    return result
