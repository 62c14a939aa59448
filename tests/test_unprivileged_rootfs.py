"""As uid 65534, a real root filesystem archive unpacks under ``userns`` and ``openat2``.

The archive is built once per module from this machine's file system with GNU tar
(``--numeric-owner``, user.* and trusted.* xattrs): ``/etc``, ``/usr/bin``,
``/usr/sbin`` and the shared libraries of ``/usr/lib/<arch>`` (files up to a size cap,
about 30-40 MB in all; every symlink and directory kept), plus a small tree that holds
what a base system may lack: setuid and setgid files, a sticky directory, files,
directories and symlinks owned by other users (1000, 2000, root:shadow), a hardlink
group, device nodes, a FIFO, user.* xattrs with binary values and a trusted.* xattr.

The extraction by ``python3 -m chrootarchive untar`` as uid 65534 equals GNU tar's
extraction of the same archive by the same user (``tar --xattrs
--xattrs-include='user.*' -xpf``), file by file: type, content, mode (setuid bits
included), owner (the user's own, for both), symlink target, hardlink groups, device
numbers, user.* xattrs, mtime. The documented skips (owners that cannot be represented,
devices, trusted.* xattrs) are the only differences from a privileged extraction, and
each is reported in the result's warnings, once. With ``--rootless-xattr`` every file
and directory whose archive owner could not be applied records it in
``user.rootlesscontainers`` (umoci's protobuf: field 1 varint uid, field 2 varint gid,
each omitted when 0).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import tree
from helpers.unpriv import NOBODY, cli_as, make_package_copy, run_as, world_dir

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ARCH_LIB = "usr/lib/x86_64-linux-gnu" if os.path.isdir("/usr/lib/x86_64-linux-gnu") else (
    "usr/lib/aarch64-linux-gnu")
FILE_CAP = 200 << 10  # files above this are left out
BUDGET = 32 << 20  # bytes of file data from the host
TAR_CREATE = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=user.*",
              "--xattrs-include=trusted.*", "--format=posix"]
ROOTLESS = "user.rootlesscontainers"
SHADOW_GID = 42


def _host_list() -> list[str]:
    """Paths (relative to /) to archive: directories, symlinks, small files."""
    names: list[str] = []
    budget = BUDGET
    tops = ["etc", "usr/bin", "usr/sbin"]
    for top in ["usr", "usr/lib", ARCH_LIB]:
        names.append(top)
    for top in tops:
        for dirpath, dirnames, filenames in os.walk("/" + top):
            dirnames.sort()
            relative = dirpath.lstrip("/")
            names.append(relative)
            for name in sorted(filenames) + sorted(
                    d for d in dirnames if os.path.islink(os.path.join(dirpath, d))):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    names.append(os.path.join(relative, name))
                elif stat.S_ISREG(st.st_mode) and st.st_size <= FILE_CAP and budget > 0:
                    budget -= st.st_size
                    names.append(os.path.join(relative, name))
    for name in sorted(os.listdir("/" + ARCH_LIB)):
        path = f"/{ARCH_LIB}/{name}"
        if ".so" not in name:
            continue
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size <= FILE_CAP
                                        and budget > 0):
            budget -= st.st_size if stat.S_ISREG(st.st_mode) else 0
            names.append(f"{ARCH_LIB}/{name}")
    # Tree order: each directory's entries together, so that GNU tar (which restores a
    # directory's mtime once the archive leaves it) restores every one.
    return sorted(set(names), key=lambda name: name.split("/"))


def _extras(root: Path) -> None:
    """What a base system may lack, so that every kind of metadata is exercised."""
    x = root / "srv" / "extra"
    (x / "dev").mkdir(parents=True)
    true = Path("/usr/bin/true").read_bytes()
    (x / "setuid").write_bytes(true)
    (x / "setuid").chmod(0o4755)
    (x / "setgid-shadow").write_bytes(true)
    os.chown(x / "setgid-shadow", 0, SHADOW_GID)
    (x / "setgid-shadow").chmod(0o2755)
    (x / "sticky").mkdir()
    (x / "sticky").chmod(0o1777)
    for uid, mode in ((1000, 0o644), (2000, 0o640)):
        (x / f"owned-{uid}").write_bytes(f"owned by {uid}\n".encode())
        os.chown(x / f"owned-{uid}", uid, uid)
        (x / f"owned-{uid}").chmod(mode)
    (x / "uid-only").write_bytes(b"u\n")
    os.chown(x / "uid-only", 1000, 0)
    (x / "gid-only").write_bytes(b"g\n")
    os.chown(x / "gid-only", 0, 1000)
    home = x / "home-1000"
    home.mkdir(mode=0o750)
    (home / "file").write_bytes(b"in a home\n")
    os.chown(home / "file", 1000, 1000)
    os.chown(home, 1000, 1000)
    os.symlink("file", home / "link")
    os.chown(home / "link", 1000, 1000, follow_symlinks=False)
    os.symlink("/usr/bin/true", x / "abs-link")
    os.symlink("../../usr/bin", x / "rel-link")
    (x / "hard-a").write_bytes(b"one inode, three names\n")
    os.link(x / "hard-a", x / "hard-b")
    os.link(x / "hard-a", x / "dev" / "hard-c")
    os.mknod(x / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(x / "dev" / "loop7", 0o660 | stat.S_IFBLK, os.makedev(7, 7))
    os.mkfifo(x / "fifo", 0o600)
    os.setxattr(x / "owned-1000", "user.origin", b"chrootarchive-tests\x00\xff")
    os.setxattr(home, "user.dir", b"d")
    os.setxattr(x / "setuid", "trusted.overlay.test", b"t")
    for path in sorted(x.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, (1_500_000_000, 1_500_000_000), follow_symlinks=False)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with world_dir("rootfs") as path:
        yield path


@pytest.fixture(scope="module")
def pythonpath(base: Path) -> Path:
    return make_package_copy(base)


@pytest.fixture(scope="module")
def archive(base: Path) -> Path:
    path = base / "rootfs.tar"
    listing = base / "host-list"
    listing.write_text("\n".join(_host_list()) + "\n")
    extras = base / "extras"
    extras.mkdir()
    _extras(extras)
    proc = subprocess.run([*TAR_CREATE, "-cf", path, "-C", "/", "--no-recursion", "-T", listing],
                          capture_output=True, text=True)
    # 1: a file changed while being read (a shared machine); the archive is still valid.
    assert proc.returncode in (0, 1), proc.stderr
    proc = subprocess.run([*TAR_CREATE, "-rf", path, "-C", extras, "srv"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path.chmod(0o644)
    size = path.stat().st_size
    assert 20 << 20 < size < 100 << 20, f"archive of {size >> 20} MB"
    return path


@pytest.fixture(scope="module")
def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tf:
        return {m.name.rstrip("/"): m for m in tf.getmembers()}


def _fresh_dest(base: Path, name: str) -> Path:
    dest = base / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir()
    os.chown(dest, NOBODY, NOBODY)
    return dest


@pytest.fixture(scope="module")
def gnu_tree(base: Path, archive: Path, pythonpath: Path) -> tree.Snapshot:
    """GNU tar's extraction by the same user: the reference."""
    dest = _fresh_dest(base, "gnu")
    result = run_as(["tar", "--xattrs", "--xattrs-include=user.*", "-xpf", archive, "-C", dest],
                    pythonpath, timeout=300)
    # GNU tar goes on after the devices it may not create, then exits 2.
    problems = [line for line in result.err.splitlines()
                if "Cannot mknod" not in line and "Exiting with failure status" not in line]
    assert result.rc in (0, 2) and not problems, result.err
    assert not (dest / "srv/extra/dev/null").exists()
    return tree.snapshot(dest, ignore_root_mtime=True)


