"""Reading the files of an image from a directory or a tar, never trusting its paths.

A directory's symlinks are resolved here, lexically, never by the kernel, and only
regular files are opened; a tar is indexed once and its members are read by offset
(a compressed tar, or standard input, is spooled to an unnamed temporary file first).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from chrootarchive._fdio import describe, open_input, open_regular
from chrootarchive.errors import (
    DestinationError,
    ImageError,
    LimitExceededError,
    MalformedArchiveError,
    SourceError,
    from_os_error,
)
from chrootarchive.operations import compression
from chrootarchive.tarformat import reader as tarreader

MAX_TAR_MEMBERS = 200_000
"""Members of an image tar that are indexed (``docker save`` writes about 4 per layer)."""

_MAX_LINK_HOPS = 16

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
        self._pos = offset
        self._end = offset + size
        self.size = size

    def read(self, n: int) -> bytes:
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

    def kind(self, name: str) -> tuple[str | None, str]:
        """(``dir``, ``file``, ``symlink``, ``hardlink``, ``other`` or None, link target)."""
        raise NotImplementedError

    def open_resolved(self, name: str) -> Reader:
        raise NotImplementedError

    def close(self) -> None:
        """Release the layout's resources."""

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
                    raise ImageError(f"symbolic link {current!r} points outside the image",
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


@dataclass(slots=True)
class _Member:
    kind: str  # file, dir, symlink, hardlink, other
    offset: int = 0
    size: int = 0
    target: str = ""


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

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._members: dict[str, _Member] = {}
        self._dirs: set[str] = set()
        self._prefix = ""
        reader = tarreader.TarReader(fd)
        count = 0
        try:
            for entry in reader:
                count += 1
                if count > MAX_TAR_MEMBERS:
                    raise ImageError(
                        f"the image archive has more than {MAX_TAR_MEMBERS:,} members")
                name = _member_name(entry.name)
                if name is None:
                    continue
                if entry.kind == tarreader.REGULAR and entry.sparse is None:
                    member = _Member("file", reader.offset, entry.size)
                elif entry.kind == tarreader.DIRECTORY:
                    member = _Member("dir")
                elif entry.kind == tarreader.SYMLINK:
                    member = _Member("symlink", target=entry.linkname)
                elif entry.kind == tarreader.HARDLINK:
                    member = _Member("hardlink", target=entry.linkname)
                else:
                    member = _Member("other")
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

    def open_resolved(self, name: str) -> Reader:
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
        return _RangeReader(self._fd, member.offset, member.size)


def _spool(source: compression.Readable, where: str, max_bytes: int | None) -> int:
    """Decompress (or copy) ``source`` into an unnamed temporary file; return its fd."""
    kind, chunks = compression.decompressed_chunks(source)
    tmp = tempfile.TemporaryFile()  # noqa: SIM115 - its fd outlives the object
    fd = os.dup(tmp.fileno())
    tmp.close()
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise LimitExceededError(
                    f"limit max_bytes exceeded: the {kind} image archive holds more than "
                    f"{max_bytes} bytes", where)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as err:
        os.close(fd)
        raise DestinationError(f"cannot spool the image archive: {err.strerror}",
                               tempfile.gettempdir()) from err
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def open_layout(image: str, max_bytes: int | None) -> Iterator[Layout]:
    if image == "-":
        fd = _spool(sys.stdin.buffer, "standard input", max_bytes)
    else:
        try:
            st = os.stat(image)
        except OSError as err:
            raise from_os_error(
                err, image, kind=SourceError, action="cannot open the image") from err
        if stat.S_ISDIR(st.st_mode):
            layout: Layout = _DirLayout(image)
            try:
                yield layout
            finally:
                layout.close()
            return
        try:
            fd, st = open_input(image)
        except OSError as err:
            raise from_os_error(
                err, image, kind=SourceError, action="cannot open the image") from err
        if fd < 0:
            raise SourceError(f"{describe(st)}: not opened (a device, named FIFO or socket "
                              "never is); give its data on standard input ('-')", image)
        if not stat.S_ISREG(st.st_mode) or compression.detect(os.pread(fd, 6, 0)) != "none":
            with open(fd, "rb", closefd=True) as raw:
                fd = _spool(raw, image, max_bytes)
    try:
        tar_layout = _TarLayout(fd)
        try:
            yield tar_layout
        finally:
            tar_layout.close()
    finally:
        os.close(fd)
