"""chrootarchive: unpack untrusted tar archives inside a kernel jail.

The public API is re-exported here; the modules behind it are private. Every
operation confines the writing process to the destination with the kernel (a mount
namespace and ``pivot_root``, or ``chroot``), decompresses outside the jail, and raises
a :class:`ChrootArchiveError` subclass on failure.
"""

from __future__ import annotations

from chrootarchive.api import (
    apply_layer,
    apply_uncompressed_layer,
    untar,
    untar_uncompressed,
    untar_with_root,
)
from chrootarchive.copy import (
    TarStream,
    copy_file_with_tar,
    copy_path,
    copy_with_tar,
    tar,
    untar_path,
)
from chrootarchive.errors import (
    ArchiveError,
    BreakoutError,
    ChrootArchiveError,
    CompressionError,
    ConfinementError,
    DestinationError,
    DigestMismatchError,
    ImageError,
    InternalError,
    LimitExceededError,
    MalformedArchiveError,
    MechanismUnavailableError,
    SourceError,
    WorkerError,
)
from chrootarchive.image import ImageResult, LayerProgress, LayerResult, unpack_image
from chrootarchive.options import (
    IDMap,
    Limits,
    PackOptions,
    PackResult,
    UnpackOptions,
    UnpackResult,
)

__all__ = [
    "ArchiveError",
    "BreakoutError",
    "ChrootArchiveError",
    "CompressionError",
    "ConfinementError",
    "DestinationError",
    "DigestMismatchError",
    "IDMap",
    "ImageError",
    "ImageResult",
    "InternalError",
    "LayerProgress",
    "LayerResult",
    "LimitExceededError",
    "Limits",
    "MalformedArchiveError",
    "MechanismUnavailableError",
    "PackOptions",
    "PackResult",
    "SourceError",
    "TarStream",
    "UnpackOptions",
    "UnpackResult",
    "WorkerError",
    "apply_layer",
    "apply_uncompressed_layer",
    "copy_file_with_tar",
    "copy_path",
    "copy_with_tar",
    "tar",
    "unpack_image",
    "untar",
    "untar_path",
    "untar_uncompressed",
    "untar_with_root",
]
