"""Making tar streams: round trips, compatibility with GNU tar and bsdtar, options, PAX,
names never looked up, errors from the jail, and nothing left behind.

Every pack runs for real in a worker jailed with the kernel (``chroot``, ``pivot``,
``userns``) or in-process with ``openat2``; the tests about the reading side run under
each mechanism (the ``mechanism`` fixture); CI runs as root.
"""

from __future__ import annotations

import gc
import io
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

import chrootarchive as ca
from chrootarchive.engine.jobs import pack
from chrootarchive.tarformat import format as tarformat
from chrootarchive.tarformat import writer
from helpers import packing, tree, unpriv
from helpers.cli import CLIResult
from helpers.leaks import LeakCheck, child_pids
from helpers.mechanisms import LIMITED_AS_ROOT

pytestmark = pytest.mark.usefixtures("no_leaks")

def packed(src: Path | str, root: Path | str | None = None, **options: object) -> bytes:
    with ca.tar(src, root, ca.PackOptions(**options)) as stream:  # type: ignore[arg-type]
        return stream.read()


def packed_result(src: Path | str, root: Path | str | None = None,
                  **options: object) -> tuple[bytes, ca.PackResult]:
    with ca.tar(src, root, ca.PackOptions(**options)) as stream:  # type: ignore[arg-type]
        data = stream.read()
    assert stream.result is not None
    return data, stream.result


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    return packing.build_tree(tmp_path / "src")


# -- round trips ---------------------------------------------------------------------------


def test_round_trip(mechanism: str, rich: Path, tmp_path: Path) -> None:
    """Pack then unpack: the same names, types, modes (setuid included), owners (ids
    beyond octal included), sizes, contents, link targets, hardlink groups, device
    numbers, xattrs (security.capability included) and times to the nanosecond."""
    limited = mechanism in LIMITED_AS_ROOT
    if limited:  # its root reads only files of the ids it maps (see the tests below)
        _chown_tree(rich, 0, 0)
    data, result = packed_result(rich, confine=mechanism, include_source_dir=True)
    assert result.confinement == mechanism
    assert result.warnings == ()
    dest = tmp_path / "dest"
    ca.untar(_file(tmp_path, data), dest)

    packing.assert_same_tree(rich, dest)
    caps = os.getxattr(dest / "cap-file", "security.capability")
    assert caps == packing.capability_blob()
    assert os.stat(dest / "setuid").st_mode & 0o7777 == 0o4755
    if not limited:
        assert (os.lstat(dest / "bigid").st_uid, os.lstat(dest / "bigid").st_gid) == (
            packing.BIG_UID, packing.BIG_GID)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give everything under ``root`` one owner, keeping the modes and file capabilities
    that a chown clears."""
    paths = [root] + [Path(d) / n for d, dirs, files in os.walk(root) for n in dirs + files]
    for path in paths:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            os.lchown(path, uid, gid)
            continue
        try:
            caps: bytes | None = os.getxattr(path, "security.capability")
        except OSError:
            caps = None
        os.chown(path, uid, gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        if caps is not None:
            os.setxattr(path, "security.capability", caps)


def test_auto_reads_with_chroot_as_root(rich: Path) -> None:
    """As root, ``auto`` reads with ``chroot``: it leaves the source untouched."""
    _, result = packed_result(rich)
    assert result.confinement == "chroot"


def test_auto_leaves_the_source_untouched(rich: Path) -> None:
    """Reading changes nothing in the source, not even the root's mtime or ctime."""
    before = tree.snapshot(rich, ctime=True, nlink=True)
    packed(rich, include_source_dir=True)
    packed("src", rich.parent)  # with a root
    assert tree.diff(before, tree.snapshot(rich, ctime=True, nlink=True)) == []


