"""Running chrootarchive as an unprivileged user (uid 65534) from a root test run.

The test interpreter lives under /root, which uid 65534 cannot reach, so unprivileged
runs use Debian's ``/usr/bin/python3`` with ``PYTHONPATH`` set to a world-readable copy
of the package (and of the small helper scripts that must run as that user:
``mech_driver.py``, ``seccomp_run.py``), through
``setpriv --reuid 65534 --regid 65534 --clear-groups --``.

Everything such a run touches lives below a directory made with :func:`world_dir`
(``/tmp/chrootarchive-...``, mode 0755): pytest's own temporary directories are 0700.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import chrootarchive
from helpers.cli import CLIResult

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
HELPERS = Path(__file__).resolve().parent
#: Helper scripts copied beside the package (they import nothing but it and the stdlib).
SCRIPTS = ("mech_driver.py", "seccomp_run.py")


def setpriv(uid: int = NOBODY, gid: int | None = None) -> list[str]:
    gid = uid if gid is None else gid
    return ["setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups", "--"]


@contextlib.contextmanager
def world_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory below /tmp that every user can traverse (0755); removed after."""
    path = Path(tempfile.mkdtemp(prefix=f"chrootarchive-{prefix}-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_package_copy(base: Path) -> Path:
    """Copy the package under test (and the helper scripts) below ``base``, world-readable.

    Returns the directory to put on ``PYTHONPATH``.
    """
    pkg = Path(chrootarchive.__file__).resolve().parent
    target = base / "pythonpath"
    shutil.copytree(pkg, target / "chrootarchive",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for script in SCRIPTS:
        shutil.copy(HELPERS / script, target / script)
    for dirpath, dirnames, filenames in os.walk(target):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    for parent in [target, *target.parents]:
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o755)
    return target


def unpriv_env(pythonpath: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": str(pythonpath),
        "LC_ALL": "C.UTF-8",
        "HOME": "/nonexistent",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra or {})
    return env


def run_as(
    cmd: Sequence[str | os.PathLike[str]],
    pythonpath: Path,
    *,
    uid: int = NOBODY,
    gid: int | None = None,
    prefix: Sequence[str] = (),
    input: bytes | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> CLIResult:
    """Run ``cmd`` as ``uid`` (after ``prefix``, e.g. the seccomp wrapper)."""
    full = [*setpriv(uid, gid), *prefix, *(os.fspath(c) for c in cmd)]
    proc = subprocess.run(full, input=input if input is not None else b"",
                          capture_output=True, timeout=timeout,
                          env=unpriv_env(pythonpath, env), cwd=cwd or "/")
    return CLIResult((proc.returncode, proc.stdout.decode("utf-8", "replace"),
                      proc.stderr.decode("utf-8", "replace")))


def cli_as(
    pythonpath: Path,
    *args: str | os.PathLike[str],
    uid: int = NOBODY,
    gid: int | None = None,
    seccomp: Sequence[str] = (),
    input: bytes | None = None,
    timeout: float = 120,
) -> CLIResult:
    """``/usr/bin/python3 -m chrootarchive ARGS`` as ``uid``.

    ``seccomp``: ``--deny`` rules for ``seccomp_run.py`` (e.g. ``["unshare:EPERM"]``);
    the filter is installed in the child, which then execs the command line.
    """
    prefix: list[str] = []
    if seccomp:
        prefix = [SYSTEM_PYTHON, str(pythonpath / "seccomp_run.py")]
        for rule in seccomp:
            prefix += ["--deny", rule]
        prefix.append("--")
    return run_as([SYSTEM_PYTHON, "-m", "chrootarchive", *args], pythonpath, uid=uid,
                  gid=gid, prefix=prefix, input=input, timeout=timeout)


def chown_tree(path: Path, uid: int, gid: int | None = None) -> None:
    """``chown -hR``: every object below ``path`` (symlinks themselves) and ``path``."""
    gid = uid if gid is None else gid
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
    os.chown(path, uid, gid, follow_symlinks=False)
