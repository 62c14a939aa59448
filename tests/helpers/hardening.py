"""Helpers for the hardening tests (limits, atomic mode, faults, lockdown, fuzzing).

- bombs and big archives built cheaply (a gzip stream of gigabytes of zeros is a
  repeated deflate block; 100,000 headers come from one template);
- finding the confined worker of a process, waiting for things, process states;
- running the command line as an unprivileged user (``setpriv``) with Debian's
  ``/usr/bin/python3`` and a world-readable copy of the package (the test
  interpreter lives under ``/root``, which uid 65534 cannot enter).
"""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from chrootarchive.runner import standby
from helpers import tarbuild as tb
from helpers.cli import CLIResult
from helpers.leaks import child_pids

_T = TypeVar("_T")

MiB = 1 << 20
GiB = 1 << 30

NOBODY = 65534
SETPRIV = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--"]
SYSTEM_PYTHON = "/usr/bin/python3"

SRC = Path(__file__).resolve().parents[2] / "src"


# -- archives ----------------------------------------------------------------------


def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(data + bytes(n))`` from ``crc == zlib.crc32(data)`` (zlib's
    ``crc32_combine`` for zeros), without touching ``n`` bytes."""
    if n == 0:
        return crc
    odd = [0xEDB88320] + [1 << i for i in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    crc ^= 0xFFFFFFFF
    while True:
        even = _gf2_square(odd)
        if n & 1:
            crc = _gf2_times(even, crc)
        n >>= 1
        if not n:
            break
        odd = _gf2_square(even)
        if n & 1:
            crc = _gf2_times(odd, crc)
        n >>= 1
        if not n:
            break
    return crc ^ 0xFFFFFFFF


def gzip_bomb(size: int, name: str = "zeros") -> bytes:
    """A valid ``.tar.gz`` holding one file of ``size`` zero bytes (a multiple of 1 MiB).

    Deflate's best ratio is about 1:1032, so 8 GiB of zeros take 8 MiB: the stream is
    one deflate block for the header, then one identical block per MiB of zeros
    (sync-flushed, so they repeat byte for byte), then the end and a correct trailer.
    Built in milliseconds.
    """
    assert size % MiB == 0 and size >= 2 * MiB
    hdr = tb.header(name, size=size if size < 8 * GiB else tb.base256(size, 12))
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = comp.compress(hdr + bytes(MiB)) + comp.flush(zlib.Z_SYNC_FLUSH)
    mid = comp.compress(bytes(MiB)) + comp.flush(zlib.Z_SYNC_FLUSH)
    tail = comp.compress(bytes(1024)) + comp.flush()
    total = len(hdr) + size + 1024
    crc = crc32_zeros(zlib.crc32(hdr), size + 1024)
    tail = tail[:-8] + struct.pack("<II", crc, total & 0xFFFFFFFF)
    return head + mid * (size // MiB - 1) + tail


def many_files(count: int, data: bytes = b"x", prefix: str = "f") -> bytes:
    """A plain tar of ``count`` tiny regular files ``f000000``.. (one template header)."""
    width = 6 if count <= 10**6 else len(str(count))
    template = bytearray(tb.header(prefix + "0" * width, size=len(data)))
    base = tb.checksum(bytes(template)) - sum((prefix + "0" * width).encode())
    body = tb.pad(data)
    parts = []
    for i in range(count):
        name = f"{prefix}{i:0{width}d}".encode()
        template[: len(name)] = name
        template[148:156] = format(base + sum(name), "06o").encode() + b"\x00 "
        parts.append(bytes(template))
        parts.append(body)
    parts.append(tb.end_of_archive())
    return b"".join(parts)


# -- processes ---------------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\x00") if a]
    except OSError:
        return []


def state(pid: int) -> str:
    """The process state letter (``R``, ``S``, ``Z``...) or ``gone``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "gone"


def alive(pid: int) -> bool:
    return state(pid) not in ("gone", "Z", "X")


def is_worker(pid: int) -> bool:
    return any("chrootarchive.jail.main" in a for a in cmdline(pid))


def workers_of(parent: int | None = None) -> list[int]:
    """Live worker processes that are children of ``parent`` (default: this process),
    this process's idle standby workers excepted (they have no job yet)."""
    kept = set(standby.running()) if parent in (None, os.getpid()) else set()
    return [pid for pid, _, st in child_pids(parent)
            if st != "Z" and is_worker(pid) and pid not in kept]


def wait_for(predicate: Callable[[], _T | None], timeout: float = 20.0,
             interval: float = 0.01, what: str = "condition") -> _T:
    """What ``predicate`` returns once it is true, asked every ``interval`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_worker(parent: int | None = None, timeout: float = 20.0) -> int:
    """The pid of the (first) live worker of ``parent``, waiting until there is one."""
    pids = wait_for(lambda: workers_of(parent), timeout, what="a worker process")
    assert isinstance(pids, list)
    return int(pids[0])


def on_small_tmpfs(mnt: Path, size: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with a tmpfs of ``size`` (``1m``) mounted on ``mnt``, in a private
    mount namespace of a child process (the machine's mount table is not touched)."""
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs -o size={size} chrootarchive-test "$1" && shift && exec "$@"',
         "sh", str(mnt), *argv],
        capture_output=True, timeout=120,
    )  # fmt: skip


