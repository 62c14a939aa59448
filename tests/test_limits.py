"""Resource limits: every limit through the API and the command line, bombs, timeouts.

Crossing a limit raises LimitExceededError (exit status 1) naming the limit and the
entry, in one line without a traceback, and the work stops promptly: within about a
second, with at most one buffer (1 MiB) written past the limit.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive import LimitExceededError, Limits, UnpackOptions
from helpers import tarbuild as tb
from helpers.cli import CLI, CLIResult, assert_one_line_error, run_cli
from helpers.hardening import (
    GiB,
    MiB,
    TmpfsRun,
    Trickler,
    chunks,
    gzip_bomb,
    many_files,
    on_tmpfs,
)
from helpers.leaks import LeakCheck
from helpers.mechanisms import variants

DOCS = Path(__file__).resolve().parents[1] / "docs" / "security.md"
SRC = Path(__file__).resolve().parents[1] / "src"


def B() -> tb.TarBuilder:
    return tb.TarBuilder()


# One case per limit: (archive, Limits, CLI flags, offending entry, entries before it).
CASES: dict[str, tuple[Callable[[], bytes], Limits, list[str], str, list[str]]] = {
    "max_bytes": (
        lambda: B().file("a", b"x" * 3000).file("b", b"y" * 3000).file("c", b"z").build(),
        Limits(max_bytes=5000), ["--max-bytes", "5000"], "b", ["a"],
    ),
    "max_entries": (
        lambda: B().file("a").file("b").file("c").file("d").build(),
        Limits(max_entries=2), ["--max-entries", "2"], "c", ["a", "b"],
    ),
    "max_file_size": (
        lambda: B().file("small", b"x" * 10).file("big", b"y" * 3000).build(),
        Limits(max_file_size=1000), ["--max-file-size", "1000"], "big", ["small"],
    ),
    "max_path_length": (
        lambda: B().file("a" * 90).file("d/" + "b" * 200).build(),
        Limits(max_path_length=100), ["--max-path-length", "100"], "d/" + "b" * 200,
        ["a" * 90],
    ),
    "max_path_depth": (
        lambda: B().file("a/b/c/d").file("a/b/c/d2/e/f").build(),
        Limits(max_path_depth=4), ["--max-path-depth", "4"], "a/b/c/d2/e/f", ["a/b/c/d"],
    ),
    "max_xattr_bytes": (
        lambda: B().pax({"SCHILY.xattr.user.small": "v" * 100}).file("ok", b"1")
        .pax({"SCHILY.xattr.user.big": "v" * 3000}).file("fat", b"1").build(),
        Limits(max_xattr_bytes=1000), ["--max-xattr-bytes", "1000"], "fat", ["ok"],
    ),
}


@pytest.mark.parametrize("limit", sorted(CASES))
def test_limit_api(mechanism: str, limit: str, tmp_path: Path) -> None:
    build, limits, _flags, entry, before = CASES[limit]
    dest = tmp_path / "dest"
    with pytest.raises(LimitExceededError) as info:
        chrootarchive.untar(io.BytesIO(build()), dest,
                            UnpackOptions(confine=mechanism, limits=limits))
    err = info.value
    assert limit in err.message, err
    assert err.entry == entry, err
    assert err.exit_status == 1
    for name in before:
        assert (dest / name).exists(), f"{name} (before the limit) is missing"
    if limit == "max_bytes":  # stopped while writing it: what is there stays below
        assert _bytes_on_disk(dest)[0] <= 5000
    else:  # refused before anything of it was made
        assert not (dest / entry).exists(), "the offending entry was written"


@pytest.mark.parametrize("limit", sorted(CASES))
def test_limit_cli(limit: str, tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    build, _limits, flags, entry, _before = CASES[limit]
    archive = write_archive(tb.compress(build(), "gzip"), ".tar.gz")
    result = run_cli("untar", *flags, archive, tmp_path / "dest")
    line = assert_one_line_error(result, rc=1, mentions=("limit --" + limit.replace("_", "-"),))
    # A long entry is shortened in the middle (errors.printable): both ends are shown.
    assert entry in line or (entry[:40] in line and entry[-40:] in line), line


def test_limits_none_means_unlimited(mechanism: str, tmp_path: Path) -> None:
    unlimited = Limits(**{f.name: None for f in dataclasses.fields(Limits)})
    data = B().file("a/b/c/" + "n" * 150, b"x" * 5000).build()
    r = chrootarchive.untar(io.BytesIO(data), tmp_path / "d",
                            UnpackOptions(confine=mechanism, limits=unlimited))
    assert r.entries == 1


def test_limit_exactly_reached_is_allowed(mechanism: str, tmp_path: Path) -> None:
    data = B().file("a", b"x" * 3000).file("b", b"y" * 2000).file("c").build()
    limits = Limits(max_bytes=5000, max_entries=3, max_file_size=3000, max_path_depth=1,
                    max_path_length=1)
    r = chrootarchive.untar(io.BytesIO(data), tmp_path / "d",
                            UnpackOptions(confine=mechanism, limits=limits))
    assert r.entries == 3


def test_limit_value_is_printed_exactly(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    """The message gives the limit as a number a user can read back (not 1.04858e+07)."""
    archive = write_archive(B().file("big", bytes(3 * MiB)).build())
    result = run_cli("untar", "--max-bytes", "2M", archive, tmp_path / "d2")
    line = assert_one_line_error(result, rc=1, mentions=("limit --max-bytes", "big"))
    assert not re.search(r"\de[+-]\d", line), f"limit printed in scientific notation: {line}"
    plain = line.replace(",", "").replace("_", "")
    assert "2097152" in plain or "2M" in plain or "2 MiB" in plain, line


def test_max_bytes_counts_all_files(mechanism: str, tmp_path: Path) -> None:
    """Many small files (written without the writer thread) add up."""
    data = many_files(200, b"z" * 1000)
    with pytest.raises(LimitExceededError) as info:
        chrootarchive.untar(io.BytesIO(data), tmp_path / "d",
                            UnpackOptions(confine=mechanism, limits=Limits(max_bytes=50_000)))
    assert info.value.entry == "f000050"


def _gnu_sparse_1_0(name: str, realsize: int, data: bytes) -> bytes:
    """A PAX GNU sparse 1.0 file: ``data`` at the very end of ``realsize`` bytes."""
    offset = realsize - len(data)
    sparse_map = tb.pad(f"1\n{offset}\n{len(data)}\n".encode())
    body = sparse_map + data
    return (
        B()
        .pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
              "GNU.sparse.realsize": str(realsize)})
        .file("GNUSparseFile.0/" + name, body)
        .build()
    )


def test_max_bytes_does_not_count_sparse_holes(mechanism: str, tmp_path: Path) -> None:
    data = _gnu_sparse_1_0("sparse", GiB, b"end" * 1000)
    dest = tmp_path / "d"
    chrootarchive.untar(io.BytesIO(data), dest,
                        UnpackOptions(confine=mechanism, limits=Limits(max_bytes=MiB)))
    st = os.stat(dest / "sparse")
    assert st.st_size == GiB
    assert st.st_blocks * 512 < 10 * MiB


# -- bombs -----------------------------------------------------------------------------


def _bytes_on_disk(root: Path) -> tuple[int, int]:
    """(sum of file sizes, sum of allocated bytes) below ``root``."""
    size = allocated = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            size += st.st_size
            allocated += st.st_blocks * 512
    return size, allocated


BOMB_SIZE = 6 * GiB  # 6 MiB of gzip; more than Limits.strict() allows for one file
BOMB_LIMIT = 16 * MiB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.tar.gz"
    path.write_bytes(gzip_bomb(BOMB_SIZE))
    assert path.stat().st_size < BOMB_SIZE // 1000
    return path


def test_gzip_bomb_stopped_by_max_bytes_cli(bomb: Path, tmp_path: Path) -> None:
    """6 MiB of gzip that inflate to 6 GiB of zeros, fed through a pipe: stopped at the
    limit, at once, without reading (and inflating) the rest of its input."""
    dest = tmp_path / "dest"
    check = LeakCheck(tmp_path)
    errors = tmp_path / "stderr"
    data = bomb.read_bytes()
    with open(errors, "wb") as err_file:
        proc = subprocess.Popen([*CLI, "untar", "--max-bytes", str(BOMB_LIMIT), "-", str(dest)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=err_file)
    assert proc.stdin is not None
    stdin = os.dup(proc.stdin.fileno())  # the feeder closes it at the end of the bomb
    proc.stdin.close()
    feeder = Trickler(stdin, chunks(data, 64 << 10), 0)
    start = time.monotonic()
    feeder.start()
    try:
        rc = proc.wait(120)
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
        feeder.stop.set()
        feeder.join()
    result = CLIResult((rc, "", errors.read_text()))
    assert_one_line_error(result, rc=1, mentions=("limit --max-bytes", "zeros"))
    size, allocated = _bytes_on_disk(dest)
    assert size <= BOMB_LIMIT + MiB, size
    assert allocated <= BOMB_LIMIT + MiB, allocated
    assert feeder.written < len(data) // 2, (
        f"the command read {feeder.written} of {len(data)} bytes of a bomb it had stopped "
        f"after about {BOMB_LIMIT * len(data) // BOMB_SIZE}")
    assert elapsed < 5, f"the bomb was not stopped promptly: {elapsed:.1f}s"
    check.assert_clean()


def test_gzip_bomb_stopped_by_max_bytes_api(mechanism: str, bomb: Path, tmp_path: Path) -> None:
    """Stopping means stopping: once the limit is crossed, the rest of the source is not
    read (and inflated) any more."""
    dest = tmp_path / "dest"
    read: list[int] = []
    start = time.monotonic()
    with pytest.raises(LimitExceededError) as info:
        chrootarchive.untar(bomb, dest,
                            UnpackOptions(confine=mechanism, limits=Limits(max_bytes=BOMB_LIMIT)),
                            progress=read.append)
    elapsed = time.monotonic() - start
    assert info.value.entry == "zeros"
    assert _bytes_on_disk(dest)[0] <= BOMB_LIMIT + MiB
    size = bomb.stat().st_size
    assert sum(read) < size // 4, (
        f"{sum(read)} of {size} compressed bytes were read after the limit "
        f"({BOMB_LIMIT} bytes, about {BOMB_LIMIT * size // BOMB_SIZE} compressed) was crossed")
    assert elapsed < 5, f"the bomb was not stopped promptly: {elapsed:.1f}s"


@pytest.fixture
def huge_header(write_archive: Callable[..., Path]) -> Path:
    """A gzip'd tar whose first header declares a 6 GiB file (only 1 MiB follows)."""
    data = tb.header("zeros", size=BOMB_SIZE) + bytes(MiB)
    return write_archive(tb.compress(data, "gzip"), ".tar.gz")


