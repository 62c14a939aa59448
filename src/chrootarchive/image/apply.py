"""Applying the planned layers, all of them by one confined job, and :func:`unpack_image`.

A layer blob's digest and its DiffID are known only at the end of its stream: they are
checked as the job reads it, and a mismatch says the layer was (partly) applied; the job
is then stopped before the next layer.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence

from chrootarchive import _fdio
from chrootarchive._record import replace
from chrootarchive.contract import MAX_WARNINGS, timeout_between_layers
from chrootarchive.errors import (
    ArchiveError,
    ChrootArchiveError,
    CompressionError,
    DigestMismatchError,
    ImageError,
    from_os_error,
)
from chrootarchive.image.digests import Hasher, HashThread
from chrootarchive.image.layout import open_layout
from chrootarchive.image.plan import LayerPlan, Plan, make_plan
from chrootarchive.image.platforms import default_platform, platform_from_text
from chrootarchive.image.results import (
    ImageResult,
    LayerProgress,
    LayerResult,
    ProgressCallback,
)
from chrootarchive.image.selection import Selection
from chrootarchive.operations import compression, destination, staging
from chrootarchive.operations import untar as api
from chrootarchive.options import DEFAULT_MAX_LAYERS, Limits, UnpackOptions, UnpackResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chrootarchive.image.layout import Reader

_CHUNK = compression.CHUNK
_HASH_THREAD_MIN = 4 << 20  # bytes of blob: a smaller one is hashed where it is read

_APPLIED = "(the layer was applied, at least in part, before this could be known)"

#: A blob may be read this far ahead of what it decompressed to (twice that, plus this):
#: no compressor makes more than a few bytes in a thousand of overhead, but a registry
#: can declare a blob of 2**62 bytes and send gzip members or zstd frames that hold
#: nothing, or send more after an error, and the stream would be read for days.
BLOB_SLACK = 16 << 20


class _BlobStream:
    """Reads a layer blob, counting and hashing; checks size and digest at its end."""

    def __init__(self, reader: Reader, layer: LayerPlan, label: str,
                 progress: Callable[[int], None] | None,
                 hashing: HashThread | None = None) -> None:
        self._reader = reader
        self._layer = layer
        self._label = label
        self._hasher = Hasher(layer.digest, hashing) if layer.digest else None
        self._progress = progress
        self.count = 0
        self.produced = 0  # the bytes its decompressed stream has yielded so far
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
            raise from_os_error(
                err, self._label, kind=ImageError, action="cannot read the blob") from err
        except ChrootArchiveError as err:
            # The registry's (stalled, out of --timeout): the blob's end, not a short
            # blob, when finish() is asked after it.
            self._fail(err)
        if not data:
            self._end()
            return b""
        self.count += len(data)
        if expected is not None and self.count > expected:
            self._fail(DigestMismatchError(
                f"size mismatch: declared {expected} bytes, the blob is longer {_APPLIED}",
                self._label))
        if self.count > 2 * self.produced + BLOB_SLACK:
            self._fail(ImageError(
                f"{self.count:,} bytes of the blob read but only {self.produced:,} bytes "
                f"of layer data: not a layer's compressed tar", self._label))
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


def _layer_chunks(blob: _BlobStream, layer: LayerPlan, label: str, kind_seen: list[str],
                  max_memory: int | None, hashing: HashThread | None = None,
                  ) -> Generator[bytes, None, None]:
    """The layer's uncompressed tar stream, hashed on its way for the DiffID."""
    declared = layer.compression
    kind, chunks = compression.decompressed_chunks(blob, compressed=declared != "none",
                                                   max_memory=max_memory)
    kind_seen.append(kind)
    if declared not in ("none", "auto") and kind != declared:
        actual = "not compressed" if kind == "none" else kind
        raise ImageError(f"the media type {layer.media_type} says {declared} but the data "
                         f"is {actual}", label)
    diff = Hasher(layer.diff_id, hashing)
    try:
        for chunk in chunks:
            blob.produced += len(chunk)
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


def _layer_label(layer: LayerPlan) -> str:
    return f"layer {layer.index} ({layer.digest or layer.name})"


