"""Shared fixtures.

CI runs this suite as root on Linux: the kernel mechanisms (mount namespaces,
pivot_root, user namespaces) run for real. A missing kernel feature makes a test
fail there (``CI=true``), never skip; elsewhere it skips with the package's reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chrootarchive.jail.confine import IN_PROCESS
from helpers import mechanisms
from helpers.cli import CLIResult
from helpers.cli import run_cli as _run_cli
from helpers.leaks import LeakCheck
from helpers.victim import Victim


@pytest.fixture
def no_leaks(tmp_path: Path) -> Iterator[None]:
    """After the test: the caller's mount table is unchanged (``/`` and everything
    under pytest's temporary directory: other processes on a shared machine may mount
    elsewhere), no ``.pivot_root*`` directory is left under tmp_path, and no child
    process (zombies included) remains."""
    check = LeakCheck(tmp_path)
    yield
    check.assert_clean()


@pytest.fixture(params=mechanisms.MECHANISMS)
def mechanism(request: pytest.FixtureRequest) -> str:
    """Each confinement mechanism of the package in turn (libpathrs runs every test per
    backend): a name for ``UnpackOptions(confine=...)`` or ``PackOptions(confine=...)``.

    One this machine cannot run is skipped with the package's reason; on CI
    (``CI=true``: root, Linux 6.x, where all of them work) it fails instead.
    """
    return mechanisms.require(request.param)


@pytest.fixture(params=[m for m in mechanisms.MECHANISMS if m not in IN_PROCESS])
def worker_mechanism(request: pytest.FixtureRequest) -> str:
    """Each mechanism that runs a worker process (not the in-process ``openat2``): for
    what only a worker has, such as its memory backstop."""
    return mechanisms.require(request.param)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A work directory holding an empty ``dest``."""
    w = tmp_path / "work"
    (w / "dest").mkdir(parents=True)
    return w


@pytest.fixture
def dest(work: Path) -> Path:
    return work / "dest"


@pytest.fixture
def victim(work: Path, dest: Path) -> Victim:
    """A victim tree beside the destination, already snapshotted."""
    return Victim(work).create()


@pytest.fixture
def write_archive(tmp_path: Path) -> Callable[..., Path]:
    """``write_archive(data, suffix=".tar")``: archive bytes to a file outside ``work``."""
    counter = [0]

    def write(data: bytes, suffix: str = ".tar") -> Path:
        counter[0] += 1
        p = tmp_path / "archives" / f"archive{counter[0]}{suffix}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        return p

    return write


@pytest.fixture
def run_cli() -> Callable[..., CLIResult]:
    """``run_cli(*args, input=None, timeout=60, env=None, prefix=None, umask=None)``:
    run ``python -m chrootarchive ARGS``; returns ``(rc, stdout, stderr)``."""
    return _run_cli


#: The slow tier, in one place: modules and tests that take seconds each (races run
#: hundreds of rounds, whole root filesystems, every attack under every mechanism), and
#: the variants of a per-mechanism test beyond the first mechanism (``pivot``). The fast
#: tier, ``pytest -m "not slow"``, runs the rest in under two minutes; CI runs both.
SLOW_MODULES = frozenset({
    "test_races.py", "test_rootfs.py", "test_unprivileged_rootfs.py", "test_fuzz.py",
    "test_concurrency.py",
})
SLOW_TESTS = frozenset({
    "test_copy.py::test_race_swapping_a_directory_for_a_symlink",
    "test_copy.py::test_copy_out_of_the_root_never_copies_outside_bytes",
    "test_copy.py::test_symlinks_out_of_the_root_are_never_followed",
    "test_copy.py::test_race_while_copying_out",
    "test_mechanisms.py::test_attack_as_root",
    "test_mechanisms.py::test_attack_as_nobody",
    "test_finisher.py::test_helper_is_confined_and_the_tree_is_exact",
    "test_finisher_attacks.py::test_a_racer_swapping_directories_never_redirects_the_helper",
    "test_image.py::test_hostile_image_cli",
    "test_attacks.py::test_code_execution_payloads_never_run",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.name
        name = f"{module}::{item.originalname}" if isinstance(item, pytest.Function) else ""
        params = getattr(getattr(item, "callspec", None), "params", {})
        other_mechanism = any(
            params.get(key, mechanisms.MECHANISMS[0]) != mechanisms.MECHANISMS[0]
            for key in ("mechanism", "worker_mechanism"))
        if module in SLOW_MODULES or name in SLOW_TESTS or other_mechanism:
            item.add_marker(pytest.mark.slow)