def test_max_file_size_checked_before_writing(huge_header: Path, tmp_path: Path) -> None:
    """The declared size is checked before a byte is written."""
    dest = tmp_path / "dest"
    result = run_cli("untar", "--max-file-size", "1G", huge_header, dest)
    assert_one_line_error(result, rc=1, mentions=("limit --max-file-size", "zeros"))
    assert not (dest / "zeros").exists()


def test_strict_limits_refuse_a_huge_file(huge_header: Path, tmp_path: Path) -> None:
    """--strict-limits (4 GiB per file) refuses a 6 GiB file from its header."""
    result = run_cli("untar", "--strict-limits", huge_header, tmp_path / "dest")
    assert_one_line_error(result, rc=1, mentions=("limit --max-file-size", "zeros"))
    assert not (tmp_path / "dest" / "zeros").exists()


def test_hundred_thousand_files_stopped_by_max_entries(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    archive = write_archive(gzip.compress(many_files(100_000), compresslevel=1, mtime=0),
                            ".tar.gz")
    dest = tmp_path / "dest"
    start = time.monotonic()
    result = run_cli("untar", "--max-entries", "1000", archive, dest, timeout=120)
    elapsed = time.monotonic() - start
    assert_one_line_error(result, rc=1, mentions=("limit --max-entries", "f001000"))
    assert elapsed < 5, f"not stopped promptly: {elapsed:.1f}s"
    assert len(os.listdir(dest)) == 1000


def test_deep_path_made_of_implied_directories(mechanism: str, tmp_path: Path) -> None:
    name = "/".join(["d"] * 70) + "/f"
    with pytest.raises(LimitExceededError) as info:
        chrootarchive.untar(io.BytesIO(B().file(name, b"x").build()), tmp_path / "d",
                            UnpackOptions(confine=mechanism, limits=Limits.strict()))
    assert "max_path_depth" in info.value.message
    assert not (tmp_path / "d" / "d").exists()


def test_path_length_counts_bytes_not_characters(mechanism: str, tmp_path: Path) -> None:
    name = "é" * 60  # 60 characters, 120 bytes
    with pytest.raises(LimitExceededError) as info:
        chrootarchive.untar(io.BytesIO(B().file(name, b"x").build()), tmp_path / "d",
                            UnpackOptions(confine=mechanism, limits=Limits(max_path_length=100)))
    assert "max_path_length" in info.value.message


# -- time --------------------------------------------------------------------------------


def test_timeout_cli_with_trickling_pipe(tmp_path: Path) -> None:
    """Input that trickles in (50 bytes every 0.1 s, for 20 s): --timeout 1 stops the
    whole command within about a second of the timeout, not when the input ends."""
    dest = tmp_path / "dest"
    errors = tmp_path / "stderr"
    with open(errors, "wb") as err_file:
        proc = subprocess.Popen([*CLI, "untar", "--timeout", "1", "-", str(dest)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=err_file)
    assert proc.stdin is not None
    data = B().file("slow", b"s" * 20_000).build()
    feeder = Trickler(proc.stdin.fileno(), chunks(data, 50), 0.1, keep_open=True)
    start = time.monotonic()
    feeder.start()
    try:
        try:
            proc.wait(timeout=4)
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - start
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        feeder.stop.set()
        feeder.join()
        proc.stdin.close()
    assert not still_running, (
        f"the command still ran {elapsed:.1f}s after it started with --timeout 1 "
        "(its input was still trickling in)")
    out, err = b"", errors.read_bytes()
    result = CLIResult((proc.returncode, out.decode(), err.decode()))
    assert_one_line_error(result, rc=1, mentions=("timeout",))
    assert elapsed < 2.5, f"the command ran {elapsed:.1f}s with --timeout 1"
    assert not feeder.broken or feeder.written < len(data)


class _SlowSource(io.RawIOBase):
    """A file object that gives ``piece`` bytes every ``delay`` seconds."""

    def __init__(self, data: bytes, piece: int, delay: float) -> None:
        self.data = data
        self.pos = 0
        self.piece = piece
        self.delay = delay

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        time.sleep(self.delay)
        out = self.data[self.pos : self.pos + self.piece]
        self.pos += len(out)
        return out


def test_timeout_api_slow_source(mechanism: str, tmp_path: Path) -> None:
    data = many_files(2000, b"y" * 100)
    source = _SlowSource(data, 16 * 1024, 0.05)  # about 6 s of input
    start = time.monotonic()
    with pytest.raises(LimitExceededError) as info:
        # A raw stream, not a BinaryIO: untar reads any object with read().
        chrootarchive.untar(source, tmp_path / "d",
                            UnpackOptions(confine=mechanism, limits=Limits(timeout=0.5)))
    elapsed = time.monotonic() - start
    assert "timeout" in info.value.message
    assert elapsed < 2.0, f"stopped after {elapsed:.1f}s with a 0.5 s timeout"


def test_timeout_not_reached(mechanism: str, tmp_path: Path) -> None:
    data = B().file("a", b"x").build()
    r = chrootarchive.untar(io.BytesIO(data), tmp_path / "d",
                            UnpackOptions(confine=mechanism, limits=Limits(timeout=30)))
    assert r.entries == 1


# -- documented defaults ---------------------------------------------------------------


FLAGS = {
    "max_bytes": "--max-bytes", "max_entries": "--max-entries",
    "max_file_size": "--max-file-size", "max_path_length": "--max-path-length",
    "max_path_depth": "--max-path-depth", "max_xattr_bytes": "--max-xattr-bytes",
    "max_memory": "--max-memory", "reserve": "--reserve", "timeout": "--timeout",
}


def _human(value: int | float | None) -> set[str]:
    """Spellings of a default that --help may use."""
    if value is None:
        return {"none"}
    out = {str(value), f"{value:,}", f"{value:g}"}
    for suffix, unit in (("T", 1 << 40), ("G", GiB), ("M", MiB), ("K", 1 << 10)):
        if isinstance(value, int) and value >= unit and value % unit == 0:
            out.add(f"{value // unit}{suffix}")
            break
    return out


def _help_for(flag: str, text: str) -> str:
    """The help paragraph of ``flag`` in argparse's output (joined into one line)."""
    match = re.search(rf"^\s+{re.escape(flag)}\b.*?(?=^\s+--|\Z)", text, re.M | re.S)
    assert match, f"{flag} not in --help"
    return " ".join(match.group(0).split())


@pytest.fixture(scope="module")
def untar_help() -> str:
    proc = subprocess.run([*CLI, "untar", "--help"], capture_output=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0
    return proc.stdout.decode()


def test_every_limit_has_a_flag_and_a_documented_default(untar_help: str) -> None:
    defaults = Limits()
    doc = Limits.__doc__ or ""
    assert set(FLAGS) == {f.name for f in dataclasses.fields(Limits)}
    for name, flag in FLAGS.items():
        assert f"{name}:" in doc, f"{name} not described in Limits' docstring"
        text = _help_for(flag, untar_help)
        spelled = text.split("default")[-1]
        assert "default" in text, f"{flag} does not give its default"
        assert any(re.search(rf"(?<![\w.,]){re.escape(s)}(?![\w,])", spelled)
                   for s in _human(getattr(defaults, name))), (
            f"{flag}: help says {text!r}, Limits() has {getattr(defaults, name)!r}")


def test_max_path_depth_counts_components_as_its_help_says(
        untar_help: str, tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    """``a/b/c`` is 3 components (2 directories): ``--max-path-depth 3`` takes it, 2
    does not; ``--help`` said "directories in a name", one fewer than what is counted."""
    archive = write_archive(tb.TarBuilder().file("a/b/c", b"1").build())
    assert run_cli("untar", "--max-path-depth", "3", archive, tmp_path / "ok").rc == 0
    line = assert_one_line_error(
        run_cli("untar", "--max-path-depth", "2", archive, tmp_path / "no"), rc=1)
    assert "limit --max-path-depth (2 components) exceeded" in line
    assert _help_for("--max-path-depth", untar_help).startswith(
        "--max-path-depth N components in a name")


def test_strict_limits_documented_as_they_are(untar_help: str) -> None:
    strict = Limits.strict()
    doc = " ".join((Limits.strict.__doc__ or "").split())
    help_text = _help_for("--strict-limits", untar_help)
    assert strict.max_bytes == 4 * GiB and "4 GiB" in doc and "4G" in help_text
    assert strict.max_entries == 100_000 and "100k" in doc and "100,000" in help_text
    assert strict.timeout == 3600 and "1 hour" in doc and "1 hour" in help_text


def test_cli_strict_limits_can_be_loosened(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    archive = write_archive(B().file("/".join(["d"] * 70) + "/f", b"x").build())
    result = run_cli("untar", "--strict-limits", archive, tmp_path / "a")
    assert_one_line_error(result, rc=1, mentions=("limit --max-path-depth",))
    result = run_cli("untar", "--strict-limits", "--max-path-depth", "100", archive,
                     tmp_path / "b")
    assert result.rc == 0, result.err


def test_security_doc_lists_the_defaults() -> None:
    text = DOCS.read_text()
    defaults = Limits()
    for name in FLAGS:
        rows = [line for line in text.splitlines() if f"`{name}`" in line and "|" in line]
        assert rows, f"{name} has no row in the limits table of docs/security.md"
        assert any(s in rows[0] for s in _human(getattr(defaults, name))), rows[0]


def test_bad_limit_values_are_usage_errors(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    archive = write_archive(B().file("a").build())
    for args in (["--max-bytes", "lots"], ["--max-entries", "-1"], ["--timeout", "soon"],
                 ["--max-bytes", "nan"], ["--max-bytes", "inf"], ["--max-file-size", "1e400"]):
        result = run_cli("untar", *args, archive, tmp_path / "d")
        assert result.rc == 2, (args, result)
        assert "Traceback" not in result.err


def test_cli_limit_error_has_no_traceback_even_from_stdin(tmp_path: Path) -> None:
    data = tb.compress(many_files(10), "zstd")
    result = run_cli("untar", "--max-entries", "3", "-", tmp_path / "d", input=data)
    assert_one_line_error(result, rc=1, mentions=("limit --max-entries", "f000003"))


# -- the destination filesystem's reserve (Limits.reserve) -----------------------------
#
# Each runs the command line with a small tmpfs mounted on the destination's parent, in a
# private mount namespace of a child process (helpers.hardening.on_tmpfs).

RESERVE_MECHANISMS = variants(slow_beyond=("pivot",))


def zstd_bomb(size: int, name: str = "zeros") -> bytes:
    """A ``.tar.zst`` of one file of ``size`` zero bytes (about 32 KB per GiB)."""
    import zstandard

    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as writer:
        writer.write(tb.header(name, size=size))
        zeros = bytes(MiB)
        for _ in range(size // MiB):
            writer.write(zeros)
        writer.write(bytes(1024))
    return out.getvalue()


def _reserve_error(run: TmpfsRun, entry: str, *more: str) -> str:
    result = CLIResult((run.rc, run.proc.stdout.decode(), run.err))
    return assert_one_line_error(result, rc=1,
                                 mentions=("limit --reserve", "change --reserve", entry, *more))


@pytest.mark.parametrize("mechanism", RESERVE_MECHANISMS, indirect=True)
def test_reserve_stops_a_zstd_bomb_before_the_filesystem_fills(
        mechanism: str, tmp_path: Path) -> None:
    """A 1 GiB file of zeros in 33 KB of zstd, into a 256 MiB filesystem: the default
    reserve (5%: 12.8 MiB) stops it with a limit error naming the entry, the filesystem
    nearly used up to the reserve and never full."""
    archive = tmp_path / "bomb.tar.zst"
    archive.write_bytes(zstd_bomb(GiB))
    assert archive.stat().st_size < 100_000
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = on_tmpfs(mnt, "size=256m", *CLI, "untar", "--confine", mechanism, str(archive),
                   str(mnt / "dest"))
    _reserve_error(run, "zeros")
    reserve = run.size // 20
    assert reserve <= run.avail < reserve + 16 * MiB, (run.avail, reserve)
    assert run.seconds < 20, run.seconds


def test_without_a_reserve_the_bomb_fills_the_filesystem(tmp_path: Path) -> None:
    """What the reserve prevents: ``--reserve 0`` writes until "no space left"."""
    archive = tmp_path / "bomb.tar.zst"
    archive.write_bytes(zstd_bomb(512 * MiB))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = on_tmpfs(mnt, "size=64m", *CLI, "untar", "--reserve", "0", str(archive),
                   str(mnt / "dest"))
    result = CLIResult((run.rc, "", run.err))
    assert_one_line_error(result, rc=4, mentions=("no space left", "zeros"))
    assert run.avail == 0


@pytest.mark.parametrize("mechanism", RESERVE_MECHANISMS, indirect=True)
def test_reserve_stops_an_inode_bomb(mechanism: str, tmp_path: Path,
                                     write_archive: Callable[..., Path]) -> None:
    """5,000 empty files into a filesystem of 2,000 inodes: the reserve (5%: 100 inodes)
    stops them before the filesystem runs out of inodes; without it, it does."""
    archive = write_archive(many_files(5000, b""))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = on_tmpfs(mnt, "size=64m,nr_inodes=2000", *CLI, "untar", "--confine", mechanism,
                   str(archive), str(mnt / "dest"))
    _reserve_error(run, "f00", "inodes")
    assert 100 <= run.ffree < 100 + 600, run.ffree  # used up to the reserve, not past it
    run = on_tmpfs(mnt, "size=64m,nr_inodes=2000", *CLI, "untar", "--reserve", "0",
                   "--confine", mechanism, str(archive), str(mnt / "dest"))
    assert_one_line_error(CLIResult((run.rc, "", run.err)), rc=4, mentions=("no space left",))
    assert run.ffree == 0


def test_reserve_stops_many_small_files(tmp_path: Path) -> None:
    """10,000 files of 8 KiB (80 MiB) into 32 MiB: small files go through the entry
    count (and the helper process that finishes them), not one large charge."""
    archive = tmp_path / "many.tar.zst"
    archive.write_bytes(tb.compress(many_files(10_000, b"x" * 8192), "zstd"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = on_tmpfs(mnt, "size=32m", *CLI, "untar", str(archive), str(mnt / "dest"))
    _reserve_error(run, "f0")
    reserve = run.size // 20
    assert reserve <= run.avail < run.size // 2, (run.avail, reserve)


def test_reserve_option_and_api(tmp_path: Path) -> None:
    """``--reserve 50`` keeps half of a 64 MiB filesystem: a 40 MiB file that the default
    lets through is refused; through the API, ``Limits(reserve=50)`` is the same
    LimitExceededError (exit status 1) naming the entry."""
    archive = tmp_path / "big.tar.zst"
    archive.write_bytes(zstd_bomb(40 * MiB, "big"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = on_tmpfs(mnt, "size=64m", *CLI, "untar", str(archive), str(mnt / "dest"))
    assert run.rc == 0, run.err
    run = on_tmpfs(mnt, "size=64m", *CLI, "untar", "--reserve", "50%", str(archive),
                   str(mnt / "dest"))
    _reserve_error(run, "big", "50%")
    code = ("import sys, chrootarchive\n"
            "from chrootarchive import Limits, UnpackOptions\n"
            "try:\n"
            "    chrootarchive.untar(sys.argv[1], sys.argv[2],"
            " UnpackOptions(limits=Limits(reserve=50)))\n"
            "except chrootarchive.LimitExceededError as e:\n"
            "    print(e.exit_status, e.entry, sep='|', file=sys.stderr)\n")
    run = on_tmpfs(mnt, "size=64m", CLI[0], "-c", code, str(archive), str(mnt / "dest"))
    assert run.err.strip() == "1|big", run.err


@pytest.mark.slow
def test_many_directories_fit_the_default_memory_limit(tmp_path: Path) -> None:
    """160,000 directories, far below the default entry limit: unpacked with the
    default limits. The directories whose mode and times were set were kept as a set of
    tuples (115 bytes each), and the run failed at its very end with "limit max_memory
    exceeded" and a MemoryError's traceback (fuzzing, issue 16, twentieth round)."""
    archive = tmp_path / "dirs.tar"
    with archive.open("wb") as out:
        for i in range(160_000):
            out.write(tb.header(f"d{i // 1000}/s{i}/", typeflag=tb.DIR, mode=0o755))
        out.write(bytes(1024))
    result = run_cli("untar", archive, tmp_path / "dest", timeout=300)
    assert result.rc == 0 and result.err == "", result
    assert len(os.listdir(tmp_path / "dest" / "d159")) == 1000


# Data that nothing writes (a whiteout's, an excluded or kept file's, a GNU dumpdir's,
# what follows the end of the archive) is read all the same: counted as file data
# against max_bytes, and in a stream beyond unpacker.PASS_FLOOR (1 GiB) against the
# reserve as if written. Before, none of it counted: --max-bytes 1G let a layer's
# whiteout carry 2 GiB, and 1 MB of bzip2 after the end of an archive held 1 TiB of
# zeros that untar read for two hours.

def _unwritten_data(how: str, size: int) -> bytes:
    """A small archive whose entry ``big`` (or ``.wh.big``) carries ``size`` bytes that
    are not written, ``how`` the unpacker leaves them out."""
    big = tb.header(".wh.big" if how == "whiteout" else "big", size=size,
                    typeflag=b"D" if how == "dumpdir" else tb.REG)
    pad = bytes(-size % tb.BLOCK)
    return (tb.member("a", b"1") + big + bytes(size) + pad + tb.member("z", b"2")
            + tb.end_of_archive())


@pytest.mark.parametrize("how", ["whiteout", "excluded", "dumpdir", "kept"])
def test_data_nothing_writes_counts_against_max_bytes(
        how: str, tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    archive = write_archive(_unwritten_data(how, 2 * MiB))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "big").write_bytes(b"old")
    options = UnpackOptions(limits=Limits(max_bytes=MiB),
                            excludes=("big",) * (how == "excluded"),
                            old_files="skip" if how == "kept" else "replace")
    unpack = chrootarchive.apply_layer if how == "whiteout" else chrootarchive.untar
    with pytest.raises(LimitExceededError) as info:
        unpack(archive, dest, options)
    assert info.value.entry == (".wh.big" if how == "whiteout" else "big")
    assert "max_bytes" in str(info.value)
    assert not (dest / "z").exists()
    # Within the limit, the same archive unpacks: the data counts, it is not written.
    options = dataclasses.replace(options, limits=Limits(max_bytes=3 * MiB))
    unpack(archive, dest, options)
    assert (dest / "z").read_bytes() == b"2"
    assert (dest / "big").exists() == (how != "whiteout")


def zstd_zeros(head: bytes, size: int) -> bytes:
    """``head`` and then ``size`` zero bytes, in zstd (about 32 KB per GiB)."""
    import zstandard

    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as writer:
        writer.write(head)
        zeros = bytes(MiB)
        for _ in range(size // MiB):
            writer.write(zeros)
    return out.getvalue()


@pytest.mark.parametrize("how", ["trailing", "whiteout"])
def test_data_read_through_in_a_stream_is_bounded_by_the_reserve(
        how: str, tmp_path: Path) -> None:
    """2 GiB of zeros in 64 KB of zstd, into a 64 MiB filesystem: after the end of the
    archive (untar), or as a whiteout's data (apply-layer). Nothing is written, but
    reading it is what a bomb costs (1 TiB in 1 MB of bzip2: two hours): beyond 1 GiB
    it must fit the filesystem as if written, and the reserve stops it."""
    head = tb.member("a", b"1") + (
        tb.end_of_archive() if how == "trailing" else tb.header(".wh.big", size=2 * GiB))
    data = zstd_zeros(head, 2 * GiB) + zstd_zeros(tb.end_of_archive(), 0)
    archive = tmp_path / "bomb.tar.zst"
    archive.write_bytes(data)
    assert archive.stat().st_size < 100_000
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    command = "untar" if how == "trailing" else "apply-layer"
    run = on_tmpfs(mnt, "size=64m", *CLI, command, str(archive), str(mnt / "dest"))
    result = CLIResult((run.rc, run.proc.stdout.decode(), run.err))
    line = assert_one_line_error(result, rc=1, mentions=("limit --reserve",))
    if how == "trailing":
        assert "follow the end of the archive" in line, line
    else:
        assert ".wh.big" in line, line
    assert run.seconds < 15, run.seconds


def test_extended_headers_beyond_an_entrys_own_count_as_entries(
        write_archive: Callable[..., Path], tmp_path: Path) -> None:
    """20 files, each after 10 global headers: 7 of each 10 are more than an entry
    needs, and count against max_entries (reading them costs what an entry's header
    does: a stream of them was unbounded by any limit)."""
    glob = tb.pax_global({"comment": "x"})
    archive = write_archive(b"".join(glob * 10 + tb.member(f"f{i}", b"1") for i in range(20))
                            + tb.end_of_archive())
    with pytest.raises(LimitExceededError) as info:
        chrootarchive.untar(archive, tmp_path / "dest",
                            UnpackOptions(limits=Limits(max_entries=100)))
    assert "max_entries" in str(info.value)
    assert info.value.entry is not None and info.value.entry.startswith("f")
    result = chrootarchive.untar(archive, tmp_path / "dest2",
                                 UnpackOptions(limits=Limits(max_entries=200)))
    assert result.entries == 20
    with pytest.raises(LimitExceededError, match="max_entries"):  # listing them too
        list(chrootarchive.list_entries(archive, limits=Limits(max_entries=100)))
    assert len(list(chrootarchive.list_entries(archive, limits=Limits(max_entries=200)))) == 20


def test_reserve_counts_xattrs(tmp_path: Path) -> None:
    """300 entries, each with 16 xattrs of 60,000 bytes (28 KB of zstd), into a tmpfs of
    50,000 inodes: tmpfs takes an inode for each KiB of xattrs (Linux 6.6 on), and they
    used its inodes up ("no space left", 38 free), as the reserve counted entries and
    data, not xattrs. Now the reserve (5%: 2,500 inodes) stops them, naming the entry."""
    import zstandard

    xattrs = {f"SCHILY.xattr.trusted.k{i}": "v" * 60_000 for i in range(16)}
    data = b"".join(tb.pax_header(xattrs) + tb.member(f"f{i}") for i in range(300))
    archive = tmp_path / "xattrs.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(data + tb.end_of_archive()))
    assert archive.stat().st_size < 100_000
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = on_tmpfs(mnt, "size=64m,nr_inodes=50000", *CLI, "untar", str(archive),
                   str(mnt / "dest"))
    if run.rc == 0:
        pytest.skip("this kernel's tmpfs does not count xattrs against its inodes")
    _reserve_error(run, "inodes")
    assert "no space left" not in run.err.lower(), run.err
    assert run.ffree >= 2500, run.ffree
    assert run.seconds < 15, run.seconds


# -- listing (list_entries, ``chrootarchive list``) --------------------------------------


@pytest.mark.parametrize("limit", sorted(CASES))
def test_list_limit_api(limit: str) -> None:
    """Listing holds the limits an unpack does: the entries before are listed, the
    offending one is refused, named."""
    build, limits, _flags, entry, before = CASES[limit]
    listed = []
    with pytest.raises(LimitExceededError) as info:
        for item in chrootarchive.list_entries(io.BytesIO(build()), limits=limits):
            listed.append(item.name)
    assert limit in info.value.message and info.value.entry == entry, info.value
    assert listed == before


@pytest.mark.parametrize("limit", sorted(CASES))
def test_list_limit_cli(limit: str, write_archive: Callable[..., Path]) -> None:
    build, _limits, flags, entry, before = CASES[limit]
    archive = write_archive(tb.compress(build(), "gzip"), ".tar.gz")
    result = run_cli("list", *flags, archive)
    line = assert_one_line_error(result, rc=1, mentions=("limit --" + limit.replace("_", "-"),))
    assert entry in line or (entry[:40] in line and entry[-40:] in line), line
    assert result.out.splitlines() == before


def _bzip2_zeros(size: int) -> bytes:
    """bzip2 streams (concatenated, as ``bzip2`` reads them) of ``size`` zero bytes, a
    multiple of 64 MiB: 79 bytes each, 1.3 MB a TiB."""
    import bz2

    assert size % (64 * MiB) == 0
    return bz2.compress(bytes(64 * MiB)) * (size // (64 * MiB))


def _bzip2_bomb(*sizes: int) -> bytes:
    """A ``.tar.bz2`` of a small file, then files of ``sizes`` zero bytes each."""
    import bz2

    out = [bz2.compress(tb.member("small", b"hi"))]
    for i, size in enumerate(sizes):
        out.append(bz2.compress(tb.header(f"zeros{i}", size=tb.base256(size, 12))))
        out.append(_bzip2_zeros(size))
    out.append(bz2.compress(tb.end_of_archive()))
    return b"".join(out)


_LIST_PEAK = """
import json, resource, sys, time
import chrootarchive
start = time.monotonic()
names, error = [], None
try:
    for entry in chrootarchive.list_entries(sys.argv[1]):
        names.append(entry.name)
except chrootarchive.LimitExceededError as err:
    error = [err.message, err.entry]
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"names": names, "error": error, "seconds": time.monotonic() - start,
                  "kib": int(hwm[0].split()[1])}))
"""


def test_list_bomb_is_refused_at_its_header_with_the_defaults(tmp_path: Path) -> None:
    """1.3 MB of bzip2 declaring a 1 TiB file of zeros: listing decompressed it all to
    reach the next header (about an hour, as GNU tar does); with the default limits it
    is refused at its header, in well under a second and in bounded memory."""
    archive = tmp_path / "bomb.tar.bz2"
    archive.write_bytes(_bzip2_bomb(1 << 40))
    assert archive.stat().st_size < 2_000_000
    proc = subprocess.run([sys.executable, "-c", _LIST_PEAK, str(archive)], capture_output=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(proc.stdout)
    assert seen["names"] == ["small"], seen
    assert seen["error"][1] == "zeros0" and "limit max_file_size" in seen["error"][0], seen
    assert seen["seconds"] < 5, seen
    assert seen["kib"] < 64 * 1024, seen


def test_list_max_bytes_counts_the_stream_read(write_archive: Callable[..., Path]) -> None:
    """Files under max_file_size add up: 1 GiB is read through, the next file (100 GiB
    of zeros, 100 KB of bzip2) would cross --max-bytes and is refused at its header."""
    archive = write_archive(_bzip2_bomb(GiB, 100 * GiB), ".tar.bz2")
    start = time.monotonic()
    result = run_cli("list", "--max-bytes", "2G", archive, timeout=120)
    seconds = time.monotonic() - start
    assert_one_line_error(result, rc=1, mentions=("limit --max-bytes", "zeros1"))
    assert result.out.splitlines() == ["small", "zeros0"]
    assert seconds < 30, seconds


def test_list_timeout_stops_inside_an_entrys_data(tmp_path: Path) -> None:
    """200 GiB of zeros in one file (under the default max_file_size): --timeout stops
    the listing while it reads through them, not after."""
    data = _bzip2_bomb(200 * GiB)
    start = time.monotonic()
    result = run_cli("list", "--timeout", "1", "-", input=data, timeout=120)
    seconds = time.monotonic() - start
    assert_one_line_error(result, rc=1, mentions=("limit --timeout (1 seconds) exceeded",))
    assert result.out.splitlines() == ["small", "zeros0"]
    assert seconds < 10, seconds


def test_list_honest_large_archive_with_the_defaults(
        write_archive: Callable[..., Path]) -> None:
    """4 GiB of data (zstd) and 20,000 entries list with the default limits."""
    import zstandard

    frame = zstandard.ZstdCompressor(level=1).compress(bytes(64 * MiB))
    comp = zstandard.ZstdCompressor(level=1)
    many = many_files(20_000)[: -2 * 512]  # without its end of archive
    data = (comp.compress(many + tb.header("big", size=4 * GiB)) + frame * 64
            + comp.compress(tb.member("last", b"1") + tb.end_of_archive()))
    archive = write_archive(data, ".tar.zst")
    result = run_cli("list", archive, timeout=120)
    assert result.rc == 0 and result.err == "", result
    names = result.out.splitlines()
    assert len(names) == 20_002 and names[-2:] == ["big", "last"]
