"""Conformance against Go's archive/tar test corpus (shared/corpus/go-archive-tar).

Well-formed archives: ``chrootarchive untar`` must give the same tree as GNU tar run
as root (``tar --numeric-owner --xattrs --xattrs-include='*' -xpf FILE -C DIR``):
names, types, modes (setuid bits included), owners, sizes, contents, link targets,
hardlink groups, device numbers, xattrs and mtimes.

How the comparison treats times that the archive does not carry:

- The destination root's own mtime is not compared unless the archive has an entry
  for the root (``./``): otherwise it is only the time at which entries were added,
  by either tool. ``test_root_entry_sets_root_metadata`` covers the other case.
- Directories the archive does not list (implied parents) get "now" as their mtime
  from either tool: a reference directory whose mtime is not older than the start of
  the test is such a directory, and its mtime is not compared (its mode, owner and
  everything else are).

Deviations from "same as GNU tar", each where GNU tar is the odd one out:

- ``sparse-formats.tar``: GNU tar 1.34 misreads the old-GNU sparse extension headers
  ("Unexpected EOF"); Go, Python and bsdtar read it. The reference is bsdtar's
  extraction, checked against the MD5 sums in Go's own tests.
- ``pax-global-records.tar``: GNU tar applies the global ``path`` record to later
  entries (extracting two files named "."); Docker's semantics, which we follow,
  ignore global headers. The reference is GNU tar's extraction of the same archive
  with its two global headers removed (Go's reading: file1 .. file4).
- ``invalid-go17.tar``: written by a buggy pre-1.8 Go writer, a GNU-format header
  with a name in the ustar prefix field: GNU tar reads "foo", Go reads
  "aaa.../foo". Either is accepted, with identical metadata.

Malformed archives (the README's list, and every one GNU tar itself rejects, except
the sparse one above): a one-line error, exit status 1, no traceback, nothing
written outside the destination, no hang; the API raises ``MalformedArchiveError``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import chrootarchive
from helpers import tree
from helpers.cli import CLI, assert_one_line_error, run_cli
from helpers.corpus import WELL_FORMED, corpus_dir
from helpers.mechanisms import comparable
from helpers.tarbuild import (
    GNU_MAGIC,
    GNU_SPARSE,
    GNU_VERSION,
    TarBuilder,
    end_of_archive,
    header,
    octal,
    pad,
)

CORPUS = corpus_dir()

#: What a run under each mechanism may report as its confinement (``pivot`` falls back
#: to ``chroot`` where Docker's does).
REPORTED = {"pivot": {"pivot", "chroot"}, "chroot": {"chroot"}, "userns": {"userns"},
            "openat2": {"openat2"}}


def confined(mechanism: str) -> chrootarchive.UnpackOptions:
    return chrootarchive.UnpackOptions(confine=mechanism)


# name -> words the one-line error must contain (case-insensitive).
MALFORMED: dict[str, tuple[str, ...]] = {
    "pax-bad-hdr-file.tar": ("pax",),
    "pax-bad-hdr-large.tar.bz2": ("pax",),
    # GNU tar and bsdtar read its mtime "999xxx9324.432432444444" as 999 s; the digits
    # after the "xxx" say that is not the writer's time (test_pax_time_with_...).
    "pax-bad-mtime-file.tar": ("invalid pax mtime",),
    "pax-nul-xattrs.tar": ("nul",),
    "pax-nul-path.tar": ("nul",),
    "neg-size.tar": ("size",),
    "issue10968.tar": (),
    "issue11169.tar": (),
    "issue12435.tar": (),
    "writer-big.tar": ("truncat",),
    "writer-big-long.tar": ("truncat",),
    "small.txt": ("not a tar archive",),
    "small2.txt": ("not a tar archive",),
}

# Archives GNU tar 1.34 rejects although they are well-formed (see the module docstring).
GNU_TAR_BUGS = {"sparse-formats.tar", "pax-global-records.tar"}
# Archives GNU tar accepts although Go (and so Docker, and we) reject them.
GO_STRICTER = {"pax-nul-path.tar", "pax-bad-mtime-file.tar"}

GO_SPARSE_MD5 = {
    "sparse-gnu": "6f53234398c2449fe67c1812d993012f",
    "sparse-posix-0.0": "6f53234398c2449fe67c1812d993012f",
    "sparse-posix-0.1": "6f53234398c2449fe67c1812d993012f",
    "sparse-posix-1.0": "6f53234398c2449fe67c1812d993012f",
    "end": "b0061974914468de549a2af8ced10316",
}

GNU_TAR = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"]


def gnu_tar_extract(archive: Path, dest: Path) -> subprocess.CompletedProcess[bytes]:
    dest.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*GNU_TAR, str(archive), "-C", str(dest)],
        capture_output=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o022),
    )


def strip_global_headers(data: bytes) -> bytes:
    """The archive without its PAX global ('g') headers and their data."""
    out, off = bytearray(), 0
    while off + 512 <= len(data):
        block = data[off : off + 512]
        size_field = block[124:136].strip(b"\x00 ") or b"0"
        size = int(size_field, 8) if block != bytes(512) else 0
        span = 512 + (size + 511) // 512 * 512
        if block[156:157] != b"g":
            out += data[off : off + span]
        off += span
    return bytes(out + data[off:])


def reference_tree(name: str, workdir: Path) -> Path:
    """Where the reference extraction of corpus file ``name`` lives (see the docstring)."""
    ref = workdir / "reference"
    ref.mkdir(parents=True)
    src = CORPUS / name
    if name == "sparse-formats.tar":
        proc = subprocess.run(
            ["bsdtar", "--numeric-owner", "--xattrs", "-xpf", str(src), "-C", str(ref)],
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        for fname, md5 in GO_SPARSE_MD5.items():
            assert hashlib.md5((ref / fname).read_bytes()).hexdigest() == md5, fname
        return ref
    if name == "pax-global-records.tar":
        stripped = workdir / "stripped.tar"
        stripped.write_bytes(strip_global_headers(src.read_bytes()))
        src = stripped
    proc = gnu_tar_extract(src, ref)
    assert proc.returncode == 0, f"GNU tar failed on {name}: {proc.stderr!r}"
    return ref


def compare(reference: Path, actual: Path, started_ns: int, *, root_listed: bool,
            mechanism: str = "pivot") -> list[str]:
    expected = comparable(tree.snapshot(reference, ignore_root_mtime=not root_listed), mechanism)
    got = comparable(tree.snapshot(actual, ignore_root_mtime=not root_listed), mechanism)

    def implied_dir_time(path: str, key: str) -> bool:
        e = expected.get(path, {})
        return (
            key == "mtime_ns"
            and e.get("type") == "dir"
            and e.get("mtime_ns", 0) >= started_ns
            and got.get(path, {}).get("mtime_ns", 0) >= started_ns
        )

    return tree.diff(expected, got, ignore=implied_dir_time)


def lists_root(name: str) -> bool:
    """Whether the archive has an entry for the root itself ("." or "./")."""
    proc = subprocess.run(["tar", "-tf", str(CORPUS / name)], capture_output=True)
    return any(line.strip() in (b".", b"./") for line in proc.stdout.splitlines())


def test_corpus_is_fully_classified() -> None:
    names = {p.name for p in CORPUS.iterdir() if p.name not in ("README.md", "COPYRIGHT")}
    assert names, f"corpus not found at {CORPUS}"
    classified = set(WELL_FORMED) | set(MALFORMED)
    assert names == classified, f"unclassified: {names - classified}, gone: {classified - names}"


@pytest.mark.parametrize("name", sorted(set(WELL_FORMED) | set(MALFORMED)))
def test_gnu_tar_reference_agrees(name: str, tmp_path: Path) -> None:
    """Documents the reference: GNU tar accepts the well-formed archives (but for its
    two known misreadings), and rejects the malformed ones (but for two that only Go,
    and we, reject)."""
    proc = gnu_tar_extract(CORPUS / name, tmp_path / "x")
    gnu_accepts = proc.returncode == 0
    if name in WELL_FORMED:
        assert gnu_accepts == (name not in GNU_TAR_BUGS), proc.stderr
    else:
        assert gnu_accepts == (name in GO_STRICTER), proc.stderr


@pytest.mark.parametrize("name", WELL_FORMED)
def test_well_formed_same_tree_as_gnu_tar(mechanism: str, name: str, tmp_path: Path) -> None:
    started = time.time_ns() - 1_000_000_000
    ref = reference_tree(name, tmp_path)
    dest = tmp_path / "chrootarchive"
    dest.mkdir()
    result = chrootarchive.untar(CORPUS / name, dest, confined(mechanism))
    assert result.confinement in REPORTED[mechanism]
    if name == "invalid-go17.tar":
        # GNU tar: "foo"; Go: "aaa.../foo". Same metadata either way.
        exp = comparable(tree.snapshot(ref, ignore_root_mtime=True), mechanism)
        got = comparable(tree.snapshot(dest, ignore_root_mtime=True), mechanism)
        files = [p for p, i in got.items() if i["type"] == "file"]
        assert len(files) == 1, got
        path = files[0]
        assert path == "foo" or (path.endswith("/foo") and set(path[: -len("/foo")]) == {"a"}), path
        assert got[path] == exp["foo"]
        return
    diffs = compare(ref, dest, started, root_listed=lists_root(name), mechanism=mechanism)
    assert not diffs, f"{name}: chrootarchive differs from the reference:\n  " + "\n  ".join(diffs)


@pytest.mark.parametrize("name", ["gnu.tar", "pax.tar", "hdr-only.tar", "xattrs.tar"])
def test_well_formed_same_tree_via_cli(name: str, tmp_path: Path) -> None:
    started = time.time_ns() - 1_000_000_000
    ref = reference_tree(name, tmp_path)
    dest = tmp_path / "cli"
    result = run_cli("untar", "--filter", "fully_trusted", CORPUS / name, dest)  # no note
    assert result.rc == 0, result
    assert result.err == "", result.err
    diffs = compare(ref, dest, started, root_listed=False)
    assert not diffs, "\n".join(diffs)


def test_sparse_files_keep_their_holes(mechanism: str, tmp_path: Path) -> None:
    """The 60 GB sparse files of the corpus are written sparse (their data is tiny)."""
    for name in ("gnu-sparse-big.tar", "pax-sparse-big.tar"):
        dest = tmp_path / name
        chrootarchive.untar(CORPUS / name, dest, confined(mechanism))
        for f in dest.iterdir():
            st = f.stat()
            assert st.st_size == 60_000_000_000
            assert st.st_blocks * 512 < (1 << 20), f"{f.name}: holes were filled"


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_clear_error(name: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "bystander").write_bytes(b"untouched\n")
    before = tree.snapshot(work, ctime=True, nlink=True)
    dest = work / "dest"
    start = time.monotonic()
    result = run_cli("untar", CORPUS / name, dest, timeout=60)
    assert time.monotonic() - start < 20, "too slow for a malformed archive"
    assert_one_line_error(result, rc=1, mentions=MALFORMED[name])
    after = tree.snapshot(work, ctime=True, nlink=True, exclude=["dest"])
    before.pop(".")
    after.pop(".")
    tree.assert_same(before, after, "something outside the destination changed")


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_api_error_class(mechanism: str, name: str, tmp_path: Path) -> None:
    with pytest.raises(chrootarchive.ArchiveError) as info:
        chrootarchive.untar(CORPUS / name, tmp_path / "dest", confined(mechanism))
    err = info.value
    if name != "pax-bad-hdr-large.tar.bz2":  # a size limit is as good as "malformed"
        assert isinstance(err, chrootarchive.MalformedArchiveError), repr(err)
    assert err.message


# Runs argv[1:] (its output to /dev/null), prints the peak RSS in KiB of what it ran
# (the command and its worker), and exits with its status.
_PEAK_OF_CHILDREN = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


@pytest.mark.parametrize("name", ["writer-big.tar", "writer-big-long.tar"])
def test_truncated_16gib_fast_and_bounded(name: str, tmp_path: Path) -> None:
    """16 GiB declared, header only: a truncation error within seconds, in bounded
    memory (max RSS of the command and its worker), and no 16 GiB written."""
    dest = tmp_path / "dest"
    start = time.monotonic()
    # Through a small parent that reports its children's peak: a process forked from
    # this one (however large the test run has made it) starts with its RSS as peak.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _PEAK_OF_CHILDREN, *CLI, "untar", str(CORPUS / name),
         str(dest)],
        capture_output=True, text=True,
    )
    err = proc.stderr
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, err
    assert "truncat" in err.lower(), err
    assert elapsed < 10, f"took {elapsed:.1f}s"
    max_rss = int(proc.stdout)
    assert max_rss < 256 * 1024, f"max RSS {max_rss} KiB"
    for dirpath, _dirs, files in os.walk(dest):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            assert st.st_blocks * 512 < (64 << 20), f"{f}: {st.st_blocks * 512} bytes written"


def test_pax_global_records_are_ignored(mechanism: str, tmp_path: Path) -> None:
    """Spelled out: Go's reading of pax-global-records.tar, file1 .. file4."""
    dest = tmp_path / "dest"
    chrootarchive.untar(CORPUS / "pax-global-records.tar", dest, confined(mechanism))
    assert sorted(os.listdir(dest)) == ["file1", "file2", "file3", "file4"]
    assert os.lstat(dest / "file4").st_mtime == 1_400_000_000
    assert os.lstat(dest / "file1").st_mtime == 0


