"""The confined worker process and the parent/child protocol.

The parent spawns a fresh interpreter (``python -I -S``: no site, no environment, no
user paths; spawned, not forked, so it is cheap and inherits no threads or locks) with
one control socket (:class:`Booted`). The worker boots: it asks to be killed when its
parent dies and imports everything its job needs. Then the parent hands it its job
(:meth:`Booted.hand_over`) over that socket, in one go:

* one JSON document (job name, mechanism, options, and the names of the descriptors);
* with it (SCM_RIGHTS) the jail's root, a result pipe, stdin (the data the job reads:
  the uncompressed tar stream for ``unpack``), stdout if the job writes data (the tar
  stream for ``pack``; else /dev/null), the caller's stderr, and for ``userns`` a socket
  to synchronise the id mapping.

The result pipe carries one JSON document back: the job's result, or an error given as
(class name, message, entry) and raised in the parent as the same class. Booting first
is what lets a thread keep a worker booted ahead of its next call
(:mod:`chrootarchive.runner.standby`).

The child (:mod:`chrootarchive.jail.main`) then enters the jail and makes every further
import fail. A job is a module with ``run(request, warn) -> dict`` (see :data:`JOBS`) and
optionally ``prepare(request)``, run before the jail.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from chrootarchive.errors import (
    ChrootArchiveError,
    WorkerError,
    error_class,
)
from chrootarchive.jail.main import DEFAULT_CAPABILITIES, JOBS, READY

__all__ = ["DEFAULT_CAPABILITIES", "JOBS", "Booted", "Worker", "feed", "run_job"]

_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
_MAX_RESULT = 16 << 20
_DISCARD_WAIT = 5.0  # seconds for a discarded worker to end (it dies with us anyway)
_FIRST_MESSAGE = 1 << 16  # the request's first bytes, sent with the descriptors

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from chrootarchive.jail.main import child_main; child_main(sys.argv[2:])"
)


# -- parent side ---------------------------------------------------------------------


def _package_parent() -> str:
    # src/chrootarchive/runner/worker.py -> src
    here = os.path.abspath(__file__)
    return os.path.dirname(os.path.dirname(os.path.dirname(here)))


def _pipe(big: bool = False) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    if big:
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
    return r, w


class Booted:
    """A worker interpreter, started and booting; it waits for its job on a socket.

    Args:
        job: a name from :data:`JOBS` (the worker imports its module as it boots).
        standby: booted ahead of a call (:mod:`chrootarchive.runner.standby`): its stderr is
            /dev/null until a call hands it the caller's.
    """

    def __init__(self, job: str, *, standby: bool = False) -> None:
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM, 0)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOT, _package_parent(),
                 str(theirs.fileno()), str(os.getpid()), job],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL if standby else None,
                pass_fds=(theirs.fileno(),),
                env={"LC_ALL": "C.UTF-8"},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._control: _socket.socket | None = ours

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pid(self) -> int:
        return self.proc.pid

    def control_fd(self) -> int:
        """Our end of the control socket, or -1 once the job was handed over."""
        return self._control.fileno() if self._control is not None else -1

    def hand_over(self, document: bytes, fds: list[int]) -> None:
        """Send the job: the request and the descriptors it names, then EOF.

        Raises OSError when the worker is gone (a standby killed meanwhile, say).
        """
        control, self._control = self._control, None
        if control is None:
            raise ValueError("this worker already has its job")
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        try:
            first = document[:_FIRST_MESSAGE]
            sent = control.sendmsg([first], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)],
                                   _socket.MSG_NOSIGNAL)
            control.sendall(document[sent:], _socket.MSG_NOSIGNAL)
        finally:
            control.close()

    def discard(self) -> None:
        """Let the worker go: kill it if it still runs, and reap it.

        Closing the control socket ends a worker that waits for its job by itself; the
        kill is for one still booting, and may be refused (EPERM) to a caller that has
        given up the uid it spawned the worker with.
        """
        self.forget()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=_DISCARD_WAIT)

    def forget(self) -> None:
        """Close this process's end of the control socket (after a fork, say)."""
        if self._control is not None:
            self._control.close()
            self._control = None


