"""Faults: killed processes, odd inputs, a full disk, odd destinations.

Whatever happens, the caller gets a clear error (one line from the command line, no
traceback) and nothing is left behind: no mount, no ``.pivot_root*`` directory, no
process (zombies included), no file descriptor.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import chrootarchive
from helpers import tarbuild as tb
from helpers.cli import CLI, CLIResult, assert_one_line_error, run_cli
from helpers.hardening import (
    Trickler,
    Unprivileged,
    alive,
    chunks,
    on_small_tmpfs,
    state,
    wait_for,
    wait_worker,
)
from helpers.leaks import LeakCheck, child_pids, pivot_leftovers


def B() -> tb.TarBuilder:
    return tb.TarBuilder()


def small() -> bytes:
    return B().dir("d").file("d/f", b"hello\n").symlink("d/s", "f").build()


@pytest.fixture(scope="module")
def unpriv() -> Iterator[Unprivileged]:
    area = Unprivileged()
    yield area
    area.cleanup()


# -- the worker killed -----------------------------------------------------------------


class _UntarThread(threading.Thread):
    """``untar`` from a pipe in a thread; ``error`` and ``finished`` (monotonic time)."""

    def __init__(self, dest: Path, *, confine: str | None = None) -> None:
        super().__init__(daemon=True)
        r, self.w = os.pipe()
        self.source = os.fdopen(r, "rb")
        self.dest = dest
        self.confine = confine
        self.error: BaseException | None = None
        self.result: object = None
        self.finished = 0.0

    def run(self) -> None:
        try:
            self.result = chrootarchive.untar(self.source, self.dest, confine=self.confine)
        except BaseException as err:
            self.error = err
        finally:
            self.finished = time.monotonic()

    def end(self, feeder: Trickler) -> None:
        """Stop ``feeder`` and close the input. Its end unblocks whatever still reads
        it: a caller stuck there, or the thread that feeds the worker, which may outlive
        the call."""
        feeder.stop.set()
        feeder.join()
        os.close(self.w)
        self.join(30)
        self.source.close()


def _kill_worker_mid_stream(tmp_path: Path, *, flowing: bool) -> tuple[float, _UntarThread]:
    dest = tmp_path / "dest"
    job = _UntarThread(dest)
    job.start()
    head = B().file("first", b"1").build(eoa=False) + tb.header("big", size=1 << 32)
    pieces = [head, bytes(2 << 20)] + ([bytes(64 << 10)] * 1_000_000 if flowing else [])
    feeder = Trickler(job.w, pieces, 0.001 if flowing else 0, keep_open=True)
    feeder.start()
    try:
        wait_for(lambda: (dest / "big").exists(), what="the worker to be writing 'big'")
        worker = wait_worker()
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        job.join(3)
        delay = (job.finished or time.monotonic()) - killed
    finally:
        job.end(feeder)
    return delay, job


def test_worker_killed_mid_stream(tmp_path: Path) -> None:
    check = LeakCheck(tmp_path, fds=True)
    delay, job = _kill_worker_mid_stream(tmp_path, flowing=True)
    assert isinstance(job.error, chrootarchive.WorkerError), job.error
    assert "SIGKILL" in str(job.error)
    assert delay < 1.0, f"the parent noticed after {delay:.2f}s"
    check.assert_clean()


def test_worker_killed_while_input_stalls(tmp_path: Path) -> None:
    """The input stops arriving (a stalled network), then the worker dies: the parent
    must not wait for more input to notice."""
    check = LeakCheck(tmp_path, fds=True)
    delay, job = _kill_worker_mid_stream(tmp_path, flowing=False)
    assert isinstance(job.error, chrootarchive.WorkerError), job.error
    assert delay < 1.0, (
        f"{delay:.2f}s after its worker was killed the parent had not noticed "
        "(it waits for more input)")
    check.assert_clean()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_worker_killed_cli(sig: signal.Signals, tmp_path: Path) -> None:
    """A signal to the worker alone (the OOM killer, a supervisor's ``kill -INT``): one
    line naming it, status 70. SIGINT was caught as Python's KeyboardInterrupt and
    reported as an internal error, "KeyboardInterrupt: " and nothing more."""
    dest = tmp_path / "dest"
    check = LeakCheck(tmp_path)
    proc = subprocess.Popen([*CLI, "untar", "-", str(dest)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    head = B().file("first", b"1").build(eoa=False) + tb.header("big", size=1 << 32)
    feeder = Trickler(proc.stdin.fileno(), [head] + [bytes(1 << 20)] * 20_000, 0.001,
                      keep_open=True)
    feeder.start()
    try:
        wait_for(lambda: (dest / "big").exists(), what="the worker to be writing 'big'")
        os.kill(wait_worker(proc.pid), sig)
        rc = proc.wait(10)
    finally:
        feeder.stop.set()
        proc.kill()  # its end of the pipe goes: a blocked feeder gets EPIPE
        proc.wait()
        feeder.join()
        proc.stdin.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    line = assert_one_line_error(CLIResult((rc, "", err)), rc=70,
                                 mentions=("worker", f"killed by {sig.name}"))
    assert "KeyboardInterrupt" not in line and "bug" not in line, line
    check.assert_clean()


# -- the worker's file helper killed ----------------------------------------------------


def _many_small_files() -> list[bytes]:
    """An archive of 6,000 small files (21 MB) in 64 KiB pieces: from a pipe, the worker
    forks its helper for them and hands them over in batches. (Fed 4 ms apart, 16 MB/s:
    the worker goes on alone while its helper is stopped, so it must not run out.)"""
    b = B()
    for d in range(60):
        b.dir(f"d{d}")
        for f in range(100):
            b.file(f"d{d}/f{f}", os.urandom(3000))
    data = b.build()
    return [data[i:i + (64 << 10)] for i in range(0, len(data), 64 << 10)]


def _kill_the_helper(parent: int, feeder: Trickler) -> None:
    """SIGKILL the worker's helper (its child) with batches in flight: it is stopped
    first, so that the worker's next batches wait for it, then killed. (A helper that
    dies between batches loses nothing: the worker finishes the next batch itself.)"""
    worker = wait_worker(parent)
    helpers = wait_for(lambda: child_pids(worker), 20, what="the worker's file helper")
    assert isinstance(helpers, list)
    helper = helpers[0][0]
    os.kill(helper, signal.SIGSTOP)
    time.sleep(0.1)  # a batch every 64 files: some are sent to it meanwhile
    assert feeder.written < sum(map(len, feeder.pieces)) // 2, "the helper came too late"
    os.kill(helper, signal.SIGKILL)


@pytest.mark.parametrize("atomic", [False, True], ids=["in-place", "atomic"])
def test_helper_killed_cli(atomic: bool, tmp_path: Path) -> None:
    """The out-of-memory killer takes the helper mid-archive: one line naming it and the
    signal, status 70 as for the worker, nothing left running or mounted; what was in
    the destination is kept, and with --atomic (into a missing destination) nothing is
    made."""
    dest = tmp_path / "dest"
    if not atomic:
        dest.mkdir()
        (dest / "kept").write_bytes(b"there before\n")
    check = LeakCheck(tmp_path)
    proc = subprocess.Popen([*CLI, "untar", *(["--atomic"] if atomic else []), "-", str(dest)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    feeder = Trickler(proc.stdin.fileno(), _many_small_files(), 0.004, keep_open=True)
    feeder.start()
    try:
        _kill_the_helper(proc.pid, feeder)
        rc = proc.wait(20)
    finally:
        feeder.stop.set()
        proc.kill()
        proc.wait()
        feeder.join()
        proc.stdin.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert_one_line_error(CLIResult((rc, "", err)), rc=70,
                          mentions=("file helper", "killed by SIGKILL"))
    check.assert_clean()
    if atomic:
        assert os.listdir(tmp_path) == [], "a destination or staging directory was left"
    else:
        assert (dest / "kept").read_bytes() == b"there before\n"


@pytest.mark.parametrize("confine", ["pivot", "userns"])
def test_helper_killed_api(confine: str, tmp_path: Path) -> None:
    """Through the API: a WorkerError, raised while the input still flows, and no
    descriptor, process or mount left in the caller."""
    check = LeakCheck(tmp_path, fds=True)
    job = _UntarThread(tmp_path / "dest", confine=confine)
    job.start()
    feeder = Trickler(job.w, _many_small_files(), 0.004, keep_open=True)
    feeder.start()
    try:
        _kill_the_helper(os.getpid(), feeder)
        job.join(20)
        assert not job.is_alive(), "the call did not end when its helper was killed"
    finally:
        job.end(feeder)
    assert isinstance(job.error, chrootarchive.WorkerError), job.error
    assert "file helper was killed by SIGKILL" in str(job.error)
    check.assert_clean()


# -- the parent killed -----------------------------------------------------------------


@pytest.mark.parametrize("confine", ["pivot", "chroot", "userns"])
def test_parent_killed_worker_dies(confine: str, tmp_path: Path) -> None:
    """SIGKILL the command while its worker waits for input: the worker dies too
    (PR_SET_PDEATHSIG), and leaves no pivot directory behind."""
    dest = tmp_path / "dest"
    proc = subprocess.Popen([*CLI, "untar", "--confine", confine, "-", str(dest)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(B().file("first", b"1").build(eoa=False) + tb.header("big", size=4 << 20)
                     + bytes(2 << 20))
    proc.stdin.flush()
    try:
        wait_for(lambda: (dest / "big").exists(), what="the worker to be writing 'big'")
        worker = wait_worker(proc.pid)
        assert state(worker) in ("S", "R", "D")
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not alive(worker), 5, what="the worker to die with its parent")
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
    assert pivot_leftovers(tmp_path) == []
    assert [pid for pid, _, _ in child_pids(worker)] == []


# -- odd inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [512 + 200, 1536 + 100, 3000], ids=["data", "next-header",
                                                                    "end"])
def test_input_closed_early_cli(cut: int, tmp_path: Path) -> None:
    data = B().file("a", b"x" * 1000).file("b", b"y" * 2000).build()[:cut]
    result = run_cli("untar", "-", tmp_path / "dest", input=data)
    assert_one_line_error(result, rc=1, mentions=("truncated",))


def test_input_closed_within_the_first_header(tmp_path: Path) -> None:
    result = run_cli("untar", "-", tmp_path / "dest", input=small()[:100])
    assert_one_line_error(result, rc=1, mentions=("not a tar archive",))


def test_input_closed_at_an_entry_boundary(tmp_path: Path) -> None:
    """No end-of-archive marker at all: accepted, as GNU tar and Go's archive/tar do."""
    data = B().file("a", b"x" * 1000).build(eoa=False)
    result = run_cli("untar", "-", tmp_path / "dest", input=data)
    assert result.rc == 0, result.err
    assert (tmp_path / "dest" / "a").read_bytes() == b"x" * 1000