def test_root_entry_sets_root_metadata(mechanism: str, tmp_path: Path) -> None:
    """An archive that lists "./" gives the destination root the entry's mode and
    mtime, as GNU tar does: then the root's own times are compared too."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"f")
    os.chmod(src, 0o750)
    os.utime(src / "sub", (1_500_000_000, 1_500_000_000))
    os.utime(src, (1_400_000_000, 1_400_000_000))
    archive = tmp_path / "root.tar"
    subprocess.run(["tar", "--numeric-owner", "-cf", str(archive), "-C", str(src), "."], check=True)
    ref = tmp_path / "ref"
    assert gnu_tar_extract(archive, ref).returncode == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    chrootarchive.untar(archive, dest, confined(mechanism))
    tree.assert_same(comparable(tree.snapshot(ref), mechanism),
                     comparable(tree.snapshot(dest), mechanism), "root entry handled differently")
    assert os.stat(dest).st_mtime == 1_400_000_000
    assert os.stat(dest).st_mode & 0o7777 == 0o750


def test_bsdtar_and_gnu_tar_written_archives(mechanism: str, tmp_path: Path) -> None:
    """A tree with every kind of entry, written by GNU tar (posix and gnu formats) and
    bsdtar, extracts to what GNU tar extracts."""
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"content\n" * 100)
    os.chmod(src / "dir" / "file", 0o4755)
    os.link(src / "dir" / "file", src / "hardlink")
    os.symlink("dir/file", src / "symlink")
    os.symlink("/absolute/target", src / "abs-symlink")
    os.mkfifo(src / "fifo", 0o640)
    os.mknod(src / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(src / "blk", 0o660 | 0o060000, os.makedev(7, 250))
    (src / ("long-" + "n" * 200)).write_bytes(b"long")
    deep = src / "/".join(["d" * 50] * 8)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"deep")
    os.chown(src / "dir" / "sub", 1234, 5678)
    os.setxattr(src / "dir" / "file", "user.key", b"value\x00\xff")
    with open(src / "sparse", "wb") as f:
        f.seek(10 << 20)
        f.write(b"end")
    os.chmod(src / "dir", 0o1777)
    os.utime(src / "dir", (1_234_567_890, 1_234_567_890))
    archives = {
        "posix": ["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--sparse"],
        "gnu": ["tar", "--format=gnu", "--sparse"],
        "bsdtar": ["bsdtar", "--format=pax"],
    }
    for fmt, cmd in archives.items():
        archive = tmp_path / f"{fmt}.tar"
        subprocess.run([*cmd, "-cf", str(archive), "-C", str(src), "."], check=True)
        ref = tmp_path / f"ref-{fmt}"
        assert gnu_tar_extract(archive, ref).returncode == 0
        dest = tmp_path / f"dest-{fmt}"
        dest.mkdir()
        chrootarchive.untar(archive, dest, confined(mechanism))
        # bsdtar writes a directory's children long after the directory; GNU tar then
        # sets the directory's times early and its later children move them. We set
        # directory times at the end (Docker's rule): compare them to the archive.
        dir_times = fmt == "bsdtar"
        tree.assert_same(
            comparable(tree.snapshot(ref), mechanism),
            comparable(tree.snapshot(dest), mechanism),
            f"{fmt} archive differs",
            ignore=lambda path, key: dir_times and key == "mtime_ns",
        )
        if dir_times:
            for name, mtime_ns in archive_dir_mtimes(archive).items():
                got = os.lstat(dest / name).st_mtime_ns
                assert got == mtime_ns, f"{name}: mtime {got}, archive says {mtime_ns}"


def archive_dir_mtimes(archive: Path) -> dict[str, int]:
    """Directory name -> mtime in ns, exactly as the archive records it."""
    import tarfile
    from decimal import Decimal

    out = {}
    with tarfile.open(archive) as tf:
        for m in tf:
            if m.isdir():
                raw = m.pax_headers.get("mtime")
                ns = int(Decimal(raw) * 10**9) if raw else int(m.mtime) * 10**9
                out[os.path.normpath(m.name)] = ns
    return out


def test_reference_tools_present() -> None:
    for tool in ("tar", "bsdtar"):
        assert shutil.which(tool), f"{tool} is needed by the conformance tests"
    assert sys.platform.startswith("linux")


# -- what GNU tar and bsdtar read but Go refuses (issue 14, item 8) ---------------------
#
# Each decision is checked against the two tools here, on the same bytes: where they
# agree, we read the archive as they do and warn; where they disagree, we refuse it
# (docs/security.md, "Archives other readers take").


def _extract_with(tool: str, archive: Path, dest: Path) -> tuple[int, dict[str, tuple[int, bytes]]]:
    """(exit status, name -> (mtime ns, content)) of ``tool``'s extraction."""
    dest.mkdir(parents=True)
    proc = subprocess.run([tool, "-xf", str(archive), "-C", str(dest)], capture_output=True,
                          timeout=60)
    return proc.returncode, _listing(dest)


