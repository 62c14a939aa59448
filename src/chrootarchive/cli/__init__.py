"""The ``chrootarchive`` command line.

Every error is one line, ``chrootarchive: error: ENTRY: PROBLEM``, and an exit status:
0 done, 1 bad archive, 2 usage, 3 no confinement mechanism, 4 destination (or, for
``tar`` and ``cp``, source) problem, 70 internal error. ``--debug`` adds tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
from dataclasses import replace

from chrootarchive import untar, untar_uncompressed, untar_with_root
from chrootarchive.errors import ChrootArchiveError, DestinationError
from chrootarchive.jail.confine import MECHANISMS
from chrootarchive.operations.untar import apply_layer_result
from chrootarchive.options import (
    DEFAULT_MAX_LAYERS,
    IDMap,
    Limits,
    PackOptions,
    UnpackOptions,
    UnpackResult,
)

# What only some commands need is imported by them (``image``, ``copy``): a one-file
# untar should not pay for loading the rest.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from chrootarchive.image import ImageResult, LayerProgress
    from chrootarchive.operations.copy import TarStream

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERNAL = 70

_DESCRIPTION = """\
Unpack untrusted tar archives and container layers into a directory, with the
confinement enforced by the kernel: the process that writes the files sees nothing
but the destination, and nothing from the archive ever runs.
"""

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


_LAYER_EPILOG = """\
examples:
  chrootarchive apply-layer layer1.tar.gz /var/lib/images/x/rootfs
  chrootarchive apply-layer --whiteout-format overlay layer2.tar.zst /var/lib/overlay/l2/diff

