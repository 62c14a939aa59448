"""The file operations the unpacker needs, relative to a pinned root.

``unpack`` never knows how it is confined: it calls these methods with clean,
root-relative paths. :class:`FileOps` itself is used once the worker is jailed (the
kernel keeps every path, symlinks included, inside ``/``); the ``openat2`` mechanism
supplies another implementation of the same methods
(:mod:`chrootarchive.jail.confine.openat2`).

Every new object is created so that nothing already there (or planted by a racer)
can be written through: files with ``O_CREAT | O_EXCL | O_NOFOLLOW``, metadata through
the descriptor of the object we created.
"""

from __future__ import annotations

import errno
import os
import stat

from chrootarchive import _linux
from chrootarchive.errors import BreakoutError

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FileOps", "PrivateDir", "PrivateNode", "kernel_filesystem", "open_dir_in_root",
           "refuse_kernel_filesystem", "remove_tree_at"]

CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: How every path below a pinned root is resolved: as if it were ``/``, no magic links.
RESOLVE = _linux.RESOLVE_IN_ROOT | _linux.RESOLVE_NO_MAGICLINKS


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
        return os.open(path, CREATE, mode)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def hardlink(self, target: str, path: str) -> None:
        os.link(target, path, follow_symlinks=False)

    def open_dir(self, path: str) -> int:
        return os.open(path, OPEN_DIR)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def remove_tree(self, path: str) -> None:
        """Remove a directory and everything below it, never following a symlink below
        it. Its parent is reached as every path is (in-root symlinks on the way are
        followed: the jail keeps them inside); opened without following its last
        component, ``l/e`` under ``l -> sub`` was "not a directory"."""
        parent, _, name = path.rpartition("/")
        top = os.open(parent or ".", OPEN_DIR & ~os.O_NOFOLLOW)
        try:
            remove_tree_at(top, name, path)
        finally:
            os.close(top)

    _new_owner: int | None = None

    def new_owner(self, parent_fd: int) -> int:
        """The owner the file system gives what this process creates where it is not
        the euid (NFS's root_squash): a probe's, made once."""
        if self._new_owner is None:
            probe = f".chrootarchive-owner-{os.urandom(6).hex()}"
            fd = os.open(probe, CREATE, 0o600, dir_fd=parent_fd)
            try:
                self._new_owner = os.fstat(fd).st_uid
            finally:
                os.close(fd)
                os.unlink(probe, dir_fd=parent_fd)
        return self._new_owner

    def node_dir(self, parent: str) -> PrivateDir:
        """A new private directory in the directory ``parent``, to make nodes in."""
        return PrivateDir(self, os.open(parent or ".", PARENT))

    def setxattr_private(self, private_fd: int, key: str, value: bytes) -> None:
        """Set an xattr on the node of a :class:`PrivateNode` (``x`` in ``private_fd``).

        Linux has no ``fsetxattr`` for an O_PATH descriptor, and the jail has no /proc:
        a path it is, one in the private directory (setxattr has no *at form but
        6.13's, not for O_PATH).
        """
        here = os.open(".", PARENT)  # the working directory may be 0o000
        try:
            os.fchdir(private_fd)
            try:
                os.setxattr(NODE, key, value, follow_symlinks=False)
            finally:
                os.fchdir(here)
        finally:
            os.close(here)

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


#: The directory a symlink or special file is made in and given its metadata.
NODE_DIR_PREFIX = ".chrootarchive-node-"
NODE = "x"  # its name there
PARENT = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class PrivateDir:
    """A new directory of the worker's own (0700, pinned by a descriptor and checked)
    in the directory ``parent_fd`` (whose descriptor it takes), where symlinks and
    special files are made and given their metadata (:meth:`make`), where no one else
    can reach their names; :meth:`close` removes it."""

    def __init__(self, fs: FileOps, parent_fd: int) -> None:
        self.fs, self.parent_fd = fs, parent_fd
        try:
            self.private, self.private_fd = _private_dir(parent_fd, fs)
        except BaseException:
            os.close(parent_fd)
            raise

    def make(self, path: str, make: Callable[[int, str], None]) -> PrivateNode:
        """A node made by ``make(dir_fd, name)`` here, for ``path`` (in the parent)."""
        return PrivateNode(self, path, make)

    def close(self) -> None:
        try:
            if os.fstat(self.private_fd).st_nlink:  # else removed with what held it
                try:
                    os.rmdir(self.private, dir_fd=self.parent_fd)
                except OSError as err:
                    if err.errno != errno.ENOTEMPTY:
                        raise
                    _empty(self.private_fd)  # what someone who could enter put there
                    os.rmdir(self.private, dir_fd=self.parent_fd)
        finally:
            os.close(self.private_fd)
            os.close(self.parent_fd)


