"""What the commands accept: argument types (sizes, counts, id maps, owners), the
options that several commands share, and the options objects built from them.

Building an options object validates it: a value it refuses is a usage error
(:class:`UsageError`, exit status 2), raised before any worker starts.
"""

from __future__ import annotations

import argparse
import math
import sys

from chrootarchive._record import replace
from chrootarchive.cli import commands
from chrootarchive.cli.commands import UsageError as UsageError
from chrootarchive.contract import FILTERS
from chrootarchive.engine.names import EXCLUDE_STYLES
from chrootarchive.errors import SourceError
from chrootarchive.jail.confine import MECHANISMS
from chrootarchive.options import IDMap, Limits, UnpackOptions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")


def archive_input(path: str) -> str:
    """``path``, unless it is ``-`` and standard input is a terminal: GNU tar refuses
    that too (a user who forgot the archive would wait forever, typing into it)."""
    if path == "-" and 0 in commands.closed_streams:
        raise SourceError("standard input is closed (give ARCHIVE, or pipe one into -)",
                          "-")
    if path == "-" and sys.stdin.isatty():
        raise UsageError("refusing to read an archive from a terminal "
                         "(give ARCHIVE, or pipe one into -)")
    return path


def checked(build: Callable[..., T], /, *args: Any, **fields: Any) -> T:
    """``build(*args, **fields)``, an options object; a value it refuses (``ValueError``,
    ``TypeError``) is the user's, so it becomes a :class:`UsageError`, in the command
    line's words: ``--max-memory``, not ``Limits.max_memory``; ``0:1000:10``, not
    ``IDMap(container_id=0, host_id=1000, size=10)``."""
    try:
        return build(*args, **fields)
    except (ValueError, TypeError) as err:
        raise UsageError(in_cli_words(str(err))) from err


#: Fields whose option has another name.
_OPTION_NAMES = {"uid_maps": "uid_map", "gid_maps": "gid_map", "excludes": "exclude",
                 "include_files": "include"}


def in_cli_words(message: str) -> str:
    """A library message in the command line's words: the library names what a caller
    of the API sets (``Limits.max_memory``, ``limit max_bytes``, ``atomic=True``,
    ``ref='latest'``), the command line its options (``--max-memory``,
    ``limit --max-bytes``, ``--atomic``, ``--ref latest``)."""
    import re  # only for an error

    def option(field: str) -> str:
        return "--" + _OPTION_NAMES.get(field, field).replace("_", "-")

    def translate(text: str) -> str:
        text = re.sub(r"\bLimits\.max_memory to (\d++) MiB\b", r"--max-memory to \1M", text)
        text = re.sub(r"\b(?:Limits|UnpackOptions|PackOptions)\.(\w++)",
                      lambda m: option(m.group(1)), text)
        text = re.sub(r"\blimit (max_\w++|reserve|timeout)\b",
                      lambda m: "limit " + option(m.group(1)), text)
        text = re.sub(r"\batomic=True\b", "--atomic", text)
        text = re.sub(r"\bno_overwrite_dir_nondir=True\b", "--no-overwrite-dir-nondir", text)
        text = re.sub(r"\bref=NAME\b", "--ref NAME", text)
        # A message that gave both words ("--max-memory, Limits.max_memory") says it
        # once. Possessive: a long run of "--a--a..." must not be tried at every "--".
        text = re.sub(r"(?<![\w-])(--[a-z][\w-]*+)(?:, \1)++(?![\w-])", r"\1", text)
        return re.sub(r"\bIDMap\(container_id=(\d++), host_id=(\d++), size=(\d++)\)",
                      r"\1:\2:\3", text)

    # Words with a quoted value first (a name quoted inside one is escaped: \').
    message = re.sub(r"\bold_files='(keep|skip)'",
                     lambda m: f"--{m.group(1)}-old-files", message)
    message = re.sub(r"\bref='([\w.-]++)'", r"--ref \1", message)
    # Then only the library's own words: a name it quotes (an archive's, an image's,
    # a tag; escaped by errors.quoted or repr) is shown as it is, never rewritten.
    parts = re.split(r"('(?:[^'\\]|\\.)*+')", message)
    return "".join(part if i % 2 else translate(part) for i, part in enumerate(parts))


def parse_id_map(text: str) -> IDMap:
    try:
        container, host, size = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected CONTAINER_ID:HOST_ID:SIZE, got {text!r}"
        ) from None
    if container < 0 or host < 0 or size <= 0:
        raise argparse.ArgumentTypeError(f"ids must be >= 0 and size > 0: {text!r}")
    return IDMap(container, host, size)


