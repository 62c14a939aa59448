"""``chrootarchive apply-layer``: apply a container image layer onto a directory."""

from __future__ import annotations

import argparse
import sys

from chrootarchive.cli.args import add_common, add_unpack_options, archive_input, unpack_options
from chrootarchive.cli.commands import HELP, Formatter
from chrootarchive.cli.output import EntryLister, report
from chrootarchive.cli.progress import ByteProgress, source_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_LAYER_EPILOG = """\
examples:
  chrootarchive apply-layer layer1.tar.gz /var/lib/images/x/rootfs
  chrootarchive apply-layer --whiteout-format overlay layer2.tar.zst /var/lib/overlay/l2/diff

exit status: as for 'chrootarchive untar'.
"""


def add_parser(commands: Any) -> None:
    layer_p = commands.add_parser(
        "apply-layer",
        help=HELP["apply-layer"],
        description="Apply LAYER onto DEST from inside a kernel jail at DEST: '.wh.NAME' "
                    "entries remove NAME from what lower layers left, '.wh..wh..opq' "
                    "empties its directory of it. Prints the applied size (the sum of "
                    "the entries' sizes, as Docker reports it).",
        epilog=_LAYER_EPILOG,
        formatter_class=Formatter,
    )
    layer_p.add_argument("layer", metavar="LAYER", help="the layer (tar, compressed or not; - "
                                                       "for stdin)")
    layer_p.add_argument("dest", metavar="DEST", help="the directory holding the lower layers")
    layer_p.add_argument(
        "--whiteout-format", choices=("aufs", "overlay"), default="aufs",
        help="aufs (default): apply whiteouts to DEST; overlay: write overlayfs whiteouts "
             "(0/0 character devices, trusted.overlay.opaque) for a per-layer diff directory",
    )
    add_unpack_options(layer_p)
    add_common(layer_p)


def run(args: argparse.Namespace) -> int:
    archive_input(args.layer)
    options = unpack_options(args)
    from chrootarchive.operations.untar import apply_layer

    lister = EntryLister(args) if args.verbose else None
    bar = ByteProgress(source_size(args.layer),
                       enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        result = apply_layer(args.layer, args.dest, options, progress=bar.update,
                             on_entry=lister)
    finally:
        bar.close()
    report(result, args, lister.extra() if lister else None)
    if not args.json:
        print(result.size)
    return 0
