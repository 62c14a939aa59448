"""Plain data: what the caller asks for, and what an unpack reports.

Options cross the process boundary to the worker as JSON, so they hold only numbers,
strings, booleans and tuples of those.
"""

from __future__ import annotations

import itertools
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence, Set

from chrootarchive._record import as_dict, field
from chrootarchive._record import record as dataclass
from chrootarchive.contract import FILTERS, OLD_FILES, IdRange, LimitSpec, PackSpec, UnpackSpec
from chrootarchive.engine.names import (  # 0.4 ms: the one pattern compiler
    EXCLUDE_STYLES,
    clean_name,
    exclude_matcher,
)
from chrootarchive.errors import BreakoutError

TYPE_CHECKING = False  # no typing at run time: the command line's start (issue 16)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

__all__ = [
    "GiB", "IDMap", "Limits", "PackOptions", "PackResult", "UnpackOptions", "UnpackResult",
]

GiB = 1 << 30
MiB = 1 << 20
#: The smallest ``Limits.max_memory``: a worker needs about 16 MiB to run.
MIN_MEMORY = 48 * MiB

#: Manifests with more layers are refused (``unpack_image(max_layers=...)``).
DEFAULT_MAX_LAYERS = 1000

WHITEOUT_FORMATS = ("aufs", "overlay")


# -- checks: every field is checked when an option object is made -----------------------

_MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "no change" to the kernel: never a real owner
#: The longest timeout, in seconds (about 31 years): the worker's interval timer takes
#: nanoseconds in 64 bits, and refuses more than about 292 years.
_MAX_TIMEOUT = 1e9


def _shown(value: object) -> str:
    """``repr(value)``, shortened: a message must stay readable whatever was passed."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print (sys.set_int_max_str_digits)
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= 60 else text[:40] + "..." + text[-15:]


def _int(name: str, value: object, *, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {_shown(value)}")
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {span}, not {_shown(value)}")
    return value


def _seconds(name: str, value: object) -> None:
    """A positive, finite number of seconds that the worker's timer can hold, or None."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {_shown(value)}")
    if not 0 < value <= _MAX_TIMEOUT:  # also refuses NaN
        raise ValueError(f"{name} must be more than 0 and at most {_MAX_TIMEOUT:.0e} "
                         f"seconds, not {_shown(value)}")


