"""The public operations, implemented: pin the destination, decompress, run the worker.

The package ``__init__`` re-exports these; ``image`` and ``copy`` build on them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from chrootarchive import _fdio
from chrootarchive._record import replace
from chrootarchive.contract import JobReply, JobRequest, limits_after
from chrootarchive.errors import (
    ArchiveError,
    ChrootArchiveError,
    DestinationError,
    SourceError,
)
from chrootarchive.operations import compression, destination
from chrootarchive.operations.source import (
    Source,
    check_source,
    name_archive,
    open_source,
    plain_regular_fd,
)
from chrootarchive.options import Limits, UnpackOptions, UnpackResult, given, unpack_spec
from chrootarchive.runner import ladder

_HELPER_MIN_INPUT = 4 << 20  # bytes of plain tar from which the worker may fork a helper
_HELPER_MIN_COMPRESSED = 1 << 20  # the same, compressed

__all__ = [
    "LayerStack",
    "Progress",
    "Source",
    "apply_layer",
    "apply_layers",
    "apply_uncompressed_layer",
    "cumulative",
    "layer_stack",
    "unpack_stream",
    "untar",
    "untar_uncompressed",
    "untar_with_root",
    "with_changes",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from chrootarchive.runner.stack import Stack
Progress = Callable[[int], None]


def untar(
    source: Source,
    dest: str | os.PathLike[str],
    options: UnpackOptions | None = None,
    *,
    filter: str | None = None,  # tarfile's name (PEP 706)
    excludes: Iterable[str] | None = None,
    atomic: bool | None = None,
    confine: str | None = None,
    limits: Limits | None = None,
    root: str | os.PathLike[str] | None = None,
    detect_compression: bool = True,
    progress: Progress | None = None,
    on_entry: Callable[[str], None] | None = None,
) -> UnpackResult:
    """Unpack a tar archive (plain, gzip, bzip2, xz or zstd) into ``dest``, confined.

    Args:
        source: a path, ``"-"`` for standard input, a binary file object, or the
            archive itself as ``bytes``, ``bytearray`` or ``memoryview``.
        dest: the destination directory; created (0755) if missing.
        options: how to unpack (owners, excludes, confinement...); the keyword
            arguments below change the most common of them, as a shortcut.
        filter: PEP 706's name, as :mod:`tarfile`'s ``filter=``: ``fully_trusted``
            (the default: a root filesystem), ``tar`` or ``data`` (for uploads).
        excludes, atomic, confine, limits: the :class:`UnpackOptions` fields.
        root: jail at ``root`` and resolve ``dest`` inside it (``docker cp`` into a
            container; see :func:`untar_with_root`).
        detect_compression: False for a stream known to be plain tar.
        progress: called with the number of source bytes read so far (cumulative,
            like tqdm's ``n``), now and then, from a thread of the library's.
        on_entry: called with each entry's name once it is unpacked (``tar -v``),
            from a thread of the library's; excluded and dropped entries are not.
            The name is the archive's, as GNU tar lists it (before
            ``strip_components``).

    Returns:
        What was unpacked.

    Raises:
        ArchiveError: the archive is malformed or hostile (a BreakoutError for names
            that leave the destination).
        SourceError: the archive cannot be read (also an OSError:
            ``FileNotFoundError`` for a missing one).
        DestinationError: the destination cannot be written (also an OSError).
        ConfinementError: no confinement mechanism is available.
        ValueError: arguments that do not go together (``atomic`` with ``root``), as
            for an option's value out of its range.
    """
    chosen = with_changes(options, filter=filter, excludes=excludes, atomic=atomic,
                          confine=confine, limits=limits)
    return _unpack(source, dest, root, chosen, compressed=detect_compression,
                   progress=cumulative(progress), on_entry=on_entry)


def apply_layer(
    source: Source,
    dest: str | os.PathLike[str],
    options: UnpackOptions | None = None,
    *,
    filter: str | None = None,  # tarfile's name (PEP 706)
    excludes: Iterable[str] | None = None,
    atomic: bool | None = None,
    confine: str | None = None,
    limits: Limits | None = None,
    detect_compression: bool = True,
    progress: Progress | None = None,
    on_entry: Callable[[str], None] | None = None,
) -> UnpackResult:
    """Apply a container image layer (compression detected) onto ``dest``, confined.

    :func:`untar` with a layer's whiteouts: ``.wh.NAME`` removes what lower layers
    left, ``.wh..wh..opq`` empties its directory of it; with
    ``options.whiteout_format == "overlay"`` they become overlay whiteouts instead.
    ``result.size`` is the applied size Docker's ``ApplyLayer`` returns.
    """
    chosen = with_changes(options, filter=filter, excludes=excludes, atomic=atomic,
                          confine=confine, limits=limits)
    return _unpack(source, dest, None, chosen, compressed=detect_compression,
                   progress=cumulative(progress), layer=True, on_entry=on_entry)


def apply_layers(
    sources: Iterable[Source],
    dest: str | os.PathLike[str],
    options: UnpackOptions | None = None,
    *,
    filter: str | None = None,  # tarfile's name (PEP 706)
    excludes: Iterable[str] | None = None,
    atomic: bool | None = None,
    confine: str | None = None,
    limits: Limits | None = None,
    detect_compression: bool = True,
    progress: Progress | None = None,
    on_entry: Callable[[str], None] | None = None,
) -> list[UnpackResult]:
    """Apply several layers in order onto ``dest``, all of them by one confined job.

    What :func:`apply_layer` does for each in turn, with one worker and one jail for
    them all (one process start, not one per layer): each layer's whiteouts apply to
    the layers before it. The limits hold for all the layers together; ``atomic``
    makes the whole stack all-or-nothing. An error names the layer (``layer N
    (SOURCE)``, N counted from 0) and stops before the next one.

    Returns:
        Each layer's result, in order.
    """
    chosen = with_changes(options, filter=filter, excludes=excludes, atomic=atomic,
                          confine=confine, limits=limits)
    layers = list(sources)
    if not layers:
        raise ValueError("apply_layers needs at least one layer")
    for layer in layers:
        check_source(layer)
    if sum(1 for s in layers if isinstance(s, str) and s == "-") > 1:
        raise ValueError("standard input ('-') can be only one of the layers")
    ladder.check(chosen.confine)  # fail before creating anything
    if chosen.atomic:
        from chrootarchive.operations import staging

        with staging.atomic_destination(os.fspath(dest)) as stage:
            return _apply_stack(layers, stage, replace(chosen, atomic=False),
                                compressed=detect_compression, progress=cumulative(progress),
                                on_entry=on_entry)
    created = destination.missing_dirs(os.fspath(dest))
    try:
        fd, _rel = destination.pin_destination(os.fspath(dest), None, lock=True,
                                               owner=destination.root_owner(chosen))
        try:
            return _apply_stack(layers, os.fspath(dest), chosen,
                                compressed=detect_compression, progress=cumulative(progress),
                                on_entry=on_entry)
        finally:
            _fdio.close(fd)
    except ChrootArchiveError as err:
        destination.undo_created(created, err)
        raise


def _apply_stack(layers: list[Source], dest: str, options: UnpackOptions, *,
                 compressed: bool, progress: Progress | None,
                 on_entry: Callable[[str], None] | None) -> list[UnpackResult]:
    """The layers through one :func:`layer_stack`; the caller holds ``dest``'s lock."""
    results = []
    with layer_stack(dest, options, on_entry=on_entry) as stack:
        for index, source in enumerate(layers):
            label = f"layer {index} ({_display(source)})"
            try:
                with open_source(source) as raw:
                    counted: compression.Readable = (_Counting(raw, progress) if progress
                                                     else raw)
                    _kind, chunks = compression.decompressed_chunks(
                        counted, compressed=compressed,
                        max_memory=options.limits.max_memory)
                    results.append(stack.apply(chunks))
            except ArchiveError as err:
                err.entry = f"{label}: {err.entry}" if err.entry else label
                raise
            except SourceError as err:
                if err.entry is None:
                    err.entry = label
                raise
        used = stack.finish()
    # Each layer's reply came before the job's last one, which names the mechanism.
    return [replace(result, confinement=used) for result in results]


