"""The decompressed stream in shared memory: the parent writes it, the worker reads it.

A compressed input does not reach the worker through a pipe but through a ring: a
``memfd`` of :data:`SIZE` bytes that the parent's feeding thread writes the tar stream
into (zstd, and a plain tar from a pipe, without a chunk made for each step:
:meth:`RingWriter.fill`), each byte at its stream offset modulo the size; sealed at
that size, so that a worker cannot shrink it under the parent's mapping. The worker
reads it as a file,
so its files can be extents (the worker's helper copies them from the ring with
``sendfile``, as from a plain tar in a regular file): the worker neither reads their
data through a pipe nor copies it into batches (issue 16, docs/performance.md).

Two pipes carry stream offsets, 8 bytes each:

* *written* (parent to worker): how much of the stream the ring holds; its end is the
  end of the stream (the parent closes it after the last byte, or on an error).
* *freed* (worker to parent): how much the parent may overwrite: what the worker has
  consumed (:attr:`RingInput.consumed`: its reader's position, not how far it read
  ahead, since an extent may start in what it read ahead), except what its helper
  has still to copy (:attr:`RingInput.pinned`).

The parent waits when the ring is full; the worker when it needs bytes not yet
written. Before it waits, the worker frees what it can and, if the ring is full and
held by copies still to be made, finishes them (:attr:`RingInput.unpin`): no wait is
ever on a process that waits in turn.

Shared by both sides: :class:`RingWriter` is the parent's, :class:`RingInput` the
worker's.
"""

from __future__ import annotations

import mmap
import os
import struct

from chrootarchive import _fdio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["NOTHING_PINNED", "SIZE", "RingInput", "RingWriter", "send"]

# Bytes of the ring: the stream the parent may write ahead of the worker. An archive
# has stretches where the decompressor is the slower side (binaries) and stretches
# where the worker is (many small files); 64 MiB carries more of one over the other
# than 32 did (rootfs.tar.zst 7% faster, linux.tar.zst 3%: docs/performance.md). Its
# pages are taken as the stream first reaches them, so a small input takes no more.
SIZE = 64 << 20
# Bytes of the ring the parent maps at a time to decompress straight into, after the
# first lap (RingWriter.fill): its pages all mapped at once (MAP_POPULATE), then
# written with no system call and no copy; small, so that the parent's resident
# memory grows by this much, not by the ring (docs/performance.md, issue 16,
# nineteenth round).
WINDOW = 4 << 20
_FILL_STEP = 1 << 20  # bytes asked of the decompressor at a time
_RELEASE_READS = 64  # reads of the freed pipe before release_consumed gives up
NOTHING_PINNED = 1 << 62  # what RingInput.pinned gives when no copy holds the ring
_OFFSET = struct.Struct("<Q")