def parse_owner(text: str) -> tuple[int, int]:
    try:
        uid, gid = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numeric UID:GID (names are never looked up), got {text!r}"
        ) from None
    if uid < 0 or gid < 0:
        raise argparse.ArgumentTypeError(f"ids must be >= 0: {text!r}")
    return uid, gid


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # nan, inf, 1e400: no size, and int() would raise
        raise argparse.ArgumentTypeError(f"expected a size like 512M or 4G, got {text!r}")
    if number < 0:
        raise argparse.ArgumentTypeError(f"a size must be >= 0: {text!r}")
    return int(number * _UNITS[unit])


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def parse_percent(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = math.nan
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to less than 100 "
                                         f"(5, 0.5%), got {text!r}")
    return value


def format_size(value: int | None) -> str:
    if value is None:
        return "none"
    for unit in ("T", "G", "M", "K"):
        if value >= _UNITS[unit] and value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit}"
    return str(value)


#: How ``--confine auto`` chooses for an unpack (``runner.ladder``)...
AUTO_UNPACK = "pivot as root, else userns, else openat2"
#: ... and for reading a tree (``operations.copy._pack_candidates``: no namespace first).
AUTO_READ = "chroot as root, else openat2, else userns"


def add_common(parser: argparse.ArgumentParser,
               auto: str = f"the strongest available: {AUTO_UNPACK}") -> None:
    """``--json``, ``-q``, ``--debug`` and ``--confine``, whose ``auto`` is ``auto``:
    reading a tree (``tar``, ``cp``) tries the mechanisms in another order."""
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="print the result (or the error) as one JSON document on stdout "
                          "(docs/json.md)")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="nothing but errors on standard error (no warnings, notes or "
                          "progress bar); the output (-v's names, apply-layer's sizes) stays")
    out.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    out.add_argument(
        "--confine", default="auto", metavar="MECHANISM",
        choices=("auto", *MECHANISMS),
        help=f"confinement mechanism: auto (default: {auto}), pivot (mount namespace + "
             "pivot_root, needs root), chroot (needs root), userns (unprivileged user "
             "namespace + pivot_root), openat2 (in-process, every path resolved with "
             "RESOLVE_IN_ROOT; Linux 5.6+)",
    )


def add_exclude_style(group: argparse._ActionsContainer, start: str) -> None:
    """``--exclude-style``: Docker's patterns or GNU tar's, for every command that
    takes ``--exclude``; ``start``: where Docker's patterns are matched from."""
    group.add_argument("--exclude-style", choices=EXCLUDE_STYLES, default="docker",
                       help=f"how --exclude matches: docker (default: from {start}, '*' "
                            "within one component, '**' across, '!' re-includes) or tar "
                            "(GNU tar's: any tail of the name, '*' crosses '/': '*.txt' "
                            "also excludes sub/b.txt)")


def add_unpack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list each entry as it is unpacked, like tar -xv (names "
                             "escaped); with --json, as the document's names")
    own = parser.add_argument_group("ownership (numeric only)")
    own.add_argument("--no-lchown", action="store_true",
                     help="do not change owners: files belong to the user running this")
    own.add_argument("--chown", type=parse_owner, metavar="UID:GID",
                     help="give every entry this owner instead of the archive's")
    own.add_argument("--uid-map", type=parse_id_map, action="append", default=[],
                     metavar="CONTAINER:HOST:SIZE",
                     help="map archive uids to host uids (repeatable); unmapped uids fail")
    own.add_argument("--gid-map", type=parse_id_map, action="append", default=[],
                     metavar="CONTAINER:HOST:SIZE", help="the same for gids")
    own.add_argument("--rootless-xattr", action="store_true",
                     help="unprivileged: record owners that could not be applied in the "
                          "user.rootlesscontainers xattr (umoci's convention)")
    sel = parser.add_argument_group("selection and replacement")
    sel.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                     help="skip entries matching PATTERN and everything below them "
                          "(repeatable; by default Docker's style: from the root, '**' "
                          "across directories, '!PATTERN' re-includes, last match wins; "
                          "see --exclude-style)")
    add_exclude_style(sel, "the root")
    sel.add_argument("--no-overwrite-dir-nondir", action="store_true",
                     help="fail instead of replacing a directory (and all below it) "
                          "by a non-directory or the reverse, as GNU tar and tarfile do "
                          "(by default an entry replaces what is in its way, as Docker's)")
    sel.add_argument("--best-effort-xattrs", action="store_true",
                     help="skip xattrs that the destination filesystem does not support")
    sel.add_argument("--filter", choices=FILTERS, default=None, metavar="NAME",
                     help="how far the archive is trusted, with the names and rules of "
                          "Python's tarfile (PEP 706): fully_trusted (default: a root "
                          "filesystem, owners, device nodes and setuid files as the "
                          "archive says), tar (no setuid/setgid/sticky bits, no "
                          "group/other write, no file capabilities), data (for uploads: "
                          "tar's rules, no device nodes or FIFOs, no symlinks to absolute "
                          "paths or out of DEST, owners left to the user running this)")
    sel.add_argument("--data-only", dest="filter", action="store_const", const="data",
                     help="the same as --filter data")
    sel.add_argument("--atomic", action="store_true",
                     help="all or nothing: unpack beside DEST and rename into place only "
                          "when everything succeeded (DEST must be missing or empty)")
    add_limits(parser)


