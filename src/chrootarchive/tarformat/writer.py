"""Writing tar headers: POSIX ustar, with PAX records where ustar cannot hold a value.

PAX records are written for long or non-ASCII names, big ids, sizes and times,
sub-second times, and ``SCHILY.xattr.*`` records for extended attributes, as GNU tar,
bsdtar and Go write them. Device numbers too big for octal get GNU base-256 (PAX has no
standard record for them).
"""

from __future__ import annotations

import posixpath

from chrootarchive.tarformat.format import (
    BLKTYPE,
    BLOCK,
    CHRTYPE,
    NS,
    PAXTYPE,
    USTAR_MAGIC,
    byte_sum,
)

__all__ = ["header"]



def _octal(value: int, width: int) -> bytes | None:
    """``value`` as NUL-terminated octal in ``width`` bytes, or None if it does not fit."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    return None


def _base256(value: int, width: int) -> bytes:
    """GNU base-256 (for device numbers, which PAX has no standard record for)."""
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _pax_time(ns: int) -> bytes:
    """A PAX time: the exact real number of seconds, ``-1.5`` meaning 1.5 s before 1970."""
    sign = b"-" if ns < 0 else b""
    secs, frac = divmod(abs(ns), NS)
    if not frac:
        return sign + b"%d" % secs
    return sign + (b"%d.%09d" % (secs, frac)).rstrip(b"0")


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"%d %s=%s\\n"`` record; the length counts itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """Split a name into ustar (prefix, name), or None when it does not fit."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    i = name.find(b"/", max(len(name) - 101, 1))
    while 0 < i <= 155:
        if len(name) - i - 1 > 0:
            return name[:i], name[i + 1 :]
        i = name.find(b"/", i + 1)
    return None


def _is_ascii(raw: bytes) -> bool:
    return raw.isascii() and 0 not in raw


def header(
    name: bytes,
    typeflag: int,
    *,
    mode: int,
    uid: int,
    gid: int,
    mtime_ns: int,
    size: int = 0,
    linkname: bytes = b"",
    uname: str = "",
    gname: str = "",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: dict[str, bytes] | None = None,
    records: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """The header blocks of one entry: a PAX 'x' header when needed, then ustar.

    Args:
        name: the entry's name, raw bytes (directories end with ``/``).
        typeflag: the ustar type byte (``ord("0")`` for a file...).
        mtime_ns: the modification time; sub-second parts get a PAX record.
        xattrs: name -> value, written as ``SCHILY.xattr.NAME`` records.
        records: more PAX records, key and value (a sparse file's ``GNU.sparse.*``).
    """
    pax: list[bytes] = []
    binary = False
    split = _split_name(name) if _is_ascii(name) else None
    if split is None:
        pax.append(_pax_record(b"path", name))
        binary = not _valid_utf8(name)
        prefix, short = b"", _fallback_name(name)
    else:
        prefix, short = split
    if len(linkname) > 100 or not _is_ascii(linkname):
        pax.append(_pax_record(b"linkpath", linkname))
        binary = binary or not _valid_utf8(linkname)
        link_field = _fallback_link(linkname)
    else:
        link_field = linkname
    fields: dict[str, bytes] = {}
    for key, value, width in (("uid", uid, 8), ("gid", gid, 8), ("size", size, 12)):
        encoded = _octal(value, width)
        if encoded is None:
            pax.append(_pax_record(key.encode(), b"%d" % value))
            encoded = _octal(0, width)
            assert encoded is not None
        fields[key] = encoded
    secs = mtime_ns // NS
    mtime_field = _octal(secs, 12)
    if mtime_field is None or mtime_ns % NS:
        pax.append(_pax_record(b"mtime", _pax_time(mtime_ns)))
        if mtime_field is None:
            mtime_field = _octal(0, 12)
    uname_b = uname.encode("utf-8", "surrogateescape")
    gname_b = gname.encode("utf-8", "surrogateescape")
    if len(uname_b) > 32 or not _is_ascii(uname_b):
        pax.append(_pax_record(b"uname", uname_b))
        uname_b = b""
    if len(gname_b) > 32 or not _is_ascii(gname_b):
        pax.append(_pax_record(b"gname", gname_b))
        gname_b = b""
    for key in sorted(xattrs or ()):
        assert xattrs is not None
        # A PAX key ends at the first "=": GNU tar's escapes for "=" and "%" in names.
        name = key.encode("utf-8", "surrogateescape")
        if b"=" in name or b"%" in name:
            name = name.replace(b"%", b"%25").replace(b"=", b"%3D")
        pax.append(_pax_record(b"SCHILY.xattr." + name, xattrs[key]))
    for key_b, value_b in records:
        pax.append(_pax_record(key_b, value_b))
        binary = binary or not _valid_utf8(value_b)
    if binary:
        pax.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    assert mtime_field is not None
    block = _ustar(
        short, prefix, typeflag, mode, fields["uid"], fields["gid"], fields["size"],
        mtime_field, link_field, uname_b, gname_b, devmajor, devminor,
    )
    if not pax:
        return block
    data = b"".join(pax)
    base = posixpath.basename(name.rstrip(b"/")) or b"."
    pax_name = b"PaxHeaders.0/" + (base if _is_ascii(base) else b"entry")[-80:]
    pax_block = _ustar(
        pax_name, b"", PAXTYPE, 0o644, _octal(0, 8) or b"", _octal(0, 8) or b"",
        _octal(len(data), 12) or b"", mtime_field, b"", b"", b"", 0, 0,
    )
    return pax_block + data + bytes(-len(data) % BLOCK) + block


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fallback_name(name: bytes) -> bytes:
    """What a reader without PAX sees: the ASCII tail of the name, at most 100 bytes."""
    tail = bytes(c if 0x20 <= c < 0x7F else 0x5F for c in name[-100:])
    return tail


def _fallback_link(linkname: bytes) -> bytes:
    """What a reader without PAX sees of a link target: its ASCII head, as Go and
    tarfile write it. Never empty: bsdtar 3.6 turns a symlink whose ustar field is
    empty into an empty regular file, even with the right ``linkpath`` record."""
    return bytes(c if 0x20 <= c < 0x7F else 0x5F for c in linkname[:100])


def _ustar(
    name: bytes, prefix: bytes, typeflag: int, mode: int, uid: bytes, gid: bytes,
    size: bytes, mtime: bytes, linkname: bytes, uname: bytes, gname: bytes,
    devmajor: int, devminor: int,
) -> bytes:
    h = bytearray(BLOCK)
    h[0 : len(name)] = name
    h[100:108] = _octal(mode & 0o7777, 8) or b""
    h[108:116] = uid
    h[116:124] = gid
    h[124:136] = size
    h[136:148] = mtime
    h[148:156] = b" " * 8
    h[156] = typeflag
    h[157 : 157 + len(linkname)] = linkname
    h[257:263] = USTAR_MAGIC
    h[263:265] = b"00"
    h[265 : 265 + len(uname)] = uname
    h[297 : 297 + len(gname)] = gname
    if typeflag in (CHRTYPE, BLKTYPE):
        h[329:337] = _octal(devmajor, 8) or _base256(devmajor, 8)
        h[337:345] = _octal(devminor, 8) or _base256(devminor, 8)
    h[345 : 345 + len(prefix)] = prefix
    h[148:156] = b"%06o\x00 " % byte_sum(h)
    return bytes(h)
