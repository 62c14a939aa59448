"""Descriptor I/O both sides need. Lean: the jailed worker imports it.

Opening is where reading could reach further than a file: ``open(2)`` of a device runs
its driver's ``open`` (a tape rewinds, a watchdog arms), of a FIFO wakes or waits for a
writer, whatever flags are given. So nothing untrusted is opened for reading until its
type is known on a descriptor that pins it (docs/security.md, "Reading never opens a
device, FIFO or socket").
"""

from __future__ import annotations

import errno
import os

__all__ = ["READ_FLAGS", "close", "close_pair", "describe", "guard", "open_input",
           "open_regular", "open_regular_in_jail", "pin_regular", "pipe", "proc_fds",
           "reopen", "unguard", "write_all"]

_F_SETPIPE_SZ = 1031  # fcntl's, without importing fcntl into the worker
_PIPE_SIZE = 1 << 20

#: The descriptors of calls in progress that a fork must not keep (:func:`guard`):
#: descriptor -> (st_dev, st_ino) of what it was when guarded.
_GUARDED: dict[int, tuple[int, int]] = {}


def guard(fd: int) -> int:
    """Keep ``fd`` out of a fork of this process (the caller's ``os.fork``, a
    ``multiprocessing`` pool's) made by another thread during a call, and return it.

    A fork's copy would outlive the call: the worker waits for the end of a stream
    (a pipe's last writer, a socket's) until the fork exits, and a destination's
    ``flock`` is held until then, so the next call into it waits as long. In the fork,
    a guarded descriptor becomes /dev/null (its number stays taken: what closes it
    there closes that). Close it with :func:`close` (a socket: :func:`unguard` first).
    """
    st = os.fstat(fd)
    _GUARDED[fd] = (st.st_dev, st.st_ino)
    return fd


def unguard(fd: int) -> None:
    """``fd`` is about to be closed (by its socket's ``close``): no longer guarded."""
    _GUARDED.pop(fd, None)


def close(fd: int) -> None:
    """``os.close`` for a descriptor that may be guarded (:func:`guard`)."""
    _GUARDED.pop(fd, None)
    os.close(fd)


def _blank_guarded() -> None:
    """In a fork: /dev/null in place of each guarded descriptor that is still what it
    was (one closed and reused meanwhile by another thread is left alone)."""
    if not _GUARDED:
        return
    guarded = list(_GUARDED.items())
    _GUARDED.clear()
    try:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        null = -1
    for fd, was in guarded:
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != was:
                continue
            if null >= 0:
                os.dup2(null, fd, inheritable=False)
            else:
                os.close(fd)
        except OSError:
            continue
    if null >= 0:
        os.close(null)


os.register_at_fork(after_in_child=_blank_guarded)


def pipe(big: bool = False) -> tuple[int, int]:
    """A pipe, close-on-exec. ``big``: of 1 MiB where the kernel allows, for a stream
    (64 KiB by default: a stream of 211 MB listed through one took 449 ms, 245 ms
    through 1 MiB, docs/performance.md)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    if big:
        import fcntl  # the callers' alone: the worker never makes a big pipe

        try:  # noqa: SIM105 - contextlib is not loaded here (the worker's start)
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size for this user: the default size
    return r, w


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``: a pipe or socket may take less than asked."""
    with memoryview(data) as view:
        while view:
            n = os.write(fd, view)
            view = view[n:]


#: Pins an object without opening it: no driver's ``open``, no FIFO, no symlink followed.
_PIN = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: How a regular file is read: never a controlling tty, never blocked by a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_S_IFMT = 0o170000  # stat's constants, without importing stat into the worker
_S_IFREG = 0o100000
_S_IFIFO = 0o010000
_KINDS = {0o140000: "a socket", 0o120000: "a symlink", 0o060000: "a block device",
          0o040000: "a directory", 0o020000: "a character device", _S_IFIFO: "a FIFO"}


def describe(st: os.stat_result) -> str:
    """What a non-regular file is, for a message ("a character device")."""
    return _KINDS.get(st.st_mode & _S_IFMT, "not a regular file")


def proc_fds() -> int:
    """A descriptor of this process's ``/proc/self/fd``, for :func:`reopen`'s ``fds``:
    a reopen through it looks up one name instead of four (a walk of many files). The
    caller closes it; it is this process's (a fork must not use it)."""
    return os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def reopen(pinned: int, flags: int = READ_FLAGS, fds: int = -1) -> int:
    """The pinned inode itself, opened for reading: its ``/proc/self/fd`` magic link leads
    to that inode and nothing else (no new lookup of its name). ``fds``: from
    :func:`proc_fds`, else the path is used. Only for a pin that :func:`pin_regular`
    found to be a regular file."""
    if fds >= 0:
        return os.open(str(pinned), flags & ~os.O_NOFOLLOW, dir_fd=fds)
    return os.open(f"/proc/self/fd/{pinned}", flags & ~os.O_NOFOLLOW)


