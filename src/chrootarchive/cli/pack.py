"""``chrootarchive tar`` and ``chrootarchive cp``: pack a tree read from inside a jail,
and copy one through a tar stream with both sides jailed."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys

from chrootarchive.cli.args import (
    AUTO_READ,
    AUTO_UNPACK,
    UsageError,
    add_common,
    add_exclude_style,
    archive_input,
    checked,
    parse_id_map,
    parse_owner,
)
from chrootarchive.cli.commands import HELP, Formatter
from chrootarchive.cli.output import report
from chrootarchive.cli.progress import ByteProgress
from chrootarchive.errors import DestinationError
from chrootarchive.options import PackOptions, UnpackOptions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from chrootarchive.operations.copy import TarStream

_TAR_EPILOG = """\
examples:
  chrootarchive tar ./app -o app.tar.gz
  chrootarchive tar --root /var/lib/containers/c1/rootfs /etc -o etc.tar
  chrootarchive tar --root /containers/c1/rootfs /var/log/ --exclude '**/*.gz' > logs.tar
  chrootarchive tar ./tree --include bin --include lib --exclude 'lib/*.a' -o sub.tar.zst
  chrootarchive tar ./rootfs --uid-map 0:100000:65536 --gid-map 0:100000:65536 -o layer.tar

