"""The worker job ``unpack``: read a tar stream on stdin and unpack it below the jail."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from chrootarchive import fsops, tarreader, unpack
from chrootarchive.options import UnpackOptions

__all__ = ["run"]


def run(request: dict[str, Any], warn: Callable[[str], None]) -> dict[str, Any]:
    options = UnpackOptions.from_json(request["options"])
    unpacker = unpack.Unpacker(
        fsops.JailedFileOps(),
        options,
        warn,
        layer_mode=bool(request.get("layer")),
        in_user_namespace=bool(request.get("in_user_namespace")),
    )
    reader = tarreader.TarReader(0)
    try:
        stats = unpacker.run(reader)
    finally:
        with contextlib.suppress(Exception):
            reader.drain()  # archives may be zero-padded: read the input to its end
    return {"entries": stats.entries, "size": stats.size}
