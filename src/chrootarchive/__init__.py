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
from chrootarchive.errors import (
    ArchiveError,
    BreakoutError,
    ChrootArchiveError,
    CompressionError,
    ConfinementError,
    DestinationError,
    ImageError,
    InternalError,
    LimitExceededError,
    MalformedArchiveError,
    MechanismUnavailableError,
    WorkerError,
)
from chrootarchive.options import IDMap, Limits, UnpackOptions, UnpackResult

__all__ = [
    "ArchiveError",
    "BreakoutError",
    "ChrootArchiveError",
    "CompressionError",
    "ConfinementError",
    "DestinationError",
    "IDMap",
    "ImageError",
    "InternalError",
    "LimitExceededError",
    "Limits",
    "MalformedArchiveError",
    "MechanismUnavailableError",
    "UnpackOptions",
    "UnpackResult",
    "WorkerError",
    "apply_layer",
    "apply_uncompressed_layer",
    "untar",
    "untar_uncompressed",
    "untar_with_root",
]