def test_input_closed_early_names_the_entry(tmp_path: Path) -> None:
    data = B().file("first", b"1").file("second", b"y" * 5000).build()[:2000]
    with pytest.raises(chrootarchive.MalformedArchiveError) as info:
        chrootarchive.untar(io.BytesIO(data), tmp_path / "dest")
    assert info.value.entry == "second"
    assert (tmp_path / "dest" / "first").read_bytes() == b"1"


def test_input_closed_early_compressed(tmp_path: Path) -> None:
    data = tb.compress(B().file("a", os.urandom(100_000)).build(), "gzip")[:30_000]
    result = run_cli("untar", "-", tmp_path / "dest", input=data)
    assert_one_line_error(result, rc=1, mentions=("truncated",))


def test_bytes_after_gzip_data_are_named_as_such(tmp_path: Path) -> None:
    """GNU gzip: "decompression OK, trailing garbage ignored" (and GNU tar exits 2).
    The message said only "truncated", of an archive that was whole; trailing zeros
    (a tape's padding) are accepted, as gzip accepts them."""
    data = tb.compress(B().file("a", b"x").build(), "gzip")
    result = run_cli("untar", "-", tmp_path / "dest", input=data + b"garbage!")
    assert_one_line_error(result, rc=1, mentions=(
        "gzip data is truncated, or followed by bytes that are not gzip data",))
    result = run_cli("untar", "-", tmp_path / "zeros", input=data + bytes(1024))
    assert result.rc == 0, result.err


