"""A real root filesystem: chrootarchive's extraction equals GNU tar's, exactly.

A session fixture builds (once, then caches outside the repository) a Debian 12 root
filesystem archive with ``debootstrap --variant=minbase bookworm`` from the mirror the
machine's apt sources name, adds what a minimal base lacks (a file capability, user
xattrs with binary values, a FIFO, a hardlink pair, setgid and sticky bits, owned
symlinks), and tars it with
``tar --numeric-owner --xattrs --xattrs-include='*' -czf``. When the mirror cannot be
reached it falls back to a real subset of this machine's file system (/usr/bin,
/usr/sbin, /usr/lib/<arch>, /usr/share/doc, /etc, /var/lib/dpkg; files over 2 MB
left out), with the same additions.

Cache: ``$CHROOTARCHIVE_TEST_CACHE`` or ``~/.cache/chrootarchive-tests`` (the archive,
about 100 MB, and debootstrap's downloaded packages). Delete the archive to rebuild.
The first build takes about a minute (debootstrap, then tar); later runs reuse it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import chrootarchive
from helpers import tree
from helpers.cli import run_cli
from helpers.leaks import LeakCheck

pytestmark = pytest.mark.slow

CACHE_VERSION = 2
TAR_CREATE = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*"]
TAR_EXTRACT = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"]


def cache_dir() -> Path:
    base = os.environ.get("CHROOTARCHIVE_TEST_CACHE") or os.path.expanduser(
        "~/.cache/chrootarchive-tests"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_mirror() -> str | None:
    """The Debian mirror named by apt's sources (deb822 or one-line format)."""
    files = [Path("/etc/apt/sources.list")]
    src_d = Path("/etc/apt/sources.list.d")
    if src_d.is_dir():
        files += sorted(src_d.iterdir())
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            uri = m.group(1)
            if "debian" in uri and "security" not in uri:
                return uri
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            uri = m.group(1)
            if "debian" in uri and "security" not in uri:
                return uri
    return None


def embellish(root: Path) -> None:
    """Add what a minimal base may lack, so that every kind of metadata is exercised."""
    captest = root / "usr" / "local" / "bin" / "captest"
    captest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "usr" / "bin" / "true", captest)
    subprocess.run(["setcap", "cap_net_raw+ep", str(captest)], check=True)
    assert os.getxattr(captest, "security.capability")
    os.setxattr(captest, "user.origin", b"chrootarchive-tests\x00\xff")
    extra = root / "srv" / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    os.mkfifo(extra / "fifo", 0o620)
    (extra / "a").write_bytes(b"hardlinked\n")
    os.link(extra / "a", extra / "b")
    (extra / "setgid").write_bytes(b"#!/bin/sh\n")
    os.chmod(extra / "setgid", 0o2755)
    os.chown(extra / "setgid", 0, 50)
    sticky = extra / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    os.chown(extra / "a", 1000, 1000)
    os.setxattr(extra, "user.dir-xattr", b"on a directory")
    os.symlink("../../usr/local/bin/captest", extra / "rel-symlink")
    os.symlink("/usr/local/bin/captest", extra / "abs-symlink")
    os.lchown(extra / "abs-symlink", 123, 456)
    os.utime(extra / "abs-symlink", ns=(1_500_000_000_123_456_789,) * 2, follow_symlinks=False)


