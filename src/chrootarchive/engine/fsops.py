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

import errno
import os
import stat

from chrootarchive import _linux

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FileOps", "JailedFileOps", "Openat2FileOps", "openat2_unavailable_reason"]

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

    def setxattr_via(self, fd: int, path: str, key: str, value: bytes) -> None:
        """Set an xattr on the symlink or special file ``path`` that ``fd`` (O_PATH) pins.

        Inside the jail the path cannot leave the root; there is no /proc there.
        """
        os.setxattr(path, key, value, follow_symlinks=False)

    def chmod_via(self, fd: int, path: str, mode: int) -> None:
        """Change the mode of the special file (never a symlink) that ``fd`` pins.

        Through the descriptor (fchmodat2, Linux 6.6+), never by path: a racer could
        have put a hard link to another file at the path.
        """
        _linux.fchmod_path_fd(fd, mode)

    def make_dirs(self, path: str, owner: tuple[int, int] | None = None) -> None:
        """``mkdir -p`` below the root: every new directory 0755 (whatever the umask,
        not os.makedirs' 0777), owned by ``owner`` when given. Existing steps may be
        in-root symlinks to directories; anything else is NotADirectoryError."""
        prefix = ""
        for part in path.strip("/").split("/"):
            prefix = f"{prefix}/{part}" if prefix else part
            try:
                self.mkdir(prefix, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(self.stat(prefix).st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", prefix) from None
                continue
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                fd = self.open_dir(prefix)
                try:
                    os.fchown(fd, *owner)
                    os.fchmod(fd, 0o755)
                finally:
                    os.close(fd)

    def make_temp_dir(self, prefix: str) -> str:
        """Create a new private directory at the root with an unpredictable name."""
        for _ in range(100):
            name = prefix + os.urandom(6).hex()
            try:
                self.mkdir(name, 0o700)
            except FileExistsError:
                continue
            return name
        raise FileExistsError(errno.EEXIST, "cannot create a temporary directory", prefix)


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

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


class Openat2FileOps(FileOps):
    """In-process, unprivileged: every path is resolved under a pinned root descriptor.

    Parent directories are resolved with ``openat2(RESOLVE_IN_ROOT |
    RESOLVE_NO_MAGICLINKS)`` (symlinks are followed as if the root were ``/``, ``..``
    stops at the root, ``/proc`` magic links are refused, and the kernel fails the
    lookup when a racing rename could have moved it outside); the last component is
    acted on with ``*at`` calls that never follow a symlink.

    Args:
        root_fd: descriptor of the root (borrowed, not closed here).
        base: the directory below the root that relative paths start from.
    """

    def __init__(self, root_fd: int, base: str = ".") -> None:
        self.root_fd = root_fd
        self.base = "" if base in ("", ".") else base.strip("/") + "/"
        self.umask = _current_umask()

    def _full(self, path: str) -> str:
        if path in ("", "."):
            return self.base or "."
        return self.base + path

    def _resolve(self, path: str, flags: int) -> int:
        while True:
            try:
                return _linux.openat2(self.root_fd, self._full(path), flags | os.O_CLOEXEC,
                                      0, _RESOLVE)
            except BlockingIOError:
                continue  # EAGAIN: a concurrent rename; the kernel asks us to retry

    def _parent(self, path: str) -> tuple[int, str]:
        parent, _, name = path.rpartition("/")
        return self._resolve(parent or ".", os.O_PATH | os.O_DIRECTORY), name

    def lstat(self, path: str) -> os.stat_result | None:
        try:
            fd = self._resolve(path, os.O_PATH | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def stat(self, path: str) -> os.stat_result:
        fd = self._resolve(path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    # In-process, the caller's umask applies: modes it removed are put back through
    # the new object's descriptor.

    def mkdir(self, path: str, mode: int) -> None:
        pfd, name = self._parent(path)
        try:
            os.mkdir(name, mode, dir_fd=pfd)
            if mode & self.umask:
                fd = os.open(name, _OPEN_DIR, dir_fd=pfd)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)

    def create_file(self, path: str, mode: int) -> int:
        pfd, name = self._parent(path)
        try:
            fd = os.open(name, _CREATE, mode, dir_fd=pfd)
        finally:
            os.close(pfd)
        if mode & self.umask:
            os.fchmod(fd, mode)
        return fd

    def symlink(self, target: str, path: str) -> None:
        pfd, name = self._parent(path)
        try:
            os.symlink(target, name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def hardlink(self, target: str, path: str) -> None:
        sfd, sname = self._parent(target)
        try:
            dfd, dname = self._parent(path)
            try:
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def mknod(self, path: str, mode: int, device: int) -> None:
        pfd, name = self._parent(path)
        try:
            os.mknod(name, mode, device, dir_fd=pfd)
            if mode & 0o7777 & self.umask:
                fd = os.open(name, _OPEN_PATH, dir_fd=pfd)
                try:
                    self.chmod_via(fd, path, mode)
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)

    def open_dir(self, path: str) -> int:
        return self._resolve(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def open_path(self, path: str) -> int:
        return self._resolve(path, os.O_PATH | os.O_NOFOLLOW)

    def unlink(self, path: str) -> None:
        pfd, name = self._parent(path)
        try:
            os.unlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def remove_tree(self, path: str) -> None:
        pfd, name = self._parent(path)
        try:
            remove_tree_at(pfd, name)
        finally:
            os.close(pfd)

    def setxattr_via(self, fd: int, path: str, key: str, value: bytes) -> None:
        # The magic link leads to the pinned object itself, not through the path.
        os.setxattr(f"/proc/self/fd/{fd}", key, value)

    def chmod_via(self, fd: int, path: str, mode: int) -> None:
        try:
            _linux.fchmod_path_fd(fd, mode)
        except OSError as err:
            if err.errno != errno.ENOSYS:
                raise
            os.chmod(f"/proc/self/fd/{fd}", mode)  # the magic link leads to the object


def _current_umask() -> int:
    """The process umask, read without changing it (Linux 4.7+ shows it in /proc)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_openat2_reason: str | None = None


def openat2_unavailable_reason() -> str | None:
    """Why ``openat2`` cannot be used here, or None. "Not supported" is learned once."""
    global _openat2_reason
    if _openat2_reason is not None:
        return _openat2_reason
    try:
        fd = _linux.openat2(_linux.AT_FDCWD, "/", os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE)
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
            _openat2_reason = f"openat2 with RESOLVE_IN_ROOT is not available ({err.strerror})"
            return _openat2_reason
        raise
    os.close(fd)
    return None


_privilege_toggle: Callable[[bool], None] | None = None


def enable_privileged_xattrs(toggle: Callable[[bool], None]) -> None:
    """Install how to raise (True) and lower (False) CAP_SYS_ADMIN in the calling thread."""
    global _privilege_toggle
    _privilege_toggle = toggle


def with_privilege(action: Callable[[], None]) -> None:
    """Run ``action`` (a ``trusted.*`` setxattr) with CAP_SYS_ADMIN effective, if dormant."""
    toggle = _privilege_toggle
    if toggle is None:
        action()
        return
    toggle(True)
    try:
        action()
    finally:
        toggle(False)


def set_owner_path_fd(fd: int, uid: int, gid: int) -> None:
    """Change owner through an ``O_PATH`` descriptor (symlinks, devices)."""
    _linux.fchownat_empty(fd, uid, gid)


def set_times_path_fd(fd: int, atime_ns: int, mtime_ns: int) -> None:
    _linux.utimensat_empty(fd, atime_ns, mtime_ns)

