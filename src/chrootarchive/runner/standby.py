"""Standby workers: a worker interpreter booted ahead of a thread's next unpack.

Starting the worker's interpreter and importing the unpacker is most of the time of a
small unpack (about 15 ms of 20 on a 2-core VM). A thread that unpacks more than once
keeps one worker booted ahead: spawned right after the thread's current worker got its
job, it imports everything, then waits on its control socket. It has read no input,
holds nothing but that socket, /dev/null and the interpreter's own files, and is not
confined yet: the hand-over (:meth:`chrootarchive.runner.worker.Booted.hand_over`) gives it
exactly what a worker spawned for the call gets, and from there the two are the same.
A thread holds at most one standby a job: the command line starts the worker of each
job its arguments name before its imports (``cp SRC DST``: a pack and an unpack).

A standby is used only when nothing it inherited can differ from what a worker spawned
now would inherit (:func:`_context`): the same process (not a fork of it) and thread
(it dies with the thread that spawned it: ``PR_SET_PDEATHSIG``; and it is reaped then,
not left a zombie holding a socket: :class:`_ThreadEnd`), credentials,
capabilities, ``no_new_privs`` and seccomp, namespaces, cgroup, security label, root
directory, resource limits, niceness and CPU affinity. Otherwise it is killed and a
worker is spawned as usual. A call that fails lets its thread's standby go, so that
bad input leaves no process behind. :func:`set_standby` (or ``CHROOTARCHIVE_STANDBY=0`` in the
environment) turns standbys off for a program; at exit, they are killed.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable

from chrootarchive.runner.launch import InterruptsHeld
from chrootarchive.runner.launch import context as _context

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # no typing at run time (start-up): a plain class stands in

__all__ = [
    "Booted", "adopt", "descriptors", "drop_own", "enabled", "none_ahead", "replenish", "running",
    "set_standby", "stop_all", "take",
]

#: Jobs worth a standby: those a program runs many times (layers, small archives).
JOBS = frozenset({"unpack"})


class Booted(Protocol):
    """A worker that has booted and waits for its job (see :mod:`chrootarchive.runner.worker`)."""

    def alive(self) -> bool: ...

    def pid(self) -> int: ...

    def control_fd(self) -> int: ...

    def discard(self) -> None: ...

    def forget(self) -> None: ...


class _Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enabled = os.environ.get("CHROOTARCHIVE_STANDBY", "1") != "0"
        self.ahead = True  # replenish() may boot one (none_ahead())
        # (native thread id, job) -> (context when spawned, job, worker): one a job
        # (``cp`` starts the workers of its pack and of its unpack together)
        self.standbys: dict[tuple[int, str], tuple[tuple[object, ...], str, Booted]] = {}


_registry = _Registry()
_calls = threading.local()
_inherited: list[Booted] = []  # a fork's copies of its parent's standbys, never used


def set_standby(enabled: bool) -> None:
    """Keep standby workers (the default) or not, and stop those kept.

    Turn them off in a program that must have no child process between calls, or
    that changes its identity in ways :func:`_context` does not see.
    """
    with _registry.lock:
        _registry.enabled = enabled
    if not enabled:
        stop_all()


def none_ahead() -> None:
    """Boot no worker ahead of a thread's next call (:func:`replenish`) from now on:
    for a command line, which runs the jobs its arguments name and exits (``cp``
    makes two calls, and a third worker, booted for a call that never came, took a
    core from the second and was killed at exit). Its early worker (:func:`adopt`)
    is kept and used."""
    with _registry.lock:
        _registry.ahead = False


def running() -> list[int]:
    """The process ids of the standby workers kept now (for tests and diagnostics)."""
    with _registry.lock:
        return [booted.pid() for _c, _j, booted in _registry.standbys.values()]


def descriptors() -> list[int]:
    """The descriptors this process holds for its standby workers (their control
    sockets): kept open between calls on purpose."""
    with _registry.lock:
        return [fd for _c, _j, booted in _registry.standbys.values()
                if (fd := booted.control_fd()) >= 0]


def stop_all() -> None:
    """Kill every standby worker (at exit, and when standbys are turned off)."""
    with _registry.lock:
        entries = list(_registry.standbys.values())
        _registry.standbys.clear()
    for _context_then, _job, booted in entries:
        booted.discard()


def drop_own() -> None:
    """Let this thread's standbys go (after a failed call: an error leaves no process)."""
    _drop(threading.get_native_id())


