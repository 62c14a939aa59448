"""The worker's seccomp filter, call by call, in real locked-down processes; and the
other item-7 defences: decompression in the parent, signals, the kernel's file systems.

Each system call the filter has a rule for is made, by number, by the ``probe`` job
inside a real worker (:func:`chrootarchive.engine.jobs.probe.syscall_attempts`), with
arguments that would fail harmlessly (EFAULT, EBADF, EINVAL...) if the call reached the
kernel. A worker lacks most capabilities, so the kernel would often answer EPERM on its
own; the same calls are therefore also made by a process that replays the worker's
confinement and lockdown while keeping every capability (only the filter can refuse
there), and by one that keeps every capability without the filter (the kernel's own
answer, which must differ: removing any rule from the filter fails a test here).

Then: decompression is shown to run in the parent (what the worker reads, what it
maps); the worker signals only itself and its helper still ends; and a procfs, sysfs
or cgroup2 mounted inside the destination (in a child's private mount namespace) is
detached by ``pivot`` and ``chroot`` and never reached under ``openat2``, unpacking or
packing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive import _linux
from chrootarchive.contract import JobRequest
from chrootarchive.options import UnpackOptions
from chrootarchive.runner.worker import Worker
from helpers.tarbuild import TarBuilder, compress

ALLOWED_ANSWERS = {"clone:plain": "EINVAL", "kill:self": "ALLOWED",
                   "prlimit64:self": "ALLOWED", "ioctl:plain": "EBADF"}
"""What must still work: clone() without a namespace flag (threads, the finisher's fork;
the kernel answers EINVAL to these arguments), signalling itself, its own limits, and
ioctl() requests other than the refused ones (EBADF: no such descriptor)."""


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

    # Every capability this process holds (a container may lack some, e.g.
    # CAP_SYS_RESOURCE outside its bounding set: capset() would refuse those).
    with open("/proc/self/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapPrm:"))
    HELD = {name for name, bit in _linux.CAPABILITIES.items() if mask >> bit & 1}

    class EveryCapability:
        dormant_capabilities = frozenset()

        def capabilities(self, request):
            return HELD

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
    names = [n for n in _linux.SYSCALL_NUMBERS if n not in ("getpid", "clone", "ioctl")]
    names += ["clone:NEWNS", "clone:NEWCGROUP", "clone:NEWUTS", "clone:NEWIPC",
              "clone:NEWUSER", "clone:NEWPID", "clone:NEWNET", "clone:plain", "kill:self",
              "prlimit64:self", "ioctl:TIOCSTI", "ioctl:TIOCLINUX", "ioctl:plain"]
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

#: What each compression's decoder maps into a process that uses it (the parent's:
#: ISA-L or zlib for gzip, zstandard, liblzma, libbz2). zlib itself is not listed: the
#: worker's tar reader uses ``zlib.adler32`` to sum headers.
DECODERS = {"gzip": ("isal",), "zstd": ("zstandard", "libzstd"), "xz": ("_lzma", "liblzma"),
            "bzip2": ("_bz2", "libbz2")}
ZEROS = 24 << 20  # compresses to a few kilobytes at most


def _worker_pids() -> list[int]:
    """This process's workers: children running the isolated interpreter (-I -S)."""
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


class WorkerWatch:
    """Samples, while an unpack runs, each worker's mappings and the bytes it has read
    (``rchar`` of ``/proc/PID/io``: every read(2)/readv(2), its input pipe included)."""

    def __init__(self) -> None:
        self.maps: dict[int, str] = {}
        self.read: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            for pid in _worker_pids():
                try:
                    with open(f"/proc/{pid}/maps") as f:
                        maps = f.read()
                    with open(f"/proc/{pid}/io") as f:
                        rchar = next(int(line.split()[1]) for line in f
                                     if line.startswith("rchar:"))
                except (OSError, StopIteration):
                    continue
                self.maps[pid] = self.maps.get(pid, "") + maps
                self.read[pid] = max(self.read.get(pid, 0), rchar)