The reading side runs in a kernel jail at ROOT (or at SRC, or SRC's directory), walks
the tree by directory descriptors and never follows a symlink below SRC, so nothing
outside ROOT can be read, even by someone who swaps a directory for a symlink while it
runs. A directory's entries are named relative to it, as Docker's archives are
('tar -C SRC .'): 'chrootarchive tar ./app' holds 'bin/x', not 'app/bin/x'; add
'--rebase .=app --include-source-dir' for GNU tar's 'tar -c app'. A SRC that is a
symlink is packed as a symlink unless SRC ends with '/' or '/.'. Owners are numeric;
names are never looked up. Compression happens outside the jail. Sockets are skipped
with a warning, and so is OUT when it is inside SRC (as GNU tar's "file is the
archive; not dumped").

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

  chrootarchive cp --from-root /containers/c1/rootfs /etc - | gzip > etc.tar.gz
  zcat etc.tar.gz | chrootarchive cp --to-root /containers/c2/rootfs - /restore

As docker cp: SRC is copied to DST, or into DST (as DST/NAME) when DST is a directory
or ends with '/'; 'SRC/.' copies SRC's contents into DST. A directory is never copied
onto a file. SRC '-' reads a tar archive from standard input and unpacks it into DST;
DST '-' writes SRC as a tar archive (NAME at its top) to standard output. Directories
are copied whole (modes, numeric owners, times,
xattrs, hardlinks, devices); DST's parents are created if missing. The reading side is
jailed at --from-root (else at SRC or its directory) and follows no symlink below SRC;
the writing side is jailed at --to-root (else at DST's directory), so symlinks in
either root resolve inside it. A directory is never copied into itself.

exit status: 0 done, 1 a bad or hostile archive on standard input (SRC -) or a limit
crossed, 2 usage, 3 no confinement mechanism available, 4 source cannot be read or
destination cannot be written, 70 internal error.
"""

_SUFFIXES = ((".tar.gz", "gzip"), (".tgz", "gzip"), (".gz", "gzip"), (".tar.zst", "zstd"),
             (".tzst", "zstd"), (".zst", "zstd"))
#: Suffixes of compressions that ``tar`` reads (or GNU tar writes) but does not write:
#: an archive named so and written plain would fail later, far from here.
_UNWRITTEN = {".xz": "xz", ".txz": "xz", ".bz2": "bzip2", ".tbz": "bzip2", ".tbz2": "bzip2",
              ".tb2": "bzip2", ".lz": "lzip", ".lzma": "lzma", ".tlz": "lzma", ".lz4": "lz4",
              ".lzo": "lzop", ".z": "compress", ".taz": "compress", ".zip": "zip"}


def _rebase(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise argparse.ArgumentTypeError(f"expected OLD=NEW, got {text!r}")
    return old, new


def add_tar_parser(commands: Any) -> None:
    tar_p = commands.add_parser(
        "tar",
        help=HELP["tar"],
        description="Write a tar archive of SRC, read by a worker jailed at ROOT (or at\n"
                    "SRC), so that no symlink in the tree can make it read from outside.",
        epilog=_TAR_EPILOG,
        formatter_class=Formatter,
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
                          "(Docker's patterns: matched against the whole path from SRC, so "
                          "'*.gz' is at the top only and '**/*.gz' at any depth; "
                          "'!PATTERN' re-includes; repeatable, last match wins; see "
                          "--exclude-style)")
    add_exclude_style(sel, "SRC")
    sel.add_argument("--rebase", type=_rebase, action="append", default=[], metavar="OLD=NEW",
                     help="rename the prefix OLD of names to NEW ('.' renames SRC itself; "
                          "repeatable)")
    sel.add_argument("--include-source-dir", action="store_true",
                     help="also write an entry './' for SRC itself (its mode, owner, times)")
    own = tar_p.add_argument_group("ownership and metadata (numeric owners only)")
    own.add_argument("--chown", type=parse_owner, metavar="UID:GID",
                     help="write every entry with this owner")
    own.add_argument("--uid-map", type=parse_id_map, action="append", default=[],
                     metavar="CONTAINER:HOST:SIZE",
                     help="write host uid HOST+n as CONTAINER+n (repeatable); a uid outside "
                          "every range fails")
    own.add_argument("--gid-map", type=parse_id_map, action="append", default=[],
                     metavar="CONTAINER:HOST:SIZE", help="the same for gids")
    own.add_argument("--no-xattrs", action="store_true",
                     help="leave extended attributes (security.capability...) out")
    own.add_argument("--whole-second-mtimes", action="store_true",
                     help="truncate times to whole seconds, as Docker does (reproducible "
                          "layers)")
    own.add_argument("-S", "--sparse", action="store_true",
                     help="write the holes of sparse files as holes, as GNU tar's "
                          "--sparse (PAX GNU sparse 1.0: GNU tar, bsdtar, Python's tarfile "
                          "and Go read it); without it, a hole is written as zeros")
    add_common(tar_p, AUTO_READ)


def add_cp_parser(commands: Any) -> None:
    cp_p = commands.add_parser(
        "cp",
        help=HELP["cp"],
        description="Copy SRC to DST (as docker cp): a worker jailed at --from-root reads\n"
                    "SRC, another jailed at --to-root writes DST.",
        epilog=_CP_EPILOG,
        formatter_class=Formatter,
    )
    cp_p.add_argument("src", metavar="SRC",
                      help="what to copy (inside --from-root if given); - for a tar archive "
                           "on stdin")
    cp_p.add_argument("dst", metavar="DST",
                      help="where to copy it (inside --to-root if given); - for a tar "
                           "archive on stdout")
    cp_p.add_argument("--from-root", metavar="ROOT",
                      help="jail the reading side at ROOT and resolve SRC inside it")
    cp_p.add_argument("--to-root", metavar="ROOT",
                      help="jail the writing side at ROOT and resolve DST inside it")
    cp_sel = cp_p.add_argument_group("selection and ownership")
    cp_sel.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="skip paths below SRC matching PATTERN (as for 'tar'; "
                             "repeatable; see --exclude-style)")
    add_exclude_style(cp_sel, "SRC")
    cp_sel.add_argument("--chown", type=parse_owner, metavar="UID:GID",
                        help="give every copy this owner instead of the source's")
    cp_sel.add_argument("--no-lchown", action="store_true",
                        help="do not set owners: copies belong to the user running this")
    add_common(cp_p, f"reading, {AUTO_READ}; writing, {AUTO_UNPACK}")


def _pack_options(args: argparse.Namespace, compression: str) -> PackOptions:
    return checked(
        PackOptions,
        include_files=tuple(args.include),
        excludes=tuple(args.exclude), exclude_style=args.exclude_style,
        rebase_names=dict(args.rebase),
        include_source_dir=args.include_source_dir,
        chown=args.chown,
        uid_maps=tuple(args.uid_map),
        gid_maps=tuple(args.gid_map),
        compression=compression,
        xattrs=not args.no_xattrs,
        whole_second_mtimes=args.whole_second_mtimes,
        sparse=args.sparse,
        confine=args.confine,
    )


def run_tar(args: argparse.Namespace) -> int:
    to_stdout = args.output == "-"
    compression = args.compress
    if compression == "auto":
        name = "" if to_stdout else args.output.lower()
        compression = next((kind for suffix, kind in _SUFFIXES if name.endswith(suffix)),
                           "none")
        unwritten = _UNWRITTEN.get(os.path.splitext(name)[1])
        if compression == "none" and unwritten is not None:
            raise UsageError(f"{args.output}: cannot write {unwritten} (tar writes gzip: "
                             ".tar.gz, .tgz; zstd: .tar.zst, .tzst); name the file so, "
                             "or give --compress none to write it uncompressed anyway")
    if to_stdout and args.json:
        raise UsageError("--json needs -o FILE: standard output holds the archive")
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write an archive to a terminal (use -o FILE, or a pipe)")
    options = _pack_options(args, compression)
    from chrootarchive.operations.copy import tar

    bar = ByteProgress(None, enabled=not args.quiet and sys.stderr.isatty(), desc="packing")
    where = "standard output" if to_stdout else args.output
    try:
        # The output is opened first: when it is inside SRC, it is not packed into itself.
        with _output(args.output) as (fds, final_name), tar(
                args.src, args.root, options, progress=bar.update, archive_fds=fds,
                archive_name=final_name) as stream:
            _copy_out(stream, fds[0], where)
            result = stream.result
    finally:
        bar.close()
    assert result is not None
    report(result, args)
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


@contextlib.contextmanager
def _output(path: str) -> Iterator[tuple[tuple[int, ...], str | None]]:
    """Descriptors of where the archive goes (the first is written, and any other is
    the file it will replace), and the name the first will be renamed to, if it is. A
    regular file appears whole or not at all: it is written beside, then renamed into
    place; standard output, a device or a FIFO is written directly."""
    if path == "-":
        sys.stdout.flush()
        yield (sys.stdout.fileno(),), None
        return
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
            yield (fd,), None
        finally:
            os.close(fd)
        return
    directory, name = os.path.split(os.path.abspath(path))
    try:
        fd, partial = _create_beside(directory, name)
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise DestinationError(f"cannot create the archive: {reason}", path) from err
    replaced = -1
    try:
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)
            with contextlib.suppress(OSError):  # none yet, or not ours to read
                replaced = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            if replaced >= 0 and os.fstat(replaced).st_nlink != 1:
                # A symlink is replaced, not what it names; a file with other names
                # keeps them, and is packed by them.
                os.close(replaced)
                replaced = -1
            yield ((fd,) if replaced < 0 else (fd, replaced)), name
        finally:
            os.close(fd)
            if replaced >= 0:
                os.close(replaced)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _create_beside(directory: str, name: str) -> tuple[int, str]:
    """A new file ``.NAME.RANDOM.partial`` in ``directory``, as ``tempfile.mkstemp``
    makes one (eight random characters, mode 0600, ``O_EXCL``, ``O_NOFOLLOW``, another
    name if it exists); without ``tempfile``, whose ``shutil`` and ``random`` were 6 ms
    of ``tar``'s start."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        partial = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.partial")
        try:
            return os.open(partial, flags, 0o600), partial
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused name for the partial archive", directory)


def run_cp(args: argparse.Namespace) -> int:
    if args.src == "-" and args.dst == "-":
        raise UsageError("SRC and DST cannot both be - (use a pipe: tar ... | untar ...)")
    if args.dst == "-":
        return _cp_to_stdout(args)
    pack_options = checked(PackOptions, excludes=tuple(args.exclude),
                           exclude_style=args.exclude_style, confine=args.confine)
    options = checked(UnpackOptions, chown=args.chown, no_lchown=args.no_lchown,
                      confine=args.confine)
    if args.src == "-":
        # docker cp's rules for a stream too: a file never replaces a directory nor a
        # directory a file; --exclude applies to what is unpacked.
        return _cp_from_stdin(args, checked(
            UnpackOptions, chown=args.chown, no_lchown=args.no_lchown, confine=args.confine,
            excludes=tuple(args.exclude), exclude_style=args.exclude_style,
            no_overwrite_dir_nondir=True))
    from chrootarchive.operations.copy import copy_path

    bar = ByteProgress(None, enabled=not args.quiet and not args.json and sys.stderr.isatty(),
                       desc="copying")
    try:
        result = copy_path(args.src, args.dst, src_root=args.from_root,
                           dst_root=args.to_root, options=options,
                           pack_options=pack_options, progress=bar.update)
    finally:
        bar.close()
    report(result, args)
    return 0


def _cp_to_stdout(args: argparse.Namespace) -> int:
    """docker cp's ``SRC -``: SRC as a tar archive on stdout, named after SRC at its top
    (its contents for ``SRC/.``), as ``docker cp CONTAINER:SRC -`` writes it."""
    if args.json:
        raise UsageError("--json needs a DST: standard output holds the archive")
    if sys.stdout.isatty():
        raise UsageError("refusing to write an archive to a terminal (use a pipe)")
    if args.to_root is not None:
        raise UsageError("--to-root needs a DST: standard output is not in a root")
    from chrootarchive.operations.copy import copies_contents, tar

    source = args.src
    name = os.path.basename(os.path.normpath(source))
    options = checked(PackOptions, excludes=tuple(args.exclude),
                      exclude_style=args.exclude_style, confine=args.confine,
                      chown=args.chown, include_source_dir=True,
                      rebase_names={} if copies_contents(source) else {".": name})

    with _output("-") as (fds, _), tar(source, args.from_root, options,
                                       archive_fds=fds) as stream:
        _copy_out(stream, fds[0], "standard output")
        result = stream.result
    assert result is not None
    report(result, args)
    return 0


def _cp_from_stdin(args: argparse.Namespace, options: UnpackOptions) -> int:
    """docker cp's ``- DST``: a tar archive on stdin (compressed or not) unpacked into
    the directory DST."""
    if args.from_root is not None:
        raise UsageError("--from-root needs a SRC: standard input is not in a root")
    from chrootarchive.operations.untar import untar, untar_with_root

    source = archive_input("-")
    bar = ByteProgress(None, enabled=not args.quiet and not args.json and sys.stderr.isatty(),
                       desc="copying")
    try:
        if args.to_root is None:
            result = untar(source, args.dst, options, progress=bar.update)
        else:
            result = untar_with_root(source, args.dst, args.to_root, options,
                                     progress=bar.update)
    finally:
        bar.close()
    report(result, args)
    return 0
