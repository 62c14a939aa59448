"""The confined worker process and the parent/child protocol.

The parent spawns a fresh interpreter (``python -I -S``: no site, no environment, no
user paths; spawned, not forked, so it is cheap and inherits no threads or locks) with:

* a request pipe: one JSON document, parent to child (job name, mechanism, options);
* stdin: the data the job reads (the uncompressed tar stream for ``unpack``);
* stdout: the data the job writes (the tar stream for ``pack``), or /dev/null;
* a result pipe: one JSON document, child to parent: the job's result, or an error
  given as (class name, message, entry) and raised in the parent as the same class.

The child asks to be killed when its parent dies, imports everything it needs (the job
module included), enters the jail, then makes every further import fail. A job is a
module with ``run(request, warn) -> dict`` (see :data:`JOBS`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from chrootarchive.errors import (
    ChrootArchiveError,
    DestinationError,
    WorkerError,
    error_class,
)

__all__ = ["JOBS", "Worker", "feed", "run_job"]

#: Job name -> module (inside this package) whose ``run(request, warn)`` does the work.
JOBS = {"unpack": "unpack_job", "probe": "probe_job", "pack": "pack"}

#: What a jailed worker keeps to write files; a job may ask for more (``CAPABILITIES``).
DEFAULT_CAPABILITIES = frozenset({
    # No CAP_DAC_READ_SEARCH: it would allow open_by_handle_at out of the jail.
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_MKNOD", "CAP_SETFCAP",
})

_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
_MAX_RESULT = 16 << 20
_MAX_WARNINGS = 1000
_READY = b"\x01"  # sent by the worker once it is confined, before it reads any data

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from chrootarchive.worker import child_main; child_main(sys.argv[2:])"
)


# -- parent side ---------------------------------------------------------------------


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pipe(big: bool = False) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    if big:
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
    return r, w


class Worker:
    """One confined worker process running one job.

    Args:
        job: a name from :data:`JOBS`.
        root_fd: directory descriptor of the jail's root, pinned by the caller.
        request: the job's JSON-able request (``mechanism`` and ``dest`` included).
        stdin: an fd the worker reads as its stdin, or None for a pipe
            (:attr:`stdin_w` is then its write end).
        stdout_pipe: give the worker a stdout pipe (:attr:`stdout_r` is its read end).
    """

    def __init__(
        self,
        job: str,
        root_fd: int,
        request: dict[str, Any],
        *,
        stdin: int | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        if job not in JOBS:
            raise ValueError(f"unknown worker job {job!r}")
        self.stdin_w = -1
        self.stdout_r = -1
        self._reply = bytearray()
        self._ready = threading.Event()
        self._is_ready = False
        self._closed = False
        id_ranges = request.get("id_ranges")
        sync_parent: socket.socket | None = None
        sync_child: socket.socket | None = None
        if id_ranges:
            sync_parent, sync_child = socket.socketpair()
            request = dict(request, sync_fd=sync_child.fileno())
        req_r, req_w = _pipe()
        self._res_r, res_w = _pipe()
        child_stdin = stdin
        if stdin is None:
            child_stdin, self.stdin_w = _pipe(big=True)
        child_stdout: int | None = None
        if stdout_pipe:
            self.stdout_r, child_stdout = _pipe(big=True)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOT, _package_parent(),
                 str(req_r), str(res_w), str(root_fd), str(os.getpid())],
                stdin=child_stdin,
                stdout=child_stdout if child_stdout is not None else subprocess.DEVNULL,
                pass_fds=(req_r, res_w, root_fd)
                + ((sync_child.fileno(),) if sync_child is not None else ()),
                env={"LC_ALL": "C.UTF-8"},
            )
        except BaseException:
            for fd in (req_w, self._res_r, self.stdin_w, self.stdout_r):
                if fd >= 0:
                    os.close(fd)
            if sync_parent is not None:
                sync_parent.close()
            raise
        finally:
            for fd in (req_r, res_w):
                os.close(fd)
            if sync_child is not None:
                sync_child.close()
            if stdin is None and child_stdin is not None:
                os.close(child_stdin)
            if child_stdout is not None:
                os.close(child_stdout)
        self._reader = threading.Thread(target=self._read_result, daemon=True)
        self._reader.start()
        try:
            _write_all(req_w, json.dumps(dict(request, job=job)).encode())
        except BrokenPipeError:
            pass  # the worker died early; finish() reports it
        finally:
            os.close(req_w)
        if sync_parent is not None:
            with sync_parent:
                self._map_ids(sync_parent, id_ranges)

    def _map_ids(self, sync: socket.socket, ranges: Any) -> None:
        """Map the worker's user namespace to the caller's subordinate ranges."""
        from chrootarchive.confine import userns

        sync.settimeout(30)
        try:
            if sync.recv(1) != b"U":
                return  # the worker failed before unsharing; its reply says why
            try:
                userns.map_ids(self.proc.pid, tuple(ranges))
            except ChrootArchiveError as err:
                sync.sendall(b"F" + err.message.encode())
                return
            sync.sendall(b"M")
        except OSError:
            return

    def _read_result(self) -> None:
        first = True
        try:
            while len(self._reply) <= _MAX_RESULT:
                data = os.read(self._res_r, 65536)
                if not data:
                    return
                if first:
                    first = False
                    if data.startswith(_READY):
                        self._is_ready = True
                        data = data[1:]
                        self._ready.set()
                self._reply += data
        finally:
            self._ready.set()

    def wait_ready(self) -> None:
        """Block until the worker is confined; raise its error if it never got there."""
        self._ready.wait()
        if not self._is_ready:
            self.finish()  # raises the worker's error
            raise WorkerError("the worker stopped before it was confined")

    def close_stdin(self) -> None:
        if self.stdin_w >= 0:
            os.close(self.stdin_w)
            self.stdin_w = -1

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def finish(self) -> dict[str, Any]:
        """Wait for the worker; return its result or raise its error (same class)."""
        try:
            self.close_stdin()
            self.proc.wait()
            self._reader.join()
            return _decode_reply(bytes(self._reply), self.proc.returncode)
        finally:
            self.close()

    def close(self) -> None:
        """Release everything; kills the worker if it still runs. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.close_stdin()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join()
        os.close(self._res_r)
        if self.stdout_r >= 0:
            os.close(self.stdout_r)
            self.stdout_r = -1


