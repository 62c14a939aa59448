"""What :func:`~chrootarchive.image.unpack_image` reports: its result and its progress."""

from __future__ import annotations

from collections.abc import Callable

from chrootarchive._record import as_dict
from chrootarchive._record import record as dataclass
from chrootarchive.options import UnpackResult

TYPE_CHECKING = False  # no typing, no dataclasses at run time: the start (issue 16)
if TYPE_CHECKING:
    from typing import Any


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
        skipped_xattrs: xattrs not set (see ``UnpackResult.skipped_xattrs``).
    """

    index: int
    digest: str | None
    diff_id: str
    media_type: str
    compression: str
    blob_size: int
    size: int
    entries: int
    skipped_xattrs: int = 0

    def to_json(self) -> dict[str, Any]:
        return as_dict(self)


@dataclass(frozen=True, kw_only=True)
class ImageResult(UnpackResult):
    """What :func:`unpack_image` did: an :class:`~chrootarchive.UnpackResult` over all
    layers (``entries``, ``size`` and ``privileged`` summed; ``confinement`` of the last
    layer), and:

    Attributes:
        format: ``oci`` (an OCI image layout), ``docker-save`` or ``dir``
            (containers/image's ``dir:`` layout).
        manifest_digest: the digest of the image manifest applied (None for
            ``docker save``, whose ``manifest.json`` has none).
        config_digest: the digest of the image config (Docker's image ID).
        ref: the reference that named the image (``org.opencontainers.image.ref.name``,
            a ``RepoTags`` entry...), if any.
        platform: the image's platform, from its config (``linux/amd64``).
        layers: the layers applied, bottom first.
    """

    format: str
    manifest_digest: str | None
    config_digest: str
    ref: str | None
    platform: str
    layers: tuple[LayerResult, ...]

    def to_json(self) -> dict[str, Any]:
        data = as_dict(self)
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
