"""An image from a registry: the plan made from documents fetched over the network
(the same checks as for a layout: :func:`.plan.plan_manifest`), and the layers streamed
from the registry into the one confined job of :func:`.apply.apply_planned_layers`.

This module knows a registry only as the three calls of :class:`Registry` (the client
of :mod:`chrootarchive.registry` is one): the image package stays below the network
code. Everything here runs in the parent; the jailed worker only ever sees tar bytes.

The next layer's download starts while one is applied (:class:`Prefetcher`): when
layer N is opened, a thread opens layer N+1 and reads its first :data:`PREFETCH_BYTES`
into memory, so that the connection's set-up and the first round trips overlap the
application of layer N. Memory stays bounded: the rest of layer N+1 streams as it is
read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from chrootarchive._threads import STEP
from chrootarchive.errors import ChrootArchiveError, ImageError
from chrootarchive.image.apply import (
    _locked_dest,
    apply_planned_layers,
    image_result,
    image_setup,
)
from chrootarchive.image.digests import clip
from chrootarchive.image.documents import (
    MAX_JSON_SIZE,
    Descriptor,
    as_object,
    parse_json,
)
from chrootarchive.image.mediatypes import INDEX_TYPES, MANIFEST_TYPES, SCHEMA1_TYPES
from chrootarchive.image.plan import LayerPlan, Plan, plan_manifest
from chrootarchive.image.results import ImageResult, ProgressCallback
from chrootarchive.image.selection import Selection, resolve_manifest
from chrootarchive.operations import untar as api
from chrootarchive.options import DEFAULT_MAX_LAYERS, Limits, UnpackOptions

if TYPE_CHECKING:
    from chrootarchive.image.layout import Reader

PREFETCH_BYTES = 8 << 20
"""How much of the next layer's blob is read ahead, in memory, while one is applied."""

_PREFETCH_CHUNK = 1 << 20


class Registry(Protocol):
    """What a plan and the layers need from a registry (its client)."""

    def get_manifest(self, reference: str, *, max_size: int = ...
                     ) -> tuple[str, bytes, str]: ...

    def get_blob(self, digest: str, *, max_size: int) -> bytes: ...

    def open_blob(self, digest: str, size: int | None) -> Any: ...


def _document_type(media_type: str, body: bytes, where: str) -> str:
    """The media type of the document a tag names: the registry's Content-Type when it
    is one of an index or a manifest, else the document's own ``mediaType``."""
    known = INDEX_TYPES | MANIFEST_TYPES | SCHEMA1_TYPES
    base = media_type.split(";", 1)[0].strip()
    if base in known:
        return base
    doc = as_object(parse_json(body, "the manifest", where), "a manifest", where)
    own = doc.get("mediaType")
    if isinstance(own, str) and own in known:
        return own
    if doc.get("schemaVersion") == 1:
        raise ImageError("Docker schema 1 manifests are not supported", where)
    if "manifests" in doc:  # an OCI index that names no mediaType
        return "application/vnd.oci.image.index.v1+json"
    if "layers" in doc:
        return "application/vnd.oci.image.manifest.v1+json"
    raise ImageError(f"not an image manifest or index: media type {clip(media_type)}", where)


def remote_plan(registry: Registry, reference: str, name: str, sel: Selection,
                max_layers: int) -> Plan:
    """The plan of the image ``reference`` (a tag or a digest) names in ``registry``:
    the index (platform chosen as for a layout), manifest and config fetched, each
    bounded and checked against its digest; the layer blobs are checked as they stream."""
    media_type, body, digest = registry.get_manifest(reference, max_size=MAX_JSON_SIZE)
    top = Descriptor(_document_type(media_type, body, name), digest, len(body), {}, None)

    def fetch(desc: Descriptor, what: str) -> bytes:
        if desc.digest == top.digest:
            return body
        if desc.media_type in INDEX_TYPES | MANIFEST_TYPES | SCHEMA1_TYPES:
            return registry.get_manifest(desc.digest, max_size=desc.size)[1]
        return registry.get_blob(desc.digest, max_size=desc.size)

    desc = resolve_manifest(fetch, top, sel, ())

    def check_blob(index: int, d: Descriptor) -> tuple[str, int]:
        return d.digest, d.size  # size and digest are checked as the blob streams

    return plan_manifest(fetch, desc, name, sel, max_layers, check_blob, "registry")


class _Prefetched:
    """A layer blob whose first bytes were read ahead: those, then the rest."""

    def __init__(self, head: bytearray, reader: Any) -> None:
        self._head = head
        self._at = 0
        self._reader = reader
        self.size: int = reader.size

    def read(self, n: int = -1) -> bytes:
        if self._at < len(self._head):
            end = len(self._head) if n < 0 else min(self._at + max(n, 1), len(self._head))
            end = min(end, self._at + _PREFETCH_CHUNK)
            data = bytes(self._head[self._at:end])
            self._at = end
            if self._at == len(self._head):
                self._head = bytearray()
                self._at = 0
            return data
        rest: bytes = self._reader.read(n)
        return rest

    def close(self) -> None:
        self._head = bytearray()
        self._at = 0
        self._reader.close()


