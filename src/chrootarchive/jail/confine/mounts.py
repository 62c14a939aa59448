"""What the mechanisms need to know about mounts: procfs, sysfs and their kin inside the
destination, mount ids, and whether we already run in a user namespace (read from
``/proc``)."""

from __future__ import annotations

import errno
import os

from chrootarchive import _linux
from chrootarchive.errors import ConfinementError

__all__ = [
    "detach_proc_mounts",
    "devices_forbidden",
    "forbid_devices",
    "mount_id",
    "proc_mounts_below",
    "running_in_user_namespace",
]


def running_in_user_namespace() -> bool:
    """True inside a user namespace (the uid map is not the full identity map)."""
    try:
        with open("/proc/self/uid_map", "rb") as f:
            fields = f.read().split()
    except OSError:
        return False
    return fields != [b"0", b"0", b"4294967295"]


def mount_id(fd: int) -> bytes:
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return line.split()[1]
    raise OSError("no mnt_id in fdinfo")


_UMOUNT_NOFOLLOW = 8
#: The kernel's own file systems, as /proc/self/mountinfo names them (the types of
#: ``_linux.KERNEL_FILESYSTEMS``): detached from the jail, never written or walked.
KERNEL_FSTYPES = frozenset({
    b"proc", b"sysfs", b"binfmt_misc", b"debugfs", b"tracefs", b"securityfs", b"cgroup",
    b"cgroup2", b"bpf", b"configfs", b"efivarfs", b"pstore", b"fusectl", b"selinuxfs",
    b"smackfs",
})


def _unescape(field: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i] == 0x5C and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def detach_proc_mounts() -> None:
    """Detach every procfs, sysfs or kin mounted at or below the working directory.

    A live procfs inside the destination (a ``--pid=host`` container's ``/proc``) holds
    magic links such as ``/proc/PID/root`` that lead out of any jail; a sysfs (and the
    cgroup, debug or security file systems below it) is the kernel's state, which no
    archive may write. Call in a private mount namespace (nothing propagates back),
    before the jail is entered.
    """
    for rel in proc_mounts_below():
        while True:
            try:
                _linux.umount2(rel, _linux.MNT_DETACH | _UMOUNT_NOFOLLOW)
            except OSError as err:
                if err.errno in (errno.EINVAL, errno.ENOENT):
                    break  # not (or no longer) a mount point
                raise ConfinementError(
                    f"detaching the kernel file system at {rel!r} failed: {err.strerror}"
                ) from err


def proc_mounts_below() -> list[str]:
    """Mount points of the kernel's file systems (:data:`KERNEL_FSTYPES`) at or below the
    working directory, relative, deepest first."""
    here = os.getcwd()
    found: list[str] = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index(b"-")
            except ValueError:
                continue
            mount_point = _unescape(fields[4])
            fstype = fields[sep + 1]
            if fstype not in KERNEL_FSTYPES:
                continue
            if mount_point == here:
                raise ConfinementError(
                    f"the destination is a {os.fsdecode(fstype)} mount (the kernel's files)")
            if mount_point.startswith(here.rstrip("/") + "/"):
                found.append(os.path.relpath(mount_point, here))
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


_nodev = False


def forbid_devices() -> bool:
    """Make every mount of this process's mount namespace from ``/`` down ``nodev``.

    Only ever called in a mount namespace the worker made for itself (the change would
    otherwise reach every process of the namespace it shares). Then no device node in
    the jail can be opened, by a racer's swap or otherwise: the kernel refuses the open
    (EACCES) before the driver's ``open`` runs. Creating device nodes (``mknod``, for
    an archive that holds them) still works. Returns False where the kernel has no
    ``mount_setattr`` (Linux < 5.12) or refuses it.
    """
    global _nodev
    try:
        _linux.mount_setattr_nodev("/")
    except OSError:
        return False
    _nodev = True
    return True


def devices_forbidden() -> bool:
    """Whether :func:`forbid_devices` made this worker's mounts ``nodev``."""
    return _nodev