def _boot(job: str) -> Booted:
    """A worker for ``job``: this thread's standby if it may be used, else a new one."""
    from chrootarchive.runner import standby

    booted = standby.take(job)
    return booted if isinstance(booted, Booted) else Booted(job)


def _has_stderr() -> bool:
    try:
        os.fstat(2)
    except OSError:
        return False  # no stderr to pass (a daemon's, closed)
    return True


class Worker:
    """One confined worker process running one job.

    Args:
        job: a name from :data:`JOBS`.
        root_fd: directory descriptor of the jail's root, pinned by the caller.
        request: the job's JSON-able request (``mechanism`` and ``dest`` included).
        stdin: an fd the worker reads as its stdin, or None for a pipe
            (:attr:`stdin_w` is then its write end).
        stdout_pipe: give the worker a stdout pipe (:attr:`stdout_r` is its read end).
    """

    def __init__(
        self,
        job: str,
        root_fd: int,
        request: dict[str, Any],
        *,
        stdin: int | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        if job not in JOBS:
            raise ValueError(f"unknown worker job {job!r}")
        from chrootarchive.runner import standby

        self.stdin_w = -1
        self.stdout_r = -1
        self._reply = bytearray()
        self._ready = threading.Event()
        self._is_ready = False
        self._closed = False
        id_ranges = request.get("id_ranges")
        sync_parent: _socket.socket | None = None
        sync_child: _socket.socket | None = None
        if id_ranges:
            sync_parent, sync_child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM, 0)
        self._res_r, res_w = _pipe()
        if stdin is None:
            child_stdin, self.stdin_w = _pipe(big=True)
        else:
            child_stdin = stdin
        child_stdout: int | None = None
        if stdout_pipe:
            self.stdout_r, child_stdout = _pipe(big=True)
        passed = {"result": res_w, "root": root_fd, "stdin": child_stdin}
        if child_stdout is not None:
            passed["stdout"] = child_stdout
        if _has_stderr():
            passed["stderr"] = 2
        if sync_child is not None:
            passed["sync"] = sync_child.fileno()
        document = json.dumps(dict(request, job=job, fds=list(passed))).encode()
        fds = list(passed.values())
        booted: Booted | None = None
        try:
            booted = _boot(job)
            try:
                booted.hand_over(document, fds)
            except OSError:
                booted.discard()  # a standby that died meanwhile: spawn one now
                booted = Booted(job)
                with contextlib.suppress(OSError):  # it died at once: finish() says why
                    booted.hand_over(document, fds)
        except BaseException:
            if booted is not None:
                booted.discard()  # interrupted: no worker may outlive this call
            for fd in (self._res_r, self.stdin_w, self.stdout_r):
                if fd >= 0:
                    os.close(fd)
            if sync_parent is not None:
                sync_parent.close()
            raise
        finally:
            os.close(res_w)
            if sync_child is not None:
                sync_child.close()
            if stdin is None:
                os.close(child_stdin)
            if child_stdout is not None:
                os.close(child_stdout)
        assert booted is not None
        self.proc = booted.proc
        self._reader = threading.Thread(target=self._read_result, daemon=True)
        self._reader.start()
        standby.replenish(job, lambda: Booted(job, standby=True))
        if sync_parent is not None:
            try:
                self._map_ids(sync_parent, id_ranges)
            finally:
                sync_parent.close()

    def _map_ids(self, sync: _socket.socket, ranges: Any) -> None:
        """Map the worker's user namespace to the caller's subordinate ranges."""
        from chrootarchive.jail.confine import userns

        sync.settimeout(30)
        try:
            if sync.recv(1) != b"U":
                return  # the worker failed before unsharing; its reply says why
            try:
                userns.map_ids(self.proc.pid, tuple(ranges))
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

    def wait_ready(self) -> None:
        """Block until the worker is confined; raise its error if it never got there."""
        self._ready.wait()
        if not self._is_ready:
            self.finish()  # raises the worker's error
            raise WorkerError("the worker stopped before it was confined")

    def close_stdin(self) -> None:
        if self.stdin_w >= 0:
            os.close(self.stdin_w)
            self.stdin_w = -1

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def finish(self) -> dict[str, Any]:
        """Wait for the worker; return its result or raise its error (same class)."""
        try:
            self.close_stdin()
            self.proc.wait()
            self._reader.join()
            return _decode_reply(bytes(self._reply), self.proc.returncode)
        finally:
            self.close()

    def close(self) -> None:
        """Release everything; kills the worker if it still runs. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.close_stdin()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join()
        os.close(self._res_r)
        if self.stdout_r >= 0:
            os.close(self.stdout_r)
            self.stdout_r = -1


def run_job(
    job: str,
    root_fd: int,
    request: dict[str, Any],
    data: Iterable[bytes] | int,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run a job that reads ``data`` (chunks, or a readable fd) and return its result.

    Chunks are fed by a thread, so that a worker that dies while the input stalls is
    noticed at once (the caller gets its error; the feeding thread ends with the input).
    """
    try:
        worker = Worker(job, root_fd, request, stdin=data if isinstance(data, int) else None)
        try:
            worker.wait_ready()
            if not isinstance(data, int):
                _feed_while_alive(worker, data, on_progress)
            return worker.finish()
        finally:
            worker.close()
    except BaseException:
        from chrootarchive.runner import standby

        standby.drop_own()  # a failed call leaves no process behind
        raise


