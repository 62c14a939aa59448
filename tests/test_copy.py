"""Copying out of a root that someone else controls, and copying through tar streams.

The attack (CVE-2018-15664, ``docker cp``): the root's owner plants symlinks that point
outside it (absolute, relative, chains), or swaps a directory for such a symlink while
we read. Every file outside holds :data:`helpers.packing.MARKER`; it must never appear
in a stream or a copy. Then the copy helpers (Docker's archiver), and the ``tar`` and
``cp`` commands.
"""

from __future__ import annotations

import ctypes  # noqa: TID251 - renameat2(RENAME_EXCHANGE) for the racer, in the test only
import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import pytest

import chrootarchive as ca
from helpers import packing, tree
from helpers.cli import assert_one_line_error, run_cli
from helpers.leaks import LeakCheck

pytestmark = pytest.mark.usefixtures("no_leaks")

MARKER = packing.MARKER


def stream_bytes(src: str | Path, root: str | Path | None = None,
                 **options: object) -> bytes | ca.ChrootArchiveError:
    """The whole stream, or the typed error that ended it (never another exception)."""
    try:
        with ca.tar(src, root, ca.PackOptions(**options)) as stream:  # type: ignore[arg-type]
            return stream.read()
    except ca.SourceError as err:
        return err


# -- a root whose symlinks point outside it --------------------------------------------------


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """``(root, outside)``: ``outside`` beside ``root``, full of marker files, and in
    ``root`` every kind of symlink that leads there when followed on the host."""
    outside = packing.outside_tree(tmp_path / "outside")
    (tmp_path / "host-file").write_bytes(MARKER + b" host-file\n")
    root = tmp_path / "root"
    (root / "data" / "deep").mkdir(parents=True)
    (root / "data" / "file").write_bytes(b"inside data\n")
    (root / "data" / "deep" / "file").write_bytes(b"inside deep\n")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    (root / "app" / "lib").mkdir(parents=True)  # plain content, to copy elsewhere
    (root / "app" / "file").write_bytes(b"inside app\n")
    (root / "app" / "lib" / "x").write_bytes(b"inside app lib\n")
    os.symlink("lib/x", root / "app" / "x-link")
    links = {
        "safe": str(tmp_path),  # Docker's case: absolute, to the directory above the root
        "abs": str(outside),
        "abs-file": str(outside / "secret"),
        "rel": "../outside",
        "data/deep/rel2": "../../../outside",
        "data/deep/rel-file": "../../../outside/secret",
        "chain1": "chain2",
        "chain2": "rel",
        "chain-abs": "data/deep/hop",
        "data/deep/hop": str(outside),
        "up": "..",
        "data/up2": "../..",
        "slash": "/",
        "data/out-via-up": "up2/../outside",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    return root, outside


def _sources(root: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(source, include files): Docker's TestTarWithMaliciousSymlinks cases, then ours."""
    safe = str(root / "safe")
    cases = [
        (safe, ("host-file",)), (safe + "/", ("host-file",)), (safe, ()), (safe + "/", ()),
        (str(root), ("safe/host-file",)), (str(root), ("/safe/host-file",)), (str(root), ()),
    ]
    for name in ("abs", "abs-file", "rel", "data/deep/rel2", "data/deep/rel-file", "chain1",
                 "chain-abs", "up", "data/up2", "slash", "data/out-via-up"):
        for suffix in ("", "/", "/.", "/secret", "/dir/", "/file"):
            cases.append((name + suffix, ()))
    cases += [("/", ("abs/secret", "rel/file", "chain1/dir", "up/outside/file")),
              ("data", ("deep/rel2/secret",)), ("/", ())]
    return cases


def test_symlinks_out_of_the_root_are_never_followed(
    mechanism: str, hostile: tuple[Path, Path]
) -> None:
    root, _ = hostile
    for src, includes in _sources(root):
        got = stream_bytes(src, root, include_files=includes, confine=mechanism)
        if isinstance(got, bytes):
            assert MARKER not in got, (src, includes)
        else:
            assert got.entry, (src, got)  # a clean error naming the source


def test_packing_the_whole_root_keeps_links_as_links(
    mechanism: str, hostile: tuple[Path, Path]
) -> None:
    root, _ = hostile
    for src, jail in ((root, None), ("/", root), (".", root)):
        data = stream_bytes(src, jail, confine=mechanism, include_source_dir=True)
        assert isinstance(data, bytes)
        assert MARKER not in data
        by_name = {m.name: m for m in packing.members(data)}
        assert by_name["safe"].issym() and by_name["safe"].linkname == str(root.parent)
        assert by_name["data/deep/rel2"].linkname == "../../../outside"
        assert by_name["data/file"].isreg()


def test_root_none_jails_at_the_source(hostile: tuple[Path, Path]) -> None:
    """Without a root, the jail is the source (or its directory): a source given
    through its symlink with "/" follows it on the host (the caller's own path), and
    everything below is still read without following anything."""
    root, _ = hostile
    data = stream_bytes(root / "data")
    assert isinstance(data, bytes) and MARKER not in data
    assert sorted(packing.names(data)) == ["deep", "deep/file", "deep/hop", "deep/rel-file",
                                           "deep/rel2", "file", "out-via-up", "up2"]


def test_proc_magic_links_in_the_root_are_not_followed(mechanism: str,
                                                       hostile: tuple[Path, Path]) -> None:
    """A procfs mounted inside the root: /proc/1/root leads to the host's root. The
    source path is resolved without magic links, even inside the jail."""
    root, outside = hostile
    (root / "proc").mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", root / "proc"], check=True)
    try:
        for src in (f"/proc/1/root{outside}/", f"/proc/self/root{outside}/",
                    "/proc/1/cwd/", "/proc/self/fd/"):
            got = stream_bytes(src, root, confine=mechanism)
            if isinstance(got, bytes):
                assert MARKER not in got, src
    finally:
        subprocess.run(["umount", "-l", root / "proc"], check=True)


def test_copy_out_of_the_root_never_copies_outside_bytes(
    mechanism: str, hostile: tuple[Path, Path], tmp_path: Path
) -> None:
    root, outside = hostile
    before = tree.snapshot(outside, ctime=True)
    for i, (src, _) in enumerate(_sources(root)):
        dst = tmp_path / "copies" / str(i)
        try:
            ca.copy_path(src, dst, src_root=root,
                         pack_options=ca.PackOptions(confine=mechanism))
        except (ca.SourceError, ca.BreakoutError):
            # A missing source, or a symlink that climbs out of the destination
            # (refused by the unpacking side, as Docker does).
            continue
        assert tree.find_content(tmp_path / "copies", MARKER.split(b":")[0]) == [], src
    tree.assert_same(before, tree.snapshot(outside, ctime=True), "outside changed")


# -- a racer swapping a directory for a symlink ---------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: bytes, b: bytes) -> None:
    if _libc.renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Racer(threading.Thread):
    """Swaps each ``(directory, symlink)`` pair again and again, counting swaps."""

    def __init__(self, pairs: list[tuple[Path, Path]], method: str) -> None:
        super().__init__(daemon=True)
        self.pairs = [(os.fsencode(a), os.fsencode(b)) for a, b in pairs]
        self.method = method
        self.swaps = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for a, b in self.pairs:
                    if self.method == "exchange":
                        _exchange(a, b)
                    else:  # the rename dance: three renames, "a" missing for a moment
                        os.rename(a, a + b".tmp")
                        os.rename(b, a)
                        os.rename(a + b".tmp", b)
                    self.swaps += 1
        except BaseException as err:
            self.error = err


def _race_root(tmp_path: Path, target: str) -> tuple[Path, list[tuple[Path, Path]]]:
    """A root with a big tree and three directories that a racer will swap with
    symlinks to an outside directory of the same shape (marker files)."""
    root = tmp_path / "root"
    tree_dir = root / "tree"
    outside = tmp_path / "outside"
    for base in (tree_dir, outside):
        base.mkdir(parents=True)
    for i in range(60):
        d = tree_dir / f"bulk{i:03d}"
        d.mkdir()
        for j in range(25):
            (d / f"f{j}").write_bytes(b"inside bulk\n")
    pairs = []
    for name in ("a-swap", "m-swap", "z-swap"):
        real = tree_dir / name
        mirror = outside / name
        for sub in ("", "s1", "s1/s2", "s3"):
            (real / sub).mkdir(parents=True, exist_ok=True)
            (mirror / sub).mkdir(parents=True, exist_ok=True)
            for j in range(15):
                (real / sub / f"f{j}").write_bytes(b"inside swap\n")
                (mirror / sub / f"f{j}").write_bytes(MARKER + b"\n")
        link = tree_dir / f"{name}-link"
        link_target = {"abs": str(mirror), "rel": os.path.relpath(mirror, tree_dir),
                       "slash": "/"}[target]
        os.symlink(link_target, link)
        pairs.append((real, link))
    return root, pairs


def _race(root: Path, pairs: list[tuple[Path, Path]], method: str, mechanism: str,
          pack: Callable[[], bytes]) -> None:
    racer = Racer(pairs, method)
    old_interval = sys.getswitchinterval()
    if mechanism == "openat2":
        sys.setswitchinterval(1e-5)  # interleave the racer with the in-process walk finely
    racer.start()
    counted = rounds = 0
    try:
        deadline = time.monotonic() + 60
        while counted < 5 and time.monotonic() < deadline:
            rounds += 1
            before = racer.swaps
            data = pack()
            during = racer.swaps - before
            assert racer.error is None, racer.error
            assert MARKER not in data, f"outside bytes in round {rounds} ({mechanism})"
            if during >= 10:
                counted += 1
    finally:
        racer.stop.set()
        racer.join()
        sys.setswitchinterval(old_interval)
    assert racer.error is None, racer.error
    assert counted >= 5, f"only {counted} of {rounds} rounds raced (swaps: {racer.swaps})"


RACES = [("exchange", "abs"), ("exchange", "rel"), ("exchange", "slash"), ("rename", "abs")]


@pytest.mark.parametrize(("method", "target"), RACES)
def test_race_swapping_a_directory_for_a_symlink(
    mechanism: str, method: str, target: str, tmp_path: Path
) -> None:
    """While ``tar`` walks, a racer swaps directories inside the root with symlinks
    to outside (renameat2 RENAME_EXCHANGE, or a rename dance); over several rounds
    that each saw swaps, nothing from outside ever reaches the stream."""
    root, pairs = _race_root(tmp_path, target)

    def pack() -> bytes:
        with ca.tar("tree", root, ca.PackOptions(confine=mechanism)) as stream:
            return stream.read()

    _race(root, pairs, method, mechanism, pack)


def test_race_while_copying_out(tmp_path: Path) -> None:
    root, pairs = _race_root(tmp_path, "abs")
    rounds = iter(range(1 << 30))

    def copy() -> bytes:
        dst = tmp_path / f"copy{next(rounds)}"  # a new one: an existing one is copied into
        ca.copy_path("/tree", dst, src_root=root)
        hits = tree.find_content(dst, MARKER)
        shutil.rmtree(dst)
        return MARKER if hits else b""

    _race(root, pairs, "exchange", "auto", copy)


# -- copies ----------------------------------------------------------------------------------


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    return packing.build_tree(tmp_path / "src")


def test_copy_with_tar(rich: Path, tmp_path: Path) -> None:
    """Docker's CopyWithTar: the directory's contents into dst (created)."""
    dst = tmp_path / "new" / "dst"
    result = ca.copy_with_tar(rich, dst)
    assert result.warnings == ()
    packing.assert_same_tree(rich, dst, root_meta=False)
    assert os.getxattr(dst / "cap-file", "security.capability") == packing.capability_blob()


def test_copy_with_tar_through_a_symlink_and_of_a_file(rich: Path, tmp_path: Path) -> None:
    os.symlink(rich, tmp_path / "via-link")
    ca.copy_with_tar(tmp_path / "via-link", tmp_path / "dst")
    packing.assert_same_tree(rich, tmp_path / "dst", root_meta=False)
    ca.copy_with_tar(rich / "plain", tmp_path / "files" / "copied")
    assert (tmp_path / "files" / "copied").read_bytes() == (rich / "plain").read_bytes()


def test_copy_file_with_tar(rich: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ca.copy_file_with_tar(rich / "cap-file", f"{out}/")
    copied = out / "cap-file"
    assert copied.read_bytes() == (rich / "cap-file").read_bytes()
    src_st, dst_st = os.stat(rich / "cap-file"), os.stat(copied)
    assert (dst_st.st_mode, dst_st.st_mtime_ns) == (src_st.st_mode, src_st.st_mtime_ns)
    assert os.getxattr(copied, "security.capability") == packing.capability_blob()

    ca.copy_file_with_tar(rich / "setuid", out / "renamed")
    assert os.stat(out / "renamed").st_mode & 0o7777 == 0o4755
    # A symlink source is followed: its target's content is copied.
    ca.copy_file_with_tar(rich / "rel-link", out / "from-link")
    assert not (out / "from-link").is_symlink()
    assert (out / "from-link").read_bytes() == (rich / "plain").read_bytes()
    # Replacing an existing file.
    ca.copy_file_with_tar(rich / "empty", out / "renamed")
    assert (out / "renamed").read_bytes() == b""

    with pytest.raises(ca.SourceError, match="is a directory"):
        ca.copy_file_with_tar(rich / "sub", out / "x")
    with pytest.raises(ca.SourceError, match="no such file"):
        ca.copy_file_with_tar(rich / "missing", out / "x")


def test_untar_path(rich: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.zst"
    with ca.tar(rich, options=ca.PackOptions(compression="zstd")) as stream:
        archive.write_bytes(stream.read())
    result = ca.untar_path(archive, tmp_path / "dst")
    assert result.entries > 20
    packing.assert_same_tree(rich, tmp_path / "dst", root_meta=False)


def test_copy_path_naming(rich: Path, tmp_path: Path) -> None:
    """SRC to DST; into DST/ as DST/NAME; SRC/. copies the contents; metadata of the
    directory itself goes along."""
    ca.copy_path(rich, tmp_path / "a" / "copy")
    packing.assert_same_tree(rich, tmp_path / "a" / "copy")
    (tmp_path / "b").mkdir()
    ca.copy_path(rich, f"{tmp_path}/b/")
    packing.assert_same_tree(rich, tmp_path / "b" / "src")
    ca.copy_path(f"{rich}/.", tmp_path / "c")
    packing.assert_same_tree(rich, tmp_path / "c")
    ca.copy_path(rich / "dir-link", tmp_path / "d" / "link")
    assert os.readlink(tmp_path / "d" / "link") == "sub"
    ca.copy_path(f"{rich}/dir-link/", tmp_path / "e")
    packing.assert_same_tree(rich / "sub", tmp_path / "e")
    ca.copy_path(rich / "plain", f"{tmp_path}/f/")
    assert (tmp_path / "f" / "plain").read_bytes() == (rich / "plain").read_bytes()


class _BothOptions(TypedDict):
    options: ca.UnpackOptions
    pack_options: ca.PackOptions


def test_copy_between_roots(mechanism: str, hostile: tuple[Path, Path], tmp_path: Path) -> None:
    """From one root to another; the destination's symlinks resolve inside its root,
    whatever they say (both sides under each mechanism)."""
    src_root, outside = hostile
    both: _BothOptions = {"options": ca.UnpackOptions(confine=mechanism),
                          "pack_options": ca.PackOptions(confine=mechanism)}
    dst_root = tmp_path / "other"
    (dst_root / "real").mkdir(parents=True)
    os.symlink("/real", dst_root / "in-root")  # absolute: inside the jail, stays inside
    os.symlink(str(outside), dst_root / "evil")  # a host path: means nothing inside
    before = tree.snapshot(outside, ctime=True)
    ca.copy_path("/app", "/in-root/restored", src_root=src_root, dst_root=dst_root, **both)
    assert (dst_root / "real" / "restored" / "file").read_bytes() == b"inside app\n"
    assert os.readlink(dst_root / "real" / "restored" / "x-link") == "lib/x"
    # A host path means nothing inside the jail: there, "evil" is a dangling symlink.
    with pytest.raises(ca.DestinationError):
        ca.copy_path("/data/file", "/evil/", src_root=src_root, dst_root=dst_root, **both)
    (dst_root / str(outside).lstrip("/")).mkdir(parents=True)
    ca.copy_path("/data/file", "/evil/", src_root=src_root, dst_root=dst_root, **both)
    assert (dst_root / str(outside).lstrip("/") / "file").read_bytes() == b"inside data\n"
    ca.copy_path("etc/passwd", "etc/", src_root=src_root, dst_root=dst_root, **both)
    assert (dst_root / "etc" / "passwd").exists()
    tree.assert_same(before, tree.snapshot(outside, ctime=True), "outside changed")


def test_copy_errors_leave_nothing_behind(rich: Path, tmp_path: Path) -> None:
    check = LeakCheck(tmp_path, fds=True)
    with pytest.raises(ca.SourceError):
        ca.copy_path("/missing", tmp_path / "x", src_root=rich)
    (tmp_path / "a-file").write_bytes(b"x")
    with pytest.raises(ca.DestinationError):
        ca.copy_with_tar(rich, tmp_path / "a-file")  # the destination is not a directory
    with pytest.raises(ca.DestinationError, match="to a file"):
        ca.copy_path(rich, tmp_path / "a-file")  # a directory over a file
    assert check.problems() == []


def test_pack_warnings_reach_the_copy_result(tmp_path: Path) -> None:
    import socket

    src = tmp_path / "with-socket"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(src / "sock"))
        result = ca.copy_with_tar(src, tmp_path / "dst")
    assert any("socket skipped" in w for w in result.warnings)


# -- the command line ------------------------------------------------------------------------


def cli_bytes(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "chrootarchive", *(os.fspath(a) for a in args)],
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("suffix", "magic"), [(".tar", b""), (".tar.gz", b"\x1f\x8b"),
                                               (".tgz", b"\x1f\x8b"),
                                               (".tar.zst", b"\x28\xb5\x2f\xfd")])
def test_cli_tar_to_a_file(suffix: str, magic: bytes, rich: Path, tmp_path: Path) -> None:
    out = tmp_path / f"out{suffix}"
    result = run_cli("tar", rich, "-o", out, "--include-source-dir")
    assert result.rc == 0, result.err
    assert result.out == "" and result.err == ""
    assert out.read_bytes().startswith(magic)
    ca.untar(out, tmp_path / "dst")
    packing.assert_same_tree(rich, tmp_path / "dst")


def test_cli_tar_to_stdout_and_options(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("keep/a", "keep/b.log", "skip/c"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    proc = cli_bytes("tar", src, "--exclude", "skip", "--exclude", "**/*.log",
                     "--rebase", "keep=kept", "--chown", "7:8")
    assert proc.returncode == 0, proc.stderr
    members = packing.members(proc.stdout)
    assert [(m.name, m.uid, m.gid) for m in members] == [("kept", 7, 8), ("kept/a", 7, 8)]
    proc = cli_bytes("tar", src, "--include", "skip/c", "--compress", "gzip")
    assert proc.stdout.startswith(b"\x1f\x8b") and packing.names(proc.stdout) == ["skip/c"]


def test_cli_tar_with_root_never_reads_outside(hostile: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    root, _ = hostile
    for i, src in enumerate(("/", "safe/", "abs/", "rel/", "chain1/", "data")):
        out = tmp_path / f"out{i}.tar"
        result = run_cli("tar", "--root", root, src, "-o", out)
        if result.rc == 0:
            assert MARKER not in out.read_bytes(), src
        else:
            assert_one_line_error(result, rc=4, mentions=(src.rstrip("/"),))
            assert not out.exists()


def test_cli_tar_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = run_cli("tar", missing, "-o", tmp_path / "x.tar")
    assert_one_line_error(result, rc=4, mentions=(str(missing), "no such file"))
    assert not (tmp_path / "x.tar").exists()
    (tmp_path / "src").mkdir()
    result = run_cli("tar", tmp_path / "src", "-o", tmp_path / "no-dir" / "x.tar")
    assert_one_line_error(result, rc=4, mentions=("cannot create the archive",))
    (tmp_path / "previous.tar").write_bytes(b"previous")
    result = run_cli("tar", missing, "-o", tmp_path / "previous.tar")
    assert_one_line_error(result, rc=4)
    assert (tmp_path / "previous.tar").read_bytes() == b"previous"  # untouched on failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous.tar", "src"]
    result = run_cli("tar", tmp_path / "src", "-o", "/dev/full")
    assert_one_line_error(result, rc=4, mentions=("no space",))
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # an existing output is not removed
    result = run_cli("tar", tmp_path / "src", "--json")
    assert_one_line_error(result, rc=2, mentions=("--json",))
    result = run_cli("tar", tmp_path / "src", "--include", "../up", "-o", tmp_path / "y.tar")
    assert_one_line_error(result, rc=2, mentions=("leaves the source",))
    result = run_cli("tar", tmp_path / "src", "--chown", "root:root")
    assert result.rc == 2 and "names are never looked up" in result.err
    result = run_cli("tar", tmp_path / "src", "--confine", "nonsense", "-o", tmp_path / "z.tar")
    assert result.rc == 2 and "nonsense" in result.err
    # A suffix tar does not write: it wrote a plain tar under that name, silently.
    for name, kind in (("o.tar.xz", "xz"), ("o.tbz2", "bzip2"), ("o.tar.lz4", "lz4")):
        result = run_cli("tar", tmp_path / "src", "-o", tmp_path / name)
        assert_one_line_error(result, rc=2, mentions=(f"cannot write {kind}", "--compress none"))
        assert not (tmp_path / name).exists()
    result = run_cli("tar", tmp_path / "src", "--compress", "none", "-o", tmp_path / "o.tar.xz")
    assert result.rc == 0, result.err


def test_cli_tar_json_and_warnings(tmp_path: Path) -> None:
    import json
    import socket

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"12345")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(src / "sock"))
        result = run_cli("tar", src, "-o", tmp_path / "a.tar", "--json")
        assert result.rc == 0, result.err
        report = json.loads(result.out)
        assert (report["entries"], report["size"]) == (1, 5)
        assert report["confinement"] == "chroot"
        result = run_cli("tar", src, "-o", tmp_path / "b.tar")
        assert result.err.startswith("chrootarchive: warning: ") and "socket" in result.err
        result = run_cli("tar", src, "-o", tmp_path / "c.tar", "-q")
        assert result.err == ""


def test_cli_tar_into_a_closed_pipe(tmp_path: Path) -> None:
    """A reader that goes away: one error line, the worker is gone, no traceback."""
    src = tmp_path / "big"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(16 << 20))
    proc = subprocess.run(
        f"{sys.executable} -m chrootarchive tar {src} | head -c 100 >/dev/null; "
        "echo ${PIPESTATUS[0]} >&2",
        shell=True, capture_output=True, executable="/bin/bash", timeout=60)
    lines = proc.stderr.decode().strip().splitlines()
    assert lines[-1] == "4", proc.stderr
    assert lines[:-1] == ["chrootarchive: error: standard output: cannot write the archive: "
                          "broken pipe"], proc.stderr


def test_cli_cp(rich: Path, hostile: tuple[Path, Path], tmp_path: Path) -> None:
    result = run_cli("cp", rich, tmp_path / "copy")
    assert result.rc == 0 and result.err == "", result.err
    packing.assert_same_tree(rich, tmp_path / "copy")
    root, _ = hostile
    other = tmp_path / "other-root"
    other.mkdir()
    result = run_cli("cp", "--from-root", root, "--to-root", other, "/app", "/restored",
                     "--json")
    assert result.rc == 0, result.err
    assert '"entries"' in result.out
    assert (other / "restored" / "file").read_bytes() == b"inside app\n"
    for src in ("safe/", "abs/", "rel/.", "chain1/", "up/outside/"):
        result = run_cli("cp", "--from-root", root, src, tmp_path / "loot" / src.strip("/."))
        if result.rc != 0:
            assert_one_line_error(result, rc=(1, 4))
    assert tree.find_content(tmp_path / "loot", MARKER.split(b":")[0]) == []
    result = run_cli("cp", "--from-root", root, "/nothing-here", tmp_path / "x")
    assert_one_line_error(result, rc=4, mentions=("/nothing-here", "no such file"))
    result = run_cli("cp", rich / "plain", tmp_path / "plain-copy", "--chown", "5:6")
    assert result.rc == 0, result.err
    st = os.stat(tmp_path / "plain-copy")
    assert (st.st_uid, st.st_gid) == (5, 6)


def test_cli_help_has_examples() -> None:
    for command in ("tar", "cp"):
        result = run_cli(command, "--help")
        assert result.rc == 0
        assert "examples:" in result.out and "exit status:" in result.out
        assert f"chrootarchive {command} " in result.out
    result = run_cli("--help")
    assert " tar " in result.out and " cp " in result.out



@pytest.mark.parametrize("dst", ["src/sub", "src/", "src/d/x"])
def test_cp_refuses_to_copy_a_directory_into_itself(tmp_path: Path, dst: str) -> None:
    """GNU cp's "cannot copy a directory into itself": the copy read what it wrote, for
    as long as the walk kept finding it. A symlink to the directory is copied as a
    symlink, and may go anywhere."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "f").write_bytes(b"f")
    (src / "self").symlink_to(".")
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    result = run_cli("cp", "src" if dst != "src/" else "src/.", dst, cwd=tmp_path)
    assert_one_line_error(result, rc=4, mentions=("into itself",))
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before
    result = run_cli("cp", "src/self", "src/d/", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert os.readlink(src / "d" / "self") == "."


@pytest.mark.parametrize("dst", ["/link/sub", "/link/new/deeper", "/link", "/data/"])
def test_cp_into_itself_is_seen_as_the_jails_see_the_paths(tmp_path: Path, dst: str) -> None:
    """Inside a root, ``/link -> /data`` leads to the root's ``/data``, as the writer
    jailed there reads it; on the host it leads to the host's ``/data``, so a check
    made from the host's view let the copy read what it wrote. Paths are now resolved
    in their roots and compared by inode, also for what the copy will make."""
    root = tmp_path / "root"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "f").write_bytes(b"f")
    (root / "link").symlink_to("/data")
    before = tree.snapshot(root)
    result = run_cli("cp", "--from-root", root, "--to-root", root, "/data", dst)
    assert_one_line_error(result, rc=4, mentions=("into itself",))
    assert tree.snapshot(root) == before
    result = run_cli("cp", "--from-root", root, "--to-root", root / "data", "/", "/x")
    assert_one_line_error(result, rc=4, mentions=("into itself",))  # the host's view
    assert tree.snapshot(root) == before
    result = run_cli("cp", "--from-root", root, "--to-root", root, "/data/.", "/copy")
    assert result.rc == 0, result.err
    assert (root / "copy" / "f").read_bytes() == b"f"


def test_cp_into_itself_check_ends_at_a_root_it_cannot_open(tmp_path: Path) -> None:
    """The into-itself check climbs from DST to what exists of it; a --to-root that is
    missing (or not searchable) never opens, and its climb went from ``x`` to ``.`` and
    stayed there, spinning for ever: now the writer's error, at once."""
    (tmp_path / "src" / "sub").mkdir(parents=True)
    for dst in ("x/y", "x", "/x/y"):
        result = run_cli("cp", "--to-root", tmp_path / "missing", tmp_path / "src", dst,
                         timeout=30)
        assert_one_line_error(result, rc=4, mentions=("missing",))
    assert not (tmp_path / "missing").exists()


def test_cp_into_a_symlink_to_inside_the_source(tmp_path: Path) -> None:
    """DST a symlink to a directory inside SRC: ``cp src link`` and ``cp src link/``
    both copy into where it leads (as docker cp and GNU cp), inside SRC: refused. A
    symlink to a file is replaced, not followed."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "f").write_bytes(b"f")
    (tmp_path / "link").symlink_to("src/sub")
    for dst in ("link/", "link"):
        assert_one_line_error(run_cli("cp", "src", dst, cwd=tmp_path), rc=4,
                              mentions=("into itself",))
    assert sorted(os.listdir(src)) == ["f", "sub"] and os.listdir(src / "sub") == []
    (tmp_path / "file-link").symlink_to("src/f")
    result = run_cli("cp", "src/sub", "file-link", cwd=tmp_path)
    assert_one_line_error(result, rc=4, mentions=("to a file",))
    (tmp_path / "g").write_bytes(b"g")
    result = run_cli("cp", "g", "file-link", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert not (tmp_path / "file-link").is_symlink()
    assert (tmp_path / "file-link").read_bytes() == b"g" and (src / "f").read_bytes() == b"f"


@pytest.mark.parametrize("failure", [errno.ENOSYS, errno.EPERM, errno.EAGAIN])
def test_cp_onto_a_directory_without_openat2_never_replaces_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: int) -> None:
    """Where openat2 is missing (before 5.6), refused (a seccomp profile) or races a
    rename (EAGAIN), what DST is was read as "nothing there": a file then replaced the
    directory DST and all in it. Now the host's view stands in, and the writer never
    replaces a directory by a file in any case."""
    from chrootarchive import _linux

    real = _linux.openat2
    calls = iter(range(1 << 30))

    def failing(*args: Any) -> int:
        if failure != errno.EAGAIN or next(calls) == 0:  # EAGAIN: the first call only
            raise OSError(failure, os.strerror(failure))
        return real(*args)

    monkeypatch.setattr(_linux, "openat2", failing)
    root = tmp_path / "root"
    (root / "data" / "keep").mkdir(parents=True)
    (root / "data" / "keep" / "precious").write_bytes(b"keep me")
    (tmp_path / "f").write_bytes(b"f")
    both: _BothOptions = {"options": ca.UnpackOptions(confine="pivot"),
                          "pack_options": ca.PackOptions(confine="pivot")}
    ca.copy_path(tmp_path / "f", "/data", dst_root=root, **both)
    assert (root / "data" / "keep" / "precious").read_bytes() == b"keep me"
    assert (root / "data" / "f").read_bytes() == b"f"


def test_cp_never_replaces_a_directory_below_dst_by_a_file(tmp_path: Path) -> None:
    """docker cp's rule below DST: copying ``f`` into a directory that has a directory
    ``f`` (with files in it) is refused; it replaced that directory silently. The
    destination's state: exit status 4, as "cannot copy a directory to a file"."""
    dst = tmp_path / "dst"
    (dst / "f" / "sub").mkdir(parents=True)
    (dst / "f" / "sub" / "precious").write_bytes(b"keep me")
    (tmp_path / "f").write_bytes(b"f")
    for target in (dst, f"{dst}/"):
        result = run_cli("cp", tmp_path / "f", target)
        assert_one_line_error(result, rc=4, mentions=(
            "cannot replace existing directory (--no-overwrite-dir-nondir)",))
    assert (dst / "f" / "sub" / "precious").read_bytes() == b"keep me"


def test_cp_to_a_symlink_is_read_inside_its_directory(tmp_path: Path) -> None:
    """Without --to-root the writer is jailed at DST's directory: a symlink DST (an
    absolute one planted in a container's tree) is read there, never followed to the
    host's directory of that name."""
    victim = tmp_path / "victim"
    victim.mkdir()
    before = tree.snapshot(victim, ctime=True)
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "app.conf").symlink_to(victim)  # absolute: the host's victim
    (tmp_path / "conf").write_bytes(b"conf")
    result = run_cli("cp", tmp_path / "conf", etc / "app.conf")
    assert result.rc == 0, result.err
    tree.assert_same(before, tree.snapshot(victim, ctime=True), "victim changed")
    assert (etc / "app.conf").read_bytes() == b"conf"  # replaced, as before
    (etc / "d").mkdir()
    (etc / "to-d").symlink_to("d")  # relative, inside: copied into, as docker cp
    assert run_cli("cp", tmp_path / "conf", etc / "to-d").rc == 0
    assert (etc / "d" / "conf").read_bytes() == b"conf"


def test_cp_streams_a_tar_archive_as_docker_cp(tmp_path: Path) -> None:
    """docker cp's ``-``: ``cp SRC -`` writes SRC as a tar archive (SRC's name at its
    top, its contents for ``SRC/.``); ``cp - DST`` unpacks one from stdin into DST
    (compressed or not). It made a directory named ``-``, or looked for a file ``-``."""
    import gzip
    import io
    import tarfile

    from helpers.cli import CLI

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x").write_bytes(b"x")
    for source, names in ((src, ["src", "src/d", "src/d/x"]), (f"{src}/.", [".", "d", "d/x"]),
                          (src / "d" / "x", ["x"])):
        proc = subprocess.run([*CLI, "cp", str(source), "-"], capture_output=True, check=False,
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as archive:
            assert sorted(m.name.rstrip("/") for m in archive) == names
    assert not (tmp_path / "-").exists()
    proc = subprocess.run([*CLI, "cp", str(src), "-"], capture_output=True, check=True)
    result = run_cli("cp", "-", tmp_path / "dst", input=gzip.compress(proc.stdout))
    assert result.rc == 0, result.err
    assert (tmp_path / "dst" / "src" / "d" / "x").read_bytes() == b"x"
    other = tmp_path / "root"
    (other / "real").mkdir(parents=True)
    (other / "in").symlink_to("/real")
    result = run_cli("cp", "--to-root", other, "-", "/in/restored", input=proc.stdout)
    assert result.rc == 0, result.err
    assert (other / "real" / "restored" / "src" / "d" / "x").read_bytes() == b"x"
    assert_one_line_error(run_cli("cp", "-", "-"), rc=2, mentions=("both",))
    result = run_cli("cp", "--exclude", "src/d/x", "-", tmp_path / "excluded",
                     input=proc.stdout)
    assert result.rc == 0, result.err
    assert (tmp_path / "excluded" / "src" / "d").is_dir()
    assert not (tmp_path / "excluded" / "src" / "d" / "x").exists()  # it was written
    assert_one_line_error(run_cli("cp", src, "-", "--json"), rc=2, mentions=("--json",))


def test_tar_and_cp_take_gnu_tars_exclude_style(tmp_path: Path) -> None:
    """``--exclude-style tar`` on every command with ``--exclude``, as untar has it:
    ``*.txt`` excludes ``sub/b.txt`` too, and ``deep`` a directory at any depth."""
    import io
    import tarfile

    from helpers.cli import CLI

    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    for name in ("a.txt", "keep", "sub/b.txt", "sub/keep", "sub/deep/c"):
        (src / name).write_bytes(name.encode())
    kept = ["keep", "sub", "sub/keep"]
    tar_style = ("--exclude", "*.txt", "--exclude", "deep", "--exclude-style", "tar")

    result = run_cli("tar", "-o", tmp_path / "out.tar", *tar_style, src)
    assert result.rc == 0, result.err
    with tarfile.open(tmp_path / "out.tar") as archive:
        assert sorted(m.name for m in archive) == kept
    result = run_cli("cp", *tar_style, src, tmp_path / "copy")
    assert result.rc == 0, result.err
    assert sorted(str(p.relative_to(tmp_path / "copy"))
                  for p in (tmp_path / "copy").rglob("*")) == kept
    proc = subprocess.run([*CLI, "cp", *tar_style, f"{src}/.", "-"], capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as archive:
        assert sorted(m.name.rstrip("/") for m in archive) == [".", *kept]
    whole = subprocess.run([*CLI, "cp", f"{src}/.", "-"], capture_output=True, check=True)
    result = run_cli("cp", *tar_style, "-", tmp_path / "streamed", input=whole.stdout)
    assert result.rc == 0, result.err
    assert sorted(str(p.relative_to(tmp_path / "streamed"))
                  for p in (tmp_path / "streamed").rglob("*")) == kept
    result = run_cli("tar", "--exclude-style", "gnu", src)
    assert result.rc == 2 and "argument --exclude-style: invalid choice" in result.err


def test_cp_onto_what_exists_as_docker_cp(mechanism: str, tmp_path: Path) -> None:
    """An existing directory DST is copied into (DST/NAME), as docker cp and GNU cp do,
    followed through an in-root symlink; a directory is never copied onto a file. A
    file copied onto a directory replaced it, and everything in it, silently."""
    both: _BothOptions = {"options": ca.UnpackOptions(confine=mechanism),
                          "pack_options": ca.PackOptions(confine=mechanism)}
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x").write_bytes(b"x")
    (src / "f").write_bytes(b"f")
    dst = tmp_path / "dst"
    (dst / "existing").mkdir(parents=True)
    (dst / "existing" / "precious").write_bytes(b"keep me")
    (dst / "a-file").write_bytes(b"old")
    (dst / "to-existing").symlink_to("/existing")  # inside the root, as the jail sees it
    ca.copy_path(src / "f", dst / "existing", **both)
    ca.copy_path(src / "d", dst / "existing", **both)
    ca.copy_path("/src/f", "/to-existing", src_root=tmp_path, dst_root=dst, **both)
    found = {str(p.relative_to(dst / "existing")): p.read_bytes() if p.is_file() else b"/"
             for p in (dst / "existing").rglob("*")}
    assert found == {"precious": b"keep me", "f": b"f", "d": b"/", "d/x": b"x"}
    for source in (src / "d", f"{src}/d/."):
        with pytest.raises(ca.DestinationError, match="to a file"):
            ca.copy_path(source, dst / "a-file", **both)
    ca.copy_path(src / "f", dst / "a-file", **both)  # a file onto a file: replaced
    assert (dst / "a-file").read_bytes() == b"f"
    ca.copy_path(f"{src}/d/.", dst / "existing", **both)  # the contents, merged
    assert (dst / "existing" / "x").read_bytes() == b"x"


@pytest.mark.parametrize("confine", ["userns", "openat2"])
def test_unprivileged_cp_belongs_to_the_caller_without_warnings(confine: str) -> None:
    """As GNU cp run by a user: the copy is the caller's. It warned that the caller's
    own files had "owners that cannot be represented" (the source's host ids, which
    the caller's user namespace does not map)."""
    from helpers import unpriv

    with unpriv.world_dir("cp-owners") as top:
        src = top / "src"
        src.mkdir()
        (src / "mine").write_bytes(b"m")
        (src / "roots").write_bytes(b"r")
        os.chmod(src / "roots", 0o644)
        for path in (src, src / "mine"):
            os.chown(path, unpriv.NOBODY, unpriv.NOBODY)
        out = top / "out"
        out.mkdir()
        os.chown(out, unpriv.NOBODY, unpriv.NOBODY)
        pythonpath = unpriv.make_package_copy(top)
        result = unpriv.cli_as(pythonpath, "cp", "--confine", confine, src, out / "copy")
        assert result.rc == 0, result.err
        assert result.err == ""
        owners = {p.name: (p.stat().st_uid, p.stat().st_gid)
                  for p in (out / "copy").iterdir()}
    assert owners == {"mine": (unpriv.NOBODY,) * 2, "roots": (unpriv.NOBODY,) * 2}