def test_read_only_source(tmp_path: Path, rich: Path) -> None:
    """A source on a read-only mount can be packed (nothing is written there)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", rich, ro], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=True)
        data = packed(ro)
    finally:
        subprocess.run(["umount", ro], check=True)
    assert "plain" in packing.names(data)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_round_trip_compressed(compression: str, rich: Path, tmp_path: Path) -> None:
    data = packed(rich, compression=compression, include_source_dir=True)
    magic = {"gzip": b"\x1f\x8b\x08", "zstd": b"\x28\xb5\x2f\xfd"}[compression]
    assert data.startswith(magic)
    dest = tmp_path / "dest"
    ca.untar(_file(tmp_path, data), dest)
    packing.assert_same_tree(rich, dest)


def test_compression_level(tmp_path: Path) -> None:
    src = tmp_path / "text"
    src.mkdir()
    (src / "words").write_bytes(b" ".join(b"word%d" % (i % 977) for i in range(200000)))
    fast = packed(src, compression="gzip", compression_level=0)
    small = packed(src, compression="gzip", compression_level=3)
    assert len(small) < len(fast)


def _file(tmp_path: Path, data: bytes, name: str = "archive.tar") -> Path:
    path = tmp_path / "archives" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


# -- other tools read ours, we read theirs -----------------------------------------------


def _bsdtar_waiver(path: str, key: str) -> bool:
    """libarchive writes and reads a negative PAX time as (floor seconds) + (positive
    fraction), not as the real number Go and GNU tar use: -1.500000001 s comes back as
    -0.499999999 s. Only the file dated before 1970 with a fraction is affected."""
    return path == "empty" and key == "mtime_ns"


def test_gnu_tar_extracts_ours(rich: Path, tmp_path: Path) -> None:
    archive = _file(tmp_path, packed(rich, include_source_dir=True))
    dest = tmp_path / "gnu"
    dest.mkdir()
    packing.run(["tar", "-xpf", archive, "--xattrs", "--xattrs-include=*", "--numeric-owner",
                 "-C", dest])
    packing.assert_same_tree(rich, dest)


def test_bsdtar_extracts_ours(rich: Path, tmp_path: Path) -> None:
    archive = _file(tmp_path, packed(rich, include_source_dir=True))
    dest = tmp_path / "bsd"
    dest.mkdir()
    packing.run(["bsdtar", "-xpf", archive, "--xattrs", "--numeric-owner", "-C", dest])

    def waived(path: str, key: str) -> bool:
        # bsdtar does not restore the mtime of "./" (the directory it extracts into).
        return _bsdtar_waiver(path, key) or (path == "." and key == "mtime_ns")

    packing.assert_same_tree(rich, dest, ignore=waived)


def test_bsdtar_keeps_links_whose_targets_need_pax(tmp_path: Path) -> None:
    """A link target in a PAX ``linkpath`` record (non-ASCII, or over 100 bytes) also
    has an ASCII head in the ustar field: bsdtar 3.6 made an empty regular file of a
    symlink or hardlink whose field was empty (unprivileged extraction)."""
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("café", src / "a-first")  # the archive's first entry
    long_name = "f" * 150
    (src / long_name).write_bytes(b"data\n")
    os.link(src / long_name, src / "hard")
    os.symlink("T" * 150, src / "long-link")
    with unpriv.world_dir("bsdlinks") as world:
        archive = world / "a.tar"
        archive.write_bytes(packed(src))
        archive.chmod(0o644)
        dest = world / "dest"
        dest.mkdir()
        os.chown(dest, unpriv.NOBODY, unpriv.NOBODY)
        packing.run([*unpriv.setpriv(), "bsdtar", "-xf", archive, "-C", dest])
        assert os.readlink(dest / "a-first") == "café"
        assert os.readlink(dest / "long-link") == "T" * 150
        assert (dest / "hard").read_bytes() == b"data\n"
        assert os.stat(dest / "hard").st_ino == os.stat(dest / long_name).st_ino
    assert tarfile.open(fileobj=io.BytesIO(packed(src))).getmember("a-first").linkname == "café"


def test_xattr_names_with_equals_and_percent(tmp_path: Path) -> None:
    """A PAX key ends at its first ``=``: ``user.a=b`` was written as ``user.a`` with the
    value ``b=...`` for every reader. Names are written with GNU tar's escapes (``%3D``,
    ``%25``) and read back with them, by us and by GNU tar (unprivileged)."""
    xattrs = {"user.a=b": b"eq", "user.100%": b"pct", "user.%3D": b"literal"}
    with unpriv.world_dir("xattrnames") as world:
        src = world / "src"
        src.mkdir()
        (src / "f").write_bytes(b"x")
        for key, value in xattrs.items():
            os.setxattr(src / "f", key, value)
        data = packed(src)
        keys = {k for k in {m.name: m for m in packing.members(data)}["f"].pax_headers
                if k.startswith("SCHILY.xattr.")}
        assert keys == {"SCHILY.xattr.user.a%3Db", "SCHILY.xattr.user.100%25",
                        "SCHILY.xattr.user.%253D"}
        ours = world / "ours.tar"
        ours.write_bytes(data)
        ours.chmod(0o644)
        gnu = world / "gnu.tar"
        packing.run(["tar", "-cf", gnu, "--format=pax", "--xattrs", "--xattrs-include=*",
                     "-C", src, "."])
        gnu.chmod(0o644)
        for name, archive in (("ours", ours), ("gnu", gnu)):
            dest = world / f"by-us-{name}"
            ca.untar(archive, dest)
            assert {k: os.getxattr(dest / "f", k) for k in os.listxattr(dest / "f")} == xattrs
        dest = world / "by-gnu-tar"
        dest.mkdir()
        os.chown(dest, unpriv.NOBODY, unpriv.NOBODY)
        packing.run([*unpriv.setpriv(), "tar", "-xf", ours, "--xattrs",
                     "--xattrs-include=*", "-C", dest])
        assert {k: os.getxattr(dest / "f", k) for k in os.listxattr(dest / "f")} == xattrs


def test_we_extract_gnu_tar(rich: Path, tmp_path: Path) -> None:
    archive = tmp_path / "gnu.tar"
    packing.run(["tar", "-cf", archive, "--format=pax", "--xattrs", "--xattrs-include=*",
                 "--numeric-owner", "-C", rich, "."])
    dest = tmp_path / "dest"
    ca.untar(archive, dest)
    packing.assert_same_tree(rich, dest)


def test_we_extract_bsdtar(rich: Path, tmp_path: Path) -> None:
    archive = tmp_path / "bsd.tar"
    packing.run(["bsdtar", "-cf", archive, "--format", "pax", "--xattrs", "--numeric-owner",
                 "-C", rich, "."])
    dest = tmp_path / "dest"
    ca.untar(archive, dest)
    packing.assert_same_tree(rich, dest, ignore=_bsdtar_waiver)


def test_we_extract_bsdtar_xattr_names_once(tmp_path: Path) -> None:
    """bsdtar writes each xattr twice, ``LIBARCHIVE.xattr.`` and ``SCHILY.xattr.``, both
    under a URL-encoded name when it is not plain ASCII: ``user.日本`` was also set as
    ``user.%E6%97%A5%E6%9C%AC`` (and ``user.a=b`` as ``user.a%3Db``)."""
    xattrs = {"user.日本": b"\xff\x00bin", "user.a=b": b"eq", "user.plain": b"p",
              os.fsdecode(b"user.\xff"): b"raw"}
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    for key, value in xattrs.items():
        os.setxattr(src / "f", key, value)
    archive = tmp_path / "bsd.tar"
    packing.run(["bsdtar", "-cf", archive, "--format", "pax", "--xattrs", "-C", src, "."])
    dest = tmp_path / "dest"
    ca.untar(archive, dest)
    assert {k: os.getxattr(dest / "f", k) for k in os.listxattr(dest / "f")} == xattrs


def test_gnu_tar_lists_same_entries_as_ours(rich: Path, tmp_path: Path) -> None:
    """The same member list (names, types, sizes) as GNU tar's for the same tree."""
    ours = packing.members(packed(rich))
    gnu = tmp_path / "gnu.tar"
    packing.run(["tar", "-cf", gnu, "--format=pax", "--numeric-owner", "-C", rich, "."])
    theirs = [m for m in packing.members(gnu.read_bytes()) if m.name != "."]

    def key(m: tarfile.TarInfo) -> tuple[str, bytes, str]:
        # Which name of a hardlink group carries the data depends on the walk order
        # (ours is sorted, GNU tar's is the directory's).
        kind = tarfile.REGTYPE if m.islnk() else m.type
        return (m.name.removeprefix("./"), kind, m.linkname if m.issym() else "")

    assert sorted(map(key, ours)) == sorted(map(key, theirs))


