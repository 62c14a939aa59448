"""The compiled header parser (tarformat/_ustar.c) against its Python reference.

The reader's fast path reads most headers with ``_ustar.ustar``; ``reader._ustar_py``
holds the same rules in Python and is used where the extension was not built. The
entries are made in C too (``_ustar.Fields``, whose reference is
``reader._EntryFields``). They must
agree on every block: real headers of every kind and format, random mutations of them
(bytes changed, checksums fixed up so the later checks are reached), any bounds; and
whole archives must read the same through either. The extension is built by the
project's own install (setup.py, optional), and the test suite's dependencies include
the compiler, so it must be there.
"""

from __future__ import annotations

import gc
import io
import os
import shutil
import subprocess
import sys
import tarfile
import weakref
import zipfile
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chrootarchive
from chrootarchive.errors import MalformedArchiveError
from chrootarchive.tarformat import _ustar, reader
from chrootarchive.tarformat.reader import TarEntry, TarReader
from helpers.corpus import corpus_dir
from helpers.tarbuild import header, member, pax_header, pax_record

BLOCK = 512


def _headers() -> list[bytes]:
    """Headers as the usual writers make them: every kind, the three formats, prefixes,
    names of 100 bytes, non-UTF-8 names, long link names, large numbers."""
    infos = []
    for name, kind, link in [
        ("file.txt", tarfile.REGTYPE, ""),
        ("dir/", tarfile.DIRTYPE, ""),
        ("a/" * 60 + "deep.txt", tarfile.REGTYPE, ""),  # split into prefix and name
        ("n" * 100, tarfile.REGTYPE, ""),  # a name field with no NUL
        ("caf\udce9.txt", tarfile.REGTYPE, ""),  # not UTF-8 (surrogateescape)
        ("ünïcödé/файл", tarfile.REGTYPE, ""),
        ("hard", tarfile.LNKTYPE, "file.txt"),
        ("sym", tarfile.SYMTYPE, "../" * 33 + "x"),  # a link name of 100 bytes
        ("sym2", tarfile.SYMTYPE, "t\udcff"),
        ("dev", tarfile.CHRTYPE, ""),
        ("blk", tarfile.BLKTYPE, ""),
        ("fifo", tarfile.FIFOTYPE, ""),
        ("cont", tarfile.CONTTYPE, ""),
        ("old-dir/", tarfile.REGTYPE, ""),  # a file named as a directory
    ]:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.mode = 0o4755
        info.uid, info.gid = 1000, 0o7777777
        info.mtime = 0o77777777777
        info.size = 0o7777777 if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
        info.devmajor, info.devminor = 8, 1
        infos.append(info)
    blocks: list[bytes] = []
    for info in infos:
        for form in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
            try:
                raw = info.tobuf(form, "utf-8", "surrogateescape")
            except ValueError:
                continue  # ustar cannot hold it
            blocks.extend(raw[i : i + BLOCK] for i in range(0, len(raw), BLOCK))
    return blocks


HEADERS = _headers()


def _fix_checksum(block: bytearray) -> None:
    """Make the checksum's six digits right, leaving the two bytes after them as they
    are (the layout check reads those)."""
    block[148:154] = b"%06o" % (sum(block[:148]) + 8 * 0x20 + sum(block[156:]))


def _made(entry: object) -> object:
    if entry is None:
        return None
    return type(entry), {name: getattr(entry, name) for name in reader._FIELD_NAMES}


def _both(buf: bytes | bytearray, pos: int, end: int) -> object:
    """The header through both parsers, and the entry through both makers (they
    agree, and the entry is what the header holds)."""
    fast = _ustar.ustar(buf, pos, end)
    assert fast == reader._ustar_py(buf, pos, end)
    args = (buf, pos, end, TarEntry, reader._ENTRY_KINDS, reader.REGULAR)
    entry = _ustar.entry(*args)
    assert _made(entry) == _made(reader._entry_py(*args))
    if entry is not None:
        assert fast is not None
        flag, mode, uid, gid, size, mtime, name, link = fast
        assert entry.kind is reader._ENTRY_KINDS[flag]
        assert (entry.name, entry.mode, entry.uid, entry.gid, entry.mtime_ns) == (
            name, mode & 0o7777, uid, gid, mtime * 10**9)
        assert entry.size == entry.stored_size == (size if entry.kind is reader.REGULAR
                                                   else 0)
        assert entry.linkname == (link or "")
    return fast


