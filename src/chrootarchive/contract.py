"""The job contract: what the parent asks a job to do, and what the job answers.

One module for both sides. The parent builds a :class:`JobRequest` (from the public,
validated option classes of :mod:`chrootarchive.options`); a worker receives it as one
JSON document (:meth:`JobRequest.to_wire` / :meth:`JobRequest.from_wire`, the one
encoder and the one decoder) and the in-process runner receives the object itself. The
answer is a :class:`JobReply`, or an error that :func:`decode_reply` raises in the
parent as the same exception class.

The worker imports this module before it is jailed, so it stays lean: plain classes
with ``__slots__``, no ``typing``, no ``dataclasses``, no ``json``.
"""

from __future__ import annotations

import errno
import time

from chrootarchive.errors import ChrootArchiveError, LimitExceededError, WorkerError, error_class

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "FILTERS",
    "IN_PROCESS",
    "JOB_MODULES",
    "MAX_WARNINGS",
    "MECHANISMS",
    "OLD_FILES",
    "IdRange",
    "JobReply",
    "JobRequest",
    "LimitSpec",
    "PackSpec",
    "UnpackSpec",
    "decode_reply",
    "encode_error",
    "encode_reply",
    "limits_after",
    "memory_for_window",
    "memory_shares",
    "timeout_between_layers",
]

#: PEP 706's filter names (``tarfile``'s ``filter=``), most trusting first.
FILTERS = ("fully_trusted", "tar", "data")

#: The confinement mechanisms a request may name (:mod:`chrootarchive.jail.confine`
#: has one module each), strongest first.
MECHANISMS = ("pivot", "chroot", "userns", "openat2")
#: Mechanisms that run in the caller's process instead of a worker.
IN_PROCESS = frozenset({"openat2"})

#: What to do with a file that exists where an entry goes (GNU tar's options).
OLD_FILES = ("replace", "keep", "skip")

#: Job name -> the module whose ``JOB`` object does the work (see
#: :class:`chrootarchive.engine.jobs.Job`).
JOB_MODULES = {
    "unpack": "chrootarchive.engine.jobs.unpack",
    "pack": "chrootarchive.engine.jobs.pack",
    "probe": "chrootarchive.engine.jobs.probe",
}

#: Warnings a job reports at most (one line each); the rest are dropped.
MAX_WARNINGS = 1000

# How Limits.max_memory is shared between the parent's decompressor and the worker
# (memory_shares): both sides read it from here.
_MiB = 1 << 20
_MEMORY_BASE = 28 * _MiB  # the two interpreters: the parent ~21 MiB, the worker's code ~7
_MEMORY_REFERENCE = 64 * _MiB
_WINDOW_AT_REFERENCE = 9 * _MiB  # zstd up to -19 (8 MiB), xz up to -6 (8 MiB + 64 KiB)
_MIN_WINDOW = 1 * _MiB