def _feed_while_alive(
    worker: Worker, data: Iterable[bytes], on_progress: Callable[[int], None] | None
) -> None:
    fd, worker.stdin_w = worker.stdin_w, -1  # the feeding thread owns (and closes) it
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            feed(fd, data, on_progress)
        except BaseException as err:
            failure.append(err)
        finally:
            os.close(fd)
            done.set()

    threading.Thread(target=run, name="chrootarchive-feed", daemon=True).start()
    try:
        while not done.wait(0.05):
            if worker.proc.poll() is not None:
                # The worker ended first. A worker that succeeded read its input to
                # the end, so the feeding has ended too: wait for its verdict (a bad
                # checksum at the very end of a gzip stream, say), however busy the
                # machine. After a failure, if the input stalls, the worker's error
                # is reported now.
                if worker.proc.returncode == 0:
                    done.wait()
                elif not done.wait(0.2):
                    return
                break
    except BaseException:
        worker.kill()
        raise
    if failure:
        err = failure[0]
        if isinstance(err, ChrootArchiveError):
            # The worker saw a truncated stream; the feeding error is the real cause.
            with contextlib.suppress(ChrootArchiveError):
                worker.finish()
        else:
            worker.kill()
        raise err


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def feed(fd: int, chunks: Iterable[bytes], on_progress: Callable[[int], None] | None) -> None:
    """Write the stream to the worker; stop quietly if the worker stopped reading."""
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
            if on_progress is not None:
                on_progress(len(chunk))
    except BrokenPipeError:
        return  # the worker ended (its reply says why)


def _decode_reply(reply: bytes, returncode: int) -> dict[str, Any]:
    if not reply:
        if returncode < 0:
            name = signal.Signals(-returncode).name
            raise WorkerError(f"the worker was killed by {name} before it finished")
        raise WorkerError(f"the worker exited with status {returncode} without a result")
    try:
        message = json.loads(reply)
    except ValueError as err:
        raise WorkerError(f"the worker sent an unreadable reply: {err}") from None
    if "error" in message:
        detail = message["error"]
        raise error_class(str(detail["type"]))(str(detail["message"]), detail.get("entry"))
    if returncode != 0:
        raise WorkerError(f"the worker exited with status {returncode}")
    result: dict[str, Any] = message["result"]
    return result
