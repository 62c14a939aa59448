"""Build tar archives byte by byte, including hostile and malformed ones.

Every header field can be given as an ``int`` (encoded as NUL-terminated octal, the
ustar way), as ``bytes`` (copied verbatim, padded with NULs, never validated) or left
to its default. The checksum is computed unless given explicitly. On top of that:
GNU long names (``L``) and long link names (``K``), PAX extended headers (``x``) and
global headers (``g``) with well-formed or malformed records, base-256 numbers
(negative or huge), end-of-archive markers, truncation, and compression helpers.

Nothing here uses :mod:`tarfile` except :func:`tarfile_archive`, a convenience for
well-formed archives.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

BLOCK = 512

# Typeflags.
REG = b"0"
AREG = b"\x00"
LNK = b"1"
SYM = b"2"
CHR = b"3"
BLK = b"4"
DIR = b"5"
FIFO = b"6"
CONT = b"7"
PAX = b"x"
PAX_GLOBAL = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"
GNU_SPARSE = b"S"

USTAR_MAGIC = b"ustar\x00"
USTAR_VERSION = b"00"
GNU_MAGIC = b"ustar "
GNU_VERSION = b" \x00"

# (offset, width) of each ustar header field.
FIELDS: dict[str, tuple[int, int]] = {
    "name": (0, 100),
    "mode": (100, 8),
    "uid": (108, 8),
    "gid": (116, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "chksum": (148, 8),
    "typeflag": (156, 1),
    "linkname": (157, 100),
    "magic": (257, 6),
    "version": (263, 2),
    "uname": (265, 32),
    "gname": (297, 32),
    "devmajor": (329, 8),
    "devminor": (337, 8),
    "prefix": (345, 155),
}


def octal(value: int, width: int) -> bytes:
    """``value`` as zero-padded octal, NUL-terminated, in ``width`` bytes."""
    digits = format(value, "o").encode()
    if len(digits) > width - 1:
        raise ValueError(f"{value} does not fit in {width} bytes of octal; use base256()")
    return digits.rjust(width - 1, b"0") + b"\x00"


def base256(value: int, width: int) -> bytes:
    """``value`` in GNU base-256 (two's complement, high bit of the first byte set).

    Works for negative values and for values too large for octal; values that do
    not fit in ``width`` bytes are truncated to their low bytes on purpose (hostile
    input), with the marker bit still set.
    """
    mask = (1 << (8 * width)) - 1
    raw = (value & mask).to_bytes(width, "big")
    first = raw[0] | 0x80
    return bytes([first]) + raw[1:]


def _field(value: int | bytes | str | None, width: int, default: bytes = b"") -> bytes:
    if value is None:
        raw = default
    elif isinstance(value, int):
        raw = octal(value, width)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
    else:
        raw = bytes(value)
    if len(raw) > width:
        raise ValueError(f"field of {len(raw)} bytes does not fit in {width} bytes")
    return raw.ljust(width, b"\x00")


def checksum(block: bytes) -> int:
    """The tar checksum of a 512-byte header (chksum field counted as spaces)."""
    assert len(block) == BLOCK
    return sum(block[:148]) + 8 * 0x20 + sum(block[156:])


def header(
    name: bytes | str = b"",
    *,
    mode: int | bytes = 0o644,
    uid: int | bytes = 0,
    gid: int | bytes = 0,
    size: int | bytes = 0,
    mtime: int | bytes = 1_600_000_000,
    typeflag: bytes = REG,
    linkname: bytes | str = b"",
    magic: bytes = USTAR_MAGIC,
    version: bytes = USTAR_VERSION,
    uname: bytes | str = b"",
    gname: bytes | str = b"",
    devmajor: int | bytes = 0,
    devminor: int | bytes = 0,
    prefix: bytes | str = b"",
    chksum: int | bytes | None = None,
    raw: Mapping[int, bytes] | None = None,
) -> bytes:
    """One 512-byte header. ``raw`` maps byte offsets to bytes patched in last,
    before the checksum is computed (so the checksum still matches)."""
    values: dict[str, bytes] = {
        "name": _field(name, 100),
        "mode": _field(mode, 8),
        "uid": _field(uid, 8),
        "gid": _field(gid, 8),
        "size": _field(size, 12),
        "mtime": _field(mtime, 12),
        "chksum": b" " * 8,
        "typeflag": _field(typeflag, 1),
        "linkname": _field(linkname, 100),
        "magic": _field(magic, 6),
        "version": _field(version, 2),
        "uname": _field(uname, 32),
        "gname": _field(gname, 32),
        "devmajor": _field(devmajor, 8),
        "devminor": _field(devminor, 8),
        "prefix": _field(prefix, 155),
    }
    block = bytearray(BLOCK)
    for key, (off, width) in FIELDS.items():
        block[off : off + width] = values[key]
    for off, data in (raw or {}).items():
        block[off : off + len(data)] = data
    if chksum is None:
        block[148:156] = format(checksum(bytes(block)), "06o").encode() + b"\x00 "
    elif isinstance(chksum, int):
        block[148:156] = format(chksum, "06o").encode() + b"\x00 "
    else:
        block[148:156] = chksum.ljust(8, b"\x00")
    return bytes(block)


# The keyword arguments the helpers below pass on to :func:`header`: each helper takes
# the fields it does not set itself (a field it sets cannot be given twice).


class CommonFields(TypedDict, total=False):
    """The fields no helper sets itself (owners, time, prefix, checksum, raw patches)."""

    uid: int | bytes
    gid: int | bytes
    mtime: int | bytes
    uname: bytes | str
    gname: bytes | str
    prefix: bytes | str
    chksum: int | bytes | None
    raw: Mapping[int, bytes] | None


class _Device(TypedDict, total=False):
    devmajor: int | bytes
    devminor: int | bytes


class _Magic(TypedDict, total=False):
    magic: bytes
    version: bytes


class _Mode(TypedDict, total=False):
    mode: int | bytes


class _Typeflag(TypedDict, total=False):
    typeflag: bytes


class _Size(TypedDict, total=False):
    size: int | bytes


class _Linkname(TypedDict, total=False):
    linkname: bytes | str


class HeaderFields(CommonFields, _Device, _Magic, _Mode, _Typeflag, _Size, _Linkname, total=False):
    """Every field of :func:`header` but the name."""


class _PaxFields(CommonFields, _Device, _Magic, _Mode, _Linkname, total=False):
    pass


class _PaxGlobalFields(_PaxFields, total=False):
    size: int | bytes | None


class _PaxHeaderFields(_PaxGlobalFields, total=False):
    name: bytes | str
    typeflag: bytes


class _GnuFields(CommonFields, _Device, _Mode, _Size, _Linkname, total=False):
    pass


class _GnuBuilderFields(_GnuFields, total=False):
    nul: bool


class _EntryFields(CommonFields, _Device, _Magic, _Mode, _Typeflag, _Size, total=False):
    pass


class _FileFields(CommonFields, _Device, _Magic, _Typeflag, _Size, total=False):
    pass


class _PaxFileFields(_FileFields, _Mode, total=False):
    pass


class _DirFields(CommonFields, _Device, _Magic, _Size, total=False):
    data: bytes


class _LinkFields(_DirFields, _Mode, total=False):
    pass


class _DeviceFields(CommonFields, _Magic, _Size, total=False):
    data: bytes


def pad(data: bytes) -> bytes:
    """``data`` padded with NULs to a multiple of 512 bytes."""
    return data + b"\x00" * (-len(data) % BLOCK)


def member(name: bytes | str, data: bytes = b"", **kw: Unpack[HeaderFields]) -> bytes:
    """A header plus its padded data; ``size`` defaults to ``len(data)``."""
    kw.setdefault("size", len(data))
    return header(name, **kw) + pad(data)


def end_of_archive(blocks: int = 2) -> bytes:
    return b"\x00" * (BLOCK * blocks)


# -- PAX ---------------------------------------------------------------------------


def pax_record(key: bytes | str, value: bytes | str) -> bytes:
    """One well-formed PAX record ``"%d %s=%s\\n"`` whose length counts itself."""
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogateescape")
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pax_records(records: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str]]) -> bytes:
    items = records.items() if isinstance(records, Mapping) else records
    return b"".join(pax_record(k, v) for k, v in items)


def pax_header(
    records: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str]] | bytes,
    *,
    name: bytes | str = b"././@PaxHeader",
    typeflag: bytes = PAX,
    size: int | bytes | None = None,
    **kw: Unpack[_PaxFields],
) -> bytes:
    """An extended header entry. ``records`` may be raw bytes (for malformed records)."""
    body = records if isinstance(records, bytes) else pax_records(records)
    return header(name, typeflag=typeflag, size=len(body) if size is None else size, **kw) + pad(
        body
    )


def pax_global(
    records: Mapping[str, bytes | str] | bytes, **kw: Unpack[_PaxGlobalFields]
) -> bytes:
    return pax_header(records, typeflag=PAX_GLOBAL, name=b"pax_global_header", **kw)


# -- GNU ---------------------------------------------------------------------------


def gnu_longname(name: bytes | str, *, nul: bool = True, **kw: Unpack[_GnuFields]) -> bytes:
    """A GNU ``L`` entry carrying ``name`` for the next header."""
    data = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    if nul:
        data += b"\x00"
    return member(
        b"././@LongLink", data, typeflag=GNU_LONGNAME, magic=GNU_MAGIC, version=GNU_VERSION, **kw
    )


def gnu_longlink(target: bytes | str, *, nul: bool = True, **kw: Unpack[_GnuFields]) -> bytes:
    """A GNU ``K`` entry carrying ``target`` as the next header's link name."""
    data = target.encode("utf-8", "surrogateescape") if isinstance(target, str) else target
    if nul:
        data += b"\x00"
    return member(
        b"././@LongLink", data, typeflag=GNU_LONGLINK, magic=GNU_MAGIC, version=GNU_VERSION, **kw
    )


# -- POSIX ACLs (the system.posix_acl_* xattr values) ---------------------------------

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20)


