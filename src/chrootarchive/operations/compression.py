"""Compression detection by magic bytes, and streaming decompression in the parent.

Decompression never happens inside the jail (CVE-2014-9357: the jailed child once ran
the image's own ``xz``). Memory stays bounded: data flows through in chunks.
"""

from __future__ import annotations

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


class _ReaderBase:
    """What file-like consumers want beyond ``read``."""

    def read(self, size: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buf: memoryview | bytearray) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _Peekable(_ReaderBase):
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


def _open_decompressor(kind: str, src: _Peekable) -> tuple[IO[bytes], tuple[type[Exception], ...]]:
    """The decoder for ``kind``, and the errors by which it reports corrupt data."""
    fileobj = cast(IO[bytes], src)
    if kind == "gzip":
        try:
            from isal import igzip, igzip_lib  # fastest well-kept gzip decoder (ISA-L)
        except ImportError:  # a declared dependency; the stdlib is the fallback
            import gzip

            return cast(IO[bytes], gzip.GzipFile(fileobj=fileobj, mode="rb")), (zlib.error,)
        stream = igzip.GzipFile(fileobj=fileobj, mode="rb")  # type: ignore[no-untyped-call]
        isal_error = cast(type[Exception], igzip_lib.IsalError)  # the stub calls it an instance
        return cast(IO[bytes], stream), (isal_error, zlib.error)
    if kind == "bzip2":
        import bz2  # loaded for the formats that need it

        return cast(IO[bytes], bz2.BZ2File(fileobj)), ()
    if kind == "xz":
        import lzma

        return cast(IO[bytes], lzma.LZMAFile(fileobj)), (lzma.LZMAError,)
    raise CompressionError(f"unknown compression {kind!r}")


class _ZstdFrames(_ReaderBase):
    """Follows the zstd frame structure of the bytes read through it.

    The library's streaming reader bounds its output (a frame of zeros can expand a
    thousandfold) but ends quietly at a truncated frame; this tells whether the input
    ended between frames. Only headers are looked at; block contents are counted.
    """

    def __init__(self, raw: _Peekable) -> None:
        self._raw = raw
        self._state = "magic"
        self._header = bytearray()
        self._skip = 0
        self._checksum = False
        self.lost = False  # an unknown structure: leave judgement to the library

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data and not self.lost:
            self._follow(memoryview(data))
        return data


    @property
    def between_frames(self) -> bool:
        return self.lost or (self._state == "magic" and not self._header and not self._skip)

    def _want(self, data: memoryview, i: int, n: int) -> tuple[bytes | None, int]:
        take = min(n - len(self._header), len(data) - i)
        self._header += data[i:i + take]
        i += take
        if len(self._header) < n:
            return None, i
        out = bytes(self._header)
        self._header.clear()
        return out, i

    def _follow(self, data: memoryview) -> None:
        i = 0
        while i < len(data):
            if self._skip:
                step = min(self._skip, len(data) - i)
                self._skip -= step
                i += step
                continue
            if self._state == "magic":
                got, i = self._want(data, i, 4)
                if got is None:
                    return
                magic = int.from_bytes(got, "little")
                if magic == 0xFD2FB528:
                    self._state = "descriptor"
                elif magic & 0xFFFFFFF0 == 0x184D2A50:
                    self._state = "skippable"
                else:
                    self.lost = True
                    return
            elif self._state == "skippable":
                got, i = self._want(data, i, 4)
                if got is None:
                    return
                self._skip = int.from_bytes(got, "little")
                self._state = "magic"
            elif self._state == "descriptor":
                got, i = self._want(data, i, 1)
                if got is None:
                    return
                d = got[0]
                single = (d >> 5) & 1
                self._checksum = bool((d >> 2) & 1)
                fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
                self._skip = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs
                self._state = "block"
            elif self._state == "block":
                got, i = self._want(data, i, 3)
                if got is None:
                    return
                h = int.from_bytes(got, "little")
                kind, size = (h >> 1) & 3, h >> 3
                if kind == 3:
                    self.lost = True
                    return
                self._skip = 1 if kind == 1 else size
                if h & 1:  # the last block: then the checksum, then the next frame
                    self._skip += 4 if self._checksum else 0
                    self._state = "magic"


def _zstd_chunks(src: _Peekable) -> Iterator[bytes]:
    """zstd with bounded output, and an error for a stream cut inside a frame."""
    try:
        import zstandard
    except ImportError as err:
        raise CompressionError(
            "zstd input needs the 'zstandard' package (pip install zstandard)"
        ) from err
    frames = _ZstdFrames(src)
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], frames), read_size=CHUNK, read_across_frames=True
    )
    try:
        while True:
            data = reader.read(CHUNK)
            if not data:
                break
            yield data
        while frames.read(CHUNK):  # what the reader did not ask for (trailing bytes)
            pass
    except zstandard.ZstdError as err:
        raise CompressionError(f"corrupt zstd data: {err}") from err
    if not frames.between_frames:
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
        stream, decoder_errors = _open_decompressor(kind, src)
        corrupt: tuple[type[Exception], ...] = (ValueError, *decoder_errors)
        try:
            with stream:
                while True:
                    data = stream.read(CHUNK)
                    if not data:
                        return
                    yield data
        except EOFError as err:
            raise CompressionError(f"{kind} data is truncated") from err
        except OSError as err:
            if err.errno is not None:  # reading the input failed, not decoding it
                raise
            raise CompressionError(f"corrupt {kind} data: {err}") from err  # BadGzipFile, bz2
        except corrupt as err:
            raise CompressionError(f"corrupt {kind} data: {err}") from err

    return kind, inflate()