exit status: as for 'chrootarchive untar'.
"""


def _id_map(text: str) -> IDMap:
    try:
        container, host, size = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected CONTAINER_ID:HOST_ID:SIZE, got {text!r}"
        ) from None
    if container < 0 or host < 0 or size <= 0:
        raise argparse.ArgumentTypeError(f"ids must be >= 0 and size > 0: {text!r}")
    return IDMap(container, host, size)


def _owner(text: str) -> tuple[int, int]:
    try:
        uid, gid = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numeric UID:GID (names are never looked up), got {text!r}"
        ) from None
    if uid < 0 or gid < 0:
        raise argparse.ArgumentTypeError(f"ids must be >= 0: {text!r}")
    return uid, gid


def _add_common(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="print nothing but errors (no warnings, no progress bar)")
    out.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    out.add_argument(
        "--confine", default="auto", metavar="MECHANISM",
        choices=("auto", *MECHANISMS),
        help="confinement mechanism: auto (default: the strongest available: pivot as "
             "root, else userns, else openat2), pivot (mount namespace + pivot_root, "
             "needs root), chroot (needs root), userns (unprivileged user namespace + "
             "pivot_root), openat2 (in-process, every path resolved with "
             "RESOLVE_IN_ROOT; Linux 5.6+)",
    )


def _add_unpack_options(parser: argparse.ArgumentParser) -> None:
    own = parser.add_argument_group("ownership (numeric only)")
    own.add_argument("--no-lchown", action="store_true",
                     help="do not change owners: files belong to the user running this")
    own.add_argument("--chown", type=_owner, metavar="UID:GID",
                     help="give every entry this owner instead of the archive's")
    own.add_argument("--uid-map", type=_id_map, action="append", default=[],
                     metavar="CONTAINER:HOST:SIZE",
                     help="map archive uids to host uids (repeatable); unmapped uids fail")
    own.add_argument("--gid-map", type=_id_map, action="append", default=[],
                     metavar="CONTAINER:HOST:SIZE", help="the same for gids")
    own.add_argument("--rootless-xattr", action="store_true",
                     help="unprivileged: record owners that could not be applied in the "
                          "user.rootlesscontainers xattr (umoci's convention)")
    sel = parser.add_argument_group("selection and replacement")
    sel.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                     help="skip entries matching PATTERN and everything below them "
                          "(glob, '**' across directories, '!PATTERN' re-includes; "
                          "repeatable, last match wins)")
    sel.add_argument("--no-overwrite-dir-nondir", action="store_true",
                     help="fail instead of replacing a directory by a non-directory "
                          "or the reverse")
    sel.add_argument("--best-effort-xattrs", action="store_true",
                     help="skip xattrs that the destination filesystem does not support")
    sel.add_argument("--data-only", action="store_true",
                     help="unpack data, not a root filesystem: no device nodes, no "
                          "setuid/setgid/sticky bits, no security.*/trusted.* xattrs, owners "
                          "left to the user running this (what is dropped is reported)")
    sel.add_argument("--atomic", action="store_true",
                     help="all or nothing: unpack beside DEST and rename into place only "
                          "when everything succeeded (DEST must be missing or empty)")
    lim = parser.add_argument_group(
        "limits (crossing one stops the work: exit status 1; SIZE takes K, M, G, T)")
    defaults = Limits()
    lim.add_argument("--max-bytes", type=_size, metavar="SIZE",
                     help=f"file data written in total (default {_human(defaults.max_bytes)})")
    lim.add_argument("--max-entries", type=_count, metavar="N",
                     help=f"archive entries (default {defaults.max_entries:,})")
    lim.add_argument("--max-file-size", type=_size, metavar="SIZE",
                     help=f"one file (default {_human(defaults.max_file_size)})")
    lim.add_argument("--max-path-length", type=_count, metavar="N",
                     help=f"bytes in a name (default {defaults.max_path_length})")
    lim.add_argument("--max-path-depth", type=_count, metavar="N",
                     help=f"directories in a name (default {defaults.max_path_depth})")
    lim.add_argument("--max-xattr-bytes", type=_size, metavar="SIZE",
                     help=f"one entry's xattrs (default {_human(defaults.max_xattr_bytes)})")
    lim.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="wall-clock time for the whole operation (default: none)")
    lim.add_argument("--strict-limits", action="store_true",
                     help="start from limits for untrusted downloads (4G bytes, 100,000 "
                          "entries, 1 hour) instead of the container-sized defaults")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chrootarchive",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    untar_p = commands.add_parser(
        "untar",
        help="unpack a tar archive (plain or compressed) into a directory, confined",
        description="Unpack ARCHIVE into DEST from inside a kernel jail at DEST "
                    "(or at --root).",
        epilog=_UNTAR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    untar_p.add_argument("archive", metavar="ARCHIVE", help="the archive file, or - for stdin")
    untar_p.add_argument("dest", metavar="DEST", help="the destination directory")
    untar_p.add_argument("--root", metavar="ROOT",
                         help="jail at ROOT and resolve DEST inside it (as docker cp does)")
    untar_p.add_argument("--uncompressed", action="store_true",
                         help="the input is plain tar: do not detect compression")
    _add_unpack_options(untar_p)
    _add_common(untar_p)

    layer_p = commands.add_parser(
        "apply-layer",
        help="apply a container image layer (whiteouts included) onto a directory",
        description="Apply LAYER onto DEST from inside a kernel jail at DEST: '.wh.NAME' "
                    "entries remove NAME from what lower layers left, '.wh..wh..opq' "
                    "empties its directory of it. Prints the applied size (the sum of "
                    "the entries' sizes, as Docker reports it).",
        epilog=_LAYER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    layer_p.add_argument("layer", metavar="LAYER", help="the layer (tar, compressed or not; - "
                                                       "for stdin)")
    layer_p.add_argument("dest", metavar="DEST", help="the directory holding the lower layers")
    layer_p.add_argument(
        "--whiteout-format", choices=("aufs", "overlay"), default="aufs",
        help="aufs (default): apply whiteouts to DEST; overlay: write overlayfs whiteouts "
             "(0/0 character devices, trusted.overlay.opaque) for a per-layer diff directory",
    )
    _add_unpack_options(layer_p)
    _add_common(layer_p)
    _add_image_command(commands)
    _add_pack_commands(commands)
    return parser


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 512M or 4G, got {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"a size must be >= 0: {text!r}")
    return int(number * _UNITS[unit])


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _human(value: int | None) -> str:
    if value is None:
        return "none"
    for unit in ("T", "G", "M", "K"):
        if value >= _UNITS[unit] and value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit}"
    return str(value)


def _limits(args: argparse.Namespace) -> Limits:
    limits = Limits.strict() if args.strict_limits else Limits()
    changes = {
        name: getattr(args, name)
        for name in ("max_bytes", "max_entries", "max_file_size", "max_path_length",
                     "max_path_depth", "max_xattr_bytes", "timeout")
        if getattr(args, name) is not None
    }
    return replace(limits, **changes)


def _unpack_options(args: argparse.Namespace) -> UnpackOptions:
    return UnpackOptions(
        limits=_limits(args),
        data_only=args.data_only,
        atomic=args.atomic,
        whiteout_format=getattr(args, "whiteout_format", "aufs"),
        no_lchown=args.no_lchown,
        chown=args.chown,
        uid_maps=tuple(args.uid_map),
        gid_maps=tuple(args.gid_map),
        excludes=tuple(args.exclude),
        no_overwrite_dir_nondir=args.no_overwrite_dir_nondir,
        best_effort_xattrs=args.best_effort_xattrs,
        confine=args.confine,
        rootless_xattr=args.rootless_xattr,
    )


class _Progress:
    """A progress bar on stderr, only on a terminal and only once work takes a moment."""

    def __init__(self, total: int | None, enabled: bool, desc: str = "unpacking") -> None:
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm  # type: ignore[import-untyped]
        except ImportError:
            return
        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                         delay=0.5, leave=False, file=sys.stderr, desc=desc)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _source_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size if path != "-" else None
    except OSError:
        return None


def _run_untar(args: argparse.Namespace) -> int:
    options = _unpack_options(args)
    bar = _Progress(_source_size(args.archive),
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
    _report(result, args)
    return 0


def _run_apply_layer(args: argparse.Namespace) -> int:
    bar = _Progress(_source_size(args.layer),
                    enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        result = apply_layer_result(args.dest, args.layer, _unpack_options(args),
                                    progress=bar.update)
    finally:
        bar.close()
    _report(result, args)
    if not args.json:
        print(result.size)
    return 0


_IMAGE_EPILOG = """\
examples:
  skopeo copy docker://debian:bookworm oci:debian:bookworm
  chrootarchive unpack-image --ref bookworm debian /srv/rootfs/debian
  docker save -o app.tar example/app:1.0 && chrootarchive unpack-image app.tar ./app-root
  chrootarchive unpack-image --platform linux/arm64/v8 --json multiarch.tar ./root
  docker save example/app | chrootarchive unpack-image --ref example/app:latest - ./root

