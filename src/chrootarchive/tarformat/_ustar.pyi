# The compiled fast path for one tar header (_ustar.c); reader._ustar_py is its reference.
def ustar(
    buffer: bytes | bytearray, pos: int, end: int, /
) -> tuple[int, int, int, int, int, int, str, str | None] | None: ...
