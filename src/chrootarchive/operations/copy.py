"""Tar streams made with the reading side confined, and copies made through them.

:func:`tar` is Docker's ``Tar(src, options, root)``: the tree is read by a worker
jailed at ``root`` (a container's root filesystem, say), which walks it by directory
descriptors and never follows a symlink below the source, so neither the root's own
symlinks nor a racer swapping a directory for a symlink can make it read a byte from
outside (CVE-2018-15664). Compression happens here, in the caller's process, outside
the jail. The copy helpers (Docker's archiver: ``CopyWithTar``, ``CopyFileWithTar``,
``UntarPath``) pipe such a stream into :func:`~chrootarchive.untar`, whose writing
side is confined at the destination: both ends are jailed, each in its own root.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import stat
from collections.abc import Callable, Sequence

from chrootarchive import _linux
from chrootarchive._record import replace
from chrootarchive.contract import JobRequest
from chrootarchive.errors import (
    ConfinementError,
    DestinationError,
    MechanismUnavailableError,
    SourceError,
    from_os_error,
    quoted,
)
from chrootarchive.jail.confine import IN_PROCESS
from chrootarchive.operations import destination
from chrootarchive.operations import untar as api
from chrootarchive.operations.compression import CHUNK
from chrootarchive.options import (
    PackOptions,
    PackResult,
    UnpackOptions,
    UnpackResult,
    given,
    pack_spec,
)
from chrootarchive.runner import ladder
from chrootarchive.runner.worker import Running

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, Protocol, cast
else:  # no typing at run time (the command line's start: tar, cp): stand-ins
    Protocol = object

    def cast(_type: object, value: object) -> object:
        return value

__all__ = [
    "TarStream",
    "copies_contents",
    "copy_file_with_tar",
    "copy_path",
    "copy_with_tar",
    "tar",
    "untar_path",
]

Progress = Callable[[int], None]
PathLike = str | os.PathLike[str]

# -- the stream --------------------------------------------------------------------------


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def _compressor(kind: str, level: int | None) -> _Compressor | None:
    if kind == "none":
        return None
    if kind == "gzip":
        try:
            from isal import isal_zlib  # ISA-L: several times faster than zlib
        except ImportError:  # a declared dependency; the stdlib is the fallback
            pass
        else:
            if level is None or level <= isal_zlib.ISAL_BEST_COMPRESSION:  # ISA-L: 0-3
                return cast(_Compressor, isal_zlib.compressobj(
                    isal_zlib.ISAL_DEFAULT_COMPRESSION if level is None else level,
                    isal_zlib.DEFLATED, 31))
        import zlib  # without ISA-L, or for gzip's levels above ISA-L's (4-9)

        return cast(_Compressor, zlib.compressobj(6 if level is None else level,
                                                  zlib.DEFLATED, 31))
    if kind == "zstd":
        import zstandard

        return cast(_Compressor,
                    zstandard.ZstdCompressor(level=3 if level is None else level).compressobj())
    raise ValueError(f"unknown compression {kind!r}")


class TarStream(io.RawIOBase):
    """A readable binary stream of a tar archive being made by a confined worker.

    Reading it to the end yields the whole archive (compressed if asked); the read
    that meets the end also waits for the worker and raises its error, with its
    type, if it failed (a :class:`~chrootarchive.SourceError` for a source that
    cannot be read). Closing the stream before the end stops the worker. Use it as a
    context manager, or close it: the worker is a child process.

    Attributes:
        result: what was packed (entries, bytes, warnings), once the end was read.
    """

    def __init__(
        self, source: Running, compression: str, level: int | None, progress: Progress | None
    ) -> None:
        super().__init__()
        self._source = source
        self._fd = source.stdout_r
        self._compressor = _compressor(compression, level)
        self._pending = bytearray()
        self._eof = False
        self._progress = progress
        self.result: PackResult | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed TarStream")
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        if self._compressor is None and not self._pending:
            if self._eof:
                return b""
            data = os.read(self._fd, size)
            if data:
                if self._progress is not None:
                    self._progress(len(data))
                return data
            self._end()
            return b""
        while not self._pending and not self._eof:
            self._fill()
        out = bytes(self._pending[:size])
        del self._pending[:size]
        return out

    def readall(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            data = self.read(CHUNK)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _fill(self) -> None:
        raw = os.read(self._fd, CHUNK)
        compressor = self._compressor
        if raw:
            if self._progress is not None:
                self._progress(len(raw))
            self._pending += compressor.compress(raw) if compressor is not None else raw
            return
        if compressor is not None:
            self._pending += compressor.flush()
        self._end()

    def _end(self) -> None:
        self._eof = True
        reply = self._source.finish()
        self.result = PackResult(entries=reply.entries, size=reply.size,
                                 confinement=reply.confinement, warnings=reply.warnings)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._eof:
                self._eof = True
                self._abort()
        finally:
            super().close()

    def _abort(self) -> None:
        """Stop the job; a job that had already failed on its own says why."""
        source = self._source
        if source.outcome() is False:
            source.finish()  # raises its error
        source.close()


# -- tar ---------------------------------------------------------------------------------


def tar(
    src: PathLike,
    root: PathLike | None = None,
    options: PackOptions | None = None,
    *,
    progress: Progress | None = None,
    archive_fds: Sequence[int] = (),
    archive_name: str | None = None,
) -> TarStream:
    """Make a tar stream of ``src``, read by a worker jailed at ``root``.

    Args:
        src: what to pack. With ``root``, a path inside it (relative to it, or
            absolute: below ``root`` on the host, else taken inside ``root``); in-root
            symlinks on the way are followed inside the jail. Without ``root``, a
            host path; the jail is then ``src`` itself (a directory) or its parent.
            Its last component is packed as it is (a symlink as a symlink) unless
            ``src`` ends with ``/`` or ``/.``. A directory's entries are named
            relative to it; anything else is one entry named after it.
        root: the jail for the reading side, e.g. a container's root filesystem.
        options: what to include, names, owners, compression (:class:`PackOptions`).
        progress: called with the number of tar bytes read from the worker so far
            (cumulative, like tqdm's ``n``), as they come.
        archive_fds: descriptors of the file the stream is written to (and of one it
            will replace), when it may be inside ``src``: such a file is left out
            with a warning, as GNU tar's "file is the archive; not dumped" (it would
            be packed into itself).
        archive_name: the base name that the first of ``archive_fds`` will have, when
            it is written under a temporary name and then renamed in its directory:
            the warning names it.

    Returns:
        A :class:`TarStream`: read it to the end, then close it (or use ``with``).

    Raises:
        SourceError: the source or the root cannot be opened (the worker's errors
            are raised by the stream).
        ConfinementError: no confinement mechanism is available.
    """
    options = given(options, PackOptions)
    mechanisms = _pack_candidates(options.confine)
    jail, inner = _locate(os.fspath(src), None if root is None else os.fspath(root))
    try:
        root_fd = os.open(jail, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise from_os_error(err, jail, kind=SourceError) from err
    try:
        source = _start(root_fd, inner, options, mechanisms, os.fspath(src),
                        _regular_file_ids(archive_fds, archive_name))
    finally:
        os.close(root_fd)
    return TarStream(source, options.compression, options.compression_level,
                     api.cumulative(progress))


def _regular_file_ids(fds: Sequence[int], first_name: str | None = None) -> tuple[str, ...]:
    """``"dev:ino"`` of each of ``fds`` that is a regular file (a pipe or a terminal
    cannot be in the tree); the first as ``"dev:ino/NAME"`` with ``first_name``."""
    if first_name is not None and (first_name in ("", ".", "..") or "/" in first_name):
        raise ValueError(f"archive_name must be a base name, not {first_name!r}")
    ids = []
    for i, fd in enumerate(fds):
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            ids.append(f"{st.st_dev}:{st.st_ino}" + (f"/{first_name}" if first_name and not i
                                                     else ""))
    return tuple(ids)


def _reason(err: OSError) -> str:
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


def _pack_candidates(requested: str) -> list[str]:
    """The mechanisms for the reading side: the ladder, in another order for ``auto``.

    As root, ``chroot`` first: it needs no mount of the source (``pivot`` binds it onto
    itself where it is not a mount point); the worker then holds no
    descriptor from outside, neither CAP_SYS_CHROOT nor the ``chroot`` system call
    (seccomp), and no capability but reading. Then ``openat2``, before ``pivot`` and
    ``userns``: reading needs no namespace, and inside one, owners would read as the
    namespace sees them (the caller as 0, others as 65534); and where ``chroot`` cannot
    make a mount namespace of its own, it cannot make its mounts ``nodev`` and refuses
    to read (a device swapped in could be opened), so neither can ``pivot``.
    """
    found = ladder.candidates(requested)
    if requested == "auto":
        if "openat2" in found:
            found.remove("openat2")
            found.insert(0, "openat2")
        if os.geteuid() == 0:
            with contextlib.suppress(ConfinementError):
                found = ladder.candidates("chroot") + found
    jailed = [name for name in found if name not in IN_PROCESS]
    if jailed and _linux.mount_setattr_missing():
        # A jailed reader needs nodev mounts (jail.confine.mounts.forbid_devices).
        reason = ("reading a tree in a jail needs mount_setattr (Linux 5.12) to keep "
                  "devices from being opened")
        if requested != "auto":
            raise MechanismUnavailableError(
                f"confinement {requested!r} is not available: {reason}")
        found = [name for name in found if name in IN_PROCESS]
        if not found:
            raise ConfinementError(ladder.unavailable_summary(dict.fromkeys(jailed, reason)))
    return found


def _locate(src: str, root: str | None) -> tuple[str, str]:
    """The directory to jail at, and the source's path inside it."""
    if not src:
        raise SourceError("empty source path")
    follow = src.endswith("/") or src.endswith("/.")
    if root is not None:
        if os.path.isabs(src):
            src = destination.inside(src, root) or src
        inner = posixpath.normpath("/" + src)
        return root, inner + ("/" if follow and inner != "/" else "")
    head, tail = os.path.split(src)
    if tail in ("", ".", ".."):
        return src, "/"
    try:
        st = os.lstat(src)
    except OSError as err:
        raise from_os_error(err, src, kind=SourceError) from err
    if stat.S_ISDIR(st.st_mode):
        return src, "/"
    return head or ".", "/" + tail


