"""The command line's entry: the parser, the dispatch to a command, and the mapping of
errors to one line on stderr and an exit status.

Parsing needs only the options and the mechanisms' names; a command's operation (and
whatever it imports) is loaded by its ``run`` once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from chrootarchive.cli import Terminated, was_terminated
from chrootarchive.cli.commands import COMMANDS, HELP, Formatter, UsageError, tar_habit_hint
from chrootarchive.errors import ChrootArchiveError, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import ModuleType
    from typing import NoReturn

EXIT_USAGE = 2

EXIT_INTERNAL = 70

_DESCRIPTION = """\
Unpack untrusted tar archives and container layers into a directory, with the
confinement enforced by the kernel: the process that writes the files sees nothing
but the destination, and nothing from the archive ever runs.
"""


def _version_line() -> str:
    """``chrootarchive 0.2.0 (Python 3.11.7, Linux 6.1.0 x86_64, compiled header
    parser, helper loop and system calls)``: what a bug report needs. They are Python
    (and ctypes) where the install had no C compiler (setup.py): slower on archives of
    many small files, and in each worker's start."""
    from chrootarchive import __version__

    try:
        import chrootarchive._syscall
        import chrootarchive.engine._finish
        import chrootarchive.tarformat._ustar  # noqa: F401 - only whether all load
        compiled = "compiled header parser, helper loop and system calls"
    except ImportError:
        compiled = ("header parser, helper loop and system calls in Python: installed "
                    "without a C compiler")
    uname = os.uname()
    python = ".".join(str(part) for part in sys.version_info[:3])
    return (f"chrootarchive {__version__} (Python {python}, "
            f"{uname.sysname} {uname.release} {uname.machine}, {compiled})")


class _Version(argparse.Action):
    """``--version``: its line is made only when it is asked for, since making it loads
    the compiled modules, which a command's own parent never needs (the start of a
    one-file ``untar``: docs/performance.md)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS,
                 help: str = "show program's version number and exit",
                 ) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        sys.stdout.write(_version_line() + "\n")  # where argparse's own version goes
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors end with a hint when its words hold tar's
    options (``-xf A``, ``-vxf A``): argparse itself reports some of them (``-vxf``
    reads as ``-v`` given ``xf``) before the command sees what it does not know."""

    words: Sequence[str] = ()

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        self.words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._values_attached(self.words), namespace)

    def _values_attached(self, words: list[str]) -> list[str]:
        """``words`` with each value that starts with ``-`` attached to the option that
        takes it (``--exclude -lead`` as ``--exclude=-lead``, ``-C -dir`` as
        ``-C-dir``): tar (getopt) takes the next word as an option's value whatever it
        is; argparse reads it as an option and reports the value missing."""
        out: list[str] = []
        words_left = iter(words)
        for word in words_left:
            if word == "--":
                out.append(word)
                out.extend(words_left)
                break
            action = self._option_string_actions.get(word)
            if action is None or action.nargs is not None:
                out.append(word)
                continue
            value = next(words_left, None)
            if value is None or value == "--" or not value.startswith("-"):
                out.extend(w for w in (word, value) if w is not None)
            else:
                out.append(f"{word}={value}" if word.startswith("--") else word + value)
        return out

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]  # "chrootarchive untar": its subparser
        hint = tar_habit_hint(command, self.words, self._option_string_actions)
        super().error(message + (f"\n{hint}" if hint else ""))


@contextlib.contextmanager
def _messages_as_they_are() -> Iterator[None]:
    """argparse asks gettext for a translation of each message it makes as a parser is
    built and used, and each question looks for a catalogue again (a ``stat`` and an
    exception, about 30 us; some 60 of them, 2 ms, for ``untar``'s parser: a one-file
    ``untar`` takes 30 ms). Where the program's text domain has no catalogue for the
    user's languages, every answer is the message itself, and while the command line
    runs argparse is given that answer directly (then its own functions are put back,
    for a caller of :func:`main` in its own process); where one exists, argparse asks
    gettext as before."""
    import gettext

    asks = (getattr(argparse, "_", None), getattr(argparse, "ngettext", None))
    if asks != (gettext.gettext, gettext.ngettext):
        yield  # an argparse that asks otherwise
        return
    domain = gettext.textdomain()
    catalogues = gettext.bindtextdomain(domain)
    # No directory of catalogues, no catalogue: a stat, where find() loads ``locale``.
    if os.path.isdir(catalogues) and gettext.find(domain, catalogues) is not None:
        yield
        return
    setattr(argparse, "_", _as_is)  # noqa: B010 - a private name: mypy does not know it
    setattr(argparse, "ngettext", _as_is_plural)  # noqa: B010
    try:
        yield
    finally:
        setattr(argparse, "_", asks[0])  # noqa: B010
        setattr(argparse, "ngettext", asks[1])  # noqa: B010


