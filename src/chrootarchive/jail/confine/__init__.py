"""The confinement mechanisms: one module each, and how a worker enters one.

| mechanism | needs | how |
|---|---|---|
| ``pivot`` | root | mount namespace + ``pivot_root`` (falls back to ``chroot``) |
| ``chroot`` | root | ``chroot`` + ``chdir("/")`` |
| ``userns`` | user namespaces | user + mount namespace, caller mapped to root, pivot |
| ``openat2`` | Linux 5.6 | in-process, every path resolved with ``RESOLVE_IN_ROOT`` |

Each module says why it cannot work here (``unavailable_reason``); the worker enters
one with :func:`enter` before it reads a byte of the archive. ``openat2`` runs in the
caller's process instead (:mod:`chrootarchive.jail.confine.openat2`). The choice
between them, the ladder, is the parent's (:mod:`chrootarchive.runner.ladder`).
"""

from __future__ import annotations

import os

from chrootarchive import _host
from chrootarchive.contract import IN_PROCESS, MECHANISMS
from chrootarchive.errors import ConfinementError

__all__ = ["IN_PROCESS", "MECHANISMS", "enter", "import_all", "unavailable_reason"]


def import_all() -> None:
    """Import every mechanism a worker may enter: the worker does so as it boots,
    before the jail (imports are refused there). Not at this package's import: the
    parent asks only :func:`unavailable_reason`, and as root that needs no ``_linux``."""
    from chrootarchive.jail.confine import chroot, mounts, pivot, userns  # noqa: F401


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot work for this process, or None if it may (not cached here)."""
    machine = _host.unsupported_machine()
    if machine:
        return machine
    if name in ("pivot", "chroot"):
        if os.geteuid() != 0:
            return "needs root (CAP_SYS_ADMIN for pivot, CAP_SYS_CHROOT for chroot)"
        return None
    if name == "userns":
        from chrootarchive.jail.confine import userns

        return userns.unavailable_reason()
    if name == "openat2":
        from chrootarchive.jail.confine import openat2  # parent side only

        return openat2.unavailable_reason()
    return "unknown mechanism"


def enter(name: str, root_fd: int, sync_fd: int | None = None) -> str:
    """Confine the calling (worker) process to the directory ``root_fd``.

    Afterwards ``/`` and the working directory are that directory. Returns the mechanism
    actually used: ``pivot`` falls back to ``chroot`` where Docker's does.
    """
    from chrootarchive.jail.confine import chroot, pivot, userns  # loaded by import_all()

    if name == "pivot":
        return pivot.enter(root_fd)
    if name == "chroot":
        return chroot.enter(root_fd)
    if name == "userns":
        return userns.enter(root_fd, sync_fd)
    raise ConfinementError(f"mechanism {name!r} cannot run in a worker")
