"""Bounded memory: streams that declare a huge window or dictionary are refused before
the memory is taken, with a limit error that says how much they need and how to allow it.

The hostile streams are a few dozen bytes, built here: a valid xz stream whose block
header declares a larger dictionary (its CRC fixed), and a zstd frame of one raw block
whose window descriptor says 1.5 GiB. Each is checked in a fresh interpreter whose peak
RSS is measured, so a refusal that came after the allocation would show (its own VmHWM:
ru_maxrss would carry the forking process's peak across ``exec``).
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

import chrootarchive
from chrootarchive import LimitExceededError, Limits, UnpackOptions
from chrootarchive.contract import memory_shares
from chrootarchive.operations import compression
from helpers import tarbuild as tb
from helpers.cli import CLI, assert_one_line_error, run_cli
from helpers.hardening import MiB, on_tmpfs, wait_for, wait_worker
from helpers.mechanisms import variants

SRC = Path(__file__).resolve().parents[1] / "src"


def _tar() -> bytes:
    return tb.TarBuilder().file("a", b"hello").build()


def xz_declaring(bits: int, data: bytes) -> bytes:
    """An xz stream of ``data`` whose LZMA2 filter declares the dictionary ``bits``
    encodes (37: 1.5 GiB, 40: 4 GiB - 1; the data itself needs 1 MiB)."""
    x = bytearray(lzma.compress(data, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": MiB}]))
    size = (x[12] + 1) * 4
    header = x[12:12 + size]
    i = header.index(b"\x21\x01") + 2
    header[i] = bits
    header[-4:] = zlib.crc32(bytes(header[:-4])).to_bytes(4, "little")
    x[12:12 + size] = header
    return bytes(x)


def zstd_declaring(exponent: int, mantissa: int, data: bytes, *, zeros: int = 0) -> bytes:
    """A zstd frame of a raw block of ``data``, then ``zeros`` RLE blocks of 128 KiB of
    zeros, whose window is (1 << (10 + exponent)) * (1 + mantissa / 8): (20, 4) is
    1.5 GiB."""
    blocks = [(len(data) << 3).to_bytes(3, "little") + data]  # raw
    blocks += [((128 << 10) << 3 | 2).to_bytes(3, "little") + b"\0"] * zeros  # RLE
    blocks[-1] = (int.from_bytes(blocks[-1][:3], "little") | 1).to_bytes(3, "little") \
        + blocks[-1][3:]  # the last
    return b"\x28\xb5\x2f\xfd" + bytes([0, exponent << 3 | mantissa]) + b"".join(blocks)


HOSTILE: dict[str, tuple[Callable[[], bytes], int]] = {
    "xz-1.5G": (lambda: xz_declaring(37, _tar()), 1537),
    "xz-4G": (lambda: xz_declaring(40, _tar()), 4097),
    # 10 MiB made: more than the 9 MiB the limit leaves, so the window may be needed.
    "zstd-1.5G": (lambda: zstd_declaring(20, 4, _tar(), zeros=80), 1536),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_huge_window_refused_with_what_it_needs(case: str) -> None:
    build, need_mib = HOSTILE[case]
    with pytest.raises(LimitExceededError) as info:
        _kind, chunks = compression.decompressed_chunks(io.BytesIO(build()))
        b"".join(chunks)
    message = info.value.message
    assert "max_memory" in message and f"needs {need_mib} MiB" in message, message
    # The API's words (the command line says --max-memory: test_messages.py).
    assert "raise Limits.max_memory to" in message and "--" not in message, message
    assert info.value.exit_status == 1


def test_windows_within_the_limit_decompress() -> None:
    for blob in (xz_declaring(20, _tar()), zstd_declaring(10, 0, _tar()),  # 1 MiB, 1 KiB
                 zstd_declaring(13, 0, _tar())):  # 8 MiB: zstd -19's window
        kind, chunks = compression.decompressed_chunks(io.BytesIO(blob))
        assert b"".join(chunks) == _tar(), kind


def _read_in_pieces(blob: bytes, piece: int) -> bytes:
    """``blob`` decompressed from a source that gives at most ``piece`` bytes a read."""

    class Pieces:
        def __init__(self) -> None:
            self._data = io.BytesIO(blob)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(piece if size < 0 else min(size, piece))

    return b"".join(compression.decompressed_chunks(Pieces())[1])


def test_a_frame_that_makes_less_than_its_window_is_read() -> None:
    """A window is what the encoder might have used; a decoder needs no more than what
    the frame makes. zstd:chunked layers (containers/storage's, ``skopeo copy
    --dest-compress-format zstd:chunked``) end with a frame that declares 32 MiB for a
    few KiB of tar trailer, beside small frames and skippable frames (the TOC): they
    were refused at the default limit. Read whatever the pieces the source gives."""
    params = zstandard.ZstdCompressionParameters(window_log=25, write_content_size=False,
                                                 write_checksum=True)
    packer = zstandard.ZstdCompressor(compression_params=params).compressobj()
    trailer = packer.compress(bytes(3000)) + packer.flush()
    assert trailer[5] == 15 << 3  # a 32 MiB window, over the default 9 MiB
    body = _tar()[:-1024]
    toc = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"toc.."
    blob = zstandard.ZstdCompressor().compress(body) + trailer + toc
    for piece in (1, 5, 7, 4096, compression.CHUNK):
        assert _read_in_pieces(blob, piece) == body + bytes(3000), piece
    # What the frames above declare does not matter: 1.5 GiB for a tar of 10 KiB.
    assert _read_in_pieces(zstd_declaring(20, 4, _tar()), 3) == _tar()
    # Up to the limit's 9 MiB made, but not past it.
    near = zstd_declaring(20, 4, _tar(), zeros=60)
    assert _read_in_pieces(near, 1 << 16) == _tar() + bytes(60 << 17)
    with pytest.raises(LimitExceededError, match="needs 1536 MiB"):
        _read_in_pieces(zstd_declaring(20, 4, _tar(), zeros=80), 1 << 16)
    with pytest.raises(chrootarchive.CompressionError, match="truncated"):
        _read_in_pieces(blob[:-len(toc) - 20], 7)


def test_a_larger_max_memory_allows_a_larger_window() -> None:
    blob = xz_declaring(28, _tar())  # 64 MiB: xz -9
    with pytest.raises(LimitExceededError,
                       match=r"needs 65 MiB.*raise Limits\.max_memory to 175 MiB"):
        b"".join(compression.decompressed_chunks(io.BytesIO(blob))[1])
    chunks = compression.decompressed_chunks(io.BytesIO(blob), max_memory=175 * MiB)[1]
    assert b"".join(chunks) == _tar()


def test_a_later_xz_stream_is_checked_too() -> None:
    blob = xz_declaring(20, _tar()) + xz_declaring(37, _tar())
    with pytest.raises(LimitExceededError, match="max_memory"):
        b"".join(compression.decompressed_chunks(io.BytesIO(blob))[1])


def test_xz_reads_as_before() -> None:
    """Concatenated streams are read on; trailing bytes that are no stream are ignored;
    a cut stream and corrupt data are compression errors."""
    one, two = _tar(), tb.TarBuilder().file("b", b"more").build()
    both = lzma.compress(one[:-1024]) + lzma.compress(two)
    assert b"".join(compression.decompressed_chunks(io.BytesIO(both))[1]) == one[:-1024] + two
    junk = lzma.compress(one) + b"\0" * 8 + b"junk"
    assert b"".join(compression.decompressed_chunks(io.BytesIO(junk))[1]) == one
    cut = lzma.compress(one)[:-20]
    with pytest.raises(chrootarchive.CompressionError, match="truncated"):
        b"".join(compression.decompressed_chunks(io.BytesIO(cut))[1])
    bad = bytearray(lzma.compress(os.urandom(4000)))
    bad[40:60] = bytes(20)
    with pytest.raises(chrootarchive.CompressionError, match="corrupt xz"):
        b"".join(compression.decompressed_chunks(io.BytesIO(bytes(bad)))[1])



def test_xz_stream_padding_is_read_past_as_xz_does() -> None:
    """NUL bytes after a stream are Stream Padding (xz's format): the streams after
    them were lost, and an exit status of 0 said nothing (``lzma.LZMAFile`` loses them
    too); 4 or 8 of them at the end were "truncated" data. A few trailing bytes that are
    no stream are ignored as more are; the start of a stream cut short is not
    (differential fuzzing, issue 16, twentieth round)."""
    one, two = _tar()[:-1024], tb.TarBuilder().file("b", b"more").build()

    def read(blob: bytes) -> bytes:
        return b"".join(compression.decompressed_chunks(io.BytesIO(blob))[1])

    for padding in (4, 8, 12, 16, compression.CHUNK + 4):  # also past a read's end
        nul = b"\0" * padding
        assert read(lzma.compress(one) + nul + lzma.compress(two) + nul) == one + two
        assert read(lzma.compress(one) + nul) == one
    for junk in (b"ab", b"junk", b"\0\0\0\0xyz"):
        assert read(lzma.compress(one) + junk) == one
    for cut in (b"\xfd", b"\xfd7zX", lzma.compress(two)[:9]):
        with pytest.raises(chrootarchive.CompressionError, match="truncated"):
            read(lzma.compress(one) + cut)

_PEAK = """
import io, json, resource, sys
import chrootarchive
from chrootarchive import UnpackOptions
data = sys.stdin.buffer.read()
try:
    chrootarchive.untar(io.BytesIO(data), sys.argv[1], UnpackOptions(confine=sys.argv[2]))
    error = None
except chrootarchive.LimitExceededError as err:
    error = err.message
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"error": error, "self": int(hwm[0].split()[1]),
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_huge_window_refused_before_allocation(mechanism: str, case: str,
                                               tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, str(tmp_path / "dest"), mechanism],
        input=HOSTILE[case][0](), capture_output=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(proc.stdout)
    assert seen["error"] and "max_memory" in seen["error"], seen
    assert seen["self"] + seen["children"] < 64 * 1024, seen  # KiB: parent + worker


def test_a_frame_declaring_more_than_it_makes_is_read_in_little_memory(
        mechanism: str, tmp_path: Path) -> None:
    """A frame that declares 1.5 GiB and makes 7.5 MiB is read (held back, then given
    to the library with a window of 8 MiB) with parent + worker under 64 MiB."""
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, str(tmp_path / "dest"), mechanism],
        input=zstd_declaring(20, 4, _tar(), zeros=60), capture_output=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(proc.stdout)
    assert seen["error"] is None, seen
    assert (tmp_path / "dest" / "a").read_bytes() == b"hello"
    assert seen["self"] + seen["children"] < 64 * 1024, seen  # KiB: parent + worker