def _listing(dest: Path) -> dict[str, tuple[int, bytes]]:
    return {name: (os.lstat(dest / name).st_mtime_ns, (dest / name).read_bytes()[:64])
            for name in sorted(os.listdir(dest))}


@pytest.mark.parametrize("confine", ["pivot", "openat2"])
def test_lone_zero_block_stops_as_gnu_tar_and_bsdtar(confine: str, tmp_path: Path) -> None:
    """A lone zero block followed by data: GNU tar (with a warning) and bsdtar extract
    what comes before and stop; Go refuses the archive. We stop with one warning: no
    reader extracts what follows, so nothing we skip appears elsewhere."""
    archive = tmp_path / "a.tar"
    TarBuilder().file("a", b"A").raw(bytes(512)).file("b", b"B").write(archive)
    expected = None
    for tool in ("tar", "bsdtar"):
        rc, got = _extract_with(tool, archive, tmp_path / tool)
        assert rc == 0 and list(got) == ["a"], (tool, rc, got)
        expected = got
    result = chrootarchive.untar(archive, tmp_path / "ours", confined(confine))
    assert _listing(tmp_path / "ours") == expected
    assert len(result.warnings) == 1 and "lone zero block (offset 1,024)" in result.warnings[0]
    cli = run_cli("untar", archive, tmp_path / "cli")
    assert cli.rc == 0 and cli.err.count("warning: the archive ends at a lone zero") == 1, cli


