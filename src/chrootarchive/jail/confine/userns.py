"""Mechanism ``userns``: an unprivileged user gets the ``pivot`` jail in a user namespace.

The worker unshares a user and a mount namespace in which the caller is root, then
pivots as the ``pivot`` mechanism does. Where the caller has subordinate id ranges
(``/etc/subuid``, ``/etc/subgid``) and ``newuidmap``/``newgidmap`` exist, the parent maps
the whole range so that ownership inside the tree is kept; otherwise the caller alone
is mapped, and owners that cannot be represented are skipped with a warning.
"""

from __future__ import annotations

import errno
import os

from chrootarchive import _linux
from chrootarchive.contract import IdRange
from chrootarchive.errors import (
    ConfinementError,
    DestinationError,
    MechanismUnavailableError,
)
from chrootarchive.jail.confine import pivot

__all__ = ["IdMapRanges", "IdRanges", "enter", "map_ids", "outside_ids",
           "subordinate_ranges", "unavailable_reason"]

#: (uid start, uid count, gid start, gid count) of the caller's subordinate ranges.
IdRanges = tuple[int, int, int, int]
#: An id map as the kernel shows it: ranges of ids inside (``container_id``) and outside
#: (``host_id``), as an image's maps are.
IdMapRanges = tuple[IdRange, ...]

#: The uid and gid maps of the namespace :func:`enter` made, read before the pivot took
#: /proc away: what the owners seen inside are outside (``tar`` records those).
outside_ids: tuple[IdMapRanges, IdMapRanges] | None = None

_UNSUPPORTED = {errno.EPERM, errno.EINVAL, errno.ENOSPC, errno.EUSERS, errno.ENOSYS,
                errno.EACCES}


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def unavailable_reason() -> str | None:
    """A reason from the sysctls why user namespaces cannot work, or None to try."""
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        return "user namespaces are disabled (user.max_user_namespaces = 0)"
    if os.geteuid() != 0 and _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
    if (os.geteuid() != 0
            and _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1):
        return "AppArmor restricts unprivileged user namespaces"
    return None


def _user_name(uid: int) -> str | None:
    """The name of ``uid`` from /etc/passwd, read as a file (no NSS modules loaded)."""
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(":")
                if len(fields) > 2 and fields[2] == str(uid):
                    return fields[0]
    except OSError:
        return None
    return None


def _range(path: str, uid: int, name: str | None) -> tuple[int, int] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in (str(uid), name):
                    start, count = int(fields[1]), int(fields[2])
                    if count > 0:
                        return start, count
    except (OSError, ValueError):
        return None
    return None


def subordinate_ranges() -> IdRanges | None:
    """The caller's subordinate id ranges, when newuidmap/newgidmap can apply them."""
    import shutil  # parent side only: the worker does not load it

    if os.geteuid() == 0 or not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        return None
    uid = os.getuid()
    name = _user_name(uid)
    uids = _range("/etc/subuid", uid, name)
    gids = _range("/etc/subgid", uid, name)
    if uids is None or gids is None:
        return None
    return (*uids, *gids)


def map_ids(pid: int, ranges: IdRanges) -> None:
    """Parent side: map the caller to root and the subordinate ranges above it."""
    import subprocess  # parent side only: the worker does not load it

    ustart, ucount, gstart, gcount = ranges
    for tool, own, start, count in (("newuidmap", os.getuid(), ustart, ucount),
                                    ("newgidmap", os.getgid(), gstart, gcount)):
        proc = subprocess.run(
            [tool, str(pid), "0", str(own), "1", "1", str(start), str(count)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise ConfinementError(f"{tool} failed: {proc.stderr.strip() or proc.returncode}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_map(path: str) -> IdMapRanges:
    with open(path, "rb") as f:
        return tuple(IdRange(container_id=int(a), host_id=int(b), size=int(c))
                     for a, b, c in (line.split() for line in f.read().splitlines()))


def enter(root_fd: int, sync_fd: int | None) -> str:
    """Worker side: new user + mount namespace, ids mapped, then the pivot jail.

    Args:
        root_fd: the pinned destination.
        sync_fd: a socket to the parent, which maps the subordinate ranges; None to
            map the caller alone.
    """
    uid, gid = os.getuid(), os.getgid()
    os.fchdir(root_fd)
    try:
        _linux.unshare(_linux.CLONE_NEWUSER | _linux.CLONE_NEWNS)
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            raise MechanismUnavailableError(
                f"userns: creating a user namespace failed: {err.strerror}"
            ) from err
        raise ConfinementError(f"userns: unshare failed: {err.strerror}") from err
    try:
        if sync_fd is not None:
            try:
                os.write(sync_fd, b"U")
                reply = os.read(sync_fd, 4096)
            finally:
                os.close(sync_fd)
            if reply != b"M":
                raise ConfinementError("userns: the parent could not map the id ranges: "
                                       + reply[1:].decode(errors="replace"))
        else:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1\n")
            _write("/proc/self/gid_map", f"0 {gid} 1\n")
    except OSError as err:
        raise ConfinementError(f"userns: mapping ids failed: {err.strerror}") from err
    global outside_ids
    outside_ids = (_read_map("/proc/self/uid_map"), _read_map("/proc/self/gid_map"))
    try:
        used = pivot.pivot_cwd()
    except DestinationError:
        raise
    except ConfinementError as err:
        # Mounting denied inside the namespace (an LSM policy): the next rung may work.
        raise MechanismUnavailableError(f"userns: {err.message}") from err
    return "userns" if used == "pivot" else "userns-chroot"