def posix_acl(*named: tuple[int, int, int], mask: int = 7) -> bytes:
    """A POSIX ACL xattr value (version 2): rwx owner, r-x group and other, the ``named``
    (tag, perm, id) entries (``ACL_USER``/``ACL_GROUP``) and, with them, a mask."""
    undefined = 0xFFFFFFFF
    entries = [(ACL_USER_OBJ, 7, undefined), *[e for e in named if e[0] == ACL_USER],
               (ACL_GROUP_OBJ, 5, undefined), *[e for e in named if e[0] == ACL_GROUP]]
    if named:
        entries.append((ACL_MASK, mask, undefined))
    entries.append((ACL_OTHER, 5, undefined))
    return b"\x02\x00\x00\x00" + b"".join(
        t.to_bytes(2, "little") + p.to_bytes(2, "little") + i.to_bytes(4, "little")
        for t, p, i in entries)


def parse_acl(value: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) of each entry of an ACL xattr value."""
    assert value[:4] == b"\x02\x00\x00\x00", value
    return [(int.from_bytes(value[i:i + 2], "little"), int.from_bytes(value[i + 2:i + 4], "little"),
             int.from_bytes(value[i + 4:i + 8], "little")) for i in range(4, len(value), 8)]


# -- A fluent builder --------------------------------------------------------------


@dataclass
class TarBuilder:
    """Append entries, then ``bytes()`` / ``build()`` / ``write(path)``.

    ``end()`` appends the end-of-archive marker explicitly; ``build()`` appends it
    unless ``eoa=False`` or ``end()`` was already called (entries after it can be
    added on purpose with further calls).
    """

    parts: list[bytes] = field(default_factory=list)
    ended: bool = False

    def raw(self, data: bytes) -> TarBuilder:
        self.parts.append(data)
        return self

    def _entry(
        self,
        name: bytes | str,
        linkname: bytes | str = b"",
        *,
        data: bytes = b"",
        **kw: Unpack[_EntryFields],
    ) -> TarBuilder:
        """A header; names or link names over 100 bytes travel in a PAX record."""
        bname = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
        blink = (
            linkname.encode("utf-8", "surrogateescape") if isinstance(linkname, str) else linkname
        )
        records: dict[str, bytes | str] = {}
        if len(bname) > 100:
            records["path"] = bname
            bname = bname[:99]
        if len(blink) > 100:
            records["linkpath"] = blink
            blink = blink[:99]
        if records:
            self.pax(records)
        assert isinstance(data, bytes)
        return self.raw(member(bname, data, linkname=blink, **kw))

    def file(
        self,
        name: bytes | str,
        data: bytes = b"",
        *,
        mode: int | bytes = 0o644,
        **kw: Unpack[_FileFields],
    ) -> TarBuilder:
        kw.setdefault("typeflag", REG)
        return self._entry(name, data=data, mode=mode, **kw)

    def dir(
        self, name: bytes | str, *, mode: int | bytes = 0o755, **kw: Unpack[_DirFields]
    ) -> TarBuilder:
        return self._entry(name, mode=mode, typeflag=DIR, **kw)

    def symlink(
        self, name: bytes | str, target: bytes | str, **kw: Unpack[_LinkFields]
    ) -> TarBuilder:
        kw.setdefault("mode", 0o777)
        return self._entry(name, target, typeflag=SYM, **kw)

    def hardlink(
        self, name: bytes | str, target: bytes | str, **kw: Unpack[_LinkFields]
    ) -> TarBuilder:
        return self._entry(name, target, typeflag=LNK, **kw)

    def chardev(
        self,
        name: bytes | str,
        major: int | bytes,
        minor: int | bytes,
        *,
        mode: int | bytes = 0o666,
        **kw: Unpack[_DeviceFields],
    ) -> TarBuilder:
        return self._entry(name, typeflag=CHR, mode=mode, devmajor=major, devminor=minor, **kw)

    def blockdev(
        self,
        name: bytes | str,
        major: int | bytes,
        minor: int | bytes,
        *,
        mode: int | bytes = 0o660,
        **kw: Unpack[_DeviceFields],
    ) -> TarBuilder:
        return self._entry(name, typeflag=BLK, mode=mode, devmajor=major, devminor=minor, **kw)

    def fifo(
        self, name: bytes | str, *, mode: int | bytes = 0o644, **kw: Unpack[_DirFields]
    ) -> TarBuilder:
        return self._entry(name, typeflag=FIFO, mode=mode, **kw)

    def pax(
        self, records: Mapping[str, bytes | str] | bytes, **kw: Unpack[_PaxHeaderFields]
    ) -> TarBuilder:
        """A PAX ``x`` header applying to the next entry."""
        return self.raw(pax_header(records, **kw))

    def pax_global(
        self, records: Mapping[str, bytes | str] | bytes, **kw: Unpack[_PaxGlobalFields]
    ) -> TarBuilder:
        return self.raw(pax_global(records, **kw))

    def longname(self, name: bytes | str, **kw: Unpack[_GnuBuilderFields]) -> TarBuilder:
        return self.raw(gnu_longname(name, **kw))

    def longlink(self, target: bytes | str, **kw: Unpack[_GnuBuilderFields]) -> TarBuilder:
        return self.raw(gnu_longlink(target, **kw))

    def pax_file(
        self,
        name: str | bytes,
        data: bytes = b"",
        *,
        records: Mapping[str, bytes | str] | None = None,
        **kw: Unpack[_PaxFileFields],
    ) -> TarBuilder:
        """A regular file whose name travels in a PAX ``path`` record."""
        recs: dict[str, bytes | str] = {"path": name}
        recs.update(records or {})
        self.pax(recs)
        return self.file(b"placeholder", data, **kw)

    def end(self, blocks: int = 2) -> TarBuilder:
        self.ended = True
        return self.raw(end_of_archive(blocks))

    def build(self, *, eoa: bool = True) -> bytes:
        data = b"".join(self.parts)
        if eoa and not self.ended:
            data += end_of_archive()
        return data

    def __bytes__(self) -> bytes:
        return self.build()

    def write(self, path: str | os.PathLike[str], *, eoa: bool = True) -> None:
        with open(path, "wb") as f:
            f.write(self.build(eoa=eoa))


# -- Mutations ---------------------------------------------------------------------


def truncate(data: bytes, length: int) -> bytes:
    return data[:length]


def flip(data: bytes, offset: int, xor: int = 0xFF) -> bytes:
    """``data`` with the byte at ``offset`` (negative: from the end) XOR-ed."""
    b = bytearray(data)
    b[offset] ^= xor
    return bytes(b)


# -- Compression -------------------------------------------------------------------


def compress(data: bytes, method: str) -> bytes:
    """``method`` in ``gzip``, ``bzip2``, ``xz``, ``zstd`` (with a content checksum)."""
    if method == "gzip":
        return gzip.compress(data, mtime=0)
    if method == "bzip2":
        return bz2.compress(data)
    if method == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64)
    if method == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(data)
    if method == "none":
        return data
    raise ValueError(method)


COMPRESSIONS = ("gzip", "bzip2", "xz", "zstd")


# -- Convenience on top of tarfile ------------------------------------------------


@dataclass
class Entry:
    """A well-formed entry for :func:`tarfile_archive`."""

    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, chardev, blockdev, fifo
    data: bytes = b""
    linkname: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: float = 1_600_000_000
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


_KINDS = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tarfile_archive(entries: Iterable[Entry], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A well-formed archive written by :mod:`tarfile` (numeric owners as given)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _KINDS[e.kind]
            default_mode = {"dir": 0o755, "symlink": 0o777}.get(e.kind, 0o644)
            info.mode = default_mode if e.mode is None else e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname, info.gname = e.uname, e.gname
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            info.pax_headers = dict(e.pax)
            if e.kind == "file":
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def simple_archive(files: Mapping[str, bytes]) -> bytes:
    """Regular files only, ustar, via :class:`TarBuilder`."""
    b = TarBuilder()
    for name, data in files.items():
        b.file(name, data)
    return b.build()
