"""``chrootarchive unpack-image``: unpack a container image into a root filesystem."""

from __future__ import annotations

import argparse
import sys

from chrootarchive.cli.args import (
    add_common,
    add_unpack_options,
    archive_input,
    parse_count,
    unpack_options,
)
from chrootarchive.cli.commands import HELP, Formatter
from chrootarchive.cli.output import EntryLister, human_bytes, report
from chrootarchive.cli.progress import LayerBars
from chrootarchive.errors import counted, printable
from chrootarchive.options import DEFAULT_MAX_LAYERS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_IMAGE_EPILOG = """\
examples:
  skopeo copy docker://debian:bookworm oci:debian:bookworm
  chrootarchive unpack-image --ref bookworm debian /srv/rootfs/debian
  docker save -o app.tar example/app:1.0 && chrootarchive unpack-image app.tar ./app-root
  chrootarchive unpack-image --platform linux/arm64/v8 --json multiarch.tar ./root
  docker save example/app | chrootarchive unpack-image --ref example/app:latest - ./root

IMAGE is an OCI image layout (a directory holding oci-layout, index.json and blobs/,
or a tar of one: skopeo copy oci: or oci-archive:), a 'docker save' archive (classic,
or Docker 25+'s OCI layout), or a 'dir' layout (one manifest.json and its blobs, as
skopeo copy dir: writes it); tars may be compressed; - reads standard input. The image
tar is never extracted: its members are read in place. Every document and blob is
checked against its digest and size, and every layer's uncompressed stream against the
config's DiffID. Layers are applied in order, each by a worker jailed at DEST,
whiteouts included. Nothing but the digest and DiffID of a layer can be checked before
it is written: with --atomic, DEST appears only when every layer was verified.

exit status: 0 done, 1 bad or hostile image (digest mismatch, missing blob, unknown
media type, too many layers...), 2 usage, 3 no confinement mechanism available,
4 the image cannot be read or DEST cannot be written, 70 internal error.
"""


def platform_arg(text: str) -> str:
    from chrootarchive.image import parse_platform

    try:
        return parse_platform(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_parser(commands: Any) -> None:
    image_p = commands.add_parser(
        "unpack-image",
        help=HELP["unpack-image"],
        description="Select one image of IMAGE by reference and platform, check it, and "
                    "apply its layers in order onto DEST, each from inside a kernel jail "
                    "at DEST.",
        epilog=_IMAGE_EPILOG,
        formatter_class=Formatter,
    )
    image_p.add_argument("image", metavar="IMAGE",
                         help="the image: a directory, a tar file (compressed or not), or -")
    image_p.add_argument("dest", metavar="DEST",
                         help="the root filesystem directory (created if missing)")
    sel = image_p.add_argument_group("image selection")
    sel.add_argument("--ref", metavar="REF",
                     help="which image: an OCI ref name (org.opencontainers.image.ref.name, "
                          "e.g. 'latest'), a docker save tag ('example/app:1.0'), or a "
                          "digest ('sha256:...': manifest or index for OCI, image ID for "
                          "docker save); needed when IMAGE holds several images")
    sel.add_argument("--platform", type=platform_arg, metavar="OS/ARCH[/VARIANT]",
                     help="the platform to pick in image indexes (default: this machine's, "
                          "e.g. linux/amd64); an image for another platform is then an "
                          "error instead of a warning")
    sel.add_argument("--max-layers", type=parse_count, default=DEFAULT_MAX_LAYERS, metavar="N",
                     help=f"refuse manifests with more layers (default {DEFAULT_MAX_LAYERS:,})")
    add_unpack_options(image_p)
    add_common(image_p)


def run(args: argparse.Namespace) -> int:
    archive_input(args.image)
    options = unpack_options(args)
    from chrootarchive.image import unpack_image

    lister = EntryLister(args) if args.verbose else None
    bars = LayerBars(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        result = unpack_image(
            args.image, args.dest, ref=args.ref, platform=args.platform, options=options,
            progress=bars, max_layers=args.max_layers, on_entry=lister,
        )
    finally:
        bars.close()
    report(result, args, lister.extra() if lister else None)
    if not args.json and not args.quiet and sys.stderr.isatty():
        # The ref and the platform come from the image: escaped like any name.
        name = printable(result.ref or result.manifest_digest or result.config_digest)
        layers = counted(len(result.layers), "layer")
        print(f"unpacked {name} ({printable(result.platform)}, {layers}, "
              f"{human_bytes(result.size)}) into {printable(args.dest)}", file=sys.stderr)
    return 0