# (value, whether GNU tar and bsdtar agree on it, whether we read it)
PAX_TIMES = [
    ("1600000000.5xyz", True, True), ("-5abc", True, True),
    ("1600000000.123456789123x", True, True),
    # Digits after the other characters: the writer's number goes on, and the two
    # tools' prefix is a wrong time (1e9 read as 1 s).
    ("999xxx9324.432432444444", True, False), ("1e9", True, False),
    ("1600000000,5", True, False),
    ("abc", False, False), (".5", False, False), ("+1600000000", False, False),
    (" 1600000000", False, False),
]


@pytest.mark.parametrize(("value", "agree", "read"), PAX_TIMES)
def test_pax_time_with_trailing_characters_as_gnu_tar_and_bsdtar(
        value: str, agree: bool, read: bool, tmp_path: Path) -> None:
    """Go refuses a PAX time with anything after "[-]seconds[.fraction]". GNU tar and
    bsdtar read the leading number alike: so do we (one warning), unless digits follow
    the other characters (the number goes on there: its prefix is not the writer's
    time). Where the tools disagree (no leading number: GNU tar refuses, bsdtar reads
    0), we refuse."""
    archive = tmp_path / "a.tar"
    TarBuilder().pax({"mtime": value}).file("a", b"A", mtime=1234).write(archive)
    gnu_rc, gnu = _extract_with("tar", archive, tmp_path / "gnu")
    bsd_rc, bsd = _extract_with("bsdtar", archive, tmp_path / "bsd")
    assert (gnu_rc == 0 and gnu == bsd) == agree, (gnu_rc, gnu, bsd_rc, bsd)
    result = run_cli("untar", archive, tmp_path / "ours")
    if read:
        assert result.rc == 0, result.err
        assert os.lstat(tmp_path / "ours" / "a").st_mtime_ns == gnu["a"][0]
        assert result.err.count("PAX time records had characters after the number") == 1
    else:
        assert_one_line_error(result, rc=1, mentions=("invalid PAX mtime",))


