"""The jail and the unpack semantics, for real (CI runs as root on Linux).

- Each rung of the confinement ladder: ``pivot`` by default, ``--confine chroot``,
  a destination that is already a mount point (inside a private mount namespace made
  with ``unshare -m``, never on this machine's mount table), running inside a user
  namespace (``unshare --user --map-root-user``: the reference falls back to chroot).
- Nothing leaks after many extractions: mount table, ``.pivot_root*`` directories,
  child processes, file descriptors; the worker dies with its parent.
- The worker cannot see the host.
- Every option and every rule of "Unpack semantics": owners, id maps, excludes,
  replace versus merge, implied parents, special bits, xattrs, devices, sparse files,
  long names, times, PAX global headers, ``untar_with_root``, sources, errors, the
  command line (``--json``, exit statuses, ``--help``). The tests of what an unpack
  does run under each mechanism (the ``mechanism`` fixture); those about owners,
  devices and ``trusted.*`` xattrs under each that can make them as root (:data:`OWNERS`).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import chrootarchive
from chrootarchive import IDMap, UnpackOptions
from helpers import tarbuild as tb
from helpers import tree
from helpers.cli import CLI, assert_one_line_error, run_cli
from helpers.leaks import LeakCheck, child_pids, pivot_leftovers
from helpers.mechanisms import LIMITED_AS_ROOT, variants
from helpers.victim import Victim

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("no_leaks")]

#: For tests of owners, devices and trusted.* xattrs: ``userns`` as root maps only its
#: own ids and skips the rest with a warning (``test_mechanisms.py`` and
#: ``test_subuid.py`` check that).
OWNERS = variants(without=LIMITED_AS_ROOT)


def B() -> tb.TarBuilder:
    return tb.TarBuilder()


def small_archive() -> bytes:
    return (
        B()
        .dir("d", mode=0o750, mtime=1_500_000_000)
        .file("d/f", b"hello\n", mode=0o640, uid=1, gid=2)
        .symlink("d/s", "f")
        .hardlink("d/h", "d/f")
        .build()
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


# -- the confinement ladder ------------------------------------------------------------


def test_default_is_pivot_as_root(dest: Path) -> None:
    result = chrootarchive.untar(io.BytesIO(small_archive()), dest)
    assert result.confinement == "pivot"
    assert (dest / "d" / "f").read_bytes() == b"hello\n"


def test_confine_pivot_explicit(dest: Path) -> None:
    result = chrootarchive.untar(io.BytesIO(small_archive()), dest, UnpackOptions(confine="pivot"))
    assert result.confinement == "pivot"


def test_confine_chroot_api(dest: Path) -> None:
    result = chrootarchive.untar(io.BytesIO(small_archive()), dest, UnpackOptions(confine="chroot"))
    assert result.confinement == "chroot"
    assert (dest / "d" / "h").read_bytes() == b"hello\n"
    assert os.readlink(dest / "d" / "s") == "f"


def test_confine_chroot_cli(dest: Path, write_archive: Callable[..., Path]) -> None:
    result = run_cli("untar", "--confine", "chroot", "--json", write_archive(small_archive()), dest)
    assert result.rc == 0, result.err
    assert json.loads(result.out)["confinement"] == "chroot"
    assert (dest / "d" / "f").exists()


def test_confine_unknown_is_usage_error(dest: Path, write_archive: Callable[..., Path]) -> None:
    result = run_cli("untar", "--confine", "bogus", write_archive(small_archive()), dest)
    assert result.rc == 2, result
    assert "Traceback" not in result.err


def test_chroot_jail_still_contains(dest: Path, victim: Victim) -> None:
    """The weaker rung still keeps writes inside: absolute symlinks resolve in dest."""
    V = str(victim.root)
    archive = B().dir(V).symlink("l", V).file("l/pwned", b"x").symlink("r", "/").build()
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine="chroot"))
    assert (dest / V.lstrip("/") / "pwned").read_bytes() == b"x"
    victim.assert_untouched()


INSIDE_NS = textwrap.dedent(
    """
    import io, json, os, sys
    import chrootarchive
    dest, archive = sys.argv[1], sys.argv[2]
    def mounts():
        with open("/proc/self/mountinfo") as f:
            return f.read()
    before = mounts()
    out = {}
    try:
        # No reserve: the full-disk tests want the filesystem's own ENOSPC.
        r = chrootarchive.untar(archive, dest, chrootarchive.UnpackOptions(
            limits=chrootarchive.Limits(reserve=0)))
        out["confinement"] = r.confinement
        out["entries"] = r.entries
    except chrootarchive.ChrootArchiveError as e:
        out["error"] = type(e).__name__
        out["message"] = str(e)
    out["mounts_unchanged"] = mounts() == before
    out["listing"] = sorted(
        os.path.relpath(os.path.join(d, n), dest)
        for d, ds, fs in os.walk(dest) for n in ds + fs
    )
    out["content"] = (
        open(os.path.join(dest, "d", "f"), "rb").read().decode()
        if os.path.exists(os.path.join(dest, "d", "f")) else None
    )
    print(json.dumps(out))
    """
)


def run_in_mount_namespace(
    tmp_path: Path, setup: str, dest: Path, archive: Path
) -> dict[str, Any]:
    """Run ``setup`` (shell, $1 = dest) then an untar, in a private mount namespace."""
    script = tmp_path / "inside.py"
    script.write_text(INSIDE_NS)
    proc = subprocess.run(
        [
            "unshare", "-m", "--propagation", "private", "sh", "-c",
            f'{setup} && exec "{sys.executable}" "$2" "$1" "$3"',
            "sh", str(dest), str(script), str(archive),
        ],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    out: dict[str, Any] = json.loads(proc.stdout)  # what INSIDE_NS printed
    return out


def test_dest_already_a_mount_point(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    dest = tmp_path / "mnt"
    dest.mkdir()
    out = run_in_mount_namespace(
        tmp_path, 'mount -t tmpfs -o size=64m chrootarchive-test "$1"', dest,
        write_archive(small_archive()),
    )  # fmt: skip
    assert out.get("confinement") == "pivot", out
    assert out["content"] == "hello\n"
    assert out["mounts_unchanged"], "the extraction changed the mount table"
    assert not [p for p in out["listing"] if ".pivot_root" in p], out["listing"]
    assert set(out["listing"]) == {"d", "d/f", "d/s", "d/h"}
    # The tmpfs lived only in the child's namespace.
    assert list(dest.iterdir()) == []


def test_dest_bind_mounted_on_itself(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    dest = tmp_path / "bound"
    dest.mkdir()
    out = run_in_mount_namespace(
        tmp_path, 'mount --bind "$1" "$1"', dest, write_archive(small_archive())
    )
    assert out.get("confinement") == "pivot", out
    assert out["mounts_unchanged"]
    assert (dest / "d" / "f").read_bytes() == b"hello\n"
    assert pivot_leftovers(dest) == []


_PACK_INSIDE_NS = """
import io, json, sys, tarfile
import chrootarchive
from chrootarchive import PackOptions
data = chrootarchive.tar(sys.argv[1], options=PackOptions(confine="pivot")).read()
with tarfile.open(fileobj=io.BytesIO(data)) as tf:
    print(json.dumps({m.name: tf.extractfile(m).read().decode() if m.isfile() else None
                      for m in tf}))
