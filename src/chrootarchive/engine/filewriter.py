"""Writing file data and metadata on a second core.

The unpacker's thread parses headers, checks names and creates each file (with
``O_EXCL``, in archive order, so replacement semantics do not change); this thread
then writes the data, owner, xattrs, mode and times through the new file's descriptor
and closes it. The system calls of one file overlap with the parsing of the next.
Memory stays bounded: at most :data:`MAX_PENDING` chunks of at most 1 MiB are queued.
Built on ``_thread`` and ``_queue`` (what ``threading`` and ``queue`` are made of):
importing those costs the worker milliseconds of start-up.

An error is remembered with its entry name and raised by the unpacker's thread at the
next hand-over or at :meth:`FileWriter.drain`.
"""

from __future__ import annotations

import _thread
import os
from _queue import SimpleQueue

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAX_PENDING", "FileMetadata", "FileWriter"]

MAX_PENDING = 4  # chunks: enough to keep the thread busy, few MiB of memory


class FileMetadata:
    """What to apply to a file once its data is written."""

    __slots__ = ("atime_ns", "entry", "mtime_ns", "owner", "size", "special_mode", "xattrs")

    def __init__(
        self,
        entry: str,
        size: int | None,  # ftruncate to this size (sparse files), or None
        owner: tuple[int, int] | None,
        xattrs: dict[str, bytes] | None,
        special_mode: int | None,  # fchmod after fchown (setuid/setgid/sticky), or None
        atime_ns: int,
        mtime_ns: int,
    ) -> None:
        self.entry = entry
        self.size = size
        self.owner = owner
        self.xattrs = xattrs
        self.special_mode = special_mode
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns


# Queue items: (fd, offset or -1 for "append", data, metadata, last chunk of the file)
_Item = tuple[int, int, bytes, FileMetadata, bool]


class FileWriter:
    """A thread that finishes files: data, then metadata, then close.

    Args:
        chown: sets an owner through a descriptor (the unpacker's, which knows what to
            skip without privilege).
        set_xattrs: sets one entry's xattrs through a descriptor.
    """

    def __init__(
        self,
        chown: Callable[[int, tuple[int, int], str], None],
        set_xattrs: Callable[[int, dict[str, bytes], str], None],
    ) -> None:
        self._chown = chown
        self._set_xattrs = set_xattrs
        self._queue: SimpleQueue[_Item | None] = SimpleQueue()
        self._free: SimpleQueue[None] = SimpleQueue()  # one token per free queue slot
        for _ in range(MAX_PENDING):
            self._free.put(None)
        self.error: tuple[BaseException, str] | None = None
        self._open: set[int] = set()
        self._stopped = _thread.allocate_lock()  # released by the thread as it ends
        self._stopped.acquire()
        self._running = True
        _thread.start_new_thread(self._run, ())

    def put(self, fd: int, offset: int, data: bytes, metadata: FileMetadata,
            last: bool) -> None:
        """Queue a chunk of ``fd``; with ``last``, finish and close the file after it.

        The writer owns ``fd`` from the first chunk on.
        """
        self._open.add(fd)
        self._free.get()  # blocks while MAX_PENDING chunks wait
        self._queue.put((fd, offset, data, metadata, last))

    def drain(self) -> None:
        """Wait until everything queued is written; stop the thread; close what is open.

        Safe to call after an error, and more than once.
        """
        if self._running:
            self._queue.put(None)
            self._stopped.acquire()
            self._running = False
        for fd in self._open:
            os.close(fd)
        self._open.clear()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._stopped.release()

    def _loop(self) -> None:
        get = self._queue.get
        free = self._free.put
        write = os.write
        pwrite = os.pwrite
        while True:
            item = get()
            if item is None:
                return
            free(None)
            fd, offset, data, metadata, last = item
            if self.error is not None:
                if last:
                    self._close(fd)
                continue
            try:
                view = memoryview(data)
                if offset < 0:
                    while view:
                        view = view[write(fd, view):]
                else:
                    while view:
                        n = pwrite(fd, view, offset)
                        view = view[n:]
                        offset += n
                if last:
                    self._finish(fd, metadata)
            except BaseException as err:
                self.error = (err, metadata.entry)
            finally:
                if last:
                    self._close(fd)

    def _close(self, fd: int) -> None:
        self._open.discard(fd)
        os.close(fd)

    def _finish(self, fd: int, meta: FileMetadata) -> None:
        if meta.size is not None:
            os.ftruncate(fd, meta.size)
        if meta.owner is not None:
            self._chown(fd, meta.owner, meta.entry)
        if meta.xattrs:
            self._set_xattrs(fd, meta.xattrs, meta.entry)
        if meta.special_mode is not None:
            os.fchmod(fd, meta.special_mode)
        os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))
