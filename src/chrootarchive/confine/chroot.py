"""Mechanism ``chroot``: ``chroot(2)`` into the destination, then ``chdir("/")``.

The reference's fallback, used inside a user namespace or where the bind mount or
``pivot_root`` fails. Weaker than ``pivot``: the old root stays mounted, so the worker
must also give up CAP_SYS_CHROOT before it touches the archive.
"""

from __future__ import annotations

import os

from chrootarchive.errors import ConfinementError

__all__ = ["enter", "enter_cwd"]


def enter(root_fd: int) -> str:
    os.fchdir(root_fd)
    return enter_cwd()


def enter_cwd() -> str:
    """Chroot to the current directory (which the caller pinned with fchdir)."""
    try:
        os.chroot(".")
        os.chdir("/")
    except OSError as err:
        raise ConfinementError(f"chroot into the destination failed: {err.strerror}") from err
    return "chroot"