def test_entries_in_the_bytes_order_of_their_names(tmp_path: Path) -> None:
    """Entries come in the byte order of their names, as GNU tar's ``--sort=name`` and
    Docker's walk write them: a name that is not UTF-8 (b"\\xff") came before "日"."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for raw in (b"\xff", "日".encode(), b"z", b"a", b"\x80x", "é".encode(), "𝄞".encode(),
                b"d/\xfe", b"d/\xc3\xa9"):
        (src / os.fsdecode(raw)).write_bytes(b"x")
    gnu = tmp_path / "gnu.tar"
    packing.run(["tar", "-cf", gnu, "--format=pax", "--sort=name", "-C", src, "."])
    theirs = [m.name.removeprefix("./") for m in packing.members(gnu.read_bytes())
              if m.name != "."]
    assert packing.names(packed(src)) == theirs


def test_stdlib_reads_ours(rich: Path) -> None:
    """Python's tarfile (a third reader) sees what we meant."""
    by_name = {m.name: m for m in packing.members(packed(rich))}
    # "hard1" comes first in sorted order: it carries the data, the others link to it.
    assert by_name["hard1"].isreg() and by_name["hard1"].size == 140
    assert by_name["hard1"].pax_headers["SCHILY.xattr.user.comment"] == "hello xattr"
    assert "SCHILY.xattr.security.capability" in by_name["cap-file"].pax_headers
    assert by_name["bigid"].uid == packing.BIG_UID
    assert by_name["bigid"].gid == packing.BIG_GID
    assert by_name["huge-dev"].devmajor == 4095 and by_name["huge-dev"].devminor == 1048575
    assert by_name["long-link"].linkname == packing.LONG_TARGET
    assert by_name["exec"].mtime == packing.FAR_TIME / 1e9
    hard = [m for m in by_name.values() if m.islnk()]
    assert sorted(m.name for m in hard) == ["plain", "sub/hard2"]
    assert {m.linkname for m in hard} == {"hard1"}
    long_name = f"{packing.LONG_COMPONENT}/{packing.LONG_COMPONENT}/{'n' * 120}"
    assert by_name[long_name].size == len(b"long name\n")
    assert by_name["sub"].isdir()
    # Directories are written before what they hold, in sorted order.
    listed = [m.name for m in packing.members(packed(rich))]
    assert listed.index("sub") < listed.index("sub/deeper") < listed.index("sub/deeper/file")


def test_no_names_unless_given(rich: Path) -> None:
    """Owners are numeric; user and group names are empty unless the caller maps them
    (names are never looked up: CVE-2019-14271)."""
    for m in packing.members(packed(rich)):
        assert (m.uname, m.gname) == ("", ""), m.name
    named = packing.members(packed(rich, user_names={0: "root", 1234: "a" * 40},
                                   group_names={5678: "grøup"}))
    by_name = {m.name: m for m in named}
    assert (by_name["plain"].uname, by_name["plain"].gname) == ("root", "")
    assert (by_name["private"].uname, by_name["private"].gname) == ("a" * 40, "grøup")


@pytest.fixture(scope="module")
def nss_payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """A shared library whose constructor writes a marker: an NSS module that glibc
    would load from the root if anything looked a name up there."""
    base = tmp_path_factory.mktemp("nss")
    markers = tmp_path_factory.mktemp("nss-markers")
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "gcc is needed to build the NSS payload"
    (base / "evil.c").write_text(
        "#include <fcntl.h>\n#include <unistd.h>\n"
        "__attribute__((constructor)) static void pwn(void) {\n"
        f'  int fd = open("{markers}/loaded", O_WRONLY | O_CREAT, 0644);\n'
        '  if (fd < 0) fd = open("/NSS-LOADED", O_WRONLY | O_CREAT, 0644);\n'
        "  if (fd >= 0) close(fd);\n}\n"
        "int _nss_evil_getpwuid_r(void) { return 0; }\n"
        "int _nss_evil_getgrgid_r(void) { return 0; }\n"
    )
    so = base / "libnss_evil.so.2"
    subprocess.run([cc, "-shared", "-fPIC", "-o", so, base / "evil.c"], check=True)
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(so)!r})"],
                   check=True)
    assert (markers / "loaded").exists(), "the payload does not run: the test proves nothing"
    (markers / "loaded").unlink()
    return so.read_bytes(), markers


def test_no_nss_module_loaded_from_the_root(mechanism: str, nss_payload: tuple[bytes, Path],
                                            tmp_path: Path) -> None:
    """CVE-2019-14271: the jailed reader never loads a library from the root."""
    so, markers = nss_payload
    root = tmp_path / "container"
    for libdir in ("lib", "lib64", "usr/lib", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu",
                   "usr/lib/x86_64-linux-gnu"):
        (root / libdir).mkdir(parents=True, exist_ok=True)
        (root / libdir / "libnss_evil.so.2").write_bytes(so)
    (root / "etc").mkdir()
    (root / "etc" / "nsswitch.conf").write_text("passwd: evil\ngroup: evil\n")
    (root / "data").mkdir()
    (root / "data" / "f").write_bytes(b"x")
    os.chown(root / "data" / "f", 4242, 4343)
    data = packed("/data", root, confine=mechanism)
    assert packing.names(data) == ["f"]
    assert not list(markers.iterdir())
    assert not (root / "NSS-LOADED").exists()


# -- options --------------------------------------------------------------------------------


@pytest.fixture
def selection(tmp_path: Path) -> Path:
    src = tmp_path / "sel"
    for path in ("a/x.log", "a/keep.log", "a/y.txt", "b/x", "b/y/z", "c/drop", "c/keep/k",
                 "d/one", "top.log"):
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(path.encode())
    return src


def test_excludes_with_exceptions(selection: Path) -> None:
    names = packing.names(packed(selection, excludes=(
        "a/*.log", "!a/keep.log", "b", "c", "!c/keep/**", "*.log")))
    # As Docker: an excluded directory is not written, even when an exception brings
    # back something below it.
    assert sorted(names) == ["a", "a/keep.log", "a/y.txt", "c/keep/k", "d", "d/one"]


@pytest.mark.parametrize("pattern", ["*.log", "b", "y", "b/y", "?/y", "[ac]", "*/k*",
                                     "keep", "!c", "top.log", "x*"])
def test_tar_style_excludes_as_gnu_tar_create(selection: Path, pattern: str) -> None:
    """``exclude_style='tar'``: GNU tar's ``tar -c --exclude`` on the same names (the
    source's own, as ``tar -c -C SRC NAME...`` writes them): any tail of the name,
    ``*`` across ``/``, ``!`` literal. Docker's style would keep ``a/x.log`` for
    ``*.log`` and drop nothing for ``y``."""
    gnu = subprocess.run(["tar", "-c", "-f", "-", "-C", str(selection), f"--exclude={pattern}",
                          *sorted(os.listdir(selection))], capture_output=True, check=True)
    expected = sorted(packing.names(gnu.stdout))
    assert sorted(packing.names(packed(selection, excludes=(pattern,),
                                       exclude_style="tar"))) == expected


def test_tar_style_patterns_are_checked_in_the_caller() -> None:
    """With tar's style, a bad pattern is refused by its own compiler (``[]a`` is
    tar's bracket holding ``]``, ``[a`` is unclosed), before a worker starts."""
    ca.PackOptions(excludes=("[]a]",), exclude_style="tar")
    with pytest.raises(ValueError, match=r"PackOptions\.excludes"):
        ca.PackOptions(excludes=("[a",), exclude_style="tar")


