"""The compiled header parser (tarformat/_ustar.c) against its Python reference.

The reader's fast path reads most headers with ``_ustar.ustar``; ``reader._ustar_py``
holds the same rules in Python and is used where the extension was not built. They must
agree on every block: real headers of every kind and format, random mutations of them
(bytes changed, checksums fixed up so the later checks are reached), any bounds; and
whole archives must read the same through either. The extension is built by the
project's own install (setup.py, optional), and the test suite's dependencies include
the compiler, so it must be there.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chrootarchive
from chrootarchive.errors import MalformedArchiveError
from chrootarchive.tarformat import _ustar, reader
from chrootarchive.tarformat.reader import TarEntry, TarReader
from helpers.corpus import corpus_dir

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
    blocks = []
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


def _both(buf: bytes | bytearray, pos: int, end: int) -> object:
    fast = _ustar.ustar(buf, pos, end)
    assert fast == reader._ustar_py(buf, pos, end)
    return fast


def test_the_reader_uses_the_compiled_parser() -> None:
    assert reader._ustar is _ustar.ustar


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
    with pytest.raises(TypeError):
        _ustar.ustar(bytearray(BLOCK), 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _ustar.ustar("not bytes", 0, BLOCK)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _ustar.ustar(bytearray(BLOCK), "0", BLOCK)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _ustar.ustar(bytearray(BLOCK), 2**80, BLOCK)


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
    rules: an archive of many small files (the helper's) unpacks the same. With the
    compiler, the wheel holds both extensions and is tagged for the stable ABI."""
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
         "print(reader._ustar is reader._ustar_py, finisher._finish_compiled is None)",
         str(unpacked)],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.split() == ["True", "True"]
    version = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
         "from chrootarchive.cli import main; main(['--version'])", str(unpacked)],
        capture_output=True, text=True,
    )
    assert "header parser and helper loop in Python: installed without a C compiler" in (
        version.stdout)
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
    assert built == ["_finish.abi3.so", "_ustar.abi3.so"]