def test_cli_huge_window_is_a_one_line_limit_error(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    archive = write_archive(xz_declaring(37, _tar()), ".tar.xz")
    result = run_cli("untar", archive, tmp_path / "d")
    assert_one_line_error(result, rc=1,
                          mentions=("limit --max-memory", "1537 MiB", "raise --max-memory"))


def test_api_limit_error(tmp_path: Path) -> None:
    with pytest.raises(LimitExceededError, match="max_memory"):
        chrootarchive.untar(io.BytesIO(HOSTILE["zstd-1.5G"][0]()), tmp_path / "d",
                            UnpackOptions(confine="openat2"))


# -- the limit as an option, and the worker's backstop --------------------------------


def test_max_memory_option_allows_a_larger_window(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    archive = write_archive(xz_declaring(28, _tar()), ".tar.xz")  # 64 MiB: xz -9
    result = run_cli("untar", archive, tmp_path / "refused")
    assert_one_line_error(result, rc=1, mentions=("limit --max-memory", "65 MiB",
                                                  "raise --max-memory to 175M"))
    result = run_cli("untar", "--max-memory", "175M", archive, tmp_path / "allowed")
    assert result.rc == 0, result.err
    assert (tmp_path / "allowed" / "a").read_bytes() == b"hello"
    with pytest.raises(ValueError, match="max_memory"):
        Limits(max_memory=47 * MiB)
    assert run_cli("untar", "--max-memory", "16M", archive, tmp_path / "small").rc == 2


def _sparse_map_bomb(regions: int) -> bytes:
    """A GNU sparse 1.0 file whose map holds ``regions`` one-byte regions: a few MB of
    map that the reader keeps as a list of tuples (about 120 bytes each)."""
    lines = [str(regions)]
    for i in range(regions):
        lines += [str(2 * i), "1"]
    body = tb.pad(("\n".join(lines) + "\n").encode()) + b"x" * regions
    return (tb.TarBuilder()
            .pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s",
                  "GNU.sparse.realsize": str(2 * regions)})
            .file("GNUSparseFile.0/s", body).build())