def test_include_files(selection: Path) -> None:
    """Only the included paths; an explicitly included path is packed even when
    excluded (its children are not), as Docker does; includes may overlap."""
    data, result = packed_result(selection, include_files=("a/y.txt", "d", "d/one", "b"),
                                 excludes=("b", "d/one"))
    assert sorted(packing.names(data)) == ["a/y.txt", "b", "d", "d/one"]
    assert result.warnings == ()
    _, result = packed_result(selection, include_files=("missing/x", "a/nothing"))
    assert len(result.warnings) == 2 and "not found" in result.warnings[0]


def test_include_does_not_follow_symlinks(mechanism: str, selection: Path,
                                          tmp_path: Path) -> None:
    outside = packing.outside_tree(tmp_path / "outside")
    os.symlink(outside, selection / "link")
    data, result = packed_result(selection, include_files=("link/file", "link"),
                                 confine=mechanism)
    assert packing.MARKER not in data
    assert [m.issym() for m in packing.members(data)] == [True]
    assert any("symlinks are not followed" in w for w in result.warnings)


def test_rebase_names(selection: Path) -> None:
    os.link(selection / "a" / "y.txt", selection / "d" / "y-link")
    members = packing.members(packed(selection, rebase_names={"a": "renamed/a2", "d": ""}))
    names = sorted(m.name for m in members)
    assert "renamed/a2/y.txt" in names and "one" in names and "b/y/z" in names
    assert not any(n == "a" or n.startswith("a/") or n.startswith("d") for n in names)
    link = next(m for m in members if m.islnk())
    assert (link.name, link.linkname) == ("y-link", "renamed/a2/y.txt")


def test_include_source_dir_and_rename_source(selection: Path) -> None:
    os.chmod(selection, 0o750)
    members = packing.members(packed(selection, include_source_dir=True))
    assert members[0].name == "." and members[0].isdir() and members[0].mode == 0o750
    names = packing.names(packed(selection, include_source_dir=True,
                                 rebase_names={".": "top"}))
    assert names[0] == "top" and "top/a/y.txt" in names


def test_chown(rich: Path) -> None:
    for m in packing.members(packed(rich, chown=(1, 2))):
        assert (m.uid, m.gid) == (1, 2), m.name


def test_id_maps_host_to_container(mechanism: str, tmp_path: Path) -> None:
    """Host ids are written as container ids (the reverse of unpack's maps)."""
    src = tmp_path / "mapped"
    src.mkdir()
    for name, uid in (("root-owned", 100000), ("user", 101000)):
        (src / name).write_bytes(b"x")
        os.chown(src / name, uid, uid + 5)
    maps = (ca.IDMap(container_id=0, host_id=100000, size=65536),)
    if mechanism in LIMITED_AS_ROOT:
        # Inside its user namespace, ids it does not map read as the overflow id.
        with pytest.raises(ca.SourceError, match="uid 65534 cannot be mapped"):
            packed(src, uid_maps=maps, gid_maps=maps, confine=mechanism)
        return
    data = packed(src, uid_maps=maps, gid_maps=maps, confine=mechanism)
    by_name = {m.name: m for m in packing.members(data)}
    assert (by_name["root-owned"].uid, by_name["root-owned"].gid) == (0, 5)
    assert (by_name["user"].uid, by_name["user"].gid) == (1000, 1005)
    (src / "unmapped").write_bytes(b"x")  # owned by 0:0, outside the map
    with pytest.raises(ca.SourceError) as info:
        packed(src, uid_maps=maps, gid_maps=maps, confine=mechanism)
    assert info.value.entry is not None and info.value.entry.endswith("unmapped")
    assert "cannot be mapped" in info.value.message


def _acl(*named: tuple[int, int]) -> bytes:
    """A ``system.posix_acl_access`` value (version 2) naming ``(tag, id)`` entries:
    tag 2 a user, 8 a group."""
    undefined = 0xFFFFFFFF
    entries = sorted([(1, 6, undefined), *((tag, 4, ident) for tag, ident in named),
                      (4, 4, undefined), (0x10, 6, undefined), (0x20, 4, undefined)])
    return b"\x02\x00\x00\x00" + b"".join(
        struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


def _acl_named(value: str | bytes) -> set[tuple[int, int]]:
    """The (tag, id) of an ACL's named users (2) and groups (8)."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    entries = (struct.unpack("<HHI", raw[i:i + 8]) for i in range(4, len(raw), 8))
    return {(tag, ident) for tag, _, ident in entries if tag in (2, 8)}


def test_acl_ids_are_mapped_like_owners(tmp_path: Path) -> None:
    """An ACL's named ids are owners: --uid-map/--gid-map write them as container ids,
    as untar maps them back (they were written as host ids, which untar with the same
    maps refused), and one outside the maps fails naming the entry."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.chown(src / "f", 100000, 100000)
    os.setxattr(src / "f", "system.posix_acl_access", _acl((2, 101234), (8, 100050)))
    maps = (ca.IDMap(container_id=0, host_id=100000, size=65536),)
    data = packed(src, uid_maps=maps, gid_maps=maps)
    member = {m.name: m for m in packing.members(data)}["f"]
    assert _acl_named(member.pax_headers["SCHILY.xattr.system.posix_acl_access"]) == {
        (2, 1234), (8, 50)}
    dest = tmp_path / "dest"
    ca.untar(_file(tmp_path, data), dest, ca.UnpackOptions(uid_maps=maps, gid_maps=maps))
    assert os.getxattr(dest / "f", "system.posix_acl_access") == os.getxattr(
        src / "f", "system.posix_acl_access")
    os.setxattr(src / "f", "system.posix_acl_access", _acl((2, 7)))
    with pytest.raises(ca.SourceError, match=r"uid 7 \(in an ACL\) cannot be mapped") as info:
        packed(src, uid_maps=maps, gid_maps=maps)
    assert info.value.entry is not None and info.value.entry.endswith("f")


def test_whole_second_mtimes_and_no_xattrs(rich: Path) -> None:
    data = packed(rich, whole_second_mtimes=True, xattrs=False)
    for m in packing.members(data):
        assert not any(k.startswith("SCHILY.xattr.") for k in m.pax_headers), m.name
        assert "mtime" not in m.pax_headers or m.name in ("empty", "exec"), m.name
    plain = next(m for m in packing.members(data) if m.name == "plain")
    assert plain.mtime == packing.NS_TIME // 10**9


def test_security_selinux_and_trusted_not_written(mechanism: str, tmp_path: Path) -> None:
    src = tmp_path / "labels"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "trusted.overlay.opaque", b"y")
    os.setxattr(src / "f", "user.kept", b"1")
    (m,) = packing.members(packed(src, confine=mechanism))
    keys = sorted(k for k in m.pax_headers if k.startswith("SCHILY.xattr."))
    assert keys == ["SCHILY.xattr.user.kept"]