class PrivateNode:
    """A symlink or special file made in a :class:`PrivateDir` beside its path, given
    its owner, xattrs, mode and times there through :attr:`fd` (``O_PATH``), then put at
    its path by :meth:`place`, in one step that replaces nothing.

    Made at its path, it had to be re-opened there by name for its metadata, and a
    racer with the worker's uid could link or move a node of its own at that name for
    the moment of the open: that node took the entry's owner, mode and times. A node
    that is not the one made (moved in, or linked in and out again, by someone who can
    enter the directory) is refused: FileExistsError, with nothing left behind.
    :meth:`close` removes the node unless it was placed.
    """

    def __init__(self, where: PrivateDir, path: str,
                 make: Callable[[int, str], None]) -> None:
        self.where, self.name = where, path.rpartition("/")[2]
        self.fd = -1
        self.placed = False
        private_fd = where.private_fd
        try:
            make(private_fd, NODE)
            self.fd = os.open(NODE, OPEN_PATH, dir_fd=private_fd)
            self.st = os.fstat(self.fd)
            try:
                here = os.stat(NODE, dir_fd=private_fd, follow_symlinks=False)
            except FileNotFoundError:
                here = None
            if (here is None or self.st.st_nlink != 1
                    or (here.st_dev, here.st_ino) != (self.st.st_dev, self.st.st_ino)):
                raise FileExistsError(errno.EEXIST, "replaced while being created", path)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PrivateNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def readlink(self) -> str:
        return os.readlink(NODE, dir_fd=self.where.private_fd)

    def setxattr(self, key: str, value: bytes) -> None:
        self.where.fs.setxattr_private(self.where.private_fd, key, value)

    def place(self) -> None:
        """Move the node to its path; FileExistsError when something is there."""
        where = self.where
        try:
            _linux.rename_noreplace(where.private_fd, NODE, where.parent_fd, self.name)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            # A file system without RENAME_NOREPLACE: a link fails the same way.
            os.link(NODE, self.name, src_dir_fd=where.private_fd,
                    dst_dir_fd=where.parent_fd, follow_symlinks=False)
            os.unlink(NODE, dir_fd=where.private_fd)
        self.placed = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.placed:
            _empty(self.where.private_fd)


def _empty(dir_fd: int) -> None:
    """Remove everything in the directory ``dir_fd`` (never following a symlink)."""
    for entry in os.listdir(dir_fd):
        if stat.S_ISDIR(os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            remove_tree_at(dir_fd, entry)
        else:
            os.unlink(entry, dir_fd=dir_fd)


def _private_dir(parent_fd: int, fs: FileOps) -> tuple[str, int]:
    """A new directory below ``parent_fd`` that only we can enter, and its descriptor
    (checked: a racer may rename a directory of its own over the new, empty one)."""
    for _ in range(100):
        name = NODE_DIR_PREFIX + os.urandom(6).hex()
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            continue
        fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) == 0o700 and (
                st.st_uid == os.geteuid() or st.st_uid == fs.new_owner(parent_fd)):
            return name, fd
        os.close(fd)
        raise FileExistsError(errno.EEXIST, "replaced while being created", name)
    raise FileExistsError(errno.EEXIST, "cannot create a private directory", NODE_DIR_PREFIX)