class RingWriter:
    """The parent's side: a new ring and its two pipes; :meth:`child_fds` go to the
    worker, :meth:`write` and :meth:`finish` feed it."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or SIZE
        import fcntl  # the parent's alone: the worker never loads it (its start-up)

        self.fd = os.memfd_create("chrootarchive-stream", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self._pipes: list[int] = []
        try:
            os.ftruncate(self.fd, self.size)
            # Its size for good: the parent writes it through a mapping, and a worker
            # (which holds it) that shrank it would kill the parent with SIGBUS.
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self._written_r, self._written_w = os.pipe2(os.O_CLOEXEC)
            self._pipes += (self._written_r, self._written_w)
            _fdio.guard(self._written_w)  # its end is the stream's: no fork may hold it
            self._freed_r, self._freed_w = os.pipe2(os.O_CLOEXEC)
            self._pipes += (self._freed_r, self._freed_w)
        except BaseException:
            self.close()
            raise
        self._end = 0  # stream bytes written
        self._freed = 0  # stream bytes the worker let go

    def child_fds(self) -> dict[str, int]:
        """The worker's descriptors: the ring (its stdin) and its ends of the pipes."""
        return {"stdin": self.fd, "ring_written": self._written_r,
                "ring_freed": self._freed_w}

    def close_child_ends(self) -> None:
        """Once the worker has its ends: close ours of them (a worker that dies then
        ends the freed pipe, and the parent stops waiting)."""
        for fd in (self._written_r, self._freed_w):
            self._close(fd)

    def write(self, data: bytes | memoryview) -> bool:
        """Write ``data`` at the end of the stream, waiting for room; False when the
        worker is gone (the rest is not wanted)."""
        view = memoryview(data)
        while view:
            room = self._room()
            if not room:
                return False
            at = self._end % self.size
            done = os.pwrite(self.fd, view[:min(len(view), room, self.size - at)], at)
            view = view[done:]
            if not self._advance(done):
                return False
        return True

    def fill(self, readinto: Callable[[memoryview], int]) -> bool:
        """:meth:`write` the stream that ``readinto`` gives (it fills a buffer, as a
        file's readinto does; 0: the end), without a chunk made for each step: the
        first lap through the ring (its pages new) from one reused buffer by
        ``pwrite``, which fills a new page at once; after it, straight into the ring's
        pages, mapped a :data:`WINDOW` at a time (linux.tar.zst: 0.1-0.2 s of the
        feeding thread's 1.6, ``bench/ring_feed.py``). ``readinto`` must keep no hold
        on the buffer it is given (the windows are unmapped): zstandard's C backend and
        the standard library's files do not. False when the worker is gone."""
        scratch = memoryview(bytearray(min(_FILL_STEP, self.size)))
        while self._end < self.size:  # the first lap
            room = self._room()
            if not room:
                return False
            done = readinto(scratch[:min(room, self.size - self._end)])
            if not done:
                return True
            if not self.write(scratch[:done]):
                return False
        del scratch  # its megabyte, for the rest of a long stream
        mapped: mmap.mmap | None = None
        view = memoryview(b"")
        base = window = 0  # the ring's bytes mapped
        try:
            while True:
                room = self._room()
                if not room:
                    return False
                at = self._end % self.size
                if mapped is None or not base <= at < base + window:
                    view.release()
                    if mapped is not None:
                        mapped.close()
                    base = at - at % mmap.PAGESIZE  # from the page that holds ``at``
                    window = min(WINDOW, self.size - base)
                    mapped = mmap.mmap(self.fd, window, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                                       offset=base)
                    view = memoryview(mapped)
                span = view[at - base:at - base + min(room, base + window - at, _FILL_STEP)]
                try:
                    done = readinto(span)
                finally:
                    span.release()
                if not done:
                    return True
                if not self._advance(done):
                    return False
        finally:
            view.release()
            if mapped is not None:
                mapped.close()

    def finish(self) -> None:
        """The end of the stream (after the last byte, or on an error)."""
        self._close(self._written_w)

    def release_consumed(self) -> None:
        """After the stream's last byte: give back the ring's pages that the worker
        has let go, while it unpacks what it has still to read. Else its exit frees
        them (its ring is the last one held), and the caller waits for that exit: 3.7 ms
        for a full 64 MiB ring (rootfs.tar.zst, docs/performance.md). Freed pages are
        ones the parent may overwrite, so it may as well empty them. Only a saving: where
        the kernel refuses (no address space left for the mapping), the pages are freed
        as before."""
        used = min(self._end, self.size)
        if not used:
            return
        os.set_blocking(self._freed_r, False)  # only what the worker has said so far
        try:
            # Bounded: a pipe holds 64 KiB by default, and a worker that kept it full
            # must not keep the feeding thread here.
            for _ in range(_RELEASE_READS):
                if not self._wait_freed():
                    break
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(self._freed_r, True)
        wanted = max(self._end - self._freed, 0)  # written, not yet let go
        if wanted >= self.size:
            return
        start, end = self._freed % self.size, self._end % self.size
        if not wanted:
            spans: list[tuple[int, int]] = [(0, used)]
        elif start < end:
            spans = [(0, start), (end, used)]
        else:  # what is wanted wraps around the ring's end
            spans = [(end, start)]
        try:
            for first, last in spans:
                first = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only
                if last < used:
                    last -= last % mmap.PAGESIZE
                if last > first:
                    _punch(self.fd, first, last - first)
        except OSError:
            pass

    def close(self) -> None:
        """Release everything (idempotent)."""
        for fd in list(self._pipes):
            self._close(fd)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _room(self) -> int:
        """The bytes the parent may write now, once the worker has freed some; 0 when
        the worker is gone."""
        while True:
            room = self._freed + self.size - self._end
            if room:
                return room
            if not self._wait_freed():
                return 0

    def _advance(self, done: int) -> bool:
        """``done`` more bytes of the stream are in the ring: tell the worker; False
        when it is gone."""
        self._end += done
        try:
            os.write(self._written_w, _OFFSET.pack(self._end))
        except BrokenPipeError:
            return False
        return True

    def _wait_freed(self) -> bool:
        data = os.read(self._freed_r, 8 * 512)
        if not data:
            return False  # the worker closed it: it ended
        whole = len(data) - len(data) % 8
        if not whole:
            return True  # not what a worker of ours writes: read on
        # Never back: whatever the worker says, the parent writes inside the ring only.
        # (It may be ahead of what was written: data the worker skips, unread.)
        self._freed = max(self._freed, _OFFSET.unpack_from(data, whole - 8)[0])
        return True

    def _close(self, fd: int) -> None:
        if fd in self._pipes:
            self._pipes.remove(fd)
            _fdio.close(fd)