def test_socket_skipped_with_warning(mechanism: str, tmp_path: Path) -> None:
    src = tmp_path / "sock"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(src / "s"))
        data, result = packed_result(src, confine=mechanism)
    assert packing.names(data) == ["f"]
    assert len(result.warnings) == 1 and "s: socket skipped" in result.warnings[0]


def test_hardlink_whose_first_name_is_excluded(mechanism: str, tmp_path: Path) -> None:
    src = tmp_path / "links"
    src.mkdir()
    (src / "a").write_bytes(b"content")
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "c")
    members = packing.members(packed(src, excludes=("a",), confine=mechanism))
    assert [(m.name, m.type, m.linkname) for m in members] == [
        ("b", tarfile.REGTYPE, ""), ("c", tarfile.LNKTYPE, "b")]


def test_hardlink_bookkeeping_is_bounded(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An inode is remembered until its last link is packed, and at most _MAX_LINKS
    at a time (lowered to 2 here; in-process, where the constant can be changed): links
    whose other names lie outside the source would otherwise be kept for the whole walk.
    Past the cap, a file is packed whole, with one warning."""
    from chrootarchive.engine import packer

    monkeypatch.setattr(packer, "_MAX_LINKS", 2)
    src, outside = tmp_path / "src", tmp_path / "outside"
    src.mkdir()
    outside.mkdir()
    for name in "acde":
        (src / name).write_bytes(name.encode())
    os.link(src / "a", src / "b")  # complete in the source: forgotten after "b"
    os.link(src / "c", outside / "c")  # "c" and "d": their other link is outside,
    os.link(src / "d", outside / "d")  # so they stay remembered
    os.link(src / "e", src / "f")  # met when two inodes are remembered: packed whole
    data, result = packed_result(src, confine="openat2")
    members = {m.name: (m.type, m.linkname) for m in packing.members(data)}
    assert members["b"] == (tarfile.LNKTYPE, "a")
    assert members["c"] == members["d"] == (tarfile.REGTYPE, "")
    assert members["e"] == members["f"] == (tarfile.REGTYPE, "")
    assert len(result.warnings) == 1 and "packed as separate files" in result.warnings[0]


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="compression"):
        ca.PackOptions(compression="xz")
    with pytest.raises(ValueError, match="leaves the source"):
        ca.PackOptions(include_files=("../x",))
    with pytest.raises(ValueError, match="leaves the source"):
        ca.PackOptions(rebase_names={"a/../..": "b"})
    options = ca.PackOptions(include_files=("/a/./b/",), rebase_names={"x/": "/y/"})
    assert options.include_files == ("a/b",)
    assert dict(options.rebase_names) == {"x": "y"}


# -- sources --------------------------------------------------------------------------------


def test_single_file_and_symlink_sources(mechanism: str, tmp_path: Path) -> None:
    src = tmp_path / "dir"
    src.mkdir()
    (src / "file").write_bytes(b"one file")
    os.chmod(src / "file", 0o640)
    os.symlink("file", src / "link")
    (src / "sub").mkdir()
    (src / "sub" / "inner").write_bytes(b"inner")
    os.symlink("sub", src / "dirlink")

    (m,) = packing.members(packed(src / "file", confine=mechanism))
    assert (m.name, m.size, m.mode) == ("file", 8, 0o640)
    (m,) = packing.members(packed(src / "file", rebase_names={".": "renamed"},
                                  confine=mechanism))
    assert m.name == "renamed"
    (m,) = packing.members(packed(src / "link", confine=mechanism))
    assert (m.name, m.issym(), m.linkname) == ("link", True, "file")
    (m,) = packing.members(packed(src / "dirlink", confine=mechanism))
    assert m.issym()
    # A trailing "/" follows the last component (inside the jail).
    assert packing.names(packed(f"{src}/dirlink/", confine=mechanism)) == ["inner"]
    assert packing.names(packed("dirlink/", src, confine=mechanism)) == ["inner"]
    assert packing.names(packed("dirlink/.", src, confine=mechanism)) == ["inner"]


def test_paths_inside_a_root(mechanism: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "app").mkdir(parents=True)
    (root / "etc" / "app" / "conf").write_bytes(b"conf")
    os.symlink("etc", root / "config")  # an in-root symlink on the way is followed
    for src in ("etc/app", "/etc/app", root / "etc" / "app", "config/app", "/x/../etc/app"):
        assert packing.names(packed(src, root, confine=mechanism)) == ["conf"], src
    assert sorted(packing.names(packed("/", root, confine=mechanism))) == [
        "config", "etc", "etc/app", "etc/app/conf"]


def test_missing_source_is_a_typed_error(mechanism: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "file").write_bytes(b"x")
    with pytest.raises(ca.SourceError) as info:
        packed("missing/thing", root, confine=mechanism)
    assert info.value.entry == "missing/thing"
    assert "no such file" in info.value.message
    with pytest.raises(ca.SourceError) as info:
        packed("file/below/", root, confine=mechanism)
    assert "not a directory" in info.value.message
    with pytest.raises(ca.SourceError) as info:
        ca.tar(tmp_path / "nope")
    assert info.value.entry == str(tmp_path / "nope")
    with pytest.raises(ca.SourceError):
        ca.tar("x", tmp_path / "no-root")


def test_unreadable_file_is_a_source_error_naming_it(tmp_path: Path) -> None:
    """Without CAP_DAC_READ_SEARCH (an unprivileged caller), a file that cannot be
    read stops the stream with a SourceError naming it."""
    top = Path(tempfile.mkdtemp(prefix="pack-unreadable-", dir="/tmp"))
    top.chmod(0o755)
    src = top / "src"
    src.mkdir()
    (src / "locked").write_bytes(b"x")
    os.chmod(src / "locked", 0)
    script = (
        "import chrootarchive as ca, sys\n"
        "try:\n"
        f"    ca.tar({str(src)!r}, options=ca.PackOptions(confine='openat2')).read()\n"
        "except ca.SourceError as e:\n"
        "    print(type(e).__name__, e.entry, e.message)\n"
    )
    try:
        # The system's interpreter and a world-readable copy of the package: the test's
        # own interpreter may live where uid 65534 cannot read it.
        pythonpath = unpriv.make_package_copy(top)
        result = unpriv.run_as([unpriv.SYSTEM_PYTHON, "-c", script], pythonpath)
    finally:
        shutil.rmtree(top)
    assert result.out.split(" ", 2)[:2] == ["SourceError", f"{src}/locked"], result


def test_deep_tree(mechanism: str, tmp_path: Path) -> None:
    """One descriptor per level is held: a deep tree works and keeps its order."""
    src = tmp_path / "deep"
    path = src
    for _ in range(300):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "leaf").write_bytes(b"leaf")
    names = packing.names(packed(src, confine=mechanism))
    assert len(names) == 301 and names[-1].endswith("d/leaf")
    dest = tmp_path / "dest"
    ca.untar(_file(tmp_path, packed(src, confine=mechanism)), dest)
    packing.assert_same_tree(src, dest, root_meta=False)


def test_progress_counts_every_byte(rich: Path) -> None:
    seen: list[int] = []
    with ca.tar(rich, progress=seen.append) as stream:
        data = stream.read()
    assert seen == sorted(seen) and seen[-1] == len(data)  # cumulative
    seen.clear()
    with ca.tar(rich, options=ca.PackOptions(compression="gzip"), progress=seen.append) as s:
        compressed = s.read()
    assert seen[-1] > len(compressed)  # progress counts tar bytes


def test_stream_reads_in_small_pieces(rich: Path) -> None:
    whole = packed(rich)
    for compression in ("none", "zstd"):
        with ca.tar(rich, options=ca.PackOptions(compression=compression)) as stream:
            parts = []
            buf = bytearray(777)
            while True:
                n = stream.readinto(buf)
                if not n:
                    break
                parts.append(bytes(buf[:n]))
        data = b"".join(parts)
        if compression == "zstd":
            import zstandard
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        assert data == whole


# -- headers --------------------------------------------------------------------------------


def _pax_records(blocks: bytes) -> dict[bytes, bytes]:
    assert blocks[156:157] == b"x"
    size = int(blocks[124:135], 8)
    body = blocks[512 : 512 + size]
    records = {}
    while body:
        length = body.partition(b" ")[0]
        record = body[: int(length)]
        key, _, value = record[len(length) + 1 : -1].partition(b"=")
        records[key] = value
        body = body[int(length) :]
    return records


def test_header_pax_for_what_ustar_cannot_hold() -> None:
    plain = writer.header(b"name", tarformat.REGTYPE, mode=0o644, uid=1, gid=2,
                          mtime_ns=1_000_000_000_000_000_000, size=3)
    assert len(plain) == 512 and plain[257:263] == b"ustar\x00"
    big = writer.header(b"big", tarformat.REGTYPE, mode=0o644, uid=0, gid=0, mtime_ns=0,
                        size=9 << 30)
    assert _pax_records(big)[b"size"] == str(9 << 30).encode()
    negative = writer.header(b"old", tarformat.REGTYPE, mode=0, uid=0, gid=0,
                             mtime_ns=-1_500_000_001)
    assert _pax_records(negative)[b"mtime"] == b"-1.500000001"
    binary = writer.header(b"x" * 300 + b"\xff", tarformat.REGTYPE, mode=0, uid=0, gid=0,
                           mtime_ns=0)
    records = _pax_records(binary)
    assert records[b"hdrcharset"] == b"BINARY" and records[b"path"].endswith(b"\xff")
    # A 200-byte name with a slash in the right place fits ustar's prefix field.
    split = writer.header(b"p" * 120 + b"/" + b"n" * 90, tarformat.REGTYPE, mode=0, uid=0, gid=0,
                          mtime_ns=0)
    assert len(split) == 512
    for record_len in range(1, 1200, 7):  # record lengths across digit boundaries
        value = b"v" * record_len
        rec = writer._pax_record(b"k", value)
        assert int(rec.split(b" ")[0]) == len(rec)


# -- 4 MB of exclude patterns ---------------------------------------------------------------


def test_four_megabytes_of_exclude_patterns(mechanism: str, tmp_path: Path) -> None:
    """Docker's options once travelled in the environment and hit the argument-size
    limit with 4 MB of exclude patterns; ours go through a pipe."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("keep-1", "keep-2", "drop-me"):
        (src / name).write_bytes(name.encode())
    patterns = [f"pattern-{i:06d}-".ljust(64, "x") for i in range(65536)] + ["drop-me"]
    assert sum(len(p) for p in patterns) >= 4 << 20
    names = packing.names(packed(src, excludes=tuple(patterns), confine=mechanism))
    assert names == ["keep-1", "keep-2"]


# -- nothing left behind --------------------------------------------------------------------


def _big_tree(tmp_path: Path) -> Path:
    src = tmp_path / "big"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(4 << 20))
    return src


