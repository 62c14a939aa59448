"""The confinement ladder: each rung made unavailable without changing the machine.

A seccomp filter, installed in a child process by ``helpers/seccomp_run.py`` (ctypes:
``prctl(PR_SET_NO_NEW_PRIVS)`` then ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``),
makes ``unshare``, ``openat2`` or ``mount`` fail with EPERM or ENOSYS; the child then
execs the command line, which (and whose worker) inherits the filter. Nothing
machine-wide changes.

- As uid 65534: ``unshare`` blocked -> ``auto`` picks ``openat2``; ``openat2`` blocked ->
  ``auto`` still picks ``userns``; both blocked -> exit status 3 and one line naming each
  rung and why; ``--confine userns`` or ``--confine openat2`` forced while blocked -> exit
  status 3; mounting denied inside the user namespace -> the next rung.
- As root: ``--confine pivot`` (and ``userns``) with ``unshare`` blocked -> a
  ConfinementError (exit 3), never an unconfined run; ``auto`` the same or a confined
  rung; ``--confine chroot`` needs no namespace and still works.
- "Not supported" is learned once per process: a second extraction does not try again.

Every run checks that nothing was written when it failed, and that a victim tree beside
the destination is untouched.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import tarbuild as tb
from helpers.cli import CLIResult, assert_one_line_error, run_cli
from helpers.unpriv import (
    NOBODY,
    SYSTEM_PYTHON,
    chown_tree,
    cli_as,
    make_package_copy,
    run_as,
    world_dir,
)
from helpers.victim import Victim

pytestmark = pytest.mark.kernel

SECCOMP_RUN = Path(__file__).resolve().parent / "helpers" / "seccomp_run.py"
ARCHIVE = (tb.TarBuilder().dir("d").file("d/f", b"ladder\n").symlink("s", "d/f")
           .file("../escape-attempt", b"x").build())
GOOD = tb.TarBuilder().dir("d").file("d/f", b"ladder\n").symlink("s", "d/f").build()


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with world_dir("ladder") as path:
        yield path


@pytest.fixture(scope="module")
def pythonpath(base: Path) -> Path:
    return make_package_copy(base)


@pytest.fixture(scope="module")
def good_archive(base: Path) -> Path:
    path = base / "good.tar"
    path.write_bytes(GOOD)
    path.chmod(0o644)
    return path


@pytest.fixture
def work(base: Path) -> Iterator[tuple[Path, Victim]]:
    """``work/dest`` and a victim tree, all belonging to uid 65534."""
    work = base / "work" / os.urandom(4).hex()
    (work / "dest").mkdir(parents=True)
    victim = Victim(work).create()
    chown_tree(work, NOBODY)
    victim.snap()
    yield work, victim
    victim.assert_untouched()


def _nobody(pythonpath: Path, archive: Path, dest: Path, *deny: str,
            confine: str = "auto") -> CLIResult:
    return cli_as(pythonpath, "untar", "--json", "--confine", confine, archive, dest,
                  seccomp=deny)


def _root(archive: Path, dest: Path, *deny: str, confine: str = "auto") -> CLIResult:
    prefix = [sys.executable, str(SECCOMP_RUN)]
    for rule in deny:
        prefix += ["--deny", rule]
    return run_cli("untar", "--json", "--confine", confine, archive, dest,
                   prefix=[*prefix, "--"])


def _assert_unpacked(result: CLIResult, dest: Path, confinement: str) -> None:
    assert result.rc == 0, result.err
    assert json.loads(result.out)["confinement"] == confinement, result.out
    assert (dest / "d" / "f").read_bytes() == b"ladder\n"
    assert os.readlink(dest / "s") == "d/f"


# -- as uid 65534 ----------------------------------------------------------------------


def test_filter_really_blocks(pythonpath: Path) -> None:
    """The filter does what the other tests rely on, in the user's own processes."""
    result = run_as(["unshare", "--user", "true"], pythonpath,
                    prefix=[SYSTEM_PYTHON, str(pythonpath / "seccomp_run.py"), "--deny",
                            "unshare:EPERM", "--"])
    assert result.rc != 0 and "Operation not permitted" in result.err, result
    result = run_as(["unshare", "--user", "true"], pythonpath)
    assert result.rc == 0, f"unprivileged user namespaces must work here: {result.err}"


