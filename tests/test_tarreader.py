"""Unit tests of chrootarchive.tarformat.reader: the streaming tar reader.

The corpus tests compare with Python's tarfile reading the same archive. tarfile is
only a reference: where it differs from GNU tar (or from Docker's semantics, which the
reader follows for global headers), the expectation is corrected and the reason noted
in ``CORRECTIONS``.
"""

from __future__ import annotations

import bz2
import io
import math
import os
import random
import tarfile
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from chrootarchive.errors import InternalError, MalformedArchiveError
from chrootarchive.tarformat import format as fmt
from chrootarchive.tarformat.format import NS
from chrootarchive.tarformat.reader import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarEntry,
    TarReader,
)
from helpers import corpus as corpus_lists
from helpers.corpus import corpus_dir

CORPUS = corpus_dir()
EOA = bytes(1024)  # the end-of-archive marker

# ---------------------------------------------------------------------------------
# Building archives from raw bytes
# ---------------------------------------------------------------------------------


def octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal field of ``width`` bytes."""
    return b"%0*o\x00" % (width - 1, value)


def base256(value: int, width: int) -> bytes:
    """A GNU base-256 field (0x80 marker, or 0xff two's complement if negative)."""
    if value >= 0:
        return b"\x80" + value.to_bytes(width - 1, "big")
    return value.to_bytes(width, "big", signed=True)


def header(
    name: bytes | str,
    *,
    typeflag: bytes = b"0",
    size: int | bytes = 0,
    mode: int | bytes = 0o644,
    uid: int | bytes = 1000,
    gid: int | bytes = 1000,
    mtime: int | bytes = 1_700_000_000,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    devmajor: int | bytes = 0,
    devminor: int | bytes = 0,
    prefix: bytes = b"",
    extra: dict[int, bytes] | None = None,
    signed_checksum: bool = False,
    checksum: bytes | None = None,
) -> bytes:
    """A 512-byte header with a correct checksum (unless ``checksum`` is given).

    Numbers given as bytes are put in their field as they are.
    """
    if isinstance(name, str):
        name = name.encode()

    def num(value: int | bytes, width: int) -> bytes:
        return value if isinstance(value, bytes) else octal(value, width)

    block = bytearray(512)
    fields = [
        (0, name[:100]),
        (100, num(mode, 8)),
        (108, num(uid, 8)),
        (116, num(gid, 8)),
        (124, num(size, 12)),
        (136, num(mtime, 12)),
        (156, typeflag),
        (157, linkname[:100]),
        (257, magic),
        (329, num(devmajor, 8)),
        (337, num(devminor, 8)),
        (345, prefix),
        *(extra or {}).items(),
    ]
    for offset, value in fields:
        block[offset : offset + len(value)] = value
    block[148:156] = b" " * 8
    if signed_checksum:
        total = sum(b - 256 if b >= 128 else b for b in block)
    else:
        total = sum(block)
    block[148:156] = checksum if checksum is not None else b"%06o\x00 " % total
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def member(name: bytes | str, data: bytes = b"", **kw: Any) -> bytes:
    """A header and its padded data."""
    return header(name, size=len(data), **kw) + pad(data)


def pax_record(key: bytes | str, value: bytes | str) -> bytes:
    """One "%d %s=%s\\n" record with the right length."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(value, str):
        value = value.encode()
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax(records: list[tuple[str, bytes | str]] | bytes, typeflag: bytes = b"x") -> bytes:
    """A PAX extended header ('x' or 'g') holding ``records`` (or raw record bytes)."""
    data = records if isinstance(records, bytes) else b"".join(pax_record(*r) for r in records)
    return member("PaxHeaders/x", data, typeflag=typeflag, mode=0o644)


def tarfile_bytes(format: int, members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=format) as tf:
        for info, data in members:
            info.size = len(data) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def info(name: str, **kw: Any) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = 1_700_000_000
    ti.mode = 0o644
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


# ---------------------------------------------------------------------------------
# Reading archives
# ---------------------------------------------------------------------------------


@dataclass
class Read:
    entry: TarEntry
    content: bytes  # plain files: the data; sparse files: the data regions concatenated
    chunks: list[tuple[int, int]]  # (offset, length) of each chunk data() gave


def feed_pipe(data: bytes, chunk_sizes: tuple[int, int] | None = None) -> int:
    """A pipe's read end; a thread writes ``data`` (in random small chunks if asked)."""
    rfd, wfd = os.pipe()

    def write() -> None:
        rng = random.Random(len(data))
        view = memoryview(data)
        try:
            while view:
                n = rng.randint(*chunk_sizes) if chunk_sizes else len(view)
                written = os.write(wfd, view[:n])
                view = view[written:]
        except BrokenPipeError:
            pass
        finally:
            os.close(wfd)

    threading.Thread(target=write, daemon=True).start()
    return rfd


def read_fd(fd: int, **kw: Any) -> tuple[list[Read], TarReader]:
    reader = TarReader(fd, **kw)
    out = []
    for entry in reader:
        parts, chunks = [], []
        for offset, chunk in reader.data(entry):
            chunks.append((offset, len(chunk)))
            parts.append(bytes(chunk))
        out.append(Read(entry, b"".join(parts), chunks))
    return out, reader


def open_input(data: bytes, via: str = "pipe", tmp_path: Path | None = None) -> int:
    """``data`` as a regular file, a pipe, or a pipe fed in tiny writes (``via``)."""
    if via == "file":
        assert tmp_path is not None
        path = tmp_path / "in.tar"
        path.write_bytes(data)
        return os.open(path, os.O_RDONLY)
    return feed_pipe(data, (1, 7) if via == "tiny" else None)


def read(data: bytes, via: str = "pipe", tmp_path: Path | None = None, **kw: Any) -> list[Read]:
    """Read an archive given as bytes, from a pipe or from a regular file."""
    fd = open_input(data, via, tmp_path)
    try:
        out, reader = read_fd(fd, **kw)
        reader.drain()
        return out
    finally:
        if via != "file":
            TarReader(fd).drain()  # let the writer thread finish after an error
        os.close(fd)


def names(data: bytes, **kw: Any) -> list[str]:
    return [r.entry.name for r in read(data, **kw)]


def fails(data: bytes, *words: str, **kw: Any) -> MalformedArchiveError:
    with pytest.raises(MalformedArchiveError) as err:
        read(data, **kw)
    text = str(err.value).lower()
    for word in words:
        assert word.lower() in text, text
    return err.value


def logical(r: Read) -> dict[int, bytes]:
    """The data of an entry by logical offset, consecutive chunks merged."""
    out: dict[int, bytes] = {}
    pos = 0
    last = None
    for offset, length in r.chunks:
        piece = r.content[pos : pos + length]
        pos += length
        if last is not None and last + len(out[last]) == offset:
            out[last] += piece
        else:
            out[offset] = piece
            last = offset
    return {k: v for k, v in out.items() if v}


# ---------------------------------------------------------------------------------
# The corpus, compared with tarfile
# ---------------------------------------------------------------------------------

# pax-path-hdr.tar holds only a PAX header (no entry): tested on its own below.
WELL_FORMED = [name for name in corpus_lists.WELL_FORMED if name != "pax-path-hdr.tar"]

# name -> words the error must contain.
MALFORMED = {
    "pax-bad-hdr-file.tar": ("pax", "newline"),
    "pax-bad-hdr-large.tar.bz2": ("pax header too large",),
    "pax-bad-mtime-file.tar": ("invalid pax mtime", "999xxx9324"),
    "pax-nul-xattrs.tar": ("nul",),
    "pax-nul-path.tar": ("nul", "path"),
    "neg-size.tar": ("size",),
    "issue10968.tar": ("not a tar archive",),
    "issue11169.tar": ("truncated padding after the extended header",),
    "issue12435.tar": ("size",),
    "writer-big.tar": ("truncated data", "16gig.txt"),
    "writer-big-long.tar": ("truncated data", "16gig.txt"),
    "small.txt": ("not a tar archive",),
    "small2.txt": ("not a tar archive",),
}

# Where tarfile's reading differs from GNU tar's (or from Docker's, for global
# headers), the entries as GNU tar reads them: index -> field -> value.
CORRECTIONS: dict[str, dict[int, dict[str, Any]]] = {
    # GNU-format headers have no prefix field (atime is stored there): tarfile
    # prefixes the atime digits ("12574544345/test2/"). 'D' (dumpdir) is a directory.
    "gnu-incremental.tar": {
        0: {"name": "test2", "kind": DIRECTORY, "size": 0, "data": {}},
        1: {"name": "test2/foo"},
    },
    # A pre-1.8 Go writer put a name part in a GNU header's (nonexistent) prefix
    # field: GNU tar reads "foo", tarfile and Go "aaa.../foo".
    "invalid-go17.tar": {0: {"name": "foo"}},
    # Several 'L'/'K' headers: GNU tar and Go use the last one, tarfile the first.
    "gnu-multi-hdrs.tar": {
        0: {"name": "GNU2/GNU2/long-path-name", "linkname": "GNU4/GNU4/long-linkpath-name"}
    },
    # Several 'x' headers: the last one replaces the others (GNU tar, Go); tarfile
    # merges them. The name is then the header's own, "bar".
    "pax-multi-hdrs.tar": {0: {"name": "bar", "linkname": "PAX4/PAX4/long-linkpath-name"}},
    # Global headers are ignored (Docker); tarfile and GNU tar apply their records.
    "pax-global-records.tar": {
        0: {"name": "file1", "mtime": 0.0},
        1: {"name": "file2", "mtime": 0.0},
        2: {"name": "file3", "mtime": 0.0},
        3: {"name": "file4"},
    },
}


def corpus(name: str) -> bytes:
    path = CORPUS / name
    if not path.exists():
        pytest.fail(f"corpus file missing: {path}")
    data = path.read_bytes()
    return bz2.decompress(data) if name.endswith(".bz2") else data


def tarfile_kind(m: tarfile.TarInfo) -> str:
    for test, kind in (
        (m.isdir, DIRECTORY),
        (m.issym, SYMLINK),
        (m.islnk, HARDLINK),
        (m.ischr, CHARDEV),
        (m.isblk, BLOCKDEV),
        (m.isfifo, FIFO),
    ):
        if test():
            return kind
    return REGULAR


def expected(name: str) -> list[dict[str, Any]]:
    """The entries as tarfile reads them, then corrected (see CORRECTIONS)."""
    out = []
    with tarfile.open(CORPUS / name) as tf:
        for m in tf:
            kind = tarfile_kind(m)
            want: dict[str, Any] = {
                "name": m.name.rstrip("/"),  # tarfile drops the trailing slash of dirs
                "kind": kind,
                "mode": m.mode & 0o7777,
                "uid": m.uid,
                "gid": m.gid,
                "mtime": m.mtime,
                "xattrs": {
                    k[13:]: v.encode("utf-8", "surrogateescape")
                    for k, v in m.pax_headers.items()
                    if k.startswith("SCHILY.xattr.")
                },
            }
            if kind in (SYMLINK, HARDLINK):
                want["linkname"] = m.linkname
            # tarfile reads device numbers for every type; GNU tar only for devices.
            if kind in (CHARDEV, BLOCKDEV):
                want["dev"] = (m.devmajor, m.devminor)
            if kind == REGULAR:
                # tarfile reports the size field for links, dirs...: they have no data.
                if "GNU.sparse.realsize" in m.pax_headers:
                    # tarfile gives PAX 1.0 sparse files their stored size (and then
                    # reads nothing beyond it).
                    m.size = int(m.pax_headers["GNU.sparse.realsize"])
                want["size"] = m.size
                f = tf.extractfile(m)
                assert f is not None
                if m.sparse is not None:
                    want["data"] = {}
                    for offset, length in cast("list[tuple[int, int]]", m.sparse):
                        if length:
                            f.seek(offset)
                            want["data"][offset] = f.read(length)
                else:
                    want["data"] = {0: f.read()} if m.size else {}
            out.append(want)
    for index, fixes in CORRECTIONS.get(name, {}).items():
        out[index].update(fixes)
    return out


def actual(r: Read) -> dict[str, Any]:
    e = r.entry
    got: dict[str, Any] = {
        "name": e.name.rstrip("/"),
        "kind": e.kind,
        "mode": e.mode,
        "uid": e.uid,
        "gid": e.gid,
        "mtime": e.mtime_ns / 1e9,
        "mtime_ns": e.mtime_ns,
        "xattrs": e.xattrs,
        "linkname": e.linkname,
        "dev": (e.devmajor, e.devminor),
        "size": e.size,
        "data": logical(r),
    }
    return got


@pytest.mark.parametrize("via", ["file", "pipe"])
@pytest.mark.parametrize("name", WELL_FORMED)
def test_corpus_matches_reference(name: str, via: str, tmp_path: Path) -> None:
    got = read(corpus(name), via=via, tmp_path=tmp_path)
    want = expected(name)
    assert len(got) == len(want)
    for r, w in zip(got, want, strict=True):
        a = actual(r)
        for key, value in w.items():
            if key == "mtime":
                assert math.isclose(a["mtime"], value, abs_tol=1e-6), (r.entry, key)
            else:
                assert a[key] == value, (r.entry.name, key, a[key], value)
        if r.entry.kind != REGULAR:
            assert r.entry.size == 0 and r.content == b""


def test_corpus_pax_path_header_without_entry() -> None:
    """An 'x' header and then the end of the input: an empty archive, as in Go
    (tarfile raises "empty header")."""
    assert read(corpus("pax-path-hdr.tar")) == []


@pytest.mark.parametrize("via", ["file", "pipe"])
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_corpus_malformed(name: str, via: str, tmp_path: Path) -> None:
    fails(corpus(name), *MALFORMED[name], via=via, tmp_path=tmp_path)


def test_corpus_details() -> None:
    """Values tarfile cannot show: nanoseconds, sparse maps, hardlink sizes."""
    pax_tar = read(corpus("pax.tar"))
    assert pax_tar[0].entry.mtime_ns == 1350244992_023960108
    assert pax_tar[1].entry.mtime_ns == 1350266320_910238425
    xattrs = read(corpus("xattrs.tar"))[0].entry
    assert xattrs.mtime_ns == 1386065770_448252320
    assert xattrs.atime_ns == 1389782991_419875220
    big = read(corpus("gnu-sparse-big.tar"))[0].entry
    assert big.size == 60_000_000_000 and big.stored_size == 3072
    assert big.sparse == [(n * 10_000_000_000 - 512, 512) for n in range(1, 7)]
    pax_big = read(corpus("pax-sparse-big.tar"))[0].entry
    assert pax_big.sparse == big.sparse and pax_big.stored_size == 3072
    hole = read(corpus("pax-nil-sparse-hole.tar"))[0].entry
    assert (hole.size, hole.stored_size, hole.sparse) == (1000, 0, [(1000, 0)])
    # hdr-only.tar: the second half has size fields of 5 on links, dirs, devices and
    # FIFOs, and no data after them (GNU tar extracting, Go and tarfile agree).
    entries = [r.entry for r in read(corpus("hdr-only.tar"))]
    assert len(entries) == 16
    for first, second in zip(entries[:8], entries[8:], strict=True):
        assert first == second
    # The GNU dumpdir's listing is skipped, not extracted.
    dumpdir = read(corpus("gnu-incremental.tar"))[0]
    assert dumpdir.entry.stored_size == 14 and dumpdir.content == b""
    # Not UTF-8: surrogateescape gives the bytes back.
    odd = read(corpus("gnu-not-utf8.tar"))[0].entry.name
    assert os.fsencode(odd) == b"hi\x80\x81\x82\x83bye"


def test_corpus_through_tiny_pipe_writes() -> None:
    """A writer thread feeding 1-7 bytes at a time gives the same entries and data."""
    for name in ("sparse-formats.tar", "pax.tar", "gnu-incremental.tar", "xattrs.tar"):
        data = corpus(name)
        whole = read(data)
        tiny = read(data, via="tiny")
        assert tiny
        assert [(r.entry, logical(r)) for r in tiny] == [(r.entry, logical(r)) for r in whole]


# ---------------------------------------------------------------------------------
# Synthetic archives
# ---------------------------------------------------------------------------------


def test_empty_stream_is_an_empty_archive() -> None:
    assert read(b"") == []


def test_only_zeros() -> None:
    fd = feed_pipe(bytes(10240))
    entries, reader = read_fd(fd)
    assert entries == []
    assert reader.drain() == 10240 - 1024
    os.close(fd)


def test_lone_zero_block_then_end_of_input() -> None:
    assert names(member("a", b"x") + bytes(512)) == ["a"]


def test_end_of_input_at_a_header_boundary() -> None:
    """No end marker at all: accepted, as GNU tar does (with a warning)."""
    assert names(member("a", b"x") + member("b")) == ["a", "b"]


def test_end_of_input_in_padding_is_an_error() -> None:
    """All the data is there, only the padding is cut: Go reads it as the end, but GNU
    tar, bsdtar and tarfile say "unexpected EOF", and so do we. What followed the entry
    is lost: a download cut short looked like a whole archive, exit status 0 (issue 16,
    twentieth round)."""
    data = member("a", b"x" * 700)
    for cut in (512 + 700, 512 + 1000, 512 + 1023):
        with pytest.raises(MalformedArchiveError, match="truncated padding") as info:
            read(data[:cut])
        assert info.value.entry == "a"
    assert [r.content for r in read(data[: 512 + 1024])] == [b"x" * 700]  # a whole block


@pytest.mark.parametrize("via", ["pipe", "tiny", "file"])
def test_a_digested_stream_may_end_in_its_last_padding(tmp_path: Path, via: str) -> None:
    """An image's layer, whose DiffID the parent checks, may end in the padding after
    its last entry's data, with no end-of-archive blocks, as Go's archive/tar reads it
    (umoci 0.4 writes such layers). The reader says after which entry, for a warning.
    It may still not end inside data, nor after an extended header."""
    data = member("a", b"first") + member("b", b"x" * 700)
    whole = len(data) - (-700 % 512)
    for cut in (whole, whole + 100, len(data) - 1):
        fd = open_input(data[:cut], via, tmp_path)
        try:
            entries, reader = read_fd(fd, end_in_padding=True)
            reader.drain()
        finally:
            os.close(fd)
        assert [(r.entry.name, r.content) for r in entries] == [
            ("a", b"first"), ("b", b"x" * 700)]
        assert reader.padding_cut == "b"
    with pytest.raises(MalformedArchiveError, match="truncated padding"):
        read(data[:whole], via, tmp_path)  # any other stream: an error, as before
    with pytest.raises(MalformedArchiveError, match="truncated data"):
        read(data[:whole - 1], via, tmp_path, end_in_padding=True)
    extended = pax([("path", "c")])[:-10]  # its records whole, its padding cut
    assert len(extended) > 512 + len(pax_record("path", "c"))
    with pytest.raises(MalformedArchiveError, match="padding after the extended header"):
        read(member("a", b"first") + extended, via, tmp_path, end_in_padding=True)
    label = header("vol", typeflag=b"V", size=5) + b"label"  # a volume label, cut after
    with pytest.raises(MalformedArchiveError, match="padding after the volume header"):
        read(member("a", b"first") + label, via, tmp_path, end_in_padding=True)
    whole_archive = data + EOA
    fd = feed_pipe(whole_archive)
    try:
        entries, reader = read_fd(fd, end_in_padding=True)
    finally:
        os.close(fd)
    assert len(entries) == 2 and reader.padding_cut is None


def test_lone_zero_block_followed_by_data_ends_the_archive() -> None:
    """GNU tar, bsdtar and tarfile stop at a lone zero block (Go refuses): so do we,
    and the reader says where, for a warning. What follows is drained, not read."""
    rest = member("b", b"hidden") + EOA
    fd = feed_pipe(member("a") + bytes(512) + rest)
    entries, reader = read_fd(fd)
    assert [r.entry.name for r in entries] == ["a"]
    assert reader.lone_zero_block == 512
    assert reader.drain() == len(rest) - 512  # the header after it was read to look
    os.close(fd)
    fd = feed_pipe(member("a") + EOA)
    assert read_fd(fd)[1].lone_zero_block is None
    os.close(fd)


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        (b"1600000000.5xyz", 1600000000_500000000),
        (b"-5abc", -5 * 10**9),
        (b"1600000000.", 1600000000 * 10**9),
        (b"1600000000.123456789123x", 1600000000_123456789),
        (b"1600000000 ", 1600000000 * 10**9),
    ],
)
def test_pax_time_with_trailing_characters(value: bytes, ns: int) -> None:
    """Read as GNU tar and bsdtar read it (tests/test_conformance.py runs both on these
    values), and counted for a warning."""
    fd = feed_pipe(pax([("mtime", value)]) + member("a", b"x") + EOA)
    entries, reader = read_fd(fd)
    os.close(fd)
    assert entries[0].entry.mtime_ns == ns
    assert reader.lenient_times == (0 if value == b"1600000000." else 1)