def test_nothing_leaked(mechanism: str, tmp_path: Path) -> None:
    """Read to the end, closed early, never read, failed, or dropped without close:
    no child process, no descriptor, no mount is left."""
    src = _big_tree(tmp_path)
    options = ca.PackOptions(confine=mechanism)
    check = LeakCheck(tmp_path, fds=True)
    with ca.tar(src, options=options) as stream:
        assert len(stream.read()) > 32 << 20
    with ca.tar(src, options=options) as stream:
        assert len(stream.read(1000)) == 1000  # the worker is blocked on a full pipe
    started = time.monotonic()
    stream = ca.tar(src, options=options)
    stream.close()
    assert time.monotonic() - started < 10
    with pytest.raises(ca.SourceError), ca.tar("missing", src, options) as stream:
        stream.read()
    stream = ca.tar(src, options=options)
    stream.read(10)
    del stream
    gc.collect()
    assert check.problems() == []


def test_closing_early_kills_the_worker(tmp_path: Path) -> None:
    src = _big_tree(tmp_path)
    before = {pid for pid, _, _ in child_pids()}
    stream = ca.tar(src, options=ca.PackOptions(confine="chroot"))
    workers = [pid for pid, _, _ in child_pids() if pid not in before]
    assert len(workers) == 1
    stream.read(10)
    stream.close()
    assert not [pid for pid, _, _ in child_pids() if pid in workers]
    with pytest.raises(ValueError):
        stream.read(1)


def test_result_and_errors_reach_the_reader_once(tmp_path: Path) -> None:
    src = tmp_path / "one"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    stream = ca.tar(src)
    assert stream.result is None
    stream.read()
    assert stream.result is not None and stream.result.entries == 1
    assert stream.result.size == 1
    stream.close()
    stream = ca.tar("gone", src)
    with pytest.raises(ca.SourceError):
        stream.read()
    assert stream.read() == b""  # raised once, at the end
    stream.close()


def test_worker_keeps_only_what_reading_needs() -> None:
    """No CAP_DAC_READ_SEARCH: it would allow open_by_handle_at out of the jail."""
    # Any request will do: the capabilities do not depend on it.
    assert pack.capabilities({}) == frozenset(  # type: ignore[arg-type]
        {"CAP_DAC_OVERRIDE", "CAP_FOWNER"})


