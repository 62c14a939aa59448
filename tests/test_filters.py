"""PEP 706's filters (``filter=``, ``--filter``): ``fully_trusted`` (the default, a root
filesystem), ``tar`` and ``data``, with tarfile's names and, where they apply, its rules;
compared with :mod:`tarfile` on the same archives.

``data`` drops device nodes and FIFOs (counted; tarfile refuses them), keeps only
``user.*`` xattrs and leaves owners to the caller; what a filter removes is counted in
the result's warnings, and what ``fully_trusted`` created that only a root filesystem
needs is counted in ``result.privileged`` and named on the command line.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

import chrootarchive
from chrootarchive import BreakoutError, UnpackOptions
from helpers import pep706, unpriv
from helpers import tarbuild as tb
from helpers.cli import run_cli


def capability(bits: int = 1 << 13) -> bytes:
    """A v2 ``security.capability`` value (cap_net_raw+ep by default)."""
    return struct.pack("<IIIII", 0x02000001, bits & 0xFFFFFFFF, 0, bits >> 32, 0)


def xattrs(**pairs: bytes) -> dict[str, bytes | str]:
    return {f"SCHILY.xattr.{k.replace('__', '.')}": v for k, v in pairs.items()}


def rootfs_like() -> bytes:
    b = tb.TarBuilder()
    b.chardev("dev/null", 1, 3, uid=0, gid=0)
    b.blockdev("dev/sda", 8, 0, uid=0, gid=6)
    b.fifo("run/fifo", mode=0o620, uid=1000, gid=1000)
    b.file("bin/su", b"#!su", mode=0o4755, uid=0, gid=0)
    b.file("bin/wall", b"#!wall", mode=0o2755, uid=0, gid=5)
    b.dir("tmp", mode=0o1777)
    b.dir("srv/shared", mode=0o2775, uid=1000, gid=1000)
    b.pax(xattrs(security__capability=capability(), user__note=b"kept"))
    b.file("bin/ping", b"#!ping", mode=0o755, uid=0, gid=0)
    b.pax(xattrs(trusted__overlay__opaque=b"y", user__other=b"kept too"))
    b.dir("srv/opaque", mode=0o755)
    b.pax(xattrs(security__selinux=b"system_u:object_r:bin_t:s0"))
    b.file("srv/label", b"l")
    b.file("home/user/data", b"mine", mode=0o640, uid=1234, gid=5678)
    b.hardlink("bin/su-link", "bin/su")
    return b.build()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes_archive() -> bytes:
    """Every mode class PEP 706's rules distinguish, no devices (tarfile refuses them
    under ``data``), links inside the tree."""
    b = tb.TarBuilder()
    for i, m in enumerate((0o4755, 0o2755, 0o6777, 0o1644, 0o666, 0o644, 0o600, 0o700,
                           0o070, 0o007, 0o604, 0o750, 0o000, 0o711, 0o077)):
        b.file(f"f/{i:02d}-{m:04o}", b"x" * i, mode=m, uid=1000 + i, gid=2000 + i)
    for i, m in enumerate((0o777, 0o1777, 0o2750, 0o700, 0o775, 0o555)):
        b.dir(f"d/{i:02d}-{m:04o}", mode=m, uid=3000 + i, gid=3000)
    b.symlink("d/link", "../f/00-4755")
    b.symlink("f/sibling", "05-0644")
    b.hardlink("f/hard", "f/05-0644", mode=0o644, uid=1005, gid=2005)
    return b.build()


def tree(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """path -> (type, mode, uid, gid) of everything below root."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        kind = ("dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode)
                else "file")
        out[str(path.relative_to(root))] = (
            kind, 0 if kind == "link" else stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


@pytest.mark.parametrize("name", ["fully_trusted", "tar", "data"])
def test_modes_and_owners_match_tarfile(
    tmp_path: Path, name: Literal["fully_trusted", "tar", "data"]
) -> None:
    """The same archive through tarfile's filter and ours: the same modes and owners
    (where tarfile has filters: Python 3.11.4 and later)."""
    data = modes_archive()
    ours = tmp_path / "ours"
    result = chrootarchive.untar(io.BytesIO(data), ours, UnpackOptions(filter=name))
    if pep706.HAS_FILTERS:
        theirs = tmp_path / "tarfile"
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(theirs, filter=name)
        assert tree(ours) == tree(theirs)
    if name == "fully_trusted":
        assert result.privileged == {"setuid/setgid files": 3}  # not the setgid dir
        assert result.warnings == ()
    else:
        assert result.privileged == {}
        text = "\n".join(result.warnings)
        assert f"filter {name}: dropped 6 setuid/setgid/sticky bits" in text, text
        assert f"filter {name}: dropped 8 group/other write bits" in text, text


@pytest.mark.parametrize(("target", "tarfile_error"), [
    ("/etc/passwd", "AbsoluteLinkError"),
    ("../../outside", "LinkOutsideDestinationError"),
    ("sub/../../..", "LinkOutsideDestinationError"),
])
def test_data_refuses_symlinks_out_of_the_tree(tmp_path: Path, target: str,
                                                tarfile_error: str) -> None:
    """tarfile's data rule: a link that a later reader would follow out of the tree."""
    data = tb.TarBuilder().dir("a").symlink("a/link", target).file("after", b"x").build()
    if pep706.HAS_FILTERS:
        with (tarfile.open(fileobj=io.BytesIO(data)) as archive,
              pytest.raises(getattr(tarfile, tarfile_error))):
            archive.extractall(tmp_path / "tarfile", filter="data")
    with pytest.raises(BreakoutError) as caught:
        chrootarchive.untar(io.BytesIO(data), tmp_path / "ours", UnpackOptions(filter="data"))
    assert caught.value.entry == "a/link"
    if target.startswith("/"):
        assert "symlink to an absolute path (/etc/passwd) refused by the data filter" in \
            caught.value.message
        # Under tar the jail keeps it harmless while unpacking: unpacked as is.
        chrootarchive.untar(io.BytesIO(data), tmp_path / "tar", UnpackOptions(filter="tar"))
        assert os.readlink(tmp_path / "tar" / "a" / "link") == target
    else:  # climbing out: refused whatever the filter (Docker's rule)
        with pytest.raises(BreakoutError):
            chrootarchive.untar(io.BytesIO(data), tmp_path / "tar", UnpackOptions(filter="tar"))


def test_data_keeps_symlinks_inside_the_tree(tmp_path: Path) -> None:
    data = tb.TarBuilder().symlink("a/b/up", "../../c").symlink("self", ".").build()
    chrootarchive.untar(io.BytesIO(data), tmp_path / "d", UnpackOptions(filter="data"))
    assert os.readlink(tmp_path / "d" / "a" / "b" / "up") == "../../c"


def test_tar_filter_keeps_devices_and_owners_drops_capabilities(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    r = chrootarchive.untar(io.BytesIO(rootfs_like()), dest, UnpackOptions(filter="tar"))
    assert stat.S_ISCHR(os.lstat(dest / "dev" / "null").st_mode)
    assert mode(dest / "bin" / "su") == 0o755
    assert mode(dest / "tmp") == 0o755
    assert mode(dest / "srv" / "shared") == 0o755
    assert "security.capability" not in os.listxattr(dest / "bin" / "ping")
    assert os.getxattr(dest / "srv" / "opaque", "trusted.overlay.opaque") == b"y"
    st = os.lstat(dest / "home" / "user" / "data")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    text = "\n".join(r.warnings)
    assert "filter tar: dropped 1 file capability" in text, text
    assert r.privileged == {}


def test_fully_trusted_counts_what_needs_privilege(tmp_path: Path) -> None:
    r = chrootarchive.untar(io.BytesIO(rootfs_like()), tmp_path / "dest")
    assert r.privileged == {"device nodes": 2, "setuid/setgid files": 2,
                            "file capabilities": 1}


def test_fully_trusted_counts_only_what_it_made_when_old_files_are_kept(
        tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    """``privileged`` (and the note) say what was *created*: what ``old_files`` kept is
    not (``--skip-old-files`` over a full tree said it "created 2 setuid/setgid files",
    docs/filters.md, "What the default made")."""
    dest = tmp_path / "dest"
    chrootarchive.untar(io.BytesIO(rootfs_like()), dest)
    os.unlink(dest / "bin" / "wall")  # made again; the rest is kept
    r = chrootarchive.untar(io.BytesIO(rootfs_like()), dest, UnpackOptions(old_files="skip"))
    assert r.privileged == {"setuid/setgid files": 1}
    assert mode(dest / "bin" / "wall") == 0o2755
    result = run_cli("untar", "--skip-old-files", write_archive(rootfs_like(), ".tar"), dest)
    assert result.rc == 0 and result.err == "", result.err


def test_cli_names_the_filter_when_the_default_made_privileged_files(
        tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(rootfs_like(), ".tar")
    result = run_cli("untar", path, tmp_path / "dest")
    assert result.rc == 0, result.err
    assert result.err.splitlines() == [
        "chrootarchive: note: as the archive says (filter fully_trusted), this created "
        "2 device nodes, 2 setuid/setgid files, 1 file capability; for data you do not "
        "trust, use --filter data"]
    # Chosen explicitly, quiet, or as JSON: no note (the JSON has the counts).
    for extra in (["--filter", "fully_trusted"], ["-q"]):
        result = run_cli("untar", *extra, path, tmp_path / extra[-1])
        assert result.rc == 0 and result.err == "", result.err
    result = run_cli("untar", "--json", path, tmp_path / "json")
    assert json.loads(result.out)["privileged"]["device nodes"] == 2
    result = run_cli("untar", "--filter", "data", path, tmp_path / "data")
    assert "note:" not in result.err


def test_cli_refuses_an_unknown_filter(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(rootfs_like(), ".tar")
    result = run_cli("untar", "--filter", "trusting", path, tmp_path / "dest")
    assert result.rc == 2
    assert "invalid choice: 'trusting'" in result.err
    assert not (tmp_path / "dest").exists()


def test_data_filter_api(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    umask = os.umask(0o027)
    try:
        r = chrootarchive.untar(io.BytesIO(rootfs_like()), dest, UnpackOptions(filter="data"))
    finally:
        os.umask(umask)
    # Devices and FIFOs are not made (tarfile refuses them).
    assert not (dest / "dev" / "null").exists() and not (dest / "dev" / "sda").exists()
    assert not (dest / "run" / "fifo").exists()
    # No special bits; directories at the caller's default mode (umask 027 here).
    assert mode(dest / "bin" / "su") == 0o755
    assert mode(dest / "bin" / "wall") == 0o755
    assert mode(dest / "tmp") == 0o750
    assert mode(dest / "srv" / "shared") == 0o750
    assert os.path.samefile(dest / "bin" / "su-link", dest / "bin" / "su")
    # security.* and trusted.* gone, user.* kept.
    assert os.listxattr(dest / "bin" / "ping") == ["user.note"]
    assert os.getxattr(dest / "bin" / "ping", "user.note") == b"kept"
    assert os.listxattr(dest / "srv" / "opaque") == ["user.other"]
    assert "security.selinux" not in os.listxattr(dest / "srv" / "label") or \
        os.getxattr(dest / "srv" / "label", "security.selinux") != b"system_u:object_r:bin_t:s0"
    # Owners are the caller's.
    for path in ("bin/su", "bin/wall", "srv/shared", "home/user/data", "tmp"):
        st = os.lstat(dest / path)
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), path
    # Counted.
    text = "\n".join(r.warnings)
    assert "filter data: dropped 3 device nodes and FIFOs" in text, r.warnings
    assert "filter data: dropped 4 setuid/setgid/sticky bits" in text, r.warnings
    assert "filter data: dropped 1 file capability" in text, r.warnings
    assert "filter data: dropped 2 security/trusted xattrs" in text, r.warnings
    assert r.privileged == {}


def test_default_mode_keeps_everything(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    r = chrootarchive.untar(io.BytesIO(rootfs_like()), dest)
    assert r.warnings == ()
    assert r.privileged == {"device nodes": 2, "setuid/setgid files": 2,
                            "file capabilities": 1}
    null = os.lstat(dest / "dev" / "null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert os.minor(null.st_rdev) == 3
    assert stat.S_ISBLK(os.lstat(dest / "dev" / "sda").st_mode)
    assert mode(dest / "bin" / "su") == 0o4755
    assert mode(dest / "bin" / "wall") == 0o2755
    assert mode(dest / "tmp") == 0o1777
    assert mode(dest / "srv" / "shared") == 0o2775
    assert os.getxattr(dest / "bin" / "ping", "security.capability") == capability()
    assert os.getxattr(dest / "srv" / "opaque", "trusted.overlay.opaque") == b"y"
    st = os.lstat(dest / "home" / "user" / "data")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert os.lstat(dest / "bin" / "wall").st_gid == 5


def test_data_filter_cli(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(tb.compress(rootfs_like(), "gzip"), ".tar.gz")
    result = run_cli("untar", "--filter", "data", "--json", path, tmp_path / "dest")
    assert result.rc == 0, result.err
    out = json.loads(result.out)
    assert any("device nodes" in w for w in out["warnings"]), out
    assert mode(tmp_path / "dest" / "bin" / "su") == 0o755
    # Without --json the drops are reported on stderr, one warning a line.
    result = run_cli("untar", "--data-only", path, tmp_path / "dest2")  # the old spelling
    assert result.rc == 0, result.err
    lines = result.err.splitlines()
    assert lines and all(line.startswith("chrootarchive: warning: ") for line in lines)
    assert any("device nodes" in line for line in lines)


def test_one_of_a_kind_is_counted_in_the_singular(tmp_path: Path,
                                                write_archive: Callable[..., Path]) -> None:
    """"created 1 setuid/setgid files", "dropped 1 device nodes and FIFOs": one is one."""
    path = write_archive(tb.TarBuilder().chardev("dev/null", 1, 3)
                         .file("bin/su", b"su", mode=0o4755).build())
    result = run_cli("untar", path, tmp_path / "trusted")
    assert result.rc == 0, result.err
    assert result.err.splitlines() == [
        "chrootarchive: note: as the archive says (filter fully_trusted), this created "
        "1 device node, 1 setuid/setgid file; for data you do not trust, use --filter data"]
    result = run_cli("untar", "--filter", "data", path, tmp_path / "data")
    assert result.rc == 0, result.err
    assert result.err.splitlines() == [
        "chrootarchive: warning: filter data: dropped 1 device node or FIFO",
        "chrootarchive: warning: filter data: dropped 1 setuid/setgid/sticky bit"]


def test_data_filter_nothing_dropped_no_warnings(tmp_path: Path) -> None:
    data = tb.TarBuilder().file("a", b"1", mode=0o600, uid=1000).dir("d", mode=0o700).build()
    r = chrootarchive.untar(io.BytesIO(data), tmp_path / "d", UnpackOptions(filter="data"))
    assert r.warnings == ()
    assert mode(tmp_path / "d" / "a") == 0o600
    assert os.lstat(tmp_path / "d" / "a").st_uid == os.geteuid()


@pytest.mark.parametrize("layer", [False, True])
def test_data_filter_layer_overlay_whiteouts_are_not_devices(layer: bool, tmp_path: Path) -> None:
    """Under the data filter a layer's whiteouts still remove what they should; no 0/0
    character device is left behind."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "gone").write_bytes(b"lower")
    data = tb.TarBuilder().file(".wh.gone").file("kept", b"k").build()
    if layer:
        chrootarchive.apply_layer(io.BytesIO(data), dest, UnpackOptions(filter="data"))
        assert not (dest / "gone").exists()
    else:
        chrootarchive.untar(io.BytesIO(data), dest, UnpackOptions(filter="data"))
    assert (dest / "kept").read_bytes() == b"k"
    for name in os.listdir(dest):
        assert not stat.S_ISCHR(os.lstat(dest / name).st_mode), name


def test_data_filter_same_under_every_mechanism(tmp_path: Path) -> None:
    """The data filter under chroot, userns and openat2 as under pivot: the same tree."""
    trees = []
    for confine in ("pivot", "chroot", "userns", "openat2"):
        dest = tmp_path / confine
        chrootarchive.untar(io.BytesIO(rootfs_like()), dest,
                            UnpackOptions(filter="data", confine=confine))
        trees.append(sorted(str(p.relative_to(dest)) for p in dest.rglob("*")))
    assert all(t == trees[0] for t in trees)


@pytest.mark.parametrize("kind", ["chardev", "fifo"])
def test_data_filter_leaves_out_a_hardlink_to_a_dropped_device(tmp_path: Path,
                                                                kind: str) -> None:
    """``filter="data"`` drops device nodes and FIFOs so that one stray node does not
    lose the rest: a hardlink to one is dropped with it, and counted. It failed the
    unpack ("hardlink target does not exist"), and nothing after it was unpacked
    (fuzzing, issue 16, twentieth round)."""
    b = tb.TarBuilder()
    if kind == "chardev":
        b.chardev("null", 1, 3)
    else:
        b.fifo("null")
    b.hardlink("null2", "null").file("after.txt", b"hi")
    result = chrootarchive.untar(b.build(), tmp_path / "d", filter="data")
    assert sorted(os.listdir(tmp_path / "d")) == ["after.txt"]
    assert result.warnings == ("filter data: dropped 2 device nodes and FIFOs",)


def _links_leading_out(dest: Path) -> list[str]:
    """The symlinks below ``dest`` that a reader on the host follows out of it (by
    directory descriptors, not paths and recursion: some trees here are a thousand
    directories deep, their paths longer than PATH_MAX)."""
    if not dest.is_dir():
        return []
    real_dest = os.path.realpath(dest)
    out = []
    stack = [(os.open(dest, os.O_RDONLY | os.O_DIRECTORY), os.fspath(dest))]
    while stack:
        fd, path = stack.pop()
        try:
            for name in os.listdir(fd):
                st = os.lstat(name, dir_fd=fd)
                where = f"{path}/{name}"
                if stat.S_ISLNK(st.st_mode):
                    real = os.path.realpath(where)  # as the host reads it, whatever its length
                    if os.path.commonpath([real, real_dest]) != real_dest:
                        out.append(f"{os.path.relpath(where, dest)} -> "
                                   f"{os.readlink(name, dir_fd=fd)}")
                elif stat.S_ISDIR(st.st_mode):
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=fd)
                    stack.append((child, where))
        finally:
            os.close(fd)
    return out


# Each archive makes a symlink whose own target looks harmless to a lexical check, and
# that leads out of the destination once the symlinks on its way are followed.
#: What adds entries to a builder.
_Add = Callable[[tb.TarBuilder], object]

_LEADING_OUT: dict[str, tuple[_Add, str]] = {
    # "a" is the destination itself: "a/esc" is "esc", and "../x" is outside.
    "through its own parent": (
        lambda b: b.symlink("a", ".").symlink("a/esc", "../victim/file"), "esc"),
    # Innocent when made ("d" was missing: "d/.." is "."); "d -> ." comes after it.
    "through a symlink made after it": (
        lambda b: b.symlink("l", "d/../victim/file").symlink("d", "."), "l"),
    # "d" a directory when "l" was made, then replaced by a symlink to "."
    "through a directory replaced by a symlink": (
        lambda b: b.dir("d").symlink("l", "d/../victim/file").symlink("d", "."), "l"),
    # Two hops: "up -> b/.." is "." lexically; "b -> ." makes it ".."
    "through a chain of symlinks": (
        lambda b: b.symlink("b", ".").symlink("up", "b/..").symlink("l", "up/victim"),
        "up"),
}


@pytest.mark.parametrize("case", list(_LEADING_OUT))
def test_data_follows_the_symlinks_on_a_targets_way(tmp_path: Path, mechanism: str,
                                                     case: str) -> None:
    """``filter="data"`` promises that a later reader who follows a symlink the archive
    made stays in the destination. A lexical look at each target cannot keep it: the
    symlinks on the way must be followed, once the whole archive is written (tarfile
    follows them as it extracts, and so misses the symlink made after). Each of these
    passed, and left a symlink to the victim (fuzzing, issue 16, twentieth round)."""
    add, refused = _LEADING_OUT[case]
    builder = tb.TarBuilder()
    add(builder)
    data = builder.file("after", b"x").build()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_bytes(b"victim")
    dest = tmp_path / "dest"
    with pytest.raises(BreakoutError) as caught:
        chrootarchive.untar(io.BytesIO(data), dest,
                            UnpackOptions(filter="data", confine=mechanism))
    assert caught.value.entry == refused
    assert "leads out of the destination through the symlinks on its way: refused by " \
        "the data filter, and removed" in caught.value.message
    assert _links_leading_out(dest) == []
    assert (dest / "after").read_bytes() == b"x"  # the rest is unpacked, as before
    assert (victim / "file").read_bytes() == b"victim"
    assert os.listdir(victim) == ["file"]
    # The tar filter keeps to Docker's rule: the jail kept the unpack inside, and
    # whoever reads the tree later is not promised anything.
    chrootarchive.untar(io.BytesIO(data), tmp_path / "tar", UnpackOptions(filter="tar"))
    assert _links_leading_out(tmp_path / "tar") != []


def test_data_follows_the_symlinks_already_in_the_destination(tmp_path: Path) -> None:
    """A symlink already in the destination is on the way too: ``l -> up/x`` and a
    hardlink to ``up`` (another name of that symlink) both lead out through it."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "up").symlink_to("..")  # the user's own, not this archive's
    adds: tuple[_Add, ...] = (lambda b: b.symlink("l", "up/victim"),
                              lambda b: b.hardlink("h", "up"))
    for add in adds:
        builder = tb.TarBuilder()
        add(builder)
        with pytest.raises(BreakoutError) as caught:
            chrootarchive.untar(io.BytesIO(builder.build()), dest,
                                UnpackOptions(filter="data"))
        assert caught.value.entry in ("l", "h")
        assert sorted(os.listdir(dest)) == ["up"]


def test_data_keeps_symlinks_through_symlinks_that_stay_inside(tmp_path: Path) -> None:
    """A root filesystem's usual links (``lib -> usr/lib``, ``../lib/...`` through it)
    stay; so do dangling ones, and loops, which no reader can follow out."""
    data = (tb.TarBuilder().dir("usr/lib").file("usr/lib/libx.so.1", b"elf")
            .symlink("lib", "usr/lib").symlink("lib/libx.so", "libx.so.1")
            .dir("usr/bin").symlink("usr/bin/x", "../../lib/libx.so")
            .symlink("self", ".").symlink("self/a/../dangling", "missing/../usr")
            .symlink("loop1", "loop2").symlink("loop2", "loop1/..")
            .symlink("file-dir", "usr/lib/libx.so.1/../../..").build())
    dest = tmp_path / "dest"
    chrootarchive.untar(io.BytesIO(data), dest, UnpackOptions(filter="data"))
    assert (dest / "usr" / "bin" / "x").read_bytes() == b"elf"
    assert os.readlink(dest / "dangling") == "missing/../usr"
    assert _links_leading_out(dest) == []


def test_data_symlink_check_is_bounded(tmp_path: Path) -> None:
    """A tangle of symlinks, each a thousand lookups to follow, cannot make the check
    take long: past its budget (64 lookups an entry) it stops, removes every symlink
    it did not follow, and says so."""
    target = "/".join(["d/.."] * 800) + "/x"  # 800 lookups of "d", each undone by ".."
    builder = tb.TarBuilder().dir("d")
    for i in range(300):
        builder.symlink(f"l{i:03}", target)
    dest = tmp_path / "dest"
    with pytest.raises(chrootarchive.ArchiveError) as caught:
        chrootarchive.untar(io.BytesIO(builder.build()), dest, UnpackOptions(filter="data"))
    assert "could not follow the archive's symlinks within the steps it allows " \
        "(65,536, and 64 an entry)" in str(caught.value)
    kept = sorted(os.listdir(dest))
    assert kept[0] == "d"
    assert 1 < len(kept) < 150  # most were removed: the budget ran out early
    assert _links_leading_out(dest) == []


def test_data_removes_symlinks_leading_out_when_another_error_stops_it(
        tmp_path: Path) -> None:
    """The first error is reported; a symlink leading out made before it is removed."""
    data = (tb.TarBuilder().symlink("a", ".").symlink("a/esc", "../x")
            .hardlink("h", "no-such-target").build())
    dest = tmp_path / "dest"
    with pytest.raises(chrootarchive.ArchiveError) as caught:
        chrootarchive.untar(io.BytesIO(data), dest, UnpackOptions(filter="data"))
    assert "hardlink target" in caught.value.message
    assert _links_leading_out(dest) == []


@pytest.mark.parametrize("confine", ["auto", "openat2", "userns"])
def test_data_follows_symlinks_as_an_unprivileged_user(confine: str) -> None:
    """The same check as another user, through the command line: one line, exit status
    1, no symlink left that leads out."""
    builder = tb.TarBuilder().symlink("a", ".").symlink("a/esc", "../victim")
    builder.symlink("l", "d/../victim").symlink("d", ".").file("after", b"x")
    with unpriv.world_dir("datalinks") as base:
        pythonpath = unpriv.make_package_copy(base)
        archive = base / "links.tar"
        archive.write_bytes(builder.build())
        archive.chmod(0o644)
        work = base / "work"
        work.mkdir()
        unpriv.chown_tree(work, unpriv.NOBODY)
        dest = work / "dest"
        result = unpriv.cli_as(pythonpath, "untar", "--filter", "data", "--confine",
                               confine, archive, dest)
        assert result.rc == 1, result.err
        lines = result.err.strip().splitlines()
        assert lines == [
            "chrootarchive: error: esc: symlink target '../victim' leads out of the "
            "destination through the symlinks on its way: refused by the data filter, "
            "and removed; 1 more removed (what was unpacked before is left in "
            "the destination; --atomic unpacks all or nothing)"], result.err
        assert _links_leading_out(dest) == []
        assert sorted(os.listdir(dest)) == ["a", "after", "d"]


# Found by an attacker's review of the first version of the check (issue 16, twenty-
# first round): each left a symlink that leads out, or refused a harmless one.
_REVIEWED: dict[str, tuple[_Add, str]] = {
    # Made through "a -> ../../..", so really at the top; "a" is then replaced: by its
    # name, "p/q/r/a/l" was nothing at the end, and the real "l" was never followed.
    "followed where it was made, not by its name": (
        lambda b: b.dir("p").dir("p/q").dir("p/q/r").symlink("p/q/r/a", "../../..")
        .symlink("p/q/r/a/l", "../../../x").symlink("p/q/r/a", "."), "l"),
    # A link that cannot be followed for a long name stopped the check.
    "a name too long to look up": (
        lambda b: b.symlink("b", ".").symlink("e", "b/../x").symlink("z", "N" * 300), "e"),
    # realpath reads a loop as a name, and ".." climbs over it.
    "a loop read as a name": (
        lambda b: b.symlink("a", ".").symlink("loop", "loop").symlink("l", "a/loop/../.."),
        "l"),
    # 41 symlinks: the kernel stops (ELOOP); realpath and Go's EvalSymlinks go on.
    "more symlinks than the kernel follows": (
        lambda b: b.symlink("a", ".").symlink("x", "a/" * 41 + ".."), "x"),
    # Second review. "s/d" replaced the directory "d" through "s -> .": the cache of
    # directories still called "d" a real one, so "d/e" was recorded as made there.
    "a directory replaced through a symlink": (
        lambda b: b.dir("d").symlink("s", ".").symlink("s/d", ".")
        .symlink("d/e", "../x"), "e"),
    "a directory replaced by a hardlink through a symlink": (
        lambda b: b.symlink("t", ".").dir("d").symlink("s", ".").hardlink("s/d", "t")
        .symlink("d/e", "../x"), "e"),
    # Python 3.11 and 3.12 read what follows a loop as text: "../../x" from the top.
    "a loop, then the rest as text": (
        lambda b: b.dir("c/d").symlink("b", "c/d").symlink("loop", "loop")
        .symlink("a", ".").symlink("e", "a/loop/../b/../../x"), "e"),
}


@pytest.mark.parametrize("case", list(_REVIEWED))
def test_data_symlink_check_after_review(tmp_path: Path, case: str) -> None:
    add, refused = _REVIEWED[case]
    builder = tb.TarBuilder()
    add(builder)
    dest = tmp_path / "dest"
    with pytest.raises(BreakoutError) as caught:
        chrootarchive.untar(io.BytesIO(builder.build()), dest, UnpackOptions(filter="data"))
    assert caught.value.entry == refused
    assert _links_leading_out(dest) == []
    if case == "a name too long to look up":
        assert os.readlink(dest / "z") == "N" * 300  # dangling, harmless: kept


def test_data_keeps_what_no_longer_leads_anywhere(tmp_path: Path) -> None:
    """A symlink made through a parent that is later replaced by a file, or by a
    loop, is followed from where it was made, and kept."""
    lasts: tuple[_Add, ...] = (lambda b: b.file("a", b"f"), lambda b: b.symlink("a", "a"))
    for last in lasts:
        builder = tb.TarBuilder().dir("d").symlink("a", "d").symlink("a/l", "y")
        last(builder)
        dest = tmp_path / str(len(os.listdir(tmp_path)))
        chrootarchive.untar(io.BytesIO(builder.build()), dest, UnpackOptions(filter="data"))
        assert os.readlink(dest / "d" / "l") == "y"


def test_data_symlink_check_counts_every_component(tmp_path: Path) -> None:
    """Empty components cost nothing to look up, but they are read: a symlink of 4,000
    slashes, followed by 2,000 links 41 times each, took 26 s. Every component counts
    against the budget."""
    builder = tb.TarBuilder().symlink("a", "." + "/" * 4000)
    for i in range(2000):
        builder.symlink(f"x{i}", "a/" * 41 + "a")
    dest = tmp_path / "dest"
    with pytest.raises(chrootarchive.ArchiveError) as caught:
        chrootarchive.untar(io.BytesIO(builder.build()), dest, UnpackOptions(filter="data"))
    assert "could not follow the archive's symlinks" in str(caught.value)
    assert _links_leading_out(dest) == []


def test_data_follows_every_layers_symlinks_at_the_end_of_a_stack(tmp_path: Path) -> None:
    """A later layer can make an earlier one's symlink lead out (``s -> .`` under
    ``l -> a/s/../..``): a stack of layers follows all of them at its end. Each layer
    followed only its own (an attacker's review, issue 16, twenty-first round)."""
    lower = (tb.TarBuilder().dir("d").dir("d/e").symlink("a", ".").symlink("s", "d/e")
             .symlink("l", "a/s/../..").build())
    upper = tb.TarBuilder().file(".wh.s", b"").symlink("s", ".").build()
    dest = tmp_path / "dest"
    with pytest.raises(BreakoutError) as caught:
        chrootarchive.apply_layers([io.BytesIO(lower), io.BytesIO(upper)], dest,
                                   UnpackOptions(filter="data"))
    assert caught.value.entry == "l"
    assert _links_leading_out(dest) == []
    # Each layer alone is harmless.
    chrootarchive.apply_layers([io.BytesIO(lower)], tmp_path / "one",
                               UnpackOptions(filter="data"))
    assert _links_leading_out(tmp_path / "one") == []


def test_data_symlink_check_of_a_long_chain_is_bounded(tmp_path: Path) -> None:
    """A chain of 3,000 symlinks, each through the next: following each one from the
    start of the chain costs the square of its length. The walks kept where each
    symlink led, and ran out of memory, leaving the symlinks not yet followed (an
    attacker's review, issue 16, twenty-first round)."""
    builder = tb.TarBuilder().symlink("a", ".").symlink("a/e", "../x")
    builder.symlink("l3000", "y")
    for i in range(2999, 0, -1):
        builder.symlink(f"l{i}", f"l{i + 1}/x")
    dest = tmp_path / "dest"
    with pytest.raises(chrootarchive.ChrootArchiveError):
        chrootarchive.untar(io.BytesIO(builder.build()), dest, UnpackOptions(filter="data"))
    assert _links_leading_out(dest) == []


def test_data_does_not_follow_paths_too_long_for_the_host(tmp_path: Path) -> None:
    """Inside the jail a path of 4,089 bytes is followed; on the host, after the
    destination's own path, ``realpath`` meets ENAMETOOLONG and reads the rest as
    text, one level higher. Paths of more than 2,048 bytes are not followed."""
    deep = "/".join(["ccc"] * 1022)
    other = "/".join(["r"] * 1021)
    data = (tb.TarBuilder().file(f"{deep}/f", b"f").symlink(f"{deep}/S", "y/z")
            .symlink("A", deep).file(f"{other}/f", b"f")
            .symlink(f"{other}/up", "../" * 1021)
            .symlink(f"{other}/up/e", "A/S/" + "../" * 1024 + "x").build())
    dest = tmp_path / "dest"
    try:
        with pytest.raises(BreakoutError):
            chrootarchive.untar(io.BytesIO(data), dest, UnpackOptions(filter="data"))
        assert _links_leading_out(dest) == []
    finally:  # too deep for shutil.rmtree's recursion (pytest's own clean-up)
        subprocess.run(["rm", "-rf", "--", str(dest)], check=True)