def memory_shares(max_memory: int) -> tuple[int, int]:
    """How ``Limits.max_memory`` is shared: (the window or dictionary the parent's
    decompressor may take, the worker's data segment, ``RLIMIT_DATA``).

    The parent and the worker's mapped code take about 28 MiB besides; at 64 MiB the
    window gets 9 MiB (what ``zstd -19`` and ``xz -6`` need) and the worker 27 MiB;
    above or below 64 MiB each gets half of the difference.
    """
    window = max(_WINDOW_AT_REFERENCE + (max_memory - _MEMORY_REFERENCE) // 2, _MIN_WINDOW)
    return window, max_memory - _MEMORY_BASE - window


def memory_for_window(window: int) -> int:
    """The smallest ``max_memory`` whose window share holds ``window`` bytes."""
    return _MEMORY_REFERENCE + 2 * (window - _WINDOW_AT_REFERENCE)


class _Record:
    """A record of named fields that crosses the process boundary as a JSON object.

    Subclasses list their fields in ``__slots__`` and, in ``_NESTED``, the fields that
    hold other records (or tuples of them). Values are not checked here: the parent's
    option classes check them when they are made.
    """

    __slots__: tuple[str, ...] = ()
    _NESTED: dict[str, type[_Record]] = {}  # noqa: RUF012 - read-only class table

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, fields.pop(name))
        if fields:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(fields)}")

    def to_wire(self) -> dict[str, Any]:
        """The record as JSON-able values (records become objects, tuples lists)."""
        return {name: _to_wire(getattr(self, name)) for name in self.__slots__}

    @classmethod
    def from_wire(cls, data: Any) -> Any:
        """The record from :meth:`to_wire`'s output; ValueError if it is not one."""
        if not isinstance(data, dict) or set(data) != set(cls.__slots__):
            raise ValueError(f"not a {cls.__name__} document")
        fields = {}
        for name in cls.__slots__:
            value = data[name]
            nested = cls._NESTED.get(name)
            if nested is not None and value is not None:
                value = (tuple(nested.from_wire(v) for v in value) if isinstance(value, list)
                         else nested.from_wire(value))
            elif isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            fields[name] = value
        return cls(**fields)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (the mechanism of each rung of the ladder, the limits
        left for the next layer...)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return type(self)(**fields)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(repr(getattr(self, n)) for n in self.__slots__))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"


def _to_wire(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_wire()
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_wire(v) for k, v in value.items()}
    return value


class IdRange(_Record):
    """One range of an id map (see :class:`chrootarchive.IDMap`)."""

    __slots__ = ("container_id", "host_id", "size")
    container_id: int
    host_id: int
    size: int


class LimitSpec(_Record):
    """The limits of :class:`chrootarchive.Limits`, as the engine reads them."""

    __slots__ = (
        "max_bytes",
        "max_entries",
        "max_file_size",
        "max_memory",
        "max_path_depth",
        "max_path_length",
        "max_xattr_bytes",
        "reserve",
        "timeout",
        "used_bytes",
        "used_entries",
        "used_seconds",
    )
    max_bytes: int | None
    max_entries: int | None
    max_file_size: int | None
    max_path_length: int | None
    max_path_depth: int | None
    max_xattr_bytes: int | None
    max_memory: int | None
    reserve: float | None
    timeout: float | None
    # What the earlier parts of the same operation used (an image's spool and the layers
    # below this one): they count against max_bytes, max_entries and timeout, which
    # stay the caller's own (an error names the limit the caller set).
    used_bytes: int
    used_entries: int
    used_seconds: float


def timeout_between_layers(timeout: float) -> LimitExceededError:
    """The error of an image whose ``timeout`` ran out before its next layer."""
    return LimitExceededError(f"limit timeout ({timeout:g} seconds) exceeded (between layers)")


def limits_after(limits: LimitSpec, more_bytes: int, more_entries: int,
                 deadline: float | None) -> LimitSpec:
    """The limits of the next part of an operation (an image's next layer) after
    ``more_bytes`` and ``more_entries`` more were used, until ``deadline`` (a
    ``time.monotonic()`` value; None without a timeout). The limits hold for all the
    parts together; both the parent (a spool before the layers) and the worker of an
    image (between layers) count this way.

    What is used is counted beside the limits, not taken from them: a budget used up
    exactly stays 0 left (the next entry or byte fails), never "no limit".
    """
    used_seconds = limits.used_seconds
    if deadline is not None and limits.timeout is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise timeout_between_layers(limits.timeout)
        used_seconds = max(limits.timeout - left, 0.0)
    changed: LimitSpec = limits.replace(used_bytes=limits.used_bytes + more_bytes,
                                        used_entries=limits.used_entries + more_entries,
                                        used_seconds=used_seconds)
    return changed