def test_root_reads_files_without_permissions(mechanism: str, tmp_path: Path) -> None:
    src = tmp_path / "locked"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "inner").write_bytes(b"inner")
    (src / "file").write_bytes(b"file")
    os.chown(src / "file", 1000, 1000)
    os.chmod(src / "file", 0)
    os.chmod(src / "dir", 0)
    if mechanism in LIMITED_AS_ROOT:
        # The namespace's root has no capability over a file of an id it does not map
        # ("auto" never reads with userns as root).
        with pytest.raises(ca.SourceError, match="permission denied") as info:
            packed(src, confine=mechanism)
        assert info.value.entry is not None and info.value.entry.endswith("file")
        return
    by_name = {m.name: m for m in packing.members(packed(src, confine=mechanism))}
    assert sorted(by_name) == ["dir", "dir/inner", "file"]
    assert by_name["file"].mode == 0 and by_name["dir"].mode == 0


def test_special_files_keep_their_kind(mechanism: str, tmp_path: Path) -> None:
    src = tmp_path / "special"
    src.mkdir()
    os.mkfifo(src / "fifo")
    os.mknod(src / "chr", 0o600 | stat.S_IFCHR, os.makedev(10, 200))
    os.mknod(src / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 1))
    by_name = {m.name: m for m in packing.members(packed(src, confine=mechanism))}
    assert by_name["fifo"].isfifo()
    assert by_name["chr"].ischr() and (by_name["chr"].devmajor, by_name["chr"].devminor) == (
        10, 200)
    assert by_name["blk"].isblk() and (by_name["blk"].devmajor, by_name["blk"].devminor) == (
        7, 1)


def test_tar_leaves_its_own_output_out(tmp_path: Path) -> None:
    """An archive written inside its own source is not packed into itself, as GNU tar
    says "file is the archive; not dumped": neither the file being written, nor the
    old archive it replaces, nor a standard output redirected into the tree. It packed
    its own partial output (fuzzing the command line, issue 16, twentieth round)."""
    from helpers.cli import CLI, run_cli

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    (src / "out.tar").write_bytes(b"an old archive")
    result = run_cli("tar", src, "-o", src / "out.tar")
    assert result.rc == 0, result.err
    with tarfile.open(src / "out.tar") as archive:
        assert archive.getnames() == ["a"]
    # Once, by the name it has: the file being written (under a temporary name) and
    # the old one it replaces are the same archive to the user, as for GNU tar.
    assert result.err.count("file is the archive; not dumped") == 1, result.err
    assert f"{src}/out.tar: file is the archive" in result.err, result.err
    assert ".partial" not in result.err, result.err
    assert sorted(os.listdir(src)) == ["a", "out.tar"]  # no partial file left
    result = run_cli("tar", src, "-o", src / "new.tar")  # nothing to replace
    assert result.rc == 0 and result.err.count(f"{src}/new.tar: file is the archive") == 1, (
        result.err)
    assert ".partial" not in result.err, result.err
    with open(src / "stdout.tar", "wb") as out:
        proc = subprocess.run([*CLI, "tar", str(src)], stdout=out, stderr=subprocess.PIPE,
                              check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"stdout.tar: file is the archive; not dumped" in proc.stderr
    with tarfile.open(src / "stdout.tar") as archive:
        assert sorted(archive.getnames()) == ["a", "new.tar", "out.tar"]


def test_tar_packs_a_file_the_output_only_names(tmp_path: Path) -> None:
    """OUT a symlink to a file in SRC, or another name of one: the rename replaces that
    name alone, and the file is packed (it was left out as "the archive")."""
    from helpers.cli import run_cli

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    (tmp_path / "link.tar").symlink_to("src/a")
    os.link(src / "a", tmp_path / "other.tar")
    for out in ("link.tar", "other.tar"):
        result = run_cli("tar", "-o", tmp_path / out, src)
        assert result.rc == 0 and result.err == "", result.err
        with tarfile.open(tmp_path / out) as archive:
            assert archive.getnames() == ["a"]
    assert (src / "a").read_bytes() == b"a"


def test_tar_api_leaves_the_archive_file_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    with open(src / "self.tar", "wb") as out:
        with ca.tar(src, archive_fds=[out.fileno()]) as stream:
            shutil.copyfileobj(stream, out)
        assert stream.result is not None
        assert any("self.tar: file is the archive" in w for w in stream.result.warnings)
    with tarfile.open(src / "self.tar") as archive:
        assert archive.getnames() == ["a"]
    with pytest.raises(ValueError, match="base name"):
        ca.tar(src, archive_fds=[0], archive_name="d/x.tar")


def _packed_as_nobody(top: Path, src: Path, confine: str) -> tuple[CLIResult, Path]:
    """``chrootarchive tar SRC`` run as nobody under ``confine``, into ``top/out``:
    its result (it succeeded) and the archive."""
    pythonpath = unpriv.make_package_copy(top)
    out = top / "out"
    out.mkdir()
    os.chown(out, unpriv.NOBODY, unpriv.NOBODY)
    result = unpriv.cli_as(pythonpath, "tar", "--confine", confine, src, "-o", out / "a.tar")
    assert result.rc == 0, result.err
    return result, out / "a.tar"


@pytest.mark.parametrize("confine", ["userns", "openat2"])
def test_unprivileged_pack_records_owners_as_they_are_outside(confine: str) -> None:
    """Under ``userns`` the caller's own files are 0:0 inside the namespace and others'
    the overflow id: they were recorded so, the caller's as root's. The caller's are
    now recorded as theirs, and those the namespace cannot map are counted in a
    warning (``openat2`` sees every owner)."""
    with unpriv.world_dir("owners") as top:
        src = top / "src"
        src.mkdir()
        (src / "mine").write_bytes(b"m")
        (src / "roots").write_bytes(b"r")
        for path in (src, src / "mine"):
            os.chown(path, unpriv.NOBODY, unpriv.NOBODY)
        result, archive_path = _packed_as_nobody(top, src, confine)
        with tarfile.open(archive_path) as archive:
            owners = {m.name: (m.uid, m.gid) for m in archive.getmembers()}
    assert owners["mine"] == (unpriv.NOBODY, unpriv.NOBODY)
    if confine == "openat2":
        assert owners["roots"] == (0, 0)
        assert result.err == ""
    else:
        assert owners["roots"] == (65534, 65534)
        assert "2 owners (uids and gids) are not mapped in the user namespace" in result.err


def test_default_acl_is_not_inherited_by_what_is_unpacked_below(tmp_path: Path) -> None:
    """A directory's default ACL was set as soon as it was made, so every file and
    directory unpacked below it inherited an access ACL the archive does not hold
    (here: user 1234 could read a 0640 file). It is set at the end, as GNU tar and
    bsdtar do."""
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"secret")
    (src / "d" / "f").chmod(0o640)
    (src / "d" / "sub").chmod(0o750)
    default = _acl((2, 1234))
    os.setxattr(src / "d", "system.posix_acl_default", default)
    dest = tmp_path / "dest"
    ca.untar(_file(tmp_path, packed(src)), dest)
    assert os.getxattr(dest / "d", "system.posix_acl_default") == default
    for path, mode in ((dest / "d" / "f", 0o640), (dest / "d" / "sub", 0o750)):
        assert os.listxattr(path) == [], path
        assert stat.S_IMODE(os.stat(path).st_mode) == mode


