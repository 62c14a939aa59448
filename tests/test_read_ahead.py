"""``compression.read_ahead``: decompression in a thread of its own, a chunk or two
ahead of the feeder. The order of chunks and errors is kept, and a caller that stops
early stops the thread (and closes the source)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from chrootarchive.errors import CompressionError
from chrootarchive.operations import compression


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "chrootarchive-decompress"]


def _wait_no_thread() -> None:
    deadline = time.monotonic() + 5
    while _threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _threads()


def test_chunks_in_order() -> None:
    chunks = [bytes([i]) * (i + 1) for i in range(50)]
    assert list(compression.read_ahead(iter(chunks))) == chunks
    _wait_no_thread()


def test_error_after_the_chunks_before_it() -> None:
    def source() -> Iterator[bytes]:
        yield b"one"
        yield b"two"
        raise CompressionError("corrupt gzip data: test")

    got: list[bytes] = []
    with pytest.raises(CompressionError, match="corrupt gzip data"):
        for chunk in compression.read_ahead(source()):
            got.append(chunk)
    assert got == [b"one", b"two"]
    _wait_no_thread()


def test_an_early_stop_ends_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[bytes]:
        try:
            while True:
                yield b"x" * 1024
        finally:
            closed.set()

    ahead = compression.read_ahead(source())
    assert next(ahead) == b"x" * 1024
    ahead.close()  # what a feeder does when the worker stopped reading
    assert closed.wait(5)
    _wait_no_thread()


def test_real_decompression_through_read_ahead() -> None:
    import gzip
    import io

    data = bytes(range(256)) * 20_000  # 5 MB: several chunks
    kind, chunks = compression.decompressed_chunks(io.BytesIO(gzip.compress(data)))
    assert kind == "gzip"
    assert b"".join(compression.read_ahead(chunks)) == data
    _wait_no_thread()
