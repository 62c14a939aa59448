"""chrootarchive: unpack untrusted tar archives inside a kernel jail.

The public API is re-exported here; the modules behind it are private. Every
operation confines the writing process to the destination with the kernel (a mount
namespace and ``pivot_root``, or ``chroot``), decompresses outside the jail, and raises
a :class:`ChrootArchiveError` subclass on failure.
"""

from __future__ import annotations

import sys

#: The package's version (PEP 440); ``chrootarchive --version`` prints it.
__version__ = "0.2.0.dev0"

# Not ``typing.TYPE_CHECKING``: the confined worker imports this package, and importing
# ``typing`` costs milliseconds of its start-up.
# "X as X": re-exported for type checkers, which cannot read a computed ``__all__``.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from chrootarchive.errors import ArchiveError as ArchiveError
    from chrootarchive.errors import BreakoutError as BreakoutError
    from chrootarchive.errors import ChrootArchiveError as ChrootArchiveError
    from chrootarchive.errors import CompressionError as CompressionError
    from chrootarchive.errors import ConfinementError as ConfinementError
    from chrootarchive.errors import DestinationError as DestinationError
    from chrootarchive.errors import DigestMismatchError as DigestMismatchError
    from chrootarchive.errors import ImageError as ImageError
    from chrootarchive.errors import InternalError as InternalError
    from chrootarchive.errors import LimitExceededError as LimitExceededError
    from chrootarchive.errors import MalformedArchiveError as MalformedArchiveError
    from chrootarchive.errors import MechanismUnavailableError as MechanismUnavailableError
    from chrootarchive.errors import RegistryError as RegistryError
    from chrootarchive.errors import SourceError as SourceError
    from chrootarchive.errors import WorkerError as WorkerError
    from chrootarchive.image import ImageResult as ImageResult
    from chrootarchive.image import LayerProgress as LayerProgress
    from chrootarchive.image import LayerResult as LayerResult
    from chrootarchive.image import unpack_image as unpack_image
    from chrootarchive.operations.copy import TarStream as TarStream
    from chrootarchive.operations.copy import copy_file_with_tar as copy_file_with_tar
    from chrootarchive.operations.copy import copy_path as copy_path
    from chrootarchive.operations.copy import copy_with_tar as copy_with_tar
    from chrootarchive.operations.copy import tar as tar
    from chrootarchive.operations.copy import untar_path as untar_path
    from chrootarchive.operations.listing import ListedEntry as ListedEntry
    from chrootarchive.operations.listing import list_entries as list_entries
    from chrootarchive.operations.pythonic import extractall as extractall
    from chrootarchive.operations.pythonic import (
        register_unpack_formats as register_unpack_formats,
    )
    from chrootarchive.operations.untar import apply_layer as apply_layer
    from chrootarchive.operations.untar import apply_layers as apply_layers
    from chrootarchive.operations.untar import apply_uncompressed_layer as apply_uncompressed_layer
    from chrootarchive.operations.untar import untar as untar
    from chrootarchive.operations.untar import untar_uncompressed as untar_uncompressed
    from chrootarchive.operations.untar import untar_with_root as untar_with_root
    from chrootarchive.options import IDMap as IDMap
    from chrootarchive.options import Limits as Limits
    from chrootarchive.options import PackOptions as PackOptions
    from chrootarchive.options import PackResult as PackResult
    from chrootarchive.options import Result as Result
    from chrootarchive.options import UnpackOptions as UnpackOptions
    from chrootarchive.options import UnpackResult as UnpackResult
    from chrootarchive.registry.pull import pull as pull
    from chrootarchive.runner.settings import set_debug as set_debug
    from chrootarchive.runner.standby import set_standby as set_standby

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
    "RegistryError": "chrootarchive.errors",
    "Result": "chrootarchive.options",
    "SourceError": "chrootarchive.errors",
    "TarStream": "chrootarchive.operations.copy",
    "UnpackOptions": "chrootarchive.options",
    "UnpackResult": "chrootarchive.options",
    "WorkerError": "chrootarchive.errors",
    "apply_layer": "chrootarchive.operations.untar",
    "apply_layers": "chrootarchive.operations.untar",
    "extractall": "chrootarchive.operations.pythonic",
    "ListedEntry": "chrootarchive.operations.listing",
    "list_entries": "chrootarchive.operations.listing",
    "register_unpack_formats": "chrootarchive.operations.pythonic",
    "apply_uncompressed_layer": "chrootarchive.operations.untar",
    "copy_file_with_tar": "chrootarchive.operations.copy",
    "copy_path": "chrootarchive.operations.copy",
    "copy_with_tar": "chrootarchive.operations.copy",
    "pull": "chrootarchive.registry.pull",
    "set_debug": "chrootarchive.runner.settings",
    "set_standby": "chrootarchive.runner.standby",
    "tar": "chrootarchive.operations.copy",
    "unpack_image": "chrootarchive.image",
    "untar": "chrootarchive.operations.untar",
    "untar_path": "chrootarchive.operations.copy",
    "untar_uncompressed": "chrootarchive.operations.untar",
    "untar_with_root": "chrootarchive.operations.untar",
}


if not TYPE_CHECKING:  # hidden from type checkers: a misspelt name is then their error

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


#: The public names: the one list (the imports above repeat it for type checkers;
#: tests/test_public_names.py checks that they agree).
__all__ = sorted(_EXPORTS)
