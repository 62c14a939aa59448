"""Id maps: archive (container) ids to host ids and back, as Docker's ``idtools``.

A map is a sequence of ranges, each an object with ``container_id``, ``host_id`` and
``size`` (``container_id .. container_id+size-1`` are ``host_id ..`` on the host): the
public ``options.IDMap`` works, and so does any lean class with these attributes. No
map at all means identity. Lean: the jailed worker imports it.
"""

from __future__ import annotations

from chrootarchive.errors import ArchiveError

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol

    class IDRange(Protocol):
        """One range of a map (``options.IDMap`` is one)."""

        @property
        def container_id(self) -> int: ...
        @property
        def host_id(self) -> int: ...
        @property
        def size(self) -> int: ...

    IDMaps = Sequence[IDRange]

    class OwnerOptions(Protocol):
        """What decides the owner of new directories (``options.UnpackOptions`` has it)."""

        @property
        def uid_maps(self) -> IDMaps: ...
        @property
        def gid_maps(self) -> IDMaps: ...
        @property
        def chown(self) -> tuple[int, int] | None: ...
        @property
        def no_lchown(self) -> bool: ...
        @property
        def filter(self) -> str: ...

__all__ = ["mapped_root", "root_owner", "to_container", "to_host", "to_host_or_fail"]


def to_host(value: int, maps: IDMaps) -> int | None:
    """The host id of the container id ``value``, or None when no range holds it."""
    if not maps:
        return value
    for m in maps:
        if m.container_id <= value < m.container_id + m.size:
            return m.host_id + (value - m.container_id)
    return None


def to_container(value: int, maps: IDMaps) -> int | None:
    """The container id of the host id ``value``, or None when no range holds it."""
    if not maps:
        return value
    for m in maps:
        if m.host_id <= value < m.host_id + m.size:
            return m.container_id + (value - m.host_id)
    return None


def to_host_or_fail(value: int, maps: IDMaps, kind: str, entry: str | None) -> int:
    """:func:`to_host`, where an id without a host id makes the archive unusable.

    Args:
        kind: ``"uid"`` or ``"gid"``, for the message.
        entry: the entry that has the id.

    Raises:
        ArchiveError: no range holds ``value``.
    """
    host = to_host(value, maps)
    if host is None:
        raise ArchiveError(f"container {kind} {value} cannot be mapped to a host {kind}",
                           entry)
    return host


def mapped_root(uid_maps: IDMaps, gid_maps: IDMaps) -> tuple[int, int]:
    """The host (uid, gid) of the container's root: the owner of the directories that
    an unpack makes itself (its destination, implied parents), as Docker's
    ``MkdirAllAndChownNew`` does.

    Raises:
        ArchiveError: a map has no range for id 0.
    """
    return (to_host_or_fail(0, uid_maps, "uid", None),
            to_host_or_fail(0, gid_maps, "gid", None))


def root_owner(options: OwnerOptions) -> tuple[int, int] | None:
    """The host owner of the directories an unpack makes itself, or None to leave the
    creator's: ``chown`` when given, else the mapped root; None when owners are not set
    (``no_lchown``, the ``data`` filter).

    Raises:
        ArchiveError: owners are mapped and a map has no range for id 0.
    """
    if options.no_lchown or options.filter == "data":
        return None
    if options.chown is not None:
        return options.chown
    return mapped_root(options.uid_maps, options.gid_maps)