def _percent(name: str, value: object) -> None:
    """A percentage from 0 to 100 (excluded), or None."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a percentage or None, not {_shown(value)}")
    if not 0 <= value < 100:  # also refuses NaN
        raise ValueError(f"{name} must be a percentage from 0 to less than 100, not "
                         f"{_shown(value)}")


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {_shown(value)}")


def _confine(name: str, value: object) -> None:
    """``auto`` or the name of a confinement mechanism."""
    from chrootarchive.jail.confine import MECHANISMS  # 3-5 ms (_linux...): when first made

    _choice(name, value, ("auto", *MECHANISMS))


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string (one of {', '.join(choices)}), "
                        f"not {_shown(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {_shown(value)}")


def _strings(name: str, value: object) -> tuple[str, ...]:
    """A sequence of strings as a tuple; a lone string is a mistake, not a sequence."""
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a sequence of strings (a list or tuple), "
                        f"not one string {_shown(value)}")
    if not isinstance(value, Iterable) or isinstance(value, (Set, Mapping)):
        # a set or a dict has no order of its own, and the order of patterns matters
        raise TypeError(f"{name} must be a sequence of strings, not {_shown(value)}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold strings, not {_shown(item)}")
        if "\x00" in item:
            raise ValueError(f"{name}: {_shown(item)} contains a NUL byte")
    return items


def _patterns(name: str, value: object, style: str = "docker") -> tuple[str, ...]:
    """Exclude patterns, compiled now (with the engine's own compiler) so that a bad one
    is the caller's error, not the jail's."""
    patterns = _strings(name, value)
    try:
        exclude_matcher(patterns, style)
    except (ValueError, re.error):
        for pattern in patterns:  # name the bad one: re's own message does not
            try:
                exclude_matcher((pattern,), style)
            except (ValueError, re.error) as err:
                text = str(err)  # the engine's names the pattern, re's does not
                text = (text.replace(repr(pattern), _shown(pattern)) if repr(pattern) in text
                        else f"bad pattern {_shown(pattern)}: {text}")
                raise ValueError(f"{name}: {text}") from None
        raise
    return patterns


def _members(name: str, value: object) -> tuple[str, ...]:
    """Entry names, each checked as the worker will clean it: one that leaves the
    destination can name no entry that is unpacked."""
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray, Mapping)):
        value = list(value)  # a set of names is fine: their order does not matter
    names = _strings(name, value)
    for member in names:
        try:
            clean_name(member)
        except BreakoutError:
            raise ValueError(f"{name}: {_shown(member)} leaves the destination") from None
    return names


def _owner(name: str, value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (uid, gid) pair or None, not {_shown(value)}")
    return (_int(f"{name} uid", value[0], high=_MAX_ID), _int(f"{name} gid", value[1],
                                                              high=_MAX_ID))


def _id_maps(name: str, value: object) -> tuple[IDMap, ...]:
    if isinstance(value, IDMap):
        raise TypeError(f"{name} must be a sequence of IDMap, not one IDMap")
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence of IDMap, not {_shown(value)}")
    maps = tuple(value)
    for m in maps:
        if not isinstance(m, IDMap):
            raise TypeError(f"{name} must hold IDMap ranges, not {_shown(m)}")
    for kind in ("container_id", "host_id"):  # the kernel's uid_map refuses both
        spans = sorted((((getattr(m, kind), getattr(m, kind) + m.size), m) for m in maps),
                       key=lambda span: span[0])  # by span alone: IDMaps do not order
        for ((_, end), first), ((start, _), second) in itertools.pairwise(spans):
            if start < end:
                raise ValueError(f"{name}: {first} and {second} overlap in their {kind}s")
    return maps


def _names(name: str, value: object) -> dict[int, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of ids to names, not {_shown(value)}")
    out: dict[int, str] = {}
    for key, text in value.items():
        out[_int(f"{name} key", key, high=_MAX_ID)] = text
        if not isinstance(text, str):
            raise TypeError(f"{name}[{key}] must be a string, not {_shown(text)}")
        if "\x00" in text:
            raise ValueError(f"{name}[{key}]: {_shown(text)} contains a NUL byte")
    return out


@dataclass(frozen=True)
class IDMap:
    """One range of an id map: ``container_id .. container_id+size-1`` maps to host ids.

    Archive ids are container ids; files get the matching host id (as Docker's
    ``idtools.IDMap``).
    """

    container_id: int
    host_id: int
    size: int

    def __post_init__(self) -> None:
        _int("IDMap.container_id", self.container_id, high=_MAX_ID)
        _int("IDMap.host_id", self.host_id, high=_MAX_ID)
        _int("IDMap.size", self.size, low=1, high=_MAX_ID + 1)
        for kind in ("container_id", "host_id"):
            if getattr(self, kind) + self.size - 1 > _MAX_ID:
                raise ValueError(f"IDMap: {kind} + size goes past the largest id {_MAX_ID}")


@dataclass(frozen=True)
class Limits:
    """Resource limits; crossing one raises LimitExceededError naming it and the entry.

    The defaults stop bombs without getting in the way of real container images (a
    layer can hold tens of GB and a million files); an archive from the internet
    deserves tighter ones (``Limits.strict()``). ``None`` means no limit.

    Attributes:
        max_bytes: file data written, in total (holes of sparse files not counted),
            and data read past that nothing writes (a whiteout's, an excluded file's,
            what follows the end of the archive in a stream); listing
            (``list_entries``, which has no reserve): the tar stream read, decompressed.
        max_entries: archive entries.
        max_file_size: the size of one file (as declared, checked before writing).
        max_path_length: bytes in an entry's cleaned name (PATH_MAX is 4096).
        max_path_depth: components in an entry's cleaned name.
        max_xattr_bytes: names and values of one entry's xattrs together.
        max_memory: memory of the parent and the worker together, at least 48 MiB,
            shared (``contract.memory_shares``) between the window or dictionary a
            compressed stream may declare (9 MiB of the default 64 MiB: ``zstd -19``,
            ``xz -6``; a larger one is refused before it is allocated) and the worker's
            data segment (``RLIMIT_DATA``, 27 MiB: heap, anonymous mappings, thread
            stacks); above 64 MiB each gets half of the rest. Not counted: the ring
            a decompressed stream goes through to the worker (``chrootarchive._ring``),
            shared memory of at most 64 MiB that an input smaller than that does not
            fill, freed when the unpack (or the layer) ends.
        reserve: a percentage of the destination's filesystem kept free, of its space
            and of its inodes, but at most 1 GiB and 100,000 inodes: writing (the
            spool of an image tar included) stops with a limit error before the
            filesystem has less free (checked with ``fstatvfs``, at least every 64 MiB
            and 4,096 entries, and more often as the room left shrinks). 0 or None: no
            reserve (writing may fill the filesystem).
        timeout: wall-clock seconds for the whole operation (at most 10**9).
    """

    max_bytes: int | None = 1024 * GiB
    max_entries: int | None = 10_000_000
    max_file_size: int | None = 256 * GiB
    max_path_length: int | None = 4096
    max_path_depth: int | None = 1024
    max_xattr_bytes: int | None = 1 << 20
    max_memory: int | None = 64 * MiB
    reserve: float | None = 5.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_entries", "max_file_size", "max_path_length",
                     "max_path_depth", "max_xattr_bytes"):
            value = getattr(self, name)
            if value is not None:
                _int(f"Limits.{name}", value, low=1)
        if self.max_memory is not None:
            _int("Limits.max_memory", self.max_memory, low=MIN_MEMORY)
        _percent("Limits.reserve", self.reserve)
        _seconds("Limits.timeout", self.timeout)

    @classmethod
    def strict(cls) -> Limits:
        """Limits for a download from an untrusted source: 4 GiB, 100k entries, 1 hour."""
        return cls(max_bytes=4 * GiB, max_entries=100_000, max_file_size=4 * GiB,
                   max_path_length=1024, max_path_depth=64, max_xattr_bytes=64 << 10,
                   timeout=3600.0)


@dataclass(frozen=True)
class UnpackOptions:
    """How to unpack. The defaults are Docker's.

    Sequences may be given as lists (or any iterable but a lone string, a set or a
    mapping: the order of patterns matters); the fields hold them as tuples, so the
    options stay immutable and hashable.

    Attributes:
        no_lchown: do not change owners; files belong to the worker's user.
        chown: give every entry this ``(uid, gid)`` instead of the archive's.
        uid_maps: map archive uids to host uids; an unmapped uid is an error.
        gid_maps: the same for gids.
        excludes: patterns; a matching entry, or one under a matching directory, is
            not unpacked. How they match is ``exclude_style``.
        exclude_style: ``docker`` (the default, Docker's): a pattern is matched
            against the whole name from the root, ``*`` and ``?`` stay within one
            component, ``**`` crosses them, ``!PATTERN`` re-includes (last match
            wins); ``tar`` (GNU tar's ``--exclude``): a pattern may match any tail of
            the name that starts after a ``/``, and ``*`` crosses ``/`` (``*.txt``
            excludes ``sub/b.txt``). docs/excludes.md compares them.
        no_overwrite_dir_nondir: replacing a directory by a non-directory (or the
            reverse) is an error instead of a replacement.
        best_effort_xattrs: ignore "not supported" errors when setting xattrs.
        confine: ``auto``, or the name of one confinement mechanism.
        whiteout_format: ``aufs`` (default): whiteout entries are applied, removing
            what lower layers left (layers) or extracted as plain files (untar);
            ``overlay``: they become overlayfs whiteouts (a 0/0 character device, and
            ``trusted.overlay.opaque=y`` on opaque directories), for unpacking each
            layer into its own overlay diff directory.
        rootless_xattr: where an owner cannot be applied (unprivileged), record it in
            the ``user.rootlesscontainers`` xattr, as umoci's ``--rootless`` does.
        limits: resource limits (see :class:`Limits`).
        filter: PEP 706's name for how far the archive is trusted, as
            :mod:`tarfile`'s ``filter=`` (docs/filters.md): ``fully_trusted`` (the
            default: a root filesystem, as Docker unpacks it; what only a root
            filesystem needs is counted in :attr:`UnpackResult.privileged`); ``tar``
            (no setuid/setgid/sticky bit, no group/other write, no file capability);
            ``data`` (for uploads: ``tar``'s rules, no device node or FIFO, no symlink
            to an absolute path or out of the tree, files at least owner read/write,
            directories at the caller's default mode, only ``user.*`` xattrs, owners
            left to the caller). What a filter removes is counted in the warnings.
        strip_components: GNU tar's ``--strip-components``: remove this many leading
            components from each name and hardlink target; entries with no more are
            skipped.
        old_files: a file that exists where an entry goes (directories merge
            anyway): ``replace`` it (the default, as Docker and GNU tar do), ``keep``
            it and fail once the rest is unpacked (``--keep-old-files``, as GNU tar's
            ``-k``: a :class:`DestinationError` that is a ``FileExistsError``, naming the
            first), or ``skip`` the entry (``--skip-old-files``).
        atomic: unpack into a staging directory beside ``dest`` and rename it into
            place only when everything succeeded; ``dest`` must be missing or empty.
        members: the names of the only entries to unpack (``tarfile``'s
            ``extractall(members=)``, GNU tar's member arguments), or None for all. A
            name matches an entry of that name exactly (``./a`` and ``a/`` are ``a``),
            before ``strip_components``; a directory's entries are not selected with
            it. A name no entry has is an error once the rest is unpacked (with
            several layers: each layer must have every name).
    """

    no_lchown: bool = False
    chown: tuple[int, int] | None = None
    uid_maps: tuple[IDMap, ...] = ()
    gid_maps: tuple[IDMap, ...] = ()
    excludes: tuple[str, ...] = ()
    exclude_style: str = "docker"
    no_overwrite_dir_nondir: bool = False
    best_effort_xattrs: bool = False
    confine: str = "auto"
    whiteout_format: str = "aufs"
    rootless_xattr: bool = False
    limits: Limits = field(default_factory=Limits)
    filter: str = "fully_trusted"
    strip_components: int = 0
    old_files: str = "replace"
    atomic: bool = False
    members: tuple[str, ...] | None = None

    if TYPE_CHECKING:  # what a caller may pass: lists too; the fields hold tuples
        def __init__(
            self, no_lchown: bool = ..., chown: tuple[int, int] | list[int] | None = ...,
            uid_maps: Iterable[IDMap] = ..., gid_maps: Iterable[IDMap] = ...,
            excludes: Sequence[str] = ..., exclude_style: str = ...,
            no_overwrite_dir_nondir: bool = ..., best_effort_xattrs: bool = ...,
            confine: str = ..., whiteout_format: str = ..., rootless_xattr: bool = ...,
            limits: Limits = ..., filter: str = ..., strip_components: int = ...,
            old_files: str = ..., atomic: bool = ..., members: Iterable[str] | None = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("no_lchown", "no_overwrite_dir_nondir", "best_effort_xattrs",
                     "rootless_xattr", "atomic"):
            _bool(f"UnpackOptions.{name}", getattr(self, name))
        set_(self, "chown", _owner("UnpackOptions.chown", self.chown))
        set_(self, "uid_maps", _id_maps("UnpackOptions.uid_maps", self.uid_maps))
        set_(self, "gid_maps", _id_maps("UnpackOptions.gid_maps", self.gid_maps))
        _choice("UnpackOptions.exclude_style", self.exclude_style, EXCLUDE_STYLES)
        set_(self, "excludes", _patterns("UnpackOptions.excludes", self.excludes,
                                         self.exclude_style))
        _confine("UnpackOptions.confine", self.confine)
        _choice("UnpackOptions.whiteout_format", self.whiteout_format, WHITEOUT_FORMATS)
        _choice("UnpackOptions.filter", self.filter, FILTERS)
        _choice("UnpackOptions.old_files", self.old_files, OLD_FILES)
        _int("UnpackOptions.strip_components", self.strip_components, high=4096)
        if not isinstance(self.limits, Limits):
            raise TypeError(f"UnpackOptions.limits must be a Limits, not {_shown(self.limits)}")
        if self.members is not None:
            set_(self, "members", _members("UnpackOptions.members", self.members))


@dataclass(frozen=True)
class Result:
    """What every operation reports; :class:`UnpackResult`, :class:`PackResult` and
    :class:`~chrootarchive.ImageResult` add what is theirs.

    Attributes:
        entries: archive entries processed (unpacking: excluded ones included;
            packing: written, hardlinks included).
        size: unpacking: the sum of the entries' sizes, as Docker's ApplyLayer
            reports it; packing: bytes of file data written.
        confinement: the mechanism actually used (``pivot``, ``chroot``, ...).
        warnings: things skipped or degraded, one line each.
    """

    entries: int = 0
    size: int = 0
    confinement: str = ""
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return as_dict(self)


@dataclass(frozen=True)
class UnpackResult(Result):
    """What an unpack did (see :class:`Result`), and:

    Attributes:
        privileged: what the ``fully_trusted`` filter created that only a root
            filesystem needs, by kind (``device nodes``, ``setuid/setgid files``,
            ``file capabilities``); empty when there was none (or another filter).
        skipped_xattrs: xattrs of the archive not set: refused by the kernel (``EPERM``,
            as Docker and GNU tar skip them), not supported (``best_effort_xattrs``) or
            privileged without privilege. A warning says which.
    """

    privileged: Mapping[str, int] = field(default_factory=dict)
    skipped_xattrs: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnpackResult:
        return cls(
            entries=int(data["entries"]),
            size=int(data["size"]),
            confinement=str(data["confinement"]),
            warnings=tuple(str(w) for w in data["warnings"]),
            privileged={str(k): int(v) for k, v in data.get("privileged", {}).items()},
            skipped_xattrs=int(data.get("skipped_xattrs", 0)),
        )


COMPRESSIONS = ("none", "gzip", "zstd")
#: The levels each compressor takes (zlib/ISA-L's gzip: 0-9, zstd: 1-22).
_LEVELS = {"gzip": (0, 9), "zstd": (1, 22)}


def _relative_path(text: str, what: str) -> str:
    """Clean a path given relative to the source (``.`` for the source itself)."""
    if "\x00" in text:
        raise ValueError(f"{what}: {_shown(text)} contains a NUL byte")
    cleaned = posixpath.normpath(text.lstrip("/")) if text.strip("/") else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise ValueError(f"{what}: {_shown(text)} leaves the source directory")
    return cleaned


@dataclass(frozen=True)
class PackOptions:
    """How to make a tar stream (Docker's ``TarOptions``). The defaults copy everything.

    Sequences may be given as lists, as for :class:`UnpackOptions`; the fields hold
    tuples.

    Attributes:
        include_files: paths below the source to pack (default: the whole source);
            an explicitly included path is packed even if an exclude pattern matches
            it (as Docker does), its children are not.
        excludes: patterns matched against names relative to the source; a matching
            directory is skipped with everything below it. How they match is
            ``exclude_style``.
        exclude_style: ``docker`` (the default, Docker's: filepath.Match syntax,
            ``**``, ``!`` exceptions, last match wins) or ``tar`` (GNU tar's: any
            tail of the name, ``*`` crosses ``/``), as for :class:`UnpackOptions`.
        rebase_names: old prefix -> new prefix for the names in the archive (``.``
            as the old prefix renames the source itself: every name gets the new
            prefix; for a single file, its name).
        include_source_dir: also write an entry for the source directory itself
            (``./``, or its rebased name), carrying its mode, owner and times.
        chown: write every entry with this ``(uid, gid)``.
        uid_maps: map host uids (of the files) to container uids (in the archive):
            the reverse of :class:`UnpackOptions` maps; an unmapped uid is an error.
        gid_maps: the same for gids.
        user_names: uid -> user name to write in the archive (after mapping). Names
            are never looked up (CVE-2019-14271): without this, entries carry none.
        group_names: gid -> group name, the same way.
        compression: ``none``, ``gzip`` or ``zstd``; done by the caller's process,
            outside the jail.
        compression_level: the compressor's level, gzip 0-9, zstd 1-22 (None: its
            default).
        xattrs: write extended attributes (``SCHILY.xattr.*`` PAX records), such as
            ``security.capability``; ``security.selinux`` labels (host-specific) and
            ``trusted.*`` (readable only with CAP_SYS_ADMIN, which the jailed reader
            gives up) are never written.
        whole_second_mtimes: truncate times to whole seconds, as Docker does
            (reproducible layers, no PAX record per file); by default sub-second
            times are kept.
        sparse: write the holes of sparse files as holes (GNU tar's ``--sparse``:
            PAX GNU sparse 1.0, which GNU tar, bsdtar, Python's tarfile and Go
            read; an old reader makes a file of the map and the data). Off by
            default, as in GNU tar: a 2 GiB ``lastlog`` of 4 KiB is then 2 GiB.
        confine: ``auto``, or the name of one confinement mechanism.
    """

    include_files: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    exclude_style: str = "docker"
    rebase_names: Mapping[str, str] = field(default_factory=dict)
    include_source_dir: bool = False
    chown: tuple[int, int] | None = None
    uid_maps: tuple[IDMap, ...] = ()
    gid_maps: tuple[IDMap, ...] = ()
    user_names: Mapping[int, str] = field(default_factory=dict)
    group_names: Mapping[int, str] = field(default_factory=dict)
    compression: str = "none"
    compression_level: int | None = None
    xattrs: bool = True
    whole_second_mtimes: bool = False
    sparse: bool = False
    confine: str = "auto"

    if TYPE_CHECKING:  # what a caller may pass: lists too; the fields hold tuples
        def __init__(
            self, include_files: Sequence[str] = ..., excludes: Sequence[str] = ...,
            exclude_style: str = ..., rebase_names: Mapping[str, str] = ...,
            include_source_dir: bool = ...,
            chown: tuple[int, int] | list[int] | None = ..., uid_maps: Iterable[IDMap] = ...,
            gid_maps: Iterable[IDMap] = ..., user_names: Mapping[int, str] = ...,
            group_names: Mapping[int, str] = ..., compression: str = ...,
            compression_level: int | None = ..., xattrs: bool = ...,
            whole_second_mtimes: bool = ..., sparse: bool = ..., confine: str = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        _choice("PackOptions.compression", self.compression, COMPRESSIONS)
        level = self.compression_level
        if level is not None:
            if self.compression not in _LEVELS:
                raise ValueError(f"PackOptions.compression_level {_shown(level)} needs a "
                                 f"compression, not {self.compression!r}")
            low, high = _LEVELS[self.compression]
            _int(f"PackOptions.compression_level ({self.compression})", level, low=low,
                 high=high)
        for name in ("include_source_dir", "xattrs", "whole_second_mtimes", "sparse"):
            _bool(f"PackOptions.{name}", getattr(self, name))
        _confine("PackOptions.confine", self.confine)
        set_ = object.__setattr__
        set_(self, "chown", _owner("PackOptions.chown", self.chown))
        set_(self, "uid_maps", _id_maps("PackOptions.uid_maps", self.uid_maps))
        set_(self, "gid_maps", _id_maps("PackOptions.gid_maps", self.gid_maps))
        set_(self, "include_files",
             tuple(_relative_path(p, "PackOptions.include_files")
                   for p in _strings("PackOptions.include_files", self.include_files)))
        _choice("PackOptions.exclude_style", self.exclude_style, EXCLUDE_STYLES)
        set_(self, "excludes", _patterns("PackOptions.excludes", self.excludes,
                                         self.exclude_style))
        if not isinstance(self.rebase_names, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str)
                for k, v in self.rebase_names.items()):
            raise TypeError("PackOptions.rebase_names must map strings to strings, "
                            f"not {_shown(self.rebase_names)}")
        set_(self, "rebase_names", {
            _relative_path(old, "PackOptions.rebase_names key"): new.strip("/")
            for old, new in dict(self.rebase_names).items()
        })
        for new in self.rebase_names.values():
            if new and _relative_path(new, "PackOptions.rebase_names value") != new:
                raise ValueError(f"PackOptions.rebase_names value {_shown(new)} must be a "
                                 "clean relative path")
        set_(self, "user_names", _names("PackOptions.user_names", self.user_names))
        set_(self, "group_names", _names("PackOptions.group_names", self.group_names))


@dataclass(frozen=True)
class PackResult(Result):
    """What a pack did (see :class:`Result`; available once its stream was read to the
    end). Its warnings name what was skipped: sockets, files that vanished or changed
    type while being read, files that shrank."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackResult:
        return cls(
            entries=int(data["entries"]),
            size=int(data["size"]),
            confinement=str(data["confinement"]),
            warnings=tuple(str(w) for w in data["warnings"]),
        )


def given(options: object, cls: type[T], name: str = "options", hint: str = "") -> T:
    """``options``, or ``cls()`` for None. Another type is the caller's ``TypeError``
    at once: it was an ``AttributeError`` from deep inside (``untar(src, dest,
    "data")``), or passed unnoticed when empty (``options={}``)."""
    if options is None:
        return cls()
    if not isinstance(options, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise TypeError(f"{name} must be {article} {cls.__name__} or None, not "
                        f"{type(options).__name__}{hint}")
    return options


# -- the job contract: the one conversion from these classes to what a job reads -------


def _id_ranges(maps: tuple[IDMap, ...]) -> tuple[IdRange, ...]:
    return tuple(IdRange(container_id=m.container_id, host_id=m.host_id, size=m.size)
                 for m in maps)


#: The caller's limits as the engine reads them (the rest of LimitSpec is counted).
_LIMIT_FIELDS = tuple(name for name in LimitSpec.__slots__ if not name.startswith("used_"))


def unpack_spec(options: UnpackOptions, *, verbose: bool = False) -> UnpackSpec:
    """What the unpack job reads of ``options`` (the rest is the parent's business);
    ``verbose``: the job lists the names it unpacks."""
    limits = options.limits
    return UnpackSpec(
        no_lchown=options.no_lchown, chown=options.chown,
        uid_maps=_id_ranges(options.uid_maps), gid_maps=_id_ranges(options.gid_maps),
        excludes=tuple(options.excludes), exclude_style=options.exclude_style,
        no_overwrite_dir_nondir=options.no_overwrite_dir_nondir,
        best_effort_xattrs=options.best_effort_xattrs,
        whiteout_format=options.whiteout_format, rootless_xattr=options.rootless_xattr,
        limits=LimitSpec(**{name: getattr(limits, name) for name in _LIMIT_FIELDS},
                         used_bytes=0, used_entries=0, used_seconds=0.0),
        filter=options.filter, strip_components=options.strip_components,
        old_files=options.old_files, verbose=verbose, members=options.members,
        umask=_caller_umask() if options.filter == "data" else 0o022,
    )


def _caller_umask() -> int:
    from chrootarchive import _host

    return _host.current_umask()


def pack_spec(options: PackOptions, archive_files: tuple[str, ...] = ()) -> PackSpec:
    """What the pack job reads of ``options`` (compression is the parent's business)."""
    return PackSpec(
        archive_files=archive_files,
        include_files=tuple(options.include_files), excludes=tuple(options.excludes),
        exclude_style=options.exclude_style, rebase_names=dict(options.rebase_names),
        include_source_dir=options.include_source_dir, chown=options.chown,
        uid_maps=_id_ranges(options.uid_maps), gid_maps=_id_ranges(options.gid_maps),
        user_names={str(k): v for k, v in options.user_names.items()},
        group_names={str(k): v for k, v in options.group_names.items()},
        xattrs=options.xattrs, whole_second_mtimes=options.whole_second_mtimes,
        sparse=options.sparse,
    )
