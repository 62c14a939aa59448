"""The ``chrootarchive`` command line.

Every error is one line, ``chrootarchive: error: ENTRY: PROBLEM``, and an exit status:
0 done, 1 bad archive, 2 usage, 3 no confinement mechanism, 4 destination problem,
70 internal error. ``--debug`` adds tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from chrootarchive import untar, untar_uncompressed, untar_with_root
from chrootarchive.api import apply_layer_result
from chrootarchive.errors import ChrootArchiveError
from chrootarchive.options import IDMap, Limits, UnpackOptions, UnpackResult

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

    def __init__(self, total: int | None, enabled: bool) -> None:
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm  # type: ignore[import-untyped]
        except ImportError:
            return
        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                         delay=0.5, leave=False, file=sys.stderr, desc="unpacking")

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


def _report(result: UnpackResult, args: argparse.Namespace) -> None:
    if args.json:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
        return
    if not args.quiet:
        for warning in result.warnings:
            print(f"chrootarchive: warning: {warning}", file=sys.stderr)


def _error_line(err: BaseException) -> str:
    text = str(err) if isinstance(err, ChrootArchiveError) else f"{type(err).__name__}: {err}"
    text = " ".join(text.split())  # one line, whatever the entry name holds
    return "chrootarchive: error: " + textwrap.shorten(text, 2000, placeholder="...")


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "untar": _run_untar,
    "apply-layer": _run_apply_layer,
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
    sys.exit(main())
