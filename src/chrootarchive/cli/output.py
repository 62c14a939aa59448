"""What the commands print: a result as JSON on stdout, warnings on stderr, sizes for
people."""

from __future__ import annotations

import json
import sys

from chrootarchive.errors import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable
    from typing import Any, Protocol

    class Result(Protocol):
        """What every operation returns (UnpackResult, PackResult, ImageResult)."""

        @property
        def warnings(self) -> tuple[str, ...]: ...

        def to_json(self) -> dict[str, Any]: ...


def _printable_json(value: Any) -> Any:
    """Every string escaped as messages are (:func:`errors.printable`, nothing
    shortened): names from an archive or an image may hold control characters, and
    undecodable bytes (surrogates) that no strict JSON parser accepts."""
    if isinstance(value, str):
        return printable(value, 0)
    if isinstance(value, dict):
        return {printable(str(k), 0): _printable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable_json(v) for v in value]
    return value


def print_json(data: dict[str, Any]) -> None:
    json.dump(_printable_json(data), sys.stdout)
    sys.stdout.write("\n")


def print_warnings(warnings: Iterable[str]) -> None:
    for warning in warnings:
        print(f"chrootarchive: warning: {printable(warning, 0)}", file=sys.stderr)


def report(result: Result, args: argparse.Namespace) -> None:
    """The result as JSON with ``--json``; else its warnings, unless ``--quiet``."""
    if args.json:
        print_json(result.to_json())
        return
    if not args.quiet:
        print_warnings(result.warnings)


def human_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
