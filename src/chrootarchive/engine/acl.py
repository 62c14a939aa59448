"""POSIX ACLs as archives carry them: the ``system.posix_acl_access`` and
``system.posix_acl_default`` xattrs in the kernel's binary form.

An ACL names users and groups by number, so its ids are owners like any other: they go
through the id maps, and inside a user namespace one that the namespace does not map
cannot be written (the kernel refuses the whole xattr with EINVAL). The format: a
4-byte little-endian version (2), then 8-byte entries ``tag, perm`` (16 bits each) and
``id`` (32 bits); only ``ACL_USER`` and ``ACL_GROUP`` entries carry an id. Lean: the
jailed worker imports it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ACL_XATTRS", "GROUP", "USER", "build", "map_ids", "parse"]

ACL_XATTRS = frozenset({"system.posix_acl_access", "system.posix_acl_default"})
USER = 0x02  # ACL_USER: a named user
GROUP = 0x08  # ACL_GROUP: a named group
_VERSION = b"\x02\x00\x00\x00"

Entry = tuple[int, int, int]  # (tag, perm, id)


def parse(value: bytes) -> list[Entry] | None:
    """The entries of an ACL xattr, or None when it is not one (left to the kernel)."""
    if len(value) < 4 or value[:4] != _VERSION or (len(value) - 4) % 8:
        return None
    out = []
    for pos in range(4, len(value), 8):
        out.append((int.from_bytes(value[pos:pos + 2], "little"),
                    int.from_bytes(value[pos + 2:pos + 4], "little"),
                    int.from_bytes(value[pos + 4:pos + 8], "little")))
    return out


def build(entries: list[Entry]) -> bytes:
    """The xattr value of ``entries`` (the inverse of :func:`parse`)."""
    return _VERSION + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
        for tag, perm, ident in entries
    )


def map_ids(value: bytes, user: Callable[[int], int], group: Callable[[int], int]) -> bytes:
    """``value`` with the id of each named user and group entry mapped; unchanged when it
    is not an ACL (the kernel then refuses it, naming the entry)."""
    entries = parse(value)
    if entries is None:
        return value
    mapped = [(tag, perm, user(ident) if tag == USER else group(ident) if tag == GROUP
               else ident) for tag, perm, ident in entries]
    return build(mapped)