class Prefetcher:
    """Opens the layers' blobs for :func:`apply_planned_layers`, each as its turn comes,
    and starts reading the next one (at most :data:`PREFETCH_BYTES`) in a thread."""

    def __init__(self, registry: Registry, layers: Sequence[LayerPlan],
                 limit: int = PREFETCH_BYTES) -> None:
        self._registry = registry
        self._layers = list(layers)
        self._limit = limit
        # position -> (set when its thread has ended, what the thread found)
        self._pending: dict[int, tuple[threading.Event, dict[str, Any]]] = {}
        self._closed = False

    def _fetch_head(self, layer: LayerPlan, box: dict[str, Any],
                    ended: threading.Event) -> None:
        try:
            reader = self._registry.open_blob(layer.name, layer.size)
            box["reader"] = reader
            # One buffer: a registry that sends 1-byte chunks makes each read a byte,
            # and 8 MiB of 1-byte objects would take 330 MB.
            head = bytearray()
            while len(head) < self._limit and not self._closed:
                data = reader.read(min(_PREFETCH_CHUNK, self._limit - len(head)))
                if not data:
                    break
                head += data
            box["head"] = head
            if self._closed:  # given up on meanwhile: nobody will read it
                reader.close()
        except BaseException as err:  # raised again where the layer is opened
            box["error"] = err
        finally:
            ended.set()

    def _start(self, position: int) -> None:
        if (self._limit <= 0 or position >= len(self._layers) or position in self._pending
                or self._closed):
            return
        box: dict[str, Any] = {}
        ended = threading.Event()
        thread = threading.Thread(target=self._fetch_head,
                                  args=(self._layers[position], box, ended),
                                  name=f"chrootarchive-prefetch-{position}", daemon=True)
        self._pending[position] = (ended, box)
        thread.start()

    def __call__(self, layer: LayerPlan, label: str) -> Reader:
        position = next(i for i, planned in enumerate(self._layers) if planned is layer)
        pending = self._pending.pop(position, None)
        self._start(position + 1)
        if pending is None:
            reader: Reader = self._registry.open_blob(layer.name, layer.size)
            return reader
        ended, box = pending
        try:
            # Not Thread.join: under 3.11 one cut short by a KeyboardInterrupt marks the
            # thread ended while it reads on; and in steps, for interrupt_main.
            while not ended.wait(STEP):
                pass
        except BaseException:
            self._pending[position] = pending  # close() cuts its read short, closes it
            raise
        error = box.get("error")
        if error is not None:
            if "reader" in box:
                box["reader"].close()
            if isinstance(error, ChrootArchiveError | OSError):
                raise error
            raise ImageError(f"cannot read the blob: {error}", label) from error
        return _Prefetched(box["head"], box["reader"])

    def close(self) -> None:
        """Stop the read-ahead: a read in flight is cut short (a library caller's
        failed pull left its thread waiting on the registry for the read timeout), and
        its reader closed. A thread still opening its blob ends at the client's head
        deadline, and closes the reader then."""
        self._closed = True
        for ended, box in self._pending.values():
            reader = box.get("reader")
            if reader is not None:
                reader.interrupt()
            if ended.wait(timeout=1) and "reader" in box:
                box["reader"].close()
        self._pending.clear()


def unpack_remote(
    registry: Registry,
    reference: str,
    name: str,
    dest: str | os.PathLike[str],
    options: UnpackOptions | None = None,
    *,
    platform: str | None = None,
    filter: str | None = None,
    excludes: Iterable[str] | None = None,
    atomic: bool | None = None,
    confine: str | None = None,
    limits: Limits | None = None,
    progress: ProgressCallback | None = None,
    on_entry: Callable[[str], None] | None = None,
    max_layers: int = DEFAULT_MAX_LAYERS,
    prefetch: int = PREFETCH_BYTES,
) -> ImageResult:
    """:func:`chrootarchive.pull`'s work once the registry's client is made: plan (all
    documents checked before ``dest`` is touched), then the layers streamed into one
    confined job. ``reference`` is the tag or digest, ``name`` the full reference."""
    options = api.with_changes(options, filter=filter, excludes=excludes, atomic=atomic,
                               confine=confine, limits=limits)
    sel, deadline = image_setup("pull", options, platform, max_layers)
    plan = remote_plan(registry, reference, name, sel, max_layers)
    opener = Prefetcher(registry, plan.layers, prefetch)
    try:
        with _locked_dest(os.fspath(dest), options) as target:
            applied = apply_planned_layers(
                plan.layers, opener, target, options, deadline=deadline, progress=progress,
                on_entry=on_entry, warnings=plan.warnings)
    finally:
        opener.close()
    return image_result(plan, applied)