def run_job(
    job: str,
    root_fd: int,
    request: dict[str, Any],
    data: Iterable[bytes] | int,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run a job that reads ``data`` (chunks, or a readable fd) and return its result.

    Chunks are fed by a thread, so that a worker that dies while the input stalls is
    noticed at once (the caller gets its error; the feeding thread ends with the input).
    """
    worker = Worker(job, root_fd, request, stdin=data if isinstance(data, int) else None)
    try:
        worker.wait_ready()
        if not isinstance(data, int):
            _feed_while_alive(worker, data, on_progress)
        return worker.finish()
    finally:
        worker.close()


def _feed_while_alive(
    worker: Worker, data: Iterable[bytes], on_progress: Callable[[int], None] | None
) -> None:
    fd, worker.stdin_w = worker.stdin_w, -1  # the feeding thread owns (and closes) it
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            feed(fd, data, on_progress)
        except BaseException as err:
            failure.append(err)
        finally:
            os.close(fd)
            done.set()

    threading.Thread(target=run, name="chrootarchive-feed", daemon=True).start()
    try:
        while not done.wait(0.05):
            if worker.proc.poll() is not None:
                # The worker ended first. If the feeding ends too (the input's last
                # bytes were bad, say), its error counts; if the input stalls, the
                # worker's own result or error is reported now.
                if not done.wait(0.2):
                    return
                break
    except BaseException:
        worker.kill()
        raise
    if failure:
        err = failure[0]
        if isinstance(err, ChrootArchiveError):
            # The worker saw a truncated stream; the feeding error is the real cause.
            with contextlib.suppress(ChrootArchiveError):
                worker.finish()
        else:
            worker.kill()
        raise err


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def feed(fd: int, chunks: Iterable[bytes], on_progress: Callable[[int], None] | None) -> None:
    """Write the stream to the worker; stop quietly if the worker stopped reading."""
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
            if on_progress is not None:
                on_progress(len(chunk))
    except BrokenPipeError:
        return  # the worker ended (its reply says why)


def _decode_reply(reply: bytes, returncode: int) -> dict[str, Any]:
    if not reply:
        if returncode < 0:
            name = signal.Signals(-returncode).name
            raise WorkerError(f"the worker was killed by {name} before it finished")
        raise WorkerError(f"the worker exited with status {returncode} without a result")
    try:
        message = json.loads(reply)
    except ValueError as err:
        raise WorkerError(f"the worker sent an unreadable reply: {err}") from None
    if "error" in message:
        detail = message["error"]
        raise error_class(str(detail["type"]))(str(detail["message"]), detail.get("entry"))
    if returncode != 0:
        raise WorkerError(f"the worker exited with status {returncode}")
    result: dict[str, Any] = message["result"]
    return result


# -- child side ----------------------------------------------------------------------


class _ImportsForbidden:
    """A meta path finder that fails every import after confinement, loudly."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        raise ImportError(f"import of {name!r} attempted inside the jail (refused)")


def _forbid_imports() -> None:
    sys.meta_path[:] = [_ImportsForbidden()]
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()
    sys.path[:] = []


def _send(fd: int, message: dict[str, Any]) -> None:
    _write_all(fd, json.dumps(message).encode())


def _error_message(err: BaseException) -> dict[str, Any]:
    if isinstance(err, ChrootArchiveError):
        return {"error": {"type": type(err).__name__, "message": err.message,
                          "entry": err.entry}}
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return {"error": {"type": "DestinationError", "message": err.strerror, "entry": None}}
    return {"error": {"type": "InternalError",
                      "message": f"{type(err).__name__}: {err}", "entry": None}}


def child_main(argv: list[str]) -> None:
    """Entry point of the worker: ``REQUEST_FD RESULT_FD ROOT_FD PARENT_PID``."""
    req_fd, result_fd, root_fd, parent_pid = (int(a) for a in argv)
    from chrootarchive import _linux

    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent is already gone
    request: dict[str, Any] = {}
    try:
        result = _child_work(req_fd, root_fd, result_fd, request)
        _send(result_fd, {"result": result})
        code = 0
    except BaseException as err:
        if request.get("debug"):
            _print_traceback(err)
        with contextlib.suppress(OSError):
            _send(result_fd, _error_message(err))
        code = 1
    os.close(result_fd)
    os._exit(code)


def _print_traceback(err: BaseException) -> None:
    """--debug: the traceback, printed with what was imported before the jail."""
    tb = err.__traceback__
    lines = []
    while tb is not None:
        code = tb.tb_frame.f_code
        lines.append(f"  {code.co_filename}:{tb.tb_lineno} in {code.co_name}")
        tb = tb.tb_next
    sys.stderr.write("worker traceback:\n" + "\n".join(lines)
                     + f"\n{type(err).__name__}: {err}\n")


def _read_request(fd: int) -> dict[str, Any]:
    document = bytearray()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        document += chunk
    os.close(fd)
    request: dict[str, Any] = json.loads(document)
    return request


def _child_work(
    req_fd: int, root_fd: int, result_fd: int, request: dict[str, Any]
) -> dict[str, Any]:
    # Everything the worker will ever need is imported here, before confinement.
    from chrootarchive import _linux, confine, fsops  # noqa: F401 - fsops: _enter_dest
    from chrootarchive.confine import pivot

    request.update(_read_request(req_fd))
    request.setdefault("in_user_namespace", pivot.running_in_user_namespace())
    job = importlib.import_module(f"chrootarchive.{JOBS[str(request['job'])]}")
    _linux.preload_library("libgcc_s.so.1")
    os.umask(0)

    sync_fd = request.get("sync_fd")
    used = confine.enter(str(request["mechanism"]), root_fd,
                         int(sync_fd) if sync_fd is not None else None)
    os.close(root_fd)
    if used.startswith("userns"):
        request["in_user_namespace"] = True
    _lock_down(job, request)
    _forbid_imports()

    warnings: list[str] = []

    def warn(text: str) -> None:
        if len(warnings) < _MAX_WARNINGS:
            warnings.append(text)

    dest = str(request.get("dest", "."))
    if dest not in ("", ".", "/"):
        owner = request.get("dest_owner")
        _enter_dest(dest, create=bool(request.get("create_dest", True)),
                    request_owner=tuple(owner) if owner else None)
    _write_all(result_fd, _READY)
    result: dict[str, Any] = job.run(request, warn)
    result["confinement"] = used
    result["warnings"] = warnings
    return result


def _lock_down(job: Any, request: dict[str, Any]) -> None:
    """Give up every power the job does not need, once jailed.

    Capabilities are cut to what writing files needs (no CAP_SYS_CHROOT, no ptrace, no
    network, and CAP_SYS_ADMIN only dormant: permitted but not effective, raised by one
    thread around the ``setxattr`` of a ``trusted.*`` name), ``no_new_privs`` is set, a
    seccomp filter refuses exec, mount, pivot_root, chroot, unshare and their kin
    whatever the capabilities, and core dumps are off.
    """
    from chrootarchive import _linux

    wanted = getattr(job, "capabilities", None)
    names = wanted(request) if callable(wanted) else DEFAULT_CAPABILITIES
    keep = {_linux.CAPABILITIES[name] for name in names}
    dormant: frozenset[str] = getattr(job, "dormant_capabilities", frozenset())
    dormant_caps = {_linux.CAPABILITIES[name] for name in dormant} - keep
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _backing_rlimits(request)
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    if os.geteuid() == 0:
        _linux.drop_capabilities(keep, dormant_caps)
        if dormant_caps:
            from chrootarchive import fsops

            fsops.enable_privileged_xattrs(
                lambda on: _linux.set_effective(keep | dormant_caps if on else keep)
            )
    _linux.install_seccomp_denylist()


def _backing_rlimits(request: dict[str, Any]) -> None:
    """Kernel limits behind the unpack limits: file size and open files."""
    limits = (request.get("options") or {}).get("limits") or {}
    max_file = limits.get("max_file_size")
    if max_file is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        want = int(max_file) + 1
        if hard == resource.RLIM_INFINITY or want <= hard:
            resource.setrlimit(resource.RLIMIT_FSIZE, (want, want))
    depth = limits.get("max_path_depth") or 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = int(depth) + 256  # a descriptor per level when removing deep trees
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))


def _enter_dest(dest: str, *, create: bool, request_owner: tuple[int, int] | None) -> None:
    """Create ``dest`` inside the jail if needed (following in-root symlinks) and enter it.

    CVE-2021-41089: the destination below the root is never made from outside the jail.
    """
    try:
        if create:
            from chrootarchive import fsops  # already imported by _child_work, pre-jail

            fsops.JailedFileOps().make_dirs(dest, request_owner)
        os.chdir(dest)
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.EEXIST):
            raise DestinationError("not a directory", dest) from err
        raise DestinationError(err.strerror or str(err), dest) from err