@pytest.mark.parametrize("method", sorted(DECODERS))
def test_decompression_runs_in_the_parent(method: str, tmp_path: Path) -> None:
    """A .tar.gz (.zst, .xz, .bz2) of 24 MiB of zeros is a few kilobytes: the worker
    reads at least half the plain tar bytes (a worker that decompressed would read the
    few kilobytes), and no decoder of that compression is ever mapped in it. (Files of
    96 KiB: the data of a large file comes from the pipe by splice, which reads
    nothing.)"""
    builder = TarBuilder()
    for i in range(ZEROS // (96 << 10)):
        builder.file(f"zeros{i:03d}", bytes(96 << 10))
    plain = builder.build()
    compressed = compress(plain, method)
    assert len(compressed) < len(plain) // 100
    archive = tmp_path / "a.tar.x"
    archive.write_bytes(compressed)
    dest = tmp_path / "dest"
    with WorkerWatch() as watch:
        result = chrootarchive.untar(str(archive), dest, UnpackOptions(confine="pivot"))
    assert result.entries == ZEROS // (96 << 10)
    assert (dest / "zeros007").stat().st_size == 96 << 10
    assert watch.read, "no worker was seen while the archive was unpacked"
    assert max(watch.read.values()) >= len(plain) // 2, (watch.read, len(compressed))
    for pid, maps in watch.maps.items():
        for name in DECODERS[method]:
            assert name not in maps, f"worker {pid} has {name} mapped"


# -- openat2: the kernel's file systems inside the root are never reached ----------------

KERNEL_FS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import chrootarchive
    from chrootarchive.options import UnpackOptions
    op, dest, archive, confine = sys.argv[1:5]
    options = UnpackOptions(confine=confine)
    try:
        if op == "layer":
            chrootarchive.apply_layer(archive, dest, options)
        else:
            chrootarchive.untar(archive, dest, options)
        print(json.dumps({"error": None}))
    except chrootarchive.ChrootArchiveError as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}))
    """
)

#: Mounted in the child's private mount namespace, below the destination.
KERNEL_MOUNTS = {"proc": "proc", "sys": "sysfs", "d/p": "proc", "cg": "cgroup2"}


def _with_kernel_mounts(dest: Path, argv: list[str], *,
                        after: str = "") -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` in a private mount namespace where :data:`KERNEL_MOUNTS` are mounted
    below ``dest``; ``after`` is a shell command run there once it ended."""
    for where in KERNEL_MOUNTS:
        (dest / where).mkdir(parents=True)
    mounts = " && ".join(f'mount -t {fs} none "$D/{where}"'
                         for where, fs in KERNEL_MOUNTS.items())
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'D="$1"; shift; {mounts} && "$@"; status=$?; {after or "true"}; exit $status',
         "sh", str(dest), *argv],
        capture_output=True, timeout=120)


def _layer(*names: str) -> Callable[[TarBuilder], TarBuilder]:
    def build(b: TarBuilder) -> TarBuilder:
        for name in names:
            b.file(name, b"")
        return b
    return build


KERNEL_FS_CASES: dict[str, tuple[str, Callable[[TarBuilder], TarBuilder]]] = {
    # A new file in procfs's root; a hard link to a procfs file (read through it); a
    # path through a symlink to /proc/self; a directory entry for a sysfs directory
    # (its mode would be set: 0755, what it already has); a file below sysfs; a new
    # cgroup (mkdir in cgroup2 makes one, host-wide).
    "create_in_proc": ("untar", lambda b: b.file("proc/pwned", b"x")),
    "hardlink_to_proc": ("untar", lambda b: b.hardlink("stolen", "proc/version")),
    "through_symlink": ("untar", lambda b: b.symlink("p", "/proc/self").file("p/pwned", b"x")),
    "dir_in_sys": ("untar", lambda b: b.dir("sys/fs", mode=0o755)),
    "file_in_sys": ("untar", lambda b: b.file("sys/kernel/pwned", b"x")),
    "mkdir_in_cgroup": ("untar", lambda b: b.dir("cg/chrootarchive-pwned")),
    # Replacing the mount point itself; replacing a directory that holds one (the
    # removal would walk it); a whiteout of it; an opaque directory holding one.
    "replace_mount_point": ("untar", lambda b: b.file("proc", b"x")),
    "replace_dir_holding_proc": ("untar", lambda b: b.file("d", b"x")),
    "whiteout_mount_point": ("layer", _layer(".wh.sys")),
    "whiteout_below_proc": ("layer", _layer("proc/.wh.self")),
    "opaque_dir_holding_proc": ("layer", _layer("d/.wh..wh..opq")),
}


