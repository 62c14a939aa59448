#!/usr/bin/env python3
"""Time chrootarchive against GNU tar, bsdtar and Python's tarfile (issues 5 and 16).

For each selected input and target (tmpfs, disk), every tool extracts the same archive
into a fresh empty directory, the tools taking turns (round-robin, the starting tool
rotating each round), ``--runs`` times each. Reported per tool: wall time and user+sys
CPU time of the process tree (median, min-max), peak RSS of the tree, entries/s, MB/s
(uncompressed tar bytes / wall) and the ratio of its median wall time to GNU tar's in the
same run. A micro-benchmark times a one-file archive through the Python API (in-process)
and through the command line. The targets of issue 16 are checked at the end.

Results: a markdown table on stdout and in ``DIR/results/<timestamp>.md``, and JSON in
``DIR/results/<timestamp>.json`` (plus ``--json-out``/``--md-out``).

Build the inputs first with ``bench/build_inputs.py``; ``--smoke`` needs none (it builds
a tiny archive in a temporary directory and runs one round of everything).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import fnmatch
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compiled  # bench/compiled.py, beside this script

DEFAULT_DIR = Path("/var/tmp/chrootarchive-bench")
DEFAULT_TMPFS = Path("/dev/shm/chrootarchive-bench")
INPUT_ORDER = [
    f"{fam}.tar{suffix}"
    for fam in ("linux", "rootfs", "small", "large")
    for suffix in ("", ".gz", ".zst", ".xz")
    if fam == "linux" or suffix != ".xz"
]
ALL_TOOLS = ("chrootarchive", "gnutar", "bsdtar", "tarfile-data", "tarfile-trusted")
DEFAULT_TOOLS = ("chrootarchive", "gnutar", "bsdtar", "tarfile-data")
MIB = 1024 * 1024

# Runs in a child ``python -c``: tarfile as a careful Python user would call it. With
# filter="data", a member that the filter refuses (an absolute symlink, common in a root
# filesystem) is skipped, as a filter returning None does, and the rest is extracted;
# paths_extracted shows how many fewer. (Not errorlevel=0: before 3.11.13 that extracts
# the refused member unfiltered, gh-135034.)
TARFILE_CODE = """\
import sys, tarfile
src, dest, flt = sys.argv[1:4]
if flt == "data":
    def flt(member, path):
        try:
            return tarfile.data_filter(member, path)
        except tarfile.FilterError:
            return None
if src.endswith(".zst"):
    import zstandard
    with open(src, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z:
        with tarfile.open(fileobj=z, mode="r|") as t:
            t.extractall(dest, filter=flt)
else:
    with tarfile.open(src, "r:*") as t:
        t.extractall(dest, filter=flt)
"""

# Runs in a child ``python -c``: the in-process API micro-benchmark.
API_CODE = """\
import json, os, shutil, sys, tempfile, time
archive, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
import chrootarchive
import_s = time.perf_counter() - t0
times = []
for _ in range(n):
    dest = tempfile.mkdtemp(dir=root)
    t0 = time.perf_counter()
    chrootarchive.untar(archive, dest)
    times.append(time.perf_counter() - t0)
    shutil.rmtree(dest)
print(json.dumps({"import_s": import_s, "times": times}))
"""

# The floors of the one-file figures, timed beside them (issue 16 asks what the floor
# is): the interpreter alone, as the worker starts it (``-I -S``) and as a console
# script starts (with ``site``); and a program that only parses two arguments with
# ``argparse`` (which imports ``re`` and ``gettext``), as the command line does first.
FLOOR_ARGPARSE_CODE = (
    "import argparse; p = argparse.ArgumentParser(); c = p.add_subparsers();"
    " u = c.add_parser('untar'); u.add_argument('archive'); u.add_argument('dest');"
    " p.parse_args(['untar', 'one.tar', 'dest'])"
)
FLOOR_WORKER = "python -I -S -c pass"  # the API's floor
FLOOR_CLI = "python, argparse parsing two arguments"  # the command line's floor
FLOORS: dict[str, list[str]] = {
    FLOOR_WORKER: ["-I", "-S", "-c", "pass"],
    "python -c pass": ["-c", "pass"],
    FLOOR_CLI: ["-c", FLOOR_ARGPARSE_CODE],
}

TARFILE_API_CODE = """\
import json, shutil, sys, tarfile, tempfile, time
archive, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(n):
    dest = tempfile.mkdtemp(dir=root)
    t0 = time.perf_counter()
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    times.append(time.perf_counter() - t0)
    shutil.rmtree(dest)
print(json.dumps({"import_s": 0.0, "times": times}))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- inputs


@dataclass
class Input:
    name: str
    path: Path
    entries: int
    tar_bytes: int
    file_bytes: int | None = None


def decompressor(path: Path) -> list[str] | None:
    name = path.name
    if name.endswith((".gz", ".tgz")):
        return ["gzip", "-dc"]
    if name.endswith(".zst"):
        return ["zstd", "-dc", "-q"]
    if name.endswith(".xz"):
        return ["xz", "-dc"]
    return None


class _Counter:
    """A read-only file object over a pipe that counts bytes read."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.f.read(size)
        self.n += len(data)
        return data


def scan_tar(path: Path) -> tuple[int, int, int]:
    """(entries, uncompressed tar bytes, regular file bytes) of any archive."""
    cmd = decompressor(path)
    with open(path, "rb") as raw:
        proc = subprocess.Popen([*cmd, str(path)], stdout=subprocess.PIPE) if cmd else None
        src = _Counter(proc.stdout if proc else raw)
        entries = data = 0
        with tarfile.open(fileobj=src, mode="r|") as tf:  # type: ignore[call-overload]
            for m in tf:
                entries += 1
                if m.isreg():
                    data += m.size
        while src.read(1 << 20):
            pass
        if proc:
            proc.wait()
    return entries, src.n, data


def load_inputs(bench_dir: Path, selectors: Sequence[str]) -> list[Input]:
    inputs_dir = bench_dir / "inputs"
    mpath = inputs_dir / "manifest.json"
    manifest: dict[str, Any] = json.loads(mpath.read_text()) if mpath.exists() else {}
    files: dict[str, Any] = manifest.get("files", {})
    available = [n for n in INPUT_ORDER if (inputs_dir / n).exists()]
    chosen: list[str] = []
    extra: list[Path] = []
    for sel in selectors:
        if "/" in sel:
            extra.append(Path(sel))
            continue
        hits = [
            n for n in available if n == sel or n.split(".", 1)[0] == sel or fnmatch.fnmatch(n, sel)
        ]
        if not hits:
            raise SystemExit(f"no input matches {sel!r} in {inputs_dir} (run build_inputs.py)")
        chosen += [h for h in hits if h not in chosen]
    result: list[Input] = []
    for n in chosen:
        f = files.get(n)
        path = inputs_dir / n
        if f and f.get("bytes") == path.stat().st_size:
            fam = manifest["families"].get(f["family"], {})
            result.append(Input(n, path, f["entries"], f["tar_bytes"], fam.get("file_bytes")))
        else:
            result.append(Input(n, path, *scan_tar(path)))
    for p in extra:
        result.append(Input(p.name, p.resolve(), *scan_tar(p)))
    return result


# ---------------------------------------------------------------------------- tools


def snapshot_package(where: Path) -> tuple[Path, str] | None:
    """Copy the chrootarchive package (not importing it) to ``where``; (copy, source)."""
    spec = importlib.util.find_spec("chrootarchive")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(next(iter(spec.submodule_search_locations)))
    shutil.copytree(src, where / "chrootarchive", ignore=shutil.ignore_patterns("__pycache__"))
    # Byte-compiled, as pip leaves an installed package: with PYTHONDONTWRITEBYTECODE
    # set, every command-line run would otherwise compile the modules again.
    compileall.compile_dir(str(where / "chrootarchive"), quiet=1)
    return where, str(src)


def source_state(pkg: str) -> dict[str, Any]:
    """Git commit and whether the package's sources differ from it (read-only git)."""

    def git(*a: str) -> str:
        try:
            out = subprocess.run(["git", "-C", pkg, *a], capture_output=True, text=True)
            return out.stdout.strip()
        except OSError:
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed_since_commit": git("status", "--porcelain", "--", ".").splitlines(),
    }