def test_the_reader_uses_the_compiled_parser() -> None:
    assert reader._ustar is _ustar.ustar
    assert reader._entry is _ustar.entry
    assert reader._pax_entry is _ustar.pax_entry


def test_which_headers_make_their_entry_in_one_step() -> None:
    """Plain files, directories, links and FIFOs; not device nodes (their numbers),
    extended headers, or a file whose name ends in "/" (read as a directory)."""
    made = {}
    for name, kind in [("f", tarfile.REGTYPE), ("d/", tarfile.DIRTYPE),
                       ("h", tarfile.LNKTYPE), ("s", tarfile.SYMTYPE),
                       ("p", tarfile.FIFOTYPE), ("c", tarfile.CHRTYPE),
                       ("b", tarfile.BLKTYPE), ("old-dir/", tarfile.REGTYPE),
                       ("k", tarfile.CONTTYPE)]:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, 3 if kind == tarfile.REGTYPE else 0
        block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
        _both(block, 0, BLOCK)
        entry = _ustar.entry(block, 0, BLOCK, TarEntry, reader._ENTRY_KINDS, reader.REGULAR)
        made[name] = None if entry is None else entry.kind
    assert made == {"f": "file", "d/": "dir", "h": "hardlink", "s": "symlink",
                    "p": "fifo", "c": None, "b": None, "old-dir/": None, "k": "file"}
    pax = bytearray(tarfile.TarInfo("x" * 200).tobuf(tarfile.PAX_FORMAT)[:BLOCK])
    assert _ustar.entry(pax, 0, BLOCK, TarEntry, reader._ENTRY_KINDS, reader.REGULAR) is None


def test_every_usual_header_reads_alike() -> None:
    taken = 0
    for block in HEADERS:
        result = _both(bytearray(block), 0, BLOCK)
        taken += result is not None
    assert taken > len(HEADERS) // 2  # the check reached the full parse


def test_what_the_fast_path_gives() -> None:
    info = tarfile.TarInfo("p" * 120 + "/leaf")
    info.type, info.linkname, info.mode, info.uid, info.gid = tarfile.SYMTYPE, "t", 0o777, 7, 9
    info.mtime = 1_700_000_000
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    assert _both(block, 0, BLOCK) == (
        ord("2"), 0o777, 7, 9, 0, 1_700_000_000, "p" * 120 + "/leaf", "t")


@pytest.mark.parametrize("where", range(100, 157))
def test_each_byte_of_the_numeric_fields_is_checked(where: int) -> None:
    """Every byte of the layout, given each kind of value, the checksum then fixed up:
    both refuse or both read, alike."""
    for block in HEADERS[:6]:
        for value in b"\0 07389x\xff":
            mutated = bytearray(block)
            mutated[where] = value
            if not 148 <= where < 154:  # the checksum's own digits: as mutated
                _fix_checksum(mutated)
            _both(mutated, 0, BLOCK)


@pytest.mark.parametrize(("pos", "end"), [
    (0, 511), (1, 512), (-1, 512), (0, 513), (512, 1024), (0, 10**6), (3, 2),
])
def test_bounds_are_checked_before_any_byte_is_read(pos: int, end: int) -> None:
    buf = bytearray(HEADERS[0])
    assert _both(buf, pos, end) is None


