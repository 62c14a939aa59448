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
import time
from collections.abc import Iterator

from chrootarchive import _fdio
from chrootarchive.errors import DestinationError, from_os_error

__all__ = ["PREFIX", "atomic_destination", "remove_stale"]

PREFIX = ".chrootarchive-stage-"
NEW_PREFIX = ".chrootarchive-new-"  # a staging directory being made (not yet locked)
_NEW_MAX_AGE = 60.0
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove(parent_fd: int, name: str) -> None:
    """Remove a staging directory of ours, also below directories whose modes (the
    archive's 0o000, say) would keep an unprivileged owner out."""
    from chrootarchive.engine.fsops import remove_tree_at  # _linux: only to clean up

    with contextlib.suppress(FileNotFoundError):
        remove_tree_at(parent_fd, name, force=True)


def remove_stale(parent: str) -> int:
    """Remove staging directories whose creator is gone; return how many."""
    try:
        parent_fd = os.open(parent, _OPEN_DIR)
    except OSError:
        return 0
    removed = 0
    try:
        for name in os.listdir(parent_fd):
            if name.startswith(NEW_PREFIX):
                removed += _remove_abandoned_new(parent_fd, name)
                continue
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


def _remove_abandoned_new(parent_fd: int, name: str) -> int:
    """A half-made staging directory (the process died between mkdir and rename)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return 0
    if time.time() - st.st_mtime < _NEW_MAX_AGE:
        return 0
    try:
        _remove(parent_fd, name)
    except OSError:
        return 0
    return 1


def _is_empty_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise DestinationError("not a directory", path, errno.ENOTDIR)
    return not os.listdir(path)


def _make_locked_stage(parent_fd: int, parent: str) -> tuple[str, int]:
    """A new staging directory that is locked before it carries the staging prefix,
    so that a concurrent run never takes it for one left behind."""
    for _ in range(100):
        token = os.urandom(6).hex()
        building = NEW_PREFIX + token
        fd = -1
        made = False
        try:
            try:
                os.mkdir(building, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                continue
            made = True
            # Guarded: a fork's copy would keep it locked (in use, never cleaned up).
            fd = _fdio.guard(os.open(building, _OPEN_DIR, dir_fd=parent_fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
            stage = PREFIX + token
            os.rename(building, stage, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException as err:  # a signal's exception too: no half-made directory
            if fd >= 0:
                _fdio.close(fd)
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(building, dir_fd=parent_fd)
            if isinstance(err, OSError) and not made:
                raise from_os_error(
                    err, parent, kind=DestinationError,
                    action="cannot create a staging directory") from err
            raise
        return stage, fd
    raise DestinationError("cannot create a staging directory", parent)


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
        raise from_os_error(err, parent, kind=DestinationError, action="cannot create") from err
    remove_stale(parent)
    if not _is_empty_dir(dest):
        raise DestinationError("atomic unpacking needs a missing or empty destination", dest)
    try:
        parent_fd = os.open(parent, _OPEN_DIR)
    except OSError as err:
        raise from_os_error(err, parent, kind=DestinationError, action="cannot open") from err
    try:
        stage, stage_fd = _make_locked_stage(parent_fd, parent)
        try:
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
                    raise from_os_error(
                        err, dest, kind=DestinationError,
                        action="cannot rename into place") from err
            except BaseException:
                # The unpack's own error is the one to report; a staging directory that
                # cannot go now is a stale one to the next run (remove_stale).
                with contextlib.suppress(OSError):
                    _remove(parent_fd, stage)
                raise
        finally:
            _fdio.close(stage_fd)
    finally:
        os.close(parent_fd)