def test_worker_backstop_turns_runaway_memory_into_a_limit_error(
        worker_mechanism: str, tmp_path: Path) -> None:
    """A worker that allocates beyond its share (here the reader's sparse map, about
    100 MiB for 900,000 regions) gets MemoryError from RLIMIT_DATA, reported as the
    max_memory limit; the in-process openat2 runner has no worker to cap."""
    mechanism = worker_mechanism
    data = gzip.compress(_sparse_map_bomb(900_000), 1)
    with pytest.raises(LimitExceededError, match="max_memory") as info:
        chrootarchive.untar(io.BytesIO(data), tmp_path / "d", UnpackOptions(confine=mechanism))
    assert info.value.exit_status == 1
    assert "worker ran out" in info.value.message


def test_worker_data_limit_is_sized_from_max_memory(tmp_path: Path) -> None:
    """RLIMIT_DATA of a real worker is max_memory minus the parent's share."""
    r, w = os.pipe()
    done: list[BaseException | None] = []

    def run() -> None:
        with os.fdopen(r, "rb") as source:
            try:
                chrootarchive.untar(source, tmp_path / "d", UnpackOptions(
                    confine="pivot", limits=Limits(max_memory=100 * MiB)))
                done.append(None)
            except BaseException as err:
                done.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        os.write(w, _tar()[:512])
        pid = wait_worker()
        limit = wait_for(lambda: next(
            (line.split()[3] for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
             if line.startswith("Max data size") and line.split()[3] != "unlimited"), None))
        assert int(limit) == memory_shares(100 * MiB)[1] == 45 * MiB
    finally:
        os.write(w, _tar()[512:])
        os.close(w)
        thread.join(60)
    assert done == [None]


