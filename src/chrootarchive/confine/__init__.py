"""Confinement mechanisms and the choice between them.

The parent chooses a mechanism by name (:func:`choose`); the worker enters it
(:func:`enter`) before it reads a single byte of the archive. Each mechanism lives in
its own module. "Not available" is learned once per process; any other error from the
kernel is reported, never hidden by falling through to a weaker rung.
"""

from __future__ import annotations

import os

from chrootarchive.errors import ConfinementError

from . import chroot, pivot

__all__ = ["MECHANISMS", "choose", "enter"]

MECHANISMS = ("pivot", "chroot")


def _unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot work for this process, or None if it may."""
    if name in ("pivot", "chroot"):
        if os.geteuid() != 0:
            return "needs root (CAP_SYS_ADMIN for pivot, CAP_SYS_CHROOT for chroot)"
        return None
    return "unknown mechanism"


def choose(requested: str = "auto") -> str:
    """Return the mechanism to use for ``requested`` (``auto`` or a name).

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
            raise ConfinementError(f"confinement {requested!r} is not available: {reason}")
        return requested
    reasons = []
    for name in MECHANISMS:
        reason = _unavailable_reason(name)
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    raise ConfinementError("no confinement mechanism is available (" + "; ".join(reasons) + ")")


def enter(name: str, root_fd: int) -> str:
    """Confine the calling (worker) process to the directory ``root_fd``.

    Afterwards ``/`` and the working directory are that directory. Returns the mechanism
    actually used: ``pivot`` falls back to ``chroot`` where Docker's does.
    """
    if name == "pivot":
        return pivot.enter(root_fd)
    if name == "chroot":
        return chroot.enter(root_fd)
    raise ConfinementError(f"unknown confinement mechanism {name!r}")