def _start(
    root_fd: int, inner: str, options: PackOptions, mechanisms: list[str], display: str,
    archive_files: tuple[str, ...] = (),
) -> Running:
    """Start the pack with the first mechanism the kernel accepts."""
    request = JobRequest.make("pack", create_dest=False, src=inner, display=display,
                              pack=pack_spec(options, archive_files))

    def attempt(mechanism: str) -> Running:
        running = ladder.start(root_fd, request.replace(mechanism=mechanism), stdout_pipe=True)
        running.close_stdin()
        return running

    return ladder.run_ladder(options.confine, attempt, mechanisms)


# -- copies ------------------------------------------------------------------------------


def _pipe(
    src: str,
    src_root: PathLike | None,
    dst: str,
    dst_root: PathLike | None,
    options: UnpackOptions | None,
    pack_options: PackOptions,
    progress: Progress | None,
) -> UnpackResult:
    """tar (jailed at the source) | untar (jailed at the destination). Holes stay
    holes (the stream is sparse), as with GNU cp.

    Unprivileged, the copy belongs to the caller, as GNU cp's does: the owners the
    source records are the host's, which no user namespace of the caller's maps (its
    own files were "owners that cannot be represented", in a warning).
    """
    pack_options = replace(pack_options, compression="none", sparse=True)
    options = given(options, UnpackOptions)
    if os.geteuid() != 0 and options.chown is None and not (
            options.uid_maps or options.gid_maps):
        options = replace(options, no_lchown=True)
        if pack_options.chown is None:  # not read: nor counted, where a namespace hides them
            pack_options = replace(pack_options, chown=(os.geteuid(), os.getegid()))
    with tar(src, src_root, pack_options, progress=progress) as stream:
        if dst_root is None:
            result = api.untar_uncompressed(stream, dst, options)
        else:
            result = api.untar_with_root(stream, dst, dst_root, options)
        packed = stream.result
    if packed is not None and packed.warnings:
        result = replace(result, warnings=packed.warnings + result.warnings)
    return result