class UnpackSpec(_Record):
    """What the unpacker needs of :class:`chrootarchive.UnpackOptions`."""

    __slots__ = (
        "best_effort_xattrs",
        "chown",
        "exclude_style",
        "excludes",
        "filter",
        "gid_maps",
        "limits",
        "members",
        "no_lchown",
        "no_overwrite_dir_nondir",
        "old_files",
        "rootless_xattr",
        "strip_components",
        "uid_maps",
        "umask",
        "verbose",
        "whiteout_format",
    )
    _NESTED = {"uid_maps": IdRange, "gid_maps": IdRange,  # noqa: RUF012
               "limits": LimitSpec}
    no_lchown: bool
    chown: tuple[int, int] | None
    uid_maps: tuple[IdRange, ...]
    gid_maps: tuple[IdRange, ...]
    excludes: tuple[str, ...]
    exclude_style: str  # docker or tar
    no_overwrite_dir_nondir: bool
    best_effort_xattrs: bool
    whiteout_format: str
    rootless_xattr: bool
    limits: LimitSpec
    filter: str  # PEP 706's name: fully_trusted, tar, data
    strip_components: int
    old_files: str  # replace, keep (an existing file is an error), skip
    umask: int  # the caller's: the data filter gives directories 0777 & ~umask
    verbose: bool  # write each unpacked entry's name to stdout (NUL-terminated)
    members: tuple[str, ...] | None  # the only names to unpack (tarfile's members=)


class PackSpec(_Record):
    """What the tree walk needs of :class:`chrootarchive.PackOptions`.

    ``user_names`` and ``group_names`` map ids (as strings: JSON object keys) to names.
    """

    __slots__ = (
        "archive_files",
        "chown",
        "exclude_style",
        "excludes",
        "gid_maps",
        "group_names",
        "include_files",
        "include_source_dir",
        "rebase_names",
        "sparse",
        "uid_maps",
        "user_names",
        "whole_second_mtimes",
        "xattrs",
    )
    _NESTED = {"uid_maps": IdRange, "gid_maps": IdRange}  # noqa: RUF012
    include_files: tuple[str, ...]
    excludes: tuple[str, ...]
    exclude_style: str  # docker or tar
    rebase_names: dict[str, str]
    include_source_dir: bool
    chown: tuple[int, int] | None
    uid_maps: tuple[IdRange, ...]
    gid_maps: tuple[IdRange, ...]
    user_names: dict[str, str]
    group_names: dict[str, str]
    xattrs: bool
    whole_second_mtimes: bool
    sparse: bool
    #: ``"dev:ino"`` of the file the archive is written to: never packed into itself.
    #: ``"dev:ino/NAME"`` when that file is written under a temporary name and will be
    #: renamed to NAME (a base name) in the same directory: the warning names NAME.
    archive_files: tuple[str, ...]


