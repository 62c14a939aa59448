"""Mechanism ``pivot``: a private mount namespace and ``pivot_root`` into the destination.

The steps of Docker's ``chroot_linux.go``: new mount namespace; ``/`` made rslave (not
private, so that unmounts on the host still reach us and nothing stays pinned); the
destination bind-mounted on itself when it is not a mount point; ``pivot_root``; the old
root made private and detached. It falls back to ``chroot`` where the reference does:
inside a user namespace, when the bind mount fails, when ``pivot_root`` fails.

Unlike the reference, the old root is not put in a temporary directory made in the
destination (``.pivot_root*``) but stacked on the new root (``pivot_root(".", ".")``,
as runc does) and detached from there: nothing is written into the destination before
the archive is, and a worker killed at that moment leaves nothing behind.

Unlike the reference, the destination is never looked up by path here: the worker
inherits a descriptor pinned by the parent and works from ``fchdir`` of it
(``unshare`` carries the working directory into the new namespace), so nobody can swap
a path component for a symlink between the parent's check and the jail.
"""

from __future__ import annotations

import os

from chrootarchive import _linux
from chrootarchive.errors import ConfinementError
from chrootarchive.jail.confine import chroot, mounts

__all__ = ["enter", "pivot_cwd"]


def _cwd_is_mount_root() -> bool:
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            a, b = os.fstat(here), os.fstat(parent)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                return True  # the root of the namespace
            return mounts.mount_id(here) != mounts.mount_id(parent)
        finally:
            os.close(parent)
    finally:
        os.close(here)


def _bind_cwd_onto_itself() -> None:
    """Bind-mount the working directory on itself and move into the new mount."""
    tree = _linux.open_tree_clone_cwd()
    try:
        _linux.move_mount_onto_cwd(tree)
        os.fchdir(tree)
    finally:
        os.close(tree)


def enter(root_fd: int) -> str:
    os.fchdir(root_fd)
    if mounts.running_in_user_namespace():
        return chroot.enter_cwd(own_mounts=False)
    try:
        _linux.unshare(_linux.CLONE_NEWNS)
    except OSError as err:
        raise ConfinementError(
            f"creating a mount namespace before pivot failed: {err.strerror}"
        ) from err
    return pivot_cwd()


def pivot_cwd() -> str:
    """In a fresh mount namespace: jail the process at its working directory.

    Returns ``pivot``, or ``chroot`` where the reference falls back to it.
    """
    try:
        _linux.mount(None, "/", None, _linux.MS_SLAVE | _linux.MS_REC)
    except OSError as err:
        raise ConfinementError(f"making / rslave failed: {err.strerror}") from err
    mounts.detach_proc_mounts()
    if not _cwd_is_mount_root():
        try:
            _bind_cwd_onto_itself()
        except OSError:
            return chroot.enter_cwd(own_mounts=True)
    old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            # The old root ends up mounted on top of the new one, at the same place.
            _linux.pivot_root(".", ".")
        except OSError:
            return chroot.enter_cwd(own_mounts=True)
        os.fchdir(old_root)  # "." is now the old root's mount, on top
    finally:
        os.close(old_root)
    try:
        # Private first, so that detaching it does not propagate anywhere.
        _linux.mount(None, ".", None, _linux.MS_PRIVATE | _linux.MS_REC)
        _linux.umount2(".", _linux.MNT_DETACH)
        os.chdir("/")  # the new root, now uncovered
    except OSError as err:
        raise ConfinementError(f"detaching the old root after pivot failed: {err}") from err
    mounts.forbid_devices()  # a pack job refuses to start without it
    return "pivot"