def _drop(tid: int) -> None:
    with _registry.lock:
        entries = [_registry.standbys.pop(key) for key in list(_registry.standbys)
                   if key[0] == tid]
    for _context_then, _job, booted in entries:
        booted.discard()


class _ThreadEnd:
    """Kept in the local storage of a thread that has a standby, which Python frees
    when the thread ends: the standby (which the kernel kills then) is reaped and its
    socket closed at once. Else each ended thread of a pool left a zombie and a
    descriptor until some other thread's next call."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.tid = threading.get_native_id()

    def __del__(self) -> None:
        try:
            if os.getpid() == self.pid:  # in a fork, the standbys are the parent's
                _drop(self.tid)
        except Exception:  # the interpreter's end: atexit has stopped them all
            pass


def take(job: str) -> Booted | None:
    """This thread's standby for ``job``, if it is alive and nothing has changed."""
    key = (threading.get_native_id(), job)
    with _registry.lock:
        entry = _registry.standbys.pop(key, None)  # one for another job is kept for it
        dead = [k for k, (_c, _j, b) in _registry.standbys.items() if not b.alive()]
        gone = [_registry.standbys.pop(k)[2] for k in dead]  # threads that ended
    for booted in gone:
        booted.discard()
    if entry is None:
        return None
    context, _job, booted = entry
    if not booted.alive() or context != _context():
        booted.discard()
        return None
    return booted


def replenish(job: str, spawn: Callable[[], Booted]) -> None:
    """After this thread's worker got its job: boot one for the thread's next call.

    Only from a thread's second call on, so that a program (or a thread) that unpacks
    once never pays for a worker it will not use.
    """
    calls = getattr(_calls, "count", 0) + 1
    _calls.count = calls
    if calls < 2 or job not in JOBS:
        return
    key = (threading.get_native_id(), job)
    with _registry.lock:
        if not (_registry.enabled and _registry.ahead) or key in _registry.standbys:
            return
    context = _context()
    # Spawned and registered with interrupts held: a KeyboardInterrupt between the two
    # left the worker untracked (a process and a socket, until the garbage collector).
    with InterruptsHeld():
        try:
            booted: Booted | None = spawn()
        except OSError:
            return  # only a head start was lost: the next call spawns its worker itself
        with _registry.lock:
            if _registry.enabled and key not in _registry.standbys and booted is not None:
                _registry.standbys[key] = (context, job, booted)
                booted = None
        if booted is not None:
            booted.discard()
        else:
            _watch_thread_end()


def enabled() -> bool:
    """Whether standbys are kept (:func:`set_standby`, ``CHROOTARCHIVE_STANDBY``)."""
    with _registry.lock:
        return _registry.enabled


def adopt(job: str, context: tuple[object, ...], booted: Booted) -> None:
    """Keep ``booted`` as this thread's standby for its next call of ``job``: a worker
    the caller started for a call it is about to make (the command line starts its
    workers before its own imports: :func:`chrootarchive.runner.launch.spawn_early`).

    ``context`` is :func:`_context` taken before that worker was spawned; the call uses
    it only if that is still so (:func:`take`), as with any standby.
    """
    key = (threading.get_native_id(), job)
    with _registry.lock:
        kept = _registry.enabled and key not in _registry.standbys
        if kept:
            _registry.standbys[key] = (context, job, booted)
    if kept:
        _watch_thread_end()
    else:
        booted.discard()


def _watch_thread_end() -> None:
    """This thread has a standby: let it go when the thread ends (:class:`_ThreadEnd`)."""
    end = getattr(_calls, "end", None)
    if end is None or end.pid != os.getpid():
        _calls.end = _ThreadEnd()


def _after_fork_in_child() -> None:
    """A fork's standbys are its parent's children: never use, wait for or kill them."""
    global _registry
    old = _registry
    _registry = _Registry()
    _registry.enabled, _registry.ahead = old.enabled, old.ahead
    for _context_then, _job, booted in old.standbys.values():
        booted.forget()
        _inherited.append(booted)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(stop_all)
