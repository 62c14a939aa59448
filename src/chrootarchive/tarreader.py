"""A lean, streaming tar reader (INTERFACE STUB - to be implemented).

Reads ustar, GNU (long names 'L'/'K', old sparse 'S', base-256 numbers) and PAX
(per-entry 'x' records, global 'g' ignored, GNU sparse 0.0/0.1/1.0) from a file
descriptor, without tarfile's per-member objects. Names stay untrusted strings
(decoded utf-8 with surrogateescape) until unpack cleans them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# Entry kinds (the unpacker switches on these).
REGULAR = "file"
DIRECTORY = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
FIFO = "fifo"


@dataclass(slots=True)
class TarEntry:
    """One archive member, after long-name/PAX records were applied."""

    name: str
    kind: str
    mode: int  # permission bits incl. setuid/setgid/sticky (no file-type bits)
    uid: int
    gid: int
    size: int  # logical size of the file (for sparse files: the full size)
    mtime_ns: int
    atime_ns: int | None = None
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    sparse: list[tuple[int, int]] | None = None  # (offset, length) data regions
    stored_size: int = 0  # bytes of data stored in the archive for this entry


class TarReader:
    """Iterate over the entries of a tar stream read from ``fd``."""

    def __init__(self, fd: int, *, bufsize: int = 1 << 20) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[TarEntry]:
        raise NotImplementedError

    def data(self, entry: TarEntry) -> Iterator[tuple[int, memoryview]]:
        """Yield (offset, chunk) of the current entry's data."""
        raise NotImplementedError

    def drain(self) -> int:
        """Read the input to its end; return the bytes discarded."""
        raise NotImplementedError
