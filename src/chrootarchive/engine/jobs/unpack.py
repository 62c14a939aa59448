"""The job ``unpack``: read a tar stream and unpack it below the directory it works in."""

from __future__ import annotations

from chrootarchive._fdio import write_all
from chrootarchive.contract import JobReply
from chrootarchive.engine import unpacker
from chrootarchive.engine.jobs import WRITE_FILES
from chrootarchive.errors import LimitExceededError, MalformedArchiveError
from chrootarchive.tarformat import reader as tarreader

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from chrootarchive.contract import JobRequest
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
        worker = unpacker.Unpacker(
            context.files, spec, context.warn, layer_mode=request.layer,
            in_user_namespace=context.in_user_namespace,
            listed=None if names is None else names.add,
        )
        if request.helper:
            worker.finisher_countdown = unpacker.FINISHER_AFTER
        reader = tarreader.TarReader(context.stdin)
        try:
            stats = worker.run(reader)
        finally:
            if names is not None:
                names.flush()  # what was unpacked before an error is listed too
        if not stats.entries and not reader.offset:
            # GNU tar and bsdtar refuse an empty input (a tar of only end-of-archive
            # blocks stays a valid empty archive: layers use it).
            raise MalformedArchiveError("not a tar archive: empty input")
        # Archives may be zero-padded: read the input to its end. Only on success: after
        # an error (a bomb stopped by a limit) the worker exits and the parent stops.
        reader.drain()
        details: dict[str, object] = {}
        privileged = {what: n for what, n in worker.filter.privileged.items() if n}
        if privileged:
            details["privileged"] = privileged
        if stats.skipped_xattrs:
            details["skipped_xattrs"] = stats.skipped_xattrs
        return JobReply.make(stats.entries, stats.size, details or None)


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
