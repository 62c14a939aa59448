"""Container images to a root filesystem: OCI image layouts and ``docker save`` archives.

:func:`unpack_image` reads an image from a directory or a tar file, without a daemon
and without extracting the image tar to disk: a tar is indexed once (with the
package's bounded tar reader) and its members are read as byte ranges. It selects one
image manifest by reference and platform, checks every document and blob it reads
against its digest and size, and applies the layers in order, each in its own confined
worker (see :mod:`chrootarchive.operations.untar`), checking each layer's DiffID (the config's
``rootfs.diff_ids``) against the sha256 of the uncompressed stream.

Everything in the image is untrusted:

- A digest is checked against ``algorithm:encoded`` (sha256: 64, sha512: 128 lower-case
  hex digits) before it is used to name a file, so ``..`` or ``/`` in a digest is an
  error before anything is opened. Paths named by a ``docker save`` manifest are
  resolved inside the image (symlinks and hardlinks of the image tar included, as
  ``docker save`` writes them for repeated layers); one that leaves it is an error.
  In a directory, symlinks are resolved by us, never by the kernel, and only regular
  files are read.
- JSON documents (indexes, manifests, configs, ``manifest.json``) are at most 4 MiB;
  a larger declared size is an error before anything is read. Layer blobs are
  streamed: a declared size is compared with the blob's real size before the first
  layer is applied, and memory never depends on it.
- Indexes may nest up to :data:`MAX_INDEX_DEPTH` levels; a descriptor that leads back
  to an index on the current path is a cycle, reported as such.
- A manifest may have at most ``max_layers`` layers (1,000 by default), checked before
  anything is unpacked.

Where the checks happen: everything that can be checked without reading layer data
(documents, digests of documents, media types, presence and sizes of every layer blob,
the number of layers, DiffIDs' form) is checked before the destination is touched. A
layer blob's digest and its DiffID are known only at the end of its stream, so a layer
whose digest does not match has been written into the destination when the error is
raised (the error says so). With ``options.atomic`` the whole image is unpacked beside
the destination and renamed into place only when every layer was verified, so a
mismatch leaves nothing behind.

A ``docker save`` archive from Docker 25 or later is also an OCI layout; it is read
through its ``manifest.json`` (tags as ``RepoTags``), whose layer and config names are
``blobs/sha256/...`` and so are checked against their digests too. Without
``manifest.json``, the same archive is read as the OCI layout it holds.

Docker's ``docker save`` has no digest for its ``manifest.json`` (nor an OCI layout for
its ``index.json``): the chain of trust starts there. Pass a digest as ``ref`` to pin
an OCI image by its manifest digest, or a ``docker save`` image by its image ID (its
config digest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform as _platform_module
import posixpath
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from chrootarchive.errors import (
    ArchiveError,
    ChrootArchiveError,
    CompressionError,
    DestinationError,
    DigestMismatchError,
    ImageError,
    LimitExceededError,
    MalformedArchiveError,
)
from chrootarchive.operations import compression, staging
from chrootarchive.operations import untar as api
from chrootarchive.options import DEFAULT_MAX_LAYERS, UnpackOptions, UnpackResult
from chrootarchive.tarformat import reader as tarreader

__all__ = [
    "DEFAULT_MAX_LAYERS",
    "MAX_INDEX_DEPTH",
    "MAX_JSON_SIZE",
    "ImageResult",
    "LayerProgress",
    "LayerResult",
    "default_platform",
    "parse_platform",
    "unpack_image",
]

MAX_JSON_SIZE = 4 << 20
"""The largest JSON document (index, manifest, config, ``manifest.json``) read."""

MAX_INDEX_DEPTH = 8
"""How deeply image indexes may nest below ``index.json``."""

MAX_TAR_MEMBERS = 200_000
"""Members of an image tar that are indexed (``docker save`` writes about 4 per layer)."""

MAX_DOCUMENTS = 1000
"""Index documents read while looking for a digest given as ``ref``."""

_MAX_LINK_HOPS = 16
_MAX_SIZE = (1 << 63) - 1
_CHUNK = compression.CHUNK
_MAX_WARNINGS = 1000

# -- media types ---------------------------------------------------------------------

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

_INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
_SCHEMA1_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})

#: Layer media type -> the compression its data must have.
LAYER_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar": "none",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

# -- digests -------------------------------------------------------------------------

_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_ENCODED_RE = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
_DIGEST_REF_RE = re.compile(r"(?:[^@]+@)?((?:sha256:[a-f0-9]{64})|(?:sha512:[a-f0-9]{128}))")


def _short(digest: str | None) -> str:
    if not digest:
        return "?"
    alg, _, hexpart = digest.partition(":")
    return f"{alg}:{hexpart[:12]}"


def check_digest(value: object, where: str) -> str:
    """Return ``value`` if it is a digest we can verify (sha256 or sha512), else raise.

    The check happens before the digest names a file: ``..``, ``/`` and anything but
    lower-case hex digits of the right length are refused.
    """
    if not isinstance(value, str):
        raise ImageError(f"digest is not a string: {_clip(value)}", where)
    if not _DIGEST_RE.fullmatch(value):
        raise ImageError(f"invalid digest {_clip(value)}", where)
    alg, _, encoded = value.partition(":")
    pattern = _ENCODED_RE.get(alg)
    if pattern is None:
        raise ImageError(f"unsupported digest algorithm {alg!r} (sha256, sha512)", where)
    if not pattern.fullmatch(encoded):
        raise ImageError(f"invalid {alg} digest {_clip(value)}", where)
    return value


def _clip(value: object, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _blob_name(digest: str) -> str:
    alg, _, encoded = digest.partition(":")
    return f"blobs/{alg}/{encoded}"


class _Hasher:
    def __init__(self, digest: str) -> None:
        self.expected = digest
        self.alg = digest.partition(":")[0]
        self._h = hashlib.new(self.alg)

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)

    @property
    def actual(self) -> str:
        return f"{self.alg}:{self._h.hexdigest()}"

    def matches(self) -> bool:
        return self.actual == self.expected


# -- platforms -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
}

#: For a wanted variant, the variants that run there, best first (containerd's rules).
_COMPATIBLE = {
    ("arm", "v8"): ("v8", "v7", "v6", "v5"),
    ("arm", "v7"): ("v7", "v6", "v5"),
    ("arm", "v6"): ("v6", "v5"),
    ("amd64", "v4"): ("v4", "v3", "v2", ""),
    ("amd64", "v3"): ("v3", "v2", ""),
    ("amd64", "v2"): ("v2", ""),
}

_PLATFORM_PART = re.compile(r"[a-z0-9_.-]+")


def _normalize(os_name: str, arch: str, variant: str) -> _Platform:
    os_name, arch, variant = os_name.lower(), arch.lower(), variant.lower()
    if arch in _ARCH_ALIASES:
        arch, alias_variant = _ARCH_ALIASES[arch]
        variant = variant or alias_variant
    if variant and variant[0].isdigit():
        variant = "v" + variant
    if arch == "arm64" and variant == "v8":
        variant = ""
    if arch == "amd64" and variant == "v1":
        variant = ""
    if arch == "arm" and not variant:
        variant = "v7"
    return _Platform(os_name, arch, variant)


def parse_platform(text: str) -> str:
    """Check and normalize ``OS/ARCH[/VARIANT]`` (``linux/x86_64`` -> ``linux/amd64``).

    Raises:
        ValueError: not of that form.
    """
    return str(_parse_platform(text))


def _parse_platform(text: str) -> _Platform:
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(_PLATFORM_PART.fullmatch(p.lower()) for p in parts):
        raise ValueError(f"expected OS/ARCH[/VARIANT] (for example linux/arm64), got {text!r}")
    return _normalize(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def default_platform() -> str:
    """The running machine's platform as images name it (``linux/amd64`` on x86_64)."""
    machine = _platform_module.machine().lower()
    if machine.startswith("armv"):
        return str(_normalize("linux", "arm", "v" + machine[4:5]))
    if machine in ("ppc64le", "s390x", "riscv64", "mips64", "mips64le", "loong64"):
        return f"linux/{machine}"
    return str(_normalize("linux", machine or "amd64", ""))


