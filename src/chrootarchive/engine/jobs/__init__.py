"""The jobs a worker (or the in-process runner) can run: ``unpack``, ``pack``, ``probe``.

A job module provides ``JOB``, an object with the :class:`Job` interface. The mechanism
that runs it (a jailed worker, :mod:`chrootarchive.jail.main`, or the in-process
``openat2`` runner) gives it a :class:`JobContext`: where to read and write, how paths
are resolved, how to warn. A job never knows how it is confined.
"""

from __future__ import annotations

from chrootarchive.contract import MAX_WARNINGS

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from typing import Protocol

    from chrootarchive.contract import IdRange, JobReply, JobRequest
    from chrootarchive.engine.fsops import FileOps

    IdMapRanges = tuple[IdRange, ...]  # ids inside (container_id) and outside (host_id)

__all__ = ["WRITE_FILES", "Job", "JobContext"]

#: The capabilities writing files needs (what the unpack job keeps once jailed).
WRITE_FILES = frozenset({
    # No CAP_DAC_READ_SEARCH: it would allow open_by_handle_at out of the jail.
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_MKNOD", "CAP_SETFCAP",
})


class JobContext:
    """What a running job is given besides its request.

    Attributes:
        stdin: the descriptor the job reads its input from (unpack: the tar stream).
        stdout: the descriptor the job writes its output to (pack: the tar stream).
        channel: a stack of layers: the layer channel (:mod:`chrootarchive._channel`),
            else -1.
        ring_pipes: a stream in a ring (``JobRequest.ring``, :mod:`chrootarchive._ring`;
            ``stdin`` is the ring): its *written* and *freed* pipes, else -1s.
        files: the file operations, relative to the directory the job works in, as the
            mechanism resolves paths (the jail's, or ``openat2`` under a pinned root).
        root_fd: the root that absolute paths of the job are resolved under
            (``AT_FDCWD`` in a jail).
        own_process: the job runs in a worker process of its own (it may take signals);
            False in the caller's process.
        in_user_namespace: without full privilege over the files (a user namespace, or
            an unprivileged caller): owners and some xattrs degrade.
        outside_ids: in a user namespace the jail made, its uid and gid maps (ids
            inside as ``container_id``, outside as ``host_id``): who owns a file
            outside.
        warnings: what :meth:`warn` collected (at most ``MAX_WARNINGS``).
    """

    __slots__ = ("channel", "files", "in_user_namespace", "outside_ids", "own_process",
                 "ring_pipes", "root_fd", "stdin", "stdout", "warnings")

    def __init__(self, *, stdin: int, stdout: int, files: FileOps, root_fd: int,
                 own_process: bool, in_user_namespace: bool, channel: int = -1,
                 ring_pipes: tuple[int, int] = (-1, -1),
                 outside_ids: tuple[IdMapRanges, IdMapRanges] | None = None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.channel = channel
        self.ring_pipes = ring_pipes
        self.files = files
        self.root_fd = root_fd
        self.own_process = own_process
        self.in_user_namespace = in_user_namespace
        self.outside_ids = outside_ids
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)


if TYPE_CHECKING:

    class Job(Protocol):
        """What a job module provides as its ``JOB`` object."""

        #: Capabilities raised only around a privileged call (``trusted.*`` xattrs).
        dormant_capabilities: frozenset[str]
        #: Opens files of the tree for reading: a jailed worker runs it only where its
        #: mounts are ``nodev`` (no device a racer swaps in can be opened).
        reads_files: bool

        def capabilities(self, request: JobRequest) -> frozenset[str]:
            """The capabilities the job keeps once jailed."""

        def prepare(self, request: JobRequest) -> None:
            """Before the jail: import what this request needs (none are possible later)."""

        def run(self, request: JobRequest, context: JobContext) -> JobReply:
            """Do the work, confined; raise a ChrootArchiveError on bad input."""
