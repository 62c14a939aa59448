"""The command line's entry: the parser, the dispatch to a command, and the mapping of
errors to one line on stderr and an exit status.

Parsing needs only the options and the mechanisms' names; a command's operation (and
whatever it imports) is loaded by its ``run`` once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import os
import sys

from chrootarchive.cli import image, layer, listing, pack, untar
from chrootarchive.cli.args import UsageError
from chrootarchive.errors import ChrootArchiveError, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

EXIT_USAGE = 2

EXIT_INTERNAL = 70

_DESCRIPTION = """\
Unpack untrusted tar archives and container layers into a directory, with the
confinement enforced by the kernel: the process that writes the files sees nothing
but the destination, and nothing from the archive ever runs.
"""


def _version_line() -> str:
    """``chrootarchive 0.2.0 (Python 3.11.7, Linux 6.1.0 x86_64)``: what a bug report needs."""
    from chrootarchive import __version__

    uname = os.uname()
    python = ".".join(str(part) for part in sys.version_info[:3])
    return (f"chrootarchive {__version__} (Python {python}, "
            f"{uname.sysname} {uname.release} {uname.machine})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chrootarchive",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version_line())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    untar.add_parser(commands)
    layer.add_parser(commands)
    image.add_parser(commands)
    pack.add_parsers(commands)
    listing.add_parser(commands)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "untar": untar.run,
    "apply-layer": layer.run,
    "unpack-image": image.run,
    "tar": pack.run_tar,
    "cp": pack.run_cp,
    "list": listing.run,
}


def _one_line(text: str) -> str:
    """``chrootarchive: error: TEXT`` on one line, whatever the entry name holds.

    Names are shortened in the middle where they are formatted (``errors.printable``);
    here only controls are escaped, so the problem text always shows.
    """
    return "chrootarchive: error: " + printable(text, 0)


def _error_line(err: BaseException) -> str:
    return _one_line(str(err) if isinstance(err, ChrootArchiveError)
                     else f"{type(err).__name__}: {printable(str(err))}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (callable from tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        from chrootarchive.runner.settings import set_debug

        set_debug(True)
    try:
        return _COMMANDS[args.command](args)
    except UsageError as err:
        return _fail(args, "UsageError", _one_line(str(err)), EXIT_USAGE, str(err))
    except ChrootArchiveError as err:
        if args.debug:
            raise
        return _fail(args, type(err).__name__, _error_line(err), err.exit_status,
                     printable(err.message, 0), err.entry)
    except KeyboardInterrupt:
        return _fail(args, "KeyboardInterrupt", "chrootarchive: error: interrupted", 130,
                     "interrupted")
    except Exception as err:
        if args.debug:
            raise
        line = _error_line(err) + " (this is a bug: please report it with --debug output)"
        return _fail(args, "InternalError", line, EXIT_INTERNAL, line)


def _fail(args: argparse.Namespace, cls: str, line: str, status: int, message: str,
          entry: str | None = None) -> int:
    """The one-line message on stderr; with ``--json``, also the error as JSON on
    stdout (docs/json.md), so a script reads one document whatever happened."""
    print(line, file=sys.stderr)
    if getattr(args, "json", False):
        from chrootarchive.cli import output

        output.print_json({"schema_version": output.JSON_SCHEMA_VERSION, "error": {
            "class": cls, "entry": entry, "message": message, "exit_status": status}})
    return status


def entry_point() -> None:
    code = main()
    # Exit without interpreter shutdown: a feeding thread may still be blocked reading
    # standard input (a worker that stopped early), and finalizing would wait on it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