@pytest.mark.parametrize("value", [b"abc", b" 1600000000", b"+1", b".5", b"-", b"1" * 25 + b"x"])
def test_pax_time_without_a_leading_number_is_refused(value: bytes) -> None:
    """GNU tar refuses these (and bsdtar reads 0): no reading to follow."""
    fails(pax([("mtime", value)]) + member("a", b"x") + EOA, "invalid pax mtime")


@pytest.mark.parametrize(
    "value", [b"999xxx9324.432432444444", b"1e9", b"1600000000,5", b"1600000000.5.5", b"7 7"])
def test_pax_time_whose_digits_go_on_after_other_characters_is_refused(value: bytes) -> None:
    """GNU tar and bsdtar read the leading number (``1e9`` as 1 s): the writer's number
    goes on after the other characters, so that prefix is a wrong time. Refused, as Go
    refuses it (Go's corpus file pax-bad-mtime-file.tar)."""
    fails(pax([("mtime", value)]) + member("a", b"x") + EOA, "invalid pax mtime")


def test_entries_after_the_end_marker_are_ignored_but_drained() -> None:
    garbage = b"garbage!" * 300
    data = member("a", b"1") + EOA + member("hidden", b"2") + garbage
    fd = feed_pipe(data)
    entries, reader = read_fd(fd)
    assert [r.entry.name for r in entries] == ["a"]
    assert reader.drain() == len(member("hidden", b"2")) + len(garbage)
    assert reader.drain() == 0
    assert list(reader) == []
    os.close(fd)