def build_with_debootstrap(work: Path, mirror: str) -> Path:
    root = work / "rootfs"
    debs = cache_dir() / "debs"  # downloaded packages survive a rebuild
    debs.mkdir(exist_ok=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--cache-dir={debs}", "bookworm", str(root), mirror],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return root


def build_from_host(work: Path) -> Path:
    root = work / "rootfs"
    root.mkdir()
    arch = (
        subprocess.run(
            ["gcc", "-dumpmachine"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "x86_64-linux-gnu"
    )
    paths = [
        p
        for p in ("usr/bin", "usr/sbin", f"usr/lib/{arch}", "usr/share/doc", "etc", "var/lib/dpkg")
        if os.path.isdir("/" + p)
    ]
    find = subprocess.Popen(
        ["find", *paths, "-xdev", "(", "-type", "f", "-size", "+2M", ")", "-prune", "-o",
         "(", "-type", "s", ")", "-prune", "-o", "-print0"],
        cwd="/",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    copy = subprocess.Popen(
        [*TAR_CREATE, "--null", "--no-recursion", "-T", "-", "-cf", "-"],
        cwd="/",
        stdin=find.stdout,
        stdout=subprocess.PIPE,
    )
    assert find.stdout is not None
    find.stdout.close()
    subprocess.run([*TAR_EXTRACT, "-", "-C", str(root)], stdin=copy.stdout, check=True)
    copy.wait()
    find.wait()
    for d in ("usr/bin", "usr/local/bin", "dev", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    if not (root / "usr/bin/true").exists():
        shutil.copy2("/usr/bin/true", root / "usr/bin/true")
    os.mknod(root / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(root / "tmp", 0o1777)
    return root


@pytest.fixture(scope="session")
def rootfs_archive() -> Path:
    """The cached root filesystem archive (built on first use)."""
    target = cache_dir() / f"rootfs-v{CACHE_VERSION}.tar.gz"
    if target.exists():
        return target
    # Build beside the cache (same file system: the final rename is atomic).
    work = cache_dir() / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        mirror = debian_mirror()
        root = None
        if mirror and shutil.which("debootstrap"):
            try:
                root = build_with_debootstrap(work, mirror)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                shutil.rmtree(work / "rootfs", ignore_errors=True)
        if root is None:
            root = build_from_host(work)
        embellish(root)
        partial = work / "rootfs.tar.gz"
        # gzip -1: the same format as -z, several times faster to build.
        subprocess.run(
            [*TAR_CREATE, "-I", "gzip -1", "-cf", str(partial), "-C", str(root), "."], check=True
        )
        os.replace(partial, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def rootfs_reference(
    rootfs_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    """GNU tar's extraction of the archive (as root), and when it started (ns)."""
    ref = tmp_path_factory.mktemp("rootfs-reference")
    started = time.time_ns() - 1_000_000_000
    proc = subprocess.run(
        [*TAR_EXTRACT, str(rootfs_archive), "-C", str(ref)],
        capture_output=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert proc.returncode == 0, proc.stderr
    return ref, started


def _compare(ref: Path, dest: Path) -> list[str]:
    # The archive lists "./": the root's own metadata is compared too.
    return tree.diff(tree.snapshot(ref), tree.snapshot(dest))


def test_rootfs_cli_equals_gnu_tar(
    rootfs_archive: Path, rootfs_reference: tuple[Path, int], tmp_path: Path
) -> None:
    ref, _ = rootfs_reference
    dest = tmp_path / "dest"
    check = LeakCheck(tmp_path)
    start = time.monotonic()
    result = run_cli("untar", "--json", rootfs_archive, dest, timeout=300)
    elapsed = time.monotonic() - start
    assert result.rc == 0, result.err
    assert '"confinement"' in result.out
    diffs = _compare(ref, dest)
    assert not diffs, "chrootarchive's root filesystem differs from GNU tar's:\n  " + "\n  ".join(
        diffs
    )
    check.assert_clean()
    # Sanity: what the fixture promised is really in there.
    snap = tree.snapshot(dest / "usr" / "local" / "bin")
    assert "security.capability" in snap["captest"]["xattrs"]
    assert elapsed < 120, f"unpacking the root filesystem took {elapsed:.0f}s"


def test_rootfs_reextract_over_itself(
    rootfs_archive: Path, rootfs_reference: tuple[Path, int], tmp_path: Path
) -> None:
    """Unpacking the same root filesystem over itself (every path exists: files are
    replaced, directories merged) still gives GNU tar's tree, through the API."""
    ref, _ = rootfs_reference
    dest = tmp_path / "dest"
    chrootarchive.untar(rootfs_archive, dest)
    result = chrootarchive.untar(
        rootfs_archive, dest, chrootarchive.UnpackOptions(confine="chroot")
    )
    assert result.confinement == "chroot"
    diffs = _compare(ref, dest)
    assert not diffs, "re-extraction differs from GNU tar's tree:\n  " + "\n  ".join(diffs)