#: Opens a layer's blob, lazily, as its turn comes (a file of the layout, or a stream
#: from a registry): ``open_blob(layer, label)``.
BlobOpener = Callable[[LayerPlan, str], "Reader"]


def _apply_layer(stack: api.LayerStack, open_blob: BlobOpener, layer: LayerPlan,
                 options: UnpackOptions, count: int, progress: ProgressCallback | None,
                 ) -> tuple[UnpackResult, str]:
    """Apply one layer; return the job's result for it and the compression met."""
    label = _layer_label(layer)
    report: Callable[[int], None] | None = None
    if progress is not None:
        cb = progress
        digest = layer.digest or layer.diff_id

        def report(done: int) -> None:
            cb(LayerProgress(layer.index, count, digest, layer.blob_size, done))

        report(0)
    # Both digests in a thread of their own, but for a small blob (a thread's start
    # costs more than hashing it).
    hashing = (HashThread() if layer.blob_size is None or layer.blob_size >= _HASH_THREAD_MIN
               else None)
    try:
        reader = open_blob(layer, label)
    except BaseException:
        if hashing is not None:
            hashing.close()
        raise
    blob = _BlobStream(reader, layer, label, report, hashing)
    kind_seen: list[str] = []
    chunks = _layer_chunks(blob, layer, label, kind_seen, options.limits.max_memory,
                           hashing)
    try:
        result = stack.apply(chunks)
        for _ in chunks:  # the job drains its input; make sure every check ran
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
        try:
            chunks.close()
        except ValueError:
            # "generator already executing": the feeding thread is still in it (its
            # source stalled after the job ended). It stops on its own; its reader is
            # left to it (closed under a read, the number could be reused under it).
            pass
        else:
            reader.close()
        if hashing is not None:
            hashing.close()
    if progress is not None:
        progress(LayerProgress(layer.index, count, layer.digest or layer.diff_id,
                               layer.blob_size, blob.count, finished=True))
    return result, kind_seen[0] if kind_seen else layer.compression


class Applied:
    """What :func:`apply_planned_layers` did: the layers' results and the totals."""

    def __init__(self) -> None:
        self.layers: list[LayerResult] = []
        self.size = 0
        self.entries = 0
        self.confinement = ""
        self.warnings: list[str] = []
        self.privileged: dict[str, int] = {}


def apply_planned_layers(layers: Sequence[LayerPlan], open_blob: BlobOpener, target: str,
                         options: UnpackOptions, *, used_bytes: int = 0,
                         deadline: float | None = None,
                         progress: ProgressCallback | None = None,
                         on_entry: Callable[[str], None] | None = None,
                         warnings: Sequence[str] = ()) -> Applied:
    """Apply ``layers`` in order onto ``target`` by one confined job (one worker, one
    jail); the caller holds ``target``'s lock. Each layer's blob is opened as its turn
    comes, read and hashed (digest, DiffID) as it is fed; a mismatch stops the job
    before the next layer. ``used_bytes`` (a spool, say) counts against ``max_bytes``;
    the limits hold for all the layers together, until ``deadline``."""
    applied = Applied()
    applied.warnings = list(warnings)
    with api.layer_stack(target, replace(options, atomic=False), on_entry=on_entry,
                         used_bytes=used_bytes, deadline=deadline, digested=True) as stack:
        if not layers:
            # Nothing to apply, but the destination is made as a layer would make it.
            stack.apply([bytes(1024)])
        for layer in layers:
            if deadline is not None and time.monotonic() >= deadline:
                raise timeout_between_layers(options.limits.timeout or 0.0)
            result, kind = _apply_layer(stack, open_blob, layer, options, len(layers),
                                        progress)
            applied.size += result.size
            applied.entries += result.entries
            for what, count in result.privileged.items():
                applied.privileged[what] = applied.privileged.get(what, 0) + count
            label = _layer_label(layer)
            for warning in result.warnings:
                if len(applied.warnings) < MAX_WARNINGS:
                    applied.warnings.append(f"{label}: {warning}")
            applied.layers.append(LayerResult(
                index=layer.index, digest=layer.digest, diff_id=layer.diff_id,
                media_type=layer.media_type, compression=kind,
                blob_size=layer.blob_size, size=result.size, entries=result.entries,
                skipped_xattrs=result.skipped_xattrs,
            ))
        applied.confinement = stack.finish()
    return applied


