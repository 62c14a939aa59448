"""Confinement mechanisms and the choice between them (the ladder).

| mechanism | needs | how |
|---|---|---|
| ``pivot`` | root | mount namespace + ``pivot_root`` (falls back to ``chroot``) |
| ``chroot`` | root | ``chroot`` + ``chdir("/")`` |
| ``userns`` | user namespaces | user + mount namespace, caller mapped to root, pivot |
| ``openat2`` | Linux 5.6 | in-process, every path resolved with ``RESOLVE_IN_ROOT`` |

The parent chooses (:func:`candidates`); the worker enters a mechanism (:func:`enter`)
before it reads a byte of the archive. "Not supported" is learned once per process
(:func:`mark_unavailable`); success is never cached, and any other error from the
kernel is reported, never hidden by falling through to a weaker rung.
"""

from __future__ import annotations

import os

from chrootarchive.engine import fsops
from chrootarchive.errors import ConfinementError, MechanismUnavailableError
from chrootarchive.jail.confine import chroot, pivot, userns

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    T = TypeVar("T")

__all__ = [
    "IN_PROCESS", "LADDER", "MECHANISMS", "candidates", "enter", "mark_unavailable",
    "run_ladder",
]

MECHANISMS = ("pivot", "chroot", "userns", "openat2")
#: What ``auto`` tries, strongest first (``chroot`` is pivot's own fallback).
LADDER = ("pivot", "userns", "openat2")
#: Mechanisms that run in the caller's process instead of a worker.
IN_PROCESS = frozenset({"openat2"})

_learned: dict[str, str] = {}


def mark_unavailable(name: str, reason: str) -> None:
    """Remember for this process that ``name`` is not supported here."""
    _learned[name] = reason


def _unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot work for this process, or None if it may."""
    if name in _learned:
        return _learned[name]
    if name in ("pivot", "chroot"):
        if os.geteuid() != 0:
            return "needs root (CAP_SYS_ADMIN for pivot, CAP_SYS_CHROOT for chroot)"
        return None
    if name == "userns":
        return userns.unavailable_reason()
    if name == "openat2":
        return fsops.openat2_unavailable_reason()
    return "unknown mechanism"


def candidates(requested: str = "auto") -> list[str]:
    """The mechanisms to try for ``requested`` (``auto`` or a name), in order.

    Raises:
        ConfinementError: nothing usable; the message lists each mechanism and why.
    """
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
    for mechanism in candidates(requested) if mechanisms is None else mechanisms:
        try:
            return attempt(mechanism)
        except MechanismUnavailableError as err:
            if requested != "auto":
                raise
            mark_unavailable(mechanism, err.message)
            refused[mechanism] = err.message
    raise ConfinementError(unavailable_summary(refused))


def enter(name: str, root_fd: int, sync_fd: int | None = None) -> str:
    """Confine the calling (worker) process to the directory ``root_fd``.

    Afterwards ``/`` and the working directory are that directory. Returns the mechanism
    actually used: ``pivot`` falls back to ``chroot`` where Docker's does.
    """
    if name == "pivot":
        return pivot.enter(root_fd)
    if name == "chroot":
        return chroot.enter(root_fd)
    if name == "userns":
        return userns.enter(root_fd, sync_fd)
    raise ConfinementError(f"mechanism {name!r} cannot run in a worker")
