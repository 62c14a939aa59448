"""Mechanism ``pivot``: a private mount namespace and ``pivot_root`` into the destination.

The steps of Docker's ``chroot_linux.go``: new mount namespace; ``/`` made rslave (not
private, so that unmounts on the host still reach us and nothing stays pinned); the
destination bind-mounted on itself when it is not a mount point; ``pivot_root`` with the
old root in a temporary directory inside the destination; the old root made private and
detached; the directory removed. It falls back to ``chroot`` where the reference does:
inside a user namespace, when the bind mount fails, when ``pivot_root`` fails.

Unlike the reference, the destination is never looked up by path here: the worker
inherits a descriptor pinned by the parent and works from ``fchdir`` of it
(``unshare`` carries the working directory into the new namespace), so nobody can swap
a path component for a symlink between the parent's check and the jail.
"""

from __future__ import annotations

import errno
import os

from chrootarchive import _linux
from chrootarchive.errors import ConfinementError, DestinationError
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


def _make_pivot_dir() -> str:
    """A fresh, private directory in the cwd for the old root (``mkdtemp``, without
    importing ``tempfile`` and ``random`` into the worker)."""
    for _ in range(100):
        name = ".pivot_root" + os.urandom(6).hex()
        try:
            os.mkdir(name, 0o700)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no unused name for the pivot directory")


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
    try:
        pivot_dir = _make_pivot_dir()
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise DestinationError(f"cannot write to the destination: {err.strerror}") from err
        raise ConfinementError(f"setting up the pivot directory failed: {err.strerror}") from err
    try:
        _linux.pivot_root(".", pivot_dir)
    except OSError:
        try:
            os.rmdir(pivot_dir)
        except OSError as err:
            raise ConfinementError(
                f"cleaning up after a failed pivot failed: {err.strerror}"
            ) from err
        return chroot.enter_cwd(own_mounts=True)
    old_root = "/" + pivot_dir
    mounted = True
    try:
        os.chdir("/")
        _linux.mount(None, old_root, None, _linux.MS_PRIVATE | _linux.MS_REC)
        _linux.umount2(old_root, _linux.MNT_DETACH)
        mounted = False
    except OSError as err:
        raise ConfinementError(f"detaching the old root after pivot failed: {err}") from err
    finally:
        if mounted:
            try:
                _linux.umount2(old_root, _linux.MNT_DETACH)
                mounted = False
            except OSError:
                pass
        if not mounted:
            try:
                os.rmdir(old_root)
            except OSError as err:
                raise ConfinementError(
                    f"cleaning up after pivot failed: {err.strerror}"
                ) from err
    mounts.forbid_devices()  # a pack job refuses to start without it
    return "pivot"