def _unpack(base: Path, archive: Path, pythonpath: Path, mechanism: str,
            *extra: str) -> tuple[Path, dict[str, Any]]:
    dest = _fresh_dest(base, f"{mechanism}{''.join(extra)}")
    result = cli_as(pythonpath, "untar", "--json", "--confine", mechanism, *extra, archive, dest,
                    timeout=300)
    assert result.rc == 0, result.err
    out = json.loads(result.out)
    assert out["confinement"] == mechanism, out
    return dest, out




@pytest.mark.parametrize("mechanism", ["userns", "openat2"])
def test_rootfs_equals_gnu_tar_as_nobody(mechanism: str, base: Path, archive: Path,
                                         pythonpath: Path, gnu_tree: tree.Snapshot,
                                         members: dict[str, tarfile.TarInfo]) -> None:
    dest, out = _unpack(base, archive, pythonpath, mechanism)
    ours = tree.snapshot(dest, ignore_root_mtime=True)
    tree.assert_same(gnu_tree, ours, f"{mechanism} as uid {NOBODY} differs from GNU tar")
    assert len(ours) > 1500, len(ours)
    assert ours["srv/extra/setuid"]["mode"] == 0o4755
    assert ours["srv/extra/setgid-shadow"]["mode"] == 0o2755
    assert ours["srv/extra/sticky"]["mode"] == 0o1777
    assert ours["srv/extra/hard-b"]["link_group"] == "srv/extra/dev/hard-c"
    assert ours["srv/extra/owned-1000"]["xattrs"] == {"user.origin": b"chrootarchive-tests\x00\xff"}
    assert all(info["uid"] == NOBODY and info["gid"] == NOBODY for info in ours.values())
    # The documented skips, each reported once.
    warnings = out["warnings"]
    assert isinstance(warnings, list)
    owners = [w for w in warnings if "ownership" in w]
    devices = [w for w in warnings if "device" in w]
    xattrs = [w for w in warnings if "trusted" in w]
    assert len(owners) == 1 and len(devices) == 1 and len(xattrs) == 1, warnings
    assert devices[0].startswith("2 device nodes skipped"), devices
    assert xattrs[0].startswith("1 privileged xattr "), xattrs
    unrepresentable = {(m.uid, m.gid) for m in members.values()
                       if (m.uid, m.gid) != (0, 0) and not m.isdev()}
    shown = owners[0]
    assert any(f"{u}:{g}" in shown for u, g in unrepresentable), (shown, unrepresentable)
    assert len(warnings) == 3, warnings


