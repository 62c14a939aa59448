"""Reading the files of an image from a directory or a tar, never trusting its paths.

A directory's symlinks are resolved here, lexically, never by the kernel, and only
regular files are opened; a tar is indexed once and its members are read by offset.

Nothing outside the destination grows: what must be spooled (standard input as it
comes, the members of a compressed tar that are read) goes to an unnamed file on the
destination's filesystem (``O_TMPFILE``, gone when closed), counted against
``max_bytes`` and kept above the filesystem's reserve. A compressed tar is read twice:
once to index it and keep its small members (the JSON documents), and once, after the
plan is made and the sizes of the chosen layers are checked against the limits, to
spool those layers alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import sys
import threading
from collections.abc import Callable, Iterator

from chrootarchive import _fdio
from chrootarchive._fdio import describe, open_input, open_regular
from chrootarchive._threads import wait_ended
from chrootarchive.engine import space
from chrootarchive.errors import (
    ChrootArchiveError,
    DestinationError,
    ImageError,
    InternalError,
    LimitExceededError,
    MalformedArchiveError,
    SourceError,
    from_os_error,
    quoted,
)
from chrootarchive.operations import compression
from chrootarchive.runner.launch import InterruptsHeld
from chrootarchive.tarformat import reader as tarreader

TYPE_CHECKING = False  # no typing at run time: the start (issue 16)
if TYPE_CHECKING:
    from chrootarchive.options import Limits

MAX_TAR_MEMBERS = 200_000
"""Members of an image tar that are indexed (``docker save`` writes about 4 per layer)."""
MAX_INDEX_BYTES = 8 << 20
"""What the index of an image tar may hold: names, and about 100 bytes per member."""
_MEMBER_OVERHEAD = 100
MAX_KEPT_MEMBER = 4 << 20
"""Members of a compressed image tar up to this size (the JSON documents: see
``documents.MAX_JSON_SIZE``) are spooled when it is indexed; larger ones when chosen."""
_LOOK_BYTES = 64 << 20  # the spool looks at the reserve at least this often
PASS_FLOOR = 1 << 30
PASS_RATIO = 1032
"""The members of a compressed image tar that are not kept are decompressed all the
same, to reach the next member: beyond PASS_FLOOR plus PASS_RATIO (gzip's most) times
the compressed bytes read, they must fit what the spool could hold, as an untar of the
same stream is bounded by what it can write (a bzip2 stream of 1 MB holds 1 TiB of
zeros: two hours to read through)."""

_MAX_LINK_HOPS = 16

if TYPE_CHECKING:
    from typing import Protocol

    class Reader(Protocol):
        size: int

        def read(self, n: int) -> bytes: ...

        def close(self) -> None: ...


class _FdReader:
    """Reads a regular file that the layout opened."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def read(self, n: int) -> bytes:
        return os.read(self._fd, n)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _RangeReader:
    """Reads one member's data from an image tar by offset (no shared position)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._start = self._pos = offset
        self._end = offset + size
        self.size = size

    @property
    def done(self) -> int:
        """The bytes read so far."""
        return self._pos - self._start

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:  # the rest
            parts = []
            while data := self.read(compression.CHUNK):
                parts.append(data)
            return b"".join(parts)
        n = min(n, self._end - self._pos)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._pos = self._end


class Layout:
    """The files of an image, by their names relative to its root."""

    description = "image"
    #: The image as the caller named it (a path, or standard input), for messages.
    where = "image"

    def kind(self, name: str) -> tuple[str | None, str]:
        """(``dir``, ``file``, ``symlink``, ``hardlink``, ``other`` or None, link target)."""
        raise NotImplementedError

    def open_resolved(self, name: str) -> Reader:
        raise NotImplementedError

    def close(self) -> None:
        """Release the layout's resources."""

    def fetch(self, names: list[str]) -> None:
        """Make the files ``names`` readable (a compressed tar spools them; see
        :class:`_StreamLayout`); their sizes are known before."""

    @property
    def spooled(self) -> int:
        """Bytes written beside the destination to read the image (counted as data)."""
        return 0

    def resolve(self, name: str, *, hops: list[int] | None = None) -> str | None:
        """The name that ``name`` leads to inside the image after following symbolic
        links (resolved here, lexically, never by the kernel), or None if it is missing.

        Raises:
            ImageError: the path leaves the image, is absolute, or loops.
        """
        if name.startswith("/") or "\x00" in name:
            raise ImageError("path must be relative to the image", name)
        counter = hops if hops is not None else [0]
        stack = list(reversed(name.split("/")))
        done: list[str] = []
        while stack:
            part = stack.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise ImageError("path leaves the image", name)
                done.pop()
                continue
            current = "/".join([*done, part])
            kind, target = self.kind(current)
            if kind == "symlink":
                counter[0] += 1
                if counter[0] > _MAX_LINK_HOPS:
                    raise ImageError("too many levels of symbolic links", name)
                if target.startswith("/"):
                    raise ImageError(f"symbolic link {quoted(current)} points outside the image",
                                     name)
                stack.extend(reversed(target.split("/")))
                continue
            if kind is None:
                return None
            if kind != "dir" and any(p not in ("", ".") for p in stack):
                return None
            done.append(part)
        return "/".join(done) if done else "."

    def exists(self, name: str) -> bool:
        resolved = self.resolve(name)
        return resolved is not None and self.kind(resolved)[0] in ("file", "hardlink")

    def open(self, name: str, what: str) -> Reader:
        resolved = self.resolve(name)
        if resolved is None:
            raise ImageError(f"{what} is missing from the {self.description}", name)
        return self.open_resolved(resolved)


_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _DirLayout(Layout):
    """An image in a directory. Symlinks are followed only by :meth:`resolve`."""

    description = "image directory"

    def __init__(self, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise from_os_error(
                err, path, kind=SourceError, action="cannot open the image") from err

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def kind(self, name: str) -> tuple[str | None, str]:
        try:
            st = os.lstat(name, dir_fd=self._fd)
        except (FileNotFoundError, NotADirectoryError):
            return None, ""
        except OSError as err:
            raise from_os_error(err, name, kind=ImageError, action="cannot read the image") from err
        if stat.S_ISLNK(st.st_mode):
            try:
                return "symlink", os.readlink(name, dir_fd=self._fd)
            except OSError as err:
                raise from_os_error(
                    err, name, kind=ImageError, action="cannot read the image") from err
        if stat.S_ISDIR(st.st_mode):
            return "dir", ""
        if stat.S_ISREG(st.st_mode):
            return "file", ""
        return "other", ""

    def open_resolved(self, name: str) -> Reader:
        parts = name.split("/")
        dir_fd = self._fd
        try:
            for part in parts[:-1]:
                new = os.open(part, _OPEN_DIR, dir_fd=dir_fd)
                if dir_fd != self._fd:
                    os.close(dir_fd)
                dir_fd = new
            # A blob that is a device, FIFO or socket is refused without being opened.
            fd, st = open_regular(parts[-1], dir_fd)
        except OSError as err:
            raise from_os_error(err, name, kind=ImageError, action="cannot open") from err
        finally:
            if dir_fd != self._fd:
                os.close(dir_fd)
        if fd < 0:
            raise ImageError(f"{describe(st)}, not a regular file (not opened)", name)
        return _FdReader(fd, st.st_size)


class _Member:
    """A member of an image archive: what its kind, place and data are."""

    __slots__ = ("index", "kind", "offset", "size", "target")

    def __init__(self, kind: str, offset: int = 0, size: int = 0, target: str = "",
                 index: int = 0) -> None:
        self.kind = kind  # file, dir, symlink, hardlink, other
        self.offset = offset  # of its data; -1: not spooled yet (a compressed tar's large member)
        self.size = size
        self.target = target
        self.index = index  # its place in the archive (the first member is 1)


def _member_name(raw: str) -> str | None:
    name = raw.lstrip("/")
    while name.startswith("./"):
        name = name[2:].lstrip("/")
    if not name or name == ".":
        return None
    name = posixpath.normpath(name)
    if name == ".." or name.startswith("../") or "\x00" in name:
        return None  # never referenced by a well-formed image: left out
    return name


class _TarLayout(Layout):
    """An image in a tar file, indexed once; members are read by offset."""

    description = "image archive"

    def __init__(self, fd: int, spool: Spool | None = None) -> None:
        self._fd = fd
        self._spool = spool  # where ``fd`` is, if it is a spool
        reader = tarreader.TarReader(fd)
        self._index(reader, lambda entry: _Member("file", reader.offset, entry.size))

    @property
    def spooled(self) -> int:
        return self._spool.size if self._spool is not None else 0

    def _index(self, reader: tarreader.TarReader,
               file_member: Callable[[tarreader.TarEntry], _Member],
               seen: Callable[[tarreader.TarEntry], None] | None = None) -> None:
        """Index the members; ``file_member`` makes a regular file's (its data unread);
        ``seen`` is shown each member first."""
        self._members: dict[str, _Member] = {}
        self._dirs: set[str] = set()
        self._prefix = ""
        count = 0
        held = 0
        try:
            for entry in reader:
                count += 1
                if count > MAX_TAR_MEMBERS:
                    raise ImageError(
                        f"the image archive has more than {MAX_TAR_MEMBERS:,} members")
                if seen is not None:
                    seen(entry)
                name = _member_name(entry.name)
                if name is None:
                    continue
                held += len(name) + _MEMBER_OVERHEAD
                if held > MAX_INDEX_BYTES:
                    raise ImageError(f"the names of the image archive's members take more "
                                     f"than {MAX_INDEX_BYTES >> 20} MiB", entry.name)
                if entry.kind == tarreader.REGULAR and entry.sparse is None:
                    member = file_member(entry)
                elif entry.kind == tarreader.DIRECTORY:
                    member = _Member("dir")
                elif entry.kind == tarreader.SYMLINK:
                    member = _Member("symlink", target=entry.linkname)
                elif entry.kind == tarreader.HARDLINK:
                    member = _Member("hardlink", target=entry.linkname)
                else:
                    member = _Member("other")
                member.index = count
                self._members[name] = member
                parent = posixpath.dirname(name)
                while parent and parent not in self._dirs:
                    self._dirs.add(parent)
                    parent = posixpath.dirname(parent)
        except MalformedArchiveError as err:
            raise ImageError(
                f"not an image archive (OCI layout or docker save tar): {err.message}",
                err.entry,
            ) from err
        self._find_root()

    def _find_root(self) -> None:
        """Accept a tar of a directory holding the image (``tar -cf x.tar image/``)."""
        roots = ("index.json", "manifest.json")
        if any(self._members.get(r, _Member("x")).kind == "file" for r in roots):
            return
        tops = {name.split("/", 1)[0] for name in self._members}
        if len(tops) == 1:
            top = tops.pop()
            if any(f"{top}/{r}" in self._members for r in roots):
                self._prefix = top + "/"

    def kind(self, name: str) -> tuple[str | None, str]:
        full = self._prefix + name
        member = self._members.get(full)
        if member is None:
            return ("dir", "") if full in self._dirs else (None, "")
        return member.kind, member.target

    def _member(self, name: str) -> _Member:
        """The regular file ``name`` is, hard links followed."""
        hops = [0]
        member = self._members.get(self._prefix + name)
        while member is not None and member.kind == "hardlink":
            hops[0] += 1
            if hops[0] > _MAX_LINK_HOPS:
                raise ImageError("too many levels of links", name)
            target = _member_name(member.target)
            if target is None:
                raise ImageError("hard link points outside the image", name)
            if self._prefix and target.startswith(self._prefix):
                target = target[len(self._prefix):]
            resolved = self.resolve(target, hops=hops)
            member = self._members.get(self._prefix + resolved) if resolved else None
        if member is None or member.kind != "file":
            raise ImageError("not a regular file in the image archive", name)
        return member

    def open_resolved(self, name: str) -> Reader:
        member = self._member(name)
        if member.offset < 0:
            return _Unspooled(name, member.size)
        return _RangeReader(self._fd, member.offset, member.size)


class _Unspooled:
    """A large member of a compressed tar, before :meth:`_StreamLayout.fetch`: its size
    is known (the plan checks it), its data is not read yet."""

    def __init__(self, name: str, size: int) -> None:
        self._name = name
        self.size = size

    def read(self, n: int) -> bytes:
        raise InternalError("a member of the compressed image archive was read before it "
                            "was spooled", self._name)

    def close(self) -> None:
        pass


def _spool_directory(dest: str) -> str:
    """Where the spool goes: ``dest`` if it is a directory, else its nearest existing
    ancestor (where ``dest`` will be made): the destination's filesystem."""
    path = os.path.abspath(dest)
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


class Spool:
    """An unnamed file on the destination's filesystem, under its limits.

    ``O_TMPFILE`` (no name: gone when closed, whatever happens to this process); where
    the filesystem has none, a hidden file unlinked at once. Everything written is
    counted against ``max_bytes``, and the filesystem's reserve is looked at as it grows.
    """

    def __init__(self, dest: str, limits: Limits) -> None:
        self.where = _spool_directory(dest)
        self.size = 0
        self._max_bytes = limits.max_bytes
        self._reserve = space.Reserve(limits.reserve) if limits.reserve else None
        self._budget = 0  # bytes until the next look at the reserve
        try:
            self.fd = os.open(self.where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise self._error(err) from err
            try:
                import tempfile  # 2 ms: only for a compressed image archive

                self.fd, path = tempfile.mkstemp(prefix=".chrootarchive-spool-",
                                                 dir=self.where)
                os.unlink(path)
            except OSError as err2:
                raise self._error(err2) from err2

    def _error(self, err: OSError) -> ChrootArchiveError:
        return from_os_error(err, self.where, kind=DestinationError,
                             action="cannot spool the image archive")

    def check(self, more: int, entry: str | None) -> None:
        """Refuse now what ``more`` bytes would do to the limits (before the bulk)."""
        if self._max_bytes is not None and self.size + more > self._max_bytes:
            raise LimitExceededError(
                f"limit max_bytes ({self._max_bytes:,} bytes) exceeded: the image archive "
                f"needs {self.size + more:,} bytes spooled beside the destination", entry)
        if self._reserve is not None:
            room, _inodes = self._reserve.room(self.fd, entry, more)
            self._budget = min(room // 2, _LOOK_BYTES)

    def write(self, data: bytes | memoryview, entry: str | None) -> None:
        """Append ``data``, within max_bytes and above the reserve."""
        size = len(data)
        self._budget -= size
        if self._budget < 0 or (self._max_bytes is not None
                                and self.size + size > self._max_bytes):
            self.check(size, entry)
        view = memoryview(data)
        offset = self.size
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as err:
            raise self._error(err) from err
        self.size += size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Feed:
    """A compressed source decompressed by a thread into a pipe, for a TarReader."""

    def __init__(self, source: compression.Readable, max_memory: int | None) -> None:
        _kind, chunks = compression.decompressed_chunks(source, max_memory=max_memory)
        self.fd, self._w = os.pipe2(os.O_CLOEXEC)
        # No fork made meanwhile may keep an end: a copy of the write end held back the
        # reader's end of input, one of the read end the feeder's EPIPE (and its end).
        _fdio.guard(self.fd)
        _fdio.guard(self._w)
        self.error: BaseException | None = None
        self._ended = threading.Event()
        threading.Thread(target=self._run, args=(chunks,), daemon=True,
                         name="chrootarchive-image-feed").start()

    def _run(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._w, view):]
        except BrokenPipeError:
            pass  # the reader stopped: it has what it wanted
        except BaseException as err:  # reported by finish()
            self.error = err
        finally:
            _fdio.close(self._w)
            self._ended.set()

    def finish(self) -> None:
        """Wait for the thread; raise its error (a corrupt stream, a window too large)."""
        wait_ended(self._ended, self.close)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop reading (the thread's next write fails) and wait for the thread."""
        if self.fd >= 0:
            _fdio.close(self.fd)
            self.fd = -1
        if not self._ended.is_set():
            wait_ended(self._ended)


class _StreamLayout(_TarLayout):
    """A compressed image tar, read as a stream: indexed in a first pass that spools the
    small members; the large members the plan chooses are spooled by :meth:`fetch`."""

    def __init__(self, open_source: Callable[[], _RangeReader], spool: Spool,
                 max_memory: int | None) -> None:
        self._open_source = open_source
        self._source: _RangeReader | None = None
        self._spool = self._stream_spool = spool
        self._max_memory = max_memory
        self._fd = spool.fd
        self._each_member(self._first_pass)

    def _each_member(self, run: Callable[[tarreader.TarReader], None]) -> None:
        """Run ``run`` on a reader of the decompressed stream; its errors or the
        decompressor's (which come first: a cut stream shows as a truncated tar)."""
        self._source = self._open_source()
        # Made with interrupts held: a KeyboardInterrupt as its thread started left the
        # thread blocked for ever on a pipe no one reads, and the pipe open.
        feed: _Feed | None = None
        try:
            with InterruptsHeld():
                feed = _Feed(self._source, self._max_memory)
            try:
                run(tarreader.TarReader(feed.fd))
            except ChrootArchiveError:
                feed.close()
                if feed.error is not None:
                    raise feed.error from None
                raise
            feed.close()
            if feed.error is not None:
                raise feed.error
        finally:
            if feed is not None:
                feed.close()

    def _first_pass(self, reader: tarreader.TarReader) -> None:
        spool = self._stream_spool

        def keep_small(entry: tarreader.TarEntry) -> _Member:
            if entry.size > MAX_KEPT_MEMBER:
                return _Member("file", -1, entry.size)
            offset = spool.size
            for _at, chunk in reader.data(entry):
                spool.write(chunk, entry.name)
            return _Member("file", offset, entry.size)

        passed = 0
        source = self._source

        def read_past(entry: tarreader.TarEntry) -> None:
            nonlocal passed
            if (entry.kind == tarreader.REGULAR and entry.sparse is None
                    and entry.size <= MAX_KEPT_MEMBER) or not entry.stored_size:
                return  # kept: spool.write counts it
            passed += entry.stored_size
            compressed = source.done if source is not None else 0
            if passed > PASS_FLOOR + PASS_RATIO * compressed:
                spool.check(passed, entry.name)  # as if spooled: max_bytes, the reserve

        self._index(reader, keep_small, read_past)

    def fetch(self, names: list[str]) -> None:
        members: dict[int, _Member] = {}
        largest = ("", -1)
        for name in names:
            resolved = self.resolve(name)
            if resolved is not None:
                member = self._member(resolved)
                if member.offset < 0:
                    members[member.index] = member
                    if member.size > largest[1]:
                        largest = (name, member.size)
        if not members:
            return
        # Before the bulk: what the chosen members need, against max_bytes and the
        # reserve (the error names the largest).
        self._stream_spool.check(sum(m.size for m in members.values()), largest[0])
        wanted = dict(members)

        def second_pass(reader: tarreader.TarReader) -> None:
            count = 0
            for entry in reader:
                count += 1
                member = wanted.pop(count, None)
                if member is None:
                    continue
                if entry.size != member.size or entry.sparse is not None:
                    raise ImageError("the image archive changed while it was read",
                                     entry.name)
                offset = self._stream_spool.size
                for _at, chunk in reader.data(entry):
                    self._stream_spool.write(chunk, entry.name)
                member.offset = offset
                if not wanted:
                    return
            raise ImageError("the image archive changed while it was read (members gone)")

        self._each_member(second_pass)


@contextlib.contextmanager
def open_layout(image: str, dest: str, limits: Limits) -> Iterator[Layout]:
    """The layout of ``image``; what must be spooled goes beside ``dest`` (see above)."""
    where = "standard input" if image == "-" else image
    with contextlib.ExitStack() as stack:
        try:
            layout = _open(image, dest, limits, stack)
        except ChrootArchiveError as err:
            if err.entry is None:  # "not an image archive": which one
                err.entry = where
            raise
        layout.where = where
        stack.callback(layout.close)
        yield layout


def _open(image: str, dest: str, limits: Limits, stack: contextlib.ExitStack) -> Layout:
    if image == "-":
        return _from_stream(sys.stdin.buffer, "standard input", dest, limits, stack)
    try:
        st = os.stat(image)
    except OSError as err:
        raise _cannot_open(err, image) from err
    if stat.S_ISDIR(st.st_mode):
        return _DirLayout(image)
    with InterruptsHeld():  # until it is closed with the stack: an interrupt left it open
        try:
            fd, st = open_input(image)
        except OSError as err:
            raise _cannot_open(err, image) from err
        if fd >= 0:
            stack.callback(os.close, fd)
    if fd < 0:
        raise SourceError(f"{describe(st)}: not opened (a device, named FIFO or socket "
                         "never is); give its data on standard input ('-')", image)
    if not stat.S_ISREG(st.st_mode):  # an anonymous pipe: read once, as it comes
        return _from_stream(open(fd, "rb", closefd=False), image, dest, limits, stack)
    if compression.detect(os.pread(fd, 6, 0)) == "none":
        return _TarLayout(fd)  # read in place
    with InterruptsHeld():  # a KeyboardInterrupt as it was made left its descriptor
        spool = Spool(dest, limits)
        stack.callback(spool.close)
    return _StreamLayout(lambda: _RangeReader(fd, 0, _WHOLE), spool, limits.max_memory)


_WHOLE = 1 << 62  # "to the end of the file"


def _cannot_open(err: OSError, image: str) -> ChrootArchiveError:
    """The error for an image path that cannot be opened. ``PATH:TAG`` where ``PATH``
    exists is umoci's ``--image PATH:TAG`` habit: the message says how to choose by tag
    here (``ref=``, the command line's ``--ref``)."""
    error = from_os_error(err, image, kind=SourceError, action="cannot open the image")
    path, _, tag = image.rpartition(":")
    if (err.errno == errno.ENOENT and path and tag[:1].isalnum()
            and all(c.isalnum() or c in "_.-" for c in tag) and os.path.lexists(path)):
        error.message += (f"; to choose an image in a layout by its tag, use ref='{tag}' "
                          f"with the image {quoted(path)}")
    return error


def _from_stream(raw: compression.Readable, where: str, dest: str, limits: Limits,
                 stack: contextlib.ExitStack) -> Layout:
    """A stream that cannot be read twice: spooled as it comes (compressed or not)."""
    with InterruptsHeld():  # a KeyboardInterrupt as it was made left its descriptor
        spool = Spool(dest, limits)
        stack.callback(spool.close)
    try:
        while data := raw.read(compression.CHUNK):
            spool.write(data, where)
    except OSError as err:
        raise from_os_error(err, where, kind=ImageError, action="cannot read the image") from err
    size = spool.size
    if compression.detect(os.pread(spool.fd, 6, 0)) == "none":
        return _TarLayout(spool.fd, spool)
    return _StreamLayout(lambda: _RangeReader(spool.fd, 0, size), spool, limits.max_memory)