def chrootarchive_cmd(override: str | None) -> list[str]:
    if override:
        return override.split()
    script = Path(sys.executable).with_name("chrootarchive")
    if script.exists():
        return [str(script)]
    found = shutil.which("chrootarchive")
    return [found] if found else [sys.executable, "-m", "chrootarchive"]


@dataclass
class Tools:
    chroot: list[str]
    chroot_json: bool
    available: dict[str, str]  # tool -> "" if usable, else why not

    def command(self, tool: str, archive: Path, dest: Path) -> list[str]:
        a, d = str(archive), str(dest)
        if tool == "chrootarchive":
            return [*self.chroot, "untar", *(["--json"] if self.chroot_json else []), a, d]
        if tool == "gnutar":
            flag = {".gz": "z", ".tgz": "z", ".xz": "J"}.get(archive.suffix, "")
            zstd = ["--zstd"] if archive.suffix == ".zst" else []
            return ["tar", "--numeric-owner", "-p", *zstd, f"-x{flag}f", a, "-C", d]
        if tool == "bsdtar":
            return ["bsdtar", "--numeric-owner", "-xpf", a, "-C", d]
        if tool in ("tarfile-data", "tarfile-trusted"):
            flt = "data" if tool == "tarfile-data" else "fully_trusted"
            return [sys.executable, "-c", TARFILE_CODE, a, d, flt]
        raise ValueError(tool)


def probe_tools(wanted: Sequence[str], override: str | None) -> Tools:
    chroot = chrootarchive_cmd(override)
    available: dict[str, str] = {}
    chroot_json = False
    for tool in wanted:
        why = ""
        if tool == "chrootarchive":
            try:
                out = subprocess.run(
                    [*chroot, "untar", "--help"], capture_output=True, text=True, timeout=60
                )
                if out.returncode != 0:
                    why = (out.stderr.strip().splitlines() or ["untar --help failed"])[-1]
                chroot_json = "--json" in out.stdout
            except (OSError, subprocess.TimeoutExpired) as e:
                why = str(e)
        elif tool == "gnutar":
            why = "" if shutil.which("tar") else "tar not installed"
        elif tool == "bsdtar":
            why = "" if shutil.which("bsdtar") else "bsdtar not installed (libarchive-tools)"
        elif tool.startswith("tarfile-") and not hasattr(tarfile, "data_filter"):
            why = (f"tarfile has no filters before Python 3.11.4 (PEP 706); this is "
                   f"{platform.python_version()}")
        available[tool] = why
    return Tools(chroot, chroot_json, available)


# ---------------------------------------------------------------------------- measuring


