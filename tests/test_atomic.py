"""All-or-nothing unpacking (``atomic=True``, ``--atomic``).

The archive is unpacked into ``.chrootarchive-stage-*`` beside the destination and
renamed into place only when everything succeeded. After any failure (a bad entry, a
limit, a killed worker, a full disk) the destination does not exist, or, if it existed
empty, is unchanged; no staging directory is left. Staging directories that a killed
process left are recognisable by their name and removed by the next atomic run in the
same parent directory (never one that a live process still works in).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive import Limits, UnpackOptions
from helpers import tarbuild as tb
from helpers import tree
from helpers.cli import CLI, CLIResult, assert_one_line_error, run_cli
from helpers.hardening import Trickler, alive, wait_for, wait_worker
from helpers.leaks import LeakCheck

PREFIX = ".chrootarchive-stage-"
ATOMIC = UnpackOptions(atomic=True)


def B() -> tb.TarBuilder:
    return tb.TarBuilder()


def archive() -> bytes:
    return (
        B().dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n")
        .symlink("etc/link", "hosts").dir("var/lib", mode=0o700).file("bin/tool", b"#!",
                                                                       mode=0o755)
        .build()
    )


def stages(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.startswith(PREFIX))


def parent_snapshot(parent: Path) -> tree.Snapshot:
    """The parent directory (its own mtime moves: a staging directory came and went)."""
    return tree.snapshot(parent, ignore_root_mtime=True)


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    p = tmp_path / "parent"
    p.mkdir()
    (p / "neighbour").write_bytes(b"unrelated\n")
    return p


# -- success ---------------------------------------------------------------------------


def test_success_renames_into_place(parent: Path) -> None:
    dest = parent / "dest"
    r = chrootarchive.untar(io.BytesIO(archive()), dest, ATOMIC)
    assert r.entries == 5 and r.confinement == "pivot"
    assert (dest / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert os.readlink(dest / "etc" / "link") == "hosts"
    assert (dest / "var" / "lib").stat().st_mode & 0o777 == 0o700
    assert stages(parent) == []
    assert (dest.stat().st_mode & 0o777) == 0o755
    # The same tree as a plain unpack.
    plain = parent / "plain"
    chrootarchive.untar(io.BytesIO(archive()), plain)
    implied = {"bin", "var"}  # directories the archive did not list: made "now"
    tree.assert_same(tree.snapshot(plain, ignore_root_mtime=True),
                     tree.snapshot(dest, ignore_root_mtime=True),
                     ignore=lambda path, key: path in implied and key == "mtime_ns")


def test_success_into_existing_empty_destination(parent: Path) -> None:
    dest = parent / "dest"
    dest.mkdir()
    chrootarchive.untar(io.BytesIO(archive()), dest, ATOMIC)
    assert (dest / "bin" / "tool").read_bytes() == b"#!"
    assert stages(parent) == []


def test_success_cli(parent: Path, write_archive: Callable[..., Path]) -> None:
    path = write_archive(tb.compress(archive(), "zstd"), ".tar.zst")
    result = run_cli("untar", "--atomic", "--json", path, parent / "a" / "b" / "dest")
    assert result.rc == 0, result.err
    assert json.loads(result.out)["entries"] == 5
    assert (parent / "a" / "b" / "dest" / "etc" / "hosts").exists()
    assert stages(parent / "a" / "b") == []


def test_apply_layer_atomic(parent: Path) -> None:
    layer = B().file("a", b"1").file(".wh.gone").file("d/.wh..wh..opq").build()
    size = chrootarchive.apply_layer(io.BytesIO(layer), parent / "dest", ATOMIC).size
    assert size == 1
    assert sorted(os.listdir(parent / "dest")) == ["a", "d"]
    assert stages(parent) == []


def test_non_empty_destination_is_refused(parent: Path) -> None:
    dest = parent / "dest"
    dest.mkdir()
    (dest / "keep").write_bytes(b"mine")
    before = parent_snapshot(parent)
    with pytest.raises(chrootarchive.DestinationError) as info:
        chrootarchive.untar(io.BytesIO(archive()), dest, ATOMIC)
    assert "empty" in info.value.message
    tree.assert_same(before, parent_snapshot(parent))


def test_atomic_with_root_is_refused(parent: Path) -> None:
    """Arguments that do not go together: a ValueError (tests/test_api.py)."""
    with pytest.raises(ValueError, match="atomic=True is not available with root="):
        chrootarchive.untar_with_root(io.BytesIO(archive()), "sub", parent, ATOMIC)
    assert not (parent / "sub").exists()


# -- failures leave nothing ------------------------------------------------------------


FAILURES: dict[str, tuple[Callable[[], bytes], Limits, type[Exception]]] = {
    "breakout": (lambda: B().file("a", b"1").file("b", b"2").file("../../evil", b"x").build(),
                 Limits(), chrootarchive.BreakoutError),
    "malformed": (lambda: tb.truncate(B().file("a", b"1").file("b", b"2" * 5000).build(), 2000),
                  Limits(), chrootarchive.MalformedArchiveError),
    "bad-hardlink": (lambda: B().file("a", b"1").hardlink("h", "missing").build(),
                     Limits(), chrootarchive.ArchiveError),
    "limit": (lambda: B().file("a", b"1").file("b").file("c").build(),
              Limits(max_entries=2), chrootarchive.LimitExceededError),
}


@pytest.mark.parametrize("existing", [False, True], ids=["missing", "empty"])
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failure_leaves_nothing(failure: str, existing: bool, parent: Path) -> None:
    build, limits, error = FAILURES[failure]
    dest = parent / "dest"
    if existing:
        dest.mkdir(mode=0o711)
        os.utime(dest, ns=(1_000_000_000, 1_000_000_000))
    before = parent_snapshot(parent)
    with pytest.raises(error):
        chrootarchive.untar(io.BytesIO(build()), dest,
                            UnpackOptions(atomic=True, limits=limits))
    assert dest.exists() == existing
    tree.assert_same(before, parent_snapshot(parent), "the parent directory changed")


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failure_leaves_nothing_cli(
    failure: str, parent: Path, write_archive: Callable[..., Path]
) -> None:
    build, limits, _ = FAILURES[failure]
    flags = ["--max-entries", str(limits.max_entries)] if failure == "limit" else []
    before = parent_snapshot(parent)
    result = run_cli("untar", "--atomic", *flags, write_archive(build()), parent / "dest")
    assert_one_line_error(result, rc=1)
    assert not (parent / "dest").exists()
    tree.assert_same(before, parent_snapshot(parent), "the parent directory changed")


def _pipe_source() -> tuple[io.BufferedReader, int]:
    r, w = os.pipe()
    return os.fdopen(r, "rb"), w


def test_killed_worker_leaves_nothing(parent: Path) -> None:
    """Kill the worker mid-stream (the API runs in a thread, fed from a pipe)."""
    dest = parent / "dest"
    before = parent_snapshot(parent)
    check = LeakCheck(parent)
    source, w = _pipe_source()
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            chrootarchive.untar(source, dest, ATOMIC)
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    head = B().file("first", b"1").build(eoa=False) + tb.header("big", size=1 << 30)
    feeder = Trickler(w, [head] + [bytes(64 << 10)] * 100_000, 0.001, keep_open=True)
    feeder.start()
    try:
        wait_for(lambda: any((parent / s / "first").exists() for s in stages(parent)),
                 what="the first entry in the staging directory")
        os.kill(wait_worker(), signal.SIGKILL)
        thread.join(10)
        assert not thread.is_alive(), "untar did not return after its worker was killed"
    finally:
        feeder.stop.set()
        feeder.join()
        os.close(w)  # the end of the input: whatever still reads it stops
        thread.join(30)
        source.close()
    assert isinstance(outcome.get("error"), chrootarchive.WorkerError), outcome
    assert not dest.exists()
    tree.assert_same(before, parent_snapshot(parent), "the parent directory changed")
    check.assert_clean()


def _stopped_mid_run(cmd: list[str], started: Callable[[], object],
                     stop: Callable[[int, int], None]) -> CLIResult:
    """Run ``cmd`` with a stream trickled into its standard input (an entry, then a
    1 GiB file, a MiB at a time); once ``started()``, ``stop(pid, worker pid)``."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    head = B().file("first", b"1").build(eoa=False) + tb.header("big", size=1 << 30)
    feeder = Trickler(proc.stdin.fileno(), [head] + [bytes(1 << 20)] * 2000, 0.001,
                      keep_open=True)
    feeder.start()
    try:
        wait_for(started, what="the command to be under way")
        worker = wait_worker(proc.pid)
        stop(proc.pid, worker)
        rc = proc.wait(10)
        wait_for(lambda: not alive(worker), 5, what="the worker to be stopped")
    finally:
        feeder.stop.set()
        proc.kill()  # its end of the pipe goes: a blocked feeder gets EPIPE
        proc.wait()
        feeder.join()
        proc.stdin.close()
    result = CLIResult((rc, "", proc.stderr.read().decode()))
    proc.stderr.close()
    return result


