"""Trees to pack, roots with hostile symlinks, and reading tar streams back.

Used by ``test_pack.py`` and ``test_copy.py``. Outside files hold :data:`MARKER`, a
string that must never appear in a stream made while jailed somewhere else.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers import tree

#: Content of every file outside the root; never in a stream (names avoid it).
MARKER = b"outside-marker-5be1c0d7: read from outside the root"

#: Owners that need PAX (more than 7 octal digits) and plain ones.
BIG_UID, BIG_GID = 3_000_000, 4_000_000

# Times that need PAX: sub-second, before 1970, after 2242 (more than 11 octal digits).
NS_TIME = 1_600_000_000_123_456_789
NEGATIVE_TIME = -1_500_000_001
FAR_TIME = 9_000_000_000_123_456_789
PLAIN_TIME = 1_500_000_000_000_000_000

LONG_COMPONENT = "c" * 200
LONG_TARGET = "t" * 150 + "/target"
NON_UTF8 = b"bad-\xff\xfe-name"


def capability_blob(bits: int = 1 << 13) -> bytes:
    """A v2 ``security.capability`` value: ``bits`` permitted and effective
    (default: cap_net_raw, as ``setcap cap_net_raw+ep`` writes)."""
    return struct.pack("<IIIII", 0x02000001, bits & 0xFFFFFFFF, 0, bits >> 32, 0)


def _times(path: Path | bytes, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def build_tree(root: Path, *, devices: bool = True, exotic_times: bool = True) -> Path:
    """A tree with every kind of object and every value that needs PAX.

    Files (plain, empty, big enough for sendfile, setuid/setgid, private with odd
    owners, with ids beyond octal, with user xattrs and a file capability), long and
    non-ASCII and non-UTF-8 names, symlinks (relative, absolute, dangling, long
    target), a hardlink group across directories, devices (big numbers included), a
    FIFO, directories with odd modes, owners and xattrs, and times with nanoseconds,
    before 1970 and beyond 2242.
    """
    root.mkdir(parents=True, exist_ok=True)
    f = root / "plain"
    f.write_bytes(b"plain content\n" * 10)
    (root / "empty").write_bytes(b"")
    big = root / "big"
    big.write_bytes(os.urandom(1 << 20) + b"tail")  # past the buffered-copy size
    (root / "exec").write_bytes(b"#!/bin/sh\n")
    (root / "exec").chmod(0o755)
    (root / "setuid").write_bytes(b"su")
    os.chmod(root / "setuid", 0o4755)
    (root / "setgid").write_bytes(b"sg")
    os.chmod(root / "setgid", 0o2711)
    private = root / "private"
    private.write_bytes(b"secret-ish but inside\n")
    os.chown(private, 1234, 5678)
    private.chmod(0o600)
    bigid = root / "bigid"
    bigid.write_bytes(b"big ids\n")
    os.chown(bigid, BIG_UID, BIG_GID)
    cap = root / "cap-file"
    cap.write_bytes(b"\x7fELF pretend\n")
    cap.chmod(0o755)
    os.setxattr(cap, "security.capability", capability_blob())
    os.setxattr(f, "user.comment", b"hello xattr")
    os.setxattr(f, "user.binary", bytes(range(256)))

    sub = root / "sub" / "deeper"
    sub.mkdir(parents=True)
    (sub / "file").write_bytes(b"deep\n")
    os.link(f, root / "hard1")
    os.link(f, root / "sub" / "hard2")
    os.setxattr(root / "sub", "user.dir", b"on a directory")
    odd = root / "odd-dir"
    odd.mkdir()
    (odd / "inside").write_bytes(b"x")
    os.chown(odd, 4321, 8765)
    odd.chmod(0o1750)
    (root / "empty-dir").mkdir()
    (root / "closed-dir").mkdir()
    (root / "closed-dir" / "f").write_bytes(b"in a 0700 dir")
    (root / "closed-dir").chmod(0o700)

    long_dir = root / LONG_COMPONENT / LONG_COMPONENT
    long_dir.mkdir(parents=True)
    (long_dir / ("n" * 120)).write_bytes(b"long name\n")
    (root / "ünïcødé-näme").write_bytes(b"unicode\n")
    os.mkdir(os.path.join(os.fsencode(root), NON_UTF8))
    with open(os.path.join(os.fsencode(root), NON_UTF8, b"in-\xe9"), "wb") as out:
        out.write(b"latin-1 name\n")

    os.symlink("plain", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink(LONG_TARGET, root / "long-link")
    os.symlink("sub", root / "dir-link")
    os.lchown(root / "rel-link", 77, 88)

    os.mkfifo(root / "fifo", 0o640)
    if devices:
        os.mknod(root / "null-like", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "block", 0o660 | stat.S_IFBLK, os.makedev(8, 0))
        os.mknod(root / "huge-dev", 0o600 | stat.S_IFCHR, os.makedev(4095, 1048575))

    # Times last, deepest first, directories after their content.
    everything = sorted(_all_paths(os.fsencode(root)), key=lambda p: -p.count(b"/"))
    for i, path in enumerate(everything):
        _times(path, PLAIN_TIME + i * 1_000_000_007)
    _times(f, NS_TIME)
    if exotic_times:
        _times(root / "empty", NEGATIVE_TIME)
        _times(root / "exec", FAR_TIME)
        _times(root / "rel-link", NS_TIME + 5)
    _times(os.fsencode(root), NS_TIME + 17)
    return root


def _all_paths(root: bytes) -> list[bytes]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.join(dirpath, name))
    return out


def snapshot(root: Path, **kwargs: Any) -> tree.Snapshot:
    return tree.snapshot(root, **kwargs)


def assert_same_tree(src: Path, dst: Path, *, root_meta: bool = True,
                     ignore: Any = None) -> None:
    """``dst`` holds the same tree as ``src`` (the root's own metadata only if
    ``root_meta``)."""
    expected = tree.snapshot(src)
    actual = tree.snapshot(dst)

    def waived(path: str, key: str) -> bool:
        if path == "." and not root_meta and key != "type":
            return True
        return bool(ignore and ignore(path, key))

    tree.assert_same(expected, actual, f"{dst} differs from {src}", ignore=waived)


def members(data: bytes) -> list[tarfile.TarInfo]:
    """The entries of a tar stream, read by the standard library (a third reader)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        return tf.getmembers()


def names(data: bytes) -> list[str]:
    return [m.name for m in members(data)]


def run(cmd: Sequence[str | os.PathLike[str]], **kwargs: Any
        ) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; fail the test with its stderr if it fails."""
    proc = subprocess.run(cmd, capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"},
                          **kwargs)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}): {proc.stderr!r}"
    return proc


def outside_tree(path: Path) -> Path:
    """A directory outside the root whose every file holds the marker."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("file", "secret", "hello"):
        (path / name).write_bytes(MARKER + b" " + name.encode() + b"\n")
    (path / "dir").mkdir(exist_ok=True)
    (path / "dir" / "file").write_bytes(MARKER + b" dir/file\n")
    return path