def test_a_header_past_the_start_of_the_buffer() -> None:
    buf = bytearray(b"\0" * 7 + HEADERS[0] + b"junk")
    assert _both(buf, 7, len(buf)) == _both(bytearray(HEADERS[0]), 0, BLOCK)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(HEADERS),
    st.lists(st.tuples(st.integers(0, BLOCK - 1), st.integers(0, 255)), max_size=6),
    st.booleans(),
)
def test_mutated_headers_read_alike(
    block: bytes, changes: list[tuple[int, int]], fix: bool
) -> None:
    mutated = bytearray(block)
    for where, value in changes:
        mutated[where] = value
    if fix:  # reach the name and numbers: the checksum alone would refuse most
        _fix_checksum(mutated)
    _both(mutated, 0, BLOCK)
    _both(bytes(mutated), 0, BLOCK)


@settings(max_examples=1000)
@given(st.binary(min_size=BLOCK, max_size=BLOCK), st.booleans())
def test_random_blocks_read_alike(data: bytes, fix: bool) -> None:
    block = bytearray(data)
    if fix:
        _fix_checksum(block)
    _both(block, 0, BLOCK)


def test_arguments_are_checked() -> None:
    kinds, regular = reader._ENTRY_KINDS, reader.REGULAR
    block = bytearray(HEADERS[0])
    with pytest.raises(TypeError):
        _ustar.entry(block, 0, BLOCK, TarEntry, kinds)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _ustar.entry(block, 0, BLOCK, dict, kinds, regular)
    with pytest.raises(TypeError):
        _ustar.entry(block, 0, BLOCK, TarEntry, kinds[:255], regular)
    with pytest.raises(TypeError):
        _ustar.entry(block, 0, BLOCK, TarEntry, list(kinds), regular)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _ustar.entry(block, 2**80, BLOCK, TarEntry, kinds, regular)
    with pytest.raises(TypeError):
        _ustar.ustar(bytearray(BLOCK), 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _ustar.ustar("not bytes", 0, BLOCK)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _ustar.ustar(bytearray(BLOCK), "0", BLOCK)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _ustar.ustar(bytearray(BLOCK), 2**80, BLOCK)


# ---- pax_entry: a times-only PAX header and the member after it --------------------

_MAX_PAX = 1 << 20


def _pax_both(buf: bytes | bytearray, pos: int, end: int,
              max_pax: int = _MAX_PAX) -> tuple[object, int] | None:
    """A PAX header and its member through both (C and reference), which agree: the
    entry (as its fields) and the position of the member's header, or None. When
    found, the entry is the member's own (entry() at that position) but for its
    times, which _pax_times reads from the records."""
    args = (buf, pos, end, TarEntry, reader._ENTRY_KINDS, reader.REGULAR, max_pax)
    fast = _ustar.pax_entry(*args)
    slow = reader._pax_entry_py(*args)
    made = None if fast is None else (_made(fast[0]), fast[1])
    assert made == (None if slow is None else (_made(slow[0]), slow[1]))
    if fast is None:
        return None
    entry, at = fast
    member_entry = _ustar.entry(buf, at, end, TarEntry, reader._ENTRY_KINDS, reader.REGULAR)
    assert member_entry is not None
    size = int(bytes(buf[pos + 124 : pos + 135]), 8)
    times = reader._pax_times(bytes(buf[pos + BLOCK : pos + BLOCK + size]))
    assert times is not None
    mtime = member_entry.mtime_ns if times[0] is None else times[0]
    member_entry.mtime_ns, member_entry.atime_ns = mtime, times[1]
    assert _made(entry) == _made(member_entry)
    return _made(entry), at


def _times_block(records: bytes, after: bytes | None = None) -> bytes:
    return pax_header(records) + (member("f", b"abc", mtime=7) if after is None else after)


def test_a_times_only_header_and_its_member_in_one_step() -> None:
    records = (pax_record("mtime", "1796405849.080967965")
               + pax_record("atime", "1796405531.86") + pax_record("ctime", "1.5"))
    data = bytearray(b"\x00" * 1024 + _times_block(records))
    found = _pax_both(data, 1024, len(data))
    assert found is not None
    fields, at = found
    assert at == 1024 + 2 * BLOCK
    assert isinstance(fields, tuple)
    values = fields[1]
    assert (values["name"], values["size"], values["mtime_ns"], values["atime_ns"]) == (
        "f", 3, 1796405849_080967965, 1796405531_860000000)


def test_which_members_after_times_take_one_step() -> None:
    times = pax_record("mtime", "5.5")
    after = {
        "file": member("f", b"x"), "dir": header("d/", typeflag=b"5"),
        "symlink": header("s", typeflag=b"2", linkname="t"),
        "hardlink": header("h", typeflag=b"1", linkname="f"),
        "fifo": header("p", typeflag=b"6"),
        "chardev": header("c", typeflag=b"3", devmajor=1, devminor=3),
        "file named as a dir": member("old/", b""),
        "another pax": pax_header([("path", "x")]) + member("f"),
        "global pax": pax_header([("mtime", "1")], typeflag=b"g") + member("f"),
        "bad checksum": header("f", chksum=1),
        "zero block": bytes(BLOCK),
    }
    taken = {name: _pax_both(data := bytearray(_times_block(times, block)), 0, len(data))
             is not None for name, block in after.items()}
    assert taken == {"file": True, "dir": True, "symlink": True, "hardlink": True,
                     "fifo": True, "chardev": False, "file named as a dir": False,
                     "another pax": False, "global pax": False, "bad checksum": False,
                     "zero block": False}


@pytest.mark.parametrize("records", [
    b"", b"\n", b"13 mtime=5.5\n", b"014 mtime=5.5\n", b"0000000000000000000033 mtime=5.5\n",
    b"12 mtime=5.5\n", b"14 mtime=5.5\n", b"13 mtime=5.5", b"13 mtime=5,5\n",
    b"13 mtime=+5.\n", b"12 mtime=5.\n", b"12 mtime=.5\n", b"13 mtime=-5.\n",
    b"11 mtime=5\n13 atime=5.5\n13 ctime=5.5\n", b"13 atime=5.5\n", b"13 ctime=5.5\n",
    b"12 path=abc\n", b"13 MTIME=5.5\n", b"13 mtime 5.5\n", b"9 mtime=\n", b" 13 mtime=5.5\n",
    b"13  mtime=55\n", b"14 mtime=1=23\n", b"14 mtime=1\n23\n", b"15 mtime=5.5.5\n",
    b"11 mtime=5\n11 mtime=6\n", b"17 mtime=5\x00\x00\x00\x00\x00\x00\n",
    b"17 mtime=5.5\n\n\n\n\n", b"\n13 mtime=5.5\n",
    pax_record("mtime", "9" * 18 + "." + "9" * 30), pax_record("mtime", "9" * 19),
    pax_record("mtime", "9000000000.999999999"), pax_record("mtime", "9000000001.5"),
    pax_record("atime", "1" + "0" * 17), pax_record("mtime", "0" * 18 + ".000000001"),
    b"99999999999999999999999999 mtime=5\n", b"2 \n", b"3 \n", b"0 mtime=1\n",
    # A length field of 20 characters, and of 21 and 5,000 (the strict rules refuse
    # those, and int() refuses 5,000 digits).
    b"0" * 18 + b"31 mtime=5.5\n", b"0" * 19 + b"32 mtime=5.5\n",
    b"0" * 4996 + b"5009 mtime=1\n",
])
def test_times_records_read_alike(records: bytes) -> None:
    data = bytearray(_times_block(records))
    _pax_both(data, 0, len(data))


# Pieces of PAX records, put together by the tests below: the plain forms and the
# small ways in which records go wrong.
_LENGTHS = st.sampled_from(["right", "one short", "one long", "zero-padded", "none"])
_KEYS = st.sampled_from([b"mtime", b"atime", b"ctime", b"path", b"", b"mtim", b"mtimes"])
_VALUES = st.one_of(
    st.from_regex(rb"\A[0-9]{1,20}(\.[0-9]{0,12})?\Z"),
    st.from_regex(rb"\A[-+ .0-9=\n\x00a-z]{0,12}\Z"),
)


def _record(length: str, key: bytes, value: bytes) -> bytes:
    right = pax_record(key, value)
    digits, body = right.split(b" ", 1)
    if length == "right":
        return right
    if length == "zero-padded":
        return b"0" + right
    if length == "none":
        return body
    return b"%d " % (int(digits) + (1 if length == "one long" else -1)) + body


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_LENGTHS, _KEYS, _VALUES), max_size=5), st.booleans(),
       st.sampled_from(["", "drop last byte", "no newline"]))
