"""The ``chrootarchive`` command line.

Every error is one line, ``chrootarchive: error: ENTRY: PROBLEM``, and an exit status:
0 done, 1 bad archive, 2 usage, 3 no confinement mechanism, 4 the input cannot be read
or the destination written, 70 internal error (docs/json.md). ``--debug`` adds
tracebacks; ``--json`` adds the error as a JSON document on stdout.

:mod:`.main` parses and dispatches; one module per command (:mod:`.untar`,
:mod:`.layer`, :mod:`.image`, :mod:`.pack` for ``tar`` and ``cp``, :mod:`.listing` for
``list``) adds its parser and runs it, importing its operation only then; :mod:`.args`,
:mod:`.output` and :mod:`.progress` are what the commands share; :mod:`.commands` lists
them.

This package itself loads nothing: :func:`entry_point` (the console script) starts the
worker of an unpack first thing, so that its interpreter starts while this one imports
what the command needs (docs/performance.md, issue 16).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["build_parser", "entry_point", "main"]

#: The commands whose single job is an unpack: their worker is started first thing.
_UNPACK_COMMANDS = ("untar", "apply-layer", "unpack-image")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (callable from tests)."""
    from chrootarchive.cli.main import main as run

    _rebind()
    return run(argv)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser (:func:`chrootarchive.cli.main.build_parser`)."""
    from chrootarchive.cli.main import build_parser as build

    _rebind()
    return build(command)


_OWN = {"main": main, "build_parser": build_parser}


def _rebind() -> None:
    """Importing the submodule ``main`` made this package's name ``main`` that module:
    make it the function again."""
    globals().update(_OWN)


def _wants_early_worker(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs an unpack in a worker: its first word an unpack command,
    no ``--help``, no ``--confine openat2`` (in-process), standbys not turned off.

    A guess made before parsing: a wrong one costs a worker that is killed unused.
    """
    if not argv or argv[0] not in _UNPACK_COMMANDS:
        return False
    if os.environ.get("CHROOTARCHIVE_STANDBY", "1") == "0":
        return False
    words = list(argv)
    for i, word in enumerate(words):
        if word == "--":
            break
        if word in ("-h", "--help"):
            return False
        option, eq, value = word.partition("=")
        if len(option) > 4 and "--confine".startswith(option):
            if not eq:
                value = words[i + 1] if i + 1 < len(words) else ""
            if value == "openat2":
                return False
    return True


def _start_worker_early(argv: Sequence[str]) -> bool:
    """Start the worker of an unpack now, before this process imports what the command
    needs; it waits for its job as this thread's standby (docs/security.md), and the
    call uses it only if nothing it inherited has changed since."""
    if not _wants_early_worker(argv):
        return False
    from chrootarchive.runner import launch

    context = launch.context()
    started = launch.spawn_early("unpack")
    if started is None:
        return False
    from chrootarchive.runner import spawn, standby

    standby.adopt("unpack", context, spawn.Booted.adopt(*started))
    return True


def entry_point() -> None:
    """The console script and ``python -m chrootarchive``."""
    argv = sys.argv[1:]
    early = _start_worker_early(argv)
    try:
        code = main(argv)
    finally:
        if early:  # not used (a usage error, openat2): no process is left behind
            from chrootarchive.runner import standby

            standby.stop_all()
    # Exit without interpreter shutdown: a feeding thread may still be blocked reading
    # standard input (a worker that stopped early), and finalizing would wait on it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