def test_nothing_blocked_auto_picks_userns(
    pythonpath: Path, good_archive: Path, work: tuple[Path, Victim]
) -> None:
    dest = work[0] / "dest"
    _assert_unpacked(_nobody(pythonpath, good_archive, dest), dest, "userns")


@pytest.mark.parametrize("errno_name", ["EPERM", "ENOSYS"])
def test_unshare_blocked_auto_picks_openat2(errno_name: str, pythonpath: Path,
                                            good_archive: Path, work: tuple[Path, Victim]) -> None:
    dest = work[0] / "dest"
    result = _nobody(pythonpath, good_archive, dest, f"unshare:{errno_name}")
    _assert_unpacked(result, dest, "openat2")


@pytest.mark.parametrize("errno_name", ["ENOSYS", "EPERM"])
def test_openat2_blocked_auto_still_userns(errno_name: str, pythonpath: Path,
                                           good_archive: Path, work: tuple[Path, Victim]) -> None:
    dest = work[0] / "dest"
    result = _nobody(pythonpath, good_archive, dest, f"openat2:{errno_name}")
    _assert_unpacked(result, dest, "userns")


@pytest.mark.parametrize("errno_name", ["EPERM", "ENOSYS"])
def test_unshare_and_openat2_blocked_exit_3(errno_name: str, pythonpath: Path,
                                            good_archive: Path, work: tuple[Path, Victim]) -> None:
    """No rung left: exit status 3 and one line listing each mechanism and why."""
    dest = work[0] / "dest"
    result = _nobody(pythonpath, good_archive, dest, f"unshare:{errno_name}",
                     f"openat2:{errno_name}")
    line = assert_one_line_error(result, rc=3, mentions=("pivot", "userns", "openat2"))
    reason = os.strerror(getattr(__import__("errno"), errno_name))
    # "pivot: <why>; userns: <why>; openat2: <why>", in the ladder's order.
    positions = [line.find(f"{name}: ") for name in ("pivot", "userns", "openat2")]
    assert -1 not in positions and positions == sorted(positions), line
    pivot_why = line[positions[0]:positions[1]]
    userns_why = line[positions[1]:positions[2]]
    openat2_why = line[positions[2]:]
    assert "root" in pivot_why, line
    assert reason in userns_why, line
    assert reason in openat2_why, line
    assert list(dest.iterdir()) == []
    # --json: the error as a document on stdout too (docs/json.md).
    assert json.loads(result.out)["error"]["exit_status"] == 3


def test_forced_userns_with_unshare_blocked_exit_3(pythonpath: Path, good_archive: Path,
                                                   work: tuple[Path, Victim]) -> None:
    dest = work[0] / "dest"
    result = _nobody(pythonpath, good_archive, dest, "unshare:EPERM", confine="userns")
    assert_one_line_error(result, rc=3, mentions=("userns", "Operation not permitted"))
    assert list(dest.iterdir()) == []


def test_forced_openat2_with_openat2_blocked_exit_3(pythonpath: Path, good_archive: Path,
                                                    work: tuple[Path, Victim]) -> None:
    dest = work[0] / "dest"
    result = _nobody(pythonpath, good_archive, dest, "openat2:ENOSYS", confine="openat2")
    assert_one_line_error(result, rc=3, mentions=("openat2", "Function not implemented"))
    assert list(dest.iterdir()) == []


def test_forced_openat2_with_unshare_blocked_works(pythonpath: Path, good_archive: Path,
                                                   work: tuple[Path, Victim]) -> None:
    dest = work[0] / "dest"
    result = _nobody(pythonpath, good_archive, dest, "unshare:EPERM", confine="openat2")
    _assert_unpacked(result, dest, "openat2")


def test_mount_denied_in_user_namespace_next_rung(pythonpath: Path, good_archive: Path,
                                                  work: tuple[Path, Victim]) -> None:
    """A user namespace in which mounting is denied (as AppArmor's unprivileged-userns
    restriction does): ``userns`` cannot pivot, and ``auto`` must go on to ``openat2``
    (issue 4: "checking that the next rung is chosen"), never run unconfined."""
    dest = work[0] / "dest"
    result = _nobody(pythonpath, good_archive, dest, "mount:EPERM")
    _assert_unpacked(result, dest, "openat2")


def test_breakout_still_refused_on_the_lower_rung(
    pythonpath: Path, base: Path, work: tuple[Path, Victim]
) -> None:
    """Falling back to openat2 does not weaken the archive rules."""
    dest = work[0] / "dest"
    archive = base / "breakout.tar"
    archive.write_bytes(ARCHIVE)
    archive.chmod(0o644)
    result = _nobody(pythonpath, archive, dest, "unshare:EPERM")
    assert_one_line_error(result, rc=1, mentions=("escape-attempt",))