def copy_with_tar(
    src: PathLike,
    dst: PathLike,
    options: UnpackOptions | None = None,
    *,
    pack_options: PackOptions | None = None,
    progress: Progress | None = None,
) -> UnpackResult:
    """Copy the contents of the directory ``src`` into ``dst`` (created if missing).

    Docker's ``CopyWithTar``: ``src`` is read by a worker jailed at ``src`` and
    written by one jailed at ``dst``. A ``src`` that is not a directory is copied
    with :func:`copy_file_with_tar`. ``src`` itself may be a symlink (followed).

    Returns:
        The unpack's result; its warnings include the pack's.
    """
    path = os.fspath(src)
    try:
        st = os.stat(path)
    except OSError as err:
        raise from_os_error(err, path, kind=SourceError) from err
    if not stat.S_ISDIR(st.st_mode):
        return copy_file_with_tar(src, dst, options, pack_options=pack_options,
                                  progress=progress)
    source = path if path.endswith("/") else path + "/"
    return _pipe(source, None, os.fspath(dst), None, options,
                 given(pack_options, PackOptions, "pack_options"), progress)


def copy_file_with_tar(
    src: PathLike,
    dst: PathLike,
    options: UnpackOptions | None = None,
    *,
    pack_options: PackOptions | None = None,
    progress: Progress | None = None,
) -> UnpackResult:
    """Copy the file ``src`` to ``dst``; a ``dst`` ending in ``/`` means into it.

    Docker's ``CopyFileWithTar``: a symlink ``src`` is followed (its target is
    copied); the directory that receives the file is created if missing; mode,
    owner, times and xattrs go along.

    Raises:
        SourceError: ``src`` is missing or is a directory.
    """
    path = os.fspath(src)
    target = os.fspath(dst)
    try:
        st = os.stat(path)
    except OSError as err:
        raise from_os_error(err, path, kind=SourceError) from err
    if stat.S_ISDIR(st.st_mode):
        raise SourceError("is a directory (copy directories with copy_with_tar)", path)
    if target.endswith("/"):
        target = os.path.join(target, os.path.basename(path.rstrip("/")))
    if os.path.islink(path):
        path = os.path.realpath(path)
    dst_dir, dst_name = os.path.split(target)
    pack_options = replace(given(pack_options, PackOptions, "pack_options"),
                           rebase_names={".": dst_name}, include_files=())
    return _pipe(path, None, dst_dir or ".", None, options, pack_options, progress)


