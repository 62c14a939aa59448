"""How a worker interpreter is started, with nothing but ``os``: the command line
starts its worker first thing, before its own imports.

A one-file ``chrootarchive untar`` runs two interpreters, the command line's and the
worker's, and each spends most of its start importing. The command line therefore
starts its worker before it imports anything else (:func:`spawn_early`), and the two
start in parallel on two cores; the worker then waits for its job as a standby of the
calling thread (:func:`chrootarchive.runner.standby.adopt`). This module loads nothing
the interpreter has not loaded already, so that the spawn comes first: no
``subprocess`` (``os.posix_spawn`` instead), no ``threading`` (``_thread``), no
``signal`` (``_signal``: ``signal`` loads ``enum``).

The worker's command and environment are written here once, for both ways of starting
it (:class:`chrootarchive.runner.spawn.Booted` uses ``subprocess`` for the library's
calls: it closes descriptors race-free in a threaded caller).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal, without its enum
import _socket
import _thread
import os
import resource
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["ENV", "EXIT_NO_PACKAGE", "Child", "InterruptsHeld", "command", "context",
           "package_parent", "spawn_early"]

#: The worker's exit status when its interpreter cannot import the package.
EXIT_NO_PACKAGE = 119
#: The worker's whole environment.
ENV = {"LC_ALL": "C.UTF-8"}

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "try:\n"
    " from chrootarchive.jail.main import child_main\n"
    "except (ImportError, OSError):\n"
    f" sys.exit({EXIT_NO_PACKAGE})\n"
    "child_main(sys.argv[2:])"
)

_STATUS_FIELDS = (
    b"Uid:", b"Gid:", b"Groups:", b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:",
    b"CapAmb:", b"NoNewPrivs:", b"Seccomp:", b"Seccomp_filters:", b"Speculation_Store",
    b"Cpus_allowed:", b"Mems_allowed:",
)
_NAMESPACES = ("mnt", "user", "pid_for_children", "net", "ipc", "uts", "cgroup",
               "time_for_children")
_SIGINT: int = _signal.SIGINT
_SIGKILL: int = _signal.SIGKILL
_SIGPIPE: int = _signal.SIGPIPE
_SIGXFSZ: int = _signal.SIGXFSZ
_RLIMITS = tuple(getattr(resource, name) for name in sorted(dir(resource))
                 if name.startswith("RLIMIT_"))


def package_parent() -> str:
    """The directory the worker imports ``chrootarchive`` from: the parent's own."""
    # src/chrootarchive/runner/launch.py -> src
    here = os.path.abspath(__file__)
    return os.path.dirname(os.path.dirname(os.path.dirname(here)))


def command(control_fd: int, job: str) -> list[str]:
    """The worker's command line: ``python -I -S`` (no site, no environment, no user
    paths), its control socket, our pid (it dies with us) and its job."""
    return [sys.executable, "-I", "-S", "-c", _BOOT, package_parent(), str(control_fd),
            str(os.getpid()), job]


def _read(path: str, fields: tuple[bytes, ...] = ()) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if fields:
        return b"".join(line for line in data.splitlines(True) if line.startswith(fields))
    return data


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def context() -> tuple[object, ...]:
    """What a worker inherits from the calling thread, as far as it matters: a standby
    is used only while this is unchanged (:mod:`chrootarchive.runner.standby`)."""
    root = os.stat("/")
    return (
        os.getpid(),
        _thread.get_native_id(),
        os.getresuid(),
        os.getresgid(),
        tuple(os.getgroups()),
        _read("/proc/thread-self/status", _STATUS_FIELDS),
        _read("/proc/self/cgroup"),
        _read("/proc/thread-self/attr/current"),
        tuple(_readlink(f"/proc/thread-self/ns/{name}") for name in _NAMESPACES),
        (root.st_dev, root.st_ino),
        tuple(resource.getrlimit(limit) for limit in _RLIMITS),
        os.getpriority(os.PRIO_PROCESS, 0),
    )