def add_limits(parser: argparse.ArgumentParser, *, listing: bool = False) -> None:
    """The limits' options; ``listing``: ``list``'s, which writes nothing (no reserve,
    and ``--max-bytes`` counts the archive read)."""
    lim = parser.add_argument_group(
        "limits (crossing one stops the work: exit status 1; SIZE takes K, M, G, T)")
    defaults = Limits()
    counted = ("the archive read, decompressed" if listing
               else "file data written in total")
    lim.add_argument("--max-bytes", type=parse_size, metavar="SIZE",
                     help=f"{counted} (default {format_size(defaults.max_bytes)})")
    lim.add_argument("--max-entries", type=parse_count, metavar="N",
                     help=f"archive entries (default {defaults.max_entries:,})")
    lim.add_argument("--max-file-size", type=parse_size, metavar="SIZE",
                     help=f"one file (default {format_size(defaults.max_file_size)})")
    lim.add_argument("--max-path-length", type=parse_count, metavar="N",
                     help=f"bytes in a name (default {defaults.max_path_length})")
    lim.add_argument("--max-path-depth", type=parse_count, metavar="N",
                     help=f"components in a name (default {defaults.max_path_depth})")
    lim.add_argument("--max-xattr-bytes", type=parse_size, metavar="SIZE",
                     help=f"one entry's xattrs (default {format_size(defaults.max_xattr_bytes)})")
    lim.add_argument("--max-memory", type=parse_size, metavar="SIZE",
                     help="memory of the decompressor and the worker together: a stream "
                          "needing a larger window is refused (at least 48M; default "
                          f"{format_size(defaults.max_memory)})")
    if not listing:
        lim.add_argument("--reserve", type=parse_percent, metavar="PERCENT",
                         help="stop before the destination's filesystem has less than "
                              "PERCENT of its space and inodes free, at most 1G and "
                              f"100,000 inodes (default {defaults.reserve:g}; 0: none)")
    lim.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="wall-clock time for the whole operation (default: none)")
    lim.add_argument("--strict-limits", action="store_true",
                     help="start from limits for untrusted downloads (4G bytes, 100,000 "
                          "entries, 1 hour) instead of the container-sized defaults")


def limits(args: argparse.Namespace) -> Limits:
    base = Limits.strict() if args.strict_limits else Limits()
    changes = {
        name: getattr(args, name)
        for name in ("max_bytes", "max_entries", "max_file_size", "max_path_length",
                     "max_path_depth", "max_xattr_bytes", "max_memory", "reserve", "timeout")
        if getattr(args, name, None) is not None  # list has no --reserve
    }
    chosen: Limits = checked(replace, base, **changes)
    return chosen


def unpack_options(args: argparse.Namespace) -> UnpackOptions:
    return checked(
        UnpackOptions,
        limits=limits(args),
        filter=args.filter or "fully_trusted",
        atomic=args.atomic,
        whiteout_format=getattr(args, "whiteout_format", "aufs"),
        no_lchown=args.no_lchown,
        chown=args.chown,
        uid_maps=tuple(args.uid_map),
        gid_maps=tuple(args.gid_map),
        excludes=tuple(args.exclude),
        exclude_style=args.exclude_style,
        no_overwrite_dir_nondir=args.no_overwrite_dir_nondir,
        best_effort_xattrs=args.best_effort_xattrs,
        confine=args.confine,
        rootless_xattr=args.rootless_xattr,
    )