def pin_regular(name: str, dir_fd: int) -> tuple[int, os.stat_result]:
    """``(pin, stat)``: an ``O_PATH | O_NOFOLLOW`` descriptor of ``name`` (one component
    below ``dir_fd``) if it is a regular file, else -1 and what it is. Pinning runs no
    driver, touches no FIFO and follows no symlink; the caller may look at the pin
    (``fstatfs``) before it passes it to :func:`reopen`, and closes it."""
    pinned = os.open(name, _PIN, dir_fd=dir_fd)
    try:
        st = os.fstat(pinned)
    except BaseException:
        os.close(pinned)
        raise
    if (st.st_mode & _S_IFMT) == _S_IFREG:
        return pinned, st
    os.close(pinned)
    return -1, st


def open_regular(
    name: str, dir_fd: int, flags: int = READ_FLAGS, *, fds: int = -1
) -> tuple[int, os.stat_result]:
    """Open ``name`` (one component below ``dir_fd``) for reading only if it is a
    regular file; never open anything else, not even for a moment.

    In the caller's process, whose own ``/proc`` is trusted (the parent; the in-process
    ``openat2`` mechanism): :func:`pin_regular` pins the object and checks its type on
    that descriptor, and only a regular file is opened, by :func:`reopen`.

    Returns ``(fd, stat)``; ``fd`` is -1 when the object is not a regular file, and
    ``stat`` then says what it is.
    """
    pinned, st = pin_regular(name, dir_fd)
    if pinned < 0:
        return -1, st
    try:
        return reopen(pinned, flags, fds), st
    finally:
        os.close(pinned)


def close_pair(fd: int, pinned: int) -> None:
    """Close ``fd`` and ``pinned`` (either -1: none). Adjacent numbers, the usual case, go
    in one ``close_range``: no other descriptor can lie between them."""
    if pinned >= 0 and pinned == fd - 1:
        os.closerange(pinned, fd + 1)
        return
    if fd >= 0:
        os.close(fd)
    if pinned >= 0:
        os.close(pinned)


def open_regular_in_jail(
    name: str, dir_fd: int, flags: int = READ_FLAGS
) -> tuple[int, os.stat_result]:
    """:func:`open_regular` for a jailed worker, which has no ``/proc`` (one inside its
    root would be the untrusted tree): the kernel refuses instead. Every mount of the
    worker's namespace is ``nodev`` (``jail.confine.mounts.forbid_devices``, checked
    before a pack job starts), so opening a device node fails with ``EACCES`` before
    its driver runs; a socket's open fails (``ENXIO``), a symlink is not followed
    (``ELOOP``). What still opens and is not a regular file (a FIFO, non-blocking) is
    closed at once and reported.
    """
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.ELOOP, errno.ENXIO):
            raise
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_mode & _S_IFMT) == _S_IFREG and (
            err.errno != errno.EACCES
            or not os.access(name, os.R_OK, dir_fd=dir_fd)  # faccessat: opens nothing
        ):
            raise  # the file's own error
        # Something else was there at the open (a device, refused by nodev): the caller
        # sees a regular file that was not opened, and looks again.
        return -1, now
    st = os.fstat(fd)
    if (st.st_mode & _S_IFMT) != _S_IFREG:
        os.close(fd)
        return -1, st
    return fd, st


def open_input(path: str) -> tuple[int, os.stat_result]:
    """Open a file the caller names (an archive, an image), following symlinks, if it is
    a regular file or an anonymous pipe (``<(command)`` gives ``/dev/fd/N``); never a
    device, a named FIFO or a socket (a hostile directory may hold a symlink to
    ``/dev/watchdog``, or a FIFO that no one will ever write).

    Returns ``(fd, stat)``, ``fd`` -1 (with what it is in ``stat``) when it is not
    opened. An anonymous pipe's open never waits (pipefs) and wakes no one.
    """
    pinned = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(pinned)
        kind = st.st_mode & _S_IFMT
        if kind == _S_IFREG or (
            kind == _S_IFIFO and os.readlink(f"/proc/self/fd/{pinned}").startswith("pipe:")
        ):
            return reopen(pinned, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC), st
        return -1, st
    finally:
        os.close(pinned)
