"""Data-only mode (``data_only=True``, ``--data-only``): for data, not root filesystems.

No device nodes, no setuid/setgid/sticky bits, no ``security.*`` (file capabilities
included) or ``trusted.*`` xattrs, owners left to the caller; what was dropped is counted
in the result's warnings. The default stays Docker's full fidelity.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive import UnpackOptions
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


def test_data_only_api(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    r = chrootarchive.untar(io.BytesIO(rootfs_like()), dest, UnpackOptions(data_only=True))
    # Devices are not made; FIFOs are data.
    assert not (dest / "dev" / "null").exists() and not (dest / "dev" / "sda").exists()
    assert stat.S_ISFIFO(os.lstat(dest / "run" / "fifo").st_mode)
    # No special bits.
    assert mode(dest / "bin" / "su") == 0o755
    assert mode(dest / "bin" / "wall") == 0o755
    assert mode(dest / "tmp") == 0o777
    assert mode(dest / "srv" / "shared") == 0o775
    assert os.path.samefile(dest / "bin" / "su-link", dest / "bin" / "su")
    # security.* and trusted.* gone, user.* kept.
    assert os.listxattr(dest / "bin" / "ping") == ["user.note"]
    assert os.getxattr(dest / "bin" / "ping", "user.note") == b"kept"
    assert os.listxattr(dest / "srv" / "opaque") == ["user.other"]
    assert "security.selinux" not in os.listxattr(dest / "srv" / "label") or \
        os.getxattr(dest / "srv" / "label", "security.selinux") != b"system_u:object_r:bin_t:s0"
    # Owners are the caller's.
    for path in ("bin/su", "bin/wall", "run/fifo", "srv/shared", "home/user/data", "tmp"):
        st = os.lstat(dest / path)
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), path
    # Counted.
    text = "\n".join(r.warnings)
    assert "dropped 2 device nodes" in text, r.warnings
    assert "dropped 4 setuid/setgid/sticky bits" in text, r.warnings
    assert "dropped 3 security/trusted xattrs" in text, r.warnings


def test_default_mode_keeps_everything(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    r = chrootarchive.untar(io.BytesIO(rootfs_like()), dest)
    assert r.warnings == ()
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


def test_data_only_cli(tmp_path: Path, write_archive) -> None:
    path = write_archive(tb.compress(rootfs_like(), "gzip"), ".tar.gz")
    result = run_cli("untar", "--data-only", "--json", path, tmp_path / "dest")
    assert result.rc == 0, result.err
    out = json.loads(result.out)
    assert any("device nodes" in w for w in out["warnings"]), out
    assert mode(tmp_path / "dest" / "bin" / "su") == 0o755
    # Without --json the drops are reported on stderr, one warning a line.
    result = run_cli("untar", "--data-only", path, tmp_path / "dest2")
    assert result.rc == 0, result.err
    lines = result.err.splitlines()
    assert lines and all(line.startswith("chrootarchive: warning: ") for line in lines)
    assert any("device nodes" in line for line in lines)


def test_data_only_nothing_dropped_no_warnings(tmp_path: Path) -> None:
    data = tb.TarBuilder().file("a", b"1", mode=0o600, uid=1000).dir("d", mode=0o700).build()
    r = chrootarchive.untar(io.BytesIO(data), tmp_path / "d", UnpackOptions(data_only=True))
    assert r.warnings == ()
    assert mode(tmp_path / "d" / "a") == 0o600
    assert os.lstat(tmp_path / "d" / "a").st_uid == os.geteuid()


@pytest.mark.parametrize("layer", [False, True])
def test_data_only_layer_overlay_whiteouts_are_not_devices(layer: bool, tmp_path: Path) -> None:
    """In data-only mode a layer's whiteouts still remove what they should; no 0/0
    character device is left behind."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "gone").write_bytes(b"lower")
    data = tb.TarBuilder().file(".wh.gone").file("kept", b"k").build()
    if layer:
        chrootarchive.apply_layer(dest, io.BytesIO(data), UnpackOptions(data_only=True))
        assert not (dest / "gone").exists()
    else:
        chrootarchive.untar(io.BytesIO(data), dest, UnpackOptions(data_only=True))
    assert (dest / "kept").read_bytes() == b"k"
    for name in os.listdir(dest):
        assert not stat.S_ISCHR(os.lstat(dest / name).st_mode), name


def test_data_only_same_under_every_mechanism(tmp_path: Path) -> None:
    """Data-only under chroot, userns and openat2 as under pivot: the same tree."""
    trees = []
    for confine in ("pivot", "chroot", "userns", "openat2"):
        dest = tmp_path / confine
        chrootarchive.untar(io.BytesIO(rootfs_like()), dest,
                            UnpackOptions(data_only=True, confine=confine))
        trees.append(sorted(str(p.relative_to(dest)) for p in dest.rglob("*")))
    assert all(t == trees[0] for t in trees)