class TreeSampler(threading.Thread):
    """Samples VmHWM/VmRSS of every process in a tree from /proc every ``interval`` s.

    ``hwm_sum_kib`` is the sum over processes of each one's peak (an upper bound of the
    tree's simultaneous peak); ``rss_sum_kib`` the largest sum of current RSS seen at one
    sample. Sampling starts at 1 ms and doubles up to ``interval``; growth after the last
    sample of a process, and processes that live between two samples, are missed.
    """

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.stop_event = threading.Event()
        self.hwm: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.rss_sum_kib = 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
        return kids

    def sample(self) -> None:
        todo = [self.root]
        rss_sum = 0
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            hwm = rss = 0
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("Name:"):
                    self.names[pid] = line.split(":", 1)[1].strip()
            # The last value, not the largest: a child between fork and exec shows its
            # parent's memory; VmHWM only grows within one program, so the last sample
            # is the best estimate of the peak of the program it finally ran.
            if hwm:
                self.hwm[pid] = hwm
            rss_sum += rss
            todo += self._children(pid)
        self.rss_sum_kib = max(self.rss_sum_kib, rss_sum)

    def run(self) -> None:
        wait = 0.001  # start fast, so that short runs are seen too
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(wait)
            wait = min(wait * 2, self.interval)

    def finish(self) -> None:
        self.stop_event.set()
        self.join()

    @property
    def hwm_sum_kib(self) -> int:
        return sum(self.hwm.values())

    def by_process(self) -> list[tuple[str, int]]:
        return [(self.names.get(p, "?"), k) for p, k in sorted(self.hwm.items())]


@dataclass
class Sample:
    ok: bool
    wall: float
    cpu: float
    user: float
    sys: float
    maxrss_rusage_kib: int
    rss_hwm_sum_kib: int
    rss_sum_kib: int
    reported_rss_kib: int | None
    peak_rss_kib: int
    returncode: int
    other_cpu: float = 0.0
    processes: list[tuple[str, int]] = field(default_factory=list)
    error: str = ""
    stdout: str = ""