class InterruptsHeld:
    """SIGINT (Ctrl-C, ``_thread.interrupt_main``) held back across a spawn and the
    bookkeeping that tracks the child: a KeyboardInterrupt raised inside
    ``subprocess.Popen`` (or between ``posix_spawn`` and our record of its pid) left
    the child untracked, a zombie, with its descriptors. On exit the caller's handler
    is put back and then given the signal held, if one came: the default one raises
    KeyboardInterrupt there, once the child is tracked, and the caller's cleanup kills
    and reaps it.

    Only in the main thread (Python runs signal handlers there alone), and only over a
    handler of Python's (one set to ignore, or left to the kernel, is not changed).
    """

    def __init__(self) -> None:
        self._old: Callable[[int, object], object] | None = None
        self._held: tuple[int, object] | None = None

    def _hold(self, signum: int, frame: object) -> None:
        self._held = (signum, frame)

    def __enter__(self) -> InterruptsHeld:
        old = _signal.getsignal(_SIGINT)
        if callable(old):
            try:
                _signal.signal(_SIGINT, self._hold)
            except ValueError:
                return self  # not the main thread: no handler runs here
            self._old = old
        return self

    def __exit__(self, *exc: object) -> None:
        old, self._old = self._old, None
        if old is None:
            return
        _signal.signal(_SIGINT, old)
        held, self._held = self._held, None
        if held is not None:
            old(*held)  # the default handler raises KeyboardInterrupt


class Child:
    """A process we spawned with ``os.posix_spawn``: what the runner uses of
    ``subprocess.Popen`` (``pid``, ``returncode``, ``poll``, ``wait``, ``kill``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reaped(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:
                return self.returncode  # reaped elsewhere; nothing more to learn
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reaped(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            code = self._reaped(0)
        else:
            import time

            deadline = time.monotonic() + timeout
            while (code := self._reaped(os.WNOHANG)) is None:
                if time.monotonic() >= deadline:
                    import subprocess

                    raise subprocess.TimeoutExpired(str(self.pid), timeout)
                time.sleep(0.001)
        return -1 if code is None else code

    def kill(self) -> None:
        if self.returncode is None:
            try:  # noqa: SIM105 - contextlib is not loaded on this path (the start)
                os.kill(self.pid, _SIGKILL)
            except ProcessLookupError:
                pass  # reaped, by a wait that a signal handler's exception cut short


def _inherited_fds(keep: Sequence[int]) -> list[int] | None:
    """Our descriptors that a spawned program would inherit, but for ``keep`` and
    0-2; None if /proc cannot say."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    found = []
    for name in names:
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:
                pass  # the listing's own descriptor, closed since
    return found


def spawn_early(job: str) -> tuple[Child, _socket.socket] | None:
    """Start a worker for ``job`` now, before the caller imports anything: the child
    and our end of its control socket, or None if it was not started (the call then
    spawns its worker as usual).

    The worker gets what :class:`chrootarchive.runner.spawn.Booted` gives a standby:
    the same command and environment, /dev/null as stdin, stdout and stderr, its
    control socket and no other descriptor (each one we would pass on is closed in
    the child). Meant for a program's single thread (the command line's start): the
    descriptors are listed before the spawn.
    """
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM, 0)
    try:
        fd = theirs.fileno()
        leaks = _inherited_fds((fd,))
        if leaks is None or min(fd, ours.fileno()) <= 2:
            ours.close()  # no /proc; or stdin, stdout or stderr was closed (a daemon's)
            return None
        os.set_inheritable(fd, True)
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_CLOSE, leak) for leak in leaks]
        actions += [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
        child: Child | None = None
        try:
            with InterruptsHeld():  # a Ctrl-C now would leave the child untracked
                child = Child(os.posix_spawn(sys.executable, command(fd, job), ENV,
                                             file_actions=actions,
                                             setsigdef=(_SIGPIPE, _SIGXFSZ)))
        except BaseException as err:
            ours.close()  # a worker started ends at the end of its control socket
            if child is not None:  # interrupted once it was started: it goes now
                child.kill()
                child.wait()
            elif isinstance(err, OSError):
                return None
            raise
    finally:
        theirs.close()
    return child, ours
