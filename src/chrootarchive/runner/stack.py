"""A stack of layers in one job: one worker, one jail, the layers fed one after another.

Starting a worker (a process, a jail, its lock-down) for each layer of an image cost more
than many small layers do. :func:`start` starts one job for all of them
(``JobRequest.stack``); :meth:`Stack.apply` hands it each layer through the layer channel
(:mod:`chrootarchive._channel`): a ring of its own per layer (a pipe for the in-process
job), fed from a thread while the job is watched, then that layer's result. A ring lets
the worker's helper copy the layer's files out of it, as for ``untar``. The next layer
is handed over only when the caller asks, after it has checked this one (its digest and
DiffID): on a mismatch, :meth:`Stack.stop` ends the job before it applies anything more.
"""

from __future__ import annotations

import _socket
import contextlib
import os
from collections.abc import Callable, Iterable

from chrootarchive import _channel, _fdio, _ring
from chrootarchive.contract import JobReply, JobRequest
from chrootarchive.errors import ChrootArchiveError, WorkerError
from chrootarchive.jail.confine import IN_PROCESS
from chrootarchive.runner import ladder, pump, standby
from chrootarchive.runner.worker import Running

__all__ = ["Stack", "start"]


class Stack:
    """A started job that applies layers one after another (see the module)."""

    def __init__(self, job: Running, channel: _socket.socket,
                 names: Callable[[str], None] | None, ring: int = 0) -> None:
        self._job = job
        self._channel: _socket.socket | None = channel
        self._ring = ring  # the size of each layer's ring (the job's), or 0: pipes
        self._lister: pump.Lister | None = None
        self._listing_failed: list[BaseException] = []
        if names is not None:
            fd, job.stdout_r = job.stdout_r, -1  # the lister owns (and closes) it
            self._lister = pump.list_names(fd, names, self._listing_failed)

    def apply(self, chunks: Iterable[bytes]) -> JobReply:
        """Apply one layer (its uncompressed tar stream); its result, or the job's error.

        An exception raised by ``chunks`` (a digest found wrong at the end of the blob)
        stops the job, after it finished what it was given, and is raised.
        """
        channel = self._channel
        if channel is None:
            raise ValueError("this stack of layers has ended")
        failure = (self._feed_ring(channel, chunks) if self._ring
                   else self._feed_pipe(channel, chunks))
        if failure is not None:
            self.stop()
            raise failure
        try:
            document = _channel.receive_result(channel)
        except (OSError, ValueError) as err:
            self._job.kill()
            raise WorkerError(f"the worker broke the layer channel: {err}") from None
        if document is None:
            self._job_error()
        try:
            reply: JobReply = JobReply.from_wire(document)
        except (ValueError, TypeError) as err:
            self._job.kill()
            raise WorkerError(f"the worker sent an unreadable layer result: {err}") from None
        return reply

    def _feed_pipe(self, channel: _socket.socket, chunks: Iterable[bytes]
                   ) -> BaseException | None:
        read_end, write_end = _fdio.pipe(big=True)
        _fdio.guard(write_end)  # its end is the layer's: no fork may hold it
        try:
            _channel.send_layer(channel, (read_end,))
        except OSError:
            _fdio.close(write_end)
            self._job_error()  # it ended: its error says why
        finally:
            os.close(read_end)
        return pump.feed_fd_while_alive(self._job, write_end, chunks)

    def _feed_ring(self, channel: _socket.socket, chunks: Iterable[bytes]
                   ) -> BaseException | None:
        ring = _ring.RingWriter(self._ring)
        try:
            fds = ring.child_fds()
            _channel.send_layer(channel, (fds["stdin"], fds["ring_written"],
                                          fds["ring_freed"]))
        except OSError:
            ring.close()
            self._job_error()  # it ended: its error says why
        except BaseException:
            ring.close()
            raise
        ring.close_child_ends()
        return pump.feed_ring_while_alive(self._job, ring, chunks)  # closes the ring

    def _job_error(self) -> None:
        """The job ended before it answered: raise its error."""
        self._close_channel()
        self._job.finish()
        raise WorkerError("the worker ended before it applied the layer")

    def finish(self) -> JobReply:
        """No more layers: wait for the job and return its reply (the totals, the
        mechanism), or raise its error."""
        channel = self._channel
        if channel is None:
            raise ValueError("this stack of layers has ended")
        with contextlib.suppress(OSError):  # ended already: its reply says why
            _channel.send_end(channel)
        try:
            reply = self._job.finish()
        finally:
            self.close()
        if self._listing_failed:
            raise self._listing_failed[0]  # the names could not be told (a full disk)
        return reply

    def stop(self) -> None:
        """Apply nothing more: end the job once it has finished the layer it was given
        (it is waited for; its error, if any, is not the caller's)."""
        self._close_channel()
        with contextlib.suppress(ChrootArchiveError):
            self._job.finish()
        self.close()

    def _close_channel(self) -> None:
        if self._channel is not None:
            _fdio.unguard(self._channel.fileno())
            self._channel.close()
            self._channel = None

    def close(self) -> None:
        """Release everything; a job still running is stopped. Idempotent."""
        self._close_channel()
        self._job.close()
        if self._lister is not None:
            self._lister.wait()  # the job has ended: its stdout is at its end
            self._lister = None


def start(root_fd: int, request: JobRequest, requested: str, *,
          names: Callable[[str], None] | None = None) -> Stack:
    """Start ``request`` (an unpack with ``stack``) with the first mechanism of the
    ladder that the kernel accepts; ``names``: told each name the job lists."""

    def attempt(mechanism: str) -> Stack:
        # A worker process gets each layer in a ring, and may fork a helper for it.
        ring = 0 if mechanism in IN_PROCESS else _ring.SIZE
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM, 0)
        _fdio.guard(ours.fileno())  # its end is the last layer's: no fork may hold it
        try:
            job = ladder.start(root_fd, request.replace(mechanism=mechanism, ring=ring,
                                                        helper=bool(ring)),
                               stdout_pipe=names is not None, channel=theirs.fileno())
        except BaseException:
            _fdio.unguard(ours.fileno())
            ours.close()
            raise
        finally:
            theirs.close()
        return Stack(job, ours, names, ring)

    try:
        return ladder.run_ladder(requested, attempt)
    except BaseException:
        standby.drop_own()  # a failed call leaves no process behind
        raise