def test_drain_after_an_error_reads_everything(tmp_path: Path) -> None:
    data = member("a", b"1") + header("b", checksum=b"0000000\x00") + bytes(100_000)
    for via in ("pipe", "file"):
        if via == "file":
            (tmp_path / "t").write_bytes(data)
            fd = os.open(tmp_path / "t", os.O_RDONLY)
        else:
            fd = feed_pipe(data)
        reader = TarReader(fd, bufsize=4096)
        with pytest.raises(MalformedArchiveError, match="checksum"):
            for _ in reader:
                pass
        assert reader.drain() == 100_000
        os.close(fd)


def test_not_a_tar_archive() -> None:
    err = fails(b"hello, world\n" * 100, "not a tar archive")
    assert err.entry is None
    fails(b"hello", "not a tar archive")  # shorter than a block


def test_truncated_header() -> None:
    err = fails(member("a", b"x") + header("b")[:300], "truncated header")
    assert err.entry == "header at offset 1024"


def test_truncated_data(tmp_path: Path) -> None:
    data = header("file.bin", size=10_000) + b"x" * 5000
    for via in ("pipe", "file", "tiny"):
        # Skipped by the reader, and consumed through data().
        err = fails(data, "unexpected end of archive: truncated data", via=via, tmp_path=tmp_path)
        assert err.entry == "file.bin"
    fd = feed_pipe(data)
    reader = TarReader(fd)
    with pytest.raises(MalformedArchiveError, match="truncated data"):
        for _ in reader:
            pass
    reader.drain()
    os.close(fd)


