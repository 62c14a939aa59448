"""``chrootarchive apply-layer``: apply a container image layer onto a directory."""

from __future__ import annotations

import argparse
import sys

from chrootarchive.cli.args import (
    UsageError,
    add_common,
    add_unpack_options,
    archive_input,
    unpack_options,
)
from chrootarchive.cli.commands import HELP, Formatter
from chrootarchive.cli.output import EntryLister, report
from chrootarchive.cli.progress import ByteProgress, source_size
from chrootarchive.options import UnpackResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_LAYER_EPILOG = """\
examples:
  chrootarchive apply-layer layer1.tar.gz /var/lib/images/x/rootfs
  chrootarchive apply-layer --whiteout-format overlay layer2.tar.zst /var/lib/overlay/l2/diff
  chrootarchive apply-layer base.tar.gz app.tar.gz config.tar.gz /var/lib/images/y/rootfs

exit status: as for 'chrootarchive untar'.
"""


def add_parser(commands: Any) -> None:
    layer_p = commands.add_parser(
        "apply-layer",
        help=HELP["apply-layer"],
        description="Apply LAYER onto DEST from inside a kernel jail at DEST: '.wh.NAME' "
                    "entries remove NAME from what lower layers left, '.wh..wh..opq' "
                    "empties its directory of it. Prints the applied size (the sum of "
                    "the entries' sizes, as Docker reports it). Several LAYERs are "
                    "applied in order by one worker (one jail); the limits hold for "
                    "them together, and one size is printed per layer.",
        epilog=_LAYER_EPILOG,
        formatter_class=Formatter,
    )
    layer_p.add_argument("layer", metavar="LAYER", nargs="+",
                         help="the layer (tar, compressed or not; - for stdin); several: "
                              "applied in order, the lowest first")
    layer_p.add_argument("dest", metavar="DEST", help="the directory holding the lower layers")
    layer_p.add_argument(
        "--whiteout-format", choices=("aufs", "overlay"), default="aufs",
        help="aufs (default): apply whiteouts to DEST; overlay: write overlayfs whiteouts "
             "(0/0 character devices, trusted.overlay.opaque) for a per-layer diff directory",
    )
    add_unpack_options(layer_p)
    add_common(layer_p)


def run(args: argparse.Namespace) -> int:
    layers: list[str] = args.layer
    for layer in layers:
        archive_input(layer)
    if layers.count("-") > 1:
        raise UsageError("standard input ('-') can be only one of the layers")
    options = unpack_options(args)
    from chrootarchive.operations.untar import apply_layer, apply_layers

    lister = EntryLister(args) if args.verbose else None
    total = sum(source_size(layer) or 0 for layer in layers) if "-" not in layers else None
    bar = ByteProgress(total,
                       enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        if len(layers) == 1:
            results = [apply_layer(layers[0], args.dest, options, progress=bar.update,
                                   on_entry=lister)]
        else:
            results = apply_layers(layers, args.dest, options, progress=bar.update,
                                   on_entry=lister)
    finally:
        bar.close()
    extra = lister.extra() if lister else {}
    if len(results) > 1:
        extra = {**extra, "layers": [r.to_json() for r in results]}
    report(_together(results), args, extra or None)
    if not args.json:
        for result in results:
            print(result.size)
    return 0


def _together(results: list[UnpackResult]) -> UnpackResult:
    """One result for several layers: counts summed, each warning naming its layer."""
    if len(results) == 1:
        return results[0]
    warnings = [f"layer {i}: {w}" for i, r in enumerate(results) for w in r.warnings]
    privileged: dict[str, int] = {}
    for r in results:
        for what, count in r.privileged.items():
            privileged[what] = privileged.get(what, 0) + count
    return UnpackResult(
        entries=sum(r.entries for r in results), size=sum(r.size for r in results),
        confinement=results[-1].confinement, warnings=tuple(warnings),
        privileged=privileged, skipped_xattrs=sum(r.skipped_xattrs for r in results))