def untar_path(
    archive: PathLike,
    dst: PathLike,
    options: UnpackOptions | None = None,
    *,
    progress: Progress | None = None,
) -> UnpackResult:
    """Unpack the archive file ``archive`` (compression detected) into ``dst``, confined.

    Docker's ``UntarPath``; the same as :func:`~chrootarchive.untar` with a path.
    """
    return api.untar(archive, dst, options, progress=progress)


def copy_path(
    src: PathLike,
    dst: PathLike,
    *,
    src_root: PathLike | None = None,
    dst_root: PathLike | None = None,
    options: UnpackOptions | None = None,
    pack_options: PackOptions | None = None,
    progress: Progress | None = None,
) -> UnpackResult:
    """Copy ``src`` to ``dst`` (``docker cp``), reading jailed at ``src_root`` and
    writing jailed at ``dst_root``.

    * ``src`` is copied to ``dst`` (a directory with everything below it, its mode,
      owner and times included), or into ``dst`` when ``dst`` is a directory or ends
      with ``/`` (it then becomes ``dst/basename(src)``), as ``docker cp`` and GNU
      ``cp -a`` do. An existing file ``dst`` is replaced by a file, never by a
      directory (:class:`DestinationError`, "cannot copy a directory to a file");
      below ``dst`` too, a file never replaces a directory nor a directory a file
      (``no_overwrite_dir_nondir`` is set, as docker cp sets it).
    * A symlink as ``dst`` (without ``dst_root``) is read inside its directory, as
      the writer jailed there reads it: never followed out of it on the host.
    * ``src`` ending with ``/.`` copies its contents into ``dst`` instead.
    * The last component of ``src`` is not followed (a symlink is copied as a
      symlink) unless ``src`` ends with ``/`` or ``/.``; nothing below it ever is.
    * ``dst``'s parent directories are created (inside ``dst_root``) if missing.

    Paths are inside their roots when roots are given (see :func:`tar` and
    :func:`~chrootarchive.untar_with_root`), host paths otherwise.
    """
    source = os.fspath(src)
    target = os.fspath(dst)
    name = posixpath.basename(posixpath.normpath(source))
    base = given(pack_options, PackOptions, "pack_options")
    # docker cp's rule below DST too: a file never replaces a directory (and all in
    # it), nor a directory a file; whatever was decided here, the writer refuses.
    options = replace(given(options, UnpackOptions), no_overwrite_dir_nondir=True)
    made: str | None = None  # the name made (or replaced) in untar_dir; None: its contents
    if dst_root is None and not target.endswith("/") and os.path.islink(target):
        # A symlink as DST is read as the writer's jail at DST's directory reads it,
        # inside that directory (it was replaced there), never followed on the host.
        dst_root = os.path.dirname(os.path.abspath(target))
        target = "/" + os.path.basename(os.path.abspath(target))
    # What DST is now decides where the copy goes (docker cp's rules), seen as the
    # writing side's jail will see it: a guard for the user's meaning, not the
    # confinement (the jailed writer resolves DST again, and refuses to replace a
    # directory by a file or the reverse, whichever meaning a race leaves it).
    dst_kind = _file_type(target, dst_root, follow=True)
    if copies_contents(source):
        pack_options = replace(base, include_source_dir=True, rebase_names={})
        untar_dir = target
        if dst_kind not in (None, stat.S_IFDIR):
            _refuse_directory_onto_file(source, target)
    else:
        cleaned = posixpath.normpath(target)
        new_name = posixpath.basename(cleaned)
        if target.endswith("/") or new_name in ("", ".", "..") or dst_kind == stat.S_IFDIR:
            untar_dir, new_name = target, name
        else:
            if dst_kind is not None and _file_type(
                    source, src_root, follow=source.endswith("/")) == stat.S_IFDIR:
                _refuse_directory_onto_file(source, target)
            untar_dir = posixpath.dirname(cleaned) or ("/" if dst_root is not None else ".")
        pack_options = replace(base, include_source_dir=True, rebase_names={".": new_name})
        made = new_name
    _refuse_copy_into_itself(source, src_root, untar_dir, dst_root, made)
    return _pipe(source, src_root, untar_dir, dst_root, options, pack_options, progress)