@pytest.mark.parametrize("via", ["pipe", "file"])
def test_huge_declared_size_fails_fast_with_bounded_memory(via: str, tmp_path: Path) -> None:
    data = header("big", size=base256(1 << 40, 12)) + b"x" * 1000
    tracemalloc.start()
    try:
        fails(data, "truncated data", via=via, tmp_path=tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_large_entries_are_skipped_by_seeking(tmp_path: Path) -> None:
    """On a regular file the reader seeks over large data; the result is the same."""
    big = bytes(range(256)) * 4096  # 1 MiB
    data = member("big1", big) + member("small", b"s") + member("big2", big * 3) + EOA
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    for bufsize in (4096, 1 << 20):
        fd = os.open(path, os.O_RDONLY)
        reader = TarReader(fd, bufsize=bufsize)
        got = []
        for entry in reader:
            if entry.name == "small":
                got.append(b"".join(bytes(c) for _, c in reader.data(entry)))
            got.append(entry.name.encode())
        assert got == [b"big1", b"s", b"small", b"big2"]
        assert reader.offset == len(data) and reader.drain() == 0
        os.close(fd)
    # Truncated in the middle of a skipped large entry: noticed despite lseek.
    path.write_bytes(data[: len(data) // 2])
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(MalformedArchiveError, match="truncated data"):
        list(TarReader(fd, bufsize=4096))
    os.close(fd)


def test_data_chunks_offsets_and_bounds() -> None:
    content = os.urandom(50_000)
    data = member("f", content) + member("g", b"tail") + EOA
    fd = feed_pipe(data)
    entries, _ = read_fd(fd, bufsize=4096)
    os.close(fd)
    f = entries[0]
    assert f.content == content
    assert max(length for _, length in f.chunks) <= 4096
    offsets = [offset for offset, _ in f.chunks]
    assert offsets == [sum(n for _, n in f.chunks[:i]) for i in range(len(f.chunks))]
    assert entries[1].content == b"tail"


def test_partial_data_then_next_entry() -> None:
    content = bytes(range(256)) * 100
    data = member("f", content) + member("g", b"next") + EOA
    fd = feed_pipe(data)
    reader = TarReader(fd, bufsize=1024)
    it = iter(reader)
    first = next(it)
    chunks = reader.data(first)
    offset, chunk = next(chunks)
    done = len(chunk)
    assert (offset, bytes(chunk)) == (0, content[:done])
    # A second data() call resumes where the first stopped.
    offset, chunk = next(reader.data(first))
    assert offset == done and bytes(chunk) == content[done : done + len(chunk)]
    second = next(it)
    assert second.name == "g"
    assert list(chunks) == []  # the stale iterator stops: the reader moved on
    with pytest.raises(InternalError):
        next(reader.data(first))
    assert b"".join(bytes(c) for _, c in reader.data(second)) == b"next"
    assert list(it) == []
    os.close(fd)


def test_kinds_modes_and_fields() -> None:
    data = (
        member("file", b"data", mode=0o104755)
        + member("dir/", typeflag=b"5", mode=0o41777)
        + member("sym", typeflag=b"2", linkname=b"target")
        + member("hard", typeflag=b"1", linkname=b"file")
        + member("chr", typeflag=b"3", devmajor=1, devminor=3)
        + member("blk", typeflag=b"4", devmajor=8, devminor=1)
        + member("fifo", typeflag=b"6")
        + member("cont", b"7", typeflag=b"7")
        + member("old", b"v7", typeflag=b"\x00", magic=b"")
        + EOA
    )
    got = {r.entry.name: r for r in read(data)}
    f = got["file"].entry
    assert (f.kind, f.mode, f.uid, f.gid, f.size, f.mtime_ns) == (
        REGULAR,
        0o4755,
        1000,
        1000,
        4,
        1_700_000_000 * 10**9,
    )
    assert got["file"].content == b"data" and f.linkname == "" and f.atime_ns is None
    assert (got["dir/"].entry.kind, got["dir/"].entry.mode) == (DIRECTORY, 0o1777)
    assert (got["sym"].entry.kind, got["sym"].entry.linkname) == (SYMLINK, "target")
    assert (got["hard"].entry.kind, got["hard"].entry.linkname) == (HARDLINK, "file")
    assert (got["chr"].entry.kind, got["chr"].entry.devmajor, got["chr"].entry.devminor) == (
        CHARDEV,
        1,
        3,
    )
    assert (got["blk"].entry.kind, got["blk"].entry.devmajor) == (BLOCKDEV, 8)
    assert got["fifo"].entry.kind == FIFO
    assert (got["cont"].entry.kind, got["cont"].content) == (REGULAR, b"7")
    assert (got["old"].entry.kind, got["old"].content) == (REGULAR, b"v7")


def test_links_devices_and_dirs_have_no_data_in_the_stream() -> None:
    """Whatever their size field says (hdr-only.tar; GNU tar extracting, Go, tarfile)."""
    data = b"".join(
        header(n, typeflag=t, size=700, linkname=b"x")
        for n, t in (("h", b"1"), ("s", b"2"), ("c", b"3"), ("b", b"4"), ("d", b"5"), ("p", b"6"))
    )
    got = read(data + member("last", b"end") + EOA)
    assert [r.entry.name for r in got] == ["h", "s", "c", "b", "d", "p", "last"]
    assert all(r.entry.size == 0 and r.content == b"" for r in got[:-1])
    assert got[-1].content == b"end"


def test_trailing_slash_on_a_regular_type_means_directory() -> None:
    """GNU tar: '0', '\\0' and '7' with a trailing slash are directories, no data."""
    for flag in (b"0", b"\x00", b"7"):
        got = read(header("d/", typeflag=flag, size=600) + member("f", b"x") + EOA)
        assert [(r.entry.name, r.entry.kind) for r in got] == [("d/", DIRECTORY), ("f", REGULAR)]


def test_unknown_type_is_a_regular_file() -> None:
    got = read(member("weird", b"payload", typeflag=b"Z") + EOA)
    e = got[0].entry
    assert (e.kind, e.unknown_type, got[0].content) == (REGULAR, "Z", b"payload")


def test_volume_label_skipped_and_multivolume_refused() -> None:
    data = member("label", b"vol", typeflag=b"V", magic=b"ustar  \x00") + member("a") + EOA
    assert names(data) == ["a"]
    fails(member("part", b"x", typeflag=b"M") + EOA, "multi-volume", "part")


def test_base256_numbers() -> None:
    data = (
        header(
            "b256",
            size=base256(5, 12),
            uid=base256(3_000_000, 8),
            gid=base256(70000, 8),
            mtime=base256(-86400, 12),
            mode=base256(0o755, 8),
        )
        + pad(b"12345")
        + EOA
    )
    e = read(data)[0].entry
    assert (e.size, e.uid, e.gid, e.mtime_ns, e.mode) == (
        5,
        3_000_000,
        70000,
        -86400 * 10**9,
        0o755,
    )
    fails(header("neg", size=base256(-1, 12)) + EOA, "negative size", "neg")
    fails(header("big", uid=base256(1 << 40, 8)) + EOA, "out of range", "big")
    fails(header("bad", size=b"\x81" + bytes(11)) + EOA, "size")


def test_octal_number_variants() -> None:
    """Leading blanks, space/NUL terminators, all-NUL fields (GNU tar's from_header)."""
    data = (
        header(
            "n",
            size=b"   3 \x00\x00\x00\x00\x00\x00\x00",
            uid=bytes(8),
            gid=b"12\x00junk\x00",
            mode=b"00644   ",
        )
        + pad(b"abc")
        + EOA
    )
    e = read(data)[0].entry
    assert (e.size, e.uid, e.gid, e.mode) == (3, 0, 0o12, 0o644)
    fails(header("s", size=b"12x4" + bytes(8)) + EOA, "invalid size field", "s")
    fails(header("s", size=b"9" + bytes(11)) + EOA, "invalid size field")
    fails(header("s", size=b"-1" + bytes(10)) + EOA, "invalid size field")
    fails(header("u", uid=b"        ") + EOA, "invalid uid field")


def test_checksums() -> None:
    name = "caf\xe9".encode("latin-1")  # a byte >= 0x80 makes signed and unsigned differ
    assert names(member(name, b"x", signed_checksum=True) + EOA) == ["caf\udce9"]
    bad = header("b", checksum=b"000000\x00 ")
    fails(member("a") + bad + EOA, "invalid header checksum")
    err = fails(bad + EOA, "not a tar archive")
    assert err.entry is None


def test_byte_sum_is_the_exact_sum() -> None:
    """One adler32 call for an ASCII block, two halves for any other: exact either way,
    up to the largest sums (0x7f * 512 lies just below adler32's modulus, 65521)."""
    rng = random.Random(16)
    blocks = [bytes(512), b"\x7f" * 512, b"\xff" * 512, b"\x80" + b"\x7f" * 511,
              b"\x7f" * 511 + b"\x80", bytes(rng.randrange(128) for _ in range(512)),
              *(bytes(rng.randrange(256) for _ in range(512)) for _ in range(50))]
    for block in blocks:
        assert fmt.byte_sum(block) == sum(block)
        assert fmt.byte_sum(bytearray(block)) == sum(block)


@pytest.mark.parametrize("high", [False, True], ids=["ascii", "high-bytes"])
@pytest.mark.parametrize("forged", ["entry", "entry-after-pax", "pax"])
def test_a_checksum_right_only_modulo_adler32s_modulus_is_refused(
        high: bool, forged: str) -> None:
    """The header loop sums a block with adler32, which counts modulo 65521: a recorded
    checksum 65521 off the true sum (which GNU tar refuses) must be refused too, in an
    entry's header and in a PAX header."""
    name = b"\xff" * 100 if high else b"n" * 100
    prefix = b"\xfe" * 155 if high else b"p" * 155

    def forge(block: bytearray, by: int) -> bytes:
        true_sum = int(block[148:154], 8)
        assert (true_sum >= 65521) == high  # both sides of the modulus are covered
        block[148:156] = b"%06o\x00 " % (true_sum + by)
        return bytes(block)

    records = pax_record("mtime", "1.5")
    for by, ok in ((0, True), (-65521 if high else 65521, False)):
        if forged == "pax":
            extended = forge(bytearray(header(name, prefix=prefix, typeflag=b"x",
                                              size=len(records))), by) + pad(records)
            data = extended + member("f", b"x")
        else:
            first = pax([("mtime", "1.5")]) if forged == "entry-after-pax" else b""
            data = first + forge(bytearray(header(name, prefix=prefix, uid=0, gid=0)), by)
        archive = member("good", b"x") + data + EOA
        if ok:  # its true sum: read, by the same path
            assert len(names(archive)) == 2
        else:
            fails(archive, "checksum")


def test_ustar_prefix() -> None:
    long_name = "d" * 90 + "/" + "e" * 60 + "/file.txt"
    data = tarfile_bytes(tarfile.USTAR_FORMAT, [(info(long_name), b"x")])
    assert data[345:350] == b"ddddd"  # really in the prefix field
    assert names(data) == [long_name]
    raw = member("name", prefix=b"pre/fix") + EOA
    assert names(raw) == ["pre/fix/name"]
    # GNU headers have no prefix field (atime/ctime are there).
    gnu = member("name", magic=b"ustar  \x00", prefix=b"12574544345") + EOA
    assert names(gnu) == ["name"]


@pytest.mark.parametrize("length", [150, 5000])
@pytest.mark.parametrize("format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names(length: int, format: int) -> None:
    name = "/".join(["sub" * 10] * (length // 31 + 1))[:length].rstrip("/") + "é"
    target = "t" * length
    data = tarfile_bytes(
        format,
        [
            (info(name), b"content"),
            (info(name + "-link", type=tarfile.SYMTYPE, linkname=target), b""),
            (info(name + "-hard", type=tarfile.LNKTYPE, linkname=name), b""),
        ],
    )
    got = read(data, via="tiny")
    assert [r.entry.name for r in got] == [name, name + "-link", name + "-hard"]
    assert got[0].content == b"content"
    assert (got[1].entry.linkname, got[2].entry.linkname) == (target, name)


def test_gnu_long_name_limits_and_nul() -> None:
    long = member("././@LongLink", b"x" * 70_000, typeflag=b"L") + member("short") + EOA
    fails(long, "long name too long")
    assert names(long, max_long_name=1 << 17) == ["x" * 70_000]
    nul = member("././@LongLink", b"real\x00junk", typeflag=b"L") + member("short") + EOA
    assert names(nul) == ["real"]
    fails(header("././@LongLink", typeflag=b"L", size=2000) + b"x" * 100, "truncated long name")


def test_precedence_of_names() -> None:
    """Header < GNU 'L' < PAX path (GNU tar), the last of each kind winning."""
    data = (
        pax([("path", "from-pax")])
        + member("././@LongLink", b"from-L", typeflag=b"L")
        + member("from-header")
        + member("././@LongLink", b"first-L", typeflag=b"L")
        + member("././@LongLink", b"second-L", typeflag=b"L")
        + member("from-header")
        + pax([("path", "first-x"), ("uid", "7")])
        + pax([("linkpath", "second-x")])
        + member("from-header", typeflag=b"2")
        + EOA
    )
    got = [r.entry for r in read(data)]
    assert [e.name for e in got] == ["from-pax", "second-L", "from-header"]
    assert (got[2].linkname, got[2].uid) == ("second-x", 1000)


def test_pax_records() -> None:
    data = (
        pax(
            [
                ("path", "pax/é-name"),
                ("size", "000005"),
                ("uid", "4000000000"),
                ("gid", "0"),
                ("mtime", "1350244992.02396"),
                ("atime", "-1.5"),
                ("ctime", "1"),
                ("uname", "someone"),
                ("comment", "ignored"),
                ("SCHILY.xattr.user.key", b"v\x00al=ue\n"),
                ("SCHILY.xattr.user.empty", ""),
                ("LIBARCHIVE.xattr.user.b64", "aGVsbG8"),
                ("LIBARCHIVE.xattr.user.key", "b3RoZXI="),
                ("LIBARCHIVE.xattr.user%3Dodd", "eA=="),
            ]
        )
        + member("ignored", b"12345")
        + EOA
    )
    r = read(data)[0]
    e = r.entry
    assert (e.name, e.size, e.uid, e.gid, r.content) == (
        "pax/é-name",
        5,
        4_000_000_000,
        0,
        b"12345",
    )
    assert e.mtime_ns == 1350244992_023960000
    assert e.atime_ns == -1_500_000_000
    assert e.xattrs == {
        "user.key": b"v\x00al=ue\n",
        "user.empty": b"",
        "user.b64": b"hello",
        "user=odd": b"x",
    }


def test_pax_empty_value_keeps_the_header_value() -> None:
    data = pax([("path", ""), ("mtime", ""), ("size", "")]) + member("hdr", b"abc") + EOA
    r = read(data)[0]
    assert (r.entry.name, r.entry.mtime_ns, r.content) == ("hdr", 1_700_000_000 * 10**9, b"abc")


def test_pax_non_utf8_values_round_trip() -> None:
    data = pax([("path", b"bin\xff\xfe"), ("linkpath", b"\xc3(")]) + member("x", typeflag=b"2")
    e = read(data + EOA)[0].entry
    assert os.fsencode(e.name) == b"bin\xff\xfe"
    assert os.fsencode(e.linkname) == b"\xc3("


@pytest.mark.parametrize(
    ("records", "words"),
    [
        (b"9 path=ab\n", ("missing newline",)),
        (b"13 path=abc\n", ("length out of range",)),
        (b"12 path=abc\n" + b"x", ("bad length",)),
        (b"11 pathabc\n", ("missing '='",)),
        (b"12 path=abcd", ("missing newline",)),
        (b"x2 path=abc\n", ("bad length",)),
        (b"+12 path=ab\n", ("bad length",)),
        (b"12path=abcd\n", ("bad length",)),
        (b"6 =ab\n", ("empty keyword",)),
        (pax_record("path", b"a\x00b"), ("nul", "path")),
        (pax_record("linkpath", b"a\x00b"), ("nul", "linkpath")),
        (pax_record("uname", b"a\x00b"), ("nul", "uname")),
        (pax_record(b"SCHILY.xattr.a\x00b", b"v"), ("nul",)),
        (pax_record("SCHILY.xattr.", b"v"), ("xattr",)),
        (pax_record("mtime", "x12"), ("mtime",)),  # "12x": 12 s, as GNU tar and bsdtar
        (pax_record("mtime", "e3"), ("mtime",)),
        (pax_record("mtime", "--1"), ("mtime",)),
        (pax_record("atime", "."), ("atime",)),
        (pax_record("ctime", "yesterday"), ("ctime",)),
        (pax_record("size", "-1"), ("size",)),
        (pax_record("size", "1_000"), ("size",)),
        (pax_record("size", " 12"), ("size",)),
        (pax_record("size", "99999999999999999999999"), ("size",)),
        (pax_record("uid", "4294967296"), ("uid",)),
        (pax_record("LIBARCHIVE.xattr.user.k", "!!!"), ("base64",)),
    ],
)
def test_pax_malformed(records: bytes, words: tuple[str, ...]) -> None:
    fails(pax(records) + member("f", b"x") + EOA, *words)
    # Global headers are validated as strictly.
    fails(pax(records, typeflag=b"g") + member("f", b"x") + EOA, *words)


def test_pax_global_headers_are_ignored() -> None:
    data = pax([("path", "global"), ("mtime", "5"), ("uid", "9")], typeflag=b"g")
    fd = feed_pipe(
        data + member("f", b"x") + pax([("path", "")], typeflag=b"g") + member("g") + EOA
    )
    entries, reader = read_fd(fd)
    os.close(fd)
    assert [(r.entry.name, r.entry.uid, r.entry.mtime_ns) for r in entries] == [
        ("f", 1000, 1_700_000_000 * 10**9),
        ("g", 1000, 1_700_000_000 * 10**9),
    ]
    assert reader.global_headers == 2



@pytest.mark.parametrize("kind", [b"g", b"x", b"L", b"V"])
def test_a_chain_of_extended_headers_is_bounded(kind: bytes) -> None:
    """Extended headers yield no entry: a stream of them (256 MiB of global headers in
    22 KB of zstd) was read to its end, uncounted, minutes per megabyte. At most
    MAX_HEADERS come before one entry; beyond FREE_HEADERS they are counted."""
    from chrootarchive.tarformat.reader import FREE_HEADERS, MAX_HEADERS

    one = (member("././@LongLink", b"n" * 20 + b"\0", typeflag=b"L") if kind == b"L"
           else header("vol", typeflag=b"V") if kind == b"V"
           else pax([("comment", "x")], typeflag=kind))
    fd = feed_pipe(one * MAX_HEADERS + member("f", b"x") + one * 5 + member("g") + EOA)
    entries, reader = read_fd(fd)
    os.close(fd)
    assert len(entries) == 2
    assert reader.extra_headers == MAX_HEADERS - FREE_HEADERS + 5 - FREE_HEADERS
    err = fails(member("a") + one * (MAX_HEADERS + 1) + member("f") + EOA,
                f"more than {MAX_HEADERS} extended headers before one entry")
    assert err.entry == f"header at offset {512 * (1 + (MAX_HEADERS + 1) * len(one) // 512)}"


def test_volume_header_data_is_bounded() -> None:
    """A volume header's data (a label: none, as GNU tar writes it) is read for
    nothing: no more than a long name's."""
    fails(header("vol", typeflag=b"V", size=(1 << 16) + 1) + EOA, "volume header too large")
    assert names(header("vol", typeflag=b"V", size=10) + pad(b"0123456789")
                 + member("f") + EOA) == ["f"]

def test_pax_size_limit() -> None:
    fails(header("PaxHeaders/x", typeflag=b"x", size=(1 << 20) + 1), "pax header too large")
    records = pax_record("comment", "c" * 5000)
    assert names(pax(records) + member("f") + EOA) == ["f"]
    fails(pax(records) + member("f") + EOA, "too large", max_pax_size=1000)
    fails(header("PaxHeaders/x", typeflag=b"x", size=100) + b"12 ", "truncated extended header")


def test_pax_header_then_end_of_input() -> None:
    """As Go: an 'x' header and the end of the input is an empty archive; a partial
    header after it is not."""
    data = pax([("path", "p")])
    assert read(data) == [] and read(data + EOA) == []
    fails(data + b"g", "truncated header")


def test_device_numbers() -> None:
    fails(
        header("c", typeflag=b"3", devmajor=base256(1 << 32, 8)) + EOA, "device number out of range"
    )
    fails(header("c", typeflag=b"4", devminor=b"zz\x00\x00\x00\x00\x00\x00") + EOA, "device")
    # Only device nodes have device numbers (GNU tar): garbage elsewhere is ignored.
    assert names(member("f", devmajor=b"zz\x00\x00\x00\x00\x00\x00") + EOA) == ["f"]
    big = member("c", typeflag=b"3", devmajor=base256(4095, 8), devminor=base256((1 << 20) - 1, 8))
    e = read(big + EOA)[0].entry
    assert (e.devmajor, e.devminor) == (4095, (1 << 20) - 1)
    # Linux's dev_t has 12 bits of major and 20 of minor: more is refused, not truncated.
    fails(header("c", typeflag=b"3", devmajor=base256(4096, 8)) + EOA, "out of range")
    fails(header("c", typeflag=b"3", devminor=base256(1 << 20, 8)) + EOA, "out of range")


# -- sparse files ---------------------------------------------------------------------


def old_gnu_sparse(
    name: str,
    regions: list[tuple[int, int]],
    realsize: int,
    data: bytes,
    *,
    empty_slot_then_extension: bool = False,
) -> bytes:
    """An old GNU 'S' header, with extension blocks for regions beyond the first 4."""

    def slot(offset: int, length: int) -> bytes:
        return octal(offset, 12) + octal(length, 12)

    first, rest = regions[:4], regions[4:]
    extra = {386 + 24 * i: slot(*r) for i, r in enumerate(first)}
    extra[483] = octal(realsize, 12)
    if rest or empty_slot_then_extension:
        extra[482] = b"\x01"
    out = header(name, typeflag=b"S", size=len(data), magic=b"ustar  \x00", extra=extra)
    while rest:
        block = bytearray(512)
        for i, r in enumerate(rest[:21]):
            block[24 * i : 24 * i + 24] = slot(*r)
        rest = rest[21:]
        block[504] = 1 if rest else 0
        out += bytes(block)
    if empty_slot_then_extension and not regions[4:]:
        out += bytes(512)
    return out + pad(data)


def sparse_content(r: Read) -> bytes:
    out = bytearray(r.entry.size)
    for offset, piece in logical(r).items():
        out[offset : offset + len(piece)] = piece
    return bytes(out)


def test_old_gnu_sparse_with_extension_blocks() -> None:
    regions = [(i * 100, 10) for i in range(30)]
    data = bytes(range(256))[:10] * 30
    got = read(old_gnu_sparse("sp", regions, 3000, data) + member("after", b"a") + EOA, via="tiny")
    e = got[0].entry
    assert (e.kind, e.size, e.stored_size, e.sparse) == (REGULAR, 3000, 300, regions)
    want = bytearray(3000)
    for i in range(30):
        want[i * 100 : i * 100 + 10] = data[:10]
    assert sparse_content(got[0]) == bytes(want)
    assert list(logical(got[0])) == [i * 100 for i in range(30)]
    assert got[1].content == b"a"


@pytest.mark.parametrize(
    ("regions", "realsize", "stored", "words"),
    [
        ([(10, 5), (0, 5)], 100, 10, ("overlap or are out of order",)),
        ([(0, 10), (5, 5)], 100, 15, ("overlap",)),
        ([(0, 10), (95, 10)], 100, 20, ("beyond the end",)),
        ([(0, 10)], 100, 11, ("describes 10 bytes but 11",)),
    ],
)
def test_sparse_map_checks(
    regions: list[tuple[int, int]], realsize: int, stored: int, words: tuple[str, ...]
) -> None:
    fails(old_gnu_sparse("s", regions, realsize, b"x" * stored) + EOA, *words)
    records: list[tuple[str, bytes | str]] = [
        ("GNU.sparse.major", "0"),
        ("GNU.sparse.minor", "1"),
        ("GNU.sparse.name", "s"),
        ("GNU.sparse.realsize", str(realsize)),
        ("GNU.sparse.numblocks", str(len(regions))),
        ("GNU.sparse.map", ",".join(f"{o},{n}" for o, n in regions)),
    ]
    fails(pax(records) + member("GNUSparseFile.0/s", b"x" * stored) + EOA, *words)


def test_old_gnu_sparse_ambiguous_or_malformed() -> None:
    fails(
        old_gnu_sparse("s", [(0, 1)], 10, b"x", empty_slot_then_extension=True) + EOA,
        "extension after an empty slot",
    )
    skipped = bytearray(old_gnu_sparse("s", [(0, 1), (4, 1), (8, 1)], 10, b"xyz"))
    skipped[386 + 24 : 386 + 48] = bytes(24)  # slot 2 emptied: slot 3 follows a gap
    skipped[148:156] = b" " * 8
    skipped[148:156] = b"%06o\x00 " % sum(skipped[:512])
    fails(bytes(skipped) + EOA, "used slot after an empty one")
    bad = old_gnu_sparse("s", [(0, 1)], 10, b"x")
    fails(header("s", typeflag=b"S", size=1) + pad(b"x") + EOA, "non-gnu")
    broken = bytearray(bad[:512])
    broken[386 + 12] = 0  # offset present, length missing
    broken[148:156] = b" " * 8
    broken[148:156] = b"%06o\x00 " % sum(broken)
    fails(bytes(broken) + bad[512:] + EOA, "malformed sparse map entry")
    many = [(i * 2, 1) for i in range(100)]
    fails(old_gnu_sparse("s", many, 200, b"x" * 100) + EOA, "too many", max_sparse_regions=50)
    fails(old_gnu_sparse("s", many, 200, b"x" * 100)[:1024], "truncated sparse map")


def pax_sparse_1_0(regions: list[tuple[int, int]], realsize: int, data: bytes) -> bytes:
    text = f"{len(regions)}\n" + "".join(f"{o}\n{n}\n" for o, n in regions)
    stored = pad(text.encode()) + data
    records: list[tuple[str, bytes | str]] = [
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "real/name"),
        ("GNU.sparse.realsize", str(realsize)),
    ]
    return pax(records) + member("GNUSparseFile.1/name", stored)


def test_pax_sparse_1_0_map_over_several_blocks() -> None:
    regions = [(i * 1000, 3) for i in range(200)]  # a map of about 1.7 KB
    data = b"abc" * 200
    got = read(pax_sparse_1_0(regions, 200_000, data) + member("z", b"z") + EOA, via="tiny")
    e = got[0].entry
    assert (e.name, e.size, e.stored_size, e.sparse) == ("real/name", 200_000, 600, regions)
    assert got[0].content == data and got[1].content == b"z"


def test_pax_sparse_0_0_and_0_1() -> None:
    regions = [(5, 2), (100, 3)]
    pairs: list[tuple[str, bytes | str]] = []
    for o, n in regions:
        pairs += [("GNU.sparse.offset", str(o)), ("GNU.sparse.numbytes", str(n))]
    v00 = pax([("GNU.sparse.size", "200"), ("GNU.sparse.numblocks", "2"), *pairs])
    v01 = pax(
        [
            ("GNU.sparse.size", "200"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.name", "n01"),
            ("GNU.sparse.map", "5,2,100,3"),
        ]
    )
    data = v00 + member("n00", b"xxyyy") + v01 + member("GNUSparseFile/n01", b"xxyyy") + EOA
    got = read(data)
    assert [(r.entry.name, r.entry.size, r.entry.sparse) for r in got] == [
        ("n00", 200, regions),
        ("n01", 200, regions),
    ]
    assert logical(got[0]) == {5: b"xx", 100: b"yyy"}


@pytest.mark.parametrize(
    ("records", "words"),
    [
        ([("GNU.sparse.size", "10")], ("without a sparse map",)),
        ([("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")], ("version",)),
        ([("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,1")], ("size",)),
        (
            [("GNU.sparse.size", "10"), ("GNU.sparse.numblocks", "2"), ("GNU.sparse.map", "0,1")],
            ("numblocks",),
        ),
        (
            [("GNU.sparse.size", "10"), ("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,x")],
            ("malformed",),
        ),
        (
            [
                ("GNU.sparse.size", "10"),
                ("GNU.sparse.numblocks", "1"),
                ("GNU.sparse.numbytes", "1"),
            ],
            ("0.0",),
        ),
        (
            [
                ("GNU.sparse.major", "1"),
                ("GNU.sparse.minor", "0"),
                ("GNU.sparse.realsize", "10"),
                ("GNU.sparse.map", "0,1"),
            ],
            ("conflicting",),
        ),
        (
            [("GNU.sparse.size", "10"), ("GNU.sparse.numblocks", "2000000")],
            ("numblocks",),
        ),
    ],
)
def test_pax_sparse_malformed(
    records: list[tuple[str, bytes | str]], words: tuple[str, ...]
) -> None:
    fails(pax(records) + member("f", b"x") + EOA, *words)


def test_pax_sparse_1_0_malformed() -> None:
    fails(pax_sparse_1_0([(0, 1)], 10, b"x")[:-512], "truncated data")
    bad_map = pax(
        [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", "10")]
    )
    fails(bad_map + member("f", pad(b"1\nzero\n1\n") + b"x") + EOA, "malformed gnu sparse map")
    fails(bad_map + member("f", pad(b"3000000\n")) + EOA, "too many")
    fails(bad_map + member("f", b"1\n0\n1\n") + EOA, "truncated gnu sparse map")
    fails(bad_map + member("f", b"7" * 600) + EOA, "malformed gnu sparse map")
    fails(bad_map + header("f", typeflag=b"2", size=0) + EOA, "not a regular file")


# -- Go's TestReadTruncation vectors ---------------------------------------------------


def go_truncation_vectors() -> Iterator[tuple[str, bytes, int, bool]]:
    """(label, input, entries before the end, error expected): Go's reader_test.go."""
    data1 = corpus("gnu.tar")
    data2 = corpus("ustar-file-reg.tar") + bytes(10 * 512)
    pax_hdr = corpus("pax-path-hdr.tar")
    sparse = corpus("sparse-formats.tar")
    trash = b"garbage " * 64
    cases = [
        (b"", 0, False),
        (data1[:511], 0, True),
        (data1[:512], 1, True),
        (data1[:1024], 1, False),
        (data1[:1536], 2, True),
        (data1[:2048], 2, False),
        (data1, 2, False),
        (data1[:2048] + data2[:1536], 3, False),
        (data2[:511], 0, True),
        (data2[:512], 1, True),
        (data2[:1195], 1, True),
        # Cut inside the padding after the data: Go reads it as the end; GNU tar,
        # bsdtar and tarfile say "unexpected EOF", and so do we (issue 16, twentieth
        # round: a download cut short looked like a whole archive).
        (data2[:1196], 1, True),
        (data2[:1200], 1, True),
        (data2[:1535], 1, True),
        (data2[:1536], 1, False),
        (data2[:1536] + trash[:1], 1, True),
        (data2[:1536] + trash[:511], 1, True),
        (data2[:1536] + trash, 1, True),
        (data2[:2048], 1, False),
        (data2[:2048] + trash[:1], 1, True),
        (data2[:2048] + trash[:511], 1, True),
        # A lone zero block, then a whole block of data: Go errs; GNU tar, bsdtar and
        # we stop there (the reader notes it for a warning).
        (data2[:2048] + trash, 1, False),
        (data2[:2560], 1, False),
        (data2[:2560] + trash[:1], 1, False),
        (data2[:2560] + trash[:511], 1, False),
        (data2[:2560] + trash, 1, False),
        (data2[:3072], 1, False),
        (pax_hdr, 0, False),
        (pax_hdr + trash[:1], 0, True),
        (pax_hdr + trash[:511], 0, True),
        (sparse[:511], 0, True),
        (sparse[:512], 0, True),
        (sparse[:3584], 1, False),
        (sparse[:9200], 1, True),  # inside the padding: as above
        (sparse[:9216], 1, False),
        (sparse[:9728], 2, True),
        (sparse[:10240], 2, False),
        (sparse[:11264], 2, True),
        (sparse, 5, False),
        (sparse + trash, 5, False),
    ]
    for i, (data, count, error) in enumerate(cases):
        yield f"vector {i}", data, count, error


def test_go_truncation_vectors(tmp_path: Path) -> None:
    for label, data, count, error in go_truncation_vectors():
        for via, consume in (("pipe", False), ("file", True), ("pipe", True)):
            path = tmp_path / "t.tar"
            path.write_bytes(data)
            fd = os.open(path, os.O_RDONLY) if via == "file" else feed_pipe(data)
            reader = TarReader(fd, bufsize=1024)
            seen = 0
            try:
                for entry in reader:
                    seen += 1
                    if consume:
                        for _ in reader.data(entry):
                            pass
            except MalformedArchiveError:
                raised = True
            else:
                raised = False
            reader.drain()
            os.close(fd)
            assert (seen, raised) == (count, error), (label, via, consume)


def test_mutated_corpus_raises_only_malformed_archive_error(tmp_path: Path) -> None:
    """Random corruption (checksums fixed up, so that it reaches the parsers) ends in
    entries or in MalformedArchiveError, never in another exception."""
    seeds = [corpus(name) for name in WELL_FORMED if "big" not in name]
    rng = random.Random(1234)
    tokens = [b"\x80", b"\xff", b"0", b"7", b" ", b"\x00", b"9", b"S", b"x", b"L", b"\n", b"="]
    path = tmp_path / "fuzz.tar"
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.6:
                data[i] = rng.randrange(256)
            elif choice < 0.8:
                del data[i : i + rng.randint(1, 600)]
            else:
                data[i : i + 1] = rng.choice(tokens)
        for off in range(0, len(data) - 511, 512):
            if data[off + 257 : off + 262] == b"ustar":
                data[off + 148 : off + 156] = b" " * 8
                data[off + 148 : off + 156] = b"%06o\x00 " % sum(data[off : off + 512])
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            reader = TarReader(fd, bufsize=rng.choice([512, 4096, 1 << 20]))
            for entry in reader:
                for offset, chunk in reader.data(entry):
                    assert offset >= 0 and 0 < len(chunk)
                    assert entry.sparse is None or offset + len(chunk) <= entry.size
        except MalformedArchiveError:
            pass
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------
# The PAX fast path: a PAX header and the header after it, read in the hot loop when
# both are in the buffer, give what the general path gives (a one-block buffer never
# holds both, so it always takes the general path)
# ---------------------------------------------------------------------------------

_FAST_PAX_CASES = {
    "times": pax([("mtime", "1796405849.080967965"), ("atime", "1796405531.86"),
                  ("ctime", "1796405849.080967965")]) + member("f", b"data"),
    "odd times": pax([("mtime", "123."), ("atime", "-1.5"), ("ctime", "0012.5")])
    + member("f", b"x"),
    "long times": pax([("mtime", "99999999999999999999"), ("atime", "1.0000000001")])
    + member("f"),
    "lenient time": pax([("mtime", "12x")]) + member("f"),
    "path size ids": pax([("path", "p/é"), ("size", "3"), ("uid", "4000000000"), ("gid", "7")])
    + member("ignored", b"abc"),
    "symlink": pax([("linkpath", "target/é"), ("atime", "5")])
    + header("l", typeflag=b"2", linkname=b"short"),
    "hardlink": pax([("atime", "5")]) + header("h", typeflag=b"1", linkname=b"f"),
    "directory": pax([("mtime", "7.5")]) + header("d/", typeflag=b"5"),
    "slash file": pax([("mtime", "7")]) + member("old-dir/"),
    "device": pax([("atime", "1")]) + header("c", typeflag=b"3", devmajor=4, devminor=5),
    "fifo": pax([("atime", "1")]) + header("p", typeflag=b"6"),
    "xattrs": pax([("SCHILY.xattr.user.k", b"v\x00\n"), ("LIBARCHIVE.xattr.user.b", "aGk=")])
    + member("f", b"1"),
    "then long name": pax([("atime", "2")]) + member("././@LongLink", b"long/" * 30 + b"\x00",
                                                     typeflag=b"L") + member("short", b"z"),
    "two pax": pax([("path", "first"), ("atime", "1")]) + pax([("mtime", "3")]) + member("f"),
    "then global": pax([("path", "local")]) + pax([("path", "g")], typeflag=b"g")
    + member("f"),
    "sparse": pax([("GNU.sparse.size", "200"), ("GNU.sparse.numblocks", "1"),
                   ("GNU.sparse.offset", "5"), ("GNU.sparse.numbytes", "2")])
    + member("s", b"xy"),
    "base256 uid": pax([("atime", "1")]) + member("f", uid=base256(5, 8)),
    "signed checksum": pax([("atime", "1")]) + member("f\xe9", signed_checksum=True),
    "then end": pax([("atime", "1")]),
    "bad record": pax(b"12 path=abcd") + member("f"),
    "bad time": pax([("mtime", "e3")]) + member("f"),
    "bad checksum after": pax([("atime", "1")]) + header("f", checksum=b"000000\x00 "),
    "truncated after": pax([("atime", "1")]) + header("f", size=2000)[:512],
    # What the times-only reader (_times_only) must take, or leave to the general rules:
    "times repeated": pax([("mtime", "5.5"), ("atime", "6"), ("mtime", "7.25")]) + member("f"),
    "times zero-padded length": pax(b"030 mtime=1796405849.08096796\n") + member("f"),
    "times length of 21 characters": pax(b"0" * 19 + b"49 mtime=1796405849.080967965\n")
    + member("f"),
    "times length of 5000 characters": pax(b"0" * 4996 + b"5009 mtime=1\n") + member("f"),
    "times length one short": pax(b"29 mtime=1796405849.080967965\n") + member("f"),
    "times length one long": pax(b"31 mtime=1796405849.080967965\n") + member("f"),
    "times no last newline": pax(b"30 mtime=1796405849.080967965\n10 atime=1") + member("f"),
    "times last unterminated": pax(b"30 mtime=1796405849.080967965\n11 atime=1") + member("f"),
    "times value with '='": pax(b"14 mtime=1=23\n") + member("f"),
    "times value with newline": pax(b"14 mtime=1\n23\n") + member("f"),
    "times only ctime": pax([("ctime", "9.5")]) + member("f"),
    "times empty value": pax([("mtime", "4"), ("mtime", "")]) + member("f"),
    "times plus sign": pax([("mtime", "+4")]) + member("f"),
    "times blank in length": pax(b" 13 mtime=4\n") + member("f"),
    "times then symlink": pax([("mtime", "8.5"), ("atime", "9")])
    + header("l", typeflag=b"2", linkname=b"t"),
    "times then long link": pax([("mtime", "8")]) + member("././@LongLink", b"t/" * 60 + b"\x00",
                                                      typeflag=b"K")
    + header("l", typeflag=b"2", linkname=b"short"),
    "times then pax": pax([("mtime", "8")]) + pax([("path", "other")]) + member("f"),
}


def _fast_and_general(data: bytes, tmp_path: Path) -> object:
    """The entries (or the error) of an archive read with a large buffer (the fast
    paths) and with a one-block buffer (always the general path), which must agree."""

    def outcome(bufsize: int) -> object:
        try:
            return [(r.entry, r.content, r.chunks)
                    for r in read(data, "file", tmp_path, bufsize=bufsize)]
        except MalformedArchiveError as err:
            return ("error", str(err))

    fast, general = outcome(1 << 20), outcome(512)
    assert fast == general
    return fast


@pytest.mark.parametrize("case", sorted(_FAST_PAX_CASES))
def test_pax_fast_path_reads_as_the_general_path(case: str, tmp_path: Path) -> None:
    # Not first: the first header of an archive always takes the general path.
    data = member("first", b"1") + _FAST_PAX_CASES[case]
    data = data + member("after", b"tail") + EOA if "after" not in case else data + EOA
    fast = _fast_and_general(data, tmp_path)
    if case == "times":
        assert isinstance(fast, list)
        entry = fast[1][0]
        assert (entry.mtime_ns, entry.atime_ns) == (1796405849_080967965, 1796405531_860000000)


# Times-only blocks in one archive, one after another (same keys, lengths and digit
# counts, or not; a reader once remembered their layouts): each as the general path.
_T = "1796405849"
_LAYOUT_CASES: dict[str, list[bytes]] = {
    "same layout, other digits": [
        b"30 mtime=%s.080967965\n30 atime=%s.860000000\n30 ctime=%s.080967965\n" % (
            _T.encode(), _T.encode(), _T.encode()),
        b"30 mtime=1234567890.123456789\n30 atime=0000000001.000000009\n"
        b"30 ctime=9999999999.999999999\n"],
    "short fraction": [b"24 mtime=1796405849.86\n", b"24 mtime=1796405849.05\n",
                       b"24 mtime=0000000000.00\n"],
    "long fraction": [b"33 mtime=1796405849.123456789123\n",
                      b"33 mtime=1796405849.987654321987\n"],
    "no fraction": [b"21 mtime=1796405849\n17 atime=123456\n",
                    b"21 mtime=1111111111\n17 atime=654321\n"],
    "repeated": [b"12 mtime=5.5\n10 atime=6\n13 mtime=7.25\n",
                 b"12 mtime=1.1\n10 atime=2\n13 mtime=3.33\n"],
    "length then one long": [b"30 mtime=1796405849.080967965\n",
                             b"31 mtime=1796405849.080967965\n"],
    "length then one short": [b"30 mtime=1796405849.080967965\n",
                              b"29 mtime=1796405849.080967965\n"],
    "length with a zero": [b"30 mtime=1796405849.080967965\n",
                           b"030 mtime=1796405849.08096796\n",
                           b"030 mtime=1796405849.18096796\n"],
    "then a lenient time": [b"14 mtime=12.5\n", b"14 mtime=12x5\n"],
    "then another key": [b"14 atime=12.5\n", b"14 ctime=12.5\n", b"14 mtime=12.5\n"],
    "many layouts": [pax_record("mtime", "1" * n + "." + "2" * (n % 9 + 1))
                     for n in range(1, 19)] * 3,
    "large block": [b"".join(pax_record("mtime", f"{n}.{n}") for n in range(40))] * 2,
}


@pytest.mark.parametrize("case", sorted(_LAYOUT_CASES))
def test_times_read_one_after_another_as_by_the_general_path(case: str,
                                                                  tmp_path: Path) -> None:
    blocks = _LAYOUT_CASES[case]
    data = member("first", b"1") + b"".join(
        pax(block) + member(f"f{i}", b"x" * i) for i, block in enumerate(blocks))
    data += member("after", b"tail") + EOA
    fast = _fast_and_general(data, tmp_path)
    if case == "same layout, other digits":
        assert isinstance(fast, list)
        assert [(r[0].mtime_ns, r[0].atime_ns) for r in fast[1:3]] == [
            (1796405849_080967965, 1796405849_860000000),
            (1234567890_123456789, 1_000000009)]


def test_times_of_every_size_are_read_exactly(tmp_path: Path) -> None:
    # Seconds of 1 to 18 digits: in nanoseconds, past 2**63 from 10**10 on.
    times = [(10 ** n, "5" * k) for n in range(18) for k in (1, 2, 3)]
    blocks = [pax_record("mtime", f"{secs}.{frac}") for secs, frac in times] * 2 + [
        b"".join(pax_record("mtime", f"{n}.{n}") for n in range(40))]
    data = b"".join(pax(block) + member(f"f{i}") for i, block in enumerate(blocks))
    path = tmp_path / "in.tar"
    path.write_bytes(member("first") + data + EOA)
    fd = os.open(path, os.O_RDONLY)
    try:
        entries, reader = read_fd(fd)
    finally:
        os.close(fd)
    expected = [secs * NS + int(frac.ljust(9, "0")) for secs, frac in times]
    assert [r.entry.mtime_ns for r in entries[1:-1]] == expected * 2
    assert entries[-1].entry.mtime_ns == 39 * NS + 390_000_000
    assert reader.lenient_times == 0


def _spliced_archive() -> tuple[bytes, dict[str, bytes]]:
    files = {"small": b"s" * 700, "big": bytes(random.Random(1).randbytes(3_000_123)),
             "after": b"a" * 10, "big2": b"z" * (20 << 20) + b"end", "last": b"l"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue(), files


@pytest.mark.parametrize("chunks", [None, (1, 70_000)])
def test_spliced_moves_a_files_data_from_a_pipe(chunks: tuple[int, int] | None,
                                                  tmp_path: Path) -> None:
    """From a pipe (written whole, or in small random pieces), the data of files that
    the buffer holds in part or not at all is moved into the file: the buffered part
    written, the rest spliced; the steps add up to the size; the next entries follow."""
    archive, files = _spliced_archive()
    rfd = feed_pipe(archive, chunks)
    reader = TarReader(rfd, bufsize=1 << 20)
    seen = {}
    for entry in reader:
        if entry.size > 1 << 20:
            assert reader.can_splice(entry)
            path = tmp_path / entry.name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                steps = list(reader.spliced(entry, fd))
            finally:
                os.close(fd)
            assert sum(steps) == entry.size and max(steps) <= 8 << 20
            assert not reader.can_splice(entry)  # all of it moved
            seen[entry.name] = path.read_bytes()
        else:
            seen[entry.name] = b"".join(bytes(c) for _, c in reader.data(entry))
    os.close(rfd)
    assert seen == files


def test_spliced_from_a_pipe_that_ends_inside_the_data_names_the_entry(
    tmp_path: Path,
) -> None:
    archive, _files = _spliced_archive()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        cut = tf.getmember("big2").offset_data + (5 << 20)
    rfd = feed_pipe(archive[:cut])
    reader = TarReader(rfd)
    with pytest.raises(MalformedArchiveError, match="truncated data") as caught:
        for entry in reader:
            if entry.name == "big2":
                fd = os.open(tmp_path / "big2", os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    for _step in reader.spliced(entry, fd):
                        pass
                finally:
                    os.close(fd)
    os.close(rfd)
    assert caught.value.entry == "big2"


def test_spliced_is_only_for_a_pipe(tmp_path: Path) -> None:
    archive, _files = _spliced_archive()
    path = tmp_path / "a.tar"
    path.write_bytes(archive)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = TarReader(fd)
        entry = next(iter(reader))
        assert not reader.can_splice(entry)
        with pytest.raises(InternalError):
            next(reader.spliced(entry, fd))
    finally:
        os.close(fd)