def _old_gnu_sparse(slots: list[tuple[int, int] | None], realsize: int, data: bytes) -> bytes:
    """An old GNU 'S' entry whose four header slots are ``slots`` (None: empty)."""
    raw = {482: b"\x00", 483: octal(realsize, 12)}
    for i, slot in enumerate(slots):
        if slot is not None:
            raw[386 + 24 * i] = octal(slot[0], 12) + octal(slot[1], 12)
    return header("s", typeflag=GNU_SPARSE, size=len(data), magic=GNU_MAGIC,
                  version=GNU_VERSION, raw=raw) + pad(data) + end_of_archive()


SPARSE_AMBIGUITIES: dict[str, tuple[list[tuple[int, int] | None], str]] = {
    "skipped-slot": ([(0, 1), None, (4096, 1)], "used slot after an empty one"),
    "reused-slot": ([(0, 1), (0, 1)], "overlap"),
    "out-of-order": ([(4096, 1), (0, 1)], "out of order"),
}


@pytest.mark.parametrize("name", sorted(SPARSE_AMBIGUITIES))
def test_sparse_map_ambiguities_are_refused(name: str, tmp_path: Path) -> None:
    """Old GNU sparse maps with a skipped or a reused slot (or slots out of order): GNU
    tar and bsdtar both extract them without an error, but not the same file (GNU tar
    stops at the first empty slot or mis-syncs; bsdtar reads every slot). The bytes
    mean two different files: we refuse them, as Go refuses overlapping maps."""
    slots, words = SPARSE_AMBIGUITIES[name]
    archive = tmp_path / "a.tar"
    archive.write_bytes(_old_gnu_sparse(slots, 8192, b"AB"))
    gnu_rc, gnu = _extract_with("tar", archive, tmp_path / "gnu")
    bsd_rc, bsd = _extract_with("bsdtar", archive, tmp_path / "bsd")
    assert gnu_rc == 0 and bsd_rc == 0, (gnu_rc, bsd_rc)
    sizes = [os.lstat(tmp_path / t / "s").st_size for t in ("gnu", "bsd")]
    assert gnu["s"][1] != bsd["s"][1] or sizes[0] != sizes[1], (gnu, bsd, sizes)
    result = run_cli("untar", archive, tmp_path / "ours")
    assert_one_line_error(result, rc=1, mentions=("s:", words))