def kernel_filesystem(fd: int) -> str | None:
    """The name of the kernel file system (procfs, sysfs...) ``fd`` is on, else None."""
    return _linux.KERNEL_FILESYSTEMS.get(_linux.fstatfs_type(fd))


def refuse_kernel_filesystem(fd: int, path: str) -> None:
    """Close ``fd`` and raise a breakout if it is on a procfs, sysfs or their kin.

    A jail's mount namespace detaches a procfs inside the destination; where there is
    none (``openat2``), or a walk goes down by descriptors, this is what keeps the
    kernel's files from being written, read or walked.
    """
    kind = kernel_filesystem(fd)
    if kind is not None:
        os.close(fd)
        raise BreakoutError(f"a {kind} mounted inside the destination (refused)", path)


def remove_tree_at(parent_fd: int, name: str, where: str = "", *,
                   force: bool = False) -> None:
    """Remove ``name`` under ``parent_fd`` recursively, walking by descriptors only.

    A directory on a kernel file system (a procfs mounted below) is never walked:
    :class:`BreakoutError` naming it (``where`` is ``name``'s path, for the message).
    ``force``, for a tree of the caller's own outside any jail (a failed ``--atomic``
    unpack's staging directory): a directory below ``name`` whose mode keeps its owner
    out (an archive's 0o000 or 0o500) is made 0o700 first, which an unprivileged caller
    needs (root passes anyway); it goes through ``/proc/self/fd``, never by name.
    """
    stack: list[tuple[int, str, int, str]] = []  # (parent fd, name, own fd, path)
    top = where or name

    def open_dir(dfd: int, child: str) -> int:
        try:
            return os.open(child, OPEN_DIR, dir_fd=dfd)
        except PermissionError:
            if not force:
                raise
            pinned = os.open(child, OPEN_PATH | os.O_DIRECTORY, dir_fd=dfd)
            try:
                os.chmod(f"/proc/self/fd/{pinned}", 0o700)
            finally:
                os.close(pinned)
            return os.open(child, OPEN_DIR, dir_fd=dfd)

    def remove(dfd: int, child: str, directory: bool) -> None:
        act = os.rmdir if directory else os.unlink
        try:
            act(child, dir_fd=dfd)
        except PermissionError:
            if not force or dfd == parent_fd:
                raise
            os.fchmod(dfd, 0o700)  # a directory of the tree that its owner may not write
            act(child, dir_fd=dfd)

    fd = open_dir(parent_fd, name)
    refuse_kernel_filesystem(fd, top)
    stack.append((parent_fd, name, fd, top))
    try:
        while stack:
            pfd, pname, dfd, path = stack[-1]
            descended = False
            with os.scandir(dfd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        child = open_dir(dfd, entry.name)
                        child_path = f"{path}/{entry.name}"
                        refuse_kernel_filesystem(child, child_path)
                        stack.append((dfd, entry.name, child, child_path))
                        descended = True
                        break
                    remove(dfd, entry.name, False)
            if descended:
                continue
            stack.pop()
            os.close(dfd)
            remove(pfd, pname, True)
    finally:
        for _pfd, _pname, dfd, _path in stack:
            os.close(dfd)


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


def open_dir_in_root(root_fd: int, path: str) -> int:
    """Open the directory ``path`` below ``root_fd`` as if ``root_fd`` were ``/``.

    In-root symlinks on the way are followed; ``/proc`` magic links are not (a procfs
    mounted inside the root must not lead out of it); ``..`` stops at the root. In a
    jail ``root_fd`` is ``AT_FDCWD``; without ``openat2`` (Linux < 5.6) the jail alone
    keeps paths inside.
    """
    relative = path.lstrip("/") or "."
    while True:
        try:
            return _linux.openat2(root_fd, relative,
                                  os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, RESOLVE)
        except BlockingIOError:
            continue  # EAGAIN: a concurrent rename; the kernel asks us to retry
        except OSError as err:
            code = err.errno or errno.EIO
            if code in (errno.ENOSYS, errno.EPERM) and root_fd == _linux.AT_FDCWD:
                return os.open(relative, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            raise OSError(code, os.strerror(code)) from err  # without the call
