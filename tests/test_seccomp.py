"""The worker's seccomp filter, call by call, in real locked-down processes.

Each system call the filter has a rule for is made, by number, by the ``probe`` job
inside a real worker (:func:`chrootarchive.engine.jobs.probe.syscall_attempts`), with
arguments that would fail harmlessly (EFAULT, EBADF, EINVAL...) if the call reached the
kernel. A worker lacks most capabilities, so the kernel would often answer EPERM on its
own; the same calls are therefore also made by a process that replays the worker's
confinement and lockdown while keeping every capability (only the filter can refuse
there), and by one that keeps every capability without the filter (the kernel's own
answer, which must differ: removing any rule from the filter fails a test here).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive import _linux
from chrootarchive.contract import JobRequest
from chrootarchive.options import UnpackOptions
from chrootarchive.runner.worker import Worker
from helpers.tarbuild import TarBuilder

ALLOWED_ANSWERS = {"clone:plain": "EINVAL", "kill:self": "ALLOWED",
                   "prlimit64:self": "ALLOWED"}
"""What must still work: clone() without a namespace flag (threads, the finisher's fork;
the kernel answers EINVAL to these arguments), signalling itself, its own limits."""


def expected(name: str) -> str:
    if name in ALLOWED_ANSWERS:
        return ALLOWED_ANSWERS[name]
    return "ENOSYS" if name == "clone3" else "EPERM"


def _probe_worker(dest: Path, mechanism: str) -> dict[str, str]:
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        worker = Worker(fd, JobRequest.make("probe", mechanism=mechanism))
        worker.wait_ready()
        result = worker.finish()
    finally:
        os.close(fd)
    assert result.confinement.startswith(mechanism), result
    return dict(result.details["syscalls"])


REPLAY = textwrap.dedent(
    """
    # The worker's confinement and lockdown, replayed with every capability kept: an
    # EPERM here can only come from the filter ("no-filter": the kernel's own answers).
    import json, os, sys
    from chrootarchive import _linux
    from chrootarchive.contract import JobRequest
    from chrootarchive.engine.jobs import probe
    from chrootarchive.jail import confine, lockdown

    jail, mode = sys.argv[1:3]

    class EveryCapability:
        dormant_capabilities = frozenset()

        def capabilities(self, request):
            return set(_linux.CAPABILITIES)

    if mode == "no-filter":
        _linux.install_seccomp_denylist = lambda: None
    root_fd = os.open(jail, os.O_RDONLY | os.O_DIRECTORY)
    used = confine.enter("pivot", root_fd, None)
    os.close(root_fd)
    lockdown.lock_down(EveryCapability(), JobRequest.make("probe", mechanism="pivot"))
    print(json.dumps({"used": used, "syscalls": probe.syscall_attempts()}))
    """
)


def _replay(dest: Path, script: Path, mode: str) -> dict[str, str]:
    proc = subprocess.run([sys.executable, str(script), str(dest), mode],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["used"].startswith("pivot"), out
    return dict(out["syscalls"])


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The answers of a real worker, of the replay with every capability, and of the
    replay without the filter."""
    base = tmp_path_factory.mktemp("seccomp")
    dest = base / "dest"
    dest.mkdir()
    script = base / "replay.py"
    script.write_text(REPLAY)
    return {
        "worker": _probe_worker(dest, "pivot"),
        "capable": _replay(dest, script, "filter"),
        "unfiltered": _replay(dest, script, "no-filter"),
    }


def _names() -> list[str]:
    names = [n for n in _linux.SYSCALL_NUMBERS if n != "getpid" and n != "clone"]
    names += ["clone:NEWNS", "clone:NEWCGROUP", "clone:NEWUTS", "clone:NEWIPC",
              "clone:NEWUSER", "clone:NEWPID", "clone:NEWNET", "clone:plain", "kill:self",
              "prlimit64:self"]
    if _linux.X32_SYSCALL_BIT:
        names.append("x32:getpid")
    return sorted(names)


NAMES = _names()


def test_every_rule_is_probed(answers: dict[str, dict[str, str]]) -> None:
    """A rule added to the filter without a probe (or a probe without a rule) fails."""
    assert sorted(answers["worker"]) == NAMES
    assert set(_linux.SYSCALL_NUMBERS) - {"getpid"} <= {n.split(":")[0] for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_filter_answer_in_a_real_worker(name: str, answers: dict[str, dict[str, str]]) -> None:
    """The unpack worker's powers (pivot), the call made by number: the filter's answer."""
    assert answers["worker"][name] == expected(name), name


@pytest.mark.parametrize("name", NAMES)
def test_filter_answer_with_every_capability(name: str,
                                             answers: dict[str, dict[str, str]]) -> None:
    """With every capability kept, the answer is still the filter's: the filter alone
    refuses the call."""
    assert answers["capable"][name] == expected(name), name


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ALLOWED_ANSWERS])
def test_the_kernel_alone_answers_otherwise(name: str,
                                            answers: dict[str, dict[str, str]]) -> None:
    """Without the filter the same call gets another answer: each rule is load-bearing
    (removing it from the filter fails ``test_filter_answer_with_every_capability``)."""
    got = answers["unfiltered"][name]
    if got == "EPERM" and name != "x32:getpid":
        pytest.skip(f"this kernel itself refuses {name} with EPERM (a sysctl or LSM)")
    assert got != expected(name), (name, got)