def _display(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # escaped where the error is printed
    return type(source).__name__


# Docker's names (pkg/chrootarchive), thin aliases of the two calls above.


def untar_uncompressed(
    source: Source, dest: str | os.PathLike[str], options: UnpackOptions | None = None, *,
    progress: Progress | None = None,
) -> UnpackResult:
    """Docker's ``UntarUncompressed``: :func:`untar` with ``detect_compression=False``."""
    return untar(source, dest, options, detect_compression=False, progress=progress)


def untar_with_root(
    source: Source, dest: str | os.PathLike[str], root: str | os.PathLike[str],
    options: UnpackOptions | None = None, *, progress: Progress | None = None,
) -> UnpackResult:
    """Docker's ``UntarWithRoot``: :func:`untar` with ``root``.

    ``dest`` is resolved inside the jail, so symlinks in ``root`` cannot lead outside
    it; when it does not exist it is created inside the jail, never from outside
    (CVE-2021-41089). A relative ``dest`` is taken relative to ``root``; an absolute one
    either lies below ``root`` on the host or is taken as a path inside ``root``.
    """
    return untar(source, dest, options, root=root, progress=progress)


def apply_uncompressed_layer(
    source: Source, dest: str | os.PathLike[str], options: UnpackOptions | None = None, *,
    progress: Progress | None = None,
) -> UnpackResult:
    """Docker's ``ApplyUncompressedLayer``: :func:`apply_layer` without detection."""
    return apply_layer(source, dest, options, detect_compression=False, progress=progress)


def with_changes(options: UnpackOptions | None, **changes: Any) -> UnpackOptions:
    """``options`` (or the defaults) with the keyword shortcuts that were given."""
    # untar(src, dest, "data"), tarfile's filter where the options go: say what to pass
    base = given(options, UnpackOptions, hint="; the keywords (filter=, excludes=, atomic=, "
                 "limits=...) change its common fields")
    chosen = {name: value for name, value in changes.items() if value is not None}
    return replace(base, **chosen) if chosen else base


def cumulative(progress: Progress | None) -> Progress | None:
    """The caller's callback gets totals (bytes so far); the pumps report steps."""
    if progress is None:
        return None
    done = [0]

    def report(step: int) -> None:
        done[0] += step
        progress(done[0])

    return report


# -- implementation --------------------------------------------------------------------


def _unpack(
    source: Source,
    dest: str | os.PathLike[str],
    root: str | os.PathLike[str] | None,
    options: UnpackOptions | None,
    *,
    compressed: bool,
    progress: Progress | None,
    layer: bool = False,
    lock: bool = True,
    on_entry: Callable[[str], None] | None = None,
) -> UnpackResult:
    options = options or UnpackOptions()
    if options.atomic and root is not None:
        # The caller's mistake, not the destination's: as any invalid combination.
        raise ValueError("atomic=True is not available with root= (the destination is "
                         "resolved inside the root's jail)")
    check_source(source)
    ladder.check(options.confine)  # fail before creating anything
    if options.atomic:
        from chrootarchive.operations import staging

        with staging.atomic_destination(os.fspath(dest)) as stage:
            # The staging directory is private (and flocked as such): no second lock.
            return _unpack(source, stage, None, replace(options, atomic=False),
                           compressed=compressed, progress=progress, layer=layer,
                           lock=False, on_entry=on_entry)
    created = destination.missing_dirs(os.fspath(dest)) if root is None else []
    try:
        with open_source(source) as raw:
            root_fd, rel_dest = destination.pin_destination(
                os.fspath(dest), root, lock=lock, owner=destination.root_owner(options))
            try:
                direct_fd = plain_regular_fd(raw, compressed)
                return _name_destination(
                    lambda: _unpack_data(raw, direct_fd, root_fd, rel_dest, options,
                                         compressed=compressed, progress=progress,
                                         layer=layer, on_entry=on_entry),
                    os.fspath(dest),
                )
            finally:
                _fdio.close(root_fd)
    except ChrootArchiveError as err:
        name_archive(err, source)
        destination.undo_created(created, err)
        raise


def _name_destination(run: Callable[[], UnpackResult], dest: str) -> UnpackResult:
    """A destination error that names no entry is about the destination: say which."""
    try:
        return run()
    except DestinationError as err:
        if err.entry:
            raise
        raise DestinationError(err.message, dest, err.errno) from err


def _unpack_data(
    raw: BinaryIO,
    direct_fd: int | None,
    root_fd: int,
    rel_dest: str,
    options: UnpackOptions,
    *,
    compressed: bool,
    progress: Progress | None,
    layer: bool,
    on_entry: Callable[[str], None] | None,
) -> UnpackResult:
    if direct_fd is not None:
        data: int | Iterator[bytes] = direct_fd
    else:
        counted: compression.Readable = _Counting(raw, progress) if progress else raw
        # Decompressed by the pump thread as it feeds the job (a read-ahead thread of its
        # own gained nothing measurable: docs/performance.md).
        _kind, data = compression.decompressed_chunks(
            counted, compressed=compressed, max_memory=options.limits.max_memory)
    helper = _helper_pays(raw, direct_fd)
    # A plain file is read by the job itself: its progress is the file's shared offset
    # (the pump watches it); otherwise the source is counted as it is read.
    return _run_unpack(root_fd, rel_dest, options, data, layer=layer, helper=helper,
                       offset_progress=progress if direct_fd is not None else None,
                       on_entry=on_entry)


def _run_unpack(
    root_fd: int,
    rel_dest: str,
    options: UnpackOptions,
    data: int | Iterable[bytes],
    *,
    layer: bool,
    helper: bool = False,
    offset_progress: Progress | None = None,
    on_entry: Callable[[str], None] | None = None,
) -> UnpackResult:
    """Unpack with the first mechanism of the ladder that the kernel accepts."""
    request = JobRequest.make(
        "unpack", dest=rel_dest, dest_owner=destination.root_owner(options), layer=layer,
        helper=helper, unpack=unpack_spec(options, verbose=on_entry is not None),
    )
    reply = ladder.run(root_fd, request, data, options.confine,
                       offset_progress=offset_progress, names=on_entry)
    return _result(reply)


def _result(reply: JobReply) -> UnpackResult:
    privileged = reply.details.get("privileged") or {}
    skipped = reply.details.get("skipped_xattrs", 0)
    return UnpackResult(entries=reply.entries, size=reply.size,
                        confinement=reply.confinement, warnings=reply.warnings,
                        privileged={str(k): int(v) for k, v in privileged.items()},
                        skipped_xattrs=skipped if isinstance(skipped, int) else 0)


class LayerStack:
    """Layers applied one after another by one job (:func:`layer_stack`)."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self.confinement = ""

    def apply(self, chunks: Iterable[bytes]) -> UnpackResult:
        """Apply one layer's uncompressed tar stream; what it did. An exception raised
        by ``chunks`` (a digest found wrong) stops the stack before any further layer
        and propagates."""
        return _result(self._stack.apply(chunks))

    def finish(self) -> str:
        """No more layers: wait for the job; the mechanism it used."""
        self.confinement = self._stack.finish().confinement
        return self.confinement


@contextlib.contextmanager
def layer_stack(
    dest: str | os.PathLike[str],
    options: UnpackOptions | None = None,
    *,
    on_entry: Callable[[str], None] | None = None,
    used_bytes: int = 0,
    deadline: float | None = None,
    digested: bool = False,
) -> Iterator[LayerStack]:
    """One confined job for several layers (an image's): one worker, one jail.

    The caller holds the destination's lock (``image`` holds it across all layers) and
    calls :meth:`LayerStack.apply` for each layer, then :meth:`LayerStack.finish`.
    ``options.limits`` hold for all the layers together, with ``used_bytes`` (a spool)
    already used and the time until ``deadline`` (the ``time.monotonic()`` value at
    which ``timeout`` runs out). Leaving the block early (an error, a digest mismatch)
    stops the job before it applies anything more. ``digested``: the caller checks each
    layer's stream against its DiffID (:data:`JobRequest.digested`).
    """
    options = options or UnpackOptions()
    ladder.check(options.confine)  # fail before creating anything
    spec = unpack_spec(options, verbose=on_entry is not None)
    spec.limits = limits_after(spec.limits, used_bytes, 0, deadline)
    root_fd, rel_dest = destination.pin_destination(os.fspath(dest), None, lock=False,
                                                    owner=destination.root_owner(options))
    try:
        request = JobRequest.make(
            "unpack", dest=rel_dest, dest_owner=destination.root_owner(options), layer=True,
            stack=True, digested=digested, unpack=spec,
        )
        from chrootarchive.runner import stack as runner_stack

        stack = runner_stack.start(root_fd, request, options.confine, names=on_entry)
    finally:
        _fdio.close(root_fd)  # the job has its own (passed, or duplicated)
    try:
        yield LayerStack(stack)
    finally:
        stack.close()


def unpack_stream(
    chunks: Iterable[bytes],
    dest: str | os.PathLike[str],
    options: UnpackOptions | None = None,
    *,
    layer: bool = False,
    lock: bool = True,
    on_entry: Callable[[str], None] | None = None,
) -> UnpackResult:
    """Unpack an already-decompressed tar stream given as chunks (for ``image``).

    The caller may hash the chunks on their way (DiffIDs); an exception raised by the
    iterator stops the worker and propagates. ``lock=False``: the caller already holds
    the destination's lock (``image`` holds it across all layers).
    """
    options = options or UnpackOptions()
    ladder.check(options.confine)  # fail before creating anything
    root_fd, rel_dest = destination.pin_destination(os.fspath(dest), None, lock=lock,
                                        owner=destination.root_owner(options))
    try:
        return _run_unpack(root_fd, rel_dest, options, chunks, layer=layer,
                           on_entry=on_entry)
    finally:
        _fdio.close(root_fd)


def _helper_pays(raw: BinaryIO, direct_fd: int | None) -> bool:
    """Whether the worker may fork a helper that creates and writes its small files
    (see ``engine.finisher``): for an input large enough to pay for the fork. Also
    while the parent decompresses: the worker parsing, the helper creating files and
    the parent decompressing share two cores better than two of them do (measured:
    docs/performance.md). An input of unknown size may (the worker forks it only
    after its first small files)."""
    try:
        st = os.fstat(raw.fileno() if direct_fd is None else direct_fd)
    except (OSError, AttributeError, ValueError):
        return True
    if not stat.S_ISREG(st.st_mode):
        return True
    return st.st_size >= (_HELPER_MIN_INPUT if direct_fd is not None else _HELPER_MIN_COMPRESSED)


class _Counting:
    """Reports how many bytes were read from the source."""

    def __init__(self, raw: BinaryIO, progress: Progress) -> None:
        self._raw = raw
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._progress(len(data))
        return data

    def direct_readinto(self) -> Callable[[memoryview | bytearray], int] | None:
        """The source's readinto, counted (``compression.direct_readinto``)."""
        readinto = compression.direct_readinto(self._raw)
        if readinto is None:
            return None

        def counted(buffer: memoryview | bytearray) -> int:
            done = readinto(buffer)
            if done:
                self._progress(done)
            return done

        return counted