def cpu_model() -> str:
    """The CPU's name (/proc/cpuinfo): absolute times move with it as ratios move with
    the kernel (issue 16's fourteenth and fifteenth rounds ran on two kinds of CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return " ".join(value.split())
    except OSError:
        pass
    return ""


def machine_busy_s() -> float:
    """CPU seconds spent by the whole machine so far (all CPUs, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def reported_rss(stdout: str) -> int | None:
    """Parent+worker peak RSS if the tool reports it (chrootarchive --json)."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("peak_rss_kib", "maxrss_kib_total"):
        if isinstance(data.get(key), int):
            return int(data[key])
    worker = data.get("worker_maxrss_kib")
    parent = data.get("parent_maxrss_kib", data.get("maxrss_kib"))
    if isinstance(worker, int) and isinstance(parent, int):
        return worker + parent
    return None


def measure(cmd: list[str], timeout: float, sample_ms: float) -> Sample:
    """Run ``cmd`` once: wall time, rusage of the tree (wait4), sampled RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0 = machine_busy_s()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        sampler = TreeSampler(proc.pid, sample_ms / 1000) if sample_ms > 0 else None
        if sampler:
            sampler.start()
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy = machine_busy_s() - busy0
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if sampler:
            sampler.finish()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    # wait4's rusage of the child covers the child and all descendants it waited for;
    # the RUSAGE_CHILDREN delta is the same thing measured from this side.
    user, sys_ = ru.ru_utime, ru.ru_stime
    delta = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu = max(user + sys_, delta)
    hwm_sum = sampler.hwm_sum_kib if sampler else 0
    rep = reported_rss(stdout)
    # ru_maxrss is not used for the peak: a child spawned from this (large) Python process
    # keeps the high-water mark of the memory it shared with us before exec.
    peak = max(hwm_sum, rep or 0) if sampler else max(ru.ru_maxrss, rep or 0)
    ok = proc.returncode == 0
    error = ""
    if not ok:
        lines = stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        error = f"exit {proc.returncode}: " + lines[-1].strip()[:300]
    return Sample(
        ok=ok,
        wall=wall,
        cpu=cpu,
        user=user,
        sys=sys_,
        maxrss_rusage_kib=ru.ru_maxrss,
        rss_hwm_sum_kib=hwm_sum,
        rss_sum_kib=sampler.rss_sum_kib if sampler else 0,
        reported_rss_kib=rep,
        peak_rss_kib=peak,
        returncode=proc.returncode,
        other_cpu=max(0.0, busy - cpu),
        processes=sampler.by_process() if sampler else [],
        error=error,
        stdout=stdout[:2000],
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def own_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def count_tree(path: Path) -> int:
    n = 0
    for _, dirs, files in os.walk(path):
        n += len(dirs) + len(files)
    return n


def remove_tree(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def fs_type(path: Path) -> str:
    """File system type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    best, kind = "", "?"
    p = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mnt = parts[4].replace("\\040", " ")
            fstype = parts[parts.index("-") + 1]
            if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, fstype
    return kind


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


# ---------------------------------------------------------------------------- stats


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def run_input(
    inp: Input,
    target: str,
    root: Path,
    tools: Tools,
    order: Sequence[str],
    runs: int,
    timeout: float,
    sample_ms: float,
    warmup: int,
) -> dict[str, Any]:
    usable = [t for t in order if not tools.available.get(t)]
    samples: dict[str, list[Sample]] = {t: [] for t in usable}
    counted: dict[str, int] = {}
    failed: dict[str, str] = {}
    warm(inp.path)
    # Untimed: the first extraction after boot is slower on a VM (the guest's memory is
    # faulted in from the host); GNU tar touches as much memory as every tool will need.
    ref = "gnutar" if "gnutar" in usable else (usable[0] if usable else None)
    for _ in range(warmup if ref else 0):
        dest = Path(tempfile.mkdtemp(prefix="warmup-", dir=root))
        measure(tools.command(ref or "gnutar", inp.path, dest), timeout, 0)
        remove_tree(dest)
        if target == "disk":
            os.sync()
    for r in range(runs):
        k = r % len(usable) if usable else 0
        for tool in usable[k:] + usable[:k]:
            if tool in failed:
                continue
            dest = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=root))
            s = measure(tools.command(tool, inp.path, dest), timeout, sample_ms)
            if r == 0 and s.ok:
                counted[tool] = count_tree(dest)
            remove_tree(dest)
            if target == "disk":
                os.sync()
            if not s.ok:
                failed[tool] = s.error
                log(f"  {inp.name} {target} {tool}: FAILED {s.error}")
                continue
            samples[tool].append(s)
            log(
                f"  {inp.name} {target} round {r + 1}/{runs} {tool}: {s.wall:.3f} s wall,"
                f" {s.cpu:.3f} s CPU, {s.peak_rss_kib / 1024:.1f} MiB"
            )
    result: dict[str, Any] = {
        "input": inp.name,
        "loadavg_after": os.getloadavg(),
        "target": target,
        "entries": inp.entries,
        "tar_bytes": inp.tar_bytes,
        "compressed_bytes": inp.path.stat().st_size,
        "tools": {},
    }
    gnu = samples.get("gnutar") or []
    gnu_med = statistics.median([s.wall for s in gnu]) if gnu else None
    for tool in order:
        if tools.available.get(tool):
            result["tools"][tool] = {"skipped": tools.available[tool]}
            continue
        ss = samples.get(tool, [])
        entry: dict[str, Any] = {"runs": len(ss)}
        if tool in failed:
            entry["error"] = failed[tool]
        if ss:
            wall = summary([s.wall for s in ss])
            entry.update(
                wall_s=wall,
                cpu_s=summary([s.cpu for s in ss]),
                user_s=summary([s.user for s in ss]),
                sys_s=summary([s.sys for s in ss]),
                other_cpu_s=summary([s.other_cpu for s in ss]),
                peak_rss_kib=summary([s.peak_rss_kib for s in ss]),
                maxrss_rusage_kib=max(s.maxrss_rusage_kib for s in ss),
                rss_hwm_sum_kib=max(s.rss_hwm_sum_kib for s in ss),
                rss_sum_kib=max(s.rss_sum_kib for s in ss),
                reported_rss_kib=max((s.reported_rss_kib or 0) for s in ss) or None,
                processes=max(ss, key=lambda s: s.peak_rss_kib).processes,
                entries_per_s=inp.entries / wall["median"],
                mb_per_s=inp.tar_bytes / 1e6 / wall["median"],
                ratio_to_gnutar=wall["median"] / gnu_med if gnu_med else None,
                paths_extracted=counted.get(tool),
                walls=[s.wall for s in ss],
                stdout_first=ss[0].stdout[:500],
            )
        result["tools"][tool] = entry
    return result


# ---------------------------------------------------------------------------- micro


def one_file_archive(where: Path) -> Path:
    src = where / "one-src"
    src.mkdir()
    (src / "hello.txt").write_bytes(b"hello, world\n" * 80)
    archive = where / "one.tar"
    subprocess.run(
        [
            "tar",
            "--format=gnu",
            "--owner=0",
            "--group=0",
            "-C",
            str(src),
            "-cf",
            str(archive),
            "hello.txt",
        ],
        check=True,
    )
    return archive


def micro(
    tools: Tools, order: Sequence[str], root: Path, iters_api: int, iters_cli: int
) -> dict[str, Any]:
    archive = one_file_archive(root)
    res: dict[str, Any] = {
        "archive": "one regular file of 1,040 bytes (.tar)",
        "api": {},
        "cli": {},
    }
    # "chrootarchive-no-standby": every call boots its own worker (issue 16's target).
    api_tools = ["chrootarchive", "chrootarchive-no-standby", "tarfile-data"]
    for tool in api_tools:
        base = tool.removesuffix("-no-standby")
        if tools.available.get(base):
            res["api"][tool] = {"skipped": tools.available[base]}
            continue
        code = TARFILE_API_CODE if tool == "tarfile-data" else API_CODE
        env = dict(os.environ)
        if tool.endswith("-no-standby"):
            env["CHROOTARCHIVE_STANDBY"] = "0"
        out = subprocess.run(
            [sys.executable, "-c", code, str(archive), str(root), str(iters_api)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        if out.returncode != 0:
            err = (out.stderr.strip().splitlines() or ["failed"])[-1]
            res["api"][tool] = {"error": err}
            log(f"  micro api {tool}: FAILED {err}")
            continue
        data = json.loads(out.stdout.strip().splitlines()[-1])
        times = data["times"]
        res["api"][tool] = {
            "import_s": data["import_s"],
            "first_s": times[0],
            "s": summary(times[1:] or times),
            "iterations": len(times),
        }
        log(f"  micro api {tool}: median {statistics.median(times[1:] or times) * 1000:.2f} ms")
    for tool in order:
        if tools.available.get(tool):
            res["cli"][tool] = {"skipped": tools.available[tool]}
            continue
        walls: list[float] = []
        err = ""
        for _ in range(iters_cli):
            dest = Path(tempfile.mkdtemp(prefix="one-", dir=root))
            s = measure(tools.command(tool, archive, dest), 120, 0)
            remove_tree(dest)
            if not s.ok:
                err = s.error
                break
            walls.append(s.wall)
        if err:
            res["cli"][tool] = {"error": err}
            log(f"  micro cli {tool}: FAILED {err}")
        else:
            res["cli"][tool] = {"s": summary(walls), "iterations": len(walls)}
            log(f"  micro cli {tool}: median {statistics.median(walls) * 1000:.1f} ms")
    res["floor"] = floors(iters_cli)
    os.unlink(archive)
    shutil.rmtree(root / "one-src")
    return res


def floors(iters: int) -> dict[str, Any]:
    """:data:`FLOORS`, each run ``iters`` times through :func:`measure` (as the tools)."""
    out: dict[str, Any] = {}
    for name, args in FLOORS.items():
        walls: list[float] = []
        for _ in range(iters):
            s = measure([sys.executable, *args], 60, 0)
            if not s.ok:
                out[name] = {"error": s.error}
                break
            walls.append(s.wall)
        else:
            out[name] = {"s": summary(walls), "iterations": len(walls)}
            log(f"  micro floor {name}: median {statistics.median(walls) * 1000:.1f} ms")
    return out


# ---------------------------------------------------------------------------- targets

# (id, description, input, limit, kind) -- ratios are chrootarchive / GNU tar on tmpfs;
# "vs-bsdtar" is chrootarchive / bsdtar (below 1: faster). The targets of issue 16.
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("rootfs-tar", "root filesystem .tar <= 1.3 x GNU tar", "rootfs.tar", 1.3, "ratio"),
    ("rootfs-tar-bsd", "root filesystem .tar faster than bsdtar", "rootfs.tar", 1.0, "vs-bsdtar"),
    ("rootfs-zst", "root filesystem .tar.zst <= 1.1 x GNU tar", "rootfs.tar.zst", 1.1, "ratio"),
    (
        "rootfs-zst-bsd",
        "root filesystem .tar.zst faster than bsdtar",
        "rootfs.tar.zst",
        1.0,
        "vs-bsdtar",
    ),
    ("linux-tar", "Linux source .tar <= 1.0 x GNU tar", "linux.tar", 1.0, "ratio"),
    ("small-tar", "200k small files .tar <= 1.1 x GNU tar", "small.tar", 1.1, "ratio"),
    ("linux-zst", "Linux source .tar.zst <= 0.9 x GNU tar", "linux.tar.zst", 0.9, "ratio"),
    ("linux-gz", "Linux source .tar.gz <= 0.45 x GNU tar", "linux.tar.gz", 0.45, "ratio"),
    ("rootfs-gz", "root filesystem .tar.gz <= 0.5 x GNU tar", "rootfs.tar.gz", 0.5, "ratio"),
    ("large-gz", "4 x 512 MiB .tar.gz <= 0.35 x GNU tar", "large.tar.gz", 0.35, "ratio"),
    ("rss", "peak RSS (parent + worker) <= 64 MiB on every input", "*", 64.0, "rss"),
    (
        "api-one",
        "one-file archive via the Python API, no standby <= 12 ms",
        "micro",
        0.012,
        "api-no-standby",
    ),
    ("cli-one", "one-file archive via the command line <= 30 ms", "micro", 0.030, "cli"),
]


def check_targets(
    results: list[dict[str, Any]], micro_res: dict[str, Any] | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    tmpfs = {r["input"]: r for r in results if r["target"] == "tmpfs"}

    def med(r: dict[str, Any], tool: str) -> float | None:
        t = r["tools"].get(tool, {})
        return t["wall_s"]["median"] if "wall_s" in t else None

    for tid, desc, inp, limit, kind in TARGETS:
        value: float | None = None
        note = ""
        if kind == "ratio" and inp in tmpfs:
            c, g = med(tmpfs[inp], "chrootarchive"), med(tmpfs[inp], "gnutar")
            value = c / g if c and g else None
        elif kind == "vs-bsdtar" and inp in tmpfs:
            c, b = med(tmpfs[inp], "chrootarchive"), med(tmpfs[inp], "bsdtar")
            value = c / b if c and b else None
        elif kind == "rss":
            peaks = [
                (r["tools"]["chrootarchive"]["peak_rss_kib"]["max"] / 1024, r["input"], r["target"])
                for r in results
                if "peak_rss_kib" in r["tools"].get("chrootarchive", {})
            ]
            if peaks:
                worst = max(peaks)
                value = worst[0]
                note = f"worst: {worst[1]} on {worst[2]} ({len(peaks)} measured)"
        elif kind in ("api", "api-no-standby", "cli") and micro_res:
            how, tool = (
                ("cli", "chrootarchive")
                if kind == "cli"
                else (
                    "api",
                    "chrootarchive-no-standby" if kind.endswith("standby") else "chrootarchive",
                )
            )
            m = micro_res[how].get(tool, {})
            value = m["s"]["median"] if "s" in m else None
            floor = micro_res.get("floor", {}).get(
                FLOOR_CLI if kind == "cli" else FLOOR_WORKER, {})
            if value is not None and "s" in floor:
                what = "argparse alone" if kind == "cli" else "the worker's bare interpreter"
                note = f"floor in this run, {what}: {floor['s']['median'] * 1000:.1f} ms"
        if value is None:
            met: bool | None = None
        elif kind == "vs-bsdtar":
            met = value < limit
        else:
            met = value <= limit
        out.append(
            {"id": tid, "target": desc, "value": value, "limit": limit, "met": met, "note": note}
        )
    return out


# ---------------------------------------------------------------------------- output


def fmt_one(x: float) -> str:
    """Seconds, or milliseconds below one second."""
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f}"


def fmt_s(d: dict[str, float]) -> str:
    if d["min"] == d["max"]:
        return fmt_one(d["median"])
    return f"{fmt_one(d['median'])} ({fmt_one(d['min'])}-{fmt_one(d['max'])})"


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from several: later ones replace (input, target) results and micro."""
    if len(reports) == 1:
        return reports[0]
    merged: dict[str, Any] = {"meta": dict(reports[-1]["meta"]), "results": []}
    index: dict[tuple[str, str], int] = {}
    for rep in reports:
        for r in rep["results"]:
            key = (r["input"], r["target"])
            if key in index:
                merged["results"][index[key]] = r | {"run": rep["meta"]["started"]}
            else:
                index[key] = len(merged["results"])
                merged["results"].append(r | {"run": rep["meta"]["started"]})
        if rep.get("micro"):
            merged["micro"] = rep["micro"] | {"run": rep["meta"]["started"]}
        merged["meta"]["dest"] = reports[0]["meta"]["dest"] | rep["meta"]["dest"]
    merged["meta"]["started"] = " + ".join(r["meta"]["started"] for r in reports)
    merged["meta"]["runs"] = "/".join(str(r["meta"]["runs"]) for r in reports)
    merged["targets"] = check_targets(merged["results"], merged.get("micro"))
    return merged


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def fmt_user_sys(t: dict[str, Any]) -> str:
    """Median user and system CPU seconds (a report from before they were kept: blank)."""
    if "user_s" not in t or "sys_s" not in t:
        return ""
    return f"{fmt_one(t['user_s']['median'])} / {fmt_one(t['sys_s']['median'])}"


def fmt_other(t: dict[str, Any]) -> str:
    other = t.get("other_cpu_s")
    return f"{other['median']:.2f}" if other else ""


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    meta = report["meta"]
    lines.append(
        f"Run {meta['started']} on {meta['host']['cpus']} CPUs"
        f"{' (' + meta['host']['cpu'] + ')' if meta['host'].get('cpu') else ''},"
        f" kernel {meta['host']['kernel']},"
        f" {meta['runs']} runs per tool, round-robin, niceness {meta.get('nice', 0)}."
        " Times in seconds unless marked;"
        " wall and CPU: median (min-max); user / system: medians of the CPU time's two"
        " parts; ratio: median wall / GNU tar's median wall in the"
        " same run; peak RSS: largest over runs, MiB; others' CPU: median CPU time used by"
        " other processes on the machine during a run (noise)."
    )
    line = meta.get("versions", {}).get("chrootarchive_version_line")
    if line:
        lines += ["", f"`{line}`"]
    script_re = meta.get("versions", {}).get("console_script_imports_re")
    if script_re in ("yes", "no"):
        lines += ["", "The console script imports `re` before chrootarchive starts"
                  f" (pip before 25.0 writes such a script): {script_re}."]
    lines.append("")
    for target in ("tmpfs", "disk"):
        rows = [r for r in report["results"] if r["target"] == target]
        if not rows:
            continue
        lines.append(f"### {target} ({report['meta']['dest'][target]})")
        lines.append("")
        lines.append(
            "| input | entries | tar MB | tool | wall s | CPU s | user / system s | peak RSS MiB |"
            " entries/s | MB/s | ratio to GNU tar | others' CPU s |"
        )
        lines.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            first = True
            for tool, t in r["tools"].items():
                head = (
                    f"{r['input']}{' (run ' + r['run'] + ')' if 'run' in r else ''}"
                    f" | {r['entries']:,} | {r['tar_bytes'] / 1e6:,.0f}"
                    if first
                    else " | | "
                )
                first = False
                if "wall_s" not in t:
                    why = str(t.get("error") or t.get("skipped") or "no run").replace("|", "/")
                    lines.append(f"| {head} | {tool} | {why} | | | | | | | |")
                    continue
                ratio = t["ratio_to_gnutar"]
                lines.append(
                    f"| {head} | {tool} | {fmt_s(t['wall_s'])} | {fmt_s(t['cpu_s'])}"
                    f" | {fmt_user_sys(t)} | {t['peak_rss_kib']['max'] / 1024:.1f}"
                    f" | {fmt_rate(t['entries_per_s'])} | {t['mb_per_s']:,.0f}"
                    f" | {'' if ratio is None else f'{ratio:.2f}'}"
                    f" | {fmt_other(t)} |"
                )
        lines.append("")
    m = report.get("micro")
    if m:
        lines.append("### one-file archive (micro-benchmark, tmpfs)")
        lines.append("")
        lines.append("| how | tool | time: median (min-max) | first call | import |")
        lines.append("|---|---|---:|---:|---:|")
        for how in ("api", "cli"):
            for tool, t in m[how].items():
                if "s" not in t:
                    lines.append(f"| {how} | {tool} | {t.get('error') or t.get('skipped')} | | |")
                    continue
                first_call = f"{t['first_s'] * 1000:.1f} ms" if "first_s" in t else ""
                imp = f"{t['import_s'] * 1000:.1f} ms" if t.get("import_s") else ""
                lines.append(f"| {how} | {tool} | {fmt_s(t['s'])} | {first_call} | {imp} |")
        for name, t in m.get("floor", {}).items():
            shown = fmt_s(t["s"]) if "s" in t else t.get("error", "")
            lines.append(f"| floor | {name} | {shown} | | |")
        lines.append("")
    lines.append("### targets of issue 16 (chrootarchive, tmpfs, same run)")
    lines.append("")
    lines.append("| target | measured | met |")
    lines.append("|---|---:|---|")
    for t in report["targets"]:
        v = t["value"]
        if v is None:
            shown = "not measured"
        elif t["id"] == "rss":
            shown = f"{v:.1f} MiB"
        elif t["id"] in ("api-one", "cli-one"):
            shown = f"{v * 1000:.1f} ms"
        elif t["id"].endswith("-bsd"):
            shown = f"{v:.2f} x bsdtar"
        else:
            shown = f"{v:.2f}"
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']} | {shown}{note} | {met} |")
    lines.append("")
    return "\n".join(lines)


def script_imports_re(path: str) -> str:
    """Whether the console script imports ``re`` before chrootarchive's entry point:
    pip before 25.0 writes one that does, which delays the worker's spawn by the
    7-10 ms ``re`` costs (docs/performance.md, issue 16's fifteenth round)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "?"
    if not head.startswith(b"#!"):
        return "?"  # an interpreter, not a script
    return "yes" if b"\nimport re\n" in head else "no"


def versions(tools: Tools) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    v = {
        "gnutar": first_line(["tar", "--version"]),
        "bsdtar": first_line(["bsdtar", "--version"]),
        "gzip": first_line(["gzip", "--version"]),
        "python": sys.version.split()[0],
    }
    try:
        from importlib.metadata import version

        v["chrootarchive"] = version("chrootarchive")
    except Exception:
        v["chrootarchive"] = "?"
    v["chrootarchive_cmd"] = " ".join(tools.chroot)
    v["console_script_imports_re"] = script_imports_re(tools.chroot[0])
    # The command's own --version line says whether its header parser, helper loop and
    # system calls are compiled (setup.py builds them where a C compiler was found): figures differ
    # without them.
    v["chrootarchive_version_line"] = first_line([*tools.chroot, "--version"])
    return v


# ---------------------------------------------------------------------------- smoke


def build_smoke(where: Path) -> list[Input]:
    rng = random.Random(5)
    top = where / "smoke-src" / "smoke"
    for i in range(300):
        d = top / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03d}.txt").write_bytes(rng.randbytes(rng.randint(0, 4096)))
    (top / "big.bin").write_bytes(rng.randbytes(256 << 10) * 4)
    (top / "link").symlink_to("d0/f000.txt")
    tar = where / "smoke.tar"
    subprocess.run(
        [
            "tar",
            "--sort=name",
            "--format=gnu",
            "--mtime=@1700000000",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
            str(where / "smoke-src"),
            "-cf",
            str(tar),
            "smoke",
        ],
        check=True,
    )
    shutil.rmtree(where / "smoke-src")
    with open(tar.with_name("smoke.tar.gz"), "wb") as f:
        subprocess.run(["gzip", "-6", "-n", "-c", str(tar)], stdout=f, check=True)
    with open(tar.with_name("smoke.tar.zst"), "wb") as f:
        subprocess.run(["zstd", "-q", "-3", "-c", str(tar)], stdout=f, check=True)
    return [Input(p.name, p, *scan_tar(p)) for p in sorted(where.glob("smoke.tar*"))]


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"bench dir (default {DEFAULT_DIR})"
    )
    ap.add_argument(
        "--inputs",
        default="all",
        help="comma-separated input names (linux.tar.gz), families (linux), globs (*.tar.gz)"
        " or paths; default all that exist, in a fixed order",
    )
    ap.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help=f"comma-separated, from {','.join(ALL_TOOLS)} (default {','.join(DEFAULT_TOOLS)})",
    )
    ap.add_argument("--runs", type=int, default=5, help="runs per tool and input (default 5)")
    ap.add_argument("--target", choices=("tmpfs", "disk", "both"), default="both")
    ap.add_argument("--tmpfs-dir", type=Path, default=DEFAULT_TMPFS)
    ap.add_argument("--disk-dir", type=Path, help="default DIR/dest")
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed GNU tar runs per input first (default 1)"
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="add this to the niceness of the run and every tool (e.g. -10 as root on a"
        " shared machine)",
    )
    ap.add_argument("--timeout", type=float, default=900, help="per run, seconds")
    ap.add_argument(
        "--rss-sample-ms", type=float, default=20, help="/proc sampling interval (0: off)"
    )
    ap.add_argument("--micro", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--micro-api-iters", type=int, default=100)
    ap.add_argument("--micro-cli-iters", type=int, default=20)
    ap.add_argument("--chrootarchive", help="command to run instead of the console script")
    ap.add_argument(
        "--snapshot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run a copy of the chrootarchive package taken at the start (default)",
    )
    ap.add_argument(
        "--report",
        type=Path,
        nargs="+",
        help="print the markdown of result JSON files and exit; with several, later files"
        " replace earlier ones input by input (targets are checked again)",
    )
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--md-out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="tiny input, one round, about 10 s")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any tool run failed")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        merged = merge_reports([json.loads(p.read_text()) for p in args.report])
        merged["targets"] = check_targets(merged["results"], merged.get("micro"))
        print(markdown(merged))
        return 0
    if os.geteuid() != 0:
        log("warning: not root; chrootarchive's default confinement and tar's owners need root")
    if args.nice:
        # Inherited by every tool alike: a shared machine's other work disturbs less.
        os.nice(args.nice)
    order = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in order:
        if t not in ALL_TOOLS:
            raise SystemExit(f"unknown tool {t!r}; choose from {', '.join(ALL_TOOLS)}")
    if "gnutar" in order:  # GNU tar first: it is the reference
        order.remove("gnutar")
        order.insert(0, "gnutar")
    snap_dir = Path(tempfile.mkdtemp(prefix="chrootarchive-snapshot-"))
    snap = snapshot_package(snap_dir) if args.snapshot else None
    if snap:
        # Everything this run starts imports the copy: edits made during a long run
        # do not mix versions (the worker is found from the parent's package path).
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(snap[0]), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        log(f"chrootarchive: running a copy of {snap[1]} (--no-snapshot to run it in place)")
        for problem in compiled.problems(Path(snap[1])):
            log(f"warning: {problem}")
    tools = probe_tools(order, args.chrootarchive)
    for t, why in tools.available.items():
        if why:
            log(f"{t} unavailable: {why}")

    smoke_dir: Path | None = None
    if args.smoke:
        smoke_dir = Path(
            tempfile.mkdtemp(
                prefix="chrootarchive-smoke-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
            )
        )
        args.runs = 1
        args.micro_api_iters = 3
        args.micro_cli_iters = 1
        args.warmup = 0
        inputs = build_smoke(smoke_dir)
        tmpfs_root = smoke_dir / "tmpfs"
        disk_root = Path(tempfile.mkdtemp(prefix="chrootarchive-smoke-", dir="/var/tmp"))
    else:
        sel = INPUT_ORDER if args.inputs == "all" else args.inputs.split(",")
        if args.inputs == "all":
            sel = [n for n in INPUT_ORDER if (args.dir / "inputs" / n).exists()]
            if not sel:
                raise SystemExit(f"no inputs in {args.dir / 'inputs'}: run bench/build_inputs.py")
        inputs = load_inputs(args.dir, [s.strip() for s in sel if s.strip()])
        tmpfs_root = args.tmpfs_dir
        disk_root = args.disk_dir or args.dir / "dest"
    targets = ["tmpfs", "disk"] if args.target == "both" else [args.target]
    roots = {"tmpfs": tmpfs_root, "disk": disk_root}
    for t in targets:
        roots[t].mkdir(parents=True, exist_ok=True)
        kind = fs_type(roots[t])
        if (t == "tmpfs") != (kind == "tmpfs"):
            log(f"warning: {t} target {roots[t]} is on {kind}")

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    stamp = started.replace(":", "")
    partial = None if args.smoke else args.dir / "results" / f"{stamp}.partial.json"
    report: dict[str, Any] = {
        "meta": {
            "started": started,
            "argv": sys.argv,
            "runs": args.runs,
            "warmup": args.warmup,
            "nice": os.nice(0),
            "tools": order,
            "versions": versions(tools),
            "chrootarchive_source": source_state(snap[1]) | {
                "path": snap[1], "compiled_problems": compiled.problems(Path(snap[1]))}
            if snap else {},
            "dest": {t: f"{roots[t]} ({fs_type(roots[t])})" for t in targets},
            "host": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "cpu": cpu_model(),
                "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            },
            "rss_method": (
                "peak_rss_kib = max(sum over the tree's processes of their VmHWM, sampled"
                f" from /proc every {args.rss_sample_ms} ms; parent+worker as reported by the"
                " tool's --json). maxrss_rusage_kib (wait4) is the largest single process and"
                " includes the spawner's pre-exec memory (see spawner_hwm_kib)."
            ),
            "spawner_hwm_kib": own_hwm_kib(),
        },
        "results": [],
    }
    try:
        for target in targets:
            for inp in inputs:
                log(
                    f"{inp.name} -> {target}: {inp.entries:,} entries,"
                    f" {inp.tar_bytes / 1e6:,.0f} MB"
                )
                report["results"].append(
                    run_input(
                        inp,
                        target,
                        roots[target],
                        tools,
                        order,
                        args.runs,
                        args.timeout,
                        args.rss_sample_ms,
                        args.warmup,
                    )
                )
                if partial:  # a long run that is stopped keeps what it measured
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    partial.write_text(json.dumps(report, indent=1) + "\n")
        if args.micro:
            log("micro-benchmark: one-file archive")
            mroot = Path(tempfile.mkdtemp(prefix="micro-", dir=roots.get("tmpfs", tmpfs_root)))
            try:
                report["micro"] = micro(
                    tools, order, mroot, args.micro_api_iters, args.micro_cli_iters
                )
            finally:
                remove_tree(mroot)
    finally:
        shutil.rmtree(snap_dir, ignore_errors=True)
        if smoke_dir:
            remove_tree(smoke_dir)
            remove_tree(disk_root)
    report["targets"] = check_targets(report["results"], report.get("micro"))
    md = markdown(report)
    print(md)

    if args.smoke:
        outs = [p for p in (args.json_out, args.md_out) if p]
    else:
        res_dir = args.dir / "results"
        res_dir.mkdir(parents=True, exist_ok=True)
        if partial:
            partial.unlink(missing_ok=True)
        (res_dir / f"{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")
        (res_dir / f"{stamp}.md").write_text(md + "\n")
        outs = [res_dir / f"{stamp}.json", res_dir / f"{stamp}.md"]
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    if args.md_out:
        args.md_out.write_text(md + "\n")
    for p in outs:
        log(f"wrote {p}")
    failed = _failures(report["results"], report.get("micro"))
    for f in failed:
        log(f"failed: {f}")
    return 1 if failed and args.strict else 0


def _failures(results: Iterable[dict[str, Any]], micro_res: dict[str, Any] | None) -> list[str]:
    out = [
        f"{r['input']} {r['target']} {tool}: {t['error']}"
        for r in results
        for tool, t in r["tools"].items()
        if "error" in t
    ]
    if micro_res:
        out += [
            f"micro {how} {tool}: {t['error']}"
            for how in ("api", "cli")
            for tool, t in micro_res[how].items()
            if "error" in t
        ]
    return out


if __name__ == "__main__":
    sys.exit(main())