@pytest.mark.parametrize("case", sorted(KERNEL_FS_CASES))
def test_openat2_never_reaches_kernel_filesystems(case: str, tmp_path: Path) -> None:
    """A real procfs, sysfs and cgroup2 mounted inside the destination (private mount
    namespace of a child process): every entry that would reach one fails as a
    breakout, naming it; nothing in them or outside the destination changed."""
    op, build = KERNEL_FS_CASES[case]
    dest = tmp_path / "dest"
    archive = tmp_path / "a.tar"
    archive.write_bytes(build(TarBuilder()).build())
    script = tmp_path / "unpack.py"
    script.write_text(KERNEL_FS_SCRIPT)
    before = os.stat("/sys/fs")
    proc = _with_kernel_mounts(
        dest, [sys.executable, str(script), op, str(dest), str(archive), "openat2"],
        # (a cgroup made by mistake is removed again, and makes the test fail)
        after='test ! -e "$D/cg/chrootarchive-pwned" || { rmdir "$D/cg/chrootarchive-pwned";'
              ' echo made a cgroup >&2; exit 9; }')  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["error"] == "BreakoutError", out
    assert "mounted inside the destination (refused)" in out["message"], out
    # The mounts were private; what the destination held is there, nothing else (the
    # symlink of "through_symlink" is in the destination).
    assert sorted(os.listdir(dest)) == sorted({"proc", "sys", "d", "cg"}
                                              | ({"p"} if case == "through_symlink" else set()))
    assert os.listdir(dest / "d") == ["p"]
    for where in KERNEL_MOUNTS:
        assert os.listdir(dest / where) == [], where
    after = os.stat("/sys/fs")
    assert (after.st_mode, after.st_ctime_ns) == (before.st_mode, before.st_ctime_ns)


@pytest.mark.parametrize("mechanism", ["pivot", "chroot"])
def test_jails_detach_kernel_filesystems(mechanism: str, tmp_path: Path) -> None:
    """``pivot`` and ``chroot`` detach a procfs, sysfs or cgroup2 mounted inside the
    destination in their own mount namespace: the entries land in the directories
    below the mounts, and no cgroup is made."""
    dest = tmp_path / "dest"
    archive = tmp_path / "a.tar"
    archive.write_bytes(TarBuilder().file("sys/pwned", b"x").dir("cg/chrootarchive-pwned")
                        .file("proc/pwned", b"x").build())
    script = tmp_path / "unpack.py"
    script.write_text(KERNEL_FS_SCRIPT)
    proc = _with_kernel_mounts(
        dest, [sys.executable, str(script), "untar", str(dest), str(archive), mechanism],
        after='test ! -e "$D/cg/chrootarchive-pwned" || { rmdir "$D/cg/chrootarchive-pwned";'
              ' echo made a cgroup >&2; exit 9; }')  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == {"error": None}
    # Seen from here (no mounts), the entries are in the directories below them.
    assert (dest / "sys" / "pwned").read_bytes() == b"x"
    assert (dest / "proc" / "pwned").read_bytes() == b"x"
    assert (dest / "cg" / "chrootarchive-pwned").is_dir()


PACK_SCRIPT = textwrap.dedent(
    """
    import io, json, sys, tarfile
    import chrootarchive
    from chrootarchive.options import PackOptions
    root, src = sys.argv[1:3]
    try:
        with chrootarchive.tar(src, root, PackOptions(confine="openat2")) as stream:
            data = stream.read()
            result = stream.result
        names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
        print(json.dumps({"names": names, "warnings": list(result.warnings)}))
    except chrootarchive.ChrootArchiveError as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}))
    """
)


