"""The helper's compiled loop (engine/_finish.c) against its Python reference.

The helper process finishes the small files of a plain tar in batches: it creates each
file by name (or takes its descriptor), copies its extent from the archive or the ring
(or writes its data from the batch), sets its times and closes it, and replies with the
first error and the files it left to the worker. ``_finish.finish`` does that in C;
``finisher._finish_batch`` is its reference and the fallback. Here both run the same
batches in two fresh directories, and the files they make (names, kinds, modes, data,
times) and their replies must be the same: every kind of file, errors at each place,
names something is in the way of (a symlink to a victim outside included), rings that
wrap, odd times, and random mixtures. Batches the C does not take (a symlink, a layout
that does not add up) it must refuse before it touches anything; the helper's
``_well_formed`` rules out the second kind before either loop sees it.

The worker's side is compiled too: ``_finish.Batch.add_new`` adds a file to the batch
being made, and ``finisher._Batch`` is its reference (the last tests here).
"""

from __future__ import annotations

import errno
import gc
import os
import random
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chrootarchive.engine import _finish, finisher
from helpers.batch_members import BatchMembers

SYMLINK = finisher.SYMLINK

# A file of a batch: (name or None: its descriptor travels with the batch, mode, data
# or None, extent (offset, size) or None, atime_ns, mtime_ns).
File = tuple[bytes | None, int, bytes | None, tuple[int, int] | None, int, int]


def _batch(files: list[File]) -> bytes:
    """A batch as Finisher._send makes it."""
    sizes, name_sizes, numbers = [], [], []
    paths, data = b"", b""
    for name, mode, inline, extent, atime, mtime in files:
        if extent is not None:
            sizes.append(extent[1])
            numbers += [atime, mtime, extent[0], mode]
        else:
            sizes.append(len(inline or b""))
            numbers += [atime, mtime, -1, mode]
            data += inline or b""
        name_sizes.append(len(name or b""))
        paths += name or b""
    count = len(files)
    return (finisher._COUNT.pack(count) + finisher._layout(count).pack(
        *sizes, *name_sizes, *numbers) + paths + data)