"""


def test_pack_from_a_read_only_mount_under_pivot(tmp_path: Path) -> None:
    """Packing writes nothing into the directory it jails itself at: a read-only source
    (a squashfs, an overlay's lower layer, a read-only bind mount) packs as root under
    ``pivot`` (it failed with "cannot write to the destination" while the jail needed
    a temporary directory there)."""
    src = tmp_path / "ro"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_text("hi\n")
    script = tmp_path / "pack.py"
    script.write_text(_PACK_INSIDE_NS)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && touch "$1/x" 2>/dev/null;'
         ' [ ! -e "$1/x" ] && exec "$0" "$2" "$1"',
         sys.executable, str(src), str(script)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"a": None, "a/f": "hi\n"}


def test_the_jail_is_made_without_writing_into_the_destination(mechanism: str,
                                                               tmp_path: Path) -> None:
    """No temporary name is made in the destination to set up the jail: pivot_root's old
    root is stacked on the new root and detached there, not put in a ``.pivot_root*``
    directory (which a worker killed at that moment would leave behind). An archive of
    no entries leaves the destination's times as they were."""
    dest = tmp_path / "dest"
    dest.mkdir()
    os.utime(dest, ns=(10**18, 10**18))
    before = os.stat(dest)
    result = chrootarchive.untar(io.BytesIO(bytes(1024)), dest,
                                 UnpackOptions(confine=mechanism))
    assert result.confinement == mechanism
    after = os.stat(dest)
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    assert os.listdir(dest) == []


def test_dest_read_only_mount_is_a_destination_error(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    dest = tmp_path / "ro"
    dest.mkdir()
    out = run_in_mount_namespace(
        tmp_path, 'mount -t tmpfs -o ro chrootarchive-test "$1"', dest,
        write_archive(small_archive()),
    )  # fmt: skip
    assert out.get("error") == "DestinationError", out


def test_dest_full_is_a_destination_error(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    dest = tmp_path / "full"
    dest.mkdir()
    big = B().file("big", os.urandom(3 << 20)).build()
    out = run_in_mount_namespace(
        tmp_path, 'mount -t tmpfs -o size=1m chrootarchive-test "$1"', dest, write_archive(big)
    )
    assert out.get("error") == "DestinationError", out


def test_cli_destination_full_exit_4(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    dest = tmp_path / "full"
    dest.mkdir()
    archive = write_archive(B().file("big", os.urandom(3 << 20)).build())
    proc = subprocess.run(
        [
            "unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=1m t "$1" && shift && exec "$@"',
            "sh", str(dest), *CLI, "untar", "--reserve", "0", str(archive), str(dest),
        ],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    from helpers.cli import CLIResult

    result = CLIResult((proc.returncode, proc.stdout.decode(), proc.stderr.decode()))
    assert_one_line_error(result, rc=4)


def test_user_namespace_falls_back_to_chroot(
    dest: Path, write_archive: Callable[..., Path]
) -> None:
    """Inside a user namespace the reference does not pivot: it chroots."""
    archive = write_archive(B().dir("d").file("d/f", b"in userns\n").build())
    result = run_cli(
        "untar", "--json", archive, dest, prefix=["unshare", "--user", "--map-root-user"]
    )
    assert result.rc == 0, result.err
    assert json.loads(result.out)["confinement"] == "chroot"
    assert (dest / "d" / "f").read_bytes() == b"in userns\n"
    assert pivot_leftovers(dest) == []


def test_user_namespace_with_mount_namespace(
    dest: Path, write_archive: Callable[..., Path]
) -> None:
    archive = write_archive(B().file("f", b"x").build())
    result = run_cli(
        "untar",
        "--json",
        archive,
        dest,
        prefix=["unshare", "--user", "--map-root-user", "--mount"],
    )
    assert result.rc == 0, result.err
    assert json.loads(result.out)["confinement"] == "chroot"


def test_user_namespace_skips_what_it_cannot_do(
    dest: Path, write_archive: Callable[..., Path]
) -> None:
    """Devices that cannot be created and owners that cannot be set are skipped with a
    warning inside a user namespace, as Docker does; the rest is unpacked."""
    archive = write_archive(
        B()
        .file("owned", b"o", uid=1000, gid=1000)
        .chardev("null", 1, 3)
        .file("plain", b"p")
        .build()
    )
    result = run_cli(
        "untar", "--json", archive, dest, prefix=["unshare", "--user", "--map-root-user"]
    )
    assert result.rc == 0, result.err
    out = json.loads(result.out)
    assert out["warnings"], out
    assert (dest / "plain").read_bytes() == b"p"
    assert (dest / "owned").read_bytes() == b"o"


# -- nothing leaks ---------------------------------------------------------------------


def test_no_leaks_after_many_extractions(tmp_path: Path) -> None:
    archive = small_archive()
    bad = B().file("../escape", b"x").build()
    malformed = tb.member("t", b"x" * 4000)[:1500]
    chrootarchive.untar(io.BytesIO(archive), tmp_path / "warmup")
    check = LeakCheck(tmp_path, fds=True)
    for i in range(50):
        dest = tmp_path / f"d{i % 5}"
        r = chrootarchive.untar(io.BytesIO(archive), dest)
        assert r.confinement == "pivot"
    for i in range(5):
        chrootarchive.untar(io.BytesIO(archive), tmp_path / "c", UnpackOptions(confine="chroot"))
        with pytest.raises(chrootarchive.BreakoutError):
            chrootarchive.untar(io.BytesIO(bad), tmp_path / f"bad{i}")
        with pytest.raises(chrootarchive.MalformedArchiveError):
            chrootarchive.untar(io.BytesIO(malformed), tmp_path / f"mal{i}")
    check.assert_clean()


def test_no_leaks_after_many_cli_runs(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(tb.compress(small_archive(), "gzip"))
    check = LeakCheck(tmp_path)
    for i in range(8):
        assert run_cli("untar", path, tmp_path / f"cli{i}").rc == 0
    check.assert_clean()


def test_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """Kill the command while its worker waits for input: the worker goes too, and no
    pivot directory is left in the destination."""
    dest = tmp_path / "dest"
    proc = subprocess.Popen(
        [*CLI, "untar", "-", str(dest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(tb.member("f", b"x" * 100_000)[:20_000])
    proc.stdin.flush()
    deadline = time.monotonic() + 20
    descendants: list[int] = []
    while time.monotonic() < deadline and not descendants:
        descendants = [pid for pid, _, _ in child_pids(proc.pid)]
        time.sleep(0.05)
    assert descendants, "no worker process appeared"
    proc.kill()
    proc.wait(timeout=10)
    proc.stdin.close()
    deadline = time.monotonic() + 10
    alive = descendants
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"]
        time.sleep(0.05)
    assert not alive, f"worker outlived its parent: {alive}"
    assert pivot_leftovers(tmp_path) == []


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


# -- the worker cannot see the host ----------------------------------------------------


def test_root_symlink_lands_inside(mechanism: str, dest: Path) -> None:
    """``host -> /`` then ``host/etc/passwd-test``: "/" is the destination."""
    archive = B().dir("etc").symlink("host", "/").file("host/etc/passwd-test", b"x").build()
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert (dest / "etc" / "passwd-test").read_bytes() == b"x"
    assert not os.path.lexists("/etc/passwd-test")


def test_etc_symlink_write(mechanism: str, dest: Path) -> None:
    """``etc -> /etc`` then ``etc/passwd-test``: inside the jail /etc is the symlink
    itself; the host's /etc is never written."""
    archive = B().symlink("etc", "/etc").file("etc/passwd-test", b"x").build()
    try:
        chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    except (chrootarchive.ArchiveError, chrootarchive.DestinationError):
        pass
    assert not os.path.lexists("/etc/passwd-test")
    for dirpath, _dirs, files in os.walk(dest):
        assert "passwd" not in files


def test_host_files_are_not_reachable(mechanism: str, dest: Path) -> None:
    secret = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else None
    for archive in (
        B().hardlink("shadow", "/etc/shadow").build(),
        B().hardlink("passwd", "etc/passwd").build(),
        B().symlink("p", "/proc/self/root/etc").hardlink("h", "p/passwd").build(),
    ):
        with pytest.raises(chrootarchive.ArchiveError):
            chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    if secret:
        assert not tree.find_content(dest, secret.strip())
    root_line = Path("/etc/passwd").read_bytes().splitlines()[0]
    assert not tree.find_content(dest, root_line)


# -- ownership -------------------------------------------------------------------------


def owners_archive() -> bytes:
    return (
        B()
        .dir("dir", uid=1000, gid=2000)
        .file("dir/file", b"f", uid=1001, gid=2001)
        .symlink("dir/link", "file", uid=1002, gid=2002)
        .fifo("dir/fifo", uid=1003, gid=2003)
        .file("implied/child", b"c", uid=1004, gid=2004)
        .file("root-owned", b"r", uid=0, gid=0)
        .build()
    )


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_numeric_owners(mechanism: str, dest: Path) -> None:
    chrootarchive.untar(io.BytesIO(owners_archive()), dest, UnpackOptions(confine=mechanism))
    assert owner(dest / "dir") == (1000, 2000)
    assert owner(dest / "dir" / "file") == (1001, 2001)
    assert owner(dest / "dir" / "link") == (1002, 2002)
    assert owner(dest / "dir" / "fifo") == (1003, 2003)
    assert owner(dest / "implied" / "child") == (1004, 2004)
    assert owner(dest / "implied") == (0, 0)


def test_no_lchown(mechanism: str, dest: Path) -> None:
    chrootarchive.untar(io.BytesIO(owners_archive()), dest,
                        UnpackOptions(confine=mechanism, no_lchown=True))
    for p in ("dir", "dir/file", "dir/link", "dir/fifo", "implied/child"):
        assert owner(dest / p) == (os.getuid(), os.getgid()), p


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_chown(mechanism: str, dest: Path) -> None:
    chrootarchive.untar(io.BytesIO(owners_archive()), dest,
                        UnpackOptions(confine=mechanism, chown=(77, 88)))
    for p in ("dir", "dir/file", "dir/link", "dir/fifo", "implied/child", "root-owned"):
        assert owner(dest / p) == (77, 88), p


def test_chown_cli(dest: Path, write_archive: Callable[..., Path]) -> None:
    result = run_cli("untar", "--chown", "77:88", write_archive(owners_archive()), dest)
    assert result.rc == 0, result.err
    assert owner(dest / "dir" / "file") == (77, 88)


MAP = UnpackOptions(
    uid_maps=(IDMap(0, 100000, 65536),),
    gid_maps=(IDMap(0, 200000, 65536),),
)


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_id_maps(mechanism: str, tmp_path: Path) -> None:
    dest = tmp_path / "missing-dest"
    chrootarchive.untar(io.BytesIO(owners_archive()), dest,
                        dataclasses.replace(MAP, confine=mechanism))
    assert owner(dest / "dir") == (101000, 202000)
    assert owner(dest / "dir" / "file") == (101001, 202001)
    assert owner(dest / "dir" / "link") == (101002, 202002)
    assert owner(dest / "root-owned") == (100000, 200000)
    # Implied parents belong to the mapped root.
    assert owner(dest / "implied") == (100000, 200000)


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_id_maps_missing_dest_owned_by_mapped_root(mechanism: str, tmp_path: Path) -> None:
    """Docker creates a missing destination 0755, owned by the mapped root."""
    dest = tmp_path / "missing-dest"
    chrootarchive.untar(io.BytesIO(owners_archive()), dest,
                        dataclasses.replace(MAP, confine=mechanism))
    assert owner(dest) == (100000, 200000)
    assert mode(dest) == 0o755


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_id_maps_several_ranges(mechanism: str, dest: Path) -> None:
    opts = UnpackOptions(confine=mechanism,
        uid_maps=(IDMap(0, 500000, 1000), IDMap(1000, 700000, 10)),
        gid_maps=(IDMap(0, 500000, 5000),),
    )
    archive = B().file("a", uid=999, gid=4999).file("b", uid=1005, gid=0).build()
    chrootarchive.untar(io.BytesIO(archive), dest, opts)
    assert owner(dest / "a") == (500999, 504999)
    assert owner(dest / "b") == (700005, 500000)


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
@pytest.mark.parametrize(("uid", "gid"), [(70000, 0), (0, 70000), (65536, 0)])
def test_unmapped_id_is_an_error(mechanism: str, uid: int, gid: int, dest: Path) -> None:
    archive = B().file("ok", b"").file("unmapped", b"", uid=uid, gid=gid).build()
    with pytest.raises(chrootarchive.ChrootArchiveError) as info:
        chrootarchive.untar(io.BytesIO(archive), dest, dataclasses.replace(MAP, confine=mechanism))
    assert not isinstance(info.value, chrootarchive.InternalError), repr(info.value)
    assert str(max(uid, gid)) in str(info.value), str(info.value)


def test_unmapped_id_cli(dest: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(B().file("unmapped", b"", uid=70000).build())
    result = run_cli(
        "untar", "--uid-map", "0:100000:65536", "--gid-map", "0:100000:65536", path, dest
    )
    assert_one_line_error(result, rc=(1, 4), mentions=("70000",))


def test_id_map_cli(dest: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(owners_archive())
    result = run_cli(
        "untar", "--uid-map", "0:100000:65536", "--gid-map", "0:200000:65536", path, dest
    )
    assert result.rc == 0, result.err
    assert owner(dest / "dir" / "file") == (101001, 202001)


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_owner_names_are_ignored(mechanism: str, dest: Path) -> None:
    archive = (
        B()
        .file("a", b"", uid=4242, gid=4343, uname="root", gname="root")
        .file("b", b"", uid=0, gid=0, uname="nobody", gname="nogroup")
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert owner(dest / "a") == (4242, 4343)
    assert owner(dest / "b") == (0, 0)


# -- excludes --------------------------------------------------------------------------


def excludes_archive() -> bytes:
    b = B()
    for name in (
        "a.log",
        "keep.txt",
        "sub/b.log",
        "cache/keep",
        "cache/other",
        "docs/a/b.txt",
        "docs2/x",
        "x/cache/y",
        "tmp/deep/er/file",
    ):
        b.file(name, name.encode())
    return b.build()


EXCLUDES = ("*.log", "cache", "!cache/keep", "docs", "tmp/deep")


def _assert_excludes(dest: Path) -> None:
    present = {"keep.txt", "sub/b.log", "cache/keep", "docs2/x", "x/cache/y"}
    absent = {"a.log", "cache/other", "docs", "docs/a/b.txt", "tmp/deep"}
    for p in present:
        assert (dest / p).exists(), f"{p} should have been unpacked"
    for p in absent:
        assert not os.path.lexists(dest / p), f"{p} should have been excluded"
    assert (dest / "cache/keep").read_bytes() == b"cache/keep"


def test_excludes(mechanism: str, dest: Path) -> None:
    """Docker's patterns (filepath.Match: ``*`` does not cross ``/``); a directory
    pattern excludes what is below it (not ``docs2``: no string prefixes); ``!``
    re-includes."""
    result = chrootarchive.untar(
        io.BytesIO(excludes_archive()), dest, UnpackOptions(confine=mechanism, excludes=EXCLUDES)
    )
    _assert_excludes(dest)
    assert result.entries == 9


def test_excludes_cli(dest: Path, write_archive: Callable[..., Path]) -> None:
    args = [a for p in EXCLUDES for a in ("--exclude", p)]
    result = run_cli("untar", *args, write_archive(excludes_archive()), dest)
    assert result.rc == 0, result.err
    _assert_excludes(dest)


def test_excluded_breakout_is_still_a_breakout_or_skipped(mechanism: str, dest: Path,
                                                          victim: Victim) -> None:
    archive = B().file("../victim/pwned", b"x").build()
    try:
        chrootarchive.untar(io.BytesIO(archive), dest,
                            UnpackOptions(confine=mechanism, excludes=("*",)))
    except chrootarchive.BreakoutError:
        pass
    victim.assert_untouched()


def test_many_excludes(mechanism: str, dest: Path) -> None:
    """Docker's 4 MB exclude list (it overflowed the argument size limit once)."""
    patterns = tuple(f"nothing-matches-{i:06d}-" + "x" * 40 for i in range(70_000))
    assert sum(map(len, patterns)) > 4_000_000
    result = chrootarchive.untar(
        io.BytesIO(B().file("kept", b"k").build()),
        dest,
        UnpackOptions(confine=mechanism, excludes=(*patterns, "dropped")),
    )
    assert result.entries == 1
    assert (dest / "kept").read_bytes() == b"k"


# -- replace, merge, no-overwrite-dir-nondir ----------------------------------------------------


def test_replace_and_merge(mechanism: str, dest: Path) -> None:
    (dest / "d").mkdir()
    (dest / "d" / "old").write_bytes(b"old")
    (dest / "f").write_bytes(b"old file")
    os.link(dest / "f", dest / "f-partner")
    (dest / "x").mkdir()
    (dest / "x" / "content").write_bytes(b"gone")
    (dest / "target").mkdir()
    os.symlink("target", dest / "s")
    old_ino = os.lstat(dest / "f").st_ino
    archive = (
        B()
        .dir("d", mode=0o700, mtime=1_300_000_000)
        .file("d/new", b"new")
        .file("f", b"new file", mode=0o600)
        .symlink("x", "elsewhere")
        .dir("s", mode=0o711)
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    # dir meets dir: merged, metadata from the archive (times set last)
    assert (dest / "d" / "old").read_bytes() == b"old"
    assert (dest / "d" / "new").read_bytes() == b"new"
    assert mode(dest / "d") == 0o700
    assert os.lstat(dest / "d").st_mtime == 1_300_000_000
    # file replaced by a new inode; its old partner keeps the old content
    assert (dest / "f").read_bytes() == b"new file"
    assert os.lstat(dest / "f").st_ino != old_ino
    assert (dest / "f-partner").read_bytes() == b"old file"
    # directory replaced by a symlink; symlink replaced by a directory (target untouched)
    assert os.readlink(dest / "x") == "elsewhere"
    assert stat.S_ISDIR(os.lstat(dest / "s").st_mode)
    assert mode(dest / "s") == 0o711
    assert mode(dest / "target") != 0o711


@pytest.mark.parametrize("existing", ["dir", "file"])
def test_no_overwrite_dir_nondir(mechanism: str, existing: str, dest: Path) -> None:
    if existing == "dir":
        (dest / "n").mkdir()
        (dest / "n" / "inside").write_bytes(b"i")
        archive = B().file("n", b"file now").build()
    else:
        (dest / "n").write_bytes(b"a file")
        archive = B().dir("n").file("n/x", b"x").build()
    with pytest.raises(chrootarchive.ChrootArchiveError) as info:
        chrootarchive.untar(io.BytesIO(archive), dest,
                            UnpackOptions(confine=mechanism, no_overwrite_dir_nondir=True))
    assert not isinstance(info.value, chrootarchive.InternalError), repr(info.value)
    if existing == "dir":
        assert (dest / "n" / "inside").read_bytes() == b"i"
    else:
        assert (dest / "n").read_bytes() == b"a file"
    # Without the option: replaced.
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    if existing == "dir":
        assert (dest / "n").read_bytes() == b"file now"
    else:
        assert (dest / "n" / "x").read_bytes() == b"x"


def test_no_overwrite_dir_nondir_cli(dest: Path, write_archive: Callable[..., Path]) -> None:
    (dest / "n").mkdir()
    result = run_cli(
        "untar", "--no-overwrite-dir-nondir", write_archive(B().file("n", b"f").build()), dest
    )
    assert_one_line_error(result, rc=(1, 4), mentions=("n",))
    assert (dest / "n").is_dir()


def test_no_overwrite_dir_nondir_symlink_over_dir(mechanism: str, dest: Path) -> None:
    (dest / "n").mkdir()
    with pytest.raises(chrootarchive.ChrootArchiveError):
        chrootarchive.untar(
            io.BytesIO(B().symlink("n", "/").build()),
            dest,
            UnpackOptions(confine=mechanism, no_overwrite_dir_nondir=True),
        )
    assert (dest / "n").is_dir() and not (dest / "n").is_symlink()


# -- modes, implied parents, umask -----------------------------------------------------


def test_implied_parents_0755_under_umask_077(mechanism: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    archive = (
        B()
        .file("a/b/c/file", b"x", mode=0o666)
        .dir("explicit", mode=0o777)
        .dir("private", mode=0o700)
        .file("explicit/f", mode=0o604)
        .build()
    )
    old = os.umask(0o077)
    try:
        chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    finally:
        os.umask(old)
    for p in ("a", "a/b", "a/b/c"):
        assert mode(dest / p) == 0o755, p
    assert mode(dest / "a/b/c/file") == 0o666
    assert mode(dest / "explicit") == 0o777
    assert mode(dest / "private") == 0o700
    assert mode(dest / "explicit/f") == 0o604


def test_missing_dest_created_0755(mechanism: str, tmp_path: Path) -> None:
    dest = tmp_path / "new" / "dest"
    chrootarchive.untar(io.BytesIO(B().file("f").build()), dest, UnpackOptions(confine=mechanism))
    assert mode(dest) == 0o755


def test_missing_dest_created_0755_under_umask_077(mechanism: str, tmp_path: Path) -> None:
    dest = tmp_path / "new-dest"
    old = os.umask(0o077)
    try:
        chrootarchive.untar(io.BytesIO(B().file("f").build()), dest,
                            UnpackOptions(confine=mechanism))
    finally:
        os.umask(old)
    assert mode(dest) == 0o755


def test_implied_parents_cli_umask_077(dest: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(B().file("p/q/r", b"x").build())
    result = run_cli("untar", path, dest, umask=0o077)
    assert result.rc == 0, result.err
    assert mode(dest / "p") == 0o755
    assert mode(dest / "p" / "q") == 0o755


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_special_bits_kept(mechanism: str, dest: Path) -> None:
    archive = (
        B()
        .file("suid", b"#!", mode=0o4755, uid=1000, gid=1000)
        .file("sgid", b"#!", mode=0o2755, uid=0, gid=50)
        .file("both", b"#!", mode=0o6711, uid=1234, gid=5678)
        .file("all", b"#!", mode=0o7777, uid=1, gid=1)
        .dir("sticky", mode=0o1777)
        .dir("sgid-dir", mode=0o2775, gid=50)
        .fifo("fifo", mode=0o4644)
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert mode(dest / "suid") == 0o4755
    assert owner(dest / "suid") == (1000, 1000)
    assert mode(dest / "sgid") == 0o2755
    assert mode(dest / "both") == 0o6711
    assert owner(dest / "both") == (1234, 5678)
    assert mode(dest / "all") == 0o7777
    assert mode(dest / "sticky") == 0o1777
    assert mode(dest / "sgid-dir") == 0o2775


# -- xattrs ----------------------------------------------------------------------------

# vfs_cap_data revision 2: magic|effective, permitted = CAP_NET_RAW (13), inheritable = 0.
CAP_NET_RAW_EP = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)


def test_xattrs_including_security_capability(mechanism: str, dest: Path) -> None:
    archive = (
        B()
        .pax(
            {
                "SCHILY.xattr.user.text": "value",
                "SCHILY.xattr.user.binary": b"\x00\x01\xff\xfe binary",
                "SCHILY.xattr.security.capability": CAP_NET_RAW_EP,
            }
        )
        .file("ping", b"\x7fELF", mode=0o755)
        .pax({"SCHILY.xattr.user.on-dir": "yes"})
        .dir("dir")
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert os.getxattr(dest / "ping", "user.text") == b"value"
    assert os.getxattr(dest / "ping", "user.binary") == b"\x00\x01\xff\xfe binary"
    assert os.getxattr(dest / "ping", "security.capability") == CAP_NET_RAW_EP
    assert os.getxattr(dest / "dir", "user.on-dir") == b"yes"
    getcap = subprocess.run(["getcap", str(dest / "ping")], capture_output=True, text=True)
    assert "cap_net_raw" in getcap.stdout, getcap


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_capability_survives_chown(mechanism: str, dest: Path) -> None:
    """Owner first, then xattrs: a chown after setting security.capability would drop it."""
    archive = (
        B()
        .pax({"SCHILY.xattr.security.capability": CAP_NET_RAW_EP})
        .file("ping", b"x", mode=0o4755, uid=1000, gid=1000)
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert os.getxattr(dest / "ping", "security.capability") == CAP_NET_RAW_EP
    assert mode(dest / "ping") == 0o4755


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_trusted_xattrs_as_root(mechanism: str, dest: Path) -> None:
    """As root, GNU tar --xattrs-include='*' sets trusted.* xattrs (overlay metadata
    lives there); so must we."""
    archive = (
        B()
        .pax({"SCHILY.xattr.trusted.overlay.opaque": "y"})
        .dir("opaque")
        .pax({"SCHILY.xattr.trusted.test": b"\x00\xff"})
        .file("f", b"x")
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert os.getxattr(dest / "opaque", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(dest / "f", "trusted.test") == b"\x00\xff"


def test_unsupported_xattr_fails_without_best_effort(mechanism: str, dest: Path) -> None:
    archive = B().pax({"SCHILY.xattr.bogusns.name": "v"}).file("f", b"x").build()
    with pytest.raises(chrootarchive.ChrootArchiveError) as info:
        chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert not isinstance(info.value, chrootarchive.InternalError), repr(info.value)


def test_best_effort_xattrs(mechanism: str, dest: Path) -> None:
    archive = (
        B()
        .pax({"SCHILY.xattr.bogusns.name": "v", "SCHILY.xattr.user.ok": "fine"})
        .file("f", b"x")
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest,
                        UnpackOptions(confine=mechanism, best_effort_xattrs=True))
    assert (dest / "f").read_bytes() == b"x"
    assert os.getxattr(dest / "f", "user.ok") == b"fine"


def test_best_effort_xattrs_cli(dest: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(B().pax({"SCHILY.xattr.bogusns.name": "v"}).file("f", b"x").build())
    assert run_cli("untar", path, dest).rc == 1
    result = run_cli("untar", "--best-effort-xattrs", path, dest)
    assert result.rc == 0, result.err


# -- devices, FIFOs, sparse files ------------------------------------------------------


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_devices_and_fifos(mechanism: str, dest: Path) -> None:
    archive = (
        B()
        .chardev("null", 1, 3, mode=0o620, uid=12, gid=34)
        .blockdev("loop", 7, 250, mode=0o640)
        .chardev("max", 4095, 1048575, mode=0o600)
        .fifo("fifo", mode=0o604, uid=5, gid=6)
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    st = os.lstat(dest / "null")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert mode(dest / "null") == 0o620 and owner(dest / "null") == (12, 34)
    st = os.lstat(dest / "loop")
    assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 250)
    st = os.lstat(dest / "max")
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (4095, 1048575)
    st = os.lstat(dest / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and mode(dest / "fifo") == 0o604
    assert owner(dest / "fifo") == (5, 6)


@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_sparse_files_keep_holes(mechanism: str, fmt: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 1 << 30
    with open(src / "sparse", "wb") as f:
        f.write(b"start")
        f.seek(size // 2)
        f.write(b"middle" * 1000)
        f.seek(size - 3)
        f.write(b"end")
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", f"--format={fmt}", "--sparse", "-cf", str(archive), "-C", str(src), "sparse"],
        check=True,
    )
    assert archive.stat().st_size < (1 << 20)
    dest = tmp_path / "dest"
    chrootarchive.untar(archive, dest, UnpackOptions(confine=mechanism))
    st = os.lstat(dest / "sparse")
    assert st.st_size == size
    assert st.st_blocks * 512 < (4 << 20), f"holes filled: {st.st_blocks * 512} bytes"
    with open(dest / "sparse", "rb") as f:
        assert f.read(5) == b"start"
        f.seek(size // 2)
        assert f.read(6000) == b"middle" * 1000
        f.seek(size - 3)
        assert f.read() == b"end"
        f.seek(1 << 20)
        assert f.read(4096) == bytes(4096)


# -- names -----------------------------------------------------------------------------


def test_long_names_and_link_names(mechanism: str, dest: Path) -> None:
    # Long paths, not long components (NAME_MAX is 255).
    pax_name = "pax/" + "p" * 200 + "/" + "q" * 200
    gnu_name = "gnu/" + "g" * 200 + "/" + "h" * 200
    prefix, name = "u" * 150, "n" * 99
    deep = "/".join(["d"] * 300) + "/leaf"
    target = "t" * 200 + "/" + "u" * 200
    b = (
        B()
        .pax({"path": pax_name})
        .file("ignored", b"pax")
        .longname(gnu_name)
        .file("ignored", b"gnu")
        .raw(tb.member(name, b"ustar", prefix=prefix))
        .file(deep, b"deep")
        .pax({"linkpath": target})
        .symlink("pax-link", "ignored")
        .longlink(target)
        .symlink("gnu-link", "ignored")
        .longlink(pax_name)
        .hardlink("gnu-hardlink", "ignored")
        .pax({"linkpath": gnu_name})
        .hardlink("pax-hardlink", "ignored")
    )
    chrootarchive.untar(io.BytesIO(b.build()), dest, UnpackOptions(confine=mechanism))
    assert (dest / pax_name).read_bytes() == b"pax"
    assert (dest / gnu_name).read_bytes() == b"gnu"
    assert (dest / prefix / name).read_bytes() == b"ustar"
    assert (dest / deep).read_bytes() == b"deep"
    assert os.readlink(dest / "pax-link") == target
    assert os.readlink(dest / "gnu-link") == target
    assert (dest / "gnu-hardlink").read_bytes() == b"pax"
    assert os.lstat(dest / "gnu-hardlink").st_ino == os.lstat(dest / pax_name).st_ino
    assert os.lstat(dest / "pax-hardlink").st_ino == os.lstat(dest / gnu_name).st_ino
    assert not os.path.lexists(dest / "ignored")


def test_non_utf8_names(mechanism: str, dest: Path) -> None:
    raw = b"caf\xe9-\xff\xfe"
    chrootarchive.untar(io.BytesIO(B().file(raw, b"latin1").symlink(b"l", raw).build()), dest,
                        UnpackOptions(confine=mechanism))
    assert os.path.exists(os.path.join(os.fsencode(dest), raw))
    assert os.readlink(os.path.join(os.fsencode(dest), b"l")) == raw


def test_names_are_cleaned(mechanism: str, dest: Path) -> None:
    archive = (
        B().file("./a//b/./c", b"1").file("/abs/x", b"2").file("d/../e", b"3").dir("./").build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert (dest / "a" / "b" / "c").read_bytes() == b"1"
    assert (dest / "abs" / "x").read_bytes() == b"2"
    assert (dest / "e").read_bytes() == b"3"
    assert not os.path.lexists(dest / "d")


# -- times -----------------------------------------------------------------------------


def test_directory_times_set_last(mechanism: str, dest: Path) -> None:
    archive = (
        B()
        .dir("d", mtime=1_000_000_000)
        .dir("d/e", mtime=1_100_000_000)
        .file("d/e/f", b"f", mtime=1_200_000_000)
        .file("d/late", b"l", mtime=1_300_000_000)
        .hardlink("d/e/link", "d/late")
        .symlink("d/sym", "late", mtime=1_400_000_000)
        .pax({"mtime": "1500000000.123456789"})
        .file("d/nanos", b"n")
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert os.lstat(dest / "d").st_mtime_ns == 1_000_000_000 * 10**9
    assert os.lstat(dest / "d" / "e").st_mtime_ns == 1_100_000_000 * 10**9
    assert os.lstat(dest / "d" / "e" / "f").st_mtime == 1_200_000_000
    assert os.lstat(dest / "d" / "sym").st_mtime == 1_400_000_000
    assert os.lstat(dest / "d" / "nanos").st_mtime_ns == 1_500_000_000_123_456_789


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_symlink_metadata_without_following(mechanism: str, dest: Path) -> None:
    archive = (
        B()
        .file("target", b"t", mtime=1_000_000_000, uid=5, gid=5, mode=0o600)
        .symlink("link", "target", mtime=1_234_567_890, uid=77, gid=88)
        .build()
    )
    chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    st = os.lstat(dest / "link")
    assert (st.st_uid, st.st_gid, st.st_mtime) == (77, 88, 1_234_567_890)
    st = os.lstat(dest / "target")
    assert (st.st_uid, st.st_gid, st.st_mtime) == (5, 5, 1_000_000_000)
    assert mode(dest / "target") == 0o600


@pytest.mark.parametrize(
    ("mtime", "direction"),
    [
        pytest.param({"mtime": tb.base256(2**62, 12)}, "future", id="base256-2**62"),
        pytest.param({"mtime": tb.base256(-(2**62), 12)}, "past", id="base256-negative"),
        # int64 seconds (Go parses them) but beyond what a time in ns can hold (2262).
        pytest.param({"pax": "99999999999"}, "future", id="pax-year-5138"),
        pytest.param({"pax": "9223372036854775807"}, "future", id="pax-int64-max"),
        pytest.param({"pax": "-99999999999"}, "past", id="pax-year-minus-1200"),
        pytest.param({"pax": "99999999999.999999999"}, "future", id="pax-fraction"),
    ],
)
def test_out_of_range_mtimes_are_clamped(mechanism: str, mtime: dict[str, bytes | str],
                                         direction: str,
                                         dest: Path) -> None:
    """Times the file system cannot hold are clamped (Docker: to the epoch), never an
    error, never wrapped around to the other side."""
    b = B()
    if "pax" in mtime:
        b.pax({"mtime": mtime["pax"]}).file("f", b"x").pax({"mtime": mtime["pax"]}).dir("d")
    else:
        raw = mtime["mtime"]
        assert isinstance(raw, bytes)  # base256
        b.file("f", b"x", mtime=raw).dir("d", mtime=raw)
    chrootarchive.untar(io.BytesIO(b.build()), dest, UnpackOptions(confine=mechanism))
    for p in ("f", "d"):
        t = os.lstat(dest / p).st_mtime_ns
        if direction == "future":
            assert t >= 0, f"{p}: a far-future time became {t}"
        else:
            assert t <= 0, f"{p}: a far-past time became {t}"


@pytest.mark.parametrize("mechanism", OWNERS, indirect=True)
def test_pax_global_headers_ignored(mechanism: str, dest: Path) -> None:
    archive = (
        B()
        .pax_global(
            {
                "path": "global-name",
                "mtime": "0",
                "uid": "4242",
                "SCHILY.xattr.user.global": "g",
                "linkpath": "/",
            }
        )
        .file("a", b"a", mtime=1_600_000_000, uid=1, gid=1)
        .symlink("b", "a")
        .pax_global({"path": "../escape"})
        .file("c", b"c")
        .build()
    )
    result = chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert sorted(os.listdir(dest)) == ["a", "b", "c"]
    assert owner(dest / "a") == (1, 1)
    assert os.lstat(dest / "a").st_mtime == 1_600_000_000
    assert os.listxattr(dest / "a") == []
    assert os.readlink(dest / "b") == "a"
    assert result.entries >= 3


# -- untar_with_root -------------------------------------------------------------------


@pytest.fixture
def container(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink("/usr/lib", root / "lib-abs")
    return root


@pytest.mark.parametrize("dest", ["lib", "lib-abs", "/lib", "/lib-abs", "usr/lib", "lib/"])
def test_untar_with_root_resolves_inside(mechanism: str, dest: str, container: Path) -> None:
    archive = B().file("module.so", b"so").dir("sub").file("sub/x", b"x").build()
    result = chrootarchive.untar_with_root(io.BytesIO(archive), dest, container,
                                           UnpackOptions(confine=mechanism))
    assert result.entries == 3
    assert (container / "usr" / "lib" / "module.so").read_bytes() == b"so"
    assert (container / "usr" / "lib" / "sub" / "x").read_bytes() == b"x"
    assert os.path.islink(container / "lib")


def test_untar_with_root_host_absolute_dest(mechanism: str, container: Path) -> None:
    """An absolute dest below root on the host means that directory."""
    chrootarchive.untar_with_root(
        io.BytesIO(B().file("f", b"f").build()), container / "usr", container,
        UnpackOptions(confine=mechanism)
    )
    assert (container / "usr" / "f").read_bytes() == b"f"


def test_untar_with_root_creates_missing_dest_inside(mechanism: str, container: Path) -> None:
    chrootarchive.untar_with_root(io.BytesIO(B().file("f", b"f").build()), "a/b/c", container,
                                  UnpackOptions(confine=mechanism))
    assert (container / "a" / "b" / "c" / "f").read_bytes() == b"f"
    for p in ("a", "a/b", "a/b/c"):
        assert mode(container / p) == 0o755


def test_untar_with_root_missing_dest_through_symlink(mechanism: str, container: Path) -> None:
    chrootarchive.untar_with_root(io.BytesIO(B().file("f", b"f").build()), "lib-abs/new", container,
                                  UnpackOptions(confine=mechanism))
    assert (container / "usr" / "lib" / "new" / "f").read_bytes() == b"f"


def test_untar_with_root_breakout_in_archive(mechanism: str, container: Path,
                                             tmp_path: Path) -> None:
    """Names are checked against dest, not root: ``..`` out of dest is a breakout even
    where it would still be inside root (Docker unpacks relative to dest)."""
    archive = B().file("../../escape", b"x").build()
    with pytest.raises(chrootarchive.BreakoutError):
        chrootarchive.untar_with_root(io.BytesIO(archive), "usr/lib", container,
                                      UnpackOptions(confine=mechanism))
    assert not (tmp_path / "escape").exists()


def test_untar_with_root_cli(container: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(B().file("via-cli", b"c").build())
    result = run_cli("untar", "--root", container, path, "/lib")
    assert result.rc == 0, result.err
    assert (container / "usr" / "lib" / "via-cli").read_bytes() == b"c"


# -- sources ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", [*tb.COMPRESSIONS, "none"])
def test_sources(mechanism: str, method: str, tmp_path: Path) -> None:
    data = tb.compress(small_archive(), method)
    path = tmp_path / f"a.{method}"
    path.write_bytes(data)
    r, w = os.pipe()

    def check(dest: Path) -> None:
        assert (dest / "d" / "f").read_bytes() == b"hello\n"
        assert os.lstat(dest / "d" / "h").st_ino == os.lstat(dest / "d" / "f").st_ino

    chrootarchive.untar(str(path), tmp_path / "str", UnpackOptions(confine=mechanism))
    check(tmp_path / "str")
    chrootarchive.untar(path, tmp_path / "pathlike", UnpackOptions(confine=mechanism))
    check(tmp_path / "pathlike")
    chrootarchive.untar(io.BytesIO(data), tmp_path / "bytesio", UnpackOptions(confine=mechanism))
    check(tmp_path / "bytesio")
    with open(path, "rb") as f:
        chrootarchive.untar(f, tmp_path / "file", UnpackOptions(confine=mechanism))
    check(tmp_path / "file")
    os.write(w, data)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        chrootarchive.untar(f, tmp_path / "pipe", UnpackOptions(confine=mechanism))
    check(tmp_path / "pipe")
    result = run_cli("untar", "--confine", mechanism, "-", tmp_path / "stdin", input=data)
    assert result.rc == 0, result.err
    check(tmp_path / "stdin")


def test_api_source_dash_reads_stdin(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    code = (
        f"import chrootarchive, sys; r = chrootarchive.untar('-', {str(dest)!r}); print(r.entries)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], input=tb.compress(small_archive(), "xz"), capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"4"
    assert (dest / "d" / "f").read_bytes() == b"hello\n"


def test_untar_uncompressed(dest: Path) -> None:
    chrootarchive.untar_uncompressed(io.BytesIO(small_archive()), dest)
    assert (dest / "d" / "f").exists()
    with pytest.raises(chrootarchive.MalformedArchiveError):
        chrootarchive.untar_uncompressed(io.BytesIO(tb.compress(small_archive(), "gzip")), dest)


def test_zero_padded_stream(mechanism: str, dest: Path) -> None:
    """Archives may be followed by lots of zero padding (tape blocking)."""
    data = small_archive() + bytes(1 << 20)
    result = chrootarchive.untar(io.BytesIO(data), dest, UnpackOptions(confine=mechanism))
    assert result.entries == 4


# -- results and errors ----------------------------------------------------------------


def test_result_counts(mechanism: str, dest: Path) -> None:
    archive = B().file("a", b"x" * 10).file("b", b"y" * 20).dir("c").symlink("d", "a").build()
    result = chrootarchive.untar(io.BytesIO(archive), dest, UnpackOptions(confine=mechanism))
    assert result.entries == 4
    assert result.size == 30
    assert result.warnings == ()
    assert pickle.loads(pickle.dumps(result)) == result


ERRORS = [
    "ChrootArchiveError",
    "ArchiveError",
    "MalformedArchiveError",
    "CompressionError",
    "BreakoutError",
    "LimitExceededError",
    "DestinationError",
    "ConfinementError",
    "InternalError",
    "WorkerError",
]


def test_error_hierarchy() -> None:
    E = chrootarchive
    assert issubclass(E.ArchiveError, E.ChrootArchiveError)
    assert issubclass(E.MalformedArchiveError, E.ArchiveError)
    assert issubclass(E.CompressionError, E.MalformedArchiveError)
    assert issubclass(E.BreakoutError, E.ArchiveError)
    assert issubclass(E.LimitExceededError, E.ArchiveError)
    assert issubclass(E.DestinationError, E.ChrootArchiveError)
    assert issubclass(E.ConfinementError, E.ChrootArchiveError)
    assert issubclass(E.InternalError, E.ChrootArchiveError)
    assert issubclass(E.WorkerError, E.InternalError)
    assert not issubclass(E.DestinationError, E.ArchiveError)


@pytest.mark.parametrize("name", ERRORS)
def test_errors_picklable(name: str) -> None:
    cls = getattr(chrootarchive, name)
    for err in (cls("something broke", "some/entry"), cls("no entry")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls
        assert back.message == err.message
        assert back.entry == err.entry
        assert str(back) == str(err)


def test_real_error_picklable(dest: Path) -> None:
    with pytest.raises(chrootarchive.BreakoutError) as info:
        chrootarchive.untar(io.BytesIO(B().file("../out", b"").build()), dest)
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is chrootarchive.BreakoutError
    assert back.entry == info.value.entry and back.entry
    assert back.message == info.value.message


def test_json_output(dest: Path, write_archive: Callable[..., Path]) -> None:
    archive = B().file("a", b"x" * 10).file("b", b"y" * 20).dir("c").build()
    result = run_cli("untar", "--json", write_archive(archive), dest)
    assert result.rc == 0, result.err
    out = json.loads(result.out)
    assert out["entries"] == 3
    assert out["size"] == 30
    assert out["confinement"] == "pivot"
    assert out["warnings"] == []


def test_quiet(dest: Path, write_archive: Callable[..., Path]) -> None:
    result = run_cli("untar", "--quiet", write_archive(small_archive()), dest)
    assert result == (0, "", "")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["untar"],
        ["untar", "only-one-arg"],
        ["untar", "--no-such-flag", "a", "b"],
        ["untar", "--chown", "abc", "a", "b"],
        ["untar", "--chown", "1", "a", "b"],
        ["untar", "--uid-map", "1:2", "a", "b"],
        ["untar", "--gid-map", "x:y:z", "a", "b"],
        ["frobnicate", "a", "b"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.rc == 2, result
    assert "Traceback" not in result.err
    assert result.err.strip(), "usage errors say something"


def test_dest_is_a_regular_file_exit_4(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"not a directory")
    result = run_cli("untar", write_archive(small_archive()), target)
    assert_one_line_error(result, rc=4)
    assert target.read_bytes() == b"not a directory"
    result = run_cli("untar", write_archive(small_archive()), target / "sub")
    assert_one_line_error(result, rc=4)


def test_dest_is_a_regular_file_api(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"x")
    with pytest.raises(chrootarchive.DestinationError):
        chrootarchive.untar(io.BytesIO(small_archive()), target)


def test_missing_archive_file(tmp_path: Path) -> None:
    result = run_cli("untar", tmp_path / "does-not-exist.tar", tmp_path / "dest")
    assert result.rc != 0
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_help() -> None:
    result = run_cli("--help")
    assert result.rc == 0
    assert "untar" in result.out
    result = run_cli("untar", "--help")
    assert result.rc == 0
    for flag in (
        "--confine",
        "--json",
        "--quiet",
        "--debug",
        "--no-lchown",
        "--chown",
        "--uid-map",
        "--gid-map",
        "--exclude",
        "--no-overwrite-dir-nondir",
        "--best-effort-xattrs",
        "ARCHIVE",
        "DEST",
    ):
        assert flag in result.out, f"{flag} missing from untar --help"
    for mech in ("auto", "pivot", "chroot"):
        assert mech in result.out


def test_console_script(dest: Path, write_archive: Callable[..., Path]) -> None:
    exe = Path(sys.executable).with_name("chrootarchive")
    assert exe.exists(), "the console script 'chrootarchive' is not installed"
    proc = subprocess.run(
        [str(exe), "untar", str(write_archive(small_archive())), str(dest)], capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (dest / "d" / "f").exists()


def test_concurrent_extractions_same_dest(dest: Path, write_archive: Callable[..., Path]) -> None:
    """Two commands on one destination at once both finish, the tree is whole."""
    path = write_archive(B().file("a", b"a" * 100_000).file("b", b"b").build())
    procs = [
        subprocess.Popen([*CLI, "untar", str(path), str(dest)], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert (dest / "a").read_bytes() == b"a" * 100_000


def test_signal_kill_of_api_caller_leaves_nothing(tmp_path: Path) -> None:
    """A caller killed mid-extraction leaves no child and no pivot directory."""
    dest = tmp_path / "dest"
    code = textwrap.dedent(
        f"""
        import chrootarchive, sys
        chrootarchive.untar(sys.stdin.buffer, {str(dest)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(tb.member("big", b"z" * 1_000_000)[:300_000])
    proc.stdin.flush()
    time.sleep(1.0)
    workers = [pid for pid, _, _ in child_pids(proc.pid)]
    assert workers, "no worker process appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdin.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_state(p) not in ("gone", "Z") for p in workers):
        time.sleep(0.05)
    assert all(_state(p) in ("gone", "Z") for p in workers), workers
    assert pivot_leftovers(tmp_path) == []


@pytest.mark.parametrize(("name", "code", "builtin"), [
    ("SourceError", errno.ENOENT, FileNotFoundError),
    ("DestinationError", errno.EACCES, PermissionError),
    ("DestinationError", errno.ENOTDIR, NotADirectoryError),
])
def test_errno_variant_classes_picklable(name: str, code: int, builtin: type) -> None:
    """The class of an error with an errno is a variant of its own (also the built-in
    class), named like its base: pickling it (multiprocessing pickles a class by
    reference) failed, "not the same object as chrootarchive.errors.SourceError"."""
    err = getattr(chrootarchive, name)("broke", "some/entry", code)
    variant = type(err)
    assert isinstance(err, builtin) and variant is not getattr(chrootarchive, name)
    assert pickle.loads(pickle.dumps(variant)) is variant
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(variant, protocol)) is variant
        back = pickle.loads(pickle.dumps(err, protocol))
        assert type(back) is variant and back.errno == code and back.entry == "some/entry"


def test_an_error_in_a_process_pool_arrives_whole(tmp_path: Path) -> None:
    """A call made in a ProcessPoolExecutor's worker: its error reaches the parent with
    its class (the errno variant), errno, message and entry; a variant class returned
    arrives as itself. Run in a program of its own: the pool leaves multiprocessing's
    resource tracker running."""
    (tmp_path / "file").write_bytes(b"x")
    program = textwrap.dedent("""
        import concurrent.futures, errno, json, multiprocessing, sys
        sys.path.insert(0, sys.argv[1])
        import chrootarchive
        top = sys.argv[2]
        seen = {}
        if __name__ == "__main__":
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                calls = {
                    "missing": pool.submit(chrootarchive.untar, top + "/missing.tar",
                                           top + "/d"),
                    "blocked": pool.submit(chrootarchive.untar, b"\\0" * 1024,
                                           top + "/file/dest"),
                }
                for name, call in calls.items():
                    try:
                        call.result()
                    except OSError as err:
                        seen[name] = [type(err).__name__, err.errno, err.entry,
                                      isinstance(err, FileNotFoundError),
                                      isinstance(err, NotADirectoryError),
                                      isinstance(err, chrootarchive.ChrootArchiveError)]
                variant = type(chrootarchive.SourceError("gone", "x", errno.ENOENT))
                error = chrootarchive.SourceError("gone", "x", errno.ENOENT)
                seen["class"] = pool.submit(type, error).result() is variant
            print(json.dumps(seen))
    """)
    script = tmp_path / "pool.py"
    script.write_text(program)
    src = str(Path(chrootarchive.__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, str(script), src, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["missing"] == ["SourceError", errno.ENOENT, str(tmp_path / "missing.tar"),
                               True, False, True]
    assert seen["blocked"][:2] == ["DestinationError", errno.ENOTDIR]
    assert seen["blocked"][3:] == [False, True, True]
    assert seen["class"] is True