def test_openat2_pack_never_reads_kernel_filesystems(tmp_path: Path) -> None:
    """Packing a root that holds a procfs, sysfs and cgroup2 (a running container's
    root file system) under ``openat2``: they are skipped with a warning each, never
    walked or read."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_bytes(b"box\n")
    script = tmp_path / "pack.py"
    script.write_text(PACK_SCRIPT)
    proc = _with_kernel_mounts(root, [sys.executable, str(script), str(root), "/"])
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert "error" not in out, out
    names = {name.rstrip("/") for name in out["names"]}
    assert names == {"etc", "etc/hostname", "d"}, names
    kinds = sorted(w.split(": a ")[1].split()[0] for w in out["warnings"])
    assert kinds == ["cgroup2fs", "procfs", "procfs", "sysfs"], out["warnings"]


@pytest.mark.parametrize("src", ["/proc", "/d/p/self", "/sys/kernel"])
def test_openat2_pack_refuses_a_kernel_filesystem_source(src: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    script = tmp_path / "pack.py"
    script.write_text(PACK_SCRIPT)
    proc = _with_kernel_mounts(root, [sys.executable, str(script), str(root), src + "/"])
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out.get("error") == "SourceError", out
    assert "the kernel's files are never packed" in out["message"], out


# -- signals: the worker reaches itself only; its helper ends without one --------------

HELPER_SCRIPT = textwrap.dedent(
    """
    # A process under the worker's filter (no_new_privs + seccomp, as lock_down does)
    # starts the file helper, gives it work, then aborts it (mode "abort") or waits to
    # be killed from outside (mode "die").
    import errno, json, os, sys, time
    from chrootarchive import _linux
    from chrootarchive.engine.finisher import Finisher

    work, mode = sys.argv[1:3]
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    _linux.install_seccomp_denylist()
    finisher = Finisher.start()
    helper = finisher._pid

    def signal(pid):
        try:
            os.kill(pid, 0)
            return "ALLOWED"
        except OSError as err:
            return errno.errorcode[err.errno]

    out = {"helper": helper, "self": signal(os.getpid()), "to_helper": signal(helper),
           "to_parent": signal(os.getppid())}
    for i in range(3000):
        fd = os.open(f"{work}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)
        finisher.add(fd, b"x" * 2048, 0, 0, f"f{i}")
    if mode == "die":
        print(json.dumps(out), flush=True)
        time.sleep(60)
    start = time.monotonic()
    finisher.abort()
    out["abort_seconds"] = time.monotonic() - start
    out["helper_gone"] = not os.path.exists(f"/proc/{helper}")
    print(json.dumps(out))
    """
)


def _helper_script(tmp_path: Path, mode: str) -> subprocess.Popen[bytes]:
    work = tmp_path / "files"
    work.mkdir()
    script = tmp_path / "helper.py"
    script.write_text(HELPER_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(work), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_signals_reach_only_the_worker_itself(tmp_path: Path) -> None:
    """Under the filter a process signals itself, neither its parent (the caller, or any
    root process) nor its own helper; aborting the helper needs no signal: with its
    socket closed it ends after the batch it is writing, at once."""
    proc = _helper_script(tmp_path, "abort")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert (out["self"], out["to_parent"], out["to_helper"]) == ("ALLOWED", "EPERM", "EPERM")
    assert out["helper_gone"] and out["abort_seconds"] < 2, out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"  # ended, not reaped
    except FileNotFoundError:
        return True


def test_helper_ends_when_the_worker_is_killed(tmp_path: Path) -> None:
    """The parent kills a worker from outside; its helper (busy with queued batches)
    follows at once (``PR_SET_PDEATHSIG``), although the worker could not signal it."""
    proc = _helper_script(tmp_path, "die")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode() if proc.stderr else ""
        helper = json.loads(line)["helper"]
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 2
        while not _gone(helper):
            assert time.monotonic() < deadline, "the helper outlived its worker"
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
