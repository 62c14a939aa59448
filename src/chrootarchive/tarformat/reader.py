"""A lean, streaming tar reader for untrusted archives.

Reads v7, ustar, star, GNU (long names 'L'/'K', old sparse 'S', base-256 numbers) and
PAX (per-entry 'x' records, GNU sparse 0.0/0.1/1.0) from a file descriptor into one
reusable buffer, without tarfile's per-member objects. Memory stays bounded whatever
sizes the headers declare. Names stay untrusted strings (decoded utf-8 with
surrogateescape) until unpack cleans them.

Where readers disagree, extraction follows GNU tar, except where Go's archive/tar (what
Docker uses) is stricter: malformed PAX records, NUL bytes in PAX names, sparse maps
whose slots GNU tar and bsdtar read differently. Two things GNU tar and bsdtar agree on
and Go refuses are read as they read them, and noted for a warning: a lone zero block
followed by data ends the archive (:attr:`TarReader.lone_zero_block`), and a PAX time
with trailing characters after ``[-]seconds[.fraction]`` is that number
(:attr:`TarReader.lenient_times`), unless digits follow them (``1e9`` is not 1 s).
PAX global headers are validated and then ignored, as Docker does (GNU tar and tarfile
apply them).
"""

from __future__ import annotations

import binascii
import os
import stat
import struct

from chrootarchive.errors import NOT_A_TAR, InternalError, MalformedArchiveError
from chrootarchive.tarformat import format as fmt
from chrootarchive.tarformat.format import BLOCK, NS, ZERO_BLOCK

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import NoReturn

    from chrootarchive._ring import RingInput

__all__ = [
    "BLOCKDEV",
    "CHARDEV",
    "DIRECTORY",
    "FIFO",
    "HARDLINK",
    "REGULAR",
    "SYMLINK",
    "TarEntry",
    "TarReader",
]

# Entry kinds (the unpacker switches on these).
REGULAR = "file"
DIRECTORY = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
FIFO = "fifo"

MAX_PAX_SIZE = 1 << 20  # bytes of one PAX header (Go's limit)
MAX_LONG_NAME = 1 << 16  # bytes of one GNU long name or long link name
MAX_SPARSE_REGIONS = 1_000_000  # ~120 MB of (offset, length) tuples at most
SEEK_MIN = 1 << 16  # on a regular file, seek over data to skip beyond this much
MAX_HEADERS = 64
"""Extended headers (PAX, global, GNU long names, volume labels) before one entry,
at most: an entry needs two or three, and a chain of them yields nothing to count."""
FREE_HEADERS = 3
"""Extended headers an entry may have that are not counted as entries: more (a
stream of global headers, say) are ``extra_headers``, counted against max_entries, as
reading them costs what an entry's header does."""

_Bytes = bytes | bytearray
_MAX_OFF = (1 << 63) - 1  # off_t
_MAX_ID = (1 << 32) - 2  # uid_t, gid_t: (1 << 32) - 1 is -1, "no change" to chown
_MAX_MAJOR = (1 << 12) - 1  # Linux's device numbers: 12 bits of major, 20 of minor
_MAX_MINOR = (1 << 20) - 1

# Kinds of the typeflags that need no extended header (all are read on the fast path).
_PLAIN_KINDS = {
    fmt.REGTYPE: REGULAR,
    fmt.OLD_REGTYPE: REGULAR,
    fmt.CONTTYPE: REGULAR,  # contiguous file
    fmt.LNKTYPE: HARDLINK,
    fmt.SYMTYPE: SYMLINK,
    fmt.CHRTYPE: CHARDEV,
    fmt.BLKTYPE: BLOCKDEV,
    fmt.DIRTYPE: DIRECTORY,
    fmt.FIFOTYPE: FIFO,
}
_KINDS = {
    **_PLAIN_KINDS,
    fmt.DUMPDIRTYPE: DIRECTORY,  # a directory whose data lists its contents
    fmt.GNU_SPARSETYPE: REGULAR,
}
_PAX_X = (fmt.PAXTYPE, fmt.SOLARIS_PAXTYPE)  # GNU tar and tarfile read 'X' as 'x'

# The numeric fields as GNU tar and Go write them: mode, uid, gid (7 octal digits),
# size, mtime (11), each ended by NUL or space, then the checksum (6 digits, NUL, space).
# Translating digits to "0" and NUL/space to " " checks that layout in one compare.
_CANON_TABLE = bytes.maketrans(
    bytes(range(256)),
    bytes(0x30 if 0x30 <= b <= 0x37 else 0x20 if b in (0, 0x20) else 0x78 for b in range(256)),
)
_CANON_FORM = b"0000000 0000000 0000000 00000000000 00000000000 000000  "
# Once that layout is checked: mode, uid, gid, size, mtime and checksum digits, in one call.
_CANON_FIELDS = struct.Struct("100x7sx7sx7sx11sx11sx6s")
_SPACES = b" \t\n\v\f\r"

_TIME_SLOTS = {b"mtime": 0, b"atime": 1, b"ctime": 2}  # ctime: checked, then ignored

_SPARSE_KEYS = frozenset(
    (
        "GNU.sparse.major",
        "GNU.sparse.minor",
        "GNU.sparse.map",
        "GNU.sparse.numblocks",
    )
)


class _EntryFields:
    """The fields of a :class:`TarEntry`, in Python: the reference of the compiled
    ``_ustar.Fields`` (tests/test_ustar_parser.py), and the fallback where it was not
    built.

    A plain slotted class rather than a dataclass: the worker imports no
    ``dataclasses`` (start-up cost), and one is made per entry (keep it cheap).
    """

    __slots__ = (
        "atime_ns",
        "devmajor",
        "devminor",
        "gid",
        "kind",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "size",
        "sparse",
        "stored_size",
        "uid",
        "unknown_type",
        "xattrs",
    )

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
    ) -> None:
        self.name = name
        self.kind = kind
        self.mode = mode  # permission bits incl. setuid/setgid/sticky (no type bits)
        self.uid = uid
        self.gid = gid
        self.size = size  # logical size of a regular file (sparse: the full size), else 0
        self.mtime_ns = mtime_ns
        self.atime_ns = atime_ns
        self.linkname = linkname  # for hard and symbolic links only
        self.devmajor = devmajor  # for device nodes only
        self.devminor = devminor
        self.xattrs: dict[str, bytes] = {} if xattrs is None else xattrs
        self.sparse = sparse  # (offset, length) data regions
        self.stored_size = stored_size  # bytes of data stored in the archive
        self.unknown_type = unknown_type  # typeflag of an unknown type, read as a file


if TYPE_CHECKING:
    _Fields = _EntryFields
else:
    try:
        from chrootarchive.tarformat._ustar import Fields as _Fields
    except ImportError:  # built without a C compiler: the same fields, in Python
        _Fields = _EntryFields

_FIELD_NAMES = _EntryFields.__slots__


