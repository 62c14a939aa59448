"""``chrootarchive untar``: unpack a tar archive into a directory."""

from __future__ import annotations

import argparse
import sys

from chrootarchive._record import replace
from chrootarchive.cli.args import (
    UsageError,
    add_common,
    add_unpack_options,
    archive_input,
    checked,
    parse_count,
    unpack_options,
)
from chrootarchive.cli.commands import HELP, Formatter
from chrootarchive.cli.output import EntryLister, report
from chrootarchive.cli.progress import ByteProgress, source_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_UNTAR_EPILOG = """\
examples:
  chrootarchive untar rootfs.tar.gz /srv/rootfs
  chrootarchive untar --filter data upload.tar.gz /srv/uploads/42   # data, not a rootfs
  chrootarchive untar -v -C ./src --strip-components 1 project-1.2.tar.xz
  curl -s https://example.org/x.tar.zst | chrootarchive untar - ./x
  chrootarchive untar --exclude 'usr/share/doc' --exclude '!usr/share/doc/keep' a.tar out
  chrootarchive untar --uid-map 0:100000:65536 --gid-map 0:100000:65536 layer.tar root
  chrootarchive untar --root /containers/c1/rootfs --json app.tar /srv/app

Compression (gzip, bzip2, xz, zstd) is detected from the data and undone outside the
jail. Names that leave the destination, or hardlinks to outside, fail the whole
extraction (exit status 1). Owners are numeric; names are never looked up.

exit status: 0 done, 1 bad or hostile archive (or a limit crossed), 2 usage, 3 no
confinement mechanism available, 4 the archive cannot be read or DEST cannot be written,
70 internal error (please report it with --debug). docs/json.md has the details.
"""


def add_parser(commands: Any) -> None:
    untar_p = commands.add_parser(
        "untar",
        help=HELP["untar"],
        description="Unpack ARCHIVE into DEST from inside a kernel jail at DEST "
                    "(or at --root).",
        epilog=_UNTAR_EPILOG,
        formatter_class=Formatter,
    )
    untar_p.add_argument("archive", metavar="ARCHIVE",
                         help="the archive file, or - for stdin (a device or named FIFO is "
                              "read only from stdin: it is never opened)")
    untar_p.add_argument("dest", metavar="DEST", nargs="?",
                         help="the destination directory (or give it with -C)")
    untar_p.add_argument("-C", "--directory", metavar="DIR",
                         help="the destination directory, as tar takes it: "
                              "'untar -C DIR ARCHIVE' is 'untar ARCHIVE DIR'")
    untar_p.add_argument("--root", metavar="ROOT",
                         help="jail at ROOT and resolve DEST inside it (as docker cp does)")
    untar_p.add_argument("--uncompressed", action="store_true",
                         help="the input is plain tar: do not detect compression")
    tar_like = untar_p.add_argument_group("as GNU tar")
    tar_like.add_argument("--strip-components", type=parse_count, default=0, metavar="N",
                          help="remove N leading components from names (and hardlink "
                               "targets); entries with no more are skipped")
    old = tar_like.add_mutually_exclusive_group()
    old.add_argument("-k", "--keep-old-files", dest="old_files", action="store_const",
                     const="keep", default="replace",
                     help="keep existing files: each is an error, reported once the rest is "
                          "unpacked (exit status 4), as GNU tar's -k; directories merge")
    old.add_argument("--skip-old-files", dest="old_files", action="store_const",
                     const="skip", help="leave existing files alone, silently")
    add_unpack_options(untar_p)
    add_common(untar_p)


def run(args: argparse.Namespace) -> int:
    if args.atomic and args.root is not None:  # the API's ValueError
        raise UsageError("--atomic is not available with --root")
    archive_input(args.archive)
    if (args.dest is None) == (args.directory is None):
        raise UsageError("give the destination once: as DEST or with -C DIR")
    dest = args.dest if args.dest is not None else args.directory
    options = checked(replace, unpack_options(args), strip_components=args.strip_components,
                      old_files=args.old_files)
    from chrootarchive.operations.untar import untar

    lister = EntryLister(args) if args.verbose else None
    bar = ByteProgress(source_size(args.archive),
                       enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        result = untar(args.archive, dest, options, root=args.root,
                       detect_compression=not args.uncompressed, progress=bar.update,
                       on_entry=lister)
    finally:
        bar.close()
    report(result, args, lister.extra() if lister else None)
    return 0