def _platform_rank(candidate: _Platform, want: _Platform) -> int | None:
    """How well ``candidate`` suits ``want``: 0 best, None not at all."""
    if candidate.os != want.os or candidate.architecture != want.architecture:
        return None
    if not want.variant:
        return 0 if not candidate.variant else 1
    ladder = _COMPATIBLE.get((want.architecture, want.variant), (want.variant,))
    if candidate.variant in ladder:
        return ladder.index(candidate.variant)
    return None


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerResult:
    """One applied layer.

    Attributes:
        index: its position in the manifest (0 = the bottom layer).
        digest: the blob's digest (None for a classic ``docker save`` ``layer.tar``,
            which is known by its DiffID only).
        diff_id: the digest of the uncompressed tar stream (checked).
        media_type: the layer's media type ("" for ``docker save``).
        compression: what the data was: ``none``, ``gzip``, ``zstd``...
        blob_size: bytes of the blob read.
        size: the applied size (the sum of the entries' sizes, as Docker reports it).
        entries: tar entries processed.
    """

    index: int
    digest: str | None
    diff_id: str
    media_type: str
    compression: str
    blob_size: int
    size: int
    entries: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ImageResult:
    """What :func:`unpack_image` did.

    Attributes:
        format: ``oci`` (an OCI image layout) or ``docker-save``.
        manifest_digest: the digest of the image manifest applied (None for
            ``docker save``, whose ``manifest.json`` has none).
        config_digest: the digest of the image config (Docker's image ID).
        ref: the reference that named the image (``org.opencontainers.image.ref.name``,
            a ``RepoTags`` entry...), if any.
        platform: the image's platform, from its config (``linux/amd64``).
        layers: the layers applied, bottom first.
        size: the sum of the layers' applied sizes.
        entries: tar entries processed in all layers.
        confinement: the mechanism used (of the last layer).
        warnings: things skipped or degraded, one line each.
    """

    format: str
    manifest_digest: str | None
    config_digest: str
    ref: str | None
    platform: str
    layers: tuple[LayerResult, ...]
    size: int
    entries: int
    confinement: str
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = [layer.to_json() for layer in self.layers]
        data["warnings"] = list(self.warnings)
        return data


@dataclass(frozen=True)
class LayerProgress:
    """A progress report: layer ``index`` of ``count`` has read ``done`` blob bytes.

    Sent once when a layer starts (``done == 0``), as its blob is read, and once when it
    is applied (``finished``). ``total`` is the blob's size when it is known.
    """

    index: int
    count: int
    digest: str
    total: int | None
    done: int
    finished: bool = False


ProgressCallback = Callable[[LayerProgress], None]

# -- reading the image ---------------------------------------------------------------


class _Reader(Protocol):
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


