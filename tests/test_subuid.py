"""``userns`` with subordinate id ranges: ownership inside the tree is kept.

A temporary user is created (``useradd``, no home, no login shell, no automatic ranges)
and given a subordinate uid and gid range (``usermod --add-subuids/--add-subgids``, so
``/etc/subuid`` and ``/etc/subgid`` are edited by their own tools, with their locks);
a finalizer removes the ranges and the user, and checks that nothing is left.
``newuidmap``/``newgidmap`` (Debian package ``uidmap``) are installed if missing.

As that user, ``--confine userns`` maps the caller to root and the range to ids 1 and
up, so an archive's owners 0, 1000 and 2000 are kept inside the namespace; on the host
they appear as the caller (for 0) and ``range_start + id - 1`` (for id >= 1). An owner
beyond the range is skipped with the usual one-line warning.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import tarbuild as tb
from helpers.cli import CLIResult
from helpers.unpriv import cli_as, make_package_copy, run_as, world_dir

pytestmark = pytest.mark.kernel

COUNT = 65536
BEYOND = COUNT + 5000  # not mapped: the range covers ids 1..COUNT


def _ensure_uidmap() -> None:
    if shutil.which("newuidmap") and shutil.which("newgidmap"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "uidmap"], check=True, env=env,
                   timeout=600)
    assert shutil.which("newuidmap") and shutil.which("newgidmap")


def _free_start(*files: str) -> int:
    """A range start above every range already given out."""
    end = 3_000_000
    for path in files:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                end = max(end, int(parts[1]) + int(parts[2]))
    return -(-end // COUNT) * COUNT


def _entries(path: str, name: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if line.split(":")[0] == name]


@dataclass
class SubUser:
    name: str
    uid: int
    gid: int
    start: int  # the same start for uids and gids


@pytest.fixture(scope="module")
def subuser() -> Iterator[SubUser]:
    _ensure_uidmap()
    name = f"ca-sub-{os.urandom(3).hex()}"
    start = _free_start("/etc/subuid", "/etc/subgid")
    span = f"{start}-{start + COUNT - 1}"
    created = False
    try:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                       check=True, capture_output=True, timeout=60)
        created = True
        subprocess.run(["usermod", "--add-subuids", span, "--add-subgids", span, name],
                       check=True, capture_output=True, timeout=60)
        uid = int(subprocess.run(["id", "-u", name], check=True, capture_output=True,
                                 text=True).stdout)
        gid = int(subprocess.run(["id", "-g", name], check=True, capture_output=True,
                                 text=True).stdout)
        assert _entries("/etc/subuid", name) == [f"{name}:{start}:{COUNT}"]
        assert _entries("/etc/subgid", name) == [f"{name}:{start}:{COUNT}"]
        yield SubUser(name, uid, gid, start)
    finally:
        if created:
            subprocess.run(["usermod", "--del-subuids", span, "--del-subgids", span, name],
                           capture_output=True, timeout=60)
            subprocess.run(["userdel", name], capture_output=True, timeout=60)
        leftovers = [(f, line) for f in ("/etc/subuid", "/etc/subgid", "/etc/passwd",
                                         "/etc/group") for line in _entries(f, name)]
        assert not leftovers, f"the temporary user was not cleaned up: {leftovers}"


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with world_dir("subuid") as path:
        yield path


@pytest.fixture(scope="module")
def pythonpath(base: Path) -> Path:
    return make_package_copy(base)


#: name -> (uid, gid) in the archive
OWNERS = {
    "d": (0, 0),
    "d/root-file": (0, 0),
    "d/u1000": (1000, 1000),
    "d/u2000": (2000, 2000),
    "d/mixed": (1000, 2000),
    "d/setuid-1000": (1000, 1000),
    "d/dir-2000": (2000, 2000),
    "d/dir-2000/inner": (2000, 1000),
    "d/link-1000": (1000, 1000),
    "d/fifo-2000": (2000, 2000),
    "d/edge": (COUNT, COUNT),  # the last mapped id
    "d/beyond": (BEYOND, BEYOND),  # unmapped: skipped, reported
}


def _archive(base: Path) -> Path:
    b = tb.TarBuilder()
    for name, (uid, gid) in OWNERS.items():
        if name in ("d", "d/dir-2000"):
            b.dir(name, uid=uid, gid=gid, mode=0o755)
        elif name.startswith("d/link"):
            b.symlink(name, "u1000", uid=uid, gid=gid)
        elif name.startswith("d/fifo"):
            b.fifo(name, uid=uid, gid=gid, mode=0o640)
        elif name == "d/setuid-1000":
            b.file(name, b"#!/bin/sh\n", uid=uid, gid=gid, mode=0o4755)
        else:
            b.file(name, name.encode(), uid=uid, gid=gid)
    path = base / f"owners-{os.urandom(3).hex()}.tar"
    path.write_bytes(b.build())
    path.chmod(0o644)
    return path


def _dest(base: Path, user: SubUser) -> Path:
    dest = base / f"dest-{os.urandom(3).hex()}"
    dest.mkdir()
    os.chown(dest, user.uid, user.gid)
    return dest


def _host_id(inner: int, caller: int, start: int) -> int:
    return caller if inner == 0 else start + inner - 1


def _unpack(user: SubUser, pythonpath: Path, base: Path, confine: str) -> tuple[Path, CLIResult]:
    dest = _dest(base, user)
    result = cli_as(pythonpath, "untar", "--json", "--confine", confine, _archive(base), dest,
                    uid=user.uid, gid=user.gid)
    assert result.rc == 0, result.err
    return dest, result


@pytest.mark.parametrize("confine", ["userns", "auto"])
def test_full_range_keeps_owners(confine: str, subuser: SubUser, pythonpath: Path,
                                 base: Path) -> None:
    dest, result = _unpack(subuser, pythonpath, base, confine)
    out = json.loads(result.out)
    assert out["confinement"] == "userns", out
    wrong = []
    for name, (uid, gid) in OWNERS.items():
        st = os.lstat(dest / name)
        if name == "d/beyond":
            expected = (subuser.uid, subuser.gid)  # not representable: the caller's
        else:
            expected = (_host_id(uid, subuser.uid, subuser.start),
                        _host_id(gid, subuser.gid, subuser.start))
        if (st.st_uid, st.st_gid) != expected:
            wrong.append(f"{name}: {st.st_uid}:{st.st_gid}, expected {expected}")
    assert not wrong, "\n".join(wrong)
    assert os.stat(dest / "d/setuid-1000").st_mode & 0o7777 == 0o4755
    # Only the owner beyond the range is reported, once.
    warnings = out["warnings"]
    assert len(warnings) == 1, warnings
    assert f"{BEYOND}:{BEYOND}" in warnings[0] and "1 entry kept" in warnings[0], warnings


def test_owners_inside_the_namespace(subuser: SubUser, pythonpath: Path, base: Path) -> None:
    """Seen from a user namespace with the same map, the archive's owners are back."""
    dest, _ = _unpack(subuser, pythonpath, base, "userns")
    span = f"{subuser.start},1,{COUNT}"
    names = list(OWNERS)
    result = run_as(["unshare", "--user", "--map-root-user", f"--map-users={span}",
                     f"--map-groups={span}", "stat", "-c", "%n %u:%g",
                     *[str(dest / n) for n in names]], pythonpath, uid=subuser.uid,
                    gid=subuser.gid)
    assert result.rc == 0, result.err
    seen = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in result.out.splitlines()}
    for name, (uid, gid) in OWNERS.items():
        expected = "0:0" if name == "d/beyond" else f"{uid}:{gid}"
        assert seen[str(dest / name)] == expected, (name, seen[str(dest / name)])


def test_openat2_cannot_use_the_range(subuser: SubUser, pythonpath: Path, base: Path) -> None:
    """openat2 runs in the caller's process, without a namespace: every owner other than
    the caller's is skipped and reported; the files are the caller's."""
    dest, result = _unpack(subuser, pythonpath, base, "openat2")
    out = json.loads(result.out)
    assert out["confinement"] == "openat2"
    for name in OWNERS:
        st = os.lstat(dest / name)
        assert (st.st_uid, st.st_gid) == (subuser.uid, subuser.gid), name
    assert len([w for w in out["warnings"] if "ownership" in w]) == 1, out["warnings"]