class TarEntry(_Fields):
    """One archive member, after long-name/PAX records were applied.

    Its fields are stored in C (``_ustar.Fields``) where that was built: one entry is
    made per member, and making it in Python cost about 0.7 us of the worker's main
    thread, a twentieth of what an archive of small files costs per entry (issue 16).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in _FIELD_NAMES)
        return f"TarEntry({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TarEntry):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in _FIELD_NAMES)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was


class _Pax:
    """The records of one PAX 'x' header that matter for extraction."""

    __slots__ = (
        "atime",
        "gid",
        "linkpath",
        "mtime",
        "path",
        "size",
        "sparse",
        "sparse_pairs",
        "uid",
        "xattrs",
    )

    def times_only(self) -> bool:
        """No record but times: the entry is its header's, with these times."""
        return (self.path is None and self.linkpath is None and self.size is None
                and self.uid is None and self.gid is None and not self.xattrs
                and not self.sparse and not self.sparse_pairs)

    def __init__(self) -> None:
        self.path: bytes | None = None
        self.linkpath: bytes | None = None
        self.size: int | None = None
        self.uid: int | None = None
        self.gid: int | None = None
        self.mtime: int | None = None
        self.atime: int | None = None
        self.xattrs: dict[str, bytes] = {}
        self.sparse: dict[str, bytes] = {}  # GNU.sparse.* values
        self.sparse_pairs: list[bytes] = []  # format 0.0: offset, numbytes, offset...


def _fail(message: str, where: str | None) -> NoReturn:
    raise MalformedArchiveError(message, where)


