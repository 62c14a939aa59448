"""What the tar format fixes, shared by the reader and the writer: block size, type
flags, magic strings, the header checksum.

Lean (imports only the compiled ``_ustar``, or ``zlib`` where it was not built): the
jailed worker loads it.
"""

from __future__ import annotations

__all__ = [
    "BLKTYPE",
    "BLOCK",
    "CHRTYPE",
    "CONTTYPE",
    "DIRTYPE",
    "DUMPDIRTYPE",
    "FIFOTYPE",
    "GNU_MAGIC",
    "GNU_SPARSETYPE",
    "LNKTYPE",
    "LONGLINKTYPE",
    "LONGNAMETYPE",
    "MULTIVOLTYPE",
    "NS",
    "OLD_REGTYPE",
    "PAXGTYPE",
    "PAXTYPE",
    "REGTYPE",
    "SOLARIS_PAXTYPE",
    "SYMTYPE",
    "USTAR_MAGIC",
    "VOLTYPE",
    "ZERO_BLOCK",
    "byte_sum",
]

BLOCK = 512  # headers and data are written in blocks of this size
ZERO_BLOCK = bytes(BLOCK)  # two of them end an archive
NS = 1_000_000_000  # nanoseconds in a second (PAX times are exact)

# Type flags (the byte at offset 156), as ints.
REGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"01234567"
OLD_REGTYPE = 0x00  # '\0': a regular file in old archives
PAXTYPE = 0x78  # 'x': PAX records for the next entry
SOLARIS_PAXTYPE = 0x58  # 'X': read as 'x' (GNU tar and tarfile do)
PAXGTYPE = 0x67  # 'g': PAX global records
LONGNAMETYPE = 0x4C  # 'L': GNU long name of the next entry
LONGLINKTYPE = 0x4B  # 'K': GNU long link name of the next entry
VOLTYPE = 0x56  # 'V': GNU volume label
MULTIVOLTYPE = 0x4D  # 'M': GNU continuation of a file from the previous volume
GNU_SPARSETYPE = 0x53  # 'S': old GNU sparse file
DUMPDIRTYPE = 0x44  # 'D': GNU dumpdir, a directory whose data lists its contents

USTAR_MAGIC = b"ustar\x00"  # POSIX ustar and star: the prefix field holds a name part
GNU_MAGIC = b"ustar  \x00"  # old GNU: no prefix; atime/ctime/sparse fields instead


def byte_sum_zlib(block: bytes | bytearray, /) -> int:
    """The sum of the 512 bytes of a block through zlib: the fallback and reference of
    the compiled ``_ustar.byte_sum``, which spares the worker loading zlib (issue 16).

    zlib.adler32's low half is 1 + the byte sum mod 65521: an ASCII block sums to at
    most 127 * 512 = 65024, so one call gives its exact sum; any other block is summed
    in two halves (a 256-byte half sums to at most 65280). Much faster than sum().
    """
    import zlib  # where this is byte_sum, loaded below (before any jail)

    if block.isascii():
        return (zlib.adler32(block) & 0xFFFF) - 1
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


try:
    from chrootarchive.tarformat._ustar import byte_sum
except ImportError:  # installed without a C compiler
    import zlib  # noqa: F401 - byte_sum_zlib's, loaded now: the jail forbids imports

    byte_sum = byte_sum_zlib