def decode_rootless(value: bytes) -> tuple[int, int]:
    """umoci's ``user.rootlesscontainers``: protobuf ``Resource{uint32 uid = 1;
    uint32 gid = 2}`` (a missing field is 0)."""
    fields = {1: 0, 2: 0}
    i = 0
    while i < len(value):
        key = value[i]
        i += 1
        assert key & 7 == 0, f"field {key >> 3} is not a varint: {value!r}"
        number, shift = 0, 0
        while True:
            byte = value[i]
            i += 1
            number |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        assert key >> 3 in fields, f"unknown field {key >> 3} in {value!r}"
        fields[key >> 3] = number
    return fields[1], fields[2]


def test_decode_rootless() -> None:
    assert decode_rootless(b"") == (0, 0)
    assert decode_rootless(b"\x08\xe8\x07") == (1000, 0)
    assert decode_rootless(b"\x10\x2a") == (0, 42)
    assert decode_rootless(b"\x08\xd0\x0f\x10\xd0\x0f") == (2000, 2000)


@pytest.mark.parametrize("mechanism", ["userns", "openat2"])
def test_rootless_xattr_records_original_owners(mechanism: str, base: Path, archive: Path,
                                                pythonpath: Path, gnu_tree: tree.Snapshot,
                                                members: dict[str, tarfile.TarInfo]) -> None:
    dest, out = _unpack(base, archive, pythonpath, mechanism, "--rootless-xattr")
    ours = tree.snapshot(dest, ignore_root_mtime=True)
    # Apart from the record, the tree is GNU tar's.
    stripped = {path: {**info, "xattrs": {k: v for k, v in info["xattrs"].items()
                                          if k != ROOTLESS}}
                for path, info in ours.items()}
    tree.assert_same(gnu_tree, stripped, f"{mechanism} --rootless-xattr differs from GNU tar")
    wrong = []
    recorded = 0
    for name, m in members.items():
        if not (m.isreg() or m.isdir()) or name not in ours:
            continue  # user.* xattrs exist only on files and directories
        value = ours[name]["xattrs"].get(ROOTLESS)
        if value is not None:
            recorded += 1
        got = decode_rootless(value or b"")
        if got != (m.uid, m.gid):
            wrong.append(f"{name}: archive {m.uid}:{m.gid}, recorded {got} ({value!r})")
        if (m.uid, m.gid) == (0, 0) and value:
            wrong.append(f"{name}: root-owned, yet recorded {value!r}")
    assert not wrong, "\n".join(wrong[:30])
    assert recorded >= 8, recorded
    assert decode_rootless(ours["srv/extra/owned-2000"]["xattrs"][ROOTLESS]) == (2000, 2000)
    assert decode_rootless(ours["srv/extra/setgid-shadow"]["xattrs"][ROOTLESS]) == (0, SHADOW_GID)
    assert decode_rootless(ours["srv/extra/uid-only"]["xattrs"][ROOTLESS]) == (1000, 0)
    assert decode_rootless(ours["srv/extra/home-1000"]["xattrs"][ROOTLESS]) == (1000, 1000)
    owners = [w for w in out["warnings"] if "ownership" in w]
    assert len(owners) == 1 and ROOTLESS in owners[0], out["warnings"]
