"""The job ``unpack``: read a tar stream and unpack it below the directory it works in."""

from __future__ import annotations

import _socket
import os
import time

from chrootarchive import _channel
from chrootarchive._fdio import write_all
from chrootarchive._ring import RingInput
from chrootarchive.contract import JobReply, limits_after
from chrootarchive.engine import unpacker
from chrootarchive.engine.jobs import WRITE_FILES
from chrootarchive.errors import NOT_A_TAR, LimitExceededError, MalformedArchiveError
from chrootarchive.tarformat import reader as tarreader

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from chrootarchive.contract import JobRequest, UnpackSpec
    from chrootarchive.engine.jobs import JobContext

__all__ = ["JOB"]


def _alarm(signum: int, frame: object) -> None:
    raise LimitExceededError("limit timeout exceeded (the worker was stopped)")


class UnpackJob:
    #: Raised only around setting ``trusted.*`` xattrs (see ``jail.lockdown``).
    dormant_capabilities = frozenset({"CAP_SYS_ADMIN"})
    #: Opens nothing it did not create (``O_EXCL``), but directories and ``O_PATH``.
    reads_files = False

    def capabilities(self, request: JobRequest) -> frozenset[str]:
        return WRITE_FILES

    def prepare(self, request: JobRequest) -> None:
        """Before the jail: import what this request needs and nothing else."""
        spec = request.unpack
        if spec is not None and spec.limits.timeout is not None:
            import signal  # noqa: F401 - used by run()
        if spec is not None and spec.excludes:
            import re  # noqa: F401 - exclude patterns are compiled inside the jail
        if request.helper:
            import chrootarchive.engine.finisher  # noqa: F401 - forked by the unpacker

    def run(self, request: JobRequest, context: JobContext) -> JobReply:
        spec = request.unpack
        if spec is None:
            raise ValueError("an unpack request without unpack options")
        if spec.limits.timeout is not None and context.own_process:
            import signal  # imported by prepare(), before the jail

            # Entry-by-entry checks stop a busy worker; the alarm also stops a worker
            # blocked on a slow (trickling) input. (Only in a process of our own: a
            # signal handler is not the caller's to take.)
            signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, spec.limits.timeout + 0.2)
        names = _NameList(context.stdout) if spec.verbose else None
        if request.stack:
            return _run_stack(request, spec, context, names)
        ring = (RingInput(context.stdin, request.ring, *context.ring_pipes)
                if request.ring else None)
        _, stats, details = _unpack_one(request, spec, context, context.stdin, ring, names)
        return JobReply.make(stats.entries, stats.size, details or None)


#: Bytes a layer's stream may hold after the end of its archive (tar padding).
LAYER_TRAILING_MAX = 16 << 20


def _unpack_one(request: JobRequest, spec: UnpackSpec, context: JobContext, fd: int,
                ring: RingInput | None, names: _NameList | None,
                data_links: unpacker.DataLinks | None = None,
                ) -> tuple[unpacker.Unpacker, unpacker.UnpackStats, dict[str, object]]:
    """Unpack the tar stream read from ``fd`` (to its end; ``ring``: the ring ``fd``
    is) with a fresh unpacker: it, its stats and the reply's details."""
    worker = unpacker.Unpacker(
        context.files, spec, context.warn, layer_mode=request.layer,
        in_user_namespace=context.in_user_namespace,
        listed=None if names is None else names.add, data_links=data_links,
    )
    if request.helper and context.own_process:
        # Forked from a jailed worker of our own only: openat2 runs in the caller's
        # process (its threads, its working directory), where a fork is no helper's.
        worker.finisher_countdown = unpacker.FINISHER_AFTER
    reader = tarreader.TarReader(fd, ring=ring, end_in_padding=request.digested)
    try:
        stats = worker.run(reader)
    finally:
        if names is not None:
            names.flush()  # what was unpacked before an error is listed too
    if not stats.entries and not reader.offset:
        # GNU tar and bsdtar refuse an empty input (a tar of only end-of-archive
        # blocks stays a valid empty archive: layers use it).
        raise MalformedArchiveError(f"{NOT_A_TAR}: empty input")
    # Archives may be zero-padded: read the input to its end. Only on success: after
    # an error (a bomb stopped by a limit) the worker exits and the parent stops.
    # A layer's padding is a record at most (10 KiB for GNU tar, none for Go's): what
    # follows beyond LAYER_TRAILING_MAX is not read for days (a registry's blob). Any
    # other stream's is read through as data nothing writes (unpacker.PASS_FLOOR).
    if request.layer:
        reader.drain(LAYER_TRAILING_MAX)
    else:
        reader.drain(worker.trailing_allowance(), worker.trailing_error)
    details: dict[str, object] = {}
    privileged = {what: n for what, n in worker.filter.privileged.items() if n}
    if privileged:
        details["privileged"] = privileged
    if stats.skipped_xattrs:
        details["skipped_xattrs"] = stats.skipped_xattrs
    return worker, stats, details


def _run_stack(request: JobRequest, spec: UnpackSpec, context: JobContext,
               names: _NameList | None) -> JobReply:
    """The layers of one image, one after another, as the layer channel hands them over
    (each in a ring of its own, as an ``untar`` gets its stream, or a pipe).

    Each layer gets a fresh unpacker, as a worker of its own would: a layer's whiteouts
    apply to the layers below it only, and what it wrote is its own state (and its own
    helper, if it forks one). The limits hold for the whole stack: each layer counts
    what the ones before it used.
    """
    if context.channel < 0:
        raise ValueError("a stack of layers without a layer channel")
    sock = _socket.socket(fileno=os.dup(context.channel))
    limits = spec.limits
    deadline = (None if limits.timeout is None
                else time.monotonic() + limits.timeout - limits.used_seconds)
    entries = size = layers = 0
    # filter data: the symlinks of every layer are followed at the end of the stack.
    data_links = unpacker.DataLinks(context.files) if spec.filter == "data" else None
    last: unpacker.Unpacker | None = None
    try:
        while (fds := _channel.receive_layer(sock)) is not None:
            try:
                layer_spec = spec.replace(limits=limits_after(limits, size, entries, deadline))
                ring = (RingInput(fds[0], request.ring, fds[1], fds[2])
                        if len(fds) == 3 and request.ring else None)
                if ring is None and len(fds) != 1:
                    raise ValueError("a layer in a ring, but the job was given no ring size")
                last, stats, details = _unpack_one(request, layer_spec, context, fds[0],
                                                   ring, names, data_links)
            finally:
                for fd in fds:
                    os.close(fd)
            entries += stats.entries
            size += stats.size
            layers += 1
            reply = JobReply.make(stats.entries, stats.size, details)
            reply.warnings = tuple(context.warnings)
            context.warnings.clear()  # each layer's own (and at most MAX_WARNINGS each)
            _channel.send_result(sock, reply.to_wire())
        if last is not None:
            last.check_data_links()
    finally:
        sock.close()
    return JobReply.make(entries, size, {"layers": layers})


class _NameList:
    """The names of unpacked entries, NUL-terminated, written to the job's stdout in
    batches (``tar -v``): the caller prints them as they come."""

    __slots__ = ("_buffer", "_fd")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def add(self, name: str) -> None:
        self._buffer += name.encode("utf-8", "surrogateescape") + b"\0"
        if len(self._buffer) >= 16 << 10:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            write_all(self._fd, self._buffer)
            self._buffer.clear()


JOB = UnpackJob()
