"""All-or-nothing unpacking: a staging directory beside the destination.

The work happens in ``.chrootarchive-stage-*`` next to ``dest``, which is renamed into
place only when everything succeeded; after any failure the destination does not exist
(or, if it existed empty, is unchanged). Each staging directory is ``flock``ed by the
process that made it, so the next run in the same parent directory can tell the ones a
killed process left behind (their lock is free) and removes them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator

from chrootarchive.errors import DestinationError
from chrootarchive.fsops import remove_tree_at

__all__ = ["PREFIX", "atomic_destination", "remove_stale"]

PREFIX = ".chrootarchive-stage-"
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove(parent_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        remove_tree_at(parent_fd, name)


def remove_stale(parent: str) -> int:
    """Remove staging directories whose creator is gone; return how many."""
    try:
        parent_fd = os.open(parent, _OPEN_DIR)
    except OSError:
        return 0
    removed = 0
    try:
        for name in os.listdir(parent_fd):
            if not name.startswith(PREFIX):
                continue
            try:
                fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # still in use by a live process
            try:
                _remove(parent_fd, name)
                removed += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        os.close(parent_fd)
    return removed


def _is_empty_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise DestinationError("not a directory", path)
    return not os.listdir(path)


@contextlib.contextmanager
def atomic_destination(dest: str) -> Iterator[str]:
    """Yield a staging directory; on success it replaces ``dest``, on failure it goes.

    Raises:
        DestinationError: ``dest`` exists and is not an empty directory.
    """
    dest = os.path.abspath(dest)
    parent, name = os.path.split(dest)
    try:
        os.makedirs(parent, 0o755, exist_ok=True)
    except OSError as err:
        raise DestinationError(f"cannot create: {err.strerror}", parent) from err
    remove_stale(parent)
    if not _is_empty_dir(dest):
        raise DestinationError("atomic unpacking needs a missing or empty destination", dest)
    try:
        parent_fd = os.open(parent, _OPEN_DIR)
    except OSError as err:
        raise DestinationError(f"cannot open: {err.strerror}", parent) from err
    try:
        for _ in range(100):
            stage = PREFIX + os.urandom(6).hex()
            try:
                os.mkdir(stage, 0o755, dir_fd=parent_fd)
                break
            except FileExistsError:
                continue
        else:
            raise DestinationError("cannot create a staging directory", parent)
        stage_fd = os.open(stage, _OPEN_DIR, dir_fd=parent_fd)
        try:
            fcntl.flock(stage_fd, fcntl.LOCK_EX)
            os.fchmod(stage_fd, 0o755)
            try:
                yield os.path.join(parent, stage)
                try:
                    os.rename(stage, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                except OSError as err:
                    if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                        raise DestinationError(
                            "the destination was filled while unpacking", dest
                        ) from err
                    raise DestinationError(f"cannot rename into place: {err.strerror}",
                                           dest) from err
            except BaseException:
                _remove(parent_fd, stage)
                raise
        finally:
            os.close(stage_fd)
    finally:
        os.close(parent_fd)