IMAGE is an OCI image layout (a directory holding oci-layout, index.json and blobs/,
or a tar of one) or a 'docker save' archive (classic, or Docker 25+'s OCI layout);
tars may be compressed; - reads standard input. The image tar is never extracted: its
members are read in place. Every document and blob is checked against its digest and
size, and every layer's uncompressed stream against the config's DiffID. Layers are
applied in order, each by a worker jailed at DEST, whiteouts included. Nothing but the
digest and DiffID of a layer can be checked before it is written: with --atomic, DEST
appears only when every layer was verified.

exit status: 0 done, 1 bad or hostile image (digest mismatch, missing blob, unknown
media type, too many layers...), 2 usage, 3 no confinement mechanism available,
4 destination problem, 70 internal error.
"""


def _platform_arg(text: str) -> str:
    from chrootarchive.image import parse_platform

    try:
        return parse_platform(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_image_command(commands: Any) -> None:
    image_p = commands.add_parser(
        "unpack-image",
        help="unpack a container image (OCI layout or docker save archive) into a "
             "root filesystem, every digest checked",
        description="Select one image of IMAGE by reference and platform, check it, and "
                    "apply its layers in order onto DEST, each from inside a kernel jail "
                    "at DEST.",
        epilog=_IMAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    sel.add_argument("--platform", type=_platform_arg, metavar="OS/ARCH[/VARIANT]",
                     help="the platform to pick in image indexes (default: this machine's, "
                          "e.g. linux/amd64); an image for another platform is then an "
                          "error instead of a warning")
    sel.add_argument("--max-layers", type=_count, default=DEFAULT_MAX_LAYERS, metavar="N",
                     help=f"refuse manifests with more layers (default {DEFAULT_MAX_LAYERS:,})")
    _add_unpack_options(image_p)
    _add_common(image_p)


class _LayerBars:
    """One progress bar per layer on stderr (a terminal only)."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None
        self._index = -1
        self._done = 0
        self._tqdm: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._tqdm = tqdm

    def __call__(self, event: LayerProgress) -> None:
        if not self._enabled:
            return
        label = f"layer {event.index + 1}/{event.count} {event.digest.partition(':')[2][:12]}"
        if self._tqdm is None:
            if event.finished:
                print(f"{label}: applied", file=sys.stderr)
            return
        if event.index != self._index:
            self.close()
            self._index = event.index
            self._done = 0
            self._bar = self._tqdm(total=event.total, unit="B", unit_scale=True,
                                   unit_divisor=1024, leave=True, file=sys.stderr,
                                   desc=label)
        self._bar.update(event.done - self._done)
        self._done = event.done
        if event.finished:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _run_unpack_image(args: argparse.Namespace) -> int:
    from chrootarchive.image import unpack_image

    options = _unpack_options(args)
    bars = _LayerBars(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        result: ImageResult = unpack_image(
            args.image, args.dest, ref=args.ref, platform=args.platform, options=options,
            progress=bars, max_layers=args.max_layers,
        )
    finally:
        bars.close()
    if args.json:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
        return 0
    if not args.quiet:
        for warning in result.warnings:
            print(f"chrootarchive: warning: {warning}", file=sys.stderr)
        if sys.stderr.isatty():
            name = result.ref or result.manifest_digest or result.config_digest
            print(f"unpacked {name} ({result.platform}, {len(result.layers)} layers, "
                  f"{_human_bytes(result.size)}) into {args.dest}", file=sys.stderr)
    return 0


def _human_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _report(result: UnpackResult, args: argparse.Namespace) -> None:
    if args.json:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
        return
    if not args.quiet:
        for warning in result.warnings:
            print(f"chrootarchive: warning: {warning}", file=sys.stderr)


_TAR_EPILOG = """\
examples:
  chrootarchive tar ./app -o app.tar.gz
  chrootarchive tar --root /var/lib/containers/c1/rootfs /etc -o etc.tar
  chrootarchive tar --root /containers/c1/rootfs /var/log/ --exclude '*.gz' > logs.tar
  chrootarchive tar ./tree --include bin --include lib --exclude 'lib/*.a' -o sub.tar.zst
  chrootarchive tar ./rootfs --uid-map 0:100000:65536 --gid-map 0:100000:65536 -o layer.tar

The reading side runs in a kernel jail at ROOT (or at SRC, or SRC's directory), walks
the tree by directory descriptors and never follows a symlink below SRC, so nothing
outside ROOT can be read, even by someone who swaps a directory for a symlink while it
runs. SRC's last component is packed as it is (a symlink as a symlink) unless SRC ends
with '/' or '/.'. Owners are numeric; names are never looked up. Compression happens
outside the jail. Sockets are skipped with a warning.

exit status: 0 done, 2 usage, 3 no confinement mechanism available, 4 source cannot be
read or output cannot be written, 70 internal error.
"""

_CP_EPILOG = """\
examples:
  chrootarchive cp ./site /srv/www/site
  chrootarchive cp --from-root /containers/c1/rootfs /etc/nginx ./nginx-conf
  chrootarchive cp --from-root /containers/c1/rootfs /var/log/app.log ./logs/
  chrootarchive cp --to-root /containers/c2/rootfs ./config/. /etc/app
  chrootarchive cp --from-root /containers/c1/rootfs --to-root /containers/c2/rootfs /data /data

SRC is copied to DST, or into DST when DST ends with '/' (as DST/NAME); 'SRC/.' copies
SRC's contents into DST. Directories are copied whole (modes, numeric owners, times,
xattrs, hardlinks, devices); DST's parents are created if missing. The reading side is
jailed at --from-root (else at SRC or its directory) and follows no symlink below SRC;
the writing side is jailed at --to-root (else at DST's directory), so symlinks in
either root resolve inside it.

exit status: 0 done, 2 usage, 3 no confinement mechanism available, 4 source cannot be
read or destination cannot be written, 70 internal error.
"""

_SUFFIXES = ((".tar.gz", "gzip"), (".tgz", "gzip"), (".gz", "gzip"), (".tar.zst", "zstd"),
             (".tzst", "zstd"), (".zst", "zstd"))


def _rebase(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise argparse.ArgumentTypeError(f"expected OLD=NEW, got {text!r}")
    return old, new


def _add_pack_commands(commands: Any) -> None:
    tar_p = commands.add_parser(
        "tar",
        help="make a tar archive of a directory or file, reading it from inside a jail",
        description="Write a tar archive of SRC, read by a worker jailed at ROOT (or at\n"
                    "SRC), so that no symlink in the tree can make it read from outside.",
        epilog=_TAR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tar_p.add_argument("src", metavar="SRC",
                       help="the directory or file to pack (a path inside ROOT with --root)")
    tar_p.add_argument("--root", metavar="ROOT",
                       help="jail the reading side at ROOT and resolve SRC inside it "
                            "(copying out of a container's root filesystem)")
    tar_p.add_argument("-o", "--output", metavar="OUT", default="-",
                       help="write the archive to OUT (default: - for standard output, "
                            "refused on a terminal)")
    tar_p.add_argument("--compress", choices=("auto", "gzip", "zstd", "none"), default="auto",
                       help="auto (default): from OUT's suffix (.gz, .tgz: gzip; .zst, "
                            ".tzst: zstd), none for standard output")
    sel = tar_p.add_argument_group("selection and names")
    sel.add_argument("--include", action="append", default=[], metavar="PATH",
                     help="pack only PATH below SRC (repeatable); an included path is "
                          "packed even if an --exclude pattern matches it")
    sel.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                     help="skip paths below SRC matching PATTERN and everything below them "
                          "(glob, '**' across directories, '!PATTERN' re-includes; "
                          "repeatable, last match wins)")
    sel.add_argument("--rebase", type=_rebase, action="append", default=[], metavar="OLD=NEW",
                     help="rename the prefix OLD of names to NEW ('.' renames SRC itself; "
                          "repeatable)")
    sel.add_argument("--include-source-dir", action="store_true",
                     help="also write an entry './' for SRC itself (its mode, owner, times)")
    own = tar_p.add_argument_group("ownership and metadata (numeric owners only)")
    own.add_argument("--chown", type=_owner, metavar="UID:GID",
                     help="write every entry with this owner")
    own.add_argument("--uid-map", type=_id_map, action="append", default=[],
                     metavar="CONTAINER:HOST:SIZE",
                     help="write host uid HOST+n as CONTAINER+n (repeatable); a uid outside "
                          "every range fails")
    own.add_argument("--gid-map", type=_id_map, action="append", default=[],
                     metavar="CONTAINER:HOST:SIZE", help="the same for gids")
    own.add_argument("--no-xattrs", action="store_true",
                     help="leave extended attributes (security.capability...) out")
    own.add_argument("--whole-second-mtimes", action="store_true",
                     help="truncate times to whole seconds, as Docker does (reproducible "
                          "layers)")
    _add_common(tar_p)

    cp_p = commands.add_parser(
        "cp",
        help="copy a file or directory through a tar stream, both sides jailed",
        description="Copy SRC to DST (as docker cp): a worker jailed at --from-root reads\n"
                    "SRC, another jailed at --to-root writes DST.",
        epilog=_CP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp_p.add_argument("src", metavar="SRC", help="what to copy (inside --from-root if given)")
    cp_p.add_argument("dst", metavar="DST", help="where to copy it (inside --to-root if given)")
    cp_p.add_argument("--from-root", metavar="ROOT",
                      help="jail the reading side at ROOT and resolve SRC inside it")
    cp_p.add_argument("--to-root", metavar="ROOT",
                      help="jail the writing side at ROOT and resolve DST inside it")
    cp_sel = cp_p.add_argument_group("selection and ownership")
    cp_sel.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="skip paths below SRC matching PATTERN (as for 'tar')")
    cp_sel.add_argument("--chown", type=_owner, metavar="UID:GID",
                        help="give every copy this owner instead of the source's")
    cp_sel.add_argument("--no-lchown", action="store_true",
                        help="do not set owners: copies belong to the user running this")
    _add_common(cp_p)


def _one_line_usage(message: str) -> int:
    print(f"chrootarchive: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _pack_options(args: argparse.Namespace, compression: str) -> PackOptions:
    return PackOptions(
        include_files=tuple(args.include),
        excludes=tuple(args.exclude),
        rebase_names=dict(args.rebase),
        include_source_dir=args.include_source_dir,
        chown=args.chown,
        uid_maps=tuple(args.uid_map),
        gid_maps=tuple(args.gid_map),
        compression=compression,
        xattrs=not args.no_xattrs,
        whole_second_mtimes=args.whole_second_mtimes,
        confine=args.confine,
    )


def _run_tar(args: argparse.Namespace) -> int:
    to_stdout = args.output == "-"
    compression = args.compress
    if compression == "auto":
        name = "" if to_stdout else args.output.lower()
        compression = next((kind for suffix, kind in _SUFFIXES if name.endswith(suffix)),
                           "none")
    if to_stdout and args.json:
        return _one_line_usage("--json needs -o FILE: standard output holds the archive")
    if to_stdout and sys.stdout.isatty():
        return _one_line_usage("refusing to write an archive to a terminal "
                               "(use -o FILE, or a pipe)")
    try:
        options = _pack_options(args, compression)
    except ValueError as err:
        return _one_line_usage(str(err))
    from chrootarchive.operations.copy import tar

    bar = _Progress(None, enabled=not args.quiet and sys.stderr.isatty(), desc="packing")
    try:
        with tar(args.src, args.root, options, progress=bar.update) as stream:
            if to_stdout:
                sys.stdout.flush()
                _copy_out(stream, sys.stdout.fileno(), "standard output")
            else:
                _write_file(stream, args.output)
            result = stream.result
    finally:
        bar.close()
    assert result is not None
    if args.json:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
    elif not args.quiet:
        for warning in result.warnings:
            print(f"chrootarchive: warning: {warning}", file=sys.stderr)
    return 0


def _copy_out(stream: TarStream, fd: int, where: str) -> None:
    """Write the whole stream to ``fd``, unbuffered (an error is met once, here)."""
    while True:
        data = stream.read(1 << 20)
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except OSError as err:
                reason = (err.strerror or str(err)).lower()
                raise DestinationError(f"cannot write the archive: {reason}", where) from err
            view = view[written:]


def _write_file(stream: TarStream, path: str) -> None:
    """Write the archive to ``path``: a regular file appears whole or not at all (it is
    written beside and renamed into place); a device or FIFO is written directly."""
    try:
        st: os.stat_result | None = os.stat(path)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise DestinationError(f"cannot open the output: {reason}", path) from err
        try:
            _copy_out(stream, fd, path)
        finally:
            os.close(fd)
        return
    directory, name = os.path.split(os.path.abspath(path))
    try:
        import tempfile

        fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory)
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise DestinationError(f"cannot create the archive: {reason}", path) from err
    try:
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)
            _copy_out(stream, fd, path)
        finally:
            os.close(fd)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _run_cp(args: argparse.Namespace) -> int:
    try:
        pack_options = PackOptions(excludes=tuple(args.exclude), confine=args.confine)
    except ValueError as err:
        return _one_line_usage(str(err))
    options = UnpackOptions(chown=args.chown, no_lchown=args.no_lchown, confine=args.confine)
    bar = _Progress(None, enabled=not args.quiet and not args.json and sys.stderr.isatty(),
                    desc="copying")
    from chrootarchive.operations.copy import copy_path

    try:
        result = copy_path(args.src, args.dst, src_root=args.from_root,
                           dst_root=args.to_root, options=options,
                           pack_options=pack_options, progress=bar.update)
    finally:
        bar.close()
    _report(result, args)
    return 0


def _error_line(err: BaseException) -> str:
    text = str(err) if isinstance(err, ChrootArchiveError) else f"{type(err).__name__}: {err}"
    text = " ".join(text.split())  # one line, whatever the entry name holds
    import textwrap

    return "chrootarchive: error: " + textwrap.shorten(text, 2000, placeholder="...")


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "untar": _run_untar,
    "apply-layer": _run_apply_layer,
    "unpack-image": _run_unpack_image,
    "tar": _run_tar,
    "cp": _run_cp,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (callable from tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["CHROOTARCHIVE_DEBUG"] = "1"
    try:
        return _COMMANDS[args.command](args)
    except ChrootArchiveError as err:
        if args.debug:
            raise
        print(_error_line(err), file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("chrootarchive: error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(_error_line(err) + " (this is a bug: please report it with --debug output)",
              file=sys.stderr)
        return EXIT_INTERNAL


def entry_point() -> None:
    code = main()
    # Exit without interpreter shutdown: a feeding thread may still be blocked reading
    # standard input (a worker that stopped early), and finalizing would wait on it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
