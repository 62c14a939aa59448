"""An attacker's review of the helper that creates files by name (issue 16).

The archive names a file the helper is still creating through another spelling: a
symlink to its directory, ``./`` and ``//`` forms. The tree must be the worker's alone.
And a concurrent attacker swaps the directories the helper creates files in for symlinks
to a victim outside: the helper's names resolve in the jail, the victim is unchanged.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from chrootarchive.operations.untar import _HELPER_MIN_INPUT
from helpers import hardening, tree
from helpers.cli import CLI, CLIResult, assert_one_line_error
from helpers.leaks import LeakCheck
from test_finisher import _add, _files_for_the_helper_to_start, _in_process


def _both(archive: bytes, tmp_path: Path) -> dict[str, dict[str, Any]]:
    results = {}
    for mode in ("alone", "plain"):
        (tmp_path / mode).mkdir()
        results[mode] = _in_process(archive, tmp_path / mode, mode)
    return results


def test_a_hardlink_through_a_symlink_to_a_file_the_helper_creates(tmp_path: Path) -> None:
    """``real/f`` goes to the helper; ``h`` links to it as ``s/f`` through the in-root
    symlink ``s -> real``: the worker alone links it; with the helper the same."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "real", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "s", kind=tarfile.SYMTYPE, linkname="real")
        _files_for_the_helper_to_start(tf)
        for i in range(20):
            _add(tf, f"real/f{i}", b"linked to " + str(i).encode())
            _add(tf, f"h{i}", kind=tarfile.LNKTYPE, linkname=f"s/f{i}")
    results = _both(buf.getvalue(), tmp_path)
    assert results["plain"]["helper"], results
    assert "error" not in results["alone"], results
    assert "error" not in results["plain"], results
    dest = tmp_path / "plain" / "dest"
    for i in range(20):
        assert (dest / f"h{i}").read_bytes() == b"linked to %d" % i


def test_other_spellings_of_a_pending_name_as_without_the_helper(tmp_path: Path) -> None:
    """``./x``, ``x/``, ``a//b``, ``d/../x`` name what the helper is creating: the
    worker waits for it exactly as for the plain name; the trees are the same."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _files_for_the_helper_to_start(tf)
        _add(tf, "x", b"first")
        _add(tf, "./x", b"second")
        _add(tf, "y", b"a file")
        _add(tf, "y/", kind=tarfile.DIRTYPE, mode=0o750)
        _add(tf, "./y//z", b"below")
        _add(tf, "a/w", b"w1")
        _add(tf, "a//w", b"w2")
        _add(tf, "hw", kind=tarfile.LNKTYPE, linkname="./a//w")
        _add(tf, "q", b"q")
        _add(tf, "a/../q", kind=tarfile.SYMTYPE, linkname="x")
        _add(tf, "hq", kind=tarfile.LNKTYPE, linkname="a/../x")
    trees = {}
    for mode in ("alone", "plain"):
        (tmp_path / mode).mkdir()
        result = _in_process(buf.getvalue(), tmp_path / mode, mode)
        assert "error" not in result, (mode, result)
        trees[mode] = tree.snapshot(tmp_path / mode / "dest", nlink=True)
    tree.assert_same(trees["alone"], trees["plain"], "the helper made another tree",
                     ignore=lambda path, key: key == "mtime_ns" and path in {".", "a"})
    dest = tmp_path / "plain" / "dest"
    assert (dest / "x").read_bytes() == b"second" and (dest / "y" / "z").read_bytes() == b"below"
    assert (dest / "hw").read_bytes() == b"w2" and (dest / "hq").read_bytes() == b"second"


# -- a concurrent attacker while the helper creates files by name ----------------------

ATTACKER = Path(__file__).resolve().parent / "helpers" / "attacker.py"
RACE_DIRS = 20
RACE_FILES = 1500  # of 2.5 KiB each: 4.6 MiB of plain tar, so the worker may fork its helper
RACE_WARM = 100  # small files before the attacked ones: the helper runs from the 65th
RACE_ATTEMPTS = 3  # rounds per variant at most, until one counts
OLD = 1_000_000_000  # the victim's timestamps


def _race_archive() -> bytes:
    """``d0``..``d19`` (the attacked directories), then ``warm/f000``..``f099`` (the helper
    is forked after the 64th and creates the rest by name; the last is the attacker's
    trigger), then 1,500 files of 2.5 KiB spread over ``d*``, all the extracting user's
    (uid 0: root's, or the caller's in the user namespace) so that each goes by name."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for d in range(RACE_DIRS):
            _add(tf, f"d{d}", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "warm", kind=tarfile.DIRTYPE, mode=0o755)
        for i in range(RACE_WARM):
            _add(tf, f"warm/f{i:03d}", b"warm up")
        for i in range(RACE_FILES):
            _add(tf, f"d{i % RACE_DIRS}/f{i:04d}", f"archive file {i}\n".encode() * 140,
                 mode=0o640)
        _add(tf, "last", b"the last file")
    return buf.getvalue()