class TmpfsRun:
    """What :func:`on_tmpfs` saw: the command's result, how long it took, and the
    filesystem afterwards (``statfs``)."""

    def __init__(self, proc: subprocess.CompletedProcess[bytes], fields: list[str]) -> None:
        self.proc = proc
        self.rc = int(fields[0])
        self.seconds = int(fields[1]) / 1e9
        bsize, blocks, bavail, files, ffree = (int(f) for f in fields[2:7])
        self.size = bsize * blocks
        self.avail = bsize * bavail
        self.files = files
        self.ffree = ffree
        self.err = proc.stderr.decode()


def on_tmpfs(mnt: Path, options: str, *argv: str) -> TmpfsRun:
    """Run ``argv`` with a tmpfs mounted with ``options`` (``size=64m,nr_inodes=2000``)
    on ``mnt``, in a private mount namespace of a child process; time it and read the
    filesystem's free space and inodes after it (the tmpfs goes with the child)."""
    out = mnt.parent / f".{mnt.name}.statfs"
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o "$1" chrootarchive-test "$2" || exit 99; mnt=$2; out=$3; '
         'shift 3; start=$(date +%s%N); "$@"; rc=$?; end=$(date +%s%N); '
         'echo "$rc $((end - start)) $(stat -f -c "%S %b %a %c %d" "$mnt")" >"$out"',
         "sh", options, str(mnt), str(out), *argv],
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    fields = out.read_text().split()
    out.unlink()
    return TmpfsRun(proc, fields)


def status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


class Trickler(threading.Thread):
    """Write ``pieces`` to ``fd`` one at a time, ``delay`` seconds apart, then close it
    (unless ``keep_open``). Stops quietly when the reader goes away.

    The descriptor is made non-blocking and every write waits at most 0.1 s at a time,
    so that ``stop.set(); join()`` always ends the thread, even when nobody reads the
    pipe any more (a blocked ``write`` could not be interrupted).
    """

    def __init__(self, fd: int, pieces: Iterable[bytes], delay: float,
                 *, keep_open: bool = False) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.pieces = pieces
        self.delay = delay
        self.keep_open = keep_open
        self.stop = threading.Event()
        self.written = 0
        self.broken = False

    def _write(self, piece: bytes) -> bool:
        view = memoryview(piece)
        while view:
            if self.stop.is_set():
                return False
            _, ready, _ = select.select([], [self.fd], [], 0.1)
            if not ready:
                continue
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                continue
            view = view[n:]
            self.written += n
        return True

    def run(self) -> None:
        try:
            os.set_blocking(self.fd, False)
            for piece in self.pieces:
                if not self._write(piece) or self.stop.wait(self.delay):
                    break
        except OSError:
            self.broken = True
        finally:
            if not self.keep_open:
                try:
                    os.close(self.fd)
                except OSError:
                    pass


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- unprivileged runs -------------------------------------------------------------


class Unprivileged:
    """A world-readable area under /tmp holding a copy of the package (``lib``) and work
    directories; runs the CLI or a script as uid/gid 65534 with ``/usr/bin/python3``."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="chrootarchive-unpriv-", dir="/tmp"))
        self.top.chmod(0o755)
        self.lib = self.top / "lib"
        shutil.copytree(SRC / "chrootarchive", self.lib / "chrootarchive",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, dirnames, filenames in os.walk(self.lib):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        self._n = 0

    def mkdir(self, name: str | None = None, *, owned: bool = True, mode: int = 0o755) -> Path:
        """A fresh directory under the area, owned by nobody unless ``owned=False``."""
        self._n += 1
        path = self.top / (name or f"d{self._n}")
        path.mkdir(mode=mode)
        path.chmod(mode)
        if owned:
            os.chown(path, NOBODY, NOBODY)
        return path

    def write(self, name: str, data: bytes) -> Path:
        path = self.top / name
        path.write_bytes(data)
        path.chmod(0o644)
        return path

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(self.lib),
                "LC_ALL": "C.UTF-8", "HOME": "/nonexistent"}

    def run(self, argv: list[str], *, input: bytes | None = None,
            timeout: float = 60) -> CLIResult:
        proc = subprocess.run([*SETPRIV, *argv], input=input or b"", capture_output=True,
                              env=self.env(), cwd="/", timeout=timeout)
        return CLIResult((proc.returncode, proc.stdout.decode("utf-8", "replace"),
                          proc.stderr.decode("utf-8", "replace")))

    def cli(self, *args: str | os.PathLike[str], input: bytes | None = None,
            timeout: float = 60) -> CLIResult:
        return self.run([SYSTEM_PYTHON, "-m", "chrootarchive", *(os.fspath(a) for a in args)],
                        input=input, timeout=timeout)

    def script(self, code: str, *args: str, timeout: float = 60) -> CLIResult:
        path = self.write(f"script{self._n}.py", code.encode())
        self._n += 1
        return self.run([SYSTEM_PYTHON, str(path), *args], timeout=timeout)

    def cleanup(self) -> None:
        shutil.rmtree(self.top, ignore_errors=True)