# -- state kept per name --------------------------------------------------------------


_DEEP = """
import io, json, resource, sys
import chrootarchive
from chrootarchive import UnpackOptions
data = sys.stdin.buffer.read()
try:
    chrootarchive.untar(io.BytesIO(data), sys.argv[1], UnpackOptions(confine=sys.argv[2]))
    error = None
except chrootarchive.ChrootArchiveError as err:
    error = f"{type(err).__name__}: {err.message[:200]}"
print(json.dumps({"error": error,
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _through_symlinks_into_depth(entries: int, depth: int = 1000) -> bytes:
    """A chain of ``depth`` directories, then ``entries`` pairs: a symlink ``sN`` to its
    top and a file reached through it at the bottom. Every file's name has ``depth``
    distinct prefixes (about a megabyte of names) that a cache of known parents keeps."""
    chain = "/".join(["d"] * depth)
    builder = tb.TarBuilder().file(chain + "/f", b"x")
    below = "/".join(["d"] * (depth - 1))
    for i in range(entries):
        builder = builder.symlink(f"s{i}", "d").file(f"s{i}/{below}/g", b"y")
    return builder.build()


def test_names_through_symlinks_into_depth_do_not_grow_the_worker(
        worker_mechanism: str, tmp_path: Path) -> None:
    """40 such files grew the worker by about 1 MiB each (past max_memory's 40 MiB, so the
    backstop stopped them); the cache is now bounded (2 MiB of names) and they unpack."""
    mechanism = worker_mechanism
    dest = tmp_path / "dest"
    proc = subprocess.run(
        [sys.executable, "-c", _DEEP, str(dest), mechanism],
        input=_through_symlinks_into_depth(40), capture_output=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(SRC)})
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        seen = json.loads(proc.stdout)
        assert seen["error"] is None, seen
        # The worker's peak (at least the spawning interpreter's: ru_maxrss survives exec).
        assert seen["children"] < 28 * 1024, seen
        assert (dest / "s39").is_symlink()
        assert (dest / "/".join(["d"] * 1000) / "g").read_bytes() == b"y"
    finally:  # 1000 levels: too deep for pytest's recursive clean-up of old runs
        subprocess.run(["rm", "-rf", "--", str(dest)], check=True)


# -- state that grows with the archive: packed, spilled or capped ---------------------
#
# Run on a tmpfs in a private mount namespace of a child (fast, and the spill file is
# on the destination's filesystem), with --max-memory 48M: the worker's data segment is
# then 19 MiB (contract.memory_shares), far less than the state the old code kept.

WORKERS = variants(without=("openat2",), slow_beyond=("pivot",))  # openat2: no worker


def _templated(count: int, name_of: Callable[[int], str], typeflag: bytes,
               linkname: str = "") -> bytes:
    """A plain tar of ``count`` data-less entries (one template header, patched)."""
    first = name_of(0)
    template = bytearray(tb.header(first, typeflag=typeflag, mode=0o750, mtime=1_234_567,
                                   linkname=linkname))
    base = tb.checksum(bytes(template)) - sum(first.encode())
    parts = []
    for i in range(count):
        name = name_of(i).encode()
        template[:100] = name.ljust(100, b"\0")
        template[148:156] = format(base + sum(name), "06o").encode() + b"\x00 "
        parts.append(bytes(template))
    return b"".join(parts)


@pytest.mark.parametrize("mechanism", WORKERS, indirect=True)
def test_pending_directories_spill_beside_the_tree(mechanism: str, tmp_path: Path) -> None:
    """60,000 directories with 99-byte names: 8 MiB of modes and times to apply at the
    end, past the worker's budget (1 MiB in memory): spilled to an unnamed file in the
    destination, read back, and applied (mode 0750 and mtime on the first, a middle and
    the last); nothing of the spill file remains."""
    count = 60_000
    archive = tmp_path / "dirs.tar"
    archive.write_bytes(_templated(count, lambda i: f"d{i:06d}".ljust(99, "x"), b"5")
                        + bytes(1024))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    check = ('d="$0"; for i in 000000 031337 059999; do '
             'stat -c "%a %Y" "$d"/d$i*; done; ls -A "$d" | wc -l; df -k --output=used "$d"')
    run = on_tmpfs(mnt, "size=256m", "sh", "-c",
                   f'"$@" && sh -c \'{check}\' "{mnt}/dest"', "sh",
                   *CLI, "untar", "--max-memory", "48M", "--confine", mechanism,
                   str(archive), str(mnt / "dest"))
    assert run.rc == 0, run.err
    lines = run.proc.stdout.decode().split()
    assert lines[:6] == ["750", "1234567"] * 3, lines
    assert lines[6] == str(count), lines  # the directories, and nothing else


def test_default_acls_spill_as_the_pending_directories(tmp_path: Path) -> None:
    """40,000 directories with 99-byte names, each with a default ACL, set once all
    is unpacked (so that nothing below inherits it): kept as packed records, spilled
    past 1 MiB, not as objects (about 24 MB, more than the worker's 19 MiB under
    ``--max-memory 48M``). The first, a middle and the last have theirs."""
    import struct

    count = 40_000
    unset = 0xFFFFFFFF  # the id of an entry that names no one
    acl = b"\x02\x00\x00\x00" + b"".join(
        struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in (
            (1, 7, unset), (2, 5, 1234), (4, 5, unset), (0x10, 5, unset), (0x20, 0, unset)))
    pax = tb.pax_header({"SCHILY.xattr.system.posix_acl_default": acl})
    archive = tmp_path / "acls.tar.gz"
    archive.write_bytes(gzip.compress(b"".join(
        pax + tb.header(f"d{i:06d}".ljust(98, "x") + "/", typeflag=tb.DIR, mode=0o755)
        for i in range(count)) + bytes(1024), 1))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    check = (f"import os, sys; d = sys.argv[1]; names = sorted(os.listdir(d)); "
             f"print(len(names), *(os.getxattr(os.path.join(d, names[i]), "
             f"'system.posix_acl_default') == {acl!r} for i in (0, {count // 2}, -1)))")
    run = on_tmpfs(mnt, "size=256m", "sh", "-c", f'"$@" && "$0" -c "{check}" "{mnt}/dest"',
                   sys.executable, *CLI, "untar", "--max-memory", "48M", str(archive),
                   str(mnt / "dest"))
    assert run.rc == 0, run.err
    assert run.proc.stdout.decode().split() == [str(count), "True", "True", "True"]


@pytest.mark.parametrize("mechanism", WORKERS, indirect=True)
def test_layer_bookkeeping_is_packed(mechanism: str, tmp_path: Path) -> None:
    """A layer of 200,000 files over a lower layer, with whiteouts and an opaque marker
    after them: what the layer wrote is remembered as 8-byte hashes (as strings, about
    20 MiB, more than the worker's 19 MiB). The markers still act on the lower content
    only: ``d00/lower`` whited out, ``d00/f000000`` (this layer's) kept through its own
    whiteout, ``d01`` made opaque without losing this layer's files."""
    lower = tb.TarBuilder().file("d00/lower", b"l").file("d01/lower", b"l").build()
    files = _templated(200_000, lambda i: f"d{i % 50:02d}/f{i:06d}", b"0")
    markers = (tb.TarBuilder().file("d00/.wh.lower").file("d00/.wh.f000000")
               .file("d01/.wh..wh..opq").build())
    (tmp_path / "lower.tar").write_bytes(lower)
    (tmp_path / "upper.tar").write_bytes(files + markers)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    dest = mnt / "dest"
    check = ('d="$0"; for f in d00/lower d00/f000000 d01/lower d01/f000001 d49/f199999; '
             'do test -e "$d/$f" && echo "$f"; done; find "$d" -type f | wc -l')
    cli = " ".join(f"'{a}'" for a in CLI)
    run = on_tmpfs(mnt, "size=256m", "sh", "-c",
                   f"{cli} untar --confine {mechanism} {tmp_path}/lower.tar {dest} && "
                   f"{cli} apply-layer --max-memory 48M --confine {mechanism} "
                   f"{tmp_path}/upper.tar {dest} >/dev/null && sh -c '{check}' {dest}")
    assert run.rc == 0, run.err
    out = run.proc.stdout.decode().split()
    assert out == ["d00/f000000", "d01/f000001", "d49/f199999", "200000"], out


# Hostile inputs whose state is bounded by limits of their own (per entry, dropped after
# it): parent + worker stay under 64 MiB.
BOUNDED = {
    "PAX headers of 1 MiB": lambda: b"".join(
        tb.TarBuilder().pax({"comment": "c" * ((1 << 20) - 200)}).file(f"p{i}", b"x")
        .build(eoa=False) for i in range(40)) + bytes(1024),
    "xattrs of 1 MB": lambda: b"".join(
        tb.TarBuilder().pax({f"SCHILY.xattr.user.a{j}": "v" * 4000 for j in range(250)})
        .file(f"x{i}", b"x").build(eoa=False) for i in range(40)) + bytes(1024),
    "100,000 hardlinks": lambda: tb.member("target", b"x") + _templated(
        100_000, lambda i: f"h{i:06d}", b"1", "target") + bytes(1024),
    "long names": lambda: b"".join(
        tb.TarBuilder().pax({"path": f"{i:04d}/" + "/".join(["n" * 200] * 19)})
        .file(f"n{i}", b"x").build(eoa=False) for i in range(2000)) + bytes(1024),
}


@pytest.mark.parametrize("case", sorted(BOUNDED))
def test_bounded_state_stays_under_the_memory_limit(case: str, tmp_path: Path) -> None:
    """On a tmpfs (ext4 keeps 4 KiB of xattrs and 65,000 links per inode)."""
    archive = tmp_path / "case.tar.gz"
    archive.write_bytes(gzip.compress(BOUNDED[case](), 1))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = on_tmpfs(mnt, "size=512m", "sh", "-c", '"$@" <"$0"', str(archive),
                   sys.executable, "-c", _PEAK, str(mnt / "dest"), "pivot")
    assert run.rc == 0, run.err
    seen = json.loads(run.proc.stdout)
    assert seen["error"] is None, seen
    assert seen["self"] + seen["children"] < 64 * 1024, seen  # KiB: parent + worker