@pytest.mark.parametrize("confine", ["userns", "openat2"])
def test_unprivileged_pack_records_acl_ids_as_they_are_outside(confine: str) -> None:
    """Under ``userns`` an ACL naming the caller's own group read as group 0 (root's)
    and one naming an unmapped user as 4294967295; they are recorded as they are
    outside, and the entries the namespace shows as no one are left out with a
    warning (``openat2`` sees every id)."""
    with unpriv.world_dir("acls") as top:
        src = top / "src"
        src.mkdir()
        (src / "f").write_bytes(b"m")
        for path in (src, src / "f"):
            os.chown(path, unpriv.NOBODY, unpriv.NOBODY)
        os.setxattr(src / "f", "system.posix_acl_access",
                    _acl((2, 1234), (8, unpriv.NOBODY)))
        result, archive_path = _packed_as_nobody(top, src, confine)
        with tarfile.open(archive_path) as archive:
            value = archive.getmember("f").pax_headers["SCHILY.xattr.system.posix_acl_access"]
    if confine == "openat2":
        assert _acl_named(value) == {(2, 1234), (8, unpriv.NOBODY)}
        assert result.err == ""
    else:
        assert _acl_named(value) == {(8, unpriv.NOBODY)}
        assert "1 named ACL entries (users and groups) are not mapped" in result.err


def _sparse_file(path: Path) -> bytes:
    """A 1 GiB file of 8 KiB of data in two places, ending in a hole; its bytes at
    those places."""
    with open(path, "wb") as f:
        f.truncate(1 << 30)
        f.seek(123 << 12)
        f.write(b"a" * 4096)
        f.seek(200 << 20)
        f.write(b"b" * 4096)
    return b"a" * 4096 + b"b" * 4096


def test_a_file_that_shrinks_while_packed_is_padded_with_one_warning(tmp_path: Path) -> None:
    """Its header's size is kept (zeros for what it lost) and the user is told once a
    file: a sparse one of 200 data regions, cut to nothing once packing has begun,
    gave a warning a region."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holes", "wb") as f:
        for i in range(200):
            f.seek(i << 20)
            f.write(os.urandom(64 << 10))
        f.truncate(200 << 20)
    with open(src / "plain", "wb") as f:
        f.write(os.urandom(16 << 20))
    for name in ("holes", "plain"):
        with ca.tar(src / name, options=ca.PackOptions(sparse=True)) as stream:
            data = stream.read(1 << 16)
            os.truncate(src / name, 0)  # the worker is a pipe's length ahead, at most
            data += stream.read()
        assert stream.result is not None
        shrank = [w for w in stream.result.warnings if "shrank" in w]
        assert len(shrank) == 1 and "padded with zeros" in shrank[0], stream.result.warnings
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.getmember(name)
            assert member.size == (200 << 20 if name == "holes" else 16 << 20)
            extracted = archive.extractfile(member)
            assert extracted is not None
            extracted.seek(member.size - (64 << 10))
            assert extracted.read() == bytes(64 << 10)  # the last data: zeros now


@pytest.mark.parametrize("confine", ["pivot", "openat2"])
def test_sparse_files_keep_their_holes(tmp_path: Path, confine: str) -> None:
    """GNU tar's --sparse (PAX GNU sparse 1.0): a 1 GiB file of 8 KiB takes 8 KiB in
    the archive and on disk once unpacked, and tarfile and GNU tar read it. Without
    it the holes are written as zeros, as GNU tar writes them."""
    src = tmp_path / "src"
    src.mkdir()
    _sparse_file(src / "lastlog")
    (src / "plain").write_bytes(b"p" * 5000)
    with ca.tar(src, options=ca.PackOptions(sparse=True, confine=confine)) as stream:
        data = stream.read()
    assert len(data) < 64 << 10
    archive = tmp_path / "a.tar"
    archive.write_bytes(data)
    with tarfile.open(archive) as t:
        members = {m.name: m for m in t.getmembers()}
        assert members["lastlog"].size == 1 << 30
        # typeshed declares TarInfo.sparse bytes | None; tarfile sets (offset, size) pairs.
        assert members["lastlog"].sparse == [  # type: ignore[comparison-overlap]
            (123 << 12, 4096), (200 << 20, 4096), (1 << 30, 0)]
        assert members["plain"].sparse is None
    listing = subprocess.run(["tar", "-tvf", str(archive)], capture_output=True,
                             check=True).stdout.decode()
    assert "1073741824" in listing and "lastlog" in listing and "GNUSparse" not in listing
    dest = tmp_path / "dest"
    ca.untar(archive, dest)
    st = os.stat(dest / "lastlog")
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 1 << 20
    with open(dest / "lastlog", "rb") as f:
        f.seek(123 << 12)
        assert f.read(4097) == b"a" * 4096 + b"\0"
        f.seek(200 << 20)
        assert f.read(4096) == b"b" * 4096
    assert (dest / "plain").read_bytes() == b"p" * 5000
    # Without --sparse: zeros, as GNU tar writes them (read, not stored).
    with ca.tar(src / "lastlog", options=ca.PackOptions(confine=confine)) as stream:
        total = 0
        while chunk := stream.read(1 << 22):
            total += len(chunk)
    assert total > 1 << 30


def test_cp_keeps_holes(tmp_path: Path) -> None:
    """As GNU cp: a copy of a sparse file is sparse. It took all its size on disk."""
    from helpers.cli import run_cli

    src = tmp_path / "src"
    src.mkdir()
    _sparse_file(src / "lastlog")
    result = run_cli("cp", src, tmp_path / "copy")
    assert result.rc == 0, result.err
    st = os.stat(tmp_path / "copy" / "lastlog")
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 1 << 20


def test_cli_tar_sparse_flag(tmp_path: Path) -> None:
    from helpers.cli import run_cli

    src = tmp_path / "src"
    src.mkdir()
    _sparse_file(src / "lastlog")
    result = run_cli("tar", "-S", src, "-o", tmp_path / "a.tar")
    assert result.rc == 0, result.err
    assert (tmp_path / "a.tar").stat().st_size < 64 << 10
