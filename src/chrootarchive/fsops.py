"""The file operations the unpacker needs, relative to a pinned root.

``unpack`` never knows how it is confined: it calls these methods with clean,
root-relative paths. :class:`JailedFileOps` is used once the worker is jailed (the
kernel keeps every path, symlinks included, inside ``/``). A later mechanism that
resolves paths with ``openat2`` supplies another implementation of the same methods.

Every new object is created so that nothing already there (or planted by a racer)
can be written through: files with ``O_CREAT | O_EXCL | O_NOFOLLOW``, metadata through
the descriptor of the object we created.
"""

from __future__ import annotations

import os
import stat

from . import _linux

__all__ = ["FileOps", "JailedFileOps"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class FileOps:
    """Primitive operations on root-relative paths (this base class: inside a jail).

    Each method is equivalent to the ``os`` call it names, never follows a symlink in
    the last component, and raises ``OSError`` as ``os`` does.
    """

    def lstat(self, path: str) -> os.stat_result | None:
        """``os.lstat``, or None when nothing is there."""
        try:
            return os.lstat(path)
        except FileNotFoundError:
            return None

    def stat(self, path: str) -> os.stat_result:
        """``os.stat`` (follows symlinks, inside the root)."""
        return os.stat(path)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(path, mode)

    def create_file(self, path: str, mode: int) -> int:
        """Create a new regular file; never opens an existing one."""
        return os.open(path, _CREATE, mode)

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, path)

    def hardlink(self, target: str, path: str) -> None:
        os.link(target, path, follow_symlinks=False)

    def mknod(self, path: str, mode: int, device: int) -> None:
        os.mknod(path, mode, device)

    def open_dir(self, path: str) -> int:
        return os.open(path, _OPEN_DIR)

    def open_path(self, path: str) -> int:
        """An ``O_PATH`` descriptor of the object itself (a symlink is not followed)."""
        return os.open(path, _OPEN_PATH)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def remove_tree(self, path: str) -> None:
        """Remove a directory and everything below it, never following a symlink."""
        parent, _, name = path.rpartition("/")
        top = self.open_dir(parent or ".")
        try:
            remove_tree_at(top, name)
        finally:
            os.close(top)


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` under ``parent_fd`` recursively, walking by descriptors only."""
    stack: list[tuple[int, str, int]] = []  # (parent fd, name, own fd)
    fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    stack.append((parent_fd, name, fd))
    while stack:
        pfd, pname, dfd = stack[-1]
        descended = False
        with os.scandir(dfd) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    child = os.open(entry.name, _OPEN_DIR, dir_fd=dfd)
                    stack.append((dfd, entry.name, child))
                    descended = True
                    break
                os.unlink(entry.name, dir_fd=dfd)
        if descended:
            continue
        stack.pop()
        os.close(dfd)
        os.rmdir(pname, dir_fd=pfd)


JailedFileOps = FileOps


def set_owner_fd(fd: int, uid: int, gid: int) -> None:
    os.fchown(fd, uid, gid)


def set_owner_path_fd(fd: int, uid: int, gid: int) -> None:
    """Change owner through an ``O_PATH`` descriptor (symlinks, devices)."""
    _linux.fchownat_empty(fd, uid, gid)


def set_times_path_fd(fd: int, atime_ns: int, mtime_ns: int) -> None:
    _linux.utimensat_empty(fd, atime_ns, mtime_ns)


def is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)
