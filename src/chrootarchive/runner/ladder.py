"""The ladder: which confinement mechanism a call uses, and the one way to start a job.

"Not supported" is learned once per process (:func:`mark_unavailable`); success is
never cached, and any other error from the kernel is reported, never hidden by falling
through to a weaker rung.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from chrootarchive import _host
from chrootarchive.contract import JobReply, JobRequest
from chrootarchive.errors import ConfinementError, MechanismUnavailableError
from chrootarchive.jail import confine
from chrootarchive.jail.confine import IN_PROCESS, MECHANISMS
from chrootarchive.runner import pump, settings, standby
from chrootarchive.runner.worker import Running, Worker

__all__ = [
    "LADDER", "candidates", "check", "mark_unavailable", "run", "run_ladder", "start",
    "unavailable_summary",
]

TYPE_CHECKING = False  # no typing at run time: the command line's start (issue 16)
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

#: What ``auto`` tries, strongest first (``chroot`` is pivot's own fallback).
LADDER = ("pivot", "userns", "openat2")

_learned: dict[str, str] = {}


def mark_unavailable(name: str, reason: str) -> None:
    """Remember for this process that ``name`` is not supported here."""
    _learned[name] = reason


def _unavailable_reason(name: str) -> str | None:
    return _learned.get(name) or confine.unavailable_reason(name)


def candidates(requested: str = "auto") -> list[str]:
    """The mechanisms to try for ``requested`` (``auto`` or a name), in order.

    Raises:
        ConfinementError: nothing usable; the message lists each mechanism and why
            (or, on a machine whose system calls are not known, says that once).
    """
    machine = _host.unsupported_machine()
    if machine:
        raise ConfinementError(machine)
    if requested != "auto":
        if requested not in MECHANISMS:
            raise ConfinementError(
                f"unknown confinement mechanism {requested!r} "
                f"(choose from: auto, {', '.join(MECHANISMS)})"
            )
        reason = _unavailable_reason(requested)
        if reason:
            raise MechanismUnavailableError(
                f"confinement {requested!r} is not available: {reason}"
            )
        return [requested]
    found = [name for name in LADDER if _unavailable_reason(name) is None]
    if not found:
        raise ConfinementError(unavailable_summary())
    return found


def check(requested: str = "auto") -> None:
    """Raise what :func:`candidates` raises when nothing is usable, looking no further
    than the first usable rung."""
    next(_rungs(requested))


def _rungs(requested: str) -> Iterator[str]:
    """:func:`candidates`, one at a time: a rung below the first that works is never
    examined (``openat2``'s check imports the in-process runner: start-up, issue 16)."""
    if requested != "auto":
        yield from candidates(requested)
        return
    machine = _host.unsupported_machine()
    if machine:
        raise ConfinementError(machine)
    found = False
    for name in LADDER:
        if _unavailable_reason(name) is None:
            found = True
            yield name
    if not found:
        raise ConfinementError(unavailable_summary())


def unavailable_summary(extra: dict[str, str] | None = None) -> str:
    """One line: each rung of the ladder and why it could not be used."""
    reasons = []
    for name in LADDER:
        reason = (extra or {}).get(name) or _unavailable_reason(name) or "failed"
        reasons.append(f"{name}: {reason}")
    return "no confinement mechanism is available (" + "; ".join(reasons) + ")"


def run_ladder(
    requested: str, attempt: Callable[[str], T], mechanisms: Sequence[str] | None = None
) -> T:
    """Return ``attempt(mechanism)`` for the first mechanism the kernel accepts.

    ``mechanisms`` defaults to :func:`candidates`. A rung that raises
    :class:`MechanismUnavailableError` is learned as unavailable and, with ``auto``, the
    next one is tried; any other error is the caller's. With no rung left, the error
    names every rung and why.
    """
    refused: dict[str, str] = {}
    for mechanism in _rungs(requested) if mechanisms is None else mechanisms:
        try:
            return attempt(mechanism)
        except MechanismUnavailableError as err:
            if requested != "auto":
                raise
            mark_unavailable(mechanism, err.message)
            refused[mechanism] = err.message
    raise ConfinementError(unavailable_summary(refused))


def start(root_fd: int, request: JobRequest, *, stdin: int | None = None,
          stdout_pipe: bool = False, channel: int | None = None,
          ring: bool = False, prepare: Callable[[], None] | None = None) -> Running:
    """Start ``request`` with its mechanism: a jailed worker, or the in-process runner.

    Either way the caller gets the same interface (:class:`Running`), confined and
    ready to be fed (``stdin_w``, or ``ring``) or read (``stdout_r``). ``channel``: the
    job's end of a layer channel (borrowed), for a stack of layers. ``ring``: feed a
    worker through a ring (:mod:`chrootarchive._ring`) rather than a pipe.
    ``prepare``: called once the job is handed over, while the worker confines itself
    (it must read no data: the next rung may need it all).
    """
    running: Running
    if settings.debug() and not request.debug:
        request = request.replace(debug=True)
    if request.mechanism in IN_PROCESS:
        from chrootarchive.jail.confine.openat2 import InProcess

        running = InProcess(root_fd, request, stdin=stdin, stdout_pipe=stdout_pipe,
                            channel=channel)
    else:
        running = Worker(root_fd, request, stdin=stdin, stdout_pipe=stdout_pipe,
                         channel=channel, ring=ring)
    try:
        if prepare is not None:
            prepare()
        running.wait_ready()
    except BaseException:
        running.close()
        raise
    return running


def run(root_fd: int, request: JobRequest, data: int | Iterable[bytes], requested: str,
        *, offset_progress: Callable[[int], None] | None = None,
        names: Callable[[str], None] | None = None) -> JobReply:
    """Run ``request``, reading ``data`` (a readable fd, or chunks that are fed), with
    the first mechanism of the ladder that the kernel accepts.

    The job says when it is confined before it reads any data, so a mechanism the
    kernel refuses ("not supported") costs nothing and the next rung is tried.
    ``offset_progress``: for an fd, called with the bytes the job read, now and then.
    ``names``: told each name the job lists (an unpack with ``verbose``).
    """

    stdin = data if isinstance(data, int) else None
    # Chunks to unpack go through a ring: the worker reads them as a file, so its files
    # can be extents, as from a plain tar in a file (chrootarchive._ring).
    ring = stdin is None and request.job == "unpack" and not request.stack
    # A decoder made while the worker confines itself (operations.compression's).
    prepare = None if isinstance(data, int) else getattr(data, "prepare_decoder", None)

    def attempt(mechanism: str) -> JobReply:
        return pump.drive(
            lambda: start(root_fd, request.replace(mechanism=mechanism), stdin=stdin,
                          stdout_pipe=names is not None, ring=ring, prepare=prepare),
            data, offset_progress, names)

    try:
        return run_ladder(requested, attempt)
    except BaseException:
        standby.drop_own()  # a failed call leaves no process behind
        raise
