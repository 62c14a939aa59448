"""Moving the input into a running job, and reporting how far it got: one pump thread.

The caller's thread never blocks on a job that died: chunks are written by the pump
thread while the caller watches the job, so a job that fails while the input stalls is
reported at once (the pump ends with the input). When the job reads a file itself, the
pump thread (only with a progress callback) watches how far it got instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator

from chrootarchive import _fdio
from chrootarchive._threads import wait_ended
from chrootarchive.contract import JobReply
from chrootarchive.errors import ChrootArchiveError
from chrootarchive.runner.launch import InterruptsHeld
from chrootarchive.runner.worker import Running

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chrootarchive._ring import RingWriter

__all__ = ["Lister", "drive", "feed", "feed_fd_while_alive", "feed_ring_while_alive",
           "feed_while_alive", "list_names", "watch_offset"]

Progress = Callable[[int], None]

_WATCH = 0.05  # seconds between looks at the job while feeding it
_PROGRESS_POLL = 0.1  # seconds between looks at how far the worker read a file


def drive(start: Callable[[], Running], data: int | Iterable[bytes],
          offset_progress: Progress | None,
          names: Callable[[str], None] | None = None) -> JobReply:
    """Start a job and run it to its end with its input: chunks are fed; a descriptor
    it reads itself is watched for ``offset_progress`` (from before it starts, so that
    no byte goes unreported). ``names``: told each name the job lists on its stdout
    (started with a stdout pipe). Returns its reply or raises its error."""
    watch = (watch_offset(data, offset_progress)
             if isinstance(data, int) and offset_progress is not None
             else contextlib.nullcontext())
    with watch:
        job = start()
        lister = None
        listing_failed: list[BaseException] = []
        try:
            if names is not None:
                # Held: a KeyboardInterrupt as the lister started left the job running.
                with InterruptsHeld():
                    fd, job.stdout_r = job.stdout_r, -1  # the lister owns (and closes) it
                    lister = list_names(fd, names, listing_failed)
            if not isinstance(data, int):
                feed_while_alive(job, data)
            reply = job.finish()
        finally:
            try:
                job.close()
            finally:
                if lister is not None:
                    lister.wait()  # the job has ended: its stdout is at its end
        if listing_failed:
            raise listing_failed[0]  # the names could not be told (a full disk)
        return reply


class Lister:
    """A thread that reads NUL-terminated names from ``fd`` until its end (the job's
    exit), then closes it. What ``names`` raises goes into ``failed`` (the rest is
    read, not told: the job must not wait on a full pipe)."""

    def __init__(self, fd: int, names: Callable[[str], None],
                 failed: list[BaseException]) -> None:
        self._ended = threading.Event()
        self._stopped = False

        def run() -> None:
            pending = b""
            try:
                while True:
                    data = os.read(fd, 1 << 16)
                    if not data:
                        return
                    *whole, pending = (pending + data).split(b"\0")
                    for name in whole:
                        if failed or self._stopped:
                            break
                        try:
                            names(name.decode("utf-8", "surrogateescape"))
                        except Exception as err:
                            failed.append(err)
            finally:
                os.close(fd)
                self._ended.set()

        threading.Thread(target=run, name="chrootarchive-names", daemon=True).start()

    def wait(self) -> None:
        """Until the thread has read to the end. Interrupted, it tells no more names
        and is still waited for: none is told after the call has raised."""
        wait_ended(self._ended, self._stop)

    def _stop(self) -> None:
        self._stopped = True


def list_names(fd: int, names: Callable[[str], None],
               failed: list[BaseException]) -> Lister:
    """:class:`Lister`, started."""
    return Lister(fd, names, failed)


def feed(fd: int, chunks: Iterable[bytes]) -> None:
    """Write the stream to the job; stop quietly if the job stopped reading."""
    try:
        for chunk in chunks:
            _fdio.write_all(fd, chunk)
    except BrokenPipeError:
        return  # the job ended (its reply says why)


def feed_while_alive(job: Running, data: Iterable[bytes]) -> None:
    """Feed ``data`` to ``job`` (through its ring, or its stdin pipe) until it ends or
    the data does."""
    if job.ring is not None:
        ring, job.ring = job.ring, None  # the feeding thread owns (and closes) it
        err = feed_ring_while_alive(job, ring, data)
    else:
        fd, job.stdin_w = job.stdin_w, -1  # the feeding thread owns (and closes) it
        err = feed_fd_while_alive(job, fd, data)
    if err is not None:
        if isinstance(err, ChrootArchiveError):
            # The job saw a truncated stream; the feeding error is the real cause.
            with contextlib.suppress(ChrootArchiveError):
                job.finish()
        else:
            job.kill()
        raise err


def feed_fd_while_alive(job: Running, fd: int, data: Iterable[bytes]) -> BaseException | None:
    """Feed ``data`` into ``fd`` (a pipe the job reads; closed here) from a thread of its
    own, until the data ends or the job does; return what the feeding raised, if
    anything (the caller decides what becomes of the job)."""
    return _feed_from_thread(job, lambda: feed(fd, data), lambda: _fdio.close(fd))


def feed_ring_while_alive(job: Running, ring: RingWriter, data: Iterable[bytes]
                           ) -> BaseException | None:
    """:func:`feed_fd_while_alive` through the job's ring (closed here): the end of the
    data (or an error) is the end of the stream."""

    def write() -> None:
        direct = getattr(data, "direct_readinto", None)  # operations.compression's
        readinto = direct() if direct is not None else None
        if readinto is not None:  # it writes into the ring itself
            if not ring.fill(readinto):
                return  # the job ended (its reply says why)
        else:
            for chunk in data:
                if not ring.write(chunk):
                    return
        ring.finish()  # the job reads on to the end...
        ring.release_consumed()  # ...while the pages it is done with are given back

    return _feed_from_thread(job, write, ring.close)


def _feed_from_thread(job: Running, write: Callable[[], None], end: Callable[[], None]
                      ) -> BaseException | None:
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            write()
        except BaseException as err:
            failure.append(err)
        finally:
            end()
            done.set()

    threading.Thread(target=run, name="chrootarchive-feed", daemon=True).start()
    try:
        while not done.wait(_WATCH):
            outcome = job.outcome()
            if outcome is not None:
                # The job ended first. A job that succeeded read its input to the end,
                # so the feeding has ended too: wait for its verdict (a bad checksum at
                # the very end of a gzip stream, say), however busy the machine. After
                # a failure, if the input stalls, the job's error is reported now.
                if outcome:
                    while not done.wait(_WATCH):  # in steps: an interrupt_main is seen
                        pass
                elif not done.wait(0.2):
                    return None
                break
    except BaseException:
        job.kill()
        raise
    return failure[0] if failure else None


@contextlib.contextmanager
def watch_offset(fd: int, progress: Progress) -> Iterator[None]:
    """Progress of a file the job reads itself: the offset it shares with us.

    The job reads through a duplicate of ``fd`` (the same open file), so the file's
    offset is how far it got; it is polled, and reported in steps.
    """
    last = [os.lseek(fd, 0, os.SEEK_CUR)]
    done = threading.Event()
    ended = threading.Event()

    def report() -> None:
        try:
            here = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            return
        if here > last[0]:
            progress(here - last[0])
            last[0] = here

    def poll() -> None:
        try:
            while not done.wait(_PROGRESS_POLL):
                report()
        finally:
            ended.set()

    threading.Thread(target=poll, name="chrootarchive-progress", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        wait_ended(ended)  # no progress is reported after the call has raised
    report()