def test_not_supported_is_learned_once_per_process(pythonpath: Path, good_archive: Path,
                                                   work: tuple[Path, Victim]) -> None:
    """With ``unshare`` blocked, the first extraction tries ``userns`` (a worker that
    fails before it is confined) and moves on; the second goes straight to ``openat2``."""
    dest = work[0] / "dest"
    for sub in ("one", "two", "three"):
        (dest / sub).mkdir()
        os.chown(dest / sub, NOBODY, NOBODY)
    script = textwrap.dedent(f"""
        import json
        import chrootarchive
        from chrootarchive.runner import ladder

        spawned = []
        real = ladder.Worker

        def counting(root_fd, request, **kwargs):
            spawned.append(request.mechanism)
            return real(root_fd, request, **kwargs)

        ladder.Worker = counting
        used = []
        for sub in ("one", "two", "three"):
            r = chrootarchive.untar({str(good_archive)!r}, {str(dest)!r} + "/" + sub)
            used.append(r.confinement)
        print(json.dumps({{"used": used, "spawned": spawned,
                           "learned": sorted(ladder._learned)}}))
    """)
    result = run_as([SYSTEM_PYTHON, "-c", script], pythonpath,
                    prefix=[SYSTEM_PYTHON, str(pythonpath / "seccomp_run.py"), "--deny",
                            "unshare:EPERM", "--"])
    assert result.rc == 0, result.err
    report = json.loads(result.out)
    assert report["used"] == ["openat2"] * 3, report
    assert report["spawned"] == ["userns"], report
    assert "userns" in report["learned"], report


# -- as root ----------------------------------------------------------------------------


@pytest.fixture
def root_work(tmp_path: Path) -> Iterator[tuple[Path, Path, Victim]]:
    (tmp_path / "work" / "dest").mkdir(parents=True)
    victim = Victim(tmp_path / "work").create()
    archive = tmp_path / "good.tar"
    archive.write_bytes(GOOD)
    yield archive, tmp_path / "work" / "dest", victim
    victim.assert_untouched()


@pytest.mark.parametrize("errno_name", ["EPERM", "ENOSYS"])
@pytest.mark.parametrize("confine", ["pivot", "userns"])
def test_root_forced_mechanism_with_unshare_blocked_exit_3(
    confine: str, errno_name: str, root_work: tuple[Path, Path, Victim]
) -> None:
    """A forced rung that the kernel refuses is a ConfinementError, never an unconfined
    extraction."""
    archive, dest, _victim = root_work
    result = _root(archive, dest, f"unshare:{errno_name}", confine=confine)
    reason = os.strerror(getattr(__import__("errno"), errno_name))
    assert_one_line_error(result, rc=3, mentions=(reason,))
    assert list(dest.iterdir()) == []


def test_root_auto_with_unshare_blocked_never_unconfined(
    root_work: tuple[Path, Path, Victim]
) -> None:
    """Root's first rung, pivot, cannot make its mount namespace: the error is reported
    (exit 3), or a confined rung is used; never an unconfined run."""
    archive, dest, _victim = root_work
    result = _root(archive, dest, "unshare:EPERM")
    if result.rc == 0:
        assert json.loads(result.out)["confinement"] in ("chroot", "openat2"), result.out
    else:
        assert_one_line_error(result, rc=3, mentions=("Operation not permitted",))
        assert list(dest.iterdir()) == []


def test_root_chroot_needs_no_namespace(root_work: tuple[Path, Path, Victim]) -> None:
    archive, dest, _victim = root_work
    _assert_unpacked(_root(archive, dest, "unshare:EPERM", confine="chroot"), dest, "chroot")


def test_root_forced_openat2_blocked_exit_3(root_work: tuple[Path, Path, Victim]) -> None:
    archive, dest, _victim = root_work
    result = _root(archive, dest, "openat2:ENOSYS", confine="openat2")
    assert_one_line_error(result, rc=3, mentions=("openat2",))
    assert list(dest.iterdir()) == []


def test_root_openat2_blocked_pivot_unaffected(root_work: tuple[Path, Path, Victim]) -> None:
    archive, dest, _victim = root_work
    _assert_unpacked(_root(archive, dest, "openat2:ENOSYS"), dest, "pivot")