def _as_is(message: str) -> str:
    """gettext.gettext without a catalogue."""
    return message


def _as_is_plural(singular: str, plural: str, n: int) -> str:
    """gettext.ngettext without a catalogue."""
    return singular if n == 1 else plural


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``command``, only that one (its module alone is
    imported, and no parser is made for the others: argv names the command, so the
    top-level help that lists them is never printed). ``""``: the others listed by
    name only, for ``--help`` and ``--version``."""
    parser = _Parser(
        prog="chrootarchive",
        description=_DESCRIPTION,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    # For an option the command does not know: its own usage, not the top level's.
    parser.set_defaults(command_parsers=commands.choices)
    for name, (_module, add, _run) in COMMANDS.items():
        if command is None or name == command:
            getattr(_module_of(name), add)(commands)
        elif not command:
            commands.add_parser(name, help=HELP[name], formatter_class=Formatter)
    return parser


def _module_of(command: str) -> ModuleType:
    """The module of ``command`` (``chrootarchive.cli.untar``...), imported now."""
    name = "chrootarchive.cli." + COMMANDS[command][0]
    __import__(name)
    return sys.modules[name]


def chosen_command(argv: Sequence[str]) -> str:
    """The command ``argv`` names (its first word), or ``""`` when it starts with an
    option: the only options before a command are ``--help`` and ``--version``."""
    words = list(argv)
    if words[:1] == ["--"]:
        words = words[1:]
    if not words or words[0].startswith("-"):
        return ""
    return words[0] if words[0] in COMMANDS else ""


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
    with _messages_as_they_are():
        return _main(sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> int:
    command = chosen_command(argv)
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    if args.command != command:  # not where chosen_command looked: parse it all
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
    if extra:  # what the command does not know is its own error, with its usage
        args.command_parsers.get(args.command, parser).error(
            "unrecognized arguments: " + " ".join(extra))
    if args.debug:
        from chrootarchive.runner.settings import set_debug

        set_debug(True)
    try:
        run: Callable[[argparse.Namespace], int] = getattr(
            _module_of(args.command), COMMANDS[args.command][2])
        return run(args)
    except UsageError as err:
        return _fail(args, "UsageError", _one_line(str(err)), EXIT_USAGE, str(err))
    except KeyboardInterrupt as err:
        if isinstance(err, Terminated) or was_terminated():
            return _terminated(args)
        return _fail(args, "KeyboardInterrupt", "chrootarchive: error: interrupted", 130,
                     "interrupted")
    except ChrootArchiveError as err:
        if was_terminated():
            return _terminated(args)
        if args.debug:
            raise
        from chrootarchive.cli.args import in_cli_words

        err.message = in_cli_words(err.message)  # "--max-bytes", not "max_bytes"
        return _fail(args, type(err).__name__, _error_line(err), err.exit_status,
                     printable(err.message, 0), err.entry)
    except Exception as err:
        if was_terminated():
            return _terminated(args)
        if args.debug:
            raise
        line = _error_line(err) + " (this is a bug: please report it with --debug output)"
        return _fail(args, "InternalError", line, EXIT_INTERNAL, line)


def _terminated(args: argparse.Namespace) -> int:
    """SIGTERM: the worker it also reached may have failed first, as unwinding began."""
    return _fail(args, "Terminated", "chrootarchive: error: terminated", 143, "terminated")


def _fail(args: argparse.Namespace, cls: str, line: str, status: int, message: str,
          entry: str | None = None) -> int:
    """The one-line message on stderr; with ``--json``, also the error as JSON on
    stdout (docs/json.md), so a script reads one document whatever happened."""
    print(line, file=sys.stderr)
    if getattr(args, "json", False):
        from chrootarchive.cli import output

        # Standard output may be full: the line above says what failed.
        with contextlib.suppress(ChrootArchiveError):
            output.print_json({"schema_version": output.JSON_SCHEMA_VERSION, "error": {
                "class": cls, "entry": entry, "message": message, "exit_status": status}})
    return status
