"""``chrootarchive list``: the entries of an archive, as ``tar -t`` and ``tar -tv``."""

from __future__ import annotations

import argparse
import sys

from chrootarchive._record import as_dict
from chrootarchive.cli.args import add_limits, archive_input, limits
from chrootarchive.cli.commands import HELP, Formatter
from chrootarchive.cli.output import JSON_SCHEMA_VERSION, print_json, stdout_failed
from chrootarchive.errors import ChrootArchiveError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_EPILOG = """\
examples:
  chrootarchive list rootfs.tar.gz
  chrootarchive list -v layer.tar.zst          # mode, owner, size, time, name (tar -tv)
  chrootarchive list --json image-layer.tar | jq -r '.entries[] | select(.kind=="chardev") | .name'

Nothing is unpacked, so no jail is needed; compression is detected. Names are printed
escaped (control characters as \\xNN): an archive controls them. The limits of untar
hold (but --reserve: nothing is written); --max-bytes counts the archive read, as every
byte of it (decompressed) is read to list it.

exit status: 0 listed, 1 bad archive (or a limit crossed), 2 usage, 4 cannot read the
archive.
"""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "list", help=HELP["list"],
        description="List the entries of ARCHIVE, as tar -t (names) or tar -tv does.",
        epilog=_EPILOG, formatter_class=Formatter,
    )
    parser.add_argument("archive", metavar="ARCHIVE", help="the archive file, or - for stdin")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="mode, owner (numeric), size, time and name, as tar -tv")
    parser.add_argument("--uncompressed", action="store_true",
                        help="the input is plain tar: do not detect compression")
    parser.add_argument("--json", action="store_true",
                        help="one JSON document with the entries (docs/json.md) instead of lines")
    add_limits(parser, listing=True)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def run(args: argparse.Namespace) -> int:
    archive_input(args.archive)
    from chrootarchive.operations.listing import list_entries

    entries = list_entries(args.archive, detect_compression=not args.uncompressed,
                           limits=limits(args))
    try:
        if args.json:
            listed: list[dict[str, Any]] = [as_dict(entry) for entry in entries]
            print_json({"schema_version": JSON_SCHEMA_VERSION, "entries": listed})
        else:
            for entry in entries:
                sys.stdout.write(entry.line(args.verbose) + "\n")
        sys.stdout.flush()
    except ChrootArchiveError:
        raise  # the archive's (an OSError too)
    except OSError as err:  # standard output's
        stdout_failed(err, "the listing")
    return 0
