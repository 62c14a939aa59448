"""Concurrency: many operations at once, and two operations on the same destination.

Different destinations are independent: sixteen threads of one process, or sixteen
processes, unpack at once and every result is right and nothing leaks. Two operations
on the *same* destination are serialized: the second waits (an exclusive ``flock`` on
the destination) until the first has finished, then applies its archive on top; the
result is the union of both trees, with the later archive's version of common files.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import chrootarchive
from chrootarchive import UnpackOptions
from chrootarchive.operations import destination, staging
from helpers import tarbuild as tb
from helpers import tree
from helpers.cli import CLI
from helpers.hardening import Trickler, wait_for
from helpers.leaks import LeakCheck, mountinfo

N = 16


def archive_for(i: int) -> bytes:
    b = tb.TarBuilder().dir(f"job{i}", mode=0o750, mtime=1_500_000_000 + i)
    for k in range(20):
        b.file(f"job{i}/f{k}", f"job {i} file {k}\n".encode() * (k + 1), mode=0o640,
               uid=1000 + i, gid=2000 + i, mtime=1_500_000_000 + k)
    b.symlink(f"job{i}/link", "f0", mtime=1_500_000_000)
    b.hardlink(f"job{i}/hard", f"job{i}/f1")
    b.file(f"job{i}/big", bytes([i]) * (300 << 10))  # through the writer thread
    return b.build()


def expected_tree(tmp_path: Path, i: int) -> tree.Snapshot:
    """The tree of archive ``i`` unpacked alone (the reference)."""
    ref = tmp_path / f"ref{i}"
    chrootarchive.untar(io.BytesIO(archive_for(i)), ref)
    return tree.snapshot(ref, ignore_root_mtime=True)


def test_sixteen_threads(tmp_path: Path) -> None:
    archives = [archive_for(i) for i in range(N)]
    expected = [expected_tree(tmp_path, i) for i in range(N)]
    check = LeakCheck(tmp_path, fds=True)
    mounts = mountinfo()
    results: dict[int, object] = {}
    barrier = threading.Barrier(N)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = chrootarchive.untar(io.BytesIO(archives[i]), tmp_path / f"d{i}")
        except BaseException as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    for i in range(N):
        r = results[i]
        assert isinstance(r, chrootarchive.UnpackResult), (i, r)
        assert r.entries == 24 and r.confinement == "pivot"
        tree.assert_same(expected[i], tree.snapshot(tmp_path / f"d{i}", ignore_root_mtime=True),
                         f"destination {i} differs from a lone unpack")
    assert mountinfo() == mounts
    check.assert_clean()


def test_sixteen_threads_mixed_outcomes(tmp_path: Path) -> None:
    """Half the threads fail (a breakout, a limit): the others are unaffected, and the
    failures leak nothing either."""
    check = LeakCheck(tmp_path, fds=True)
    bad = tb.TarBuilder().file("ok", b"1").file("../../escape", b"x").build()
    results: dict[int, object] = {}
    barrier = threading.Barrier(N)

    def run(i: int) -> None:
        barrier.wait()
        try:
            if i % 2:
                chrootarchive.untar(io.BytesIO(bad), tmp_path / f"d{i}")
            else:
                results[i] = chrootarchive.untar(
                    io.BytesIO(archive_for(i)), tmp_path / f"d{i}",
                    UnpackOptions(confine="chroot" if i % 4 else "pivot"))
                return
        except chrootarchive.BreakoutError as err:
            results[i] = err
        except BaseException as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(N):
        if i % 2:
            assert isinstance(results[i], chrootarchive.BreakoutError), results[i]
        else:
            assert isinstance(results[i], chrootarchive.UnpackResult), results[i]
            assert len(os.listdir(tmp_path / f"d{i}" / f"job{i}")) == 23
    assert not (tmp_path / "escape").exists()
    check.assert_clean()


def test_sixteen_processes(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    paths = [write_archive(tb.compress(archive_for(i), "gzip"), ".tar.gz") for i in range(N)]
    expected = [expected_tree(tmp_path, i) for i in range(N)]
    check = LeakCheck(tmp_path)
    procs = [subprocess.Popen([*CLI, "untar", str(paths[i]), str(tmp_path / f"p{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(N)]
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (i, err.decode())
        assert err == b"" and out == b""
    for i in range(N):
        tree.assert_same(expected[i], tree.snapshot(tmp_path / f"p{i}", ignore_root_mtime=True),
                         f"destination {i} differs from a lone unpack")
    check.assert_clean()


def test_sixteen_processes_into_one_parent_atomically(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    """Atomic runs side by side in one parent do not clean each other's staging."""
    paths = [write_archive(archive_for(i)) for i in range(N)]
    parent = tmp_path / "parent"
    parent.mkdir()
    procs = [subprocess.Popen([*CLI, "untar", "--atomic", str(paths[i]), str(parent / f"a{i}")],
                              stderr=subprocess.PIPE) for i in range(N)]
    for i, proc in enumerate(procs):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (i, err.decode())
    assert sorted(os.listdir(parent)) == sorted(f"a{i}" for i in range(N))
    for i in range(N):
        assert len(os.listdir(parent / f"a{i}" / f"job{i}")) == 23


