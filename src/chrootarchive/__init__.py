"""chrootarchive: unpack untrusted tar archives inside a kernel jail.

The public API is re-exported here; the modules behind it are private. Every
operation confines the writing process to the destination with the kernel (a mount
namespace and ``pivot_root``, or ``chroot``), decompresses outside the jail, and raises
a :class:`ChrootArchiveError` subclass on failure.
"""

from __future__ import annotations

import sys

# Not ``typing.TYPE_CHECKING``: the confined worker imports this package, and importing
# ``typing`` costs milliseconds of its start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
    from chrootarchive.standby import set_standby

# Names are imported when first used (PEP 562): the confined worker imports this
# package too, and must not pay for (or load) the parts it never uses.
_EXPORTS = {
    "ArchiveError": "chrootarchive.errors",
    "BreakoutError": "chrootarchive.errors",
    "ChrootArchiveError": "chrootarchive.errors",
    "CompressionError": "chrootarchive.errors",
    "ConfinementError": "chrootarchive.errors",
    "DestinationError": "chrootarchive.errors",
    "DigestMismatchError": "chrootarchive.errors",
    "IDMap": "chrootarchive.options",
    "ImageError": "chrootarchive.errors",
    "ImageResult": "chrootarchive.image",
    "InternalError": "chrootarchive.errors",
    "LayerProgress": "chrootarchive.image",
    "LayerResult": "chrootarchive.image",
    "LimitExceededError": "chrootarchive.errors",
    "Limits": "chrootarchive.options",
    "MalformedArchiveError": "chrootarchive.errors",
    "MechanismUnavailableError": "chrootarchive.errors",
    "PackOptions": "chrootarchive.options",
    "PackResult": "chrootarchive.options",
    "SourceError": "chrootarchive.errors",
    "TarStream": "chrootarchive.copy",
    "UnpackOptions": "chrootarchive.options",
    "UnpackResult": "chrootarchive.options",
    "WorkerError": "chrootarchive.errors",
    "apply_layer": "chrootarchive.api",
    "apply_uncompressed_layer": "chrootarchive.api",
    "copy_file_with_tar": "chrootarchive.copy",
    "copy_path": "chrootarchive.copy",
    "copy_with_tar": "chrootarchive.copy",
    "set_standby": "chrootarchive.standby",
    "tar": "chrootarchive.copy",
    "unpack_image": "chrootarchive.image",
    "untar": "chrootarchive.api",
    "untar_path": "chrootarchive.copy",
    "untar_uncompressed": "chrootarchive.api",
    "untar_with_root": "chrootarchive.api",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chrootarchive' has no attribute {name!r}")
    __import__(module)  # not importlib: it costs the worker's start-up
    value = getattr(sys.modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
    "set_standby",
    "tar",
    "unpack_image",
    "untar",
    "untar_path",
    "untar_uncompressed",
    "untar_with_root",
]