class _Layout:
    """The files of an image, by their names relative to its root."""

    description = "image"

    def kind(self, name: str) -> tuple[str | None, str]:
        """(``dir``, ``file``, ``symlink``, ``hardlink``, ``other`` or None, link target)."""
        raise NotImplementedError

    def open_resolved(self, name: str) -> _Reader:
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

    def open(self, name: str, what: str) -> _Reader:
        resolved = self.resolve(name)
        if resolved is None:
            raise ImageError(f"{what} is missing from the {self.description}", name)
        return self.open_resolved(resolved)


_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _DirLayout(_Layout):
    """An image in a directory. Symlinks are followed only by :meth:`resolve`."""

    description = "image directory"

    def __init__(self, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise ImageError(f"cannot open the image: {err.strerror}", path) from err

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
            raise ImageError(f"cannot read the image: {err.strerror}", name) from err
        if stat.S_ISLNK(st.st_mode):
            try:
                return "symlink", os.readlink(name, dir_fd=self._fd)
            except OSError as err:
                raise ImageError(f"cannot read the image: {err.strerror}", name) from err
        if stat.S_ISDIR(st.st_mode):
            return "dir", ""
        if stat.S_ISREG(st.st_mode):
            return "file", ""
        return "other", ""

    def open_resolved(self, name: str) -> _Reader:
        parts = name.split("/")
        dir_fd = self._fd
        try:
            for part in parts[:-1]:
                new = os.open(part, _OPEN_DIR, dir_fd=dir_fd)
                if dir_fd != self._fd:
                    os.close(dir_fd)
                dir_fd = new
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as err:
            raise ImageError(f"cannot open: {err.strerror}", name) from err
        finally:
            if dir_fd != self._fd:
                os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ImageError("not a regular file", name)
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


class _TarLayout(_Layout):
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

    def open_resolved(self, name: str) -> _Reader:
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
def _open_layout(image: str, max_bytes: int | None) -> Iterator[_Layout]:
    if image == "-":
        fd = _spool(sys.stdin.buffer, "standard input", max_bytes)
    else:
        try:
            st = os.stat(image)
        except OSError as err:
            raise ImageError(f"cannot open the image: {err.strerror}", image) from err
        if stat.S_ISDIR(st.st_mode):
            layout: _Layout = _DirLayout(image)
            try:
                yield layout
            finally:
                layout.close()
            return
        try:
            fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise ImageError(f"cannot open the image: {err.strerror}", image) from err
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


# -- JSON documents ------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _read_all(reader: _Reader, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes (one more than allowed tells "too long")."""
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        try:
            data = reader.read(min(_CHUNK, limit + 1 - got))
        except OSError as err:
            raise ImageError(f"cannot read the image: {err.strerror}") from err
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _parse_json(data: bytes, what: str, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        reason = err.args[0] if isinstance(err, ValueError) and err.args else type(err).__name__
        if isinstance(err, RecursionError):
            reason = "nested too deeply"
        elif isinstance(err, UnicodeDecodeError):
            reason = "not UTF-8"
        subject = "not valid JSON" if what == where else f"{what} is not valid JSON"
        raise ImageError(f"{subject}: {reason}", where) from None


def _read_root_json(layout: _Layout, name: str, what: str) -> Any:
    """A document without a digest (``index.json``, ``manifest.json``, ``oci-layout``)."""
    reader = layout.open(name, what)
    try:
        if reader.size > MAX_JSON_SIZE:
            raise ImageError(f"{what} is too large ({reader.size} bytes, limit "
                             f"{MAX_JSON_SIZE})", name)
        data = _read_all(reader, MAX_JSON_SIZE)
    finally:
        reader.close()
    if len(data) > MAX_JSON_SIZE:
        raise ImageError(f"{what} is too large (limit {MAX_JSON_SIZE} bytes)", name)
    return _parse_json(data, what, name)


def _read_blob_json(layout: _Layout, desc: _Descriptor, what: str) -> Any:
    """A document named by a descriptor: size and digest checked before parsing."""
    where = f"{what} {desc.digest}"
    if desc.size > MAX_JSON_SIZE:
        raise ImageError(f"declared size {desc.size} exceeds the limit for a JSON document "
                         f"({MAX_JSON_SIZE} bytes)", where)
    reader = layout.open(_blob_name(desc.digest), f"blob of the {what}")
    try:
        data = _read_all(reader, desc.size)
    finally:
        reader.close()
    _verify_blob(data, desc, what)
    return _parse_json(data, what, where)


def _verify_blob(data: bytes, desc: _Descriptor, what: str) -> None:
    if len(data) != desc.size:
        raise DigestMismatchError(
            f"size mismatch: declared {desc.size} bytes, the blob has "
            f"{'more' if len(data) > desc.size else len(data)}", f"{what} {desc.digest}")
    hasher = _Hasher(desc.digest)
    hasher.update(data)
    if not hasher.matches():
        raise DigestMismatchError(
            f"digest mismatch: expected {desc.digest}, got {hasher.actual}", what)


def _object(value: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError(f"{what} must be a JSON object, not {type(value).__name__}", where)
    return value


def _string(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ImageError(f"field {key!r} must be a string", where)
    return value


def _list(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> list[Any]:
    value = obj.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ImageError(f"field {key!r} must be a list", where)
    return value


@dataclass(frozen=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]
    platform: _Platform | None
    urls: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [self.annotations[k] for k in (REF_NAME, CONTAINERD_NAME)
                if k in self.annotations]


def _descriptor(value: Any, where: str) -> _Descriptor:
    obj = _object(value, "a descriptor", where)
    media_type = _string(obj, "mediaType", where)
    digest = check_digest(obj.get("digest"), where)
    size = obj.get("size")
    if type(size) is not int or not 0 <= size <= _MAX_SIZE:
        raise ImageError(f"invalid size {_clip(size)} for {digest}", where)
    raw_annotations = obj.get("annotations") or {}
    if not isinstance(raw_annotations, dict) or not all(
        isinstance(v, str) for v in raw_annotations.values()
    ):
        raise ImageError("annotations must map strings to strings", where)
    platform = None
    raw_platform = obj.get("platform")
    if raw_platform is not None:
        p = _object(raw_platform, "a platform", where)
        platform = _normalize(_string(p, "os", where), _string(p, "architecture", where),
                              _string(p, "variant", where, required=False))
    urls = obj.get("urls") or []
    if not isinstance(urls, list):
        raise ImageError("urls must be a list", where)
    return _Descriptor(media_type, digest, size, dict(raw_annotations), platform,
                       tuple(str(u) for u in urls))


def _check_media_type(doc: dict[str, Any], desc: _Descriptor, what: str) -> None:
    """A document's own ``mediaType``, when present, must be its descriptor's."""
    own = doc.get("mediaType")
    if own is not None and own != desc.media_type:
        raise ImageError(f"the {what} says it is {_clip(own)} but its descriptor says "
                         f"{desc.media_type!r}", desc.digest)


# -- selecting the manifest ----------------------------------------------------------


@dataclass
class _Selection:
    want: _Platform
    explicit: bool
    warnings: list[str]
    documents: int = 0


def _index_children(layout: _Layout, desc: _Descriptor, sel: _Selection,
                    chain: tuple[str, ...]) -> list[_Descriptor]:
    if len(chain) >= MAX_INDEX_DEPTH:
        raise ImageError(f"image indexes are nested more than {MAX_INDEX_DEPTH} levels deep",
                         f"image index {desc.digest}")
    if desc.digest in chain:
        raise ImageError("image index cycle: the index refers to itself "
                         f"({' -> '.join(_short(d) for d in (*chain, desc.digest))})",
                         desc.digest)
    sel.documents += 1
    if sel.documents > MAX_DOCUMENTS:
        raise ImageError(f"more than {MAX_DOCUMENTS} image indexes", desc.digest)
    doc = _object(_read_blob_json(layout, desc, "image index"), "an image index", desc.digest)
    _check_media_type(doc, desc, "image index")
    where = f"image index {desc.digest}"
    return [_descriptor(d, where) for d in _list(doc, "manifests", where)]


def _pick(candidates: list[_Descriptor], sel: _Selection, where: str,
          top: bool) -> _Descriptor:
    """Choose among an index's entries by platform (containerd's rules)."""
    usable = [d for d in candidates if d.media_type in _MANIFEST_TYPES | _INDEX_TYPES]
    unique = {d.digest: d for d in usable}
    if not usable:
        types = sorted({d.media_type for d in candidates})
        if not candidates:
            raise ImageError("the index lists no manifests", where)
        if any(t in _SCHEMA1_TYPES for t in types):
            raise ImageError("Docker schema 1 manifests are not supported", where)
        raise ImageError(f"no image manifest in the index (media types: {', '.join(types)})",
                         where)
    if len(unique) == 1:
        return usable[0]
    ranked = []
    for position, d in enumerate(usable):
        if d.platform is None:
            continue
        rank = _platform_rank(d.platform, sel.want)
        if rank is not None:
            ranked.append((rank, position, d))
    if ranked:
        return min(ranked, key=lambda r: (r[0], r[1]))[2]
    unplatformed = [d for d in usable if d.platform is None]
    if top and len(unplatformed) > 1:
        names = sorted({n for d in unplatformed for n in d.names()})
        listed = ", ".join(names[:20]) or "unnamed"
        raise ImageError(f"the layout holds {len(unique)} images; choose one by reference "
                         f"(names: {listed})", where)
    if len(unplatformed) == 1:
        return unplatformed[0]
    available = sorted({str(d.platform) for d in usable if d.platform is not None})
    raise ImageError(f"no manifest for platform {sel.want} (available: "
                     f"{', '.join(available) or 'none'})", where)


def _resolve_manifest(layout: _Layout, desc: _Descriptor, sel: _Selection,
                      chain: tuple[str, ...]) -> _Descriptor:
    while desc.media_type in _INDEX_TYPES:
        children = _index_children(layout, desc, sel, chain)
        chain = (*chain, desc.digest)
        desc = _pick(children, sel, f"image index {desc.digest}", top=False)
    if desc.media_type in _SCHEMA1_TYPES:
        raise ImageError("Docker schema 1 manifests are not supported", desc.digest)
    if desc.media_type not in _MANIFEST_TYPES:
        raise ImageError(f"not an image manifest: media type {_clip(desc.media_type)}",
                         desc.digest)
    return desc


def _find_digest(layout: _Layout, top: list[_Descriptor], digest: str,
                 sel: _Selection) -> _Descriptor | None:
    """Breadth-first search of the index tree for a descriptor with ``digest``."""
    level: list[tuple[_Descriptor, tuple[str, ...]]] = [(d, ()) for d in top]
    while level:
        for d, _chain in level:
            if d.digest == digest:
                return d
        following: list[tuple[_Descriptor, tuple[str, ...]]] = []
        for d, chain in level:
            if d.media_type in _INDEX_TYPES:
                children = _index_children(layout, d, sel, chain)
                following += [(c, (*chain, d.digest)) for c in children]
        level = following
    return None


def _normalize_name(name: str) -> str:
    """Docker's short form of a name: ``docker.io/library/x:latest`` -> ``x:latest``."""
    base, at, digest = name.partition("@")
    last = base.rsplit("/", 1)[-1]
    if ":" not in last and not at:
        base += ":latest"
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if base.startswith(prefix):
            base = base[len(prefix):]
            break
    if base.startswith("library/") and base.count("/") == 1:
        base = base[len("library/"):]
    return base + at + digest


def _digest_ref(ref: str) -> str | None:
    match = _DIGEST_REF_RE.fullmatch(ref)
    return match.group(1) if match else None


# -- the plan: everything checked before the destination is touched ------------------


@dataclass(frozen=True)
class _LayerPlan:
    index: int
    name: str  # the file in the layout
    digest: str | None
    size: int | None
    media_type: str
    compression: str  # none, gzip, zstd, or auto (docker save: detect)
    diff_id: str
    blob_size: int


@dataclass
class _Plan:
    format: str
    manifest_digest: str | None
    config_digest: str
    ref: str | None
    platform: str
    layers: list[_LayerPlan]
    warnings: list[str]


def _config_info(config: Any, where: str, layer_count: int,
                 sel: _Selection) -> tuple[list[str], str]:
    """The config's DiffIDs (checked against the layer count) and its platform, which
    must suit the one asked for (an index's platform fields are only hints: the config
    is what the image is)."""
    doc = _object(config, "the image config", where)
    rootfs = _object(doc.get("rootfs"), "rootfs", where)
    if rootfs.get("type") != "layers":
        raise ImageError(f"rootfs.type must be 'layers', not {_clip(rootfs.get('type'))}",
                         where)
    diff_ids = _list(rootfs, "diff_ids", where)
    if len(diff_ids) != layer_count:
        raise ImageError(f"the manifest has {layer_count} layers but the config lists "
                         f"{len(diff_ids)} diff_ids", where)
    checked = [check_digest(d, f"{where}: rootfs.diff_ids[{i}]")
               for i, d in enumerate(diff_ids)]
    os_name = doc.get("os")
    arch = doc.get("architecture")
    variant = doc.get("variant") or ""
    if not (isinstance(os_name, str) and isinstance(arch, str) and isinstance(variant, str)):
        return checked, "unknown"
    image_platform = _normalize(os_name, arch, variant)
    if _platform_rank(image_platform, sel.want) is None:
        message = f"the image is for {image_platform}, not {sel.want}"
        if sel.explicit:
            raise ImageError(message, where)
        sel.warnings.append(message + " (the running machine's platform)")
    return checked, str(image_platform)


def _check_count(count: int, max_layers: int, where: str) -> None:
    if count > max_layers:
        raise ImageError(f"too many layers: {count:,} (limit {max_layers:,})", where)


def _blob_size(layout: _Layout, name: str, what: str) -> int:
    reader = layout.open(name, what)
    try:
        return reader.size
    finally:
        reader.close()


def _plan_oci(layout: _Layout, ref: str | None, sel: _Selection, max_layers: int) -> _Plan:
    marker = _object(_read_root_json(layout, "oci-layout", "oci-layout"), "oci-layout",
                     "oci-layout")
    version = marker.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageError(f"unsupported image layout version {_clip(version)}", "oci-layout")
    index = _object(_read_root_json(layout, "index.json", "index.json"), "index.json",
                    "index.json")
    top = [_descriptor(d, "index.json") for d in _list(index, "manifests", "index.json")]
    chosen_ref: str | None = None
    if ref is not None:
        digest = _digest_ref(ref)
        if digest is not None:
            found = _find_digest(layout, top, digest, sel)
            if found is None:
                raise ImageError(f"no manifest or index with digest {digest} in the layout",
                                 "index.json")
            candidates = [found]
        else:
            short = _normalize_name(ref)
            candidates = [d for d in top if ref in d.names()
                          or _normalize_name(d.annotations.get(CONTAINERD_NAME, "")) == short]
            if not candidates:
                names = sorted({n for d in top for n in d.names()})
                raise ImageError(f"no image named {ref!r} in the layout (names: "
                                 f"{', '.join(names[:20]) or 'none'})", "index.json")
        chosen_ref = ref
        desc = _pick(candidates, sel, "index.json", top=True)
    else:
        desc = _pick(top, sel, "index.json", top=True)
        names = desc.names()
        chosen_ref = names[0] if names else None
    desc = _resolve_manifest(layout, desc, sel, ())

    manifest = _object(_read_blob_json(layout, desc, "image manifest"), "an image manifest",
                       desc.digest)
    _check_media_type(manifest, desc, "image manifest")
    where = f"image manifest {desc.digest}"
    if manifest.get("schemaVersion") != 2:
        raise ImageError(f"unsupported schemaVersion {_clip(manifest.get('schemaVersion'))}",
                         where)
    raw_layers = _list(manifest, "layers", where)
    _check_count(len(raw_layers), max_layers, where)
    config_desc = _descriptor(manifest.get("config"), f"{where}: config")
    if config_desc.media_type not in _CONFIG_TYPES:
        raise ImageError(f"not a container image: config media type "
                         f"{_clip(config_desc.media_type)}", where)
    layer_descs = [_descriptor(d, f"{where}: layers[{i}]") for i, d in enumerate(raw_layers)]
    for i, d in enumerate(layer_descs):
        if d.media_type not in LAYER_TYPES:
            raise ImageError(f"layer {i} ({d.digest}): unsupported media type "
                             f"{_clip(d.media_type)}", where)
    config = _read_blob_json(layout, config_desc, "image config")
    diff_ids, image_platform = _config_info(config, f"image config {config_desc.digest}",
                                            len(layer_descs), sel)
    layers = []
    for i, d in enumerate(layer_descs):
        name = _blob_name(d.digest)
        what = f"blob of layer {i} ({d.digest})"
        if not layout.exists(name):
            hint = " (a non-distributable layer: its urls are not fetched)" if d.urls else ""
            raise ImageError(f"{what} is missing from the {layout.description}{hint}", name)
        actual = _blob_size(layout, name, what)
        if actual != d.size:
            raise DigestMismatchError(f"size mismatch: declared {d.size} bytes, the blob has "
                                      f"{actual}", f"layer {i} ({d.digest})")
        layers.append(_LayerPlan(i, name, d.digest, d.size, d.media_type,
                                 LAYER_TYPES[d.media_type], diff_ids[i], actual))
    return _Plan("oci", desc.digest, config_desc.digest, chosen_ref, image_platform, layers,
                 sel.warnings)


_DOCKER_CONFIG_NAME = re.compile(r"(?:.*/)?([a-f0-9]{64})(?:\.json)?")
_BLOB_PATH = re.compile(r"(?:\./)?blobs/(sha256|sha512)/([a-f0-9]+)")


def _plan_docker(layout: _Layout, ref: str | None, sel: _Selection,
                 max_layers: int) -> _Plan:
    doc = _read_root_json(layout, "manifest.json", "manifest.json")
    if not isinstance(doc, list) or not doc:
        raise ImageError("manifest.json must be a non-empty list", "manifest.json")
    entries = [_object(e, "an entry of manifest.json", "manifest.json") for e in doc]
    configs: list[tuple[dict[str, Any], str, str | None]] = []
    for i, e in enumerate(entries):
        where = f"manifest.json[{i}]"
        config_name = _string(e, "Config", where)
        match = _DOCKER_CONFIG_NAME.fullmatch(config_name)
        blob = _BLOB_PATH.fullmatch(config_name)
        if blob is not None:
            config_digest: str | None = check_digest(f"{blob.group(1)}:{blob.group(2)}", where)
        elif match is not None:
            config_digest = f"sha256:{match.group(1)}"
        else:
            config_digest = None
        configs.append((e, config_name, config_digest))
    chosen_ref: str | None = None
    if ref is not None:
        digest = _digest_ref(ref)
        short = _normalize_name(ref)
        picked: list[tuple[dict[str, Any], str, str | None]] = []
        for e, name, config_digest in configs:
            tags = e.get("RepoTags") or []
            if not isinstance(tags, list):
                raise ImageError("RepoTags must be a list", "manifest.json")
            if digest is not None:
                if digest == config_digest:
                    picked.append((e, name, config_digest))
            elif ref in tags or short in (_normalize_name(str(t)) for t in tags):
                picked.append((e, name, config_digest))
        if not picked:
            tags = sorted({str(t) for e, _, _ in configs for t in (e.get("RepoTags") or [])})
            raise ImageError(f"no image tagged {ref!r} in the archive (tags: "
                             f"{', '.join(tags[:20]) or 'none'})", "manifest.json")
        entry, config_name, config_digest = picked[0]
        chosen_ref = ref
    else:
        if len(configs) > 1:
            tags = sorted({str(t) for e, _, _ in configs for t in (e.get("RepoTags") or [])})
            raise ImageError(f"the archive holds {len(configs)} images; choose one by tag "
                             f"(tags: {', '.join(tags[:20]) or 'none'})", "manifest.json")
        entry, config_name, config_digest = configs[0]
        tags = entry.get("RepoTags") or []
        chosen_ref = str(tags[0]) if isinstance(tags, list) and tags else None
    where = "manifest.json"
    layer_names = _list(entry, "Layers", where)
    _check_count(len(layer_names), max_layers, where)
    if not all(isinstance(n, str) for n in layer_names):
        raise ImageError("Layers must list file names", where)
    # The config: its name is its digest in both layouts.
    reader = layout.open(config_name, "image config")
    try:
        if reader.size > MAX_JSON_SIZE:
            raise ImageError(f"image config is too large ({reader.size} bytes)", config_name)
        data = _read_all(reader, MAX_JSON_SIZE)
    finally:
        reader.close()
    if config_digest is None:
        config_digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sel.warnings.append(f"the config {config_name!r} is not named by its digest: "
                            "not verified")
    else:
        _verify_blob(data, _Descriptor(DOCKER_CONFIG, config_digest, len(data), {}, None),
                     "image config")
    config = _parse_json(data, "image config", config_name)
    diff_ids, image_platform = _config_info(config, f"image config {config_digest}",
                                            len(layer_names), sel)
    layers = []
    for i, name in enumerate(layer_names):
        what = f"layer {i} ({name})"
        blob = _BLOB_PATH.fullmatch(name)
        digest = check_digest(f"{blob.group(1)}:{blob.group(2)}", what) if blob else None
        if not layout.exists(name):
            raise ImageError(f"{what} is missing from the {layout.description}", name)
        size = _blob_size(layout, name, what)
        layers.append(_LayerPlan(i, name, digest, size if digest else None, "", "auto",
                                 diff_ids[i], size))
    return _Plan("docker-save", None, config_digest, chosen_ref, image_platform, layers,
                 sel.warnings)


def _plan(layout: _Layout, ref: str | None, sel: _Selection, max_layers: int) -> _Plan:
    if layout.exists("manifest.json"):
        return _plan_docker(layout, ref, sel, max_layers)
    if layout.exists("index.json"):
        return _plan_oci(layout, ref, sel, max_layers)
    raise ImageError("not an OCI image layout (no index.json) nor a docker save archive "
                     "(no manifest.json)", layout.description)


# -- applying layers -----------------------------------------------------------------


_APPLIED = "(the layer was applied, at least in part, before this could be known)"


class _BlobStream:
    """Reads a layer blob, counting and hashing; checks size and digest at its end."""

    def __init__(self, reader: _Reader, layer: _LayerPlan, label: str,
                 progress: Callable[[int], None] | None) -> None:
        self._reader = reader
        self._layer = layer
        self._label = label
        self._hasher = _Hasher(layer.digest) if layer.digest else None
        self._progress = progress
        self.count = 0
        self._ended = False
        self._error: ChrootArchiveError | None = None

    def read(self, size: int = -1) -> bytes:
        if self._ended:
            return b""
        want = _CHUNK if size < 0 else size
        expected = self._layer.size
        if expected is not None:
            # Ask for one byte more than declared: a longer blob is an error.
            want = min(want, expected - self.count + 1)
        try:
            data = self._reader.read(max(want, 1))
        except OSError as err:
            raise ImageError(f"cannot read the blob: {err.strerror}", self._label) from err
        if not data:
            self._end()
            return b""
        self.count += len(data)
        if expected is not None and self.count > expected:
            self._fail(DigestMismatchError(
                f"size mismatch: declared {expected} bytes, the blob is longer {_APPLIED}",
                self._label))
        if self._hasher is not None:
            self._hasher.update(data)
        if self._progress is not None:
            self._progress(self.count)
        return data

    def _fail(self, error: ChrootArchiveError) -> None:
        self._ended = True
        self._error = error
        raise error

    def _end(self) -> None:
        self._ended = True
        expected = self._layer.size
        if expected is not None and self.count != expected:
            self._fail(DigestMismatchError(
                f"size mismatch: declared {expected} bytes, the blob has {self.count} "
                f"{_APPLIED}", self._label))
        if self._hasher is not None and not self._hasher.matches():
            self._fail(DigestMismatchError(
                f"digest mismatch: expected {self._hasher.expected}, got "
                f"{self._hasher.actual} {_APPLIED}", self._label))

    def finish(self) -> None:
        """Read what is left of the blob (not decompressing it) and check it."""
        if self._error is not None:
            raise self._error
        while not self._ended:
            self.read(_CHUNK)


def _layer_chunks(blob: _BlobStream, layer: _LayerPlan, label: str,
                  kind_seen: list[str]) -> Generator[bytes, None, None]:
    """The layer's uncompressed tar stream, hashed on its way for the DiffID."""
    declared = layer.compression
    kind, chunks = compression.decompressed_chunks(blob, compressed=declared != "none")
    kind_seen.append(kind)
    if declared not in ("none", "auto") and kind != declared:
        actual = "not compressed" if kind == "none" else kind
        raise ImageError(f"the media type {layer.media_type} says {declared} but the data "
                         f"is {actual}", label)
    diff = _Hasher(layer.diff_id)
    try:
        for chunk in chunks:
            diff.update(chunk)
            yield chunk
    except ChrootArchiveError:
        raise
    except Exception as err:  # a decompressor's own error type (isal's IsalError...)
        raise CompressionError(f"corrupt {kind} data: {err}", label) from err
    blob.finish()
    if not diff.matches():
        raise DigestMismatchError(
            f"DiffID mismatch: the config says {layer.diff_id}, the uncompressed layer is "
            f"{diff.actual} {_APPLIED}", label)


def _layer_label(layer: _LayerPlan) -> str:
    return f"layer {layer.index} ({layer.digest or layer.name})"


def _remaining(options: UnpackOptions, used_bytes: int, used_entries: int,
               deadline: float | None) -> UnpackOptions:
    """The limits left for the next layer: they hold for the whole image."""
    limits = options.limits
    changes: dict[str, Any] = {}
    if limits.max_bytes is not None:
        changes["max_bytes"] = max(limits.max_bytes - used_bytes, 0)
    if limits.max_entries is not None:
        changes["max_entries"] = max(limits.max_entries - used_entries, 0)
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LimitExceededError("limit timeout exceeded (between layers)")
        changes["timeout"] = left
    return replace(options, atomic=False, limits=replace(limits, **changes))


def _apply_layer(layout: _Layout, layer: _LayerPlan, dest: str, options: UnpackOptions,
                 count: int, progress: ProgressCallback | None) -> tuple[UnpackResult, str]:
    """Apply one layer; return the worker's result and the compression met."""
    label = _layer_label(layer)
    report: Callable[[int], None] | None = None
    if progress is not None:
        cb = progress
        digest = layer.digest or layer.diff_id

        def report(done: int) -> None:
            cb(LayerProgress(layer.index, count, digest, layer.blob_size, done))

        report(0)
    reader = layout.open(layer.name, label)
    blob = _BlobStream(reader, layer, label, report)
    kind_seen: list[str] = []
    chunks = _layer_chunks(blob, layer, label, kind_seen)
    try:
        result = api.unpack_stream(chunks, dest, options, layer=True, lock=False)
        for _ in chunks:  # the worker drains its input; make sure every check ran
            pass
    except ChrootArchiveError as err:
        if not isinstance(err, DigestMismatchError):
            # A corrupt blob shows up first as a tar or compression error: report the
            # digest mismatch, which says what is wrong.
            try:
                blob.finish()
            except DigestMismatchError as mismatch:
                raise mismatch from err
            except ChrootArchiveError:
                pass
        if isinstance(err, ArchiveError) and not (err.entry or "").startswith("layer "):
            err.entry = f"{label}: {err.entry}" if err.entry else label
        raise
    finally:
        chunks.close()
        reader.close()
    if progress is not None:
        progress(LayerProgress(layer.index, count, layer.digest or layer.diff_id,
                               layer.blob_size, blob.count, finished=True))
    return result, kind_seen[0] if kind_seen else layer.compression


@contextlib.contextmanager
def _locked_dest(dest: str, options: UnpackOptions) -> Iterator[str]:
    """Create ``dest`` if missing and hold its lock while the layers are applied, so
    that two unpacks into the same destination do not interleave their layers."""
    if options.atomic:
        with staging.atomic_destination(dest) as stage:
            yield stage
        return
    fd, _rel = api.pin_destination(dest, None, lock=True, owner=api._root_owner(options))
    try:
        yield dest
    finally:
        os.close(fd)


def unpack_image(
    image: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    ref: str | None = None,
    platform: str | None = None,
    options: UnpackOptions | None = None,
    progress: ProgressCallback | None = None,
    max_layers: int = DEFAULT_MAX_LAYERS,
) -> ImageResult:
    """Unpack a container image's root filesystem into ``dest``, every layer confined.

    Args:
        image: an OCI image layout (a directory with ``oci-layout``, ``index.json`` and
            ``blobs/``, or a tar of one), or a ``docker save`` archive (``manifest.json``;
            the classic layout with ``<id>/layer.tar`` and the newer one that embeds an
            OCI layout), as a tar file (compressed or not; ``-`` for standard input) or
            a directory.
        dest: the root filesystem directory; created (0755) if missing. Layers are
            applied onto what it holds.
        ref: which image: an ``org.opencontainers.image.ref.name`` (or
            ``io.containerd.image.name``) annotation of ``index.json``, a ``RepoTags``
            entry of a ``docker save`` archive (``name`` means ``name:latest``), or a
            digest (``sha256:...``, also ``name@sha256:...``): of a manifest or index
            for an OCI layout, of the config (the image ID) for ``docker save``.
            Required when the image holds several images.
        platform: ``OS/ARCH[/VARIANT]`` to choose in image indexes; default: the
            running machine's (``linux/amd64`` on x86_64). When given, an image whose
            config names another platform is an error; by default, a warning.
        options: how to unpack (owners, limits, confinement, ``atomic``...). Limits
            hold for the whole image (bytes, entries, time), not per layer. Whiteouts
            are always applied (``whiteout_format`` must be ``aufs``).
        progress: called with a :class:`LayerProgress` as each layer starts, as its
            blob is read, and when it is applied.
        max_layers: the most layers a manifest may have (checked before unpacking).

    Returns:
        What was applied: manifest and config digests, the layers, sizes, warnings.

    Raises:
        ImageError: the image is malformed, incomplete, or names a missing image; a
            :class:`DigestMismatchError` when a blob's size or digest, or a layer's
            DiffID, does not match. Everything but a layer's own digest and DiffID is
            checked before the destination is touched; a layer whose digest or DiffID
            does not match has already been applied when the error is raised (use
            ``options.atomic`` to leave nothing behind).
        ArchiveError: a layer is a bad or hostile tar (breakout, limits...).
        DestinationError, ConfinementError: as for :func:`chrootarchive.untar`.
        ValueError: a malformed ``platform`` or an ``overlay`` whiteout format.
    """
    options = options or UnpackOptions()
    if options.whiteout_format != "aufs":
        raise ValueError("unpack_image applies whiteouts: whiteout_format must be 'aufs'")
    if max_layers < 0:
        raise ValueError("max_layers must be >= 0")
    explicit = platform is not None
    want = _parse_platform(platform if platform is not None else default_platform())
    sel = _Selection(want, explicit, [])
    started = time.monotonic()
    timeout = options.limits.timeout
    deadline = started + timeout if timeout is not None else None
    image_path = os.fspath(image)
    with _open_layout(image_path, options.limits.max_bytes) as layout:
        plan = _plan(layout, ref, sel, max_layers)
        warnings = list(plan.warnings)
        applied: list[LayerResult] = []
        size = entries = 0
        confinement = ""
        with _locked_dest(os.fspath(dest), options) as target:
            if not plan.layers:
                # Nothing to apply, but the destination is made as a layer would make it.
                api.unpack_stream([bytes(1024)], target, _remaining(options, 0, 0, deadline),
                                  layer=True, lock=False)
            for layer in plan.layers:
                layer_options = _remaining(options, size, entries, deadline)
                result, kind = _apply_layer(layout, layer, target, layer_options,
                                            len(plan.layers), progress)
                size += result.size
                entries += result.entries
                confinement = result.confinement
                label = _layer_label(layer)
                for warning in result.warnings:
                    if len(warnings) < _MAX_WARNINGS:
                        warnings.append(f"{label}: {warning}")
                applied.append(LayerResult(
                    index=layer.index, digest=layer.digest, diff_id=layer.diff_id,
                    media_type=layer.media_type,
                    compression=kind,
                    blob_size=layer.blob_size, size=result.size, entries=result.entries,
                ))
    return ImageResult(
        format=plan.format, manifest_digest=plan.manifest_digest,
        config_digest=plan.config_digest, ref=plan.ref, platform=plan.platform,
        layers=tuple(applied), size=size, entries=entries, confinement=confinement,
        warnings=tuple(warnings),
    )