def test_empty_input_is_an_empty_archive(tmp_path: Path) -> None:
    result = run_cli("untar", "-", tmp_path / "dest", input=b"")
    assert result.rc in (0, 1), result
    assert "Traceback" not in result.err


def test_trickling_zeros_are_an_empty_archive(tmp_path: Path) -> None:
    """10 KB of zeros arriving 512 bytes at a time is a valid, empty archive."""
    dest = tmp_path / "dest"
    proc = subprocess.Popen([*CLI, "untar", "-", str(dest)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    feeder = Trickler(proc.stdin.fileno(), chunks(bytes(10 * 1024), 512), 0.03,
                      keep_open=True)
    feeder.start()
    feeder.join(30)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert os.listdir(dest) == []


def test_trickling_archive(tmp_path: Path) -> None:
    """A real archive arriving in small pieces with pauses unpacks whole."""
    data = B().dir("d").file("d/a", b"a" * 3000).file("d/b", b"b" * 700).build()
    r, w = os.pipe()
    feeder = Trickler(w, chunks(data, 333), 0.005)
    feeder.start()
    with os.fdopen(r, "rb") as source:
        result = chrootarchive.untar(source, tmp_path / "dest")
    feeder.join()
    assert result.entries == 3
    assert (tmp_path / "dest" / "d" / "a").read_bytes() == b"a" * 3000


@pytest.mark.parametrize("padding", [0, 512, 10 * 1024, 3 << 20])
@pytest.mark.parametrize("how", ["pipe", "file", "gzip"])
def test_zero_padded_input(
    how: str, padding: int, tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    """Archives padded with zeros (blocking factor, dd, tapes) are fine, and the whole
    input is read (the writer of a pipe does not get EPIPE)."""
    data = small() + bytes(padding)
    if how == "gzip":
        data = tb.compress(data, "gzip")
    dest = tmp_path / "dest"
    if how == "file":
        result = run_cli("untar", write_archive(data), dest)
    else:
        result = run_cli("untar", "-", dest, input=data)
    assert result.rc == 0, result.err
    assert (dest / "d" / "f").read_bytes() == b"hello\n"


def test_zero_padded_pipe_writer_sees_no_epipe(tmp_path: Path) -> None:
    """A producer writing the archive and then padding never sees a broken pipe."""
    data = small() + bytes(2 << 20)
    producer = subprocess.Popen(["sh", "-c", 'cat "$1"; echo "rc=$?" >&2', "sh", "-"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    assert producer.stdout is not None and producer.stdin is not None
    consumer = subprocess.Popen([*CLI, "untar", "-", str(tmp_path / "dest")],
                                stdin=producer.stdout, stderr=subprocess.PIPE)
    producer.stdout.close()
    _, perr = producer.communicate(data, timeout=60)
    _, cerr = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, cerr
    assert producer.returncode == 0 and b"rc=0" in perr, perr



@pytest.mark.parametrize("how", ["file", "stdin"])
def test_list_does_not_decompress_what_follows_the_end(how: str, tmp_path: Path) -> None:
    """32 GiB of zeros in 1 MB of zstd after the end of the archive: there is nothing
    to list there, and list decompressed it all (half a minute; 1 MB of bzip2 holds
    1 TiB: two hours). Now it reads the rest as it comes (a pipe's writer still sees
    no EPIPE), decompressing at most 16 MiB of it."""
    import zstandard

    gib = zstandard.ZstdCompressor(level=1).compress(bytes(1 << 30))
    archive = tmp_path / "padded.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(small()) + gib * 32)
    assert archive.stat().st_size < 2_000_000
    start = time.monotonic()
    if how == "file":
        result = run_cli("list", archive, timeout=120)
    else:
        result = run_cli("list", "-", input=archive.read_bytes(), timeout=120)
    seconds = time.monotonic() - start
    assert result.rc == 0 and result.err == "", result
    assert result.out.splitlines() == ["d", "d/f", "d/s"]
    assert seconds < 8, seconds

def _bytes_read() -> int:
    with open("/proc/self/io") as io_counts:
        return int(next(line for line in io_counts if line.startswith("rchar:")).split()[1])


def test_list_of_a_plain_tar_in_a_file_skips_each_entrys_data(tmp_path: Path) -> None:
    """A plain tar in a regular file is listed in place, each entry's data skipped by
    lseek, as GNU tar's -t skips it: 4 GiB of data (a hole in the file here) is not
    read; it was read through a pipe, all of it. Cut short inside that data, the
    archive is still an error that names the entry."""
    archive = tmp_path / "big.tar"
    with open(archive, "wb") as out:
        out.write(tb.member("first", b"1") + tb.header("big", size=4 << 30))
        out.seek(4 << 30, os.SEEK_CUR)  # the data, a hole
        out.write(tb.member("last", b"2") + tb.end_of_archive())
    before = _bytes_read()
    names = [entry.name for entry in chrootarchive.list_entries(archive)]
    assert names == ["first", "big", "last"]
    assert _bytes_read() - before < 4 << 20, _bytes_read() - before
    os.truncate(archive, 3 * 512 + (1 << 30))
    with pytest.raises(chrootarchive.MalformedArchiveError) as raised:
        list(chrootarchive.list_entries(archive))
    assert raised.value.entry == "big" and "truncated" in raised.value.message, raised.value


def test_list_of_an_archive_that_cannot_be_read_says_so() -> None:
    """A read error of the archive itself (EIO: /proc/self/mem at offset 0) is the
    source's (exit status 4), named; it was reported as standard output's ("cannot
    write the listing")."""
    result = run_cli("list", "/proc/self/mem")
    line = assert_one_line_error(result, rc=4, mentions=("/proc/self/mem",
                                                         "cannot read the archive"))
    assert "Input/output error" in line and "standard output" not in line, line


def test_missing_archive_is_not_an_internal_error(tmp_path: Path) -> None:
    result = run_cli("untar", tmp_path / "no-such.tar", tmp_path / "dest")
    line = assert_one_line_error(result, rc=(1, 2, 4), mentions=("no-such.tar",))
    assert "no such file" in line.lower()


# -- a full disk -----------------------------------------------------------------------


def test_full_disk_names_the_entry(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    """A 1 MiB tmpfs mounted in a private mount namespace of a child process."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    data = B().file("small", b"s").dir("d").file("d/big", os.urandom(3 << 20)) \
        .file("after", b"a").build()
    path = write_archive(data)
    proc = on_small_tmpfs(mnt, "1m", *CLI, "untar", "--reserve", "0", str(path),
                          str(mnt / "dest"))
    result = CLIResult((proc.returncode, proc.stdout.decode(), proc.stderr.decode()))
    line = assert_one_line_error(result, rc=4, mentions=("no space left",))
    assert "d/big" in line, line
    assert list(mnt.iterdir()) == []


def test_full_disk_api_error(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    path = write_archive(B().file("big", os.urandom(3 << 20)).build())
    code = (
        "import sys, chrootarchive\n"
        "try:\n"
        "    chrootarchive.untar(sys.argv[1], sys.argv[2], chrootarchive.UnpackOptions(\n"
        "        limits=chrootarchive.Limits(reserve=0)))\n"
        "except chrootarchive.DestinationError as e:\n"
        "    print(type(e).__name__, e.exit_status, e.entry, e.message, sep='|')\n"
    )
    proc = on_small_tmpfs(mnt, "1m", *CLI[:1], "-c", code, str(path), str(mnt / "dest"))
    assert proc.returncode == 0, proc.stderr.decode()
    name, status, entry, message = proc.stdout.decode().strip().split("|")
    assert (name, status, entry) == ("DestinationError", "4", "big")
    assert "no space left" in message.lower()


# -- odd destinations ------------------------------------------------------------------


def test_destination_is_a_file(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    dest = tmp_path / "file"
    dest.write_bytes(b"not a directory")
    result = run_cli("untar", write_archive(small()), dest)
    line = assert_one_line_error(result, rc=4, mentions=("not a directory",))
    assert str(dest.name) in line
    assert dest.read_bytes() == b"not a directory"
    with pytest.raises(chrootarchive.DestinationError):
        chrootarchive.untar(io.BytesIO(small()), dest)


def test_destination_below_a_file(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    (tmp_path / "file").write_bytes(b"x")
    result = run_cli("untar", write_archive(small()), tmp_path / "file" / "dest")
    assert_one_line_error(result, rc=4, mentions=("not a directory",))


def test_destination_symlink_to_directory_is_followed(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    """The destination path is the user's own: a symlink there is followed (only
    symlinks *inside* the destination are the archive's business)."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    os.symlink("real", link)
    result = run_cli("untar", write_archive(small()), link)
    assert result.rc == 0, result.err
    assert (real / "d" / "f").read_bytes() == b"hello\n"
    assert os.readlink(link) == "real"
    assert pivot_leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["nowhere", "/nonexistent-chrootarchive/x"])
def test_destination_dangling_symlink(
    target: str, tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    link = tmp_path / "dest-link"
    os.symlink(target, link)
    result = run_cli("untar", write_archive(small()), link)
    line = assert_one_line_error(result, rc=4)
    problem = line.replace(str(link), "").lower()
    assert any(w in problem for w in ("dangling", "symlink", "no such", "does not exist")), (
        f"a symlink to nowhere is not explained: {line}")
    assert os.readlink(link) == target
    assert not (tmp_path / "nowhere").exists()
    assert not os.path.exists("/nonexistent-chrootarchive")


def test_destination_not_writable_unprivileged(unpriv: Unprivileged) -> None:
    archive = unpriv.write("small.tar", small())
    dest = unpriv.mkdir("root-owned", owned=False)
    result = unpriv.cli("untar", archive, dest)
    line = assert_one_line_error(result, rc=4, mentions=("permission denied",))
    assert str(dest) in line, f"the error does not say which destination: {line}"
    assert os.listdir(dest) == []


def test_destination_parent_not_writable_unprivileged(unpriv: Unprivileged) -> None:
    archive = unpriv.write("small2.tar", small())
    parent = unpriv.mkdir("root-owned-parent", owned=False)
    result = unpriv.cli("untar", archive, parent / "dest")
    line = assert_one_line_error(result, rc=4, mentions=("permission denied",))
    assert str(parent / "dest") in line
    assert not (parent / "dest").exists()


def test_unprivileged_success_for_comparison(unpriv: Unprivileged) -> None:
    archive = unpriv.write("small3.tar", small())
    dest = unpriv.mkdir("mine")
    result = unpriv.cli("untar", archive, dest)
    assert result.rc == 0, result.err
    assert (dest / "d" / "f").read_bytes() == b"hello\n"


# -- SIGTERM ---------------------------------------------------------------------------


def test_sigterm_stops_list_of_a_stalled_pipe(tmp_path: Path) -> None:
    """``list -`` of a pipe that stalls: SIGTERM ends it at once. It waited for its
    feeding thread, blocked reading the pipe, until the pipe closed (a review of
    issue 16's twenty-first round)."""
    data = B().file("first", b"1").file("big", os.urandom(4 << 20)).build()
    proc = subprocess.Popen([*CLI, "list", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(data[:1 << 20])
        proc.stdin.flush()
        time.sleep(0.5)  # the command line is under way, its reader waiting for more
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(5)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert rc == 143, err
    assert err.endswith("chrootarchive: error: terminated\n"), err


def test_sigterm_to_the_whole_process_group(tmp_path: Path) -> None:
    """systemd's stop and ``kill -- -PGID`` signal the worker too: whatever the worker
    does first, the command reports the termination (exit 143). It raced: a worker
    reaped by a wait that the handler cut short was killed again (ProcessLookupError,
    "this is a bug", exit 70), or its death replaced the termination."""
    archive = tmp_path / "many.tar"
    builder = B()
    for i in range(20_000):
        builder.file(f"d{i % 50}/f{i}", b"x")
    archive.write_bytes(builder.build())
    # The signal lands at 15% to 85% of an uninterrupted run, however fast the machine
    # (fixed delays of 0.1-0.45 s came after the end of most runs on a fast one).
    start = time.monotonic()
    subprocess.run([*CLI, "untar", "--atomic", str(archive), str(tmp_path / "whole")],
                   check=True, stdout=subprocess.DEVNULL)
    took = time.monotonic() - start
    outcomes = []
    for round_ in range(8):
        dest = tmp_path / f"dest{round_}"
        proc = subprocess.Popen([*CLI, "untar", "--atomic", str(archive), str(dest)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        assert proc.stderr is not None
        time.sleep(took * (0.15 + 0.1 * round_))
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # already done
        rc = proc.wait(10)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        outcomes.append(rc)
        assert rc in (0, 143), err
        if rc == 143:
            assert err == "chrootarchive: error: terminated\n", err
            assert not dest.exists()
    assert outcomes.count(143) >= 4, outcomes
    assert [p for p in os.listdir(tmp_path) if p.startswith(".chrootarchive")] == []


_SIGTERM_IN_A_CALLBACK = """
import signal, sys, time, weakref
from chrootarchive import cli
cli._catch_termination()
class X: pass
x = X()
def callback(_):
    signal.raise_signal(signal.SIGTERM)  # the handler runs here, where nothing propagates
keep = weakref.ref(x, callback)
try:
    del x
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.001)
except cli.Terminated:
    print("unwound")
    sys.exit(143)
print("went on")
"""


def test_sigterm_inside_a_weakref_callback_still_unwinds() -> None:
    """SIGTERM landing in a weakref callback of the import system (as the modules
    load): the exception cannot propagate there, so Python printed "Exception ignored"
    with a traceback and the command went on. It is delivered again, outside."""
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_IN_A_CALLBACK],
                          capture_output=True, text=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (143, "unwound\n", ""), proc


def test_sigterm_while_the_command_line_starts(tmp_path: Path) -> None:
    """A SIGTERM as the modules load or the arguments are parsed: one line and 143 (or
    the default action, -15, before the handler is in place). The handler imported a
    module, which a signal could cut short, and the termination was caught only once
    the command ran: tracebacks, exit status 1 (a review of the round)."""
    archive = tmp_path / "a.tar"
    archive.write_bytes(B().file("a", b"a").build())
    seen = set()
    for i in range(24):
        proc = subprocess.Popen([*CLI, "list", str(archive)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        assert proc.stderr is not None
        time.sleep(0.005 * i)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        seen.add(rc)
        assert "Traceback" not in err, err
        assert (rc, err) in ((-signal.SIGTERM, ""), (0, ""),
                             (143, "chrootarchive: error: terminated\n")), (rc, err)
    assert 143 in seen, seen
