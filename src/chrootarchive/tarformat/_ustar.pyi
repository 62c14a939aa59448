from typing import Any, TypeVar

# The compiled fast path for one tar header (_ustar.c); reader._ustar_py is its reference.
def ustar(
    buffer: bytes | bytearray, pos: int, end: int, /
) -> tuple[int, int, int, int, int, int, str, str | None] | None: ...

_T = TypeVar("_T")

# The fields of reader.TarEntry, stored in C: its parameters and attributes are those
# of reader._EntryFields, its reference (which the reader's types name).
class Fields:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def __getattr__(self, name: str) -> Any: ...

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

# A times-only PAX header and the member after it, in one step: that member's entry and
# the position of its header; reader._pax_entry_py is its reference.
def pax_entry(
    buffer: bytes | bytearray,
    pos: int,
    end: int,
    cls: type[_T],
    kinds: tuple[str | None, ...],
    regular: str,
    max_pax: int,
    /,
) -> tuple[_T, int] | None: ...

# The sum of the bytes of ``data`` (a header's checksum); format.byte_sum_zlib is its
# reference and fallback.
def byte_sum(data: bytes | bytearray, /) -> int: ...