class RingInput:
    """The worker's side: reads the stream at its own position, waits for the parent,
    and tells it what it may overwrite."""

    def __init__(self, fd: int, size: int, written_fd: int, freed_fd: int) -> None:
        self.fd = fd
        self.size = size
        self._written_fd = written_fd
        self._freed_fd = freed_fd
        os.set_blocking(freed_fd, False)  # a full pipe: the next offset says it
        self.pos = 0  # stream offset of the next byte this side reads
        self.end = 0  # stream bytes the parent said it wrote
        self.eof = False  # the parent said no more
        self._told = 0  # stream bytes the parent was told it may overwrite
        self._step = max(size // 8, 1)
        #: The stream offset up to which the reader is done with the stream (set by
        #: the reader; what it read ahead may still become an extent).
        self.consumed: Callable[[], int] | None = None
        #: The stream offset of the oldest byte still to be copied from the ring (the
        #: helper's extents), or None: set by whoever makes such copies.
        self.pinned: Callable[[], int] | None = None
        #: Finishes those copies: called when the ring is full and held by them.
        self.unpin: Callable[[], None] | None = None

    def read(self, view: memoryview) -> int:
        """Read into ``view`` from :attr:`pos` (at least one byte, waiting for the
        parent); 0 at the end of the stream."""
        if self.pos >= self.end and not self.wait_for(self.pos + 1):
            return 0
        n = min(len(view), self.end - self.pos)
        at = self.pos % self.size
        first = min(n, self.size - at)
        got = os.preadv(self.fd, [view[:first]], at)
        if first < n:
            got += os.preadv(self.fd, [view[first:n]], 0)
        self.pos += got
        if self.pos - self._told >= self._step:
            self._free()
        return got

    def skip(self, count: int) -> None:
        """Move :attr:`pos` over ``count`` bytes (reads wait for them as for any)."""
        self.pos += count

    def copy_to(self, fd: int, count: int) -> int:
        """Copy up to ``count`` bytes from :attr:`pos` into ``fd`` in the kernel
        (``sendfile``); the bytes copied, 0 at the end of the stream."""
        if self.pos >= self.end and not self.wait_for(self.pos + 1):
            return 0
        n = min(count, self.end - self.pos)
        send(fd, self.fd, self.pos, n, self.size)
        self.pos += n
        if self.pos - self._told >= self._step:
            self._free()
        return n

    def wait_for(self, upto: int) -> bool:
        """Wait until the stream holds ``upto`` bytes; False if it ends before."""
        while self.end < upto:
            if self.eof:
                return False
            self._free()
            if self.end - self._told >= self.size and self.unpin is not None:
                # The parent waits for room that copies still to be made hold.
                self.unpin()
                self._free()
            data = os.read(self._written_fd, 8 * 512)
            if not data:
                self.eof = True
            else:
                self.end = _OFFSET.unpack_from(data, len(data) - 8)[0]
        return True

    def drain(self, limit: int | None = None) -> int:
        """Read to the end of the stream, letting the parent finish; the bytes skipped.
        Only once the reader and the copies are done: everything read is freed.
        ``limit``: stop once more than that many were skipped."""
        self.consumed = self.pinned = None
        start = self.pos
        while (limit is None or self.pos - start <= limit) and self.wait_for(self.end + 1):
            self.pos = self.end
            self._free()
        self.pos = max(self.pos, self.end)
        return self.pos - start

    def _free(self) -> None:
        upto = self.pos if self.consumed is None else min(self.pos, self.consumed())
        if self.pinned is not None:
            upto = min(upto, self.pinned())
        if upto > self._told:
            try:
                os.write(self._freed_fd, _OFFSET.pack(upto))
            except BlockingIOError:
                return  # the parent has not read the last ones: this one can wait
            except OSError:
                pass  # the parent is gone: the worker is about to be
            self._told = upto


def _punch(fd: int, offset: int, length: int) -> None:
    """Empty ``length`` bytes of the ring ``fd`` from ``offset`` (a page's start): its
    pages freed, zeros if read (``MADV_REMOVE``, through a mapping that touches none)."""
    mapped = mmap.mmap(fd, length, mmap.MAP_SHARED, offset=offset)
    try:
        mapped.madvise(mmap.MADV_REMOVE)
    finally:
        mapped.close()


def send(fd: int, source: int, offset: int, size: int, ring: int) -> None:
    """Copy ``size`` bytes of the stream from ``offset`` out of the ring ``source`` (of
    ``ring`` bytes) into ``fd``, in the kernel."""
    while size:
        at = offset % ring
        count = min(size, ring - at)
        while count:
            sent = os.sendfile(fd, source, at, count)
            if not sent:
                raise OSError(61, "the ring ends inside the file's data")  # ENODATA
            at += sent
            offset += sent
            size -= sent
            count -= sent

