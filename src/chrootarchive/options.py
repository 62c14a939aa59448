"""Plain data: what the caller asks for, and what an unpack reports.

Options cross the process boundary to the worker as JSON, so they hold only numbers,
strings, booleans and tuples of those.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IDMap", "UnpackOptions", "UnpackResult"]

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
