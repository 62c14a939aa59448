"""Mechanism ``chroot``: ``chroot(2)`` into the destination, then ``chdir("/")``.

The reference's fallback, used inside a user namespace or where the bind mount or
``pivot_root`` fails. Weaker than ``pivot``: the old root stays mounted, so the worker
must also give up CAP_SYS_CHROOT before it touches the archive.
"""

from __future__ import annotations

import os

from chrootarchive import _linux
from chrootarchive.errors import ConfinementError
from chrootarchive.jail.confine import mounts

__all__ = ["enter", "enter_cwd"]


def enter(root_fd: int) -> str:
    """The forced ``chroot`` mechanism (root): a private mount namespace first where
    one can be made, so that a procfs or sysfs inside the destination can be detached
    (procfs's magic links lead out; sysfs is the kernel's state)."""
    os.fchdir(root_fd)
    try:
        _linux.unshare(_linux.CLONE_NEWNS)
        _linux.mount(None, "/", None, _linux.MS_SLAVE | _linux.MS_REC)
    except OSError as err:
        # chroot needs no namespace, unless there is a procfs or sysfs to hide.
        if mounts.proc_mounts_below():
            raise ConfinementError(
                "a procfs or sysfs is mounted inside the destination and no private mount "
                f"namespace can be made to detach it: {err.strerror}"
            ) from err
        return enter_cwd(own_mounts=False)
    mounts.detach_proc_mounts()
    return enter_cwd(own_mounts=True)


def enter_cwd(*, own_mounts: bool) -> str:
    """Chroot to the current directory (which the caller pinned with fchdir).

    ``own_mounts``: this process made the mount namespace it is in, so its mounts may
    be made ``nodev`` (a pack job refuses to start where they are not:
    :func:`chrootarchive.jail.confine.mounts.devices_forbidden`).
    """
    if own_mounts:
        mounts.forbid_devices()
    try:
        os.chroot(".")
        os.chdir("/")
    except OSError as err:
        raise ConfinementError(f"chroot into the destination failed: {err.strerror}") from err
    return "chroot"