@contextmanager
def _inside(directory: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every object below ``root``: kind, mode, data or target, times."""
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            content: object = path.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        else:
            content = None
        times = (st.st_atime_ns, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None
        found[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode),
                                              stat.S_IMODE(st.st_mode), content, times)
    return found


def _passed_fds(directory: Path, files: list[File], flags: int = 0) -> list[int]:
    """Descriptors of files made beforehand, for the files of a batch sent without a
    name (the worker created them): ``fd0``, ``fd1``... in ``directory``."""
    fds = []
    for index, _file in enumerate(f for f in files if f[0] is None):
        fd = os.open(directory / f"fd{index}",
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o640)
        os.utime(fd, ns=(1, 1))  # what is not finished keeps these
        fds.append(fd)
    return fds


def _closed(fds: list[int]) -> bool:
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError as err:
            assert err.errno == errno.EBADF
            continue
        return False
    return True


def _run_both(tmp_path: Path, files: list[File], source: int = -1, ring: int = 0,
              prepare: object = None, fd_flags: int = 0
              ) -> tuple[tuple[int, int, tuple[int, ...]], dict[str, tuple[object, ...]]]:
    """Run the batch through both loops (each in a directory of its own, prepared alike
    by ``prepare(dir)``); assert they did the same; return the reply and the tree."""
    batch = _batch(files)
    replies: list[tuple[int, int, tuple[int, ...]]] = []
    trees = []
    for which in ("python", "c"):
        directory = tmp_path / which
        directory.mkdir()
        if callable(prepare):
            prepare(directory)
        fds = _passed_fds(directory, files, fd_flags)
        with _inside(directory):
            if which == "c":
                done = _finish.finish(batch, list(fds), source, ring)
                assert done is not None, "the compiled loop refused a batch it takes"
                reply = (done[0], done[1], tuple(done[2]))
            else:
                failed, returned = finisher._finish_batch(memoryview(batch), list(fds),
                                                          source, None, ring)
                reply = ((failed[0].errno or 0, failed[1]) if failed else (0, 0)) + (
                    tuple(returned),)
        assert _closed(fds), f"{which}: a descriptor passed with the batch was left open"
        replies.append(reply)
        trees.append(_tree(directory))
    assert replies[0] == replies[1]
    failed_errno, failed_index, _returned = replies[0]
    if failed_errno:  # the file that failed keeps the times it was made with
        name = files[failed_index][0]
        key = (name.decode("utf-8", "surrogateescape") if name is not None
               else f"fd{sum(1 for f in files[:failed_index] if f[0] is None)}")
        for tree in trees:
            if key in tree:
                tree[key] = (*tree[key][:3], None)
    assert trees[0] == trees[1]
    return replies[0], trees[0]


def _source(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "archive"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


ARCHIVE = random.Random(7).randbytes(3 << 20)


def test_names_inline_data_and_modes(tmp_path: Path) -> None:
    files: list[File] = [
        (b"empty", 0o644, b"", None, 10**18, 2 * 10**18),
        (b"one", 0o600, b"x", None, 1, 2),
        (b"block", 0o755, b"a" * 512, None, 0, 0),
        (b"odd", 0o000, b"odd" * 1001, None, 123_456_789_012, 987_654_321),
        (b"sub/inner", 0o640, b"in a directory", None, 5, 6),
        ("caf\u00e9-\udcff".encode("utf-8", "surrogateescape"), 0o444, b"name", None, 7, 8),
    ]
    reply, tree = _run_both(tmp_path, files, prepare=lambda d: (d / "sub").mkdir())
    assert reply == (0, 0, ())
    assert tree["odd"][2] == b"odd" * 1001
    assert tree["sub/inner"][3] == (5, 6)


def test_extents_from_the_archive(tmp_path: Path) -> None:
    source = _source(tmp_path, ARCHIVE)
    try:
        files: list[File] = [
            (b"small", 0o644, None, (512, 100), 1, 2),
            (None, 0o644, None, (0, 1), 3, 4),  # its descriptor travels with the batch
            (b"big", 0o644, None, (1000, (2 << 20) + 17), 5, 6),
            (None, 0o644, None, ((3 << 20) - 10, 10), 7, 8),
            (b"inline", 0o644, b"between", None, 9, 10),
            (b"last", 0o644, None, (77, 4096), 11, 12),
        ]
        reply, tree = _run_both(tmp_path, files, source)
    finally:
        os.close(source)
    assert reply == (0, 0, ())
    assert tree["big"][2] == ARCHIVE[1000 : 1000 + (2 << 20) + 17]
    assert tree["fd1"][2] == ARCHIVE[-10:]


def test_an_extent_past_the_end_of_the_archive(tmp_path: Path) -> None:
    source = _source(tmp_path, ARCHIVE[:4096])
    try:
        files: list[File] = [
            (b"whole", 0o644, None, (0, 100), 1, 2),
            (b"cut", 0o644, None, (4000, 200), 3, 4),  # 96 bytes there, then the end
            (b"after", 0o644, b"never made", None, 5, 6),
            (None, 0o644, None, (0, 10), 7, 8),  # only closed
        ]
        reply, tree = _run_both(tmp_path, files, source)
    finally:
        os.close(source)
    assert reply == (errno.ENODATA, 1, ())
    assert "after" not in tree
    assert tree["fd0"][2] == b""


def test_something_in_the_way_is_left_to_the_worker(tmp_path: Path) -> None:
    """A name that exists (a file, a directory, a symlink: to a victim outside
    included) is given back, and nothing is written through it."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim_stat = victim.stat()

    def prepare(directory: Path) -> None:
        (directory / "file").write_bytes(b"old")
        os.utime(directory / "file", ns=(1, 1))
        (directory / "dir").mkdir()
        (directory / "link").symlink_to(victim)
        (directory / "dangling").symlink_to(tmp_path / "nowhere")

    files: list[File] = [
        (b"file", 0o644, b"new", None, 1, 2),
        (b"fresh", 0o644, b"fresh", None, 3, 4),
        (b"dir", 0o644, b"new", None, 5, 6),
        (b"link", 0o644, b"overwritten?", None, 7, 8),
        (b"dangling", 0o644, b"created?", None, 9, 10),
        (b"fresh2", 0o644, b"fresh too", None, 11, 12),
    ]
    reply, tree = _run_both(tmp_path, files, prepare=prepare)
    assert reply == (0, 0, (0, 2, 3, 4))
    assert tree["file"][2] == b"old"
    assert tree["fresh2"][2] == b"fresh too"
    assert victim.read_bytes() == b"precious"
    assert victim.stat().st_mtime_ns == victim_stat.st_mtime_ns
    assert not (tmp_path / "nowhere").exists()


def test_after_an_error_the_rest_is_only_closed(tmp_path: Path) -> None:
    files: list[File] = [
        (b"first", 0o644, b"made", None, 1, 2),
        (b"exists", 0o644, b"given back", None, 3, 4),
        (b"missing/dir/file", 0o644, b"ENOENT", None, 5, 6),
        (b"third", 0o644, b"not made", None, 7, 8),
        (None, 0o644, b"not written", None, 9, 10),
        (b"exists2", 0o644, b"not even tried", None, 11, 12),
    ]

    def prepare(directory: Path) -> None:
        for name in ("exists", "exists2"):
            (directory / name).write_bytes(b"")
            os.utime(directory / name, ns=(1, 1))

    reply, tree = _run_both(tmp_path, files, prepare=prepare)
    assert reply == (errno.ENOENT, 2, (1,))
    assert tree["first"][2] == b"made"
    assert "third" not in tree
    assert tree["fd0"][2] == b""


@pytest.mark.parametrize("ring_size", [4096, 65536])
def test_extents_from_a_ring_wrap_around(tmp_path: Path, ring_size: int) -> None:
    """In a ring the stream's offsets wrap: a file that crosses the ring's end is read
    from its end and then its start."""
    ring = os.memfd_create("ring")
    try:
        os.write(ring, ARCHIVE[:ring_size])
        laps = 3 * ring_size  # stream offsets three laps on
        files: list[File] = [
            (b"wraps", 0o644, None, (laps + ring_size - 100, 300), 1, 2),
            (b"inside", 0o644, None, (laps + 10, 50), 3, 4),
            (None, 0o644, None, (laps + ring_size - 1, ring_size // 2), 5, 6),
            (b"whole", 0o644, None, (laps, ring_size), 7, 8),
        ]
        reply, tree = _run_both(tmp_path, files, ring, ring_size)
    finally:
        os.close(ring)
    assert reply == (0, 0, ())
    assert tree["wraps"][2] == ARCHIVE[ring_size - 100 : ring_size] + ARCHIVE[:200]
    assert tree["whole"][2] == ARCHIVE[:ring_size]


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 10**9, -1, -(10**9), -(10**9) - 1,
                                -123_456_789_012, 2**33 * 10**9 + 5, 4_102_444_800 * 10**9])
def test_times_as_os_utime_sets_them(tmp_path: Path, ns: int) -> None:
    """Nanoseconds split into seconds rounded down and a non-negative rest, before 1970
    too, as ``os.utime(fd, ns=...)`` does."""
    files: list[File] = [(b"t", 0o644, b"", None, ns, ns + 1)]
    reply, tree = _run_both(tmp_path, files)
    assert reply == (0, 0, ())
    assert tree["t"][3] == (ns, ns + 1)


def test_random_batches_agree(tmp_path: Path) -> None:
    """Mixtures of every kind of file and of obstacles, many times over."""
    rng = random.Random(1234)
    source = _source(tmp_path, ARCHIVE[: 1 << 20])
    try:
        for round_ in range(120):
            where = tmp_path / f"r{round_}"
            where.mkdir()
            files: list[File] = []
            obstacles: list[str] = []
            for index in range(rng.randint(1, finisher.MAX_FILES)):
                path = f"d{rng.randint(0, 2)}/f{index}"
                name: bytes | None = path.encode()
                if rng.random() < 0.2:
                    name = None
                elif rng.random() < 0.08:
                    obstacles.append(path)
                elif rng.random() < 0.03:
                    name = b"absent/" + path.encode()
                mode = rng.choice([0o644, 0o600, 0o755, 0o444, 0o000, 0o777])
                times = rng.randint(-(10**18), 10**18), rng.randint(-(10**18), 10**18)
                if rng.random() < 0.5:
                    size = rng.choice([0, 1, 511, 512, 513, 4096, 70_000])
                    files.append((name, mode, rng.randbytes(size), None, *times))
                else:
                    size = rng.choice([1, 100, 4096, 200_000])
                    offset = rng.randint(0, (1 << 20) + 1000 - size)  # some past the end
                    files.append((name, mode, None, (offset, size), *times))

            def prepare(directory: Path, obstacles: list[str] = obstacles) -> None:
                for sub in ("d0", "d1", "d2"):
                    (directory / sub).mkdir()
                for obstacle in obstacles:
                    (directory / obstacle).write_bytes(b"in the way")
                    os.utime(directory / obstacle, ns=(1, 1))

            _run_both(where, files, source, prepare=prepare)
    finally:
        os.close(source)


def test_copies_that_sendfile_refuses_go_through_a_buffer(tmp_path: Path) -> None:
    """``sendfile`` refuses a descriptor opened with ``O_APPEND`` (EINVAL): the data is
    then read and written in chunks of 1 MiB, large files in several."""
    source = _source(tmp_path, ARCHIVE)
    try:
        files: list[File] = [
            (None, 0o644, None, (5, 100), 1, 2),
            (None, 0o644, None, (1000, (2 << 20) + 12345), 3, 4),
            (None, 0o644, None, (len(ARCHIVE) - 50, 100), 5, 6),  # past the end
        ]
        reply, tree = _run_both(tmp_path, files, source, fd_flags=os.O_APPEND)
    finally:
        os.close(source)
    assert reply == (errno.ENODATA, 2, ())
    assert tree["fd1"][2] == ARCHIVE[1000 : 1000 + (2 << 20) + 12345]
    assert tree["fd2"][2] == ARCHIVE[-50:]


@pytest.mark.parametrize("ring_size", [4095, 12345])
def test_ring_offsets_near_the_largest_stream_offset(tmp_path: Path, ring_size: int) -> None:
    """A ring of any size (not only a power of two), at stream offsets near 2^63:
    the wrapped position is the same in both, and nothing overflows."""
    ring = os.memfd_create("ring")
    try:
        os.write(ring, ARCHIVE[:ring_size])
        top = (1 << 63) - 6
        files: list[File] = [
            (b"near-top", 0o644, None, (top, 5000), 1, 2),
            (b"top", 0o644, None, ((1 << 63) - 1, 1), 3, 4),
        ]
        reply, tree = _run_both(tmp_path, files, ring, ring_size)
    finally:
        os.close(ring)
    assert reply == (0, 0, ())
    at = top % ring_size
    expected = (ARCHIVE[at:ring_size] + ARCHIVE[:ring_size] * 2)[:5000]
    assert tree["near-top"][2] == expected


def test_empty_extents_copy_nothing(tmp_path: Path) -> None:
    """An extent of no bytes (the worker sends none) is not copied from, whatever its
    source or offset: the file is made and timed."""
    files: list[File] = [
        (b"nowhere", 0o644, None, (0, 0), 1, 2),
        (b"far", 0o644, None, (1 << 62, 0), 3, 4),
        (None, 0o644, None, ((1 << 63) - 1, 0), 5, 6),
    ]
    reply, tree = _run_both(tmp_path, files, -1)
    assert reply == (0, 0, ())
    assert tree["far"] == (stat.S_IFREG, 0o644, b"", (3, 4))


def _layout_refused(batch: bytes, fds: list[int] | None = None) -> None:
    assert _finish.finish(batch, fds or [], -1, 0) is None


def test_batches_it_does_not_take_are_refused_untouched(tmp_path: Path) -> None:
    """A symlink goes to the Python loop; a layout that does not add up is refused
    before any file is made (the helper's _well_formed rules it out before)."""
    good: list[File] = [(b"a", 0o644, b"data", None, 1, 2), (b"b", 0o644, b"", None, 3, 4)]
    batch = _batch(good)
    with _inside(tmp_path):
        _layout_refused(_batch([*good, (b"s", SYMLINK, b"target", None, 5, 6)]))
        _layout_refused(b"")
        _layout_refused(b"\x00")
        _layout_refused(finisher._COUNT.pack(0))
        _layout_refused(_batch([(b"f%d" % i, 0o644, b"", None, 0, 0)
                                for i in range(finisher.MAX_FILES + 1)]))
        assert finisher._well_formed(memoryview(batch), [])
        for cut in (3, len(batch) - len(b"data") - 1, len(batch) - 1):
            _layout_refused(batch[:cut])  # the numbers, a name or the data cut short
            # The helper rules those out before either loop (Python's would wait
            # forever on data cut short).
            assert not finisher._well_formed(memoryview(batch[:cut]), [])
        _layout_refused(_batch([(b"m", 0o10644, b"", None, 0, 0)]))  # not a permission
        _layout_refused(_batch([(None, 0o644, b"", None, 0, 0)]), [])  # no descriptor
        # Inline sizes whose sum wraps at 2^64 (the first 100 bytes are there).
        wrapping = bytearray(_batch([(b"a", 0o644, b"x" * 100, None, 0, 0),
                                     (b"missing/x", 0o644, b"", None, 0, 0),
                                     *[(b"b%d" % i, 0o644, b"", None, 0, 0)
                                       for i in range(3)]]))
        sizes = [100, 1 << 62, 1 << 62, 1 << 62, (1 << 62) - 100]
        struct.pack_into("<5Q", wrapping, finisher._COUNT.size, *sizes)
        _layout_refused(bytes(wrapping))
        assert not finisher._well_formed(memoryview(bytes(wrapping)), [])
        assert os.listdir(".") == []
        fd = os.open("extra", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            _layout_refused(batch, [fd])  # a descriptor too many
        finally:
            os.close(fd)
        assert os.listdir(".") == ["extra"]


def test_names_the_kernel_would_shorten_are_errors(tmp_path: Path) -> None:
    """A name with a NUL byte is EINVAL, never the name before it (the reader refuses
    such names, so the worker never sends one; Python's loop would die of the
    ValueError); a name longer than PATH_MAX is ENAMETOOLONG, as the kernel says, NUL
    or not."""
    with _inside(tmp_path):
        done = _finish.finish(_batch([(b"ok", 0o644, b"", None, 0, 0),
                                      (b"short\x00long", 0o644, b"x", None, 0, 0)]), [], -1, 0)
        assert done == (errno.EINVAL, 1, ())
        assert sorted(os.listdir(".")) == ["ok"]
        done = _finish.finish(_batch([(b"n/" * 2100, 0o644, b"", None, 0, 0)]), [], -1, 0)
        assert done == (errno.ENAMETOOLONG, 0, ())
        done = _finish.finish(_batch([(b"\x00" * 5000, 0o644, b"", None, 0, 0)]), [], -1, 0)
        assert done == (errno.ENAMETOOLONG, 0, ())


def test_arguments_are_checked() -> None:
    batch = _batch([(b"a", 0o644, b"", None, 0, 0)])
    with pytest.raises(TypeError):
        _finish.finish(batch, [], -1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _finish.finish(batch, (), -1, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _finish.finish("not bytes", [], -1, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _finish.finish(batch, [], -2, 0)
    with pytest.raises(ValueError):
        _finish.finish(batch, [], -1, -1)
    with pytest.raises(ValueError):
        _finish.finish(_batch([(None, 0o644, b"", None, 0, 0)]), [-1], -1, 0)
    with pytest.raises(TypeError):
        _finish.finish(_batch([(None, 0o644, b"", None, 0, 0)]), ["3"], -1, 0)  # type: ignore[list-item]


def test_the_helper_uses_the_compiled_loop() -> None:
    """The suite's install has a compiler: the helper must not silently fall back."""
    assert finisher._finish_compiled is _finish.finish  # type: ignore[attr-defined]


# ---- the worker's side: a file added to the batch being made -------------------------
#
# _finish.Batch holds the batch's members and does add_new() in C; finisher._Batch is
# its reference (and the fallback). Each runs the same calls here, with a _send() that
# starts a new batch as Finisher._send() does and a _can_send() that answers from a
# shared script; their answers, the calls they made back and every member must agree.

_MEMBERS = ("_names", "_own", "_sizes", "_name_sizes", "_numbers", "_paths", "_data",
            "pending", "_extents", "_first_extent", "in_flight_bytes", "extents", "taken",
            "by_name", "_max_data", "_batch_extents")


def _scripted(base: type) -> type:
    class Scripted(base, BatchMembers):  # type: ignore[misc]

        def __init__(self, max_data: int, batch_extents: int, answers: list[bool]) -> None:
            self._answers = answers
            self.calls: list[tuple[object, ...]] = []
            self._new_batch()
            self.pending = set()
            self._first_extent = -1
            self.in_flight_bytes = self.extents = self.taken = self.by_name = 0
            self._max_data, self._batch_extents = max_data, batch_extents

        def _new_batch(self) -> None:
            self._names, self._own, self._sizes, self._name_sizes = [], [], [], []
            self._numbers, self._paths, self._data = [], bytearray(), bytearray()
            self._extents, self._first_extent = 0, -1

        def _send(self) -> None:
            self.calls.append(("send", len(self._names), bytes(self._data)))
            self.pending.difference_update(item[0] for item in self._own if item)
            self._new_batch()

        def _can_send(self, sends: int, extra: int) -> bool:
            answer = self._answers.pop(0) if self._answers else True
            self.calls.append(("can_send", sends, extra, answer))
            if len(self.calls) % 2:  # every member replaced by an equal copy
                self._names, self._own = list(self._names), list(self._own)
                self._sizes, self._name_sizes = list(self._sizes), list(self._name_sizes)
                self._numbers, self.pending = list(self._numbers), set(self.pending)
                self._paths, self._data = bytearray(self._paths), bytearray(self._data)
            return answer

        def state(self) -> dict[str, object]:
            return {name: getattr(self, name) for name in _MEMBERS} | {"calls": self.calls}

    return Scripted


# A call: (name, data or None for an extent, offset, size, atime, mtime, mode).
_Call = tuple[str, bytes | None, int, int, int, int, int]


def _agree(calls: list[_Call], max_data: int, batch_extents: int, answers: list[bool]
           ) -> None:
    made = [_scripted(base)(max_data, batch_extents, list(answers))
            for base in (finisher._Batch, _finish.Batch)]
    for name, data, offset, size, atime, mtime, mode in calls:
        token = object()
        results = [b.add_new(name, os.fsencode(name), mode,
                             memoryview(data) if data is not None else b"",
                             -1 if data is not None else offset, size, atime, mtime,
                             f"entry {name}", token) for b in made]
        assert results[0] == results[1]
        python, compiled = (b.state() for b in made)
        for key in python:
            assert python[key] == compiled[key], key


_calls = st.lists(st.tuples(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
            max_size=40),
    st.one_of(st.none(), st.binary(max_size=3000)),
    st.integers(0, 1 << 40), st.integers(0, 1 << 24),
    st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-(1 << 63), (1 << 63) - 1),
    st.sampled_from([0o644, 0o755, 0o600, finisher.SYMLINK])), max_size=150)


@given(_calls, st.integers(0, 20000), st.integers(1, 1 << 22), st.lists(st.booleans()))
@settings(max_examples=200, deadline=None)
def test_the_compiled_batch_adds_as_its_reference(
    calls: list[_Call], max_data: int, batch_extents: int, answers: list[bool]
) -> None:
    _agree(calls, max_data, batch_extents, answers)


def test_full_batches_and_extents_past_the_limit_call_back_alike() -> None:
    """Chosen: 64 files fill a batch; an extent that reaches the limit asks first, and a
    refusal adds nothing; data that does not fit sends the batch first."""
    many: list[_Call] = [(f"f{i}", None, 512 * i, 100, i, i, 0o644) for i in range(200)]
    _agree(many, 1 << 20, 1 << 30, [True] * 10)
    large: list[_Call] = [
        ("a", None, 0, 5000, 1, 2, 0o644), ("b", None, 5000, 4000, 1, 2, 0o644),
        ("c", b"x" * 700, 0, 0, 3, 4, 0o600), ("d", b"y" * 800, 0, 0, 3, 4, 0o600)]
    _agree(large, 1000, 8000, [False, True, True])


@pytest.mark.parametrize("size", [-1, finisher.MAX_EXTENT + 1, 1 << 63, 1 << 64])
def test_an_extent_no_archive_holds_is_not_taken_by_either(size: int) -> None:
    """A header may claim up to 2**63 bytes: such an extent is refused (False, nothing
    changed), and the worker copies the file itself and finds the archive short."""
    for base in (finisher._Batch, _finish.Batch):
        batch = _scripted(base)(1000, 1 << 62, [])
        before = batch.state()
        assert batch.add_new("a", b"a", 0o644, b"", 0, size, 0, 0, "a", None) is False
        assert batch.state() == before
    _agree([("a", None, 0, finisher.MAX_EXTENT, 1, 2, 0o644)], 1000, 1 << 20, [True])


def test_a_member_replaced_during_a_collection_is_never_written_freed() -> None:
    """add_new() allocates, which may run the cycle collector and so finalizers, before
    it looks its members up: one that replaces a member then (freeing the old one)
    leaves the file in the new member (review, issue 16, eighteenth round). From 3.12
    the collector runs only between bytecodes, after the call: the copy then holds it."""
    batch = _scripted(_finish.Batch)(1 << 20, 1 << 40, [])
    old_paths = batch._paths

    class Replaces:
        def __del__(self) -> None:  # a copy: whenever this runs, the name must be in it
            batch._paths = bytearray(batch._paths)

    def arm() -> None:
        cycle = Replaces()
        cycle.self = cycle  # type: ignore[attr-defined]  # only the collector frees it

    thresholds = gc.get_threshold()
    gc.disable()
    try:
        arm()
        del old_paths
        gc.set_threshold(1)
        gc.enable()
        assert batch.add_new("name", b"NAME", 0o644, b"", 0, 10, 1, 2, "e", None)
    finally:
        gc.set_threshold(*thresholds)
        gc.enable()
        gc.collect()
    assert bytes(batch._paths).endswith(b"NAME") and batch._names == ["e"]


def test_extents_whose_sum_overflows_ask_first_as_in_python() -> None:
    """Two extents whose sum passes 2**63 with a limit above 2**62: past the limit, as
    Python's integers say, so the batch asks first (and a refusal adds nothing); the
    compiled sum overflowed, and went on to an OverflowError (review, issue 16,
    twentieth round)."""
    calls: list[_Call] = [("a", None, 0, finisher.MAX_EXTENT, 1, 2, 0o644),
                          ("b", None, finisher.MAX_EXTENT, finisher.MAX_EXTENT, 1, 2, 0o644)]
    _agree(calls, 1 << 20, (1 << 63) - 1, [False])


def test_a_name_whose_hash_replaces_pending_is_added_to_the_set_it_was_given() -> None:
    """Hashing a str subclass runs Python, which may replace ``pending`` and free the old
    set while it is being added to: the compiled batch holds it (it went on inside the
    freed set: a spin or a crash), and both add the name to the set they looked up
    (review, issue 16, twentieth round). In a child: the old code does not return."""
    script = textwrap.dedent("""\
        import sys
        sys.path[:0] = sys.argv[1:]
        from test_finish_batch import _scripted
        from chrootarchive.engine import _finish, finisher
        for base in (finisher._Batch, _finish.Batch):
            batch = _scripted(base)(1 << 20, 1 << 40, [])
            batch.pending = {f"k{i}" for i in range(1000)}  # its only reference

            class Name(str):
                def __hash__(self) -> int:
                    batch.pending = set()
                    filler = [bytes(64) for _ in range(20000)]  # reuse freed memory
                    return hash(str(self))

            assert batch.add_new(Name("k5"), b"k5", 0o644, b"", 0, 10, 1, 2, "e", None)
            assert batch.pending == set() and batch._names == ["e"], base
        print("ok")
        """)
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-c", script, str(tests), str(tests.parent / "src")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "ok\n", (done.returncode, done.stderr)


def test_the_compiled_batch_checks_what_it_is_given() -> None:
    batch = _scripted(_finish.Batch)(1000, 1000, [])
    for base in (finisher._Batch, _finish.Batch):  # positional only, as the .pyi says
        with pytest.raises(TypeError):
            _scripted(base)(1000, 1000, []).add_new(
                "a", b"a", 0o644, b"", 0, 1, 0, 0, "a", token=None)
    with pytest.raises(TypeError):
        batch.add_new("a", b"a", 0o644, b"", 0, 1, 0, 0, "a")  # nine arguments
    with pytest.raises(TypeError):
        batch.add_new("a", "a", 0o644, b"", 0, 1, 0, 0, "a", None)  # not bytes
    with pytest.raises(TypeError):
        batch.add_new("a", b"a", 0o644, "data", -1, 0, 0, 0, "a", None)  # no buffer
    batch._names = ()  # a member of the wrong type: an error, never a crash
    with pytest.raises(TypeError, match="_names"):
        batch.add_new("a", b"a", 0o644, b"", 0, 1, 0, 0, "a", None)
    batch._names = []
    del batch.pending
    with pytest.raises(TypeError, match="pending"):  # the first member missing is named
        batch.add_new("a", b"a", 0o644, b"", 0, 1, 0, 0, "a", None)
    with pytest.raises(AttributeError):
        batch.pending
    assert not finisher.Finisher.__dict__.get("add_new")  # the base's, compiled here
    # mypy sees the reference (finisher's TYPE_CHECKING branch); at run time, the compiled.
    assert finisher._BatchBase is _finish.Batch  # type: ignore[comparison-overlap]


def test_a_batchs_symlinks_share_a_private_directory_per_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper makes a batch's symlinks in a private directory beside them: one for
    each run of them in the same directory, files between them included (a root file
    system's symlinks come between its files: one directory made and removed for each
    cost rootfs.tar 5%), none left once the batch is done, the symlinks and their times
    as the archive says."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    files: list[File] = []
    for i in range(6):
        files += [(f"a/f{i}".encode(), 0o644, b"x", None, 10, 11),
                  (f"a/s{i}".encode(), SYMLINK, f"t{i}".encode(), None, 5 + i, 6 + i)]
    files += [(f"b/s{i}".encode(), SYMLINK, b"u", None, 7, 8) for i in range(3)]
    files += [(b"a/s9", SYMLINK, b"v", None, 9, 9)]  # back in a: another run
    made: list[str] = []
    node_dir = finisher._FILE_OPS.node_dir

    def counted(parent: str) -> object:
        made.append(parent)
        return node_dir(parent)

    monkeypatch.setattr(finisher._FILE_OPS, "node_dir", counted)
    with _inside(tmp_path):
        failed, returned = finisher._finish_batch(memoryview(_batch(files)), [], -1)
    assert (failed, returned) == (None, [])
    assert made == ["a", "b", "a"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".chrootarchive")]
    for entry, mode, data, _extent, atime, mtime in files:
        assert entry is not None and data is not None
        path = tmp_path / os.fsdecode(entry)
        if mode == SYMLINK:
            st = path.lstat()  # (before readlink, which sets the atime)
            assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
            assert os.readlink(path) == os.fsdecode(data)
        else:
            assert path.read_bytes() == data
