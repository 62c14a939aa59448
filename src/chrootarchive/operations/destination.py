"""The destination, pinned: opened once, locked, created as Docker creates it.

Everything after :func:`pin_destination` works from the descriptor it returns, so no
path component can be swapped for a symlink between our checks and the jail.
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath

from chrootarchive import _fdio
from chrootarchive.engine.idmap import root_owner
from chrootarchive.errors import (
    BreakoutError,
    ChrootArchiveError,
    DestinationError,
    from_os_error,
)
from chrootarchive.runner.launch import InterruptsHeld

__all__ = ["inside", "missing_dirs", "pin_destination", "root_owner", "undo_created"]


def missing_dirs(dest: str) -> list[str]:
    """The directories on the way to ``dest`` (itself included) that do not exist yet,
    deepest first: what an unpack will create, and remove again if it fails."""
    missing = []
    path = os.path.abspath(dest)
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def undo_created(created: list[str], err: ChrootArchiveError) -> None:
    """After a failure: remove the directories this run created, while they are empty
    (nothing is left of a run that wrote nothing). When the destination is not empty,
    the message says that what came before the error is left there."""
    for path in created:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError as cause:
            if path == created[0] and cause.errno == errno.ENOTEMPTY:
                err.message += (" (what was unpacked before is left in the destination; "
                                "atomic=True unpacks all or nothing)")
            return


def _make_dest(dest: str, owner: tuple[int, int] | None) -> None:
    """Create a missing destination (and parents) 0755 whatever the umask, owned by
    the mapped root, as Docker's ``MkdirAllAndChownNew`` does; existing ones are kept."""
    for new in reversed(missing_dirs(dest)):
        try:
            os.mkdir(new, 0o755)
        except FileExistsError:
            if os.path.isdir(new):
                continue  # made at the same moment by a concurrent call: fine
            raise
        with InterruptsHeld():  # an interrupt as the open returned left it open
            fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if owner is not None and os.geteuid() == 0 and owner != (0, 0):
                    os.fchown(fd, *owner)
                os.fchmod(fd, 0o755)
            finally:
                os.close(fd)
    if not os.path.isdir(dest):
        if os.path.islink(dest):
            raise DestinationError("a symlink to a directory that does not exist", dest)
        raise FileExistsError(dest)


def pin_destination(
    dest: str, root: str | os.PathLike[str] | None, *, lock: bool = True,
    owner: tuple[int, int] | None = None,
) -> tuple[int, str]:
    """Open the jail's root once; everything afterwards is relative to that descriptor.

    With ``lock``, an exclusive ``flock`` on it serializes two operations on the same
    destination: the second waits for the first. Close it with :func:`_fdio.close`
    (guarded: a fork made meanwhile must not hold the lock).
    """
    if root is None:
        jail, rel = dest, "."
        try:
            _make_dest(dest, owner)
        except FileExistsError:
            raise DestinationError("not a directory", dest, errno.ENOTDIR) from None
        except OSError as err:
            raise from_os_error(err, dest, kind=DestinationError, action="cannot create") from err
    else:
        jail = os.fspath(root)
        rel = _dest_inside_root(dest, jail)
    fd = -1
    try:
        # Held until the descriptor is ours to close: a KeyboardInterrupt as the open
        # returned left it open.
        with InterruptsHeld():
            try:
                fd = os.open(jail, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except NotADirectoryError:
                raise DestinationError("not a directory", jail, errno.ENOTDIR) from None
            except OSError as err:
                raise from_os_error(err, jail, kind=DestinationError,
                                    action="cannot open") from err
            _fdio.guard(fd)
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:  # interrupted (while it waited for the lock, say)
        if fd >= 0:
            _fdio.close(fd)
        raise
    return fd, rel


def inside(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` if it names ``root`` or lies below it on the host
    (lexically: symlinks are the jail's business), else None."""
    abs_root = os.path.abspath(root)
    abs_path = os.path.abspath(path)
    if abs_path == abs_root or abs_path.startswith(abs_root.rstrip("/") + "/"):
        return os.path.relpath(abs_path, abs_root)
    return None


def _dest_inside_root(dest: str, root: str) -> str:
    if not os.path.isabs(dest):
        rel = posixpath.normpath(dest)
    else:
        rel = inside(dest, root) or posixpath.normpath(dest).lstrip("/") or "."
    if rel == ".." or rel.startswith("../"):
        raise BreakoutError("destination would leave the root", dest)
    return rel
