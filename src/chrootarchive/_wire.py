"""JSON for the worker's side of the protocol, from the C accelerator alone.

The ``json`` package imports ``re`` (and with it ``enum``): several milliseconds of a
worker's start-up, which is most of the cost of a small archive. The C scanner and
encoder that ``json`` itself uses produce and accept exactly the same documents.
"""

from __future__ import annotations

import _json

__all__ = ["dumps", "loads"]


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


class _ScannerContext:
    """The attributes ``_json.make_scanner`` reads (those of ``json.JSONDecoder``)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constant)


def _not_serializable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# typeshed types the context as the scanner class itself; any object with the
# attributes above is what the C code reads.
_scan = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]
_encode = _json.make_encoder(
    None, _not_serializable, _json.encode_basestring_ascii, None, ":", ",", False, False,
    False,
)
_SPACE = " \t\n\r"


def loads(document: bytes | bytearray) -> object:
    """Parse one JSON document (UTF-8 bytes); ValueError when it is not one."""
    text = bytes(document).decode("utf-8")
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("not a JSON document") from None
    if text[end:].strip(_SPACE):
        raise ValueError("extra data after the JSON document")
    return value


def dumps(value: object) -> bytes:
    """Serialize dicts, lists, strings, numbers, booleans and None (ASCII output)."""
    return "".join(_encode(value, 0)).encode("ascii")
