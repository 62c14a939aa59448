"""``chrootarchive untar``: unpack a tar archive into a directory."""

from __future__ import annotations

import argparse
import sys

from chrootarchive.cli.args import add_common, add_unpack_options, unpack_options
from chrootarchive.cli.output import report
from chrootarchive.cli.progress import ByteProgress, source_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_UNTAR_EPILOG = """\
examples:
  chrootarchive untar rootfs.tar.gz /srv/rootfs
  curl -s https://example.org/x.tar.zst | chrootarchive untar - ./x
  chrootarchive untar --exclude 'usr/share/doc' --exclude '!usr/share/doc/keep' a.tar out
  chrootarchive untar --uid-map 0:100000:65536 --gid-map 0:100000:65536 layer.tar root
  chrootarchive untar --root /containers/c1/rootfs --json app.tar /srv/app

Compression (gzip, bzip2, xz, zstd) is detected from the data and undone outside the
jail. Names that leave the destination, or hardlinks to outside, fail the whole
extraction (exit status 1). Owners are numeric; names are never looked up.

exit status: 0 done, 1 bad archive, 2 usage, 3 no confinement mechanism available,
4 destination problem (permission, no space), 70 internal error.
"""


def add_parser(commands: Any) -> None:
    untar_p = commands.add_parser(
        "untar",
        help="unpack a tar archive (plain or compressed) into a directory, confined",
        description="Unpack ARCHIVE into DEST from inside a kernel jail at DEST "
                    "(or at --root).",
        epilog=_UNTAR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    untar_p.add_argument("archive", metavar="ARCHIVE",
                         help="the archive file, or - for stdin (a device or named FIFO is "
                              "read only from stdin: it is never opened)")
    untar_p.add_argument("dest", metavar="DEST", help="the destination directory")
    untar_p.add_argument("--root", metavar="ROOT",
                         help="jail at ROOT and resolve DEST inside it (as docker cp does)")
    untar_p.add_argument("--uncompressed", action="store_true",
                         help="the input is plain tar: do not detect compression")
    add_unpack_options(untar_p)
    add_common(untar_p)


def run(args: argparse.Namespace) -> int:
    options = unpack_options(args)
    from chrootarchive.operations.untar import untar, untar_uncompressed, untar_with_root

    bar = ByteProgress(source_size(args.archive),
                       enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        if args.root is not None:
            result = untar_with_root(args.archive, args.dest, args.root, options,
                                     progress=bar.update)
        elif args.uncompressed:
            result = untar_uncompressed(args.archive, args.dest, options, progress=bar.update)
        else:
            result = untar(args.archive, args.dest, options, progress=bar.update)
    finally:
        bar.close()
    report(result, args)
    return 0
