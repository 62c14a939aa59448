"""The worker process itself: boot, receive the job, confine, lock down, run, report.

Started by :class:`chrootarchive.runner.spawn.Booted` as ``python -I -S -c <boot>``. Its
start-up is most of the cost of a small archive, so this module and everything a job
needs before the jail imports only what it uses: no ``json`` (and ``re``), no
``typing``, no ``dataclasses``, no ``subprocess``.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal, without its enum
import errno
import gc
import os
import sys

from chrootarchive import _fdio, _wire
from chrootarchive.contract import JOB_MODULES, JobReply, JobRequest, encode_error, encode_reply
from chrootarchive.errors import DestinationError, MechanismUnavailableError, from_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:

    from chrootarchive.engine.jobs import Job

__all__ = ["READY", "child_main"]

READY = b"\x01"  # sent once confined, before any data is read
_MAX_FDS = 10  # result, root, stdin, stdout, stderr, sync, channel, the ring's two pipes


def child_main(argv: list[str]) -> None:
    """Entry point of the worker: ``CONTROL_FD PARENT_PID JOB``.

    The worker boots (imports everything its job can need) before it knows its job's
    details, then waits on the control socket for them: one request document and the
    descriptors it works with. A worker spawned for a call gets them at once; a standby
    (:mod:`chrootarchive.runner.standby`) gets them at the next call.
    """
    control_fd, parent_pid, job_name = int(argv[0]), int(argv[1]), argv[2]
    # SIGINT ends the worker as SIGTERM does, by the signal, which the parent names;
    # not as Python's KeyboardInterrupt, raised wherever the job was and reported as
    # an internal error. (Ctrl-C reaches the parent too, which reports it.)
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    from chrootarchive import _linux

    _linux.prctl(_linux.PR_SET_PDEATHSIG, _linux.SIGKILL)
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
        reply = _child_work(job, request, fds)
        _fdio.write_all(result_fd, _wire.dumps(encode_reply(reply)))
        code = 0
    except BaseException as err:
        if request.debug:
            _print_traceback(err)
        try:
            _fdio.write_all(result_fd, _wire.dumps(encode_error(err)))
        except OSError:
            pass
        code = 1
    os.close(result_fd)
    os._exit(code)


def _boot(job_name: str) -> Job:
    """Import everything the worker will ever need (before its job, before the jail)."""
    from chrootarchive import _linux
    from chrootarchive.engine import (
        fsops,  # noqa: F401 - _enter_dest
        jobs,  # noqa: F401
    )
    from chrootarchive.jail import confine, lockdown  # noqa: F401

    confine.import_all()
    module = JOB_MODULES[job_name]
    __import__(module)
    _linux.preload_library("libgcc_s.so.1")
    os.umask(0)
    job: Job = sys.modules[module].JOB
    # What the boot made (modules, classes, functions) lives as long as the worker:
    # the cycle collector need not walk it again at each of its full passes (issue 16:
    # 1.2% of the worker's instructions on an archive of small files).
    gc.freeze()
    return job


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


def _receive(control_fd: int, job_name: str) -> tuple[JobRequest, dict[str, int]] | None:
    """The job from the parent: a request for ``job_name``, and the descriptors named
    by the envelope's ``fds``.

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
    request = _decode_envelope(document, job_name, len(passed))
    if flags & _socket.MSG_CTRUNC or request is None:
        for fd in passed:
            os.close(fd)
        os._exit(1)  # not what the parent sends: nothing to report to
    names = request[1]
    return request[0], dict(zip(names, passed, strict=True))


def _decode_envelope(document: bytes | bytearray, job_name: str,
                     count: int) -> tuple[JobRequest, list[str]] | None:
    """The request and the names of the passed descriptors, or None if malformed."""
    try:
        envelope = _wire.loads(document)
        if not isinstance(envelope, dict):
            return None
        names = envelope.get("fds")
        request = JobRequest.from_wire(envelope.get("request"))
    except (ValueError, TypeError, KeyError):
        return None
    if (request.job != job_name or not isinstance(names, list) or len(names) != count
            or not all(isinstance(n, str) for n in names)):
        return None
    return request, names


def _take_descriptors(fds: dict[str, int]) -> None:
    """Put the passed stdin, stdout and stderr in place."""
    for name, target in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        fd = fds.get(name)
        if fd is not None:
            os.dup2(fd, target)
            os.close(fd)


def _child_work(job: Job, request: JobRequest, fds: dict[str, int]) -> JobReply:
    _take_descriptors(fds)
    result_fd, root_fd = fds["result"], fds["root"]
    from chrootarchive import _linux
    from chrootarchive.engine import fsops
    from chrootarchive.engine.jobs import JobContext
    from chrootarchive.jail import confine, lockdown
    from chrootarchive.jail.confine import mounts

    in_user_namespace = mounts.running_in_user_namespace()
    job.prepare(request)  # imports only some requests need (none are possible later)
    used = confine.enter(request.mechanism, root_fd, fds.get("sync"))
    os.close(root_fd)
    if job.reads_files and not mounts.devices_forbidden():
        raise MechanismUnavailableError(
            f"{used}: the jail's mounts could not be made nodev (mount_setattr, Linux "
            "5.12, in a mount namespace of the worker's own), so reading the tree could "
            "open a device swapped in for a file")
    if used.startswith("userns"):
        in_user_namespace = True
    lockdown.lock_down(job, request)
    if request.dest not in ("", ".", "/"):
        _enter_dest(request.dest, create=request.create_dest, owner=request.dest_owner)
    outside_ids = confine.userns.outside_ids if used.startswith("userns") else None
    context = JobContext(stdin=0, stdout=1, files=fsops.FileOps(), root_fd=_linux.AT_FDCWD,
                         own_process=True, in_user_namespace=in_user_namespace,
                         channel=fds.get("channel", -1),
                         ring_pipes=(fds.get("ring_written", -1), fds.get("ring_freed", -1)),
                         outside_ids=outside_ids)
    _fdio.write_all(result_fd, READY)
    reply = job.run(request, context)
    reply.confinement = used
    reply.warnings = tuple(context.warnings)
    return reply


def _enter_dest(dest: str, *, create: bool, owner: tuple[int, int] | None) -> None:
    """Create ``dest`` inside the jail if needed (following in-root symlinks) and enter it.

    CVE-2021-41089: the destination below the root is never made from outside the jail.
    """
    try:
        if create:
            from chrootarchive.engine import fsops  # imported by _boot, before the jail

            fsops.FileOps().make_dirs(dest, owner)
        os.chdir(dest)
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.EEXIST):
            raise DestinationError("not a directory", dest, errno.ENOTDIR) from err
        raise from_os_error(err, dest, kind=DestinationError) from err
