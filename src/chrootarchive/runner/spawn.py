"""Starting a worker interpreter, and handing it its job.

The parent spawns a fresh interpreter (``python -I -S``: no site, no environment, no
user paths; spawned, not forked, so it is cheap and inherits no threads or locks) with
one control socket. The worker boots: it asks to be killed when its parent dies and
imports everything its job needs. Then the parent hands it its job
(:meth:`Booted.hand_over`) over that socket, in one go: the request document and, with
it (SCM_RIGHTS), the descriptors it names. Booting first is what lets a thread keep a
worker booted ahead of its next call (:mod:`chrootarchive.runner.standby`).
"""

from __future__ import annotations

import _socket
import contextlib
import os
import sys

from chrootarchive import _fdio
from chrootarchive.errors import ConfinementError
from chrootarchive.runner.launch import (
    ENV,
    EXIT_NO_PACKAGE,
    InterruptsHeld,
    command,
    package_parent,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Process(Protocol):
        """A worker process: ``subprocess.Popen``, or :class:`launch.Child`."""

        pid: int
        returncode: int | None

        def poll(self) -> int | None: ...

        def wait(self, timeout: float | None = None) -> int: ...

        def kill(self) -> None: ...

__all__ = ["EXIT_LOADER", "EXIT_NO_PACKAGE", "Booted", "cannot_import_error",
           "interpreter_error", "loader_error"]

#: The exit status of a program the dynamic loader could not start (ld.so's, and the
#: shell's for a command it could not run).
EXIT_LOADER = 127

_DISCARD_WAIT = 5.0  # seconds for a discarded worker to end (it dies with us anyway)
_FIRST_MESSAGE = 1 << 16  # the request's first bytes, sent with the descriptors


def interpreter_error(err: OSError) -> ConfinementError:
    """The worker's interpreter could not be started: a setup problem, said with the fix.

    The worker runs ``sys.executable``; an embedded interpreter has none, and a caller
    that changed its user (or a venv below a private home) may not be allowed to run it.
    """
    exe = sys.executable
    user = f"uid {os.geteuid()}"
    if not exe:
        what = "there is no Python interpreter to run it with (sys.executable is empty)"
    elif isinstance(err, FileNotFoundError):
        what = f"its interpreter {exe!r} (sys.executable) does not exist"
    elif isinstance(err, PermissionError):
        what = (f"{user} may not execute its interpreter {exe!r} (sys.executable): make it "
                "and its directories executable for this user")
    else:
        what = f"its interpreter {exe!r} (sys.executable) cannot be run: {err.strerror or err}"
    return ConfinementError(
        f"cannot start the worker: {what}; or run chrootarchive with a python3 that {user} "
        "can execute")


def loader_error() -> ConfinementError:
    """The worker's interpreter was executed, but the dynamic loader could not start it
    (a library not found): its environment is ``launch.ENV`` alone, so a library that
    the caller's interpreter finds through ``LD_LIBRARY_PATH`` is not found."""
    return ConfinementError(
        f"cannot start the worker: the dynamic loader could not start its interpreter "
        f"{sys.executable!r} (sys.executable; exit status {EXIT_LOADER}) as uid "
        f"{os.geteuid()}: the worker's environment has no LD_LIBRARY_PATH or LD_PRELOAD, "
        "so the interpreter must find its libraries itself (its rpath, or ldconfig)")


def cannot_import_error() -> ConfinementError:
    """The worker's interpreter started but could not import the package."""
    return ConfinementError(
        f"the worker's interpreter {sys.executable!r} cannot import chrootarchive from "
        f"{package_parent()!r} as uid {os.geteuid()}: make the package readable (and its "
        "directories searchable) for this user, or install it where this user can read it")


class Booted:
    """A worker interpreter, started and booting; it waits for its job on a socket.

    Args:
        job: a name of :data:`chrootarchive.contract.JOB_MODULES` (the worker imports
            its module as it boots).
        standby: booted ahead of a call (:mod:`chrootarchive.runner.standby`): its stderr is
            /dev/null until a call hands it the caller's.
    """

    proc: Process
    _control: _socket.socket | None

    def __init__(self, job: str, *, standby: bool = False) -> None:
        import subprocess  # not at the top: the command line's early start does without

        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM, 0)
        self._control = None
        proc = None
        try:
            # A KeyboardInterrupt inside Popen left the worker untracked (a zombie, its
            # descriptors): held back until it is ours, then raised here.
            with InterruptsHeld():
                try:
                    proc = subprocess.Popen(
                        command(theirs.fileno(), job),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL if standby else None,
                        pass_fds=(theirs.fileno(),),
                        env=ENV,
                    )
                finally:
                    theirs.close()
                self.proc = proc
                self._control = ours
                # The worker reads its job until EOF: no fork may hold it.
                _fdio.guard(ours.fileno())
        except BaseException:
            if proc is not None:
                self.discard()  # interrupted once it was started: kill and reap it
            ours.close()
            raise

    @classmethod
    def adopt(cls, proc: Process, control: _socket.socket) -> Booted:
        """A worker started otherwise (:func:`chrootarchive.runner.launch.spawn_early`),
        booting as a standby: it has /dev/null for stderr until it gets its job."""
        booted = cls.__new__(cls)
        booted.proc = proc
        booted._control = control
        return booted

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
            _fdio.unguard(control.fileno())
            control.close()

    def discard(self) -> None:
        """Let the worker go: kill it if it still runs, and reap it.

        Closing the control socket ends a worker that waits for its job by itself; the
        kill is for one still booting, and may be refused (EPERM) to a caller that has
        given up the uid it spawned the worker with.
        """
        self.forget()
        if self.proc.poll() is None:
            import subprocess

            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=_DISCARD_WAIT)

    def forget(self) -> None:
        """Close this process's end of the control socket (after a fork, say)."""
        if self._control is not None:
            _fdio.unguard(self._control.fileno())
            self._control.close()
            self._control = None