def test_killed_worker_leaves_nothing_cli(parent: Path) -> None:
    dest = parent / "dest"
    before = parent_snapshot(parent)
    result = _stopped_mid_run(
        [*CLI, "untar", "--atomic", "-", str(dest)],
        lambda: any((parent / s / "first").exists() for s in stages(parent)),
        lambda pid, worker: os.kill(worker, signal.SIGKILL))
    assert_one_line_error(result, rc=70, mentions=("worker", "SIGKILL"))
    assert not dest.exists()
    tree.assert_same(before, parent_snapshot(parent), "the parent directory changed")


@pytest.mark.parametrize("command", ["untar", "tar"])
def test_sigterm_leaves_nothing_cli(parent: Path, command: str) -> None:
    """SIGTERM (``docker stop``, a CI job's timeout) unwinds as Ctrl-C does: exit
    status 143, one line, the worker stopped, and neither the ``--atomic`` staging
    directory nor ``tar``'s partial output left. Both were left behind (fuzzing the
    command line, issue 16, twentieth round)."""
    dest = parent / "dest"
    before = parent_snapshot(parent)
    out = parent / "out.tar"
    src = parent.parent / "src"  # tar: a sparse file of 64 GiB, read as zeros
    src.mkdir()
    with open(src / "sparse", "wb") as sparse:
        sparse.truncate(64 << 30)
    if command == "untar":
        cmd = [*CLI, "untar", "--atomic", "-", str(dest)]
        started: Callable[[], object] = lambda: any(  # noqa: E731
            (parent / s / "first").exists() for s in stages(parent))
    else:
        cmd = [*CLI, "tar", "-o", str(out), str(src)]
        started = lambda: any(  # noqa: E731
            p.name.endswith(".partial") and p.stat().st_size > 1 << 20
            for p in parent.iterdir())
    result = _stopped_mid_run(cmd, started,
                              lambda pid, worker: os.kill(pid, signal.SIGTERM))
    assert assert_one_line_error(result, rc=143) == "chrootarchive: error: terminated"
    assert not dest.exists() and not out.exists()
    tree.assert_same(before, parent_snapshot(parent), "the parent directory changed")


