"""Plain data: what the caller asks for, and what an unpack reports.

Options cross the process boundary to the worker as JSON, so they hold only numbers,
strings, booleans and tuples of those.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chrootarchive.contract import IdRange, LimitSpec, PackSpec, UnpackSpec

__all__ = [
    "GiB", "IDMap", "Limits", "PackOptions", "PackResult", "UnpackOptions", "UnpackResult",
]

GiB = 1 << 30

#: Manifests with more layers are refused (``unpack_image(max_layers=...)``).
DEFAULT_MAX_LAYERS = 1000

WHITEOUT_FORMATS = ("aufs", "overlay")


@dataclass(frozen=True)
class IDMap:
    """One range of an id map: ``container_id .. container_id+size-1`` maps to host ids.

    Archive ids are container ids; files get the matching host id (as Docker's
    ``idtools.IDMap``).
    """

    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class Limits:
    """Resource limits; crossing one raises LimitExceededError naming it and the entry.

    The defaults stop bombs without getting in the way of real container images (a
    layer can hold tens of GB and a million files); an archive from the internet
    deserves tighter ones (``Limits.strict()``). ``None`` means no limit.

    Attributes:
        max_bytes: file data written, in total (holes of sparse files not counted).
        max_entries: archive entries.
        max_file_size: the size of one file (as declared, checked before writing).
        max_path_length: bytes in an entry's cleaned name (PATH_MAX is 4096).
        max_path_depth: components in an entry's cleaned name.
        max_xattr_bytes: names and values of one entry's xattrs together.
        timeout: wall-clock seconds for the whole operation.
    """

    max_bytes: int | None = 1024 * GiB
    max_entries: int | None = 10_000_000
    max_file_size: int | None = 256 * GiB
    max_path_length: int | None = 4096
    max_path_depth: int | None = 1024
    max_xattr_bytes: int | None = 1 << 20
    timeout: float | None = None

    @classmethod
    def strict(cls) -> Limits:
        """Limits for a download from an untrusted source: 4 GiB, 100k entries, 1 hour."""
        return cls(max_bytes=4 * GiB, max_entries=100_000, max_file_size=4 * GiB,
                   max_path_length=1024, max_path_depth=64, max_xattr_bytes=64 << 10,
                   timeout=3600.0)


@dataclass(frozen=True)
class UnpackOptions:
    """How to unpack. The defaults are Docker's.

    Attributes:
        no_lchown: do not change owners; files belong to the worker's user.
        chown: give every entry this ``(uid, gid)`` instead of the archive's.
        uid_maps: map archive uids to host uids; an unmapped uid is an error.
        gid_maps: the same for gids.
        excludes: patterns (Docker/filepath.Match syntax, ``!`` for exceptions); a
            matching entry, or one under a matching directory, is not unpacked.
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
        data_only: for data, not root filesystems: no device nodes, no
            setuid/setgid/sticky bits, no file capabilities or other ``security.*`` and
            ``trusted.*`` xattrs, owners left to the caller; what is dropped is counted
            in the result's warnings.
        atomic: unpack into a staging directory beside ``dest`` and rename it into
            place only when everything succeeded; ``dest`` must be missing or empty.
    """

    no_lchown: bool = False
    chown: tuple[int, int] | None = None
    uid_maps: tuple[IDMap, ...] = ()
    gid_maps: tuple[IDMap, ...] = ()
    excludes: tuple[str, ...] = ()
    no_overwrite_dir_nondir: bool = False
    best_effort_xattrs: bool = False
    confine: str = "auto"
    whiteout_format: str = "aufs"
    rootless_xattr: bool = False
    limits: Limits = field(default_factory=Limits)
    data_only: bool = False
    atomic: bool = False

    def __post_init__(self) -> None:
        if self.whiteout_format not in WHITEOUT_FORMATS:
            raise ValueError(
                f"whiteout_format must be one of {', '.join(WHITEOUT_FORMATS)}, "
                f"not {self.whiteout_format!r}"
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnpackOptions:
        data = dict(data)
        data["uid_maps"] = tuple(IDMap(**m) for m in data.get("uid_maps", ()))
        data["gid_maps"] = tuple(IDMap(**m) for m in data.get("gid_maps", ()))
        data["excludes"] = tuple(data.get("excludes", ()))
        if data.get("chown") is not None:
            data["chown"] = (int(data["chown"][0]), int(data["chown"][1]))
        if isinstance(data.get("limits"), dict):
            data["limits"] = Limits(**data["limits"])
        return cls(**data)


@dataclass(frozen=True)
class UnpackResult:
    """What an unpack did.

    Attributes:
        entries: archive entries processed (excluded ones included).
        size: sum of the entries' sizes, as Docker's ApplyLayer reports it.
        confinement: the mechanism actually used (``pivot``, ``chroot``, ...).
        warnings: things skipped or degraded, one line each.
    """

    entries: int = 0
    size: int = 0
    confinement: str = ""
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnpackResult:
        return cls(
            entries=int(data["entries"]),
            size=int(data["size"]),
            confinement=str(data["confinement"]),
            warnings=tuple(str(w) for w in data["warnings"]),
        )


COMPRESSIONS = ("none", "gzip", "zstd")


def _relative_path(text: str, what: str) -> str:
    """Clean a path given relative to the source (``.`` for the source itself)."""
    if "\x00" in text:
        raise ValueError(f"{what} {text!r} contains a NUL byte")
    cleaned = posixpath.normpath(text.lstrip("/")) if text.strip("/") else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise ValueError(f"{what} {text!r} leaves the source directory")
    return cleaned


@dataclass(frozen=True)
class PackOptions:
    """How to make a tar stream (Docker's ``TarOptions``). The defaults copy everything.

    Attributes:
        include_files: paths below the source to pack (default: the whole source);
            an explicitly included path is packed even if an exclude pattern matches
            it (as Docker does), its children are not.
        excludes: patterns (Docker/filepath.Match syntax, ``**``, ``!`` exceptions,
            last match wins) matched against names relative to the source; a matching
            directory is skipped with everything below it.
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
        compression_level: the compressor's level (None: its default).
        xattrs: write extended attributes (``SCHILY.xattr.*`` PAX records), such as
            ``security.capability``; ``security.selinux`` labels (host-specific) and
            ``trusted.*`` (readable only with CAP_SYS_ADMIN, which the jailed reader
            gives up) are never written.
        whole_second_mtimes: truncate times to whole seconds, as Docker does
            (reproducible layers, no PAX record per file); by default sub-second
            times are kept.
        confine: ``auto``, or the name of one confinement mechanism.
    """

    include_files: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
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
    confine: str = "auto"

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {', '.join(COMPRESSIONS)}, "
                f"not {self.compression!r}"
            )
        if self.chown is not None and min(self.chown) < 0:
            raise ValueError(f"chown ids must be >= 0, not {self.chown!r}")
        set_ = object.__setattr__
        set_(self, "include_files",
             tuple(_relative_path(p, "include path") for p in self.include_files))
        set_(self, "excludes", tuple(self.excludes))
        set_(self, "rebase_names", {
            _relative_path(old, "rebase prefix"): new.strip("/")
            for old, new in dict(self.rebase_names).items()
        })
        for new in self.rebase_names.values():
            if new and _relative_path(new, "rebased name") != new:
                raise ValueError(f"rebased name {new!r} must be a clean relative path")
        set_(self, "user_names", {int(k): str(v) for k, v in dict(self.user_names).items()})
        set_(self, "group_names", {int(k): str(v) for k, v in dict(self.group_names).items()})

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rebase_names"] = dict(self.rebase_names)
        data["user_names"] = {str(k): v for k, v in self.user_names.items()}
        data["group_names"] = {str(k): v for k, v in self.group_names.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackOptions:
        data = dict(data)
        data["uid_maps"] = tuple(IDMap(**m) for m in data.get("uid_maps", ()))
        data["gid_maps"] = tuple(IDMap(**m) for m in data.get("gid_maps", ()))
        data["include_files"] = tuple(data.get("include_files", ()))
        data["excludes"] = tuple(data.get("excludes", ()))
        if data.get("chown") is not None:
            data["chown"] = (int(data["chown"][0]), int(data["chown"][1]))
        return cls(**data)


@dataclass(frozen=True)
class PackResult:
    """What a pack did (available once its stream was read to the end).

    Attributes:
        entries: entries written (hardlinks included).
        size: bytes of file data written.
        confinement: the mechanism actually used.
        warnings: things skipped (sockets, files that vanished or changed type while
            being read, files that shrank), one line each.
    """

    entries: int = 0
    size: int = 0
    confinement: str = ""
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackResult:
        return cls(
            entries=int(data["entries"]),
            size=int(data["size"]),
            confinement=str(data["confinement"]),
            warnings=tuple(str(w) for w in data["warnings"]),
        )


# -- the job contract: the one conversion from these classes to what a job reads -------


def _id_ranges(maps: tuple[IDMap, ...]) -> tuple[IdRange, ...]:
    return tuple(IdRange(container_id=m.container_id, host_id=m.host_id, size=m.size)
                 for m in maps)


def unpack_spec(options: UnpackOptions) -> UnpackSpec:
    """What the unpack job reads of ``options`` (the rest is the parent's business)."""
    limits = options.limits
    return UnpackSpec(
        no_lchown=options.no_lchown, chown=options.chown,
        uid_maps=_id_ranges(options.uid_maps), gid_maps=_id_ranges(options.gid_maps),
        excludes=tuple(options.excludes),
        no_overwrite_dir_nondir=options.no_overwrite_dir_nondir,
        best_effort_xattrs=options.best_effort_xattrs,
        whiteout_format=options.whiteout_format, rootless_xattr=options.rootless_xattr,
        limits=LimitSpec(**{name: getattr(limits, name) for name in LimitSpec.__slots__}),
        data_only=options.data_only,
    )


def pack_spec(options: PackOptions) -> PackSpec:
    """What the pack job reads of ``options`` (compression is the parent's business)."""
    return PackSpec(
        include_files=tuple(options.include_files), excludes=tuple(options.excludes),
        rebase_names=dict(options.rebase_names),
        include_source_dir=options.include_source_dir, chown=options.chown,
        uid_maps=_id_ranges(options.uid_maps), gid_maps=_id_ranges(options.gid_maps),
        user_names={str(k): v for k, v in options.user_names.items()},
        group_names={str(k): v for k, v in options.group_names.items()},
        xattrs=options.xattrs, whole_second_mtimes=options.whole_second_mtimes,
    )