def _decode(raw: _Bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(raw: _Bytes) -> bytes:
    """The bytes up to the first NUL, as tar reads its C strings."""
    nul = raw.find(0)
    return bytes(raw if nul < 0 else raw[:nul])


# What _ustar gives for a header on the fast path: typeflag, mode, uid, gid, size, mtime,
# the name (joined to a ustar prefix), the link name of a hard or symbolic link.
_Header = tuple[int, int, int, int, int, int, str, str | None]


def _ustar_py(buf: _Bytes, pos: int, end: int) -> _Header | None:
    """The block at ``buf[pos:pos + 512]`` read as most archives write it, or None.

    The fast path of :meth:`TarReader.__iter__`: a whole block within ``buf[:end]``, a
    non-zero first byte, the numeric fields in the usual layout, a correct unsigned
    checksum. The compiled ``_ustar.ustar`` does the same four times faster (issue 16);
    this is its reference (tests/test_ustar_parser.py) and the fallback where it was not
    built. None sends the block to the general rules, which also report its errors.
    """
    if pos < 0 or end > len(buf) or end - pos < BLOCK:
        return None
    hdr = buf[pos : pos + BLOCK]
    if not hdr[0] or hdr[100:156].translate(_CANON_TABLE) != _CANON_FORM:
        return None
    mode, uid, gid, size, mtime, checksum = _CANON_FIELDS.unpack_from(hdr)
    # The exact byte sum; the checksum field counts as eight spaces.
    byte_sum = fmt.byte_sum
    if int(checksum, 8) != byte_sum(hdr) - byte_sum(hdr[148:156]) + 8 * 0x20:
        return None
    nul = hdr.find(0, 0, 100)
    raw: _Bytes = hdr[:nul] if nul >= 0 else hdr[:100]
    if hdr[345] and hdr[257:263] == fmt.USTAR_MAGIC:
        raw = _cstr(hdr[345:500]) + b"/" + raw
    flag = hdr[156]
    linkname = _decode(_cstr(hdr[157:257])) if flag in _LINK_FLAGS else None
    return (flag, int(mode, 8), int(uid, 8), int(gid, 8), int(size, 8), int(mtime, 8),
            _decode(raw), linkname)


_LINK_FLAGS = (fmt.LNKTYPE, fmt.SYMTYPE)


def _entry_py(buf: _Bytes, pos: int, end: int, cls: type[TarEntry],
              kinds: tuple[str | None, ...], regular: str) -> TarEntry | None:
    """The entry of a plain member's header at ``buf[pos:pos + 512]``, or None.

    The first step of :meth:`TarReader.__iter__`: a header that takes
    :func:`_ustar_py`'s fast path, whose typeflag has a kind in ``kinds`` (one per
    byte value; None: not on this path), made into an entry of ``cls`` at once. A
    member of kind ``regular`` has its size (None when its name ends in "/": the
    general rules make it a directory); any other, none. The compiled
    ``_ustar.entry`` does the same (tests/test_ustar_parser.py); this is its
    reference, and the fallback where it was not built.
    """
    if pos < 0 or end > len(buf) or end - pos < BLOCK:
        return None
    kind = kinds[buf[pos + 156]]  # the typeflag
    if kind is None:
        return None
    header = _ustar_py(buf, pos, end)
    if header is None:
        return None
    _flag, mode, uid, gid, size, mtime, name, linkname = header
    if kind is regular:
        if name[-1:] == "/":
            return None
    else:
        size = 0
    return cls(name, kind, mode & 0o7777, uid, gid, size, mtime * NS,
               linkname=linkname or "", stored_size=size)


def _pax_entry_py(buf: _Bytes, pos: int, end: int, cls: type[TarEntry],
                  kinds: tuple[str | None, ...], regular: str, max_pax: int
                  ) -> tuple[TarEntry, int] | None:
    """The entry of the member after a times-only PAX header at ``buf[pos:pos + 512]``,
    and the position of its header; or None.

    The second step of :meth:`TarReader.__iter__`, for what GNU tar's --format=posix
    and --xattrs write before every member: a PAX header ('x') on :func:`_ustar_py`'s
    fast path, of at most ``max_pax`` bytes of records that :func:`_pax_times` reads,
    followed within ``buf[:end]`` by a header that :func:`_entry_py` makes into an
    entry, which is given the records' times. The compiled ``_ustar.pax_entry`` does
    the same (tests/test_ustar_parser.py); this is its reference, and the fallback.
    """
    header = _ustar_py(buf, pos, end)
    if header is None or header[0] != fmt.PAXTYPE:
        return None
    size = header[4]
    after = pos + BLOCK + size + (-size % BLOCK)
    if size > max_pax or after + BLOCK > end:
        return None
    times = _pax_times(bytes(buf[pos + BLOCK : pos + BLOCK + size]))
    if times is None:
        return None
    entry = _entry_py(buf, after, end, cls, kinds, regular)
    if entry is None:
        return None
    if times[0] is not None:
        entry.mtime_ns = times[0]
    entry.atime_ns = times[1]
    return entry, after


# The kind of each typeflag whose member _entry (or _entry_py) makes in one step: the
# plain kinds but device nodes, whose numbers the general rules read.
_ENTRY_KINDS = tuple(
    None if flag in (fmt.CHRTYPE, fmt.BLKTYPE) else _PLAIN_KINDS.get(flag)
    for flag in range(256)
)

if TYPE_CHECKING:  # the compiled ones take and give the same (_ustar.pyi)
    _ustar = _ustar_py
    _entry = _entry_py
    _pax_entry = _pax_entry_py
else:
    try:
        from chrootarchive.tarformat._ustar import entry as _entry
        from chrootarchive.tarformat._ustar import pax_entry as _pax_entry
        from chrootarchive.tarformat._ustar import ustar as _ustar
    except ImportError:  # built without a C compiler: the same rules, in Python
        _ustar = _ustar_py
        _entry = _entry_py
        _pax_entry = _pax_entry_py


def _number(raw: _Bytes) -> int | None:
    """A numeric header field, read as GNU tar's from_header() does; None if invalid.

    Octal: one leading NUL and leading blanks are skipped, the digits end at a NUL,
    a blank or the end of the field (all NUL is 0, all blank is invalid). Base-256:
    0x80 then a big-endian number, or 0xff then a negative two's complement one.
    """
    first = raw[0]
    if first >= 0x80:
        if first == 0x80:
            return int.from_bytes(raw[1:], "big")
        if first == 0xFF:
            return int.from_bytes(raw, "big", signed=True)
        return None
    text = bytes(raw[1:] if first == 0 else raw).lstrip(_SPACES)
    if not text:
        return None
    rest = text.lstrip(b"01234567")
    if rest and rest[0] != 0 and rest[0] not in _SPACES:
        return None
    digits = text[: len(text) - len(rest)]
    return int(digits, 8) if digits else 0


def _decimal(raw: bytes, maximum: int) -> int | None:
    """A non-negative decimal PAX value (no sign, blank or underscore), or None."""
    if not raw.isdigit():
        return None
    digits = raw.lstrip(b"0")
    if len(digits) > 20:
        return None
    value = int(digits or b"0")
    return value if value <= maximum else None


def _plain_time(value: bytes) -> int | None:
    """A PAX time in the form GNU tar writes, "seconds[.fraction]" of plain digits, in
    nanoseconds; None for any other form (:func:`_pax_time` reads those)."""
    secs, dot, frac = value.partition(b".")
    if not (secs.isdigit() and len(secs) <= 18 and (not dot or frac.isdigit())):
        return None
    return int(secs) * NS + (int(frac[:9].ljust(9, b"0")) if dot else 0)


def _pax_times(data: bytes) -> tuple[int | None, int | None] | None:
    """(mtime, atime) of PAX records that hold nothing but times in the plain form
    (GNU tar's --format=posix and --xattrs headers), or None for anything else, which
    :meth:`TarReader._read_pax` then reads with its strict rules.

    The reference of the compiled reader of the same records (``plain_times`` in
    _ustar.c, through ``_ustar.pax_entry``), and the fallback where it was not built.
    """
    times: list[int | None] = [None, None, None]  # mtime, atime, ctime
    records = data.split(b"\n")
    if records.pop():
        return None  # not ending with a newline: malformed, or a record holds one
    for record in records:
        length, _, rest = record.partition(b" ")
        key, _, value = rest.partition(b"=")
        # At most 20 characters, as _read_pax takes it (and no int() of thousands).
        if not length.isdigit() or len(length) > 20 or int(length) != len(record) + 1:
            return None
        slot = _TIME_SLOTS.get(key)
        if slot is None:
            return None
        time = _plain_time(value)
        if time is None:
            return None
        times[slot] = time
    return times[0], times[1]


def _pax_time(raw: bytes) -> int | None:
    """A PAX time "[-]seconds[.fraction]" in nanoseconds, or None (as Go's parsePAXTime)."""
    secs, _, frac = raw.partition(b".")
    negative = secs.startswith(b"-")
    if negative:
        secs = secs[1:]
    whole = _decimal(secs, _MAX_OFF)
    if whole is None or (frac and not frac.isdigit()):
        return None
    nanos = whole * NS + (int(frac[:9].ljust(9, b"0")) if frac else 0)
    return -nanos if negative else nanos


def _pax_time_prefix(raw: bytes) -> int | None:
    """The leading "[-]seconds[.fraction]" of a PAX time followed by other characters,
    as GNU tar and bsdtar both read it ("999xxx" is 999 s), or None when it does not
    start with one (there they disagree: GNU tar refuses, bsdtar reads 0) or when
    digits follow the other characters (``1e9``, ``999xxx9324.43``, ``1600000000,5``):
    the writer's number goes on there, and its prefix would be a wrong time (Go
    refuses all of these)."""
    start = 1 if raw.startswith(b"-") else 0
    end = start
    while end < len(raw) and 0x30 <= raw[end] <= 0x39:
        end += 1
    if end == start:
        return None
    if end < len(raw) and raw[end] == 0x2E:  # "."
        end += 1
        while end < len(raw) and 0x30 <= raw[end] <= 0x39:
            end += 1
    if any(0x30 <= c <= 0x39 for c in raw[end:]):
        return None
    return _pax_time(raw[:end].rstrip(b"."))


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _percent_decode(text: str) -> bytes:
    """``%XX`` escapes to bytes, anything else kept (``urllib.parse.unquote_to_bytes``,
    which the worker does not import)."""
    parts = text.encode("utf-8", "surrogateescape").split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(int(part[:2], 16))
            out += part[2:]
        else:
            out += b"%" + part
    return bytes(out)


def _schily_name(name: str) -> str:
    """An xattr name from its ``SCHILY.xattr.`` key, where GNU tar writes ``%`` as
    ``%25`` and ``=`` as ``%3D`` (a PAX key ends at the first ``=``); GNU tar's reading:
    those two escapes only, left to right."""
    parts = name.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        if part.startswith("25"):
            out.append("%" + part[2:])
        elif part.startswith("3D"):
            out.append("=" + part[2:])
        else:
            out.append("%" + part)
    return "".join(out)


def _checksum_ok(hdr: _Bytes) -> bool:
    """Check the header checksum, unsigned or signed, as GNU tar accepts both."""
    field = hdr[148:156]
    recorded = _number(field) if field[0] < 0x80 else None  # octal only
    if recorded is None:
        return False
    unsigned = fmt.byte_sum(hdr) - sum(field) + 8 * 0x20
    if recorded == unsigned:
        return True
    # Old writers summed signed chars: each byte >= 0x80 then counts 256 less.
    high = sum(1 for byte in hdr if byte >= 0x80) - sum(1 for byte in field if byte >= 0x80)
    return recorded == unsigned - 256 * high


def _header_name(hdr: _Bytes) -> bytes:
    """The name field, joined to the prefix field of ustar headers (as GNU tar does)."""
    nul = hdr.find(0, 0, 100)
    name = bytes(hdr[:nul] if nul >= 0 else hdr[:100])
    if hdr[345] and hdr[257:263] == fmt.USTAR_MAGIC:
        return _cstr(hdr[345:500]) + b"/" + name
    return name


_SPLICE_STEP = 8 << 20  # bytes moved between two looks at the limits


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _is_seekable(fd: int) -> bool:
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True


class TarReader:
    """Iterate over the entries of a tar stream read from ``fd``.

    The caller owns ``fd``. Chunks from ``data()`` are views into the reader's buffer,
    valid until the next step of any iterator of this reader.
    """

    def __init__(
        self,
        fd: int,
        *,
        bufsize: int = 1 << 20,
        max_pax_size: int = MAX_PAX_SIZE,
        max_long_name: int = MAX_LONG_NAME,
        max_sparse_regions: int = MAX_SPARSE_REGIONS,
        ring: RingInput | None = None,
        end_in_padding: bool = False,
    ) -> None:
        if bufsize < BLOCK or bufsize % BLOCK:
            raise ValueError("bufsize must be a positive multiple of 512")
        self._fd = fd
        # A stream in a ring (chrootarchive._ring: a compressed input, decompressed by
        # the parent): read as a regular file, at the ring's own position.
        self._ring = ring
        self._read: Callable[[memoryview], int] = (
            ring.read if ring is not None else self._read_fd)
        if ring is not None:
            ring.consumed = self._consumed
        self._buf = bytearray(bufsize)
        self._mv = memoryview(self._buf)
        self._pos = 0  # next unread byte in the buffer
        self._end = 0  # end of the valid bytes in the buffer
        self._base = 0  # stream offset of buffer[0]
        self._eof = False
        self._seekable = ring is not None or _is_seekable(fd)
        self._pipe = ring is None and _is_pipe(fd)  # data may be moved with splice()
        # Where the stream starts in the file (for extent()).
        self._origin = (0 if ring is not None
                        else os.lseek(fd, 0, os.SEEK_CUR) if self._seekable else -1)
        # Reads made to find headers: on a regular file, small ones, so that skipping
        # large entries (by lseek) does not read their data anyway. Entry data is
        # always read in whole buffers.
        self._header_read = min(SEEK_MIN, bufsize) if self._seekable else bufsize
        self._max_pax = max_pax_size
        self._max_long = max_long_name
        self._max_regions = max_sparse_regions
        self._current: TarEntry | None = None
        self._remaining = 0  # stored data bytes of the current entry not yet read
        self._padding = 0  # padding after them
        self._started = False
        self._done = False
        self.global_headers = 0  # PAX global headers seen (validated, then ignored)
        self.extra_headers = 0  # extended headers beyond FREE_HEADERS of their entry
        # Read as GNU tar and bsdtar read them (Go refuses), for the caller to warn about:
        self.lone_zero_block: int | None = None  # offset of a lone zero block that
        # ended the archive although data followed it
        self.lenient_times = 0  # PAX times with trailing characters after the number
        # A stream whose end is checked by its digest (an image's layer: the parent
        # checks its DiffID) may end in the padding after its last entry's data, with
        # no end-of-archive blocks, as Go's archive/tar reads it (umoci 0.4 writes such
        # layers); any other stream may not (_skip_padding). The entry it ended after:
        self._end_in_padding = end_in_padding
        self.padding_cut: str | None = None
        self.lenient_time_where = ""  # the first one's extended header

    # -- public interface ---------------------------------------------------------

    def __iter__(self) -> Iterator[TarEntry]:
        """Yield the entries; data the consumer did not read is skipped on each step."""
        # The hot loop, inlined for speed: most headers take the fast path, a whole
        # header already in the buffer that _ustar reads (compiled, or _ustar_py) and
        # of a type that needs no other header; most of those, a plain member's, are
        # made into their entry in one step (_entry, or _entry_py), and so is a member
        # after a PAX header that holds only its times (_pax_entry, or _pax_entry_py).
        # Anything else (extended headers, zero blocks, odd numbers, errors) goes to
        # _next_slow().
        buf = self._buf
        kinds = _PLAIN_KINDS
        parse = _ustar
        plain = _entry
        after_times = _pax_entry
        entry_kinds = _ENTRY_KINDS
        max_pax = self._max_pax
        while not self._done:
            if self._current is not None:
                skip = self._remaining + self._padding
                if skip <= self._end - self._pos:
                    self._pos += skip
                    self._current = None
                    self._remaining = self._padding = 0
                else:
                    self._finish_entry(self._current)
            pos = self._pos
            pax: _Pax | None = None
            times: tuple[int | None, int | None] | None = None
            header = None
            if self._started:
                # Most headers: a plain member, its entry made in one step; or one
                # after a PAX header of its times (GNU tar --format=posix, --xattrs).
                entry = plain(buf, pos, self._end, TarEntry, entry_kinds, REGULAR)
                if entry is None:
                    found = after_times(buf, pos, self._end, TarEntry, entry_kinds,
                                        REGULAR, max_pax)
                    if found is not None:
                        entry, pos = found
                    else:
                        header = parse(buf, pos, self._end)
                        if header is not None and header[0] == 0x78:
                            header, times, pax = self._pax_here(header, pos)
                            pos = self._pos
            else:
                entry = None
            if entry is not None:
                self._pos = pos + BLOCK
                self._current = entry
                size = entry.stored_size
                if size:
                    self._remaining = size
                    self._padding = -size % BLOCK
                yield entry
                continue
            if header is not None and (kind := kinds.get(header[0])) is not None:
                flag, mode, uid, gid, size, mtime, name, linkname = header
                self._pos = pos + BLOCK
                if pax is not None and not pax.times_only():
                    # The general rules apply the records (names, sizes, sparse maps...),
                    # with the numbers already read.
                    yield self._entry(buf[pos : pos + BLOCK], flag, kind, size, pax, None,
                                      None, self._base + pos, (mode, uid, gid, mtime))
                    continue
                entry = TarEntry(name, kind, mode & 0o7777, uid, gid, 0, mtime * NS)
                if times is not None:  # only times (GNU tar --xattrs, posix)
                    if times[0] is not None:
                        entry.mtime_ns = times[0]
                    entry.atime_ns = times[1]
                elif pax is not None:  # the same, read by _read_pax
                    if pax.mtime is not None:
                        entry.mtime_ns = pax.mtime
                    entry.atime_ns = pax.atime
                self._current = entry
                if kind is REGULAR:
                    if name[-1:] == "/":
                        entry.kind = DIRECTORY  # see _entry()
                    else:
                        entry.size = entry.stored_size = self._remaining = size
                        self._padding = -size % BLOCK
                elif linkname is not None:  # a hard or symbolic link
                    entry.linkname = linkname
                elif kind is CHARDEV or kind is BLOCKDEV:
                    self._devices(buf[pos : pos + BLOCK], entry)
                yield entry
                continue
            if times is not None:  # the header after them needs the general rules
                pax = _Pax()
                pax.mtime, pax.atime = times
            slow = self._next_slow(pax)
            if slow is None:
                return
            yield slow

    def data(self, entry: TarEntry) -> Iterator[tuple[int, memoryview]]:
        """Yield (offset, chunk) of the current entry's data.

        Offsets are logical: consecutive for a plain file; for a sparse file, each
        data region's place in the file (the holes in between read as zeros).
        A second call resumes where the first stopped.
        """
        if entry is not self._current:
            raise InternalError("data() called for an entry that is not the current one")
        if entry.kind != REGULAR:
            return  # a GNU dumpdir's listing is data, but not a file's: it is skipped
        done = entry.stored_size - self._remaining
        regions = entry.sparse if entry.sparse is not None else [(0, entry.stored_size)]
        for start, length in regions:
            if done >= length:
                done -= length
                continue
            offset = start + done
            left = length - done
            done = 0
            while left:
                if self._current is not entry:
                    return  # the reader moved on: the rest was skipped
                chunk = self._chunk(left, entry.name)
                yield offset, chunk
                size = len(chunk)
                offset += size
                left -= size

    def whole_data(self, entry: TarEntry) -> memoryview | None:
        """All the data of a plain file as one view, when the buffer already holds it
        (most small files); None otherwise, and :meth:`data` gives it in chunks."""
        size = self._remaining
        pos = self._pos
        if (entry is not self._current or entry.sparse is not None
                or size != entry.stored_size or self._end - pos < size
                or entry.kind != REGULAR):
            return None
        self._pos = pos + size
        self._remaining = 0
        return self._mv[pos : pos + size]

    def can_splice(self, entry: TarEntry) -> bool:
        """Whether :meth:`spliced` can move the current plain file's data (the input is
        a pipe or a ring, and none of the data was read yet)."""
        return ((self._pipe or self._ring is not None) and entry is self._current
                and entry.sparse is None and self._remaining == entry.stored_size
                and entry.kind == REGULAR)

    def spliced(self, entry: TarEntry, fd: int) -> Iterator[int]:
        """Move all the data of the current plain file into ``fd`` (see
        :meth:`can_splice`): what the buffer holds by ``write``, the rest straight from
        the pipe with ``splice`` (or from the ring with ``sendfile``), never through the
        interpreter. Yields the size of each step before it is moved, for the caller to
        count against its limits; a stream that ends inside the data is the entry's
        "truncated data" error."""
        if not self.can_splice(entry):
            raise InternalError("spliced() called for data it cannot move", entry.name)
        pos = self._pos
        step = min(self._end - pos, self._remaining)
        if step:
            yield step
            view = self._mv[pos : pos + step]
            while view:
                view = view[os.write(fd, view):]
            self._pos = pos + step
            self._remaining -= step
        if not self._remaining:
            return
        self._base += self._end  # the buffer is used up
        self._pos = self._end = 0
        while self._remaining:
            step = min(self._remaining, _SPLICE_STEP)
            yield step
            while step:
                moved = (0 if self._eof else self._ring.copy_to(fd, step)
                         if self._ring is not None else os.splice(self._fd, fd, step))
                if not moved:
                    self._eof = True
                    _fail("unexpected end of archive: truncated data", entry.name)
                step -= moved
                self._remaining -= moved
                self._base += moved

    def file_source(self) -> int:
        """The input, when it is a regular file (or a ring) that :meth:`extent` offsets
        are in; -1."""
        return self._fd if self._seekable else -1

    @property
    def ring_size(self) -> int:
        """The size of the ring the input is in (extents wrap there), or 0."""
        return self._ring.size if self._ring is not None else 0

    def hold_ring(self, pinned: Callable[[], int], unpin: Callable[[], None]) -> None:
        """For whoever copies extents out of a ring: ``pinned`` gives the oldest stream
        offset still to be copied (the parent must not overwrite it), ``unpin`` makes
        those copies when the ring is full (see chrootarchive._ring)."""
        if self._ring is not None:
            self._ring.pinned = pinned
            self._ring.unpin = unpin

    def _read_fd(self, view: memoryview) -> int:
        return os.readv(self._fd, [view])

    def _consumed(self) -> int:
        return self._base + self._pos

    def extent(self, entry: TarEntry) -> int:
        """The file offset of all the data of a plain file in a regular-file input,
        which the caller copies from the file itself (the reader then seeks over it,
        and finds a truncated archive there); -1 when it cannot (a pipe, a sparse
        file, data already read). In a ring: only a file of at most a quarter of the
        ring, once the parent has written all of it there."""
        if (entry is not self._current or not self._seekable or entry.sparse is not None
                or self._remaining != entry.stored_size or entry.kind != REGULAR):
            return -1
        start = self._origin + self._base + self._pos
        ring = self._ring
        if ring is not None and (entry.stored_size > ring.size // 4
                                 or not ring.wait_for(start + entry.stored_size)):
            return -1  # read as from a pipe (a truncated stream is found there)
        return start

    def drain(self, limit: int | None = None,
              error: Callable[[int], Exception] | None = None) -> int:
        """Read the input to its end; return the bytes discarded.

        Lets the process feeding a pipe finish normally after the end of the archive
        or after an error. Nothing read here is interpreted. ``limit``: more bytes
        than that to read is a :class:`MalformedArchiveError` (a layer streamed from a
        registry that declares 2**62 bytes would be read for days), or ``error(limit)``;
        a regular file's rest is skipped, not read, and never counts.
        """
        self._done = True
        self._current = None
        count = self._end - self._pos
        self._base += self._end
        self._pos = self._end = 0
        if self._eof:
            return count
        self._eof = True
        if self._ring is not None:
            count += self._ring.drain(None if limit is None else max(limit - count, 0))
        elif self._seekable:
            here = os.lseek(self._fd, 0, os.SEEK_CUR)
            end = os.lseek(self._fd, 0, os.SEEK_END)
            return count + max(end - here, 0)
        else:
            while (limit is None or count <= limit) and (n := os.readv(self._fd, [self._mv])):
                count += n
        if limit is not None and count > limit:
            if error is not None:
                raise error(limit)
            raise MalformedArchiveError(
                f"more than {limit >> 20} MiB follow the end of the archive")
        return count

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed so far."""
        return self._base + self._pos

    # -- buffer -------------------------------------------------------------------

    def _fill(self, want: int) -> int:
        """Make ``want`` (<= bufsize) bytes readable at ``_pos``; return how many are.

        Fewer than ``want`` only at the end of the input; short reads are retried.
        """
        avail = self._end - self._pos
        if avail >= want or self._eof:
            return avail
        if self._pos + want > len(self._buf):
            # Move the tail to the front (through a copy: the ranges may overlap).
            self._buf[:avail] = bytes(self._mv[self._pos : self._end])
            self._base += self._pos
            self._pos, self._end = 0, avail
        while avail < want:
            end = self._end
            n = self._read(self._mv[end : end + max(want - avail, self._header_read)])
            if not n:
                self._eof = True
                break
            self._end += n
            avail += n
        return avail

    def _refill(self, limit: int = 0) -> int:
        """Start a fresh buffer with what one read (of up to ``limit`` bytes, default
        the whole buffer) gives; 0 at the end of the input."""
        self._base += self._end
        self._pos = self._end = 0
        if self._eof:
            return 0
        n = self._read(self._mv[: limit or len(self._buf)])
        if not n:
            self._eof = True
        self._end = n
        return n

    def _chunk(self, limit: int, name: str) -> memoryview:
        """Consume up to ``limit`` bytes of entry data and return them as a view."""
        pos = self._pos
        avail = self._end - pos
        if not avail:
            avail = self._refill()
            pos = 0
            if not avail:
                _fail("unexpected end of archive: truncated data", name)
        n = min(avail, limit)
        self._pos = pos + n
        self._remaining -= n
        return self._mv[pos : pos + n]

    def _read_bytes(self, size: int, what: str, where: str) -> bytes:
        """Read ``size`` bytes (bounded by the caller) and skip their padding."""
        parts = []
        left = size
        while left:
            avail = self._end - self._pos
            if not avail:
                avail = self._refill()
                if not avail:
                    _fail(f"unexpected end of archive: truncated {what}", where)
            n = min(avail, left)
            parts.append(self._buf[self._pos : self._pos + n])
            self._pos += n
            left -= n
        self._skip_padding(-size % BLOCK, where, what)
        return b"".join(parts)

    def _read_block(self, what: str, where: str) -> bytearray:
        """Read one whole block (a sparse map block)."""
        if self._fill(BLOCK) < BLOCK:
            _fail(f"unexpected end of archive: truncated {what}", where)
        pos = self._pos
        self._pos = pos + BLOCK
        return self._buf[pos : pos + BLOCK]

    def _skip_data(self, size: int, name: str) -> None:
        """Skip entry data; seek over large amounts when the input is a regular file."""
        avail = self._end - self._pos
        if size <= avail:
            self._pos += size
            return
        size -= avail
        self._base += self._end
        self._pos = self._end = 0
        if self._seekable and size >= SEEK_MIN and not self._eof:
            # Seek to the last byte and read it: lseek happily goes past the end of
            # the file, and a truncated archive must not pass unnoticed.
            try:
                if self._ring is not None:
                    self._ring.skip(size - 1)
                else:
                    os.lseek(self._fd, size - 1, os.SEEK_CUR)
            except OSError:
                # EINVAL/EOVERFLOW: past the largest offset, so past the end of the file.
                _fail("unexpected end of archive: truncated data", name)
            self._base += size - 1
            size = 1
        while size:
            # Read the next header(s) along with the end of the data.
            avail = self._refill(min(size + self._header_read, len(self._buf)))
            if not avail:
                _fail("unexpected end of archive: truncated data", name)
            n = min(avail, size)
            self._pos = n
            size -= n

    def _skip_padding(self, size: int, name: str, what: str = "data") -> None:
        """Skip block padding. The input may not end inside it: GNU tar, bsdtar and
        ``tarfile`` all say "unexpected EOF", and what followed the entry is lost (a
        download cut short looked like a whole archive). But for a stream whose digest
        is checked (``end_in_padding``): after an entry's data, its end is the
        archive's."""
        if size:
            avail = self._fill(size)  # may move the buffer contents: read _pos after
            if avail < size:
                if not (self._end_in_padding and what == "data"):
                    _fail(f"unexpected end of archive: truncated padding after the {what}",
                          name)
                self.padding_cut = name
                size = avail  # the end of the input: the next header is none
            self._pos += size

    def _finish_entry(self, entry: TarEntry) -> None:
        """Skip what the consumer left of the current entry's data, and its padding."""
        self._current = None
        if self._remaining:
            self._skip_data(self._remaining, entry.name)
            self._remaining = 0
        self._skip_padding(self._padding, entry.name)
        self._padding = 0

    def _start_data(self, entry: TarEntry) -> TarEntry:
        self._current = entry
        self._remaining = entry.stored_size
        self._padding = -entry.stored_size % BLOCK
        return entry

    # -- headers ------------------------------------------------------------------

    def _pax_here(self, header: _Header, pos: int) -> tuple[
            _Header | None, tuple[int | None, int | None] | None, _Pax | None]:
        """A PAX header at ``pos`` that the one-step path did not take (the header
        after it is not a plain member's, or its records hold more than times), read
        here when its records and the header after them are in the buffer: the header
        after it (``_ustar``'s, or None), with its times when the records hold nothing
        else (:func:`_pax_times`), or else the records as :meth:`_read_pax` reads them;
        ``self._pos`` is then that header's. Otherwise ``(header, None, None)``, and
        the general rules read it."""
        size = header[4]
        after = pos + BLOCK + size + (-size % BLOCK)
        if after + BLOCK > self._end or size > self._max_pax:
            return header, None, None
        times = _pax_times(bytes(self._buf[pos + BLOCK : pos + BLOCK + size]))
        pax = None
        if times is not None:
            self._pos = after
        else:
            self._pos = pos + BLOCK
            pax = self._read_pax(size, f"extended header at offset {self._base + pos}")
        return _ustar(self._buf, self._pos, self._end), times, pax

    def _next_slow(self, pax: _Pax | None = None) -> TarEntry | None:
        """Read headers up to the next entry in the general case; None at the end.

        ``pax``: the records of a PAX header the fast path has read just before.
        """
        long_name: bytes | None = None
        long_link: bytes | None = None
        headers = 0 if pax is None else 1  # extended headers of this entry
        while True:
            where = self.offset
            if headers > FREE_HEADERS:
                self.extra_headers += 1
                if headers > MAX_HEADERS:
                    _fail(f"more than {MAX_HEADERS} extended headers before one entry",
                          f"header at offset {where}")
            headers += 1
            hdr = self._header(where)
            if hdr is None:
                self._done = True
                return None
            flag = hdr[156]
            size = _number(hdr[124:136])
            if size is None:
                _fail("invalid size field", self._where(hdr, where))
            if size < 0:
                _fail("negative size", self._where(hdr, where))
            if size > _MAX_OFF:
                _fail("size out of range", self._where(hdr, where))
            kind = _KINDS.get(flag)
            if kind is not None:
                return self._entry(hdr, flag, kind, size, pax, long_name, long_link, where)
            if flag in _PAX_X:
                pax = self._read_pax(size, f"extended header at offset {where}")
            elif flag in (fmt.LONGNAMETYPE, fmt.LONGLINKTYPE):
                if size > self._max_long:
                    _fail(f"GNU long name too long ({size} bytes)", f"header at offset {where}")
                what = "long name" if flag == fmt.LONGNAMETYPE else "long link name"
                value = _cstr(self._read_bytes(size, what, f"header at offset {where}"))
                if flag == fmt.LONGNAMETYPE:
                    long_name = value
                else:
                    long_link = value
            elif flag == fmt.PAXGTYPE:
                self._read_pax(size, f"global header at offset {where}")
                self.global_headers += 1
            elif flag == fmt.VOLTYPE:
                if size > self._max_long:  # a label; its data would be read for nothing
                    _fail(f"volume header too large ({size} bytes)",
                          f"header at offset {where}")
                self._skip_data(size, f"volume header at offset {where}")
                self._skip_padding(-size % BLOCK, f"volume header at offset {where}",
                                   "volume header")
            elif flag == fmt.MULTIVOLTYPE:
                _fail("multi-volume archives are not supported", self._where(hdr, where))
            else:
                # GNU tar extracts unknown types as regular files.
                return self._entry(hdr, flag, REGULAR, size, pax, long_name, long_link, where)

    def _header(self, where: int) -> bytearray | None:
        """Read and check the next header block; None at the end of the archive."""
        avail = self._fill(BLOCK)
        first = not self._started
        self._started = True
        if avail < BLOCK:
            if not avail:
                return None  # the input ends at a header boundary: accepted, as GNU tar
            if first:
                _fail(NOT_A_TAR, None)
            _fail("unexpected end of archive: truncated header", f"header at offset {where}")
        pos = self._pos
        self._pos = pos + BLOCK
        buf = self._buf
        if buf[pos] == 0 and buf.startswith(ZERO_BLOCK, pos):
            avail = self._fill(BLOCK)
            if not avail:
                return None  # one zero block, then the end of the input
            nxt = f"header at offset {where + BLOCK}"
            if avail < BLOCK:
                _fail("unexpected end of archive: truncated header", nxt)
            pos = self._pos
            self._pos = pos + BLOCK
            if buf.startswith(ZERO_BLOCK, pos):
                return None  # two zero blocks: the end-of-archive marker
            # A lone zero block followed by data: GNU tar, bsdtar and tarfile stop
            # there (GNU tar warns), Go refuses. No reader extracts what follows: the
            # archive ends here, and the caller warns (the rest is drained unread).
            self.lone_zero_block = where
            return None
        hdr = buf[pos : pos + BLOCK]
        if not _checksum_ok(hdr):
            if first:
                _fail(NOT_A_TAR, None)
            _fail("invalid header checksum", f"header at offset {where}")
        return hdr

    @staticmethod
    def _where(hdr: _Bytes, offset: int) -> str:
        """The entry's header name for an error message, else its offset."""
        name = _header_name(hdr)
        return _decode(name) if name else f"header at offset {offset}"

    def _entry(
        self,
        hdr: bytearray,
        flag: int,
        kind: str,
        size: int,
        pax: _Pax | None,
        long_name: bytes | None,
        long_link: bytes | None,
        where: int,
        numbers: tuple[int, int, int, int] | None = None,
    ) -> TarEntry:
        """Build an entry from its header, the pending long names and PAX records.

        ``numbers``: mode, uid, gid and mtime when the caller has read them already.
        """
        mode: int | None
        uid: int | None
        gid: int | None
        mtime: int | None
        if numbers is not None:
            mode, uid, gid, mtime = numbers
        else:
            mode = _number(hdr[100:108])
            uid = _number(hdr[108:116])
            gid = _number(hdr[116:124])
            mtime = _number(hdr[136:148])
        for value, label in ((mode, "mode"), (uid, "uid"), (gid, "gid"), (mtime, "mtime")):
            if value is None:
                _fail(f"invalid {label} field", self._where(hdr, where))
        assert mode is not None and uid is not None and gid is not None and mtime is not None
        # Precedence as in GNU tar: header < GNU long name < PAX path < GNU.sparse.name.
        raw_name = long_name if long_name is not None else _header_name(hdr)
        raw_link = long_link if long_link is not None else _cstr(hdr[157:257])
        mtime_ns = mtime * NS
        atime_ns: int | None = None
        xattrs: dict[str, bytes] = {}
        sparse = False
        if pax is not None:
            raw_name = pax.path if pax.path is not None else raw_name
            raw_link = pax.linkpath if pax.linkpath is not None else raw_link
            size = pax.size if pax.size is not None else size
            uid = pax.uid if pax.uid is not None else uid
            gid = pax.gid if pax.gid is not None else gid
            mtime_ns = pax.mtime if pax.mtime is not None else mtime_ns
            atime_ns = pax.atime
            xattrs = pax.xattrs
            sparse = bool(pax.sparse or pax.sparse_pairs)
        name = _decode(raw_name)
        if mode < 0:
            _fail("negative mode", name)
        if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID):
            _fail("uid or gid out of range", name)
        entry = TarEntry(name, kind, mode & 0o7777, uid, gid, 0, mtime_ns, atime_ns)
        entry.xattrs = xattrs
        if flag not in _KINDS:
            entry.unknown_type = chr(flag)
        if kind in (HARDLINK, SYMLINK):
            entry.linkname = _decode(raw_link)
        elif kind in (CHARDEV, BLOCKDEV):
            self._devices(hdr, entry)
        if flag == fmt.GNU_SPARSETYPE:
            if sparse:
                _fail("both old GNU and PAX sparse headers", name)
            if hdr[257:265] != fmt.GNU_MAGIC:
                _fail("sparse header in a non-GNU format is not supported", name)
            realsize, regions = self._old_gnu_sparse(hdr, name)
            self._set_sparse(entry, regions, realsize, size)
        elif sparse:
            assert pax is not None
            if kind != REGULAR:
                _fail("sparse records on an entry that is not a regular file", name)
            self._pax_sparse(entry, pax, size)
        elif kind == REGULAR:
            if flag in _PLAIN_KINDS and name.endswith("/"):
                # Old archives mark directories with a trailing slash. GNU tar reads
                # '0', '\0' and '7' alike (Go and tarfile only '\0'); no data follows.
                entry.kind = DIRECTORY
            else:
                entry.size = entry.stored_size = size
        elif flag == fmt.DUMPDIRTYPE:
            entry.stored_size = size  # the dumpdir listing: skipped, not extracted
        # Links, devices, FIFOs and directories have no data in the stream, whatever
        # their size field says: GNU tar (when extracting), Go and tarfile agree.
        return self._start_data(entry)

    @staticmethod
    def _devices(hdr: _Bytes, entry: TarEntry) -> None:
        """Device numbers: only ustar and GNU headers have them (as GNU tar reads them)."""
        if hdr[257:262] != b"ustar":
            return
        major = _number(hdr[329:337])
        minor = _number(hdr[337:345])
        if major is None or minor is None:
            _fail("invalid device number field", entry.name)
        if not (0 <= major <= _MAX_MAJOR and 0 <= minor <= _MAX_MINOR):
            _fail("device number out of range", entry.name)
        entry.devmajor = major
        entry.devminor = minor

    # -- PAX ----------------------------------------------------------------------

    def _read_pax(self, size: int, where: str) -> _Pax:
        """Read and parse the records of a PAX header, with Go's strict rules."""
        if size > self._max_pax:
            _fail(f"PAX header too large ({size} bytes)", where)
        data = self._read_bytes(size, "extended header", where)
        pax = _Pax()
        pos = 0
        end = len(data)
        while pos < end:
            # "%d %s=%s\n": length (of the whole record), keyword, value.
            space = data.find(b" ", pos, min(end, pos + 21))
            length = _decimal(data[pos:space], _MAX_OFF) if space > pos else None
            if length is None:
                _fail("malformed PAX record: bad length", where)
            stop = pos + length
            if stop > end or stop <= space + 1:
                _fail("malformed PAX record: length out of range", where)
            if data[stop - 1] != 0x0A:
                _fail("malformed PAX record: missing newline", where)
            equal = data.find(b"=", space + 1, stop - 1)
            if equal < 0:
                _fail("malformed PAX record: missing '='", where)
            key = data[space + 1 : equal]
            value = data[equal + 1 : stop - 1]
            if key in _TIME_SLOTS:
                # The common case: the plain form (what _pax_time() reads the same way);
                # anything else goes the long way.
                time = _plain_time(value)
                if time is not None:
                    if key == b"mtime":
                        pax.mtime = time
                    elif key == b"atime":
                        pax.atime = time
                    pos = stop
                    continue
            if not key:
                _fail("malformed PAX record: empty keyword", where)
            if 0 in key:
                _fail("malformed PAX record: NUL byte in keyword", where)
            self._pax_record(pax, _decode(key), value, where)
            pos = stop
        return pax

    def _pax_record(self, pax: _Pax, key: str, value: bytes, where: str) -> None:
        """Apply one record. An empty value removes an earlier one (POSIX, Go)."""
        if key == "path" or key == "linkpath":
            if 0 in value:
                _fail(f"NUL byte in PAX {key}", where)
            setattr(pax, key, value or None)
        elif key == "size" or key == "uid" or key == "gid":
            number = _decimal(value, _MAX_OFF if key == "size" else _MAX_ID)
            if value and number is None:
                _fail(f"invalid PAX {key} {value[:40]!r}", where)
            setattr(pax, key, number)
        elif key == "mtime" or key == "atime" or key == "ctime":
            time = _pax_time(value)
            if value and time is None:
                time = _pax_time_prefix(value)
                if time is None:
                    _fail(f"invalid PAX {key} {value[:40]!r}", where)
                if not self.lenient_times:
                    self.lenient_time_where = where
                self.lenient_times += 1
            if key != "ctime":
                setattr(pax, key, time)
        elif key == "uname" or key == "gname":
            if 0 in value:
                _fail(f"NUL byte in PAX {key}", where)
        elif key.startswith("SCHILY.xattr."):
            if len(key) == 13:
                _fail("empty xattr name", where)
            raw = key[13:]
            if "%" not in raw:
                pax.xattrs[raw] = value
            else:
                xattr = _schily_name(raw)
                if xattr in pax.xattrs or _decode(_percent_decode(raw)) not in pax.xattrs:
                    pax.xattrs[xattr] = value
                # else: libarchive's copy, under its URL-encoded name, of the
                # LIBARCHIVE.xattr record read before it (not a second xattr)
        elif key.startswith("LIBARCHIVE.xattr."):
            name = _percent_decode(key[17:])
            if not name or 0 in name:
                _fail("invalid xattr name", where)
            try:
                decoded = binascii.a2b_base64(value + b"=" * (-len(value) % 4), strict_mode=True)
            except binascii.Error:
                _fail(f"invalid base64 value of {key}", where)
            # libarchive writes SCHILY.xattr records too, under the same URL-encoded
            # name: one read first is this xattr, not a second one; plain names win.
            real = _decode(name)
            for copy in {key[17:], _schily_name(key[17:])} - {real}:
                pax.xattrs.pop(copy, None)
            pax.xattrs.setdefault(real, decoded)
        elif key.startswith("GNU.sparse."):
            if key == "GNU.sparse.offset" or key == "GNU.sparse.numbytes":
                # Format 0.0: repeated offset/numbytes records, in order (as Go).
                pairs = pax.sparse_pairs
                if key != ("GNU.sparse.offset", "GNU.sparse.numbytes")[len(pairs) % 2]:
                    _fail("malformed GNU sparse 0.0 records", where)
                pairs.append(value)
            else:
                if key == "GNU.sparse.name" and 0 in value:
                    _fail("NUL byte in GNU.sparse.name", where)
                pax.sparse[key] = value

    # -- sparse files ---------------------------------------------------------------

    def _set_sparse(
        self, entry: TarEntry, regions: list[tuple[int, int]], realsize: int, stored: int
    ) -> None:
        """Check a sparse map against the sizes, then attach it to the entry."""
        if len(regions) > self._max_regions:
            _fail("too many sparse regions", entry.name)
        end = 0
        total = 0
        for offset, length in regions:
            if offset < 0 or length < 0:
                _fail("negative offset or length in the sparse map", entry.name)
            if offset < end:
                _fail("sparse map regions overlap or are out of order", entry.name)
            end = offset + length
            total += length
        if end > realsize:
            _fail("sparse map region beyond the end of the file", entry.name)
        if total != stored:
            _fail(f"sparse map describes {total} bytes but {stored} are stored", entry.name)
        entry.sparse = regions
        entry.size = realsize
        entry.stored_size = stored

    def _old_gnu_sparse(self, hdr: _Bytes, name: str) -> tuple[int, list[tuple[int, int]]]:
        """Read the old GNU sparse map: 4 slots in the header, 21 per extension block."""
        realsize = _number(hdr[483:495])
        if realsize is None or not 0 <= realsize <= _MAX_OFF:
            _fail("invalid sparse file size", name)
        regions: list[tuple[int, int]] = []
        block, first, count, extended = hdr, 386, 4, hdr[482]
        while True:
            ended = False
            for slot in range(first, first + 24 * count, 24):
                if block[slot] == 0 and block[slot + 12] == 0:
                    ended = True  # GNU tar and Go stop at the first empty slot
                    if any(block[s] or block[s + 12]
                           for s in range(slot + 24, first + 24 * count, 24)):
                        # bsdtar skips the empty slot and reads on: another file.
                        _fail("sparse map has a used slot after an empty one", name)
                    break
                offset = _number(block[slot : slot + 12])
                length = _number(block[slot + 12 : slot + 24])
                if offset is None or length is None or not (block[slot] and block[slot + 12]):
                    _fail("malformed sparse map entry", name)
                regions.append((offset, length))
            if not extended:
                return realsize, regions
            if ended:
                # GNU tar would stop here and Go read on: refuse the ambiguity.
                _fail("sparse map extension after an empty slot", name)
            if len(regions) > self._max_regions:
                _fail("too many sparse regions", name)
            block = self._read_block("sparse map", name)
            first, count, extended = 0, 21, block[504]

    def _pax_sparse(self, entry: TarEntry, pax: _Pax, stored: int) -> None:
        """Apply GNU sparse PAX records (formats 0.0, 0.1 and 1.0)."""
        name = entry.name
        records = pax.sparse
        pairs = pax.sparse_pairs
        if not pairs and not _SPARSE_KEYS.intersection(records):
            _fail("GNU sparse records without a sparse map", name)
        major = _decimal(records.get("GNU.sparse.major", b"0"), 9)
        minor = _decimal(records.get("GNU.sparse.minor", b"0"), 9)
        if major is None or minor is None or (major, minor) not in ((0, 0), (0, 1), (1, 0)):
            _fail("unsupported GNU sparse format version", name)
        size_raw = records.get("GNU.sparse.realsize", records.get("GNU.sparse.size"))
        realsize = _decimal(size_raw, _MAX_OFF) if size_raw is not None else None
        if realsize is None:
            _fail("missing or invalid GNU sparse file size", name)
        if "GNU.sparse.name" in records:
            entry.name = name = _decode(records["GNU.sparse.name"])
        has_map = "GNU.sparse.map" in records
        regions: list[tuple[int, int]] = []
        if major == 1:
            if has_map or pairs or "GNU.sparse.numblocks" in records:
                _fail("conflicting GNU sparse records", name)
            regions, map_size = self._sparse_map_1_0(stored, name)
            stored -= map_size
        else:
            if has_map and pairs:
                _fail("conflicting GNU sparse records", name)
            count = _decimal(records.get("GNU.sparse.numblocks", b""), self._max_regions)
            if count is None:
                _fail("invalid or too large GNU.sparse.numblocks", name)
            text = records.get("GNU.sparse.map", b"")
            numbers = pairs if pairs else text.split(b",") if text else []
            if len(numbers) != 2 * count:
                _fail("GNU sparse map does not match GNU.sparse.numblocks", name)
            for i in range(0, len(numbers), 2):
                offset = _decimal(numbers[i], _MAX_OFF)
                length = _decimal(numbers[i + 1], _MAX_OFF)
                if offset is None or length is None:
                    _fail("malformed GNU sparse map", name)
                regions.append((offset, length))
        self._set_sparse(entry, regions, realsize, stored)

    def _sparse_map_1_0(self, stored: int, name: str) -> tuple[list[tuple[int, int]], int]:
        """Read the GNU 1.0 sparse map at the start of the data; return it and its size.

        Decimal numbers, one a line: the count, then offset/length pairs. The map ends
        with the block that holds its last newline.
        """
        numbers: list[int] = []
        need = 1
        tail = b""
        used = 0
        while True:
            if used + BLOCK > stored:
                _fail("truncated GNU sparse map", name)
            lines = (tail + self._read_block("sparse map", name)).split(b"\n")
            used += BLOCK
            tail = lines.pop()
            for line in lines:
                value = _decimal(line, _MAX_OFF)
                if value is None:
                    _fail("malformed GNU sparse map", name)
                numbers.append(value)
                if len(numbers) == 1:
                    if value > self._max_regions:
                        _fail("too many sparse regions", name)
                    need = 1 + 2 * value
                if len(numbers) == need:
                    return list(zip(numbers[1::2], numbers[2::2], strict=True)), used
            if len(tail) > 20:
                _fail("malformed GNU sparse map", name)
