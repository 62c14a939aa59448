"""A compressed input reaches the worker through a ring (``chrootarchive._ring``).

The parent decompresses into shared memory that the worker reads as a file, so that
the worker's helper copies files from it (extents) as from a plain tar in a file. These
tests shrink the ring to 64 KiB, so that every path wraps it many times: files of every
size (extents, files too large to be one, sparse files, links), more headers without
data than the ring holds, and a helper that falls behind while it holds the ring. The
tree must be the one the plain tar gives, nothing may wait forever, and a stream that
ends early or a worker that dies must end the call with its error.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import mmap
import os
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import zstandard

import chrootarchive
from chrootarchive import _ring
from chrootarchive.errors import MalformedArchiveError
from chrootarchive.operations import compression
from chrootarchive.operations import untar as untar_operation
from helpers import tree
from helpers.leaks import child_pids

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL_RING = 64 << 10
pytestmark = pytest.mark.timeout(120)  # a ring that waits forever fails here, not in 5 min


def _archive(seed: int = 1) -> bytes:
    """Files of every size around the ring's (64 KiB): tiny, extents (at most 16 KiB),
    larger than an extent may be, larger than the ring; links, a sparse file, long
    names; then more directory headers than the ring holds, and files again."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes | None = None, **kw: object) -> None:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000 + rng.randrange(10**6)
            for key, value in kw.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)

        add("d", type=tarfile.DIRTYPE, mode=0o755)
        for i in range(400):
            size = rng.choice([0, 1, 100, 511, 512, 3000, 9000, 16 << 10, (16 << 10) + 1,
                               40_000, 70_000, 300_000])
            add(f"d/f{i:04d}" + "-long" * (i % 7 * 6), rng.randbytes(size), mode=0o644)
            if i % 50 == 7:
                add(f"d/h{i}", type=tarfile.LNKTYPE, linkname=f"d/f{i:04d}" + "-long" * (
                    i % 7 * 6))
                add(f"d/s{i}", type=tarfile.SYMTYPE, linkname=f"f{i:04d}")
        add("e", type=tarfile.DIRTYPE, mode=0o755)
        add("z", type=tarfile.DIRTYPE, mode=0o755)
        for i in range(600):  # 300 KiB of headers, no data
            add(f"e/{i:04d}", type=tarfile.DIRTYPE, mode=0o755)
        add("big", rng.randbytes(3 << 20))
        for i in range(100):
            add(f"z/{i}", rng.randbytes(rng.randrange(1, 20_000)))
    return buf.getvalue()


def _untar_file(archive: bytes, dest: Path) -> None:
    """The plain tar from a file: the worker reads it itself, without a ring."""
    path = dest.with_name(dest.name + ".tar")
    path.write_bytes(archive)
    chrootarchive.untar(path, dest)


def _snapshot(dest: Path) -> tree.Snapshot:
    return tree.snapshot(dest, ignore_root_mtime=True, nlink=True)


@pytest.fixture
def small_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ring, "SIZE", SMALL_RING)


def _compress(data: bytes, method: str) -> bytes:
    if method == "gzip":
        return gzip.compress(data, 1)
    return zstandard.ZstdCompressor(level=1).compress(data)


@pytest.mark.parametrize("method", ["gzip", "zstd"])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_compressed_archive_through_a_small_ring_gives_the_plain_tree(
        seed: int, method: str, tmp_path: Path, small_ring: None) -> None:
    archive = _archive(seed)
    plain, ringed = tmp_path / "plain", tmp_path / "ringed"
    _untar_file(archive, plain)  # read by the worker itself, no ring
    chrootarchive.untar(_compress(archive, method), ringed)  # decompressed into the ring
    tree.assert_same(_snapshot(plain), _snapshot(ringed), "the ring gave another tree")