# -- the same destination ----------------------------------------------------------------


def first_archive() -> bytes:
    b = tb.TarBuilder()
    for k in range(10):
        b.file(f"first/{k}", f"first {k}\n".encode())
    b.file("common", b"from the first archive\n")
    b.dir("shared").file("shared/one", b"1\n").file("shared/both", b"first\n")
    return b.build()


def second_archive() -> bytes:
    return (tb.TarBuilder().file("common", b"from the second archive\n")
            .dir("shared").file("shared/two", b"2\n").file("shared/both", b"second\n")
            .file("second", b"s\n").build())


def test_same_destination_is_serialized(tmp_path: Path) -> None:
    """A slow first unpack (fed through a pipe) and a second one started while it runs:
    the second waits, and none of its writes happens before the first has finished."""
    dest = tmp_path / "dest"
    dest.mkdir()
    check = LeakCheck(tmp_path, fds=True)
    data = first_archive()
    r, w = os.pipe()
    times: dict[str, float] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with os.fdopen(r, "rb") as source:
                chrootarchive.untar(source, dest)
        except BaseException as err:
            errors.append(err)
        times["first_done"] = time.time()

    def second() -> None:
        times["second_called"] = time.time()
        try:
            chrootarchive.untar(io.BytesIO(second_archive()), dest)
        except BaseException as err:
            errors.append(err)
        times["second_done"] = time.time()

    t1 = threading.Thread(target=first, daemon=True)
    t2 = threading.Thread(target=second, daemon=True)
    t1.start()
    # The parent reads its input 1 MiB at a time: the first part of the archive (the
    # entries first/0..4) and 1 MiB of padding go in at once, the rest much later.
    cut = 512 * 10
    feeder = Trickler(w, [data[:cut] + tb.header("first/pad", size=2 << 20) + bytes(1 << 20)],
                      0, keep_open=True)
    feeder.start()
    try:
        wait_for(lambda: (dest / "first" / "4").exists(),
                 what="the first unpack to be under way")
        t2.start()
        time.sleep(0.5)
        assert not (dest / "second").exists(), "the second unpack did not wait for the first"
        assert t2.is_alive()
        feeder.join()
        os.set_blocking(w, True)  # the feeder made it non-blocking
        os.write(w, bytes(1 << 20) + data[cut:])
    finally:
        feeder.join()
        os.close(w)
        t1.join(60)
        if t2.ident is not None:
            t2.join(60)
    assert not errors, errors
    assert times["second_done"] > times["first_done"] > times["second_called"]

    # Nothing of the second archive was written before the first finished.
    first_ctimes = [os.lstat(dest / "first" / str(k)).st_ctime_ns for k in range(10)]
    second_ctimes = [os.lstat(dest / p).st_ctime_ns for p in ("second", "shared/two", "common")]
    assert min(second_ctimes) >= max(first_ctimes)

    # The union, the later archive winning on common files.
    assert (dest / "common").read_bytes() == b"from the second archive\n"
    assert (dest / "shared" / "both").read_bytes() == b"second\n"
    assert (dest / "shared" / "one").read_bytes() == b"1\n"
    assert (dest / "shared" / "two").read_bytes() == b"2\n"
    assert sorted(os.listdir(dest / "first")) == sorted([*map(str, range(10)), "pad"])
    assert (dest / "second").read_bytes() == b"s\n"
    check.assert_clean()