FULL_DISK = textwrap.dedent(
    """
    set -u
    mount -t tmpfs -o size=1m chrootarchive-test "$MNT"
    mkdir "$MNT/empty" && chmod 711 "$MNT/empty"
    echo "x" > "$MNT/neighbour"
    "$@" untar --atomic --reserve 0 "$ARCHIVE" "$MNT/dest" 2>"$MNT/../err1"; echo "rc1=$?"
    "$@" untar --atomic --reserve 0 "$ARCHIVE" "$MNT/empty" 2>"$MNT/../err2"; echo "rc2=$?"
    echo "listing=$(ls -A "$MNT" | tr '\\n' ' ')"
    echo "empty=$(ls -A "$MNT/empty" | tr '\\n' ' ')"
    echo "mode=$(stat -c %a "$MNT/empty")"
    echo "used=$(df -k --output=used "$MNT" | tail -1)"
    """
)


def test_full_disk_leaves_nothing(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    """A 1 MiB tmpfs in a private mount namespace of a child: a 3 MiB archive fills it;
    neither a missing nor an existing empty destination is changed, and the space is
    given back."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    data = B().file("small", b"s").dir("d").file("d/big", os.urandom(3 << 20)).build()
    path = write_archive(data)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", FULL_DISK, "sh", *CLI],
        env={**os.environ, "MNT": str(mnt), "ARCHIVE": str(path)},
        capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = dict(line.split("=", 1) for line in proc.stdout.decode().splitlines() if "=" in line)
    assert out["rc1"] == "4" and out["rc2"] == "4", (out, proc.stderr)
    for name in ("err1", "err2"):
        result = CLIResult((4, "", (tmp_path / name).read_text()))
        assert_one_line_error(result, rc=4, mentions=("no space left", "d/big"))
    assert out["listing"].split() == ["empty", "neighbour"], out
    assert out["empty"].strip() == "" and out["mode"] == "711", out
    assert int(out["used"]) < 100, f"space not given back: {out['used']} KiB used"
    assert list(mnt.iterdir()) == []  # the tmpfs lived only in the child's namespace


# -- staging directories of killed processes -------------------------------------------


def test_stale_staging_of_killed_cli_is_cleaned_by_next_run(parent: Path) -> None:
    """SIGKILL the command mid-run: its worker dies with it, its staging directory stays
    (recognisable by name); the next atomic run in the same parent removes it."""
    dest = parent / "dest"
    proc = subprocess.Popen([*CLI, "untar", "--atomic", "-", str(dest)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    # The parent reads its input 1 MiB at a time: give it more than that.
    proc.stdin.write(B().file("first", b"1").build(eoa=False) + tb.header("big", size=4 << 20)
                     + bytes(2 << 20))
    proc.stdin.flush()
    try:
        wait_for(lambda: any((parent / s / "first").exists() for s in stages(parent)),
                 what="the first entry in the staging directory")
        worker = wait_worker(proc.pid)
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not alive(worker), 5, what="the worker to die with its parent")
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
    left = stages(parent)
    assert len(left) == 1 and left[0].startswith(PREFIX), left
    assert not dest.exists()
    # A non-atomic run elsewhere does not care; the next atomic run cleans up.
    other = parent / "other"
    chrootarchive.untar(io.BytesIO(archive()), other, ATOMIC)
    assert stages(parent) == []
    assert (other / "etc" / "hosts").exists()
    assert (parent / "neighbour").read_bytes() == b"unrelated\n"


def test_live_staging_is_not_cleaned(parent: Path) -> None:
    """A second atomic run in the same parent leaves the first one's staging alone."""
    source, w = _pipe_source()
    first_dest = parent / "first"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = chrootarchive.untar(source, first_dest, ATOMIC)
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    try:
        # The parent reads its input 1 MiB at a time: give it more than that.
        os.write(w, B().file("one", b"1").build(eoa=False)
                 + tb.header("two", size=3 << 20) + bytes(2 << 20))
        wait_for(lambda: any((parent / s / "one").exists() for s in stages(parent)),
                 what="the first entry in the staging directory")
        live = stages(parent)
        chrootarchive.untar(io.BytesIO(archive()), parent / "second", ATOMIC)
        assert stages(parent) == live, "the live staging directory was removed"
        os.write(w, bytes(1 << 20) + tb.end_of_archive())
    finally:
        os.close(w)
        thread.join(30)
        source.close()
    assert "error" not in outcome, outcome
    assert sorted(os.listdir(first_dest)) == ["one", "two"]
    assert stages(parent) == []


def test_stale_staging_contents_are_removed_safely(parent: Path, tmp_path: Path) -> None:
    """A stale staging directory may hold anything the archive made (symlinks to outside,
    read-only directories): cleaning it removes it without following anything."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    stale = parent / (PREFIX + "deadbeef0000")
    (stale / "ro" / "deep").mkdir(parents=True)
    (stale / "ro" / "deep" / "f").write_bytes(b"x")
    os.symlink(outside, stale / "escape")
    os.symlink(outside / "precious", stale / "ro" / "file-link")
    (stale / "ro").chmod(0o500)
    before = tree.snapshot(outside)
    chrootarchive.untar(io.BytesIO(archive()), parent / "dest", ATOMIC)
    assert stages(parent) == []
    tree.assert_same(before, tree.snapshot(outside), "cleaning followed a symlink")