@pytest.mark.parametrize("seed", [1, 2])
def test_zstd_decompressed_straight_into_a_window_that_moves_through_the_ring(
        seed: int, tmp_path: Path, small_ring: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """zstd writes into the ring's pages, a window of them mapped at a time, after a
    first lap written from one buffer (``RingWriter.fill``): with a window of a quarter
    of the ring, it moves four times a lap and waits for room inside it; the tree is
    the plain tar's."""
    monkeypatch.setattr(_ring, "WINDOW", SMALL_RING // 4)
    archive = _archive(seed)
    plain, ringed = tmp_path / "plain", tmp_path / "ringed"
    _untar_file(archive, plain)
    chrootarchive.untar(_compress(archive, "zstd"), ringed)
    tree.assert_same(_snapshot(plain), _snapshot(ringed), "the ring gave another tree")


@pytest.mark.parametrize("progress", [False, True])
def test_a_plain_tar_from_a_pipe_is_read_straight_into_the_ring(
        progress: bool, tmp_path: Path, small_ring: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain tar from a pipe (``docker save | chrootarchive untar -``) is read into the
    ring's pages (``readinto``), through the progress counter too; the tree is the
    one the same tar in a file gives, and progress (bytes read so far) reaches the
    archive's size and never goes back."""
    monkeypatch.setattr(_ring, "WINDOW", SMALL_RING // 4)
    archive = _archive(3)
    plain, piped = tmp_path / "plain", tmp_path / "piped"
    _untar_file(archive, plain)
    read, write = os.pipe()

    def feed() -> None:
        with open(write, "wb") as out:
            out.write(archive)

    writer = threading.Thread(target=feed)
    writer.start()
    counted: list[int] = []
    with open(read, "rb") as source:
        chrootarchive.untar(source, piped, progress=counted.append if progress else None)
    writer.join()
    tree.assert_same(_snapshot(plain), _snapshot(piped), "the pipe gave another tree")
    if progress:
        assert counted == sorted(counted) and counted[-1] == len(archive), counted[-3:]


_CFFI = textwrap.dedent("""\
    import sys
    sys.path.insert(0, sys.argv[1])
    import zstandard
    import chrootarchive
    assert zstandard.backend == "cffi", zstandard.backend
    chrootarchive.untar(sys.argv[2], sys.argv[3])
    try:
        chrootarchive.untar(sys.argv[4], sys.argv[5])
    except chrootarchive.LimitExceededError as err:
        print("refused:", err.message)
    import gc
    gc.collect()
    """)


def test_zstd_with_the_librarys_cffi_backend_goes_in_chunks(tmp_path: Path) -> None:
    """zstandard's cffi backend (its fallback where the C extension cannot load) keeps
    a hold on a buffer it failed to fill, which a ring's window then could not unmap:
    the real error was lost to a BufferError and the process died at its exit. With
    that backend the stream goes into the ring in chunks: a good archive gives the
    plain tree, one over the window limit its own error, and the process ends well."""
    archive = _archive(5)
    good = tmp_path / "good.tar.zst"
    good.write_bytes(_compress(archive, "zstd"))
    params = zstandard.ZstdCompressionParameters(window_log=27, write_content_size=False)
    packer = zstandard.ZstdCompressor(compression_params=params).compressobj()
    wide = tmp_path / "wide.tar.zst"  # a 128 MiB window, over the default limit
    wide.write_bytes(packer.compress(archive + bytes(40 << 20)) + packer.flush())
    plain, ringed = tmp_path / "plain", tmp_path / "ringed"
    _untar_file(archive, plain)
    done = subprocess.run(
        [sys.executable, "-c", _CFFI, str(SRC), str(good), str(ringed), str(wide),
         str(tmp_path / "wide")],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHON_ZSTANDARD_IMPORT_POLICY="cffi"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: limit max_memory exceeded" in done.stdout, done.stdout
    tree.assert_same(_snapshot(plain), _snapshot(ringed), "the ring gave another tree")


class _Greedy:
    """A caller's file object that gives more than it is asked for (urllib3 1.x's
    ``read(amt)`` with ``decode_content`` may), and has no readinto."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(-1 if size < 0 else size + 4096)


def test_a_callers_file_object_is_read_with_read_alone(tmp_path: Path) -> None:
    """Only files the standard library opened are read straight into the ring; a
    caller's file object promises ``read`` alone, and is read with it, whatever size
    it gives."""
    archive = _archive(6)
    plain, given = tmp_path / "plain", tmp_path / "given"
    _untar_file(archive, plain)
    # Not a BinaryIO: an object with read() alone, which untar accepts.
    chrootarchive.untar(_Greedy(archive), given)
    tree.assert_same(_snapshot(plain), _snapshot(given), "the object gave another tree")


def test_what_goes_straight_into_the_ring(tmp_path: Path) -> None:
    """The trees above are the same either way; this says which way each input takes:
    zstd with the C backend, and a plain tar from a file the standard library opened
    (counted for progress or not), fill the ring themselves; a caller's file object
    and gzip give chunks."""
    archive = _archive(7)
    plain = tmp_path / "a.tar"
    plain.write_bytes(archive)
    with open(plain, "rb") as raw:
        _, chunks = compression.decompressed_chunks(raw)
        assert chunks.direct_readinto() is not None  # type: ignore[attr-defined]
        counted = untar_operation._Counting(raw, lambda _done: None)
        _, chunks = compression.decompressed_chunks(counted)
        assert chunks.direct_readinto() is not None  # type: ignore[attr-defined]
    _, chunks = compression.decompressed_chunks(_Greedy(archive))
    assert chunks.direct_readinto() is None  # type: ignore[attr-defined]
    _, chunks = compression.decompressed_chunks(io.BytesIO(_compress(archive, "zstd")))
    assert zstandard.backend == "cext"
    assert chunks.direct_readinto() is not None  # type: ignore[attr-defined]
    _, chunks = compression.decompressed_chunks(io.BytesIO(_compress(archive, "gzip")))
    assert not hasattr(chunks, "direct_readinto")


def test_the_ring_keeps_its_size() -> None:
    """The parent writes the ring through a mapping: a worker (which holds the ring) that
    shrank it would kill the parent with SIGBUS. Sealed: neither shrunk nor grown."""
    ring = _ring.RingWriter(SMALL_RING)
    try:
        for size in (0, SMALL_RING // 2, SMALL_RING * 2):
            with pytest.raises(PermissionError):
                os.ftruncate(ring.fd, size)
        with pytest.raises(PermissionError):  # and the seals are final
            fcntl.fcntl(ring.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        assert os.fstat(ring.fd).st_size == SMALL_RING
    finally:
        ring.close()


def test_holes_a_worker_punches_in_the_ring_do_not_harm_the_parent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The seals leave a worker one way to change the ring: punching holes in it
    (``fallocate``), also under the window the parent has mapped. Here it punches out
    all it read before it frees it: the parent's next writes there fill fresh pages (no
    SIGBUS, no error), the stream goes on to its end, and every byte it writes after a
    hole is there to read. (A hole in what the parent wrote and the worker has not
    read is the worker spoiling its own input: the parent never reads the ring.)"""
    monkeypatch.setattr(_ring, "WINDOW", SMALL_RING // 4)  # windows that move
    # 64 laps and a bit: the worker frees all it saw at each look, so that the parent is
    # never more than a lap ahead of it: 64 looks at least, whatever the machine's pace.
    data = random.Random(7).randbytes(SMALL_RING * 64 + 12345)
    ring = _ring.RingWriter(SMALL_RING)
    fds = ring.child_fds()
    ring_path = f"/proc/{os.getpid()}/fd/{ring.fd}"
    seen = {"end": 0, "punches": 0, "pages_freed": 0}
    wrong: list[int] = []

    def punch(start: int, length: int) -> None:
        blocks = os.fstat(ring.fd).st_blocks
        subprocess.run(["fallocate", "--punch-hole", "--offset", str(start), "--length",
                        str(length), ring_path], check=True)
        seen["punches"] += 1
        seen["pages_freed"] += os.fstat(ring.fd).st_blocks < blocks

    def hostile_worker() -> None:
        while offsets := os.read(fds["ring_written"], 8 * 512):
            end = int.from_bytes(offsets[-8:], "little")
            for pos in range(seen["end"], end, 4096):  # what was written since
                n = min(4096, end - pos, SMALL_RING - pos % SMALL_RING)
                if os.pread(ring.fd, n, pos % SMALL_RING) != data[pos:pos + n]:
                    wrong.append(pos)
            if seen["punches"] < 32:  # what it read, before it frees it
                at, length = seen["end"] % SMALL_RING, end - seen["end"]
                punch(at, min(length, SMALL_RING - at))
                if at + length > SMALL_RING:
                    punch(0, at + length - SMALL_RING)
            seen["end"] = end
            os.write(fds["ring_freed"], end.to_bytes(8, "little"))

    worker = threading.Thread(target=hostile_worker)
    worker.start()
    try:
        assert ring.fill(io.BytesIO(data).readinto)
        ring.finish()
        worker.join(60)
    finally:
        ring.close()
    assert not worker.is_alive()
    assert seen["end"] == len(data) and not wrong, (seen, wrong[:5])
    assert seen["punches"] >= 32 and seen["pages_freed"] >= 8, seen  # real holes


@pytest.mark.parametrize(("length", "kept"), [
    (SMALL_RING * 3 + 5000, 0),  # the worker let go of everything
    (SMALL_RING * 3 + 40_000, 30_000),  # what it still reads lies inside the ring
    (SMALL_RING * 3 + 10_000, 30_000),  # and across the ring's end
    (SMALL_RING // 2, 10_000),  # a stream that never went round
])
def test_the_pages_the_worker_let_go_are_given_back_at_the_end(length: int,
                                                               kept: int) -> None:
    """After the stream's last byte, the parent empties the ring's pages that the
    worker has let go (``RingWriter.release_consumed``): their freeing no longer falls
    on the worker's exit, which the caller waits for. What the worker has still to read
    is left whole."""
    data = random.Random(length).randbytes(length)
    ring = _ring.RingWriter(SMALL_RING)
    fds = ring.child_fds()
    let_go = threading.Event()

    def worker() -> None:  # reads everything, and lets go of all but the last ``kept``
        told = 0
        while offsets := os.read(fds["ring_written"], 8 * 512):
            end = int.from_bytes(offsets[-8:], "little")
            upto = min(end, length - kept)
            if upto > told:
                os.write(fds["ring_freed"], upto.to_bytes(8, "little"))
                told = upto
            if end == length:
                let_go.set()

    def pages() -> int:
        return os.fstat(ring.fd).st_blocks * 512 // mmap.PAGESIZE

    reader = threading.Thread(target=worker)
    reader.start()
    try:
        assert ring.fill(io.BytesIO(data).readinto)
        assert let_go.wait(30)
        assert pages() == -(-min(length, SMALL_RING) // mmap.PAGESIZE)  # all it wrote
        ring.finish()
        ring.release_consumed()
        # The pages that hold the kept bytes: one more where they start inside a page,
        # one more where they wrap round the ring's end.
        at = (length - kept) % SMALL_RING
        most = -(-kept // mmap.PAGESIZE) + (at % mmap.PAGESIZE > 0) + (
            at + kept > SMALL_RING)
        assert pages() <= most, (pages(), most)
        for pos in range(length - kept, length, 4096):  # and they are whole
            n = min(4096, length - pos, SMALL_RING - pos % SMALL_RING)
            assert os.pread(ring.fd, n, pos % SMALL_RING) == data[pos:pos + n]
        reader.join(30)
    finally:
        ring.close()
    assert not reader.is_alive()


def test_the_feeding_gives_the_pages_back_once_the_stream_has_ended(
        tmp_path: Path, small_ring: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The feeding thread releases the ring's pages after the stream's last byte, once
    the worker has been told that it is the last; then closes the ring."""
    calls: list[tuple[int, bool]] = []
    real = _ring.RingWriter.release_consumed

    def watched(self: _ring.RingWriter) -> None:
        calls.append((self._end, self._written_w in self._pipes))
        real(self)

    monkeypatch.setattr(_ring.RingWriter, "release_consumed", watched)
    archive = _archive(5)
    for method in ("gzip", "zstd"):  # chunks written; decompressed into the ring
        chrootarchive.untar(_compress(archive, method), tmp_path / method)
    assert calls == [(len(archive), False)] * 2, calls


def test_a_release_that_the_kernel_refuses_leaves_the_unpack_whole(tmp_path: Path) -> None:
    """Giving the pages back is only a saving: where the kernel refuses its mapping (no
    address space left, under ``RLIMIT_AS``), the stream has still been fed whole, and
    the unpack ends as it would have, every file there."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(3):  # more than the ring holds, so that it is all in use
            info = tarfile.TarInfo(f"zeros{i}")
            info.size = 30 << 20
            tf.addfile(info, io.BytesIO(bytes(info.size)))
        for i in range(20):
            info = tarfile.TarInfo(f"small/{i}")
            info.size = 100
            tf.addfile(info, io.BytesIO(bytes([i]) * 100))
    packed = tmp_path / "a.tar.zst"
    packed.write_bytes(_compress(buf.getvalue(), "zstd"))
    dest = tmp_path / "dest"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""\
        import mmap, resource, sys, time
        sys.path.insert(0, {str(SRC)!r})
        import chrootarchive
        from chrootarchive import _ring
        refused = []
        real_punch, real_release = _ring._punch, _ring.RingWriter.release_consumed
        def punch(fd, offset, length):
            try:
                real_punch(fd, offset, length)
            except OSError as err:
                refused.append(err.errno)
                raise
        def release(self):
            time.sleep(1)  # the worker reads to the end, and lets go of all it read
            with open("/proc/self/statm") as statm:
                size = int(statm.read().split()[0]) * mmap.PAGESIZE
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (size + (16 << 20), hard))
            try:
                real_release(self)
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        _ring._punch = punch
        _ring.RingWriter.release_consumed = release
        result = chrootarchive.untar({str(packed)!r}, {str(dest)!r})
        print(result.entries, refused)
        """)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["23", "[12]"], proc.stdout  # ENOMEM, and every entry
    assert sorted(os.listdir(dest / "small")) == sorted(str(i) for i in range(20))
    assert all((dest / f"zeros{i}").stat().st_size == 30 << 20 for i in range(3))


def test_the_zstd_decoder_is_made_while_the_worker_confines_itself(tmp_path: Path) -> None:
    """``zstandard`` (4-5 ms to import) is loaded once the job is handed over, before
    the parent waits for the worker to be confined, not after; and making the decoder
    reads none of the stream (a refused rung leaves it all to the next)."""
    packed = tmp_path / "a.tar.zst"
    packed.write_bytes(_compress(_archive(6), "zstd"))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(SRC)!r})
        import chrootarchive
        from chrootarchive.runner import worker
        seen = []
        real = worker.Worker.wait_ready
        def wait_ready(self):
            seen.append("zstandard" in sys.modules)
            real(self)
        worker.Worker.wait_ready = wait_ready
        chrootarchive.untar({str(packed)!r}, {str(tmp_path / "dest")!r})
        print(seen)
        """)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[True]"], proc.stdout
    raw = io.BytesIO(packed.read_bytes())
    _, chunks = compression.decompressed_chunks(raw)
    at = raw.tell()
    chunks.prepare_decoder()  # type: ignore[attr-defined]
    assert raw.tell() == at
    assert b"".join(chunks) == _archive(6)


def test_data_skipped_past_the_end_of_the_ring_is_not_waited_for(
        tmp_path: Path, small_ring: None) -> None:
    """Entries whose data the reader skips (excluded here), many times the ring's size:
    the worker lets the parent write past them without reading them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, size in (("skip/a", 5 << 20), ("keep", 3000), ("skip/b", 1 << 20),
                           ("last", 10)):
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, io.BytesIO(bytes([len(name)]) * size))
    dest = tmp_path / "dest"
    chrootarchive.untar(gzip.compress(buf.getvalue(), 1), dest, excludes=["skip"])
    assert sorted(os.listdir(dest)) == ["keep", "last"]
    assert (dest / "last").read_bytes() == bytes([4]) * 10


def test_data_after_the_end_of_the_archive_longer_than_the_ring(
        tmp_path: Path, small_ring: None) -> None:
    """Zeros, or a whole second archive, after the end-of-archive blocks, many times
    the ring's size: read to their end (not unpacked), and the call ends."""
    archive = _archive(4)
    for tail in (bytes(1 << 20), bytes(512) + archive):
        dest = tmp_path / f"dest{len(tail)}"
        chrootarchive.untar(gzip.compress(archive + tail, 1), dest)
        assert (dest / "big").stat().st_size == 3 << 20


def test_the_ring_is_not_used_for_a_plain_tar_in_a_file(tmp_path: Path,
                                                        small_ring: None) -> None:
    """A plain tar in a file is read by the worker itself: no ring is made."""
    path = tmp_path / "a.tar"
    path.write_bytes(_archive())
    made: list[int] = []
    real = _ring.RingWriter.__init__

    def counting(self: _ring.RingWriter, size: int | None = None) -> None:
        made.append(1)
        real(self, size)

    _ring.RingWriter.__init__ = counting  # type: ignore[method-assign]
    try:
        chrootarchive.untar(path, tmp_path / "dest")
        assert not made
        chrootarchive.untar(gzip.compress(path.read_bytes(), 1), tmp_path / "dest2")
        assert made
    finally:
        _ring.RingWriter.__init__ = real  # type: ignore[method-assign]


@pytest.mark.parametrize("method", ["gzip", "zstd"])
def test_a_stream_that_ends_early_names_the_entry(method: str, tmp_path: Path,
                                                  small_ring: None) -> None:
    archive = _archive()
    cut = _compress(archive[: len(archive) // 2 + 700], method)  # a whole stream
    with pytest.raises(MalformedArchiveError) as raised:
        chrootarchive.untar(cut, tmp_path / "dest")
    assert "truncated" in raised.value.message and raised.value.entry


# The unpacker in a child process (no jail), reading a ring that a thread of the same
# process feeds, with its helper stopped for a while once it has files in flight: the
# ring is full and held by the helper's extents; the reader must have them copied (or
# wait for them) and go on, not wait forever.
_STALLED = textwrap.dedent("""\
    import gzip, os, signal, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from chrootarchive import _ring
    from chrootarchive.engine import fsops, unpacker as unpack
    from chrootarchive.options import UnpackOptions, unpack_spec
    from chrootarchive.tarformat import reader as tarreader
    archive = open(sys.argv[2], "rb").read()
    os.chdir(sys.argv[3])
    os.umask(0)
    writer = _ring.RingWriter(int(sys.argv[4]))
    fds = writer.child_fds()
    def feed():
        for i in range(0, len(archive), 7000):
            if not writer.write(archive[i:i + 7000]):
                break
        writer.finish()
    threading.Thread(target=feed, daemon=True).start()
    ring = _ring.RingInput(fds["stdin"], writer.size, fds["ring_written"], fds["ring_freed"])
    u = unpack.Unpacker(fsops.FileOps(), unpack_spec(UnpackOptions()), print)
    u.finisher_countdown = 64
    start = u._start_finisher
    def start_then_stall(*args):
        start(*args)
        pid = u.finisher._pid
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(1.0, os.kill, (pid, signal.SIGCONT)).start()
    u._start_finisher = start_then_stall
    u.run(tarreader.TarReader(fds["stdin"], ring=ring))
    print("extents", u.finisher.extents, "here", u.extents_here)
""")


def test_a_helper_that_holds_a_full_ring_does_not_stop_the_unpack(tmp_path: Path) -> None:
    archive = _archive(3)
    path = tmp_path / "a.tar"
    path.write_bytes(archive)
    dest, plain = tmp_path / "dest", tmp_path / "plain"
    dest.mkdir()
    proc = subprocess.run([sys.executable, "-c", _STALLED, str(SRC), str(path), str(dest),
                           str(SMALL_RING)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    extents = int(proc.stdout.split()[-3])
    assert extents > 0, proc.stdout  # the helper held the ring
    _untar_file(archive, plain)
    tree.assert_same(_snapshot(plain), _snapshot(dest), "the stalled helper changed the tree")


@pytest.mark.parametrize("method", ["gzip", "zstd"])  # chunks written; or decompressed in
def test_a_worker_that_dies_ends_the_feeding(method: str, tmp_path: Path) -> None:
    """The worker is killed while the parent waits for room in the ring: the call ends
    with the worker's error at once, and leaves no process behind."""
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w") as tf:
        info = tarfile.TarInfo("big")
        info.size = 300 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    packed = tmp_path / "big.tar.packed"
    packed.write_bytes(_compress(big.getvalue(), method))
    dest = tmp_path / "dest"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time
        sys.path[:0] = [{str(SRC)!r}, {str(Path(__file__).parent)!r}]
        import chrootarchive
        from chrootarchive import _ring
        from helpers.leaks import child_pids
        _ring.SIZE = {SMALL_RING}
        try:
            chrootarchive.untar({str(packed)!r}, {str(dest)!r})
        except chrootarchive.ChrootArchiveError as err:
            print(type(err).__name__, err.message)
        time.sleep(0.3)
        print("left", [pid for pid, _, state in child_pids() if state != "Z"])
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (dest / "big").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = [pid for pid, _, state in child_pids(proc.pid) if state != "Z"]
    assert workers, "no worker seen"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert "WorkerError" in out and "killed by SIGKILL" in out, (out, err)
    assert "left []" in out, out