def test_same_destination_many_threads(tmp_path: Path) -> None:
    """Eight unpacks into one destination at once: each runs alone, all succeed, every
    file is whole, and the common file holds one archive's version intact."""
    dest = tmp_path / "dest"
    check = LeakCheck(tmp_path, fds=True)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        data = (tb.TarBuilder().file(f"own{i}", bytes([i]) * 100_000)
                .file("common", bytes([i]) * (400 << 10)).build())
        try:
            chrootarchive.untar(io.BytesIO(data), dest)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i in range(8):
        assert (dest / f"own{i}").read_bytes() == bytes([i]) * 100_000
    common = (dest / "common").read_bytes()
    assert len(common) == 400 << 10 and len(set(common)) == 1, "interleaved writes"
    check.assert_clean()


def test_same_destination_cli_processes(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    dest = tmp_path / "dest"
    paths = [write_archive(tb.TarBuilder().file(f"own{i}", b"x").file("common", bytes([i]) * 5000)
                           .build()) for i in range(6)]
    procs = [subprocess.Popen([*CLI, "untar", str(p), str(dest)], stderr=subprocess.PIPE)
             for p in paths]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert sorted(os.listdir(dest)) == sorted(["common", *(f"own{i}" for i in range(6))])
    assert len(set((dest / "common").read_bytes())) == 1


def test_two_atomic_unpacks_into_one_destination(tmp_path: Path) -> None:
    """Atomic unpacks into the same missing destination: one wins the rename, the other
    fails cleanly; the destination holds exactly one archive's tree, never a mixture."""
    dest = tmp_path / "parent" / "dest"
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(4)

    def run(i: int) -> None:
        data = tb.TarBuilder().file(f"own{i}", b"x").file("common", bytes([i]) * 5000).build()
        barrier.wait()
        try:
            outcomes[i] = chrootarchive.untar(io.BytesIO(data), dest, UnpackOptions(atomic=True))
        except BaseException as err:
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [i for i, r in outcomes.items() if isinstance(r, chrootarchive.UnpackResult)]
    losers = [r for r in outcomes.values() if not isinstance(r, chrootarchive.UnpackResult)]
    assert winners, outcomes
    for err in losers:
        assert isinstance(err, chrootarchive.DestinationError), err
    names = sorted(os.listdir(dest))
    assert len(names) == 2 and names[0] == "common", names
    winner = int(names[1].removeprefix("own"))
    assert winner in winners
    assert (dest / "common").read_bytes() == bytes([winner]) * 5000
    assert sorted(os.listdir(dest.parent)) == ["dest"], "a staging directory was left"


# -- the same races, without workers (many rounds in a second) ----------------------------


def _race(rounds: int, threads: int, action: Callable[[int, int], object]
          ) -> list[BaseException]:
    errors: list[BaseException] = []
    for r in range(rounds):
        barrier = threading.Barrier(threads)

        def run(i: int, r: int = r) -> None:
            barrier.wait()
            try:
                action(r, i)
            except BaseException as err:
                errors.append(err)

        pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(30)
    return errors


def test_concurrent_creation_of_a_missing_destination(tmp_path: Path) -> None:
    """Several operations that all create the same missing destination (and its
    parents) at once: every one of them gets it (what ``pin_destination`` does)."""

    def pin(r: int, i: int) -> None:
        fd, _ = destination.pin_destination(str(tmp_path / f"round{r}" / "a" / "dest"), None,
                                            lock=False)
        os.close(fd)

    errors = _race(40, 8, pin)
    assert not errors, f"{len(errors)} of {40 * 8} failed, e.g. {errors[0]!r}"


def test_concurrent_staging_in_one_parent(tmp_path: Path) -> None:
    """Atomic operations side by side in one parent: none removes another's live
    staging directory (what ``staging.atomic_destination`` does before unpacking)."""

    def stage(r: int, i: int) -> None:
        with staging.atomic_destination(str(tmp_path / f"r{r}-{i}")) as path:
            Path(path, "file").write_bytes(b"x")
            time.sleep(0.001)
            assert Path(path, "file").read_bytes() == b"x"

    errors = _race(150, 8, stage)
    assert not errors, f"{len(errors)} of {150 * 8} failed, e.g. {errors[0]!r}"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(staging.PREFIX)]