def test_built_times_records_read_alike(
    parts: list[tuple[str, bytes, bytes]], plain_lengths: bool, ending: str
) -> None:
    records = b"".join(_record("right" if plain_lengths else length, key, value)
                       for length, key, value in parts)
    if ending == "drop last byte":
        records = records[:-1]
    elif ending == "no newline" and records:
        records = records[:-1] + b" "
    data = bytearray(_times_block(records))
    _pax_both(data, 0, len(data))


@settings(max_examples=1000)
@given(st.binary(max_size=600))
def test_random_records_read_alike(records: bytes) -> None:
    data = bytearray(_times_block(records))
    _pax_both(data, 0, len(data))


def test_bounds_and_the_size_limit_are_checked() -> None:
    records = pax_record("mtime", "5.5") * 36 + pax_record("atime", "1234")
    assert len(records) == 482  # one block
    data = bytearray(b"\x00" * BLOCK + _times_block(records) + bytes(BLOCK))
    whole = 4 * BLOCK  # up to the end of the member's header
    for end in range(0, len(data) + 1, 64):
        found = _pax_both(data, BLOCK, end)
        assert (found is not None) == (end >= whole), end
    for max_pax in (0, 481, 482, 483):
        assert (_pax_both(data, BLOCK, len(data), max_pax) is not None) == (max_pax >= 482)
    for pos in (-1, 1, BLOCK - 1, BLOCK + 1, len(data)):
        assert _pax_both(data, pos, len(data)) is None
    # A size field larger than the buffer, up to the largest: refused before any record.
    for size in (10**9, 8**11 - 1):
        huge = bytearray(header("PaxHeaders/f", typeflag=b"x", size=size) + bytes(BLOCK))
        assert _pax_both(huge, 0, len(huge), max_pax=1 << 40) is None