@contextlib.contextmanager
def _locked_dest(dest: str, options: UnpackOptions) -> Iterator[str]:
    """Create ``dest`` if missing and hold its lock while the layers are applied, so
    that two unpacks into the same destination do not interleave their layers."""
    if options.atomic:
        with staging.atomic_destination(dest) as stage:
            yield stage
        return
    fd, _rel = destination.pin_destination(dest, None, lock=True,
                                           owner=destination.root_owner(options))
    try:
        yield dest
    finally:
        _fdio.close(fd)


def unpack_image(
    image: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    options: UnpackOptions | None = None,
    *,
    ref: str | None = None,
    platform: str | None = None,
    filter: str | None = None,  # tarfile's name (PEP 706)
    excludes: Iterable[str] | None = None,
    atomic: bool | None = None,
    confine: str | None = None,
    limits: Limits | None = None,
    progress: ProgressCallback | None = None,
    on_entry: Callable[[str], None] | None = None,
    max_layers: int = DEFAULT_MAX_LAYERS,
) -> ImageResult:
    """Unpack a container image's root filesystem into ``dest``, every layer confined.

    Args:
        image: an OCI image layout (a directory with ``oci-layout``, ``index.json`` and
            ``blobs/``, or a tar of one), or a ``docker save`` archive (``manifest.json``;
            the classic layout with ``<id>/layer.tar`` and the newer one that embeds an
            OCI layout), as a tar file (compressed or not; ``-`` for standard input) or
            a directory; or containers/image's ``dir:`` layout (one image manifest or
            index as ``manifest.json``, its blobs beside it: ``skopeo copy dir:``),
            which has no names (``ref`` may only be the digest of its manifest.json).
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
        filter, excludes, atomic, confine, limits: shortcuts for those fields of
            ``options``, as for :func:`chrootarchive.untar` (``filter``: PEP 706's
            name; ``fully_trusted``, the default, is right for a root filesystem).
        progress: called with a :class:`LayerProgress` as each layer starts, as its
            blob is read, and when it is applied.
        on_entry: called with each entry's name once it is unpacked, layer after
            layer (``tar -v``).
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
    options = api.with_changes(options, filter=filter, excludes=excludes, atomic=atomic,
                               confine=confine, limits=limits)
    sel, deadline = image_setup("unpack_image", options, platform, max_layers)
    image_path = os.fspath(image)
    with open_layout(image_path, os.fspath(dest), options.limits) as layout:
        plan = make_plan(layout, ref, sel, max_layers)
        # A compressed image archive: the chosen layers are spooled now (their sizes
        # checked first), beside the destination; the spool counts against max_bytes.
        layout.fetch([layer.name for layer in plan.layers])
        spooled = layout.spooled
        with _locked_dest(os.fspath(dest), options) as target:
            applied = apply_planned_layers(
                plan.layers, lambda layer, label: layout.open(layer.name, label), target,
                options, used_bytes=spooled, deadline=deadline, progress=progress,
                on_entry=on_entry, warnings=plan.warnings)
    return image_result(plan, applied)


def image_setup(what: str, options: UnpackOptions, platform: str | None,
                max_layers: int) -> tuple[Selection, float | None]:
    """What an image unpack (local or pulled) checks and derives from its arguments
    first: the platform to choose and the deadline of the whole image."""
    if options.whiteout_format != "aufs":
        raise ValueError(f"{what} applies whiteouts: whiteout_format must be 'aufs'")
    if max_layers < 0:
        raise ValueError("max_layers must be >= 0")
    want = platform_from_text(platform if platform is not None else default_platform())
    timeout = options.limits.timeout
    deadline = time.monotonic() + timeout if timeout is not None else None
    return Selection(want, platform is not None, []), deadline


def image_result(plan: Plan, applied: Applied) -> ImageResult:
    """The result of an image unpack: the plan's documents and what was applied."""
    return ImageResult(
        format=plan.format, manifest_digest=plan.manifest_digest,
        config_digest=plan.config_digest, ref=plan.ref, platform=plan.platform,
        layers=tuple(applied.layers), size=applied.size, entries=applied.entries,
        confinement=applied.confinement, warnings=tuple(applied.warnings),
        privileged=applied.privileged,
    )