def copies_contents(source: str) -> bool:
    """docker cp's ``SRC/.`` (or a root, ``/``, ``.``): SRC's contents are copied, not
    SRC under its name."""
    return source.endswith("/.") or posixpath.basename(posixpath.normpath(source)) in (
        "", ".", "..")


def _file_type(path: str, root: PathLike | None, *, follow: bool) -> int | None:
    """The type (``S_IFMT``) of what is at ``path``, resolved as the jail at ``root``
    resolves it (``RESOLVE_IN_ROOT``; the host's view without a root); None when
    nothing is there, or it cannot be told."""
    fd = _open_as_jailed(path, root, follow=follow)
    if fd is None:
        return None
    try:
        return stat.S_IFMT(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def _open_as_jailed(path: str, root: PathLike | None, *, follow: bool) -> int | None:
    """An ``O_PATH`` descriptor of what is at ``path``, resolved as the jail at
    ``root`` resolves it (``RESOLVE_IN_ROOT``; the host's view without a root); None
    when nothing is there, or it cannot be told. The caller closes it."""
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        if root is None:
            return os.open(path, flags)
        top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for _ in range(8):  # EAGAIN: a rename in the root raced the lookup
            try:
                return _linux.openat2(top, path.lstrip("/") or ".", flags, 0,
                                      _linux.RESOLVE_IN_ROOT | _linux.RESOLVE_NO_MAGICLINKS)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as err:
                if err.errno == errno.EAGAIN:
                    continue
                if err.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
                    return _open_host_view(path, root, follow)  # no openat2 here
                return None  # ELOOP, EACCES...: the writer meets it and says so
        return None
    finally:
        os.close(top)


def _open_host_view(path: str, root: PathLike, follow: bool) -> int | None:
    """:func:`_open_as_jailed` where ``openat2`` is missing: the host's view, when it
    stays in ``root`` (an absolute symlink inside reads otherwise there: None, as
    unknown). A wrong answer costs an error, not a file: the writer never replaces a
    directory by a file or the reverse (``no_overwrite_dir_nondir``)."""
    found = (_host_path(path, root) if follow
             else os.path.join(root, path.lstrip("/")))
    if found is None:
        return None
    try:
        return os.open(found, os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    except OSError:
        return None


def _refuse_directory_onto_file(source: str, target: str) -> NoReturn:
    """docker cp's "cannot copy a directory to a file" (GNU cp: "cannot overwrite
    non-directory with directory"): replacing the file is not what either means."""
    raise DestinationError(
        f"cannot copy a directory, {quoted(source)}, to a file ({quoted(target)})", target)


def _host_path(path: str, root: PathLike | None) -> str | None:
    """Where ``path`` (inside ``root``, if given) is on the host, its symlinks resolved
    as far as it exists; None where the host would resolve it out of ``root`` (the
    jail resolves such a symlink inside it: the host's view says nothing then)."""
    if root is None:
        return os.path.realpath(path)
    top = os.path.realpath(root)
    found = os.path.realpath(os.path.join(top, path.lstrip("/")))
    return found if found == top or found.startswith(top.rstrip("/") + "/") else None


def _refuse_copy_into_itself(source: str, src_root: PathLike | None, untar_dir: str,
                             dst_root: PathLike | None, new_name: str | None) -> None:
    """GNU cp's "cannot copy a directory into itself": the copy would read what it
    writes, and grow for as long as the walk keeps finding it. The copy goes into
    ``untar_dir`` (followed) as ``new_name``, which is made or replaced (a symlink
    there is not followed); None: into ``untar_dir`` itself.

    Both paths are resolved as their jails resolve them (an absolute symlink inside a
    root leads inside it), then compared by inode, as GNU cp does: ``untar_dir``, or
    where it will be made, must not be SRC or below it, whatever the two roots are.
    A guard for a mistake, not the confinement."""
    src_fd = _open_as_jailed(source, src_root, follow=source.endswith(("/", "/.")))
    if src_fd is None:
        return
    try:
        src = os.fstat(src_fd)
    finally:
        os.close(src_fd)
    if not stat.S_ISDIR(src.st_mode):
        return  # a file, or the symlink itself, is copied
    target = untar_dir if new_name is None else posixpath.join(untar_dir, new_name)
    existing, made = untar_dir, False
    while (dst_fd := _open_as_jailed(existing, dst_root, follow=True)) is None:
        parent = _parent(existing)
        if parent is None:
            return  # nothing of it is there, or it cannot be seen: the writer says why
        existing, made = parent, True  # made by the copy, below ``existing``
    try:
        if new_name is not None and not made:
            with contextlib.suppress(OSError):
                there = os.stat(new_name, dir_fd=dst_fd, follow_symlinks=False)
                if (there.st_dev, there.st_ino) == (src.st_dev, src.st_ino):
                    _refuse_into_itself(source, target)
        if _is_below(dst_fd, src):
            _refuse_into_itself(source, target)
    finally:
        os.close(dst_fd)


def _parent(path: str) -> str | None:
    """The directory ``path`` is in, lexically; None for the top (``/``, ``.``): a
    root that cannot be opened (missing, or not searchable) ends the climb there."""
    stripped = path.rstrip("/")
    if not stripped or stripped == ".":
        return None
    return posixpath.dirname(stripped) or "."


def _is_below(fd: int, top: os.stat_result) -> bool:
    """The directory ``fd`` is ``top`` or below it: its ``..`` chain (through mounts,
    as the kernel walks it) meets ``top`` before the host's root."""
    here = os.fstat(fd)
    fd = os.dup(fd)
    try:
        for _ in range(_MAX_DEPTH):
            if (here.st_dev, here.st_ino) == (top.st_dev, top.st_ino):
                return True
            try:
                up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            except OSError:  # not a directory, or no search permission: not known
                return False
            os.close(fd)
            fd = up
            parent = os.fstat(fd)
            if (parent.st_dev, parent.st_ino) == (here.st_dev, here.st_ino):
                return False  # the host's root
            here = parent
        return False
    finally:
        os.close(fd)


#: Directories walked up from DST at most: far deeper than any path can name.
_MAX_DEPTH = 4096


def _refuse_into_itself(source: str, target: str) -> NoReturn:
    raise DestinationError(
        f"cannot copy a directory, {quoted(source)}, into itself ({quoted(target)})", target)