def test_pax_entry_arguments_are_checked() -> None:
    kinds, regular = reader._ENTRY_KINDS, reader.REGULAR
    data = bytearray(_times_block(pax_record("mtime", "1")))
    with pytest.raises(TypeError):
        _ustar.pax_entry(data, 0, len(data), TarEntry, kinds, regular)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _ustar.pax_entry(data, 0, len(data), dict, kinds, regular, 10)
    with pytest.raises(TypeError):
        _ustar.pax_entry(data, 0, len(data), TarEntry, kinds[:10], regular, 10)
    with pytest.raises(TypeError):
        _ustar.pax_entry(data, 0, len(data), TarEntry, kinds, regular, "10")  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _ustar.pax_entry(data, 0, len(data), TarEntry, kinds, regular, 2**80)
    with pytest.raises(TypeError):
        _ustar.pax_entry("no", 0, 3, TarEntry, kinds, regular, 10)  # type: ignore[arg-type]


# Calls of TarEntry's constructor: the reader's (seven positional arguments), every
# default given, keywords, and wrong ones (each class must refuse them alike).
_FIELD_CALLS: list[tuple[tuple[object, ...], dict[str, object]]] = [
    (("a/b", "file", 0o644, 1, 2, 3, 4_000_000_000), {}),
    (("d/", "dir", 0o7777, 0, 0, 0, -5), {}),
    (("x", "file", 1, 2, 3, 4, 5, 6, "l", 7, 8, {"user.a": b"1"}, [(0, 1)], 9, "Z"), {}),
    (("x", "file", 1, 2, 3, 4, 5, None, "", 0, 0, None), {}),
    ((), {"name": "n", "kind": "symlink", "mode": 0, "uid": 0, "gid": 0, "size": 0,
          "mtime_ns": 0, "linkname": "t", "xattrs": None, "unknown_type": "V"}),
    (("n", "chardev", 0, 0, 0, 0, 0), {"devmajor": 4, "devminor": 5, "sparse": []}),
    (("n", "file", 0, 0, 0, 0), {}),  # too few
    (("n", "file", 0, 0, 0, 0, 0, None, "", 0, 0, None, None, 0, "", "extra"), {}),
    (("n", "file", 0, 0, 0, 0, 0), {"name": "twice"}),
    (("n", "file", 0, 0, 0, 0, 0), {"colour": "blue"}),
    ((), {}),
]


