"""The commands: each one's module, the functions that add its parser and run it, and
the line ``chrootarchive --help`` shows for it; and the usage error they all raise.

Apart from the commands' modules, so that the command line imports only the module of
the command it runs (and what that one needs), and lists the others from here.
"""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Container, Sequence

__all__ = ["COMMANDS", "HELP", "TAR_HABITS", "Formatter", "UsageError", "tar_habit_hint"]


#: The standard descriptors that were closed when the command line started (now
#: /dev/null, set by :func:`chrootarchive.cli.entry_point`): ``-`` then names a
#: closed standard input, not an empty archive.
closed_streams: frozenset[int] = frozenset()


class UsageError(Exception):
    """A command line that cannot run: reported as one line, exit status 2."""


#: name -> (module under chrootarchive.cli, function adding its parser, function running it)
COMMANDS = {
    "untar": ("untar", "add_parser", "run"),
    "apply-layer": ("layer", "add_parser", "run"),
    "unpack-image": ("image", "add_parser", "run"),
    "pull": ("pull", "add_parser", "run"),
    "tar": ("pack", "add_tar_parser", "run_tar"),
    "cp": ("pack", "add_cp_parser", "run_cp"),
    "list": ("listing", "add_parser", "run"),
}

class Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, told the terminal's width: left to find it, argparse imports
    ``shutil`` (and with it ``bz2``, ``lzma``, ``fnmatch``) for every parser it builds."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


def _columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


#: name -> its line in ``chrootarchive --help``
HELP = {
    "untar": "unpack a tar archive (plain or compressed) into a directory, confined",
    "apply-layer": "apply a container image layer (whiteouts included) onto a directory",
    "unpack-image": "unpack a container image (OCI layout or docker save archive) into a "
                    "root filesystem, every digest checked",
    "pull": "pull an image from a registry into a root filesystem, streamed into the "
            "jail, every digest checked",
    "tar": "make a tar archive of a directory or file, reading it from inside a jail",
    "cp": "copy a file or directory through a tar stream, both sides jailed",
    "list": "list the entries of a tar archive (like tar -t), unpacking nothing",
}


#: tar's options that these commands take another way, and the long ones among them.
_TAR_LETTERS = frozenset("xtcfzjJv")
_TAR_LONG = frozenset({"--file", "--extract", "--get", "--list", "--create", "--gzip",
                       "--gunzip", "--ungzip", "--bzip2", "--xz", "--lzma", "--zstd",
                       "--auto-compress"})
_DETECTED = "compression is detected from the data (no -z/-j/-J/--zstd)"

#: name -> the line after a usage error when its words hold tar's habits ("": no command)
TAR_HABITS = {
    "": "chrootarchive's commands name what tar's letters say: untar is tar -x, list is "
        "tar -t, tar is tar -c: chrootarchive untar [-v] ARCHIVE -C DIR",
    "untar": f"untar is tar -x: ARCHIVE is an argument, not -f; {_DETECTED}: "
             "chrootarchive untar [-v] ARCHIVE -C DIR",
    "list": f"list is tar -t: ARCHIVE is an argument, not -f; {_DETECTED}: "
            "chrootarchive list [-v] ARCHIVE",
    "apply-layer": f"LAYER is an argument, not -f; {_DETECTED}: "
                   "chrootarchive apply-layer [-v] LAYER DEST",
    "unpack-image": f"IMAGE is an argument, not -f; {_DETECTED}: "
                    "chrootarchive unpack-image [-v] IMAGE DEST",
    "tar": "tar is tar -c: the archive is -o OUT, not -f; compression follows OUT's suffix "
           "(.gz, .zst) or --compress (no -z/--zstd): chrootarchive tar -o OUT.tar.gz DIR",
}


def tar_habit_hint(command: str, words: Sequence[str],
                   known: Container[str] = ()) -> str | None:
    """``hint: ...`` for a command given tar's options (``-xzf A``, ``-t``, ``--zstd``,
    ``-vxf``): the command's way to say it, or None when ``words`` hold none of them.
    ``known``: the command's own options (``-v``, ``-k``), never taken for tar's."""
    hint = TAR_HABITS.get(command)
    if hint is None or not any(_tar_habit(word) for word in words if word not in known):
        return None
    return "hint: " + hint


def _tar_habit(word: str) -> bool:
    """``word`` is one of tar's options, or several of its letters (``-xvf``, ``-kxf``:
    ``-k`` is tar's, and these commands' own, letter)."""
    if word.startswith("--"):
        return word.partition("=")[0] in _TAR_LONG
    letters = set(word[1:])
    return (len(word) > 1 and word[0] == "-" and letters <= _TAR_LETTERS | {"k"}
            and not letters <= {"k"})
