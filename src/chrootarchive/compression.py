"""Compression detection by magic bytes, and streaming decompression in the parent.

Decompression never happens inside the jail (CVE-2014-9357: the jailed child once ran
the image's own ``xz``). Memory stays bounded: data flows through in chunks.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Iterator
from typing import IO, Protocol, cast

from chrootarchive.errors import CompressionError

__all__ = ["CHUNK", "Readable", "decompressed_chunks", "detect"]


class Readable(Protocol):
    """Anything with ``read(size) -> bytes``: a file, a pipe, a socket file."""

    def read(self, size: int = -1, /) -> bytes: ...

CHUNK = 1 << 20

_MAGIC = (
    (b"\x1f\x8b\x08", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def detect(head: bytes) -> str:
    """Name the compression of a stream from its first bytes (``none`` for plain)."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    # A zstd skippable frame: 0x184D2A5? little-endian.
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return "zstd"
    return "none"


class _Peekable:
    """A file object whose first bytes were already read for detection."""

    def __init__(self, head: bytes, raw: Readable) -> None:
        self._head = head
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                head, self._head = self._head, b""
                rest = self._raw.read(-1 if size < 0 else size - len(head))
                return head + (rest or b"")
            head, self._head = self._head[:size], self._head[size:]
            return head
        return self._raw.read(size)

    def readinto(self, buf: memoryview | bytearray) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


def _read_exactly_head(raw: Readable, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        data = raw.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _open_decompressor(kind: str, src: _Peekable) -> IO[bytes]:
    fileobj = cast(IO[bytes], src)
    if kind == "gzip":
        try:
            from isal import igzip  # fastest well-kept gzip decoder on PyPI (ISA-L)
        except ImportError:  # a declared dependency; the stdlib is the fallback
            import gzip

            return cast(IO[bytes], gzip.GzipFile(fileobj=fileobj, mode="rb"))
        return cast(IO[bytes], igzip.GzipFile(fileobj=fileobj, mode="rb"))  # type: ignore[no-untyped-call]
    if kind == "zstd":
        try:
            import zstandard
        except ImportError as err:
            raise CompressionError(
                "zstd input needs the 'zstandard' package (pip install zstandard)"
            ) from err

        reader = zstandard.ZstdDecompressor().stream_reader(
            fileobj, read_size=CHUNK, read_across_frames=True
        )
        return cast(IO[bytes], reader)
    if kind == "bzip2":
        return cast(IO[bytes], bz2.BZ2File(fileobj))
    if kind == "xz":
        return cast(IO[bytes], lzma.LZMAFile(fileobj))
    raise CompressionError(f"unknown compression {kind!r}")


def _zstd_chunks(src: _Peekable) -> Iterator[bytes]:
    """zstd, frame by frame, so that a stream cut inside a frame is an error.

    (The library's stream reader ends quietly at a truncated frame.)
    """
    try:
        import zstandard
    except ImportError as err:
        raise CompressionError(
            "zstd input needs the 'zstandard' package (pip install zstandard)"
        ) from err
    dctx = zstandard.ZstdDecompressor()
    frame = dctx.decompressobj()
    in_frame = False
    try:
        while True:
            data = src.read(CHUNK)
            if not data:
                break
            while data:
                in_frame = True
                out = frame.decompress(data)
                if out:
                    yield out
                if frame.eof:
                    data = frame.unused_data
                    frame = dctx.decompressobj()
                    in_frame = False
                else:
                    data = b""
    except zstandard.ZstdError as err:
        raise CompressionError(f"corrupt zstd data: {err}") from err
    if in_frame:
        raise CompressionError("zstd data is truncated")


def decompressed_chunks(
    raw: Readable, *, compressed: bool = True
) -> tuple[str, Iterator[bytes]]:
    """Detect the compression of ``raw`` and return (kind, iterator of plain chunks).

    With ``compressed=False`` the stream is passed through as plain tar.
    """
    head = _read_exactly_head(raw, 6)
    kind = detect(head) if compressed else "none"
    src = _Peekable(head, raw)

    if kind == "none":
        def plain() -> Iterator[bytes]:
            while True:
                data = src.read(CHUNK)
                if not data:
                    return
                yield data

        return kind, plain()

    if kind == "zstd":
        return kind, _zstd_chunks(src)

    def inflate() -> Iterator[bytes]:
        try:
            with _open_decompressor(kind, src) as stream:
                while True:
                    data = stream.read(CHUNK)
                    if not data:
                        return
                    yield data
        except EOFError as err:
            raise CompressionError(f"{kind} data is truncated") from err
        except (OSError, lzma.LZMAError, zlib.error, ValueError) as err:
            if isinstance(err, OSError) and err.errno is not None:
                raise
            raise CompressionError(f"corrupt {kind} data: {err}") from err
        except Exception as err:
            if type(err).__module__.split(".")[0] in ("isal", "zstandard", "gzip"):
                raise CompressionError(f"corrupt {kind} data: {err}") from err
            raise

    return kind, inflate()
