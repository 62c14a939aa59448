"""Mechanism ``openat2``: no jail, no privilege; the job runs in the caller's process.

Every path is resolved under a pinned root descriptor with ``openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS)`` (:class:`Openat2FileOps`, and
:func:`chrootarchive.engine.fsops.open_dir_in_root` for the pack walk), and the last
component is acted on with ``*at`` calls that never follow a symlink. The job runs in a
thread of its own behind the same interface as a worker process (:class:`InProcess`),
so the parent feeds it and reads it exactly as it does a worker.

Everything about this mechanism is in this module: whether the kernel has it
(:func:`unavailable_reason`), its file operations, and its runner.
"""

from __future__ import annotations

import errno
import os
import threading

from chrootarchive import _fdio, _host, _linux
from chrootarchive.contract import JOB_MODULES, JobReply, JobRequest
from chrootarchive.engine import fsops
from chrootarchive.engine.fsops import RESOLVE
from chrootarchive.engine.jobs import JobContext
from chrootarchive.errors import (
    ChrootArchiveError,
    ConfinementError,
    DestinationError,
    InternalError,
    from_os_error,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chrootarchive._ring import RingWriter
    from chrootarchive.engine.jobs import Job

__all__ = ["InProcess", "Openat2FileOps", "unavailable_reason"]





class Openat2FileOps(fsops.FileOps):
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
        self.umask = _host.current_umask()

    def _full(self, path: str) -> str:
        if path in ("", "."):
            return self.base or "."
        return self.base + path

    def _resolve(self, path: str, flags: int) -> int:
        """Resolve ``path`` under the root; never to an object on a kernel file system.

        First without crossing a mount (``RESOLVE_NO_XDEV``): the object is then on the
        root's own file system, checked once. A path that crosses a mount (``EXDEV``)
        is resolved again and what it reaches is checked with ``fstatfs``: a procfs or
        sysfs mounted inside the root is never written, read or walked
        (``pivot`` and ``chroot`` detach them in their own mount namespace).
        """
        full = self._full(path)
        flags |= os.O_CLOEXEC
        resolve = RESOLVE | _linux.RESOLVE_NO_XDEV
        while True:
            try:
                fd = _linux.openat2(self.root_fd, full, flags, 0, resolve)
            except BlockingIOError:
                continue  # EAGAIN: a concurrent rename; the kernel asks us to retry
            except OSError as err:
                if err.errno != errno.EXDEV or resolve == RESOLVE:
                    # The kernel's reason, as os.* gives it: the message names the entry
                    # (it showed "openat2(6, 'a', 0x280000, 0x13): Too many levels...").
                    code = err.errno or errno.EIO
                    raise OSError(code, os.strerror(code)) from err
                resolve = RESOLVE  # crosses a mount: resolve, then check the type
                continue
            if resolve == RESOLVE:
                fsops.refuse_kernel_filesystem(fd, path)
            return fd

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
                fd = os.open(name, fsops.OPEN_DIR, dir_fd=pfd)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)

    def create_file(self, path: str, mode: int) -> int:
        pfd, name = self._parent(path)
        try:
            fd = os.open(name, fsops.CREATE, mode, dir_fd=pfd)
        finally:
            os.close(pfd)
        if mode & self.umask:
            os.fchmod(fd, mode)
        return fd

    def readlink(self, path: str) -> str:
        fd = self._resolve(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            return os.readlink("", dir_fd=fd)  # readlinkat(2) of the link itself
        finally:
            os.close(fd)

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

    def open_dir(self, path: str) -> int:
        return self._resolve(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def unlink(self, path: str) -> None:
        pfd, name = self._parent(path)
        try:
            os.unlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def remove_tree(self, path: str) -> None:
        pfd, name = self._parent(path)
        try:
            fsops.remove_tree_at(pfd, name, path)
        finally:
            os.close(pfd)

    def node_dir(self, parent: str) -> fsops.PrivateDir:
        return fsops.PrivateDir(self, self._resolve(parent or ".", os.O_PATH | os.O_DIRECTORY))

    def setxattr_private(self, private_fd: int, key: str, value: bytes) -> None:
        # In-process (a thread of the caller's): no fchdir; the magic link leads to
        # the private directory itself.
        os.setxattr(f"/proc/self/fd/{private_fd}/{fsops.NODE}", key, value,
                    follow_symlinks=False)

    def chmod_via(self, fd: int, path: str, mode: int) -> None:
        try:
            _linux.fchmod_path_fd(fd, mode)
        except OSError as err:
            if err.errno != errno.ENOSYS:
                raise
            os.chmod(f"/proc/self/fd/{fd}", mode)  # the magic link leads to the object


_openat2_reason: str | None = None


def unavailable_reason() -> str | None:
    """Why ``openat2`` cannot be used here, or None. "Not supported" is learned once."""
    global _openat2_reason
    if _openat2_reason is not None:
        return _openat2_reason
    try:
        fd = _linux.openat2(_linux.AT_FDCWD, "/", os.O_PATH | os.O_CLOEXEC, 0, RESOLVE)
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
            _openat2_reason = f"openat2 with RESOLVE_IN_ROOT is not available ({err.strerror})"
            return _openat2_reason
        raise
    os.close(fd)
    return None


class InProcess:
    """A job run by a thread of this process under ``openat2``, shaped like a worker.

    The same interface as :class:`chrootarchive.runner.worker.Worker`: ``stdin_w`` (a
    pipe to feed, unless ``stdin`` was given), ``stdout_r`` (with ``stdout_pipe``),
    :meth:`wait_ready`, :meth:`finish`, :meth:`kill`, :meth:`close`.

    Args:
        root_fd: the pinned root (borrowed: duplicated for the thread).
        request: the job, with ``dest`` below the root.
        stdin: a descriptor the job reads (borrowed), or None for a pipe.
        stdout_pipe: give the job a pipe to write its output to.
        channel: the job's end of a layer channel (borrowed: duplicated for the thread).
    """

    def __init__(self, root_fd: int, request: JobRequest, *, stdin: int | None = None,
                 stdout_pipe: bool = False, channel: int | None = None) -> None:
        __import__(JOB_MODULES[request.job])
        import sys

        job: Job = sys.modules[JOB_MODULES[request.job]].JOB
        self.stdin_w = -1
        self.stdout_r = -1
        self.ring: RingWriter | None = None  # fed through a pipe: the job is in-process
        self._reply: JobReply | None = None
        self._error: BaseException | None = None
        self._own: list[int] = []  # descriptors the thread closes when it ends
        self._own_lock = threading.Lock()  # closing them, or cutting the input (kill)
        self._done = threading.Event()  # the job has ended (Thread.join cannot say: below)
        kind = fsops.kernel_filesystem(root_fd)
        if kind is not None:  # as pivot and chroot refuse a procfs destination
            raise ConfinementError(f"the root is a {kind} mount (refused)")
        files = Openat2FileOps(root_fd, _enter_dest(root_fd, request))
        if stdin is None:
            job_stdin, self.stdin_w = os.pipe2(os.O_CLOEXEC)
            _fdio.guard(self.stdin_w)  # the job reads to its end: no fork may hold it
            self._own.append(job_stdin)
        else:
            # The job's own number for the caller's file: kill() can then end its input
            # (and the job reads nothing else under that number once the caller closed it).
            job_stdin = os.dup(stdin) if stdin >= 0 else stdin
            if job_stdin >= 0:
                self._own.append(job_stdin)
        self._job_stdin = job_stdin
        job_stdout = -1
        if stdout_pipe:
            self.stdout_r, job_stdout = os.pipe2(os.O_CLOEXEC)
            self._own.append(_fdio.guard(job_stdout))
        job_channel = -1
        if channel is not None:
            job_channel = _fdio.guard(os.dup(channel))
            self._own.append(job_channel)
        root = _fdio.guard(os.dup(root_fd))  # the destination's lock too: no fork may hold it
        self._own.append(root)
        files.root_fd = root
        context = JobContext(stdin=job_stdin, stdout=job_stdout, files=files, root_fd=root,
                             own_process=False, in_user_namespace=os.geteuid() != 0,
                             channel=job_channel)

        def work() -> None:
            try:
                reply = job.run(request, context)
                reply.confinement = "openat2"
                reply.warnings = tuple(context.warnings)
                self._reply = reply
            except BaseException as err:
                self._error = err
            finally:
                with self._own_lock:
                    for fd in self._own:
                        _fdio.close(fd)
                    self._own.clear()
                self._done.set()

        self._thread = threading.Thread(target=work, name=f"chrootarchive-{request.job}",
                                        daemon=True)
        try:
            self._thread.start()
        except BaseException:
            for fd in (*self._own, self.stdin_w, self.stdout_r):
                if fd >= 0:
                    _fdio.close(fd)
            raise

    def wait_ready(self) -> None:
        """Confined from the start: nothing to wait for."""

    def alive(self) -> bool:
        return not self._done.is_set()

    def outcome(self) -> bool | None:
        """None while the job runs; then whether it succeeded."""
        return None if not self._done.is_set() else self._error is None

    def close_stdin(self) -> None:
        if self.stdin_w >= 0:
            _fdio.close(self.stdin_w)
            self.stdin_w = -1

    def kill(self) -> None:
        """Stop feeding and reading: the job meets the end of its input (or EPIPE).

        Its input becomes /dev/null under the number it reads: a file it reads itself,
        or a pipe still fed, would have let it unpack on after the call had raised (a
        KeyboardInterrupt) and released the destination's lock.
        """
        self.close_stdin()
        if self.stdout_r >= 0:
            os.close(self.stdout_r)
            self.stdout_r = -1
        with self._own_lock:
            if self._job_stdin in self._own:
                null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.dup2(null, self._job_stdin, inheritable=False)
                finally:
                    os.close(null)

    def _wait(self) -> None:
        """Until the job has ended. Not ``Thread.join``: under 3.11 a join that a
        KeyboardInterrupt cut short leaves the thread marked as ended, and the next join
        returns at once while it runs; and a blocking join runs no bytecode for
        ``_thread.interrupt_main`` to be seen."""
        while not self._done.wait(0.05):
            pass

    def finish(self) -> JobReply:
        """Wait for the job; return its reply or raise its error."""
        self.close_stdin()
        self._wait()
        self.close()
        if self._error is not None:
            if isinstance(self._error, ChrootArchiveError):
                raise self._error
            if isinstance(self._error, OSError) and self._error.errno in (
                    errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise DestinationError(self._error.strerror or str(self._error)) \
                    from self._error
            raise InternalError(f"{type(self._error).__name__}: {self._error}") \
                from self._error
        assert self._reply is not None
        return self._reply

    def close(self) -> None:
        """Release everything; the job stops at its next read or write. Idempotent."""
        self.kill()
        self._wait()


def _enter_dest(root_fd: int, request: JobRequest) -> str:
    """The job's directory below the root, created first when the request says so."""
    dest = request.dest
    if dest in ("", ".", "/"):
        return "."
    if request.create_dest:
        try:
            Openat2FileOps(root_fd).make_dirs(dest)  # owned by the caller, as it runs it
        except OSError as err:
            raise from_os_error(err, dest, kind=DestinationError) from err
    return dest
