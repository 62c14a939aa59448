from typing import TypeVar

# The compiled fast path for one tar header (_ustar.c); reader._ustar_py is its reference.
def ustar(
    buffer: bytes | bytearray, pos: int, end: int, /
) -> tuple[int, int, int, int, int, int, str, str | None] | None: ...

_T = TypeVar("_T")

# The fields of reader.TarEntry, stored in C; reader._EntryFields is its reference.
class Fields:
    name: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int | None
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]
    sparse: list[tuple[int, int]] | None
    stored_size: int
    unknown_type: str
    def __init__(
        self,
        name: str,
        kind: str,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime_ns: int,
        atime_ns: int | None = None,
        linkname: str = "",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: dict[str, bytes] | None = None,
        sparse: list[tuple[int, int]] | None = None,
        stored_size: int = 0,
        unknown_type: str = "",
    ) -> None: ...

# A plain member's header straight to its entry; reader._entry_py is its reference.
def entry(
    buffer: bytes | bytearray,
    pos: int,
    end: int,
    cls: type[_T],
    kinds: tuple[str | None, ...],
    regular: str,
    /,
) -> _T | None: ...