class JobRequest(_Record):
    """One job for a worker (or the in-process runner).

    Attributes:
        job: a name of :data:`JOB_MODULES`.
        mechanism: the confinement to enter (``pivot``, ``chroot``, ``userns``,
            ``openat2``).
        dest: the directory below the root to work in (``.``: the root itself).
        create_dest: create ``dest`` inside the jail when it is missing (CVE-2021-41089:
            never from outside).
        dest_owner: the host owner of directories the job makes, or None.
        layer: unpack a container layer (whiteouts).
        helper: the unpacker may fork a helper for small files (a large plain tar).
        stack: unpack several layers one after another, each read from a descriptor
            passed on the layer channel (:mod:`chrootarchive._channel`), not stdin.
        digested: the stack's layers are an image's, each checked against its DiffID
            by the parent: one may end in the padding after its last entry's data, as
            Go's archive/tar reads it (a stream cut there would fail that check).
        ring: unpack: stdin is a ring of this many bytes that the parent writes the
            stream into (:mod:`chrootarchive._ring`); 0: a pipe or a file.
        debug: print the worker's traceback on failure.
        src: pack: the path to pack, inside the root.
        display: pack: the source as the caller named it (for messages).
        unpack: the unpack job's options.
        pack: the pack job's options.
    """

    __slots__ = (
        "create_dest",
        "debug",
        "dest",
        "dest_owner",
        "digested",
        "display",
        "helper",
        "job",
        "layer",
        "mechanism",
        "pack",
        "ring",
        "src",
        "stack",
        "unpack",
    )
    _NESTED = {"unpack": UnpackSpec, "pack": PackSpec}  # noqa: RUF012
    job: str
    mechanism: str
    dest: str
    create_dest: bool
    dest_owner: tuple[int, int] | None
    layer: bool
    helper: bool
    stack: bool
    digested: bool
    ring: int
    debug: bool
    src: str
    display: str
    unpack: UnpackSpec | None
    pack: PackSpec | None

    @classmethod
    def make(cls, job: str, **fields: Any) -> JobRequest:
        """A request with every field not given at its default (``mechanism`` is set
        by the runner for each rung of the ladder)."""
        values: dict[str, Any] = {
            "mechanism": "", "dest": ".", "create_dest": True, "dest_owner": None,
            "layer": False, "helper": False, "stack": False, "digested": False, "ring": 0,
            "debug": False,
            "src": "",
            "display": "", "unpack": None, "pack": None,
        }
        values.update(fields)
        if job not in JOB_MODULES:
            raise ValueError(f"unknown job {job!r}")
        return cls(job=job, **values)

    def replace(self, **changes: Any) -> JobRequest:
        """A copy with ``changes`` (the mechanism of each rung of the ladder, say)."""
        request: JobRequest = super().replace(**changes)
        return request


class JobReply(_Record):
    """What a job did: counts, the mechanism used, warnings, and job-specific details."""

    __slots__ = ("confinement", "details", "entries", "size", "warnings")
    entries: int
    size: int
    confinement: str
    warnings: tuple[str, ...]
    details: dict[str, Any]

    @classmethod
    def make(cls, entries: int, size: int, details: dict[str, Any] | None = None) -> JobReply:
        """A job's own answer; the runner fills in the mechanism and the warnings."""
        return cls(entries=entries, size=size, confinement="", warnings=(),
                   details=details or {})


def encode_reply(reply: JobReply) -> dict[str, Any]:
    return {"result": reply.to_wire()}


def encode_error(err: BaseException) -> dict[str, Any]:
    """A job's failure as a document; :func:`decode_reply` raises it as the same class."""
    if isinstance(err, ChrootArchiveError):
        detail: dict[str, Any] = {
            "type": type(err).__name__, "message": err.message, "entry": err.entry}
        if isinstance(err, OSError) and err.errno is not None:
            detail["errno"] = err.errno
    elif isinstance(err, MemoryError):  # the worker's RLIMIT_DATA (Limits.max_memory)
        detail = {"type": "LimitExceededError", "entry": None, "message":
                  "limit max_memory exceeded: the worker ran out of the memory the limit "
                  "allows it (raise Limits.max_memory)"}
    elif isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        detail = {"type": "DestinationError", "message": err.strerror, "entry": None}
    else:
        detail = {"type": "InternalError", "message": f"{type(err).__name__}: {err}",
                  "entry": None}
    return {"error": detail}


def decode_reply(document: Any) -> JobReply:
    """The reply in a document from :func:`encode_reply`, or its error raised."""
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        detail = document["error"]
        entry = detail.get("entry")
        cls = error_class(str(detail.get("type")))
        message, where = str(detail.get("message")), None if entry is None else str(entry)
        code = detail.get("errno")
        if issubclass(cls, OSError) and isinstance(code, int):
            raise cls(message, where, code)  # type: ignore[call-arg]
        raise cls(message, where)
    if not isinstance(document, dict) or "result" not in document:
        raise WorkerError("the worker sent a reply that is neither a result nor an error")
    try:
        reply: JobReply = JobReply.from_wire(document["result"])
    except (ValueError, TypeError) as err:
        raise WorkerError(f"the worker sent an unreadable result: {err}") from None
    return reply
