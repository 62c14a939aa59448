"""The locked-down worker: what a jailed worker can still do (as little as possible).

Once jailed, the worker keeps only the capabilities that writing files needs
(CAP_SYS_ADMIN at most dormant: permitted, not effective), sets no_new_privs, installs
a seccomp filter, turns core dumps off and forbids imports. The ``probe`` job reports
from inside the jail what it can still do; ``/proc/PID/status`` of a worker that waits
for its input shows its capability sets, no_new_privs and seccomp mode.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chrootarchive.contract import JobRequest
from chrootarchive.options import UnpackOptions, unpack_spec
from chrootarchive.runner.worker import Worker
from helpers.hardening import NOBODY, Unprivileged, status
from helpers.leaks import LeakCheck

MECHANISMS = ["pivot", "chroot", "userns"]
DENIED = ["mount", "umount", "pivot_root", "chroot", "unshare", "exec", "socket"]

# Linux capability numbers (linux/capability.h), spelled out here on purpose.
CAP = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
    "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
    "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18,
    "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28,
    "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37,
    "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
#: What writing files needs; nothing else may be effective. Not CAP_DAC_READ_SEARCH:
#: CAP_DAC_OVERRIDE covers reading and searching, and DAC_READ_SEARCH also grants
#: open_by_handle_at(), which reaches any inode of the file system from any jail.
WRITE_FILES = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD", "SETFCAP"}
#: May stay permitted (never effective): raised by one thread around trusted.* xattrs.
DORMANT = {"SYS_ADMIN"}


def caps(mask_hex: str) -> set[str]:
    mask = int(mask_hex, 16)
    names = {v: k for k, v in CAP.items()}
    return {names.get(bit, f"cap{bit}") for bit in range(64) if mask >> bit & 1}


def _request(job: str, mechanism: str, **extra: Any) -> JobRequest:
    return JobRequest.make(job, mechanism=mechanism, **extra)


def probe(dest: Path, mechanism: str) -> dict[str, str]:
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        worker = Worker(fd, _request("probe", mechanism))
        worker.wait_ready()
        result = worker.finish()
    finally:
        os.close(fd)
    assert result.confinement.startswith(mechanism), result
    return dict(result.details["probe"])


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "hello").write_bytes(b"hi")
    os.symlink("/etc/passwd", dest / "abs-link")
    return dest


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_probe_everything_is_denied(mechanism: str, jail: Path) -> None:
    check = LeakCheck(jail.parent, fds=True)
    result = probe(jail, mechanism)
    for action in DENIED:
        assert result[action] == "EPERM", f"{action} inside the jail: {result[action]}"
    assert result["import"].startswith("ImportError"), result["import"]
    assert result["proc"] == "ENOENT", "/proc is visible inside the jail"
    for key, value in result.items():
        assert value != "ALLOWED", f"{key} was allowed inside the jail"
    # The jail's root holds what the destination holds (and what the probe made).
    assert result["sees_root"] == str(sorted(["abs-link", "hello", "probe-dir", "sub"]))
    assert sorted(os.listdir(jail)) == ["abs-link", "hello", "sub"]
    check.assert_clean()


def test_probe_raising_the_dormant_capability_still_cannot_mount(jail: Path) -> None:
    result = probe(jail, "pivot")
    dormant = [key for key in result if "dormant" in key]
    for key in dormant:
        assert result[key] == "EPERM", (key, result[key])


# -- the worker seen from outside ------------------------------------------------------


@pytest.fixture
def waiting_worker(request: pytest.FixtureRequest, jail: Path) -> Iterator[tuple[int, str]]:
    """An ``unpack`` worker, confined and locked down, waiting for its input."""
    mechanism, whiteout_format = request.param
    fd = os.open(jail, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    options = unpack_spec(UnpackOptions(whiteout_format=whiteout_format))
    worker = Worker(fd, _request("unpack", mechanism, unpack=options, layer=True))
    try:
        worker.wait_ready()
        yield worker.proc.pid, mechanism
        os.write(worker.stdin_w, bytes(1024))
        result = worker.finish()
        assert result.entries == 0
    finally:
        worker.close()
        os.close(fd)


PARAMS = [(m, "aufs") for m in MECHANISMS] + [("pivot", "overlay")]


@pytest.mark.parametrize("waiting_worker", PARAMS, indirect=True,
                         ids=[f"{m}-{w}" for m, w in PARAMS])
def test_worker_capabilities(waiting_worker: tuple[int, str]) -> None:
    pid, _ = waiting_worker
    st = status(pid)
    effective, permitted, bounding = caps(st["CapEff"]), caps(st["CapPrm"]), caps(st["CapBnd"])
    assert effective <= WRITE_FILES, f"effective beyond writing files: {effective - WRITE_FILES}"
    assert permitted <= WRITE_FILES | DORMANT, permitted - WRITE_FILES - DORMANT
    assert bounding <= WRITE_FILES | DORMANT, bounding - WRITE_FILES - DORMANT
    for never in ("DAC_READ_SEARCH", "SYS_CHROOT", "SYS_PTRACE", "SYS_MODULE", "NET_ADMIN",
                  "NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "SETPCAP", "SYS_RAWIO",
                  "KILL", "SYS_BOOT", "BPF", "PERFMON", "MAC_ADMIN", "LINUX_IMMUTABLE"):
        assert never not in permitted | bounding, never
    assert "SYS_ADMIN" not in effective
    assert caps(st["CapInh"]) == set() and caps(st["CapAmb"]) == set()


@pytest.mark.parametrize("waiting_worker", PARAMS, indirect=True,
                         ids=[f"{m}-{w}" for m, w in PARAMS])
def test_worker_no_new_privs_seccomp_no_core(waiting_worker: tuple[int, str]) -> None:
    pid, _ = waiting_worker
    st = status(pid)
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2", "no seccomp filter"
    with open(f"/proc/{pid}/limits") as f:
        core = [line.split() for line in f if line.startswith("Max core file size")]
    assert core and core[0][4:6] == ["0", "0"], core


@pytest.mark.parametrize("waiting_worker", [("pivot", "aufs")], indirect=True)
def test_worker_environment_and_descriptors(waiting_worker: tuple[int, str],
                                            jail: Path) -> None:
    """No environment beyond the locale (no PYTHONPATH, LD_PRELOAD...), an isolated
    interpreter, and no descriptor to anything on the host but its pipes."""
    pid, _ = waiting_worker
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = [e for e in f.read().split(b"\0") if e]
    assert env == [b"LC_ALL=C.UTF-8"], env
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert b"-I" in argv and b"-S" in argv, argv
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert target.startswith(("pipe:", "/dev/null")) or int(fd) == 2, (fd, target)


SHOCKER = textwrap.dedent(
    """
    # Replays what the worker does up to its lockdown, then tries the "shocker" escape:
    # open_by_handle_at() of a directory outside the jail, whose handle was taken
    # before confinement (Docker 2014: CAP_DAC_READ_SEARCH breaks any chroot).
    import ctypes, json, os, sys
    from chrootarchive.contract import JobRequest
    from chrootarchive.engine.jobs.unpack import JOB
    from chrootarchive.jail import confine, lockdown

    jail, outside, mechanism, mode = sys.argv[1:5]
    libc = ctypes.CDLL(None, use_errno=True)

    class Job:  # the unpack job's powers, CAP_DAC_READ_SEARCH added in some modes
        dormant_capabilities = JOB.dormant_capabilities

        def capabilities(self, request):
            extra = {"CAP_DAC_READ_SEARCH"} if mode in ("capability", "neither") else set()
            return set(JOB.capabilities(request)) | extra

    if mode in ("no-filter", "neither"):
        from chrootarchive import _linux
        _linux.install_seccomp_denylist = lambda: None

    class Handle(ctypes.Structure):
        _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                    ("f_handle", ctypes.c_ubyte * 128)]

    handle = Handle(128, 0)
    mount_id = ctypes.c_int()
    rc = libc.name_to_handle_at(-100, outside.encode(), ctypes.byref(handle),
                                ctypes.byref(mount_id), 0)
    assert rc == 0, os.strerror(ctypes.get_errno())
    root_fd = os.open(jail, os.O_RDONLY | os.O_DIRECTORY)
    used = confine.enter(mechanism, root_fd, None)
    os.close(root_fd)
    lockdown.lock_down(Job(), JobRequest.make("unpack", mechanism=mechanism))
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    fd = libc.open_by_handle_at(here, ctypes.byref(handle), os.O_RDONLY | os.O_DIRECTORY)
    out = {"used": used}
    if fd < 0:
        out["open_by_handle_at"] = os.strerror(ctypes.get_errno())
    else:
        out["open_by_handle_at"] = "ALLOWED"
        out["outside"] = sorted(os.listdir(fd))
    print(json.dumps(out))
    """
)


def _shocker(jail: Path, tmp_path: Path, mechanism: str, mode: str) -> dict[str, Any]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "host-secret").write_bytes(b"secret")
    script = tmp_path / "shocker.py"
    script.write_text(SHOCKER)
    proc = subprocess.run(
        [sys.executable, str(script), str(jail), str(outside), mechanism, mode],
        capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.mark.parametrize("mechanism", ["pivot", "chroot"])
@pytest.mark.parametrize("mode", ["both", "capability", "no-filter"])
def test_no_escape_by_file_handle(mechanism: str, mode: str, jail: Path,
                                  tmp_path: Path) -> None:
    """A locked-down worker cannot open a host directory by its file handle; each
    defence holds alone: the filter with CAP_DAC_READ_SEARCH kept ("capability"), and
    the missing capability without the filter ("no-filter")."""
    out = _shocker(jail, tmp_path, mechanism, mode)
    assert out["open_by_handle_at"] == os.strerror(errno.EPERM), (
        f"the jailed, locked-down worker opened a host directory by handle: {out}")


def test_file_handle_escape_is_real_without_both_defences(jail: Path,
                                                          tmp_path: Path) -> None:
    """The control: with the capability and without the filter, the same replay does
    open the host directory (so the tests above test something)."""
    out = _shocker(jail, tmp_path, "pivot", "neither")
    assert out["open_by_handle_at"] == "ALLOWED", out
    assert out["outside"] == ["host-secret"]


# -- unprivileged ----------------------------------------------------------------------


UNPRIV_PROBE = textwrap.dedent(
    """
    import json, os, sys
    from chrootarchive.contract import JobRequest
    from chrootarchive.runner.worker import Worker
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    w = Worker(fd, JobRequest.make("probe", mechanism="userns"))
    w.wait_ready()
    r = w.finish()
    print(json.dumps({"uid": os.getuid(), "confinement": r.confinement, **r.details}))
    """
)


@pytest.fixture(scope="module")
def unpriv() -> Iterator[Unprivileged]:
    area = Unprivileged()
    yield area
    area.cleanup()


def test_unprivileged_userns_probe(unpriv: Unprivileged) -> None:
    dest = unpriv.mkdir("jail")
    (dest / "mine").write_bytes(b"x")
    os.chown(dest / "mine", NOBODY, NOBODY)
    result = unpriv.script(UNPRIV_PROBE, str(dest))
    assert result.rc == 0, result.err
    out = json.loads(result.out)
    assert out["uid"] == NOBODY
    assert out["confinement"].startswith("userns")
    found = out["probe"]
    for action in DENIED:
        assert found[action] == "EPERM", f"{action}: {found[action]}"
    assert found["import"].startswith("ImportError")
    assert found["proc"] == "ENOENT"
    assert found["sees_root"] == str(["mine", "probe-dir"])
    assert sorted(os.listdir(dest)) == ["mine"]