@pytest.mark.parametrize("mechanism", ["chroot", "userns"])
def test_same_answers_under_other_mechanisms(mechanism: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    got = _probe_worker(dest, mechanism)
    assert {n: got[n] for n in NAMES} == {n: expected(n) for n in NAMES}


def test_the_program_fits_and_kills_foreign_architectures() -> None:
    prog = _linux.seccomp_program(os.getpid())
    assert len(prog) < 256
    assert prog[0] == (0x20, 0, 0, 4) and prog[2] == (0x06, 0, 0, 0x80000000)


# -- the helper and threads still work under the filter --------------------------------


def test_finisher_and_writer_thread_work_under_the_filter(tmp_path: Path) -> None:
    """A large plain tar of small files: the worker forks its helper (clone) and starts
    its writer thread (clone3 refused with ENOSYS, glibc falls back to clone)."""
    builder = TarBuilder().dir("d")
    files = {f"d/f{i:04}": os.urandom(64 + i % 300) for i in range(600)}
    files["big"] = os.urandom(5 << 20)
    for name, data in files.items():
        builder.file(name, data)
    archive = tmp_path / "a.tar"
    archive.write_bytes(builder.build())
    dest = tmp_path / "dest"
    result = chrootarchive.untar(str(archive), dest, UnpackOptions(confine="pivot"))
    assert result.entries >= len(files)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name


# -- decompression runs in the parent ----------------------------------------------------


DECOMPRESSORS = ("zlib", "libz.so", "zstd", "isal", "lzma", "bz2")


def _worker_pids() -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        if ppid == me and b"-I" in argv and b"-S" in argv:
            found.append(int(entry))
    return found


class WatchingSource(io.RawIOBase):
    """A gzip stream read in small pieces; at each read, the mappings of this process's
    workers are recorded (a worker that decompressed would have zlib mapped)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.maps: dict[int, str] = {}

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        for pid in _worker_pids():
            try:
                with open(f"/proc/{pid}/maps") as f:
                    self.maps[pid] = f.read()
            except OSError:
                pass
        chunk = self._data.read(min(len(buffer), 8192))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_decompression_runs_in_the_parent(tmp_path: Path) -> None:
    builder = TarBuilder()
    payload = os.urandom(256 << 10)
    builder.file("data", payload)
    compressed = zlib.compress(builder.build(), wbits=31)  # gzip
    source = WatchingSource(compressed)
    dest = tmp_path / "dest"
    result = chrootarchive.untar(source, dest, UnpackOptions(confine="pivot"))
    assert result.entries == 1 and (dest / "data").read_bytes() == payload
    assert source.maps, "no worker was seen while the source was read"
    for pid, maps in source.maps.items():
        for name in DECOMPRESSORS:
            assert name not in maps, f"worker {pid} has {name} mapped"


# -- openat2: a procfs or sysfs inside the root is never reached --------------------------


KERNEL_FS_UNTAR = textwrap.dedent(
    """
    import json, sys
    import chrootarchive
    from chrootarchive.options import UnpackOptions
    dest, archive = sys.argv[1:3]
    try:
        chrootarchive.untar(archive, dest, UnpackOptions(confine="openat2"))
        print(json.dumps({"error": None}))
    except chrootarchive.ChrootArchiveError as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}))
    """
)

KERNEL_FS_CASES = {
    # A new file in procfs's root, a hard link to a procfs file (read through it),
    # a path through a symlink to /proc/self, a directory entry for a sysfs directory
    # (its mode would be set: 0755 here, what it already has), a file below sysfs.
    "create_in_proc": lambda b: b.file("proc/pwned", b"x"),
    "hardlink_to_proc": lambda b: b.hardlink("stolen", "proc/version"),
    "through_symlink": lambda b: b.symlink("p", "/proc/self").file("p/pwned", b"x"),
    "dir_in_sys": lambda b: b.dir("sys/fs", mode=0o755),
    "file_in_sys": lambda b: b.file("sys/kernel/pwned", b"x"),
}


@pytest.mark.parametrize("case", sorted(KERNEL_FS_CASES))
def test_openat2_never_reaches_procfs_or_sysfs(case: str, tmp_path: Path) -> None:
    """A real procfs and sysfs mounted inside the destination (private mount namespace
    of a child process): every entry that would reach them fails as a breakout."""
    dest = tmp_path / "dest"
    for sub in ("proc", "sys"):
        (dest / sub).mkdir(parents=True)
    archive = tmp_path / "a.tar"
    archive.write_bytes(KERNEL_FS_CASES[case](TarBuilder()).build())
    script = tmp_path / "untar.py"
    script.write_text(KERNEL_FS_UNTAR)
    before = os.stat("/sys/fs")
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t proc proc "$1/proc" && mount -t sysfs sysfs "$1/sys" && shift'
         ' && exec "$@"', "sh", str(dest), sys.executable, str(script), str(dest),
         str(archive)],
        capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["error"] == "BreakoutError", out
    assert "mounted inside the destination" in out["message"], out
    assert sorted(os.listdir(dest)) == ["proc", "sys"]  # the mounts were private
    assert not os.path.lexists(dest / "stolen")
    after = os.stat("/sys/fs")
    assert (after.st_mode, after.st_ctime_ns) == (before.st_mode, before.st_ctime_ns)