def _fields(cls: type, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
    try:
        made = cls(*args, **kwargs)
    except TypeError:
        return TypeError
    return {name: getattr(made, name) for name in reader._FIELD_NAMES}


def test_the_reader_makes_its_entries_in_c() -> None:
    # mypy sees the reference (reader's TYPE_CHECKING branch); at run time, the compiled.
    assert reader._Fields is _ustar.Fields  # type: ignore[comparison-overlap]
    assert issubclass(TarEntry, _ustar.Fields)
    # _ustar.entry fills an instance without calling them: TarEntry must have none.
    assert "__new__" not in vars(TarEntry) and "__init__" not in vars(TarEntry)


@pytest.mark.parametrize(("args", "kwargs"), _FIELD_CALLS)
def test_entry_fields_agree_with_their_reference(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    compiled = _fields(_ustar.Fields, args, kwargs)
    assert compiled == _fields(reader._EntryFields, args, kwargs)
    assert compiled == _fields(TarEntry, args, kwargs)


def test_entry_fields_behave_as_slots() -> None:
    """Each entry its own xattrs dict; the objects given are kept, not copied; any field
    can be set and deleted; no other attribute can be set."""
    # The compiled Fields has the reference's fields (its stub does not list them).
    classes: tuple[type[reader._EntryFields], ...] = (
        cast(type[reader._EntryFields], _ustar.Fields), reader._EntryFields, TarEntry)
    for cls in classes:
        first, second = cls("a", "file", 0, 0, 0, 0, 0), cls("b", "file", 0, 0, 0, 0, 0)
        assert first.xattrs == {} and first.xattrs is not second.xattrs
        xattrs = {"user.k": b"v"}
        assert cls("a", "file", 0, 0, 0, 0, 0, xattrs=xattrs).xattrs is xattrs
        first.size = 2**70
        first.sparse = [(0, 1)]
        assert (first.size, first.sparse) == (2**70, [(0, 1)])
        del first.linkname
        with pytest.raises(AttributeError):
            _ = first.linkname
        with pytest.raises(AttributeError):
            first.colour = "blue"  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [_ustar.Fields, TarEntry])
def test_an_entry_in_a_reference_cycle_is_collected(cls: type[TarEntry]) -> None:
    """The compiled fields take part in the cycle collector, as a Python class does."""
    class Holder:
        entry: object = None

    holder = Holder()
    entry = cls("a", "file", 0, 0, 0, 0, 0, sparse=[holder])  # type: ignore[list-item]
    holder.entry = entry
    gone = weakref.ref(holder)
    del entry, holder
    gc.collect()
    assert gone() is None


def _archives() -> list[Path]:
    return sorted(p for p in corpus_dir().iterdir() if p.suffix == ".tar")


def _read_file(path: Path) -> tuple[list[tuple[TarEntry, bytes]], str]:
    """Each entry with its data (offsets and bytes), and the error that ended the
    reading ("" for none)."""
    entries: list[tuple[TarEntry, bytes]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        tar = TarReader(fd)
        for entry in tar:
            data = b"".join(b"%d:" % offset + bytes(chunk)
                            for offset, chunk in tar.data(entry))
            entries.append((entry, data))
    except MalformedArchiveError as exc:
        return entries, str(exc)
    finally:
        os.close(fd)
    return entries, ""


@pytest.mark.parametrize("path", _archives(), ids=lambda p: p.name)
def test_whole_archives_read_alike_through_either(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _read_file(path)
    monkeypatch.setattr(reader, "_ustar", reader._ustar_py)
    monkeypatch.setattr(reader, "_entry", reader._entry_py)
    monkeypatch.setattr(reader, "_pax_entry", reader._pax_entry_py)
    assert _read_file(path) == fast
    # And with no entry made in one step: every header through the steps after it.
    monkeypatch.setattr(reader, "_entry", lambda *args: None)
    monkeypatch.setattr(reader, "_pax_entry", lambda *args: None)
    assert _read_file(path) == fast


def _wheel(tree: Path, out: Path, **env: str) -> Path:
    """Build the project's wheel from ``tree`` (its setup.py, no isolation)."""
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "bdist_wheel", "--dist-dir", str(out)],
        cwd=tree, env=dict(os.environ, **env), capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.mark.slow
def test_without_a_compiler_the_wheel_is_pure_and_works_in_python(tmp_path: Path) -> None:
    """setup.py declares the extensions optional: a failed compile is a warning, the
    wheel is then tagged as pure Python, and the reader and the helper use their Python
    rules, and ``_linux`` makes its system calls through ctypes: an archive of many
    small files (the helper's) unpacks the same, in a jail. With the compiler, the
    wheel holds the three extensions and is tagged for the stable ABI."""
    tree = Path(chrootarchive.__file__).resolve().parents[2]
    copy = tmp_path / "tree"
    shutil.copytree(tree / "src", copy / "src",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(tree / name, copy / name)
    wheel = _wheel(copy, tmp_path / "pure", CC="/bin/false")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")]
        archive.extractall(unpacked)
    probe = subprocess.run(
        [sys.executable, "-I", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]);"
         "from chrootarchive.tarformat import reader;"
         "from chrootarchive.engine import finisher;"
         "from chrootarchive.tarformat import format;"
         "from chrootarchive import _linux;"
         "print(reader._ustar is reader._ustar_py, reader._entry is reader._entry_py,"
         " reader._pax_entry is reader._pax_entry_py,"
         " reader._Fields is reader._EntryFields, finisher._finish_compiled is None,"
         " finisher._BatchBase is finisher._Batch, format.byte_sum is format.byte_sum_zlib,"
         " not _linux.COMPILED)",
         str(unpacked)],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.split() == ["True"] * 8
    version = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
         "from chrootarchive.cli import main; main(['--version'])", str(unpacked)],
        capture_output=True, text=True,
    )
    assert ("header parser, helper loop and system calls in Python: installed without a C"
            " compiler") in version.stdout
    # Many small files: the worker forks the helper, whose loop is then Python's.
    many = tmp_path / "many.tar"
    files = {f"d{i % 7}/f{i}.txt": (b"%d\n" % i) * (i % 50) for i in range(600)}
    with tarfile.open(many, "w", format=tarfile.GNU_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_000_000 + len(data), 0o640
            t.addfile(info, io.BytesIO(data))
    dest = tmp_path / "dest"
    subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
         "from chrootarchive.cli import main; sys.exit(main(['untar', *sys.argv[2:]]))",
         str(unpacked), str(many), str(dest)],
        capture_output=True, text=True, check=True,
    )
    for name, data in files.items():
        st = (dest / name).stat()
        assert (dest / name).read_bytes() == data
        assert (st.st_mode & 0o777, st.st_mtime) == (0o640, 1_000_000 + len(data))
    shutil.rmtree(copy / "build")
    wheel = _wheel(copy, tmp_path / "compiled")
    assert wheel.name.endswith("-cp311-abi3-linux_" + os.uname().machine + ".whl"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        built = sorted(Path(n).name for n in archive.namelist() if n.endswith(".so"))
    assert built == ["_finish.abi3.so", "_syscall.abi3.so", "_ustar.abi3.so"]
