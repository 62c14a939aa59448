"""The job ``pack``: a tar stream of a tree, read without following a symlink.

In a jailed worker the tree lies below its root ``/`` and the stream goes to fd 1; under
``openat2`` the same walk runs in the caller's process, under a pinned root, into a pipe.
Compression is the parent's business. The walk is
:class:`~chrootarchive.engine.packer.Packer` (how it reads the tree without following a
symlink); the headers are :mod:`chrootarchive.tarformat.writer`'s.
"""

from __future__ import annotations

from chrootarchive import _linux
from chrootarchive.contract import JobReply
from chrootarchive.engine import fsops
from chrootarchive.engine.packer import Packer

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from chrootarchive.contract import JobRequest
    from chrootarchive.engine.jobs import JobContext

__all__ = ["JOB", "capabilities"]


def capabilities(request: JobRequest) -> frozenset[str]:
    """Reading needs only to bypass permissions (CAP_DAC_OVERRIDE; CAP_FOWNER for
    O_NOATIME). Not CAP_DAC_READ_SEARCH, although it would be enough to read: it also
    opens ``open_by_handle_at(2)``, which reaches any inode of the filesystem from inside
    the jail (the 2014 "shocker" container escape)."""
    return frozenset({"CAP_DAC_OVERRIDE", "CAP_FOWNER"})


def _raise_fd_limit() -> None:
    """One descriptor per directory level is held open: allow as many as we may
    (``_linux.prlimit``: the worker loads neither ``resource`` nor ``contextlib``)."""
    soft, hard = _linux.prlimit(_linux.RLIMIT_NOFILE)
    if soft != hard:
        try:  # noqa: SIM105 - the worker does not import contextlib
            _linux.prlimit(_linux.RLIMIT_NOFILE, (hard, hard))
        except OSError:
            pass  # the lock-down's own limit stands


class PackJob:
    """The job ``pack``: write the tar stream of ``request.src`` to the job's stdout."""

    dormant_capabilities: frozenset[str] = frozenset()
    reads_files = True

    def capabilities(self, request: JobRequest) -> frozenset[str]:
        return capabilities(request)

    def prepare(self, request: JobRequest) -> None:
        if request.pack is not None and request.pack.excludes:
            import re  # noqa: F401 - exclude patterns are compiled inside the jail

    def run(self, request: JobRequest, context: JobContext) -> JobReply:
        spec = request.pack
        if spec is None:
            raise ValueError("a pack request without pack options")
        if context.own_process:
            _raise_fd_limit()
        root_fd = context.root_fd
        packer = Packer(context.stdout, spec, context.warn, src=request.display or request.src,
                        jailed=root_fd == _linux.AT_FDCWD, outside_ids=context.outside_ids)
        packer.pack(lambda path: fsops.open_dir_in_root(root_fd, path), request.src)
        return JobReply.make(packer.entries, packer.size)


JOB = PackJob()