def _race_round(area: hardening.Unprivileged, archive: Path, user: str, mode: str,
                mirror: bool, n: int) -> tuple[bool, str]:
    """One round: ``dest/d*`` swapped for symlinks to ``victim`` (outside) while the
    command line extracts as ``user``; the victim is compared before and after. Whether
    the round counts (the attacker, released once the helper was seen alive and before
    the archive's last file existed, swapped before the extraction ended), and what
    the extraction said."""
    x = area.mkdir(f"{user}-{mode}-{int(mirror)}-{n}", owned=user == "nobody")
    dest = x / "dest"
    dest.mkdir(mode=0o777)
    dest.chmod(0o777)  # the unprivileged attacker swaps in it
    victim = x / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "secret").write_bytes(b"do not touch")
    (victim / "secret").chmod(0o600)
    (victim / "sub" / "file").write_bytes(b"deep")
    for i in range(0, RACE_FILES, 37):  # names the archive writes below d*
        (victim / f"f{i:04d}").write_bytes(b"victim file")
    owner = hardening.NOBODY if user == "nobody" else 0
    for path in [dest, *victim.rglob("*"), victim]:
        os.chown(path, owner, owner)  # the extracting user could write all of it
        os.utime(path, (OLD, OLD))
    if mirror:  # where the swapped-in symlinks lead inside the jail
        for inside in (str(victim).lstrip("/"), "victim"):
            (dest / inside).mkdir(parents=True)
            for path in [dest / inside, *(dest / inside).parents]:
                if path != dest and dest in path.parents:
                    os.chown(path, owner, owner)
    before = tree.snapshot(victim, ctime=True, nlink=True)
    go = x / "go"
    counter = x / "counter"
    counter.write_bytes(bytes(16))
    counter.chmod(0o666)
    config = {"mode": mode, "dest": str(dest), "window": 0.25, "timeout": 120,
              "targets": [f"d{d}" for d in range(RACE_DIRS)],
              "link_to": [str(victim), os.path.relpath(victim, dest)],
              "hold": str(dest), "trigger": str(go),
              "counter": str(counter)}
    attacker = subprocess.Popen(
        [*hardening.SETPRIV, sys.executable, "-I", str(ATTACKER), json.dumps(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fd = os.open(counter, os.O_RDWR)
    shared = mmap.mmap(fd, 16)
    os.close(fd)
    try:
        assert attacker.stdout is not None and attacker.stdout.readline() == b"ready\n"
        if user == "root":
            argv, env = [*CLI, "untar", str(archive), str(dest)], None
        else:
            argv = [*hardening.SETPRIV, hardening.SYSTEM_PYTHON, "-m", "chrootarchive",
                    "untar", str(archive), str(dest)]
            env = area.env()
        proc = subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        # The attacker starts once the helper is there and the archive's last file is
        # not yet: every swap before the end meets the helper creating files by name.
        in_time = False
        while proc.poll() is None and not go.exists():
            if any(hardening.workers_of(worker) for worker in hardening.workers_of(proc.pid)):
                in_time = not (dest / "last").exists()
                go.touch()
            time.sleep(0.0005)
        proc.wait(timeout=120)
        swaps = struct.unpack_from("<Q", shared, 0)[0]
        _out, err = proc.communicate(timeout=120)
        shared[8] = 1  # stop
        attacker.communicate(timeout=60)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        shared.close()
    assert attacker.returncode == 0
    result = CLIResult((proc.returncode, "", err.decode("utf-8", "replace")))
    said = "ok" if result.rc == 0 else assert_one_line_error(result, rc=(1, 4))
    context = f"{user}, {mode}, mirror {mirror}, {swaps} swaps: {said}"
    assert "internal error" not in said.lower(), context
    assert "Traceback" not in result.err, context
    tree.assert_same(before, tree.snapshot(victim, ctime=True, nlink=True),
                     f"the victim outside changed ({context})")
    shutil.rmtree(x)
    return swaps > 0 and in_time, context


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_a_racer_swapping_directories_never_redirects_the_helper(user: str) -> None:
    """While the helper creates files by name below ``d0``..``d19`` (a large plain tar:
    the jailed worker forks it after its first 64 small files, and the attacker starts
    on a file the helper made), an attacker of uid 65534 swaps those directories for
    symlinks to a victim tree outside the destination (absolute and relative targets):
    atomically (``RENAME_EXCHANGE``) and by rename and symlink. Without a copy of the
    victim's path inside the destination the helper's names lead nowhere (an error, one
    line); with one they lead there, inside the jail. The victim, writable by the
    extracting user, is unchanged (content, mode, owner, times, links). As root
    (``pivot``) and as uid 65534 (``userns``). Every variant must count: a swap before
    the extraction ended, with the helper alive after it."""
    archive = _race_archive()
    assert len(archive) >= _HELPER_MIN_INPUT  # the worker may fork its helper from this size on
    area = hardening.Unprivileged()
    leaks = LeakCheck(area.top)
    try:
        path = area.write("race.tar", archive)
        for mode in ("dir-exchange", "dir-rename"):
            for mirror in (False, True):
                rounds = []
                for n in range(RACE_ATTEMPTS):
                    counted, context = _race_round(area, path, user, mode, mirror, n)
                    rounds.append(context)
                    if counted:
                        break
                print(f"\n[helper race] {rounds}")
                assert counted, f"no round had a swap while the helper ran: {rounds}"
        leaks.assert_clean()
    finally:
        area.cleanup()
