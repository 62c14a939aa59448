"""The worker process itself: confine, lock down, run one job, report.

Started by :class:`chrootarchive.runner.worker.Worker` as ``python -I -S -c <boot>``. Its
start-up is most of the cost of a small archive, so this module and everything a job
needs before the jail imports only what it uses: no ``json`` (and ``re``), no
``typing``, no ``dataclasses``, no ``subprocess``.
"""

from __future__ import annotations

import errno
import os
import resource
import sys

from chrootarchive import _wire
from chrootarchive.errors import ChrootArchiveError, DestinationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["child_main"]

#: Job name -> module (inside this package) whose ``run(request, warn)`` does the work.
JOBS = {"unpack": "engine.jobs.unpack", "probe": "engine.jobs.probe", "pack": "engine.jobs.pack"}

#: What a jailed worker keeps to write files; a job may ask for more (``capabilities``).
DEFAULT_CAPABILITIES = frozenset({
    # No CAP_DAC_READ_SEARCH: it would allow open_by_handle_at out of the jail.
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_MKNOD", "CAP_SETFCAP",
})

_MAX_WARNINGS = 1000
READY = b"\x01"  # sent once confined, before any data is read
_SIGKILL = 9
_MAX_FDS = 8  # result, root, stdin, stdout, stderr, sync: the most a job is given


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


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
    _write_all(fd, _wire.dumps(message))


def _error_message(err: BaseException) -> dict[str, Any]:
    if isinstance(err, ChrootArchiveError):
        return {"error": {"type": type(err).__name__, "message": err.message,
                          "entry": err.entry}}
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return {"error": {"type": "DestinationError", "message": err.strerror, "entry": None}}
    return {"error": {"type": "InternalError",
                      "message": f"{type(err).__name__}: {err}", "entry": None}}


def child_main(argv: list[str]) -> None:
    """Entry point of the worker: ``CONTROL_FD PARENT_PID JOB``.

    The worker boots (imports everything its job can need) before it knows its job's
    details, then waits on the control socket for them: one request document and the
    descriptors it works with. A worker spawned for a call gets them at once; a standby
    (:mod:`chrootarchive.runner.standby`) gets them at the next call.
    """
    control_fd, parent_pid, job_name = int(argv[0]), int(argv[1]), argv[2]
    from chrootarchive import _linux

    _linux.prctl(_linux.PR_SET_PDEATHSIG, _SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent is already gone
    job = _boot(job_name)
    received = _receive(control_fd, job_name)
    if received is None:
        os._exit(0)  # the parent let its standby go without a job
    request, fds = received
    result_fd = fds.get("result", -1)
    if result_fd < 0:
        os._exit(1)  # nowhere to report: the parent sees a worker without a result
    try:
        result = _child_work(job, request, fds)
        _send(result_fd, {"result": result})
        code = 0
    except BaseException as err:
        if request.get("debug"):
            _print_traceback(err)
        try:
            _send(result_fd, _error_message(err))
        except OSError:
            pass
        code = 1
    os.close(result_fd)
    os._exit(code)


def _boot(job_name: str) -> Any:
    """Import everything the worker will ever need (before its job, before the jail)."""
    from chrootarchive import _linux
    from chrootarchive.engine import fsops  # noqa: F401 - fsops: _enter_dest
    from chrootarchive.jail.confine import pivot  # noqa: F401

    job_module = f"chrootarchive.{JOBS[job_name]}"
    __import__(job_module)
    _linux.preload_library("libgcc_s.so.1")
    os.umask(0)
    return sys.modules[job_module]


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


def _receive(control_fd: int, job_name: str) -> tuple[dict[str, Any], dict[str, int]] | None:
    """The job from the parent: a JSON request for ``job_name``, and the descriptors
    named by its ``fds``.

    None when the parent closed the socket without a job. The first message carries
    the descriptors (SCM_RIGHTS); the rest of the document follows until EOF.
    """
    import _socket

    sock = _socket.socket(fileno=control_fd)
    try:
        data, ancillary, flags, _addr = sock.recvmsg(
            1 << 16, _socket.CMSG_SPACE(_MAX_FDS * 4), _socket.MSG_CMSG_CLOEXEC)
        passed: list[int] = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                passed += [int.from_bytes(payload[i:i + 4], sys.byteorder, signed=True)
                           for i in range(0, len(payload) - 3, 4)]
        if not data and not passed:
            return None
        document = bytearray(data)
        while chunk := sock.recv(1 << 16):
            document += chunk
    finally:
        sock.close()
    request = _wire.loads(document)
    names = request.get("fds") if isinstance(request, dict) else None
    if (flags & _socket.MSG_CTRUNC or not isinstance(request, dict)
            or request.get("job") != job_name
            or not isinstance(names, list) or len(names) != len(passed)):
        for fd in passed:
            os.close(fd)
        os._exit(1)  # not what the parent sends: nothing to report to
    return request, {str(name): fd for name, fd in zip(names, passed, strict=True)}


def _take_descriptors(fds: dict[str, int], request: dict[str, Any]) -> None:
    """Put the passed stdin, stdout and stderr in place; note the sync socket."""
    for name, target in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        fd = fds.get(name)
        if fd is not None:
            os.dup2(fd, target)
            os.close(fd)
    if "sync" in fds:
        request["sync_fd"] = fds["sync"]


def _child_work(job: Any, request: dict[str, Any], fds: dict[str, int]) -> dict[str, Any]:
    _take_descriptors(fds, request)
    result_fd, root_fd = fds["result"], fds["root"]
    from chrootarchive.jail import confine
    from chrootarchive.jail.confine import pivot

    request.setdefault("in_user_namespace", pivot.running_in_user_namespace())
    prepare = getattr(job, "prepare", None)
    if callable(prepare):
        prepare(request)  # imports only some requests need (none are possible later)
    if (request.get("options") or {}).get("excludes"):
        import re  # noqa: F401 - exclude patterns are compiled inside the jail

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
    _write_all(result_fd, READY)
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
            from chrootarchive.engine import fsops

            fsops.enable_privileged_xattrs(
                lambda on: _linux.set_effective(keep | dormant_caps if on else keep)
            )
    _linux.install_seccomp_denylist()


def _backing_rlimits(request: dict[str, Any]) -> None:
    """Kernel limits behind the unpack limits: file size and open files."""
    limits = (request.get("options") or {}).get("limits") or {}
    max_file = limits.get("max_file_size")
    if max_file is not None:
        # Python starts with SIGXFSZ ignored: writes past the limit fail with EFBIG.
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
            from chrootarchive.engine import fsops  # already imported by _child_work, pre-jail

            fsops.JailedFileOps().make_dirs(dest, request_owner)
        os.chdir(dest)
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.EEXIST):
            raise DestinationError("not a directory", dest) from err
        raise DestinationError(err.strerror or str(err), dest) from err
