"""``chrootarchive pull``: pull an image from a registry into a root filesystem."""

from __future__ import annotations

import argparse
import sys

from chrootarchive.cli.args import (
    UsageError,
    add_common,
    add_unpack_options,
    parse_count,
    unpack_options,
)
from chrootarchive.cli.commands import HELP, Formatter
from chrootarchive.cli.image import platform_arg
from chrootarchive.cli.output import EntryLister, human_bytes, report
from chrootarchive.cli.progress import LayerBars
from chrootarchive.errors import counted, printable
from chrootarchive.options import DEFAULT_MAX_LAYERS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_PULL_EPILOG = """\
examples:
  chrootarchive pull registry.example.org/team/app:1.4 ./rootfs
  chrootarchive pull --platform linux/arm64 --atomic debian:12 ./rootfs
  chrootarchive pull --json alpine@sha256:<64 hex digits> ./alpine-root
  chrootarchive pull --authfile auth.json --cert-dir ./certs.d \\
      registry.internal:5000/base/os:2024 /srv/rootfs/os
  chrootarchive pull --insecure localhost:5000 localhost:5000/test:dev ./root

REF is read as Docker reads it: a name without a registry is Docker Hub's
(debian:12 is docker.io/library/debian:12), the tag defaults to latest, and
name@sha256:... pins the manifest (or index) by digest. The network stays in this
process: each layer streams from the registry through its digest check and the
decompressor into a worker jailed at DEST, with no copy on disk; the next layer
downloads while one is applied, and a dropped connection resumes where it stopped.
Every document and blob is checked against its digest and size, every layer against
the config's DiffID. With --atomic, DEST appears only when every layer was verified.

credentials: --authfile, else $REGISTRY_AUTH_FILE, else the first of
$XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json and
~/.docker/config.json (what podman login and docker login write) that has an entry for
the registry. They go to the registry only, never to another host, and are never
printed. TLS: the system's authorities plus /etc/containers/certs.d/HOST[:PORT]/
and /etc/docker/certs.d/HOST[:PORT]/ (*.crt), or --cert-dir's HOST[:PORT]/ instead.

exit status: 0 done, 1 bad or hostile image or registry (digest mismatch, refused or
unreachable registry, authentication, too many layers...), 2 usage (a bad REF),
3 no confinement mechanism available, 4 DEST cannot be written, 70 internal error.
"""


def add_parser(commands: Any) -> None:
    pull_p = commands.add_parser(
        "pull",
        help=HELP["pull"],
        description="Fetch the image REF names from its registry, choose the platform, "
                    "check it, and apply its layers in order onto DEST, each streamed into "
                    "a kernel jail at DEST.",
        epilog=_PULL_EPILOG,
        formatter_class=Formatter,
    )
    pull_p.add_argument("ref", metavar="REF",
                        help="the image: [REGISTRY/]NAME[:TAG][@DIGEST]")
    pull_p.add_argument("dest", metavar="DEST",
                        help="the root filesystem directory (created if missing)")
    sel = pull_p.add_argument_group("image selection")
    sel.add_argument("--platform", type=platform_arg, metavar="OS/ARCH[/VARIANT]",
                     help="the platform to pick in an image index (default: this "
                          "machine's, e.g. linux/amd64); an image for another platform is "
                          "then an error instead of a warning")
    sel.add_argument("--max-layers", type=parse_count, default=DEFAULT_MAX_LAYERS,
                     metavar="N",
                     help=f"refuse manifests with more layers (default {DEFAULT_MAX_LAYERS:,})")
    reg = pull_p.add_argument_group("registry")
    reg.add_argument("--authfile", metavar="PATH",
                     help="the credentials file (docker's config.json format, podman's "
                          "auth.json) instead of the usual places")
    reg.add_argument("--cert-dir", action="append", default=None, metavar="DIR",
                     help="a certs.d directory: DIR/HOST[:PORT]/*.crt are the registry's "
                          "certificate authorities (and *.cert/*.key a client "
                          "certificate), read instead of /etc/containers/certs.d and "
                          "/etc/docker/certs.d (repeatable)")
    reg.add_argument("--insecure", metavar="REGISTRY",
                     help="allow plain HTTP or an unverified certificate for REGISTRY "
                          "(HOST[:PORT], as written in REF) only")
    add_unpack_options(pull_p)
    add_common(pull_p)


def run(args: argparse.Namespace) -> int:
    from chrootarchive.registry.reference import parse_reference

    try:
        reference = parse_reference(args.ref)
    except ValueError as err:
        raise UsageError(str(err)) from None
    options = unpack_options(args)
    insecure = args.insecure is not None and args.insecure in (
        reference.registry, reference.endpoint)
    if args.insecure is not None and not insecure and not args.quiet:
        print(f"chrootarchive: warning: --insecure {printable(args.insecure)} does not name "
              f"the registry of {printable(str(reference))}: TLS is verified",
              file=sys.stderr)
    from chrootarchive.registry.pull import pull

    lister = EntryLister(args) if args.verbose else None
    bars = LayerBars(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        result = pull(
            str(reference), args.dest, options=options, platform=args.platform,
            progress=bars, max_layers=args.max_layers, on_entry=lister, insecure=insecure,
            authfile=args.authfile, certs_dirs=args.cert_dir,
        )
    finally:
        bars.close()
    report(result, args, lister.extra() if lister else None)
    if not args.json and not args.quiet and sys.stderr.isatty():
        layers = counted(len(result.layers), "layer")
        print(f"pulled {printable(result.ref or str(reference))} "
              f"({printable(result.platform)}, {layers}, "
              f"{human_bytes(result.size)}) into {printable(args.dest)}", file=sys.stderr)
    return 0
