"""What the commands print: a result as JSON on stdout, warnings on stderr, sizes for
people."""

from __future__ import annotations

import os
import sys

from chrootarchive.errors import DestinationError, counted, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Mapping
    from typing import Any, Protocol

    class Result(Protocol):
        """What every operation returns (UnpackResult, PackResult, ImageResult)."""

        @property
        def warnings(self) -> tuple[str, ...]: ...

        def to_json(self) -> dict[str, Any]: ...


#: The version of the JSON documents (docs/json.md): raised when a field changes meaning
#: or goes away; new fields may appear without it.
JSON_SCHEMA_VERSION = 1


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


def stdout_failed(err: OSError, what: str) -> None:
    """Standard output refused ``what``: from here on it is /dev/null. A reader that
    went away (``| head``) is quiet, like tar under SIGPIPE; anything else (a full
    disk) is an error, exit status 4, never a success."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if not isinstance(err, BrokenPipeError):
        raise DestinationError(f"cannot write {what}: {(err.strerror or str(err)).lower()}",
                               "standard output") from err


def print_json(data: dict[str, Any]) -> None:
    import json  # only for --json: not at the command line's start

    try:
        sys.stdout.write(json.dumps(_printable_json(data)) + "\n")
        sys.stdout.flush()
    except OSError as err:
        stdout_failed(err, "the JSON document")


def print_warnings(warnings: Iterable[str]) -> None:
    for warning in warnings:
        print(f"chrootarchive: warning: {printable(warning, 0)}", file=sys.stderr)


def report(result: Result, args: argparse.Namespace,
           extra: dict[str, Any] | None = None) -> None:
    """The result as JSON with ``--json`` (with ``extra`` fields); else its warnings,
    unless ``--quiet``."""
    if args.json:
        print_json({"schema_version": JSON_SCHEMA_VERSION, **result.to_json(),
                    **(extra or {})})
        return
    if not args.quiet:
        print_warnings(result.warnings)
        if getattr(args, "filter", "") is None:
            print_privileged(getattr(result, "privileged", {}))


#: Each kind of ``Result.privileged`` (its keys are plural), counted once.
_ONE = {"device nodes": "device node", "setuid/setgid files": "setuid/setgid file",
        "file capabilities": "file capability"}


def print_privileged(privileged: Mapping[str, int]) -> None:
    """One line when the default filter (``fully_trusted``) made what only a root
    filesystem needs: a user who unpacked an upload learns it, and the option."""
    counts = ", ".join(counted(count, _ONE.get(what, what), what)
                       for what, count in privileged.items() if count)
    if counts:
        print(f"chrootarchive: note: as the archive says (filter fully_trusted), this "
              f"created {counts}; for data you do not trust, use --filter data",
              file=sys.stderr)


class EntryLister:
    """``-v``: each unpacked entry's name on stdout as it comes (escaped, like
    ``tar -xv``), or kept for the JSON document (``names``) with ``--json``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = bool(args.json)
        self.names: list[str] = []

    def __call__(self, name: str) -> None:
        if self.json:
            self.names.append(name)
            return
        try:
            sys.stdout.write(printable(name, 0, backslash=True) + "\n")
        except OSError as err:  # a full disk: the unpack goes on, and then fails
            stdout_failed(err, "the list of entries")

    def extra(self) -> dict[str, Any]:
        return {"names": self.names} if self.json else {}


def human_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
