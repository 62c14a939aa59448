"""Compression detection by magic bytes, and streaming decompression in the parent.

Decompression never happens inside the jail (CVE-2014-9357: the jailed child once ran
the image's own ``xz``). Memory stays bounded: data flows through in chunks, and a
stream whose declared window (zstd) or dictionary (xz) needs more memory than
``Limits.max_memory`` leaves for decompression is refused before it is allocated (the
formats allow 2 GiB and 4 GiB, which a few bytes of input can ask for), unless it is a
zstd frame whose blocks make less (:class:`_ZstdFrames`). gzip (32 KiB)
and bzip2 (900 KiB blocks, under 4 MiB) are bounded by their formats.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from chrootarchive.contract import memory_for_window, memory_shares
from chrootarchive.errors import CompressionError, LimitExceededError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any, Protocol, TypeVar, cast

    _T = TypeVar("_T")
else:  # no typing at run time (the command line's start): stand-ins
    Protocol = object

    def cast(_type: object, value: object) -> object:
        return value

__all__ = ["CHUNK", "Readable", "decompressed_chunks", "detect", "direct_readinto",
           "window_allowance"]


class Readable(Protocol):
    """Anything with ``read(size) -> bytes``: a file, a pipe, a socket file."""

    def read(self, size: int = -1, /) -> bytes: ...

CHUNK = 1 << 20
_MiB = 1 << 20

_ZSTD_WINDOW_MAX = 1 << 31  # ZSTD_WINDOWLOG_MAX on 64-bit: the library's own ceiling
_XZ_OVERHEAD = 128 << 10  # liblzma's decoder state beside the dictionary (about 64 KiB)


def window_allowance(max_memory: int | None) -> int | None:
    """The memory a decompressor's window may take under ``max_memory`` (None: any):
    its share (``contract.memory_shares``; 9 MiB of the default 64 MiB)."""
    if max_memory is None:
        return None
    return memory_shares(max_memory)[0]


def _mib(n: int) -> int:
    return -(-n // _MiB)


def _too_big(kind: str, what: str, need: int | None, allowance: int) -> LimitExceededError:
    """The refusal of a stream that needs more memory than the limit leaves it."""
    ceil = _mib
    needs = (f"needs {ceil(need)} MiB of memory ({what})" if need is not None
             else f"needs more than {ceil(allowance)} MiB of memory ({what})")
    # The command line says "--max-memory to 175M" (cli.args.in_cli_words).
    hint = (f"raise Limits.max_memory to {ceil(memory_for_window(need))} MiB"
            if need is not None else "raise Limits.max_memory")
    return LimitExceededError(
        f"limit max_memory exceeded: the {kind} stream {needs} to decompress, more than "
        f"the {ceil(allowance)} MiB the limit leaves for decompression; to allow it, {hint}")

_XZ_MAGIC = b"\xfd7zXZ\x00"
_MAGIC = (
    (b"\x1f\x8b\x08", "gzip"),
    (b"BZh", "bzip2"),
    (_XZ_MAGIC, "xz"),
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
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                head, self._head = self._head, b""
                rest = self.raw.read(-1 if size < 0 else size - len(head))
                return head + (rest or b"")
            head, self._head = self._head[:size], self._head[size:]
            return head
        return self.raw.read(size)

    def readinto(self, buf: memoryview | bytearray) -> int:
        """Straight into ``buf`` from a source that can (:func:`direct_readinto`): no
        chunk made and copied."""
        readinto = None if self._head else direct_readinto(self.raw)
        if readinto is None:
            return super().readinto(buf)
        return readinto(buf)


def direct_readinto(raw: object) -> Callable[[memoryview | bytearray], int] | None:
    """``raw``'s own readinto, when it is a file the standard library opened (a path,
    standard input) or a wrapper that passes one through (``direct_readinto()``); else
    None: a caller's file object promises ``read`` only (``io.RawIOBase`` subclasses
    that define ``read`` alone have a ``readinto`` that raises)."""
    if type(raw) in (io.BufferedReader, io.FileIO):
        readinto = cast("Callable[[memoryview | bytearray], int | None]", raw.readinto)  # type: ignore[attr-defined]
        return lambda buf: readinto(buf) or 0  # None (non-blocking, empty): the end, as read()
    passed = getattr(raw, "direct_readinto", None)
    return cast("Callable[[memoryview | bytearray], int] | None", passed()) if passed else None



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
    fileobj = cast("IO[bytes]", src)
    if kind == "gzip":
        import zlib  # only for gzip: a plain tar's start does without it

        try:
            from isal import igzip, igzip_lib  # fastest well-kept gzip decoder (ISA-L)
        except ImportError:  # a declared dependency; the stdlib is the fallback
            import gzip

            return cast("IO[bytes]", gzip.GzipFile(fileobj=fileobj, mode="rb")), (zlib.error,)
        stream = igzip.GzipFile(fileobj=fileobj, mode="rb")  # type: ignore[no-untyped-call]
        isal_error = cast(type[Exception], igzip_lib.IsalError)  # the stub calls it an instance
        return cast("IO[bytes]", stream), (isal_error, zlib.error)
    if kind == "bzip2":
        import bz2  # loaded for the formats that need it

        return cast("IO[bytes]", bz2.BZ2File(fileobj)), ()
    raise CompressionError(f"unknown compression {kind!r}")


def _xz_dictionary(stream_head: bytes) -> int | None:
    """The dictionary size the first block of an xz stream declares (None: unknown).

    Only to say how much memory a refused stream needs: liblzma enforces the limit.
    """
    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while i < len(stream_head) and shift < 63:
            byte = stream_head[i]
            value |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not byte & 0x80:
                return value, i
        raise IndexError
    try:
        if stream_head[12] == 0:  # the index: no block
            return None
        flags = stream_head[13]
        i = 14
        for present in (0x40, 0x80):  # compressed, uncompressed size
            if flags & present:
                _, i = varint(i)
        for _ in range((flags & 3) + 1):
            filter_id, i = varint(i)
            size, i = varint(i)
            props, i = stream_head[i:i + size], i + size
            if filter_id == 0x21 and size == 1:  # LZMA2
                bits = props[0] & 0x3F
                if bits > 40:
                    return None
                return 0xFFFFFFFF if bits == 40 else (2 | (bits & 1)) << (bits // 2 + 11)
    except IndexError:
        pass
    return None


def _xz_chunks(src: Readable, allowance: int | None) -> Iterator[bytes]:
    """xz with bounded output and a memory limit checked before the dictionary is made.

    As xz reads: concatenated streams are read on, past the NUL bytes of Stream
    Padding between and after them (``lzma.LZMAFile`` stops at padding, and loses the
    streams after it); as ``LZMAFile`` reads, bytes after the last stream that do not
    start a valid one are ignored, however few.
    """
    import lzma  # loaded for the formats that need it

    def fresh() -> lzma.LZMADecompressor:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=allowance)

    def decode(dec: lzma.LZMADecompressor, data: bytes, head: bytes) -> bytes:
        try:
            return dec.decompress(data, CHUNK)
        except lzma.LZMAError as err:
            if allowance is not None and "emory usage limit" in str(err):
                size = _xz_dictionary(head)
                need = size + _XZ_OVERHEAD if size is not None and size > allowance else None
                raise _too_big("xz", "its dictionary", need, allowance) from err
            raise

    dec = fresh()
    head = b""
    later = False  # a stream after the first: what does not start one is ignored
    try:
        while True:
            if dec.eof:
                data = dec.unused_data.lstrip(b"\0")  # Stream Padding
                while not data:
                    data = src.read(CHUNK)
                    if not data:
                        return
                    data = data.lstrip(b"\0")
                dec, head, later = fresh(), data[:64], True
                try:
                    out = decode(dec, data, head)
                except lzma.LZMAError:
                    return  # trailing bytes that are not a stream: ignored, as LZMAFile does
            else:
                data = b""
                if dec.needs_input:
                    data = src.read(CHUNK)
                    if not data:
                        if later and not head.startswith(_XZ_MAGIC[:len(head)]):
                            return  # too few trailing bytes to be told from a stream
                        raise CompressionError("xz data is truncated")
                    if len(head) < 64:
                        head += data[:64 - len(head)]
                out = decode(dec, data, head)
            if out:
                yield out
    except lzma.LZMAError as err:
        raise CompressionError(f"corrupt xz data: {err}") from err


class _ZstdFrames(_ReaderBase):
    """Follows the zstd frame structure of the bytes read through it.

    The library's streaming reader bounds its output (a frame of zeros can expand a
    thousandfold) but ends quietly at a truncated frame; this tells whether the input
    ended between frames. Only headers are looked at; block contents are counted. A
    frame whose window is larger than ``max_window`` is refused here, before the library
    sees its header (the library is also told the limit, for what this cannot follow),
    unless its blocks can make no more than the limit allows: the window is what the
    encoder might have used, and a decoder needs no more than the frame's output.
    zstd:chunked layers (containers/storage) end with such a frame, 32 MiB declared for
    a few KiB of tar trailer. That frame is held here until its last block, and passed
    on with a window that covers its output.
    """

    def __init__(self, raw: _Peekable, max_window: int | None) -> None:
        self._raw = raw
        self._max_window = max_window
        self._state = "magic"
        self._header = bytearray()
        self._skip = 0
        self._checksum = False
        self._descriptor = 0
        self._rest = 0
        self.lost = False  # an unknown structure: leave judgement to the library
        self._holding = False  # a frame's header, or a frame on probation, kept back
        self._held = bytearray()  # what was kept back of the chunks before this one
        self._mark = 0  # in the chunk followed: where what is not yet given out starts
        self._out: list[bytes | memoryview] = []
        self._probation = 0  # the window a held frame declares (0: none held)
        self._bound = 0  # the most that the held frame's blocks so far can make
        self._release_at_end = False  # the held frame ends when the skip is done

    def read(self, size: int = -1) -> bytes:
        while True:
            data = self._raw.read(size)
            if not data or self.lost:
                if self._probation and not self.lost:
                    raise CompressionError("zstd data is truncated")
                if not self._held:
                    return data
                out = bytes(self._held) + data  # a header cut short: the library says so
                self._held.clear()
                self._holding = False
                return out
            view = memoryview(data)
            self._mark = 0
            self._follow(view)
            if self.lost:  # give out everything as it came, for the library to judge
                self._probation = 0
                self._give(view, len(view))
                self._out.append(view[self._mark:])
            elif self._holding:
                self._held += view[self._mark:]
            else:
                self._out.append(view[self._mark:])
            parts, self._out = self._out, []
            if len(parts) == 1 and len(parts[0]) == len(data):
                return data  # nothing held: the chunk as it came
            out = b"".join(parts)
            if out:
                return out

    def _hold(self, data: memoryview, i: int) -> None:
        """Keep back from ``i`` on: a frame starts there."""
        if not self._holding:
            self._out.append(data[self._mark:i])
            self._mark = i
            self._holding = True

    def _give(self, data: memoryview, i: int) -> None:
        """Give out what was kept back, up to ``i``."""
        if self._holding:
            self._held += data[self._mark:i]
            if self._probation:
                self._held[5] = _window_descriptor(self._need())
                self._probation = 0
            self._out.append(bytes(self._held))
            self._held.clear()
            self._mark = i
            self._holding = False

    def _need(self) -> int:
        """The window the held frame needs: what its blocks can make (128 KiB at least:
        the largest block)."""
        return _representable_window(max(self._bound, 128 << 10))


    def _check_window(self, header: bytes) -> None:
        """Refuse a frame whose window (the memory its decoder needs) is over the limit."""
        d = self._descriptor
        if d & 0x20:  # single segment: the window is the content size
            size = (0, 2, 4, 8)[d >> 6] or 1
            window = int.from_bytes(header[-size:], "little") + (256 if size == 2 else 0)
        else:
            exponent, mantissa = header[0] >> 3, header[0] & 7
            base = 1 << (10 + exponent)
            window = base + (base >> 3) * mantissa
        if window > _ZSTD_WINDOW_MAX:  # no encoder makes it: garbage, not a demand
            raise CompressionError(f"corrupt zstd data: a frame declares a window of "
                                   f"{window} bytes, more than the format's 2 GiB")
        if self._max_window is not None and window > self._max_window:
            if d & 0x20:  # the content size: what it makes, no smaller window to give
                raise _too_big("zstd", "its window", window, self._max_window)
            self._probation = window  # held until its blocks show what they make
            self._bound = 0

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
                if not self._skip and self._release_at_end:
                    self._release_at_end = False
                    self._give(data, i)
                continue
            if self._state == "magic":
                if not self._header and self._max_window is not None:
                    self._hold(data, i)
                got, i = self._want(data, i, 4)
                if got is None:
                    return
                magic = int.from_bytes(got, "little")
                if magic == 0xFD2FB528:
                    self._state = "descriptor"
                elif magic & 0xFFFFFFF0 == 0x184D2A50:
                    self._state = "skippable"
                    self._give(data, i)
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
                self._descriptor = d
                single = (d >> 5) & 1
                self._checksum = bool((d >> 2) & 1)
                fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
                self._rest = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs
                self._state = "header"
            elif self._state == "header":
                got, i = self._want(data, i, self._rest)
                if got is None:
                    return
                self._check_window(got)
                self._state = "block"
                if not self._probation:
                    self._give(data, i)
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
                if self._probation:
                    self._bound += 128 << 10 if kind == 2 else size  # compressed: at most
                    assert self._max_window is not None
                    held = len(self._held) + i - self._mark + self._skip
                    if self._need() + held > self._max_window:
                        raise _too_big("zstd", "its window", self._probation, self._max_window)
                if h & 1:  # the last block: then the checksum, then the next frame
                    self._skip += 4 if self._checksum else 0
                    self._state = "magic"
                    if self._probation:
                        if self._skip:
                            self._release_at_end = True
                        else:
                            self._give(data, i)


def _representable_window(size: int) -> int:
    """The smallest zstd window of at least ``size`` bytes that a frame header can say."""
    base = 1 << max(size.bit_length() - 1, 10)
    step = base >> 3
    return base + -(-max(size - base, 0) // step) * step


def _window_descriptor(window: int) -> int:
    """The Window_Descriptor byte of ``window`` (one that :func:`_representable_window`
    gives)."""
    exponent = window.bit_length() - 1
    base = 1 << exponent
    return (exponent - 10) << 3 | (window - base) // (base >> 3)


class _PlainChunks:
    """An uncompressed stream: an iterator of chunks that also reads straight into a
    buffer (:meth:`direct_readinto`: the ring's pages, ``RingWriter.fill``), as
    :class:`_ZstdChunks` does (``docker save | chrootarchive untar -``)."""

    def __init__(self, src: _Peekable) -> None:
        self._src = src

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self._src.read(CHUNK)
        if not data:
            raise StopIteration
        return data

    def direct_readinto(self) -> Callable[[memoryview], int] | None:
        """What fills a buffer straight from the source (``RingWriter.fill``), or None
        where the source is a caller's file object: chunks, read as before."""
        return self._src.readinto if direct_readinto(self._src.raw) is not None else None


class _ZstdChunks:
    """zstd with bounded output and window, and an error for a stream cut inside a frame:
    an iterator of chunks that also decompresses straight into a buffer
    (:meth:`direct_readinto`: the ring's pages, ``RingWriter.fill``, without a chunk made
    and copied)."""

    def __init__(self, src: _Peekable, allowance: int | None) -> None:
        self._src = src
        self._allowance = allowance
        self._frames: _ZstdFrames | None = None
        self._reader: Any = None  # zstandard's stream reader, made at the first read
        self._errors: tuple[type[Exception], ...] = ()
        self._direct = False  # the library's C backend: direct_readinto() may be used
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self._step(lambda reader: reader.read(CHUNK), b"")
        if not data:
            raise StopIteration
        return data

    def prepare_decoder(self) -> None:
        """Load the library and make the reader, reading nothing: called while the
        worker confines itself (``ladder.start``), so that its first bytes do not wait
        for the import too (4-5 ms: ``zstandard`` loads ``typing`` and ``platform``)."""
        if self._reader is None:
            self._open()

    def direct_readinto(self) -> Callable[[memoryview], int] | None:
        """What decompresses straight into a buffer (``RingWriter.fill``), or None:
        with the library's cffi backend (its fallback) a failed read keeps a hold on the
        buffer, which the ring then could not unmap."""
        if self._reader is None:
            self._open()
        return self._readinto if self._direct else None

    def _readinto(self, buffer: memoryview) -> int:
        """Fill the start of ``buffer``: the bytes written, 0 at the end of the stream."""
        return self._step(lambda reader: reader.readinto(buffer), 0)

    def _step(self, read: Callable[[Any], _T], nothing: _T) -> _T:
        """``read`` from the library's reader, its errors ours; at the end (nothing
        read, then ``nothing`` for good), the rest of the input is read and a frame cut
        short is an error."""
        if self._ended:
            return nothing
        if self._reader is None:
            self._open()
        try:
            data = read(self._reader)
            if not data:
                self._ended = True
                assert self._frames is not None
                while self._frames.read(CHUNK):  # what the reader did not ask for
                    pass
        except self._errors as err:
            if self._allowance is not None and "too much memory" in str(err):
                raise _too_big("zstd", "its window", None, self._allowance) from err
            raise CompressionError(f"corrupt zstd data: {err}") from err
        if self._ended and self._frames is not None and not self._frames.between_frames:
            raise CompressionError("zstd data is truncated")
        return data

    def _open(self) -> None:
        try:
            import zstandard
        except ImportError as err:
            raise CompressionError(
                "zstd input needs the 'zstandard' package (pip install zstandard)"
            ) from err
        allowance = self._allowance
        self._frames = _ZstdFrames(self._src, allowance)
        limit = _ZSTD_WINDOW_MAX if allowance is None else min(allowance, _ZSTD_WINDOW_MAX)
        self._reader = zstandard.ZstdDecompressor(max_window_size=limit).stream_reader(
            cast("IO[bytes]", self._frames), read_size=CHUNK, read_across_frames=True
        )
        self._errors = (zstandard.ZstdError,)
        self._direct = zstandard.backend == "cext"


def decompressed_chunks(
    raw: Readable, *, compressed: bool = True, max_memory: int | None = 64 * _MiB
) -> tuple[str, Iterator[bytes]]:
    """Detect the compression of ``raw`` and return (kind, iterator of plain chunks).

    With ``compressed=False`` the stream is passed through as plain tar. A stream that
    needs more memory than ``max_memory`` leaves (``window_allowance``) raises
    LimitExceededError when its header is read, before the memory is taken.
    """
    allowance = window_allowance(max_memory)
    head = _read_exactly_head(raw, 6)
    kind = detect(head) if compressed else "none"
    src = _Peekable(head, raw)

    if kind == "none":
        return kind, _PlainChunks(src)

    if kind == "zstd":
        return kind, _ZstdChunks(src, allowance)
    if kind == "xz":
        return kind, _xz_chunks(src, allowance)

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
            # A gzip member cut short, or bytes after the last one that are not one
            # (GNU gzip: "trailing garbage"): the decoder tells them apart for neither.
            raise CompressionError(f"{kind} data is truncated" + (
                ", or followed by bytes that are not gzip data" if kind == "gzip" else "")
            ) from err
        except OSError as err:
            if err.errno is not None:  # reading the input failed, not decoding it
                raise
            raise CompressionError(f"corrupt {kind} data: {err}") from err  # BadGzipFile, bz2
        except corrupt as err:
            raise CompressionError(f"corrupt {kind} data: {err}") from err

    return kind, inflate()
