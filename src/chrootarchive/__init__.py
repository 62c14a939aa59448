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
    from chrootarchive.operations.copy import (
        TarStream,
        copy_file_with_tar,
        copy_path,
        copy_with_tar,
        tar,
        untar_path,
    )
    from chrootarchive.operations.untar import (
        apply_layer,
        apply_uncompressed_layer,
        untar,
        untar_uncompressed,
        untar_with_root,
    )
    from chrootarchive.options import (
        IDMap,
        Limits,
        PackOptions,
        PackResult,
        UnpackOptions,
        UnpackResult,
    )
    from chrootarchive.runner.standby import set_standby

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
    "TarStream": "chrootarchive.operations.copy",
    "UnpackOptions": "chrootarchive.options",
    "UnpackResult": "chrootarchive.options",
    "WorkerError": "chrootarchive.errors",
    "apply_layer": "chrootarchive.operations.untar",
    "apply_uncompressed_layer": "chrootarchive.operations.untar",
    "copy_file_with_tar": "chrootarchive.operations.copy",
    "copy_path": "chrootarchive.operations.copy",
    "copy_with_tar": "chrootarchive.operations.copy",
    "set_standby": "chrootarchive.runner.standby",
    "tar": "chrootarchive.operations.copy",
    "unpack_image": "chrootarchive.image",
    "untar": "chrootarchive.operations.untar",
    "untar_path": "chrootarchive.operations.copy",
    "untar_uncompressed": "chrootarchive.operations.untar",
    "untar_with_root": "chrootarchive.operations.untar",
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
