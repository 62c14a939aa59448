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
worker of each job first thing, so that its interpreter starts while this one imports
what the command needs (docs/performance.md, issue 16).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal, without the enum it loads
import _thread
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["Terminated", "build_parser", "entry_point", "main", "was_terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, systemd, a CI job's timeout), raised where Ctrl-C is:
    the command unwinds as for Ctrl-C (its worker stopped, an ``--atomic`` staging
    directory and a partial output removed), then exits with status 143. Here, not in
    a submodule: the handler imports nothing (a signal may cut an import short)."""


_terminated_by_signal = False


def was_terminated() -> bool:
    """Whether SIGTERM came: an error met while the command unwinds (a worker that the
    same signal killed, say) is reported as the termination it follows."""
    return _terminated_by_signal

#: The commands that run their job in a worker, and that job: its worker is started
#: first thing. ``cp`` runs a pack, then an unpack into DST: both are started
#: (:func:`_early_jobs`).
_EARLY_JOBS = {"untar": "unpack", "apply-layer": "unpack", "unpack-image": "unpack",
               "tar": "pack", "cp": "pack"}
#: ``cp``'s options that take a value, the word after them unless it is given as
#: ``--option=value`` (tests/test_startup.py keeps this list and cp's parser agreeing):
#: where its operands are ``-`` decides which of its jobs run.
_CP_VALUE_OPTIONS = ("--chown", "--confine", "--exclude", "--exclude-style", "--from-root",
                     "--to-root")


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


def _early_jobs(argv: Sequence[str]) -> tuple[str, ...]:
    """The jobs that ``argv`` runs in a worker (``unpack``, ``pack``), in their order:
    none for a first word not in :data:`_EARLY_JOBS`, ``--help``, ``--confine openat2``
    (in-process) or standbys turned off. Reading a tree (``tar``, ``cp``'s pack) runs in
    a worker by default only for root (``auto`` reads in-process with openat2
    otherwise: ``cli.args.AUTO_READ``); ``cp - DST`` runs only its unpack, ``cp SRC -``
    only its pack.

    A guess made before parsing: a wrong one costs a worker that is killed unused.
    """
    job = _EARLY_JOBS.get(argv[0]) if argv else None
    if job is None or os.environ.get("CHROOTARCHIVE_STANDBY", "1") == "0":
        return ()
    words = list(argv)
    confine = "auto"
    operands = []  # the words that are neither options nor cp's options' values
    value_next = False
    for i, word in enumerate(words[1:], 1):
        if value_next:
            value_next = False
            continue
        if word == "--":
            operands += words[i + 1:]
            break
        if word in ("-h", "--help"):
            return ()
        option, eq, value = word.partition("=")
        if len(option) > 4 and "--confine".startswith(option):
            confine = value if eq else (words[i + 1] if i + 1 < len(words) else "")
        if word == "-" or not word.startswith("-"):
            operands.append(word)
        elif argv[0] == "cp" and not eq and len(option) > 2:
            # argparse takes a long option's unique prefix too (--ch for --chown)
            value_next = any(name.startswith(option) for name in _CP_VALUE_OPTIONS)
    if confine == "openat2":
        return ()
    reads_in_worker = confine != "auto" or os.geteuid() == 0
    if argv[0] == "cp":
        if "-" in operands[:-1]:
            return ("unpack",)  # cp - DST: its source is standard input
        packs = ("pack",) if reads_in_worker else ()
        return packs if operands[-1:] == ["-"] else (*packs, "unpack")
    return (job,) if job == "unpack" or reads_in_worker else ()


def _start_workers_early(argv: Sequence[str]) -> bool:
    """Start the worker of each of the command's jobs now, before this process imports
    what the command needs; each waits for its job as this thread's standby
    (docs/security.md), and a call uses it only if nothing it inherited has changed
    since."""
    jobs = _early_jobs(argv)
    if not jobs:
        return False
    from chrootarchive.runner import launch

    # A Ctrl-C is held until each worker started is kept (then raised): one between a
    # spawn and its adoption left the worker untracked until this process's exit.
    with launch.InterruptsHeld():
        context = launch.context()
        worker = launch.spawn_early(jobs[0])  # the first job's, before the imports below
        from chrootarchive.runner import spawn, standby

        standby.none_ahead()  # the command's jobs are its arguments': none comes after
        started = False
        for i, job in enumerate(jobs):
            if i:  # the next job's, in the context it is spawned in
                context = launch.context()
                worker = launch.spawn_early(job)
            if worker is not None:
                standby.adopt(job, context, spawn.Booted.adopt(*worker))
                started = True
    return started


def _open_closed_streams() -> None:
    """A closed descriptor 0, 1 or 2 (a daemon's, a CI runner's) becomes /dev/null, as
    GNU tar has it: Python left its stream None (every print failed, exit 70), and
    the next file opened would have taken its number."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
    if not closed:
        return
    from chrootarchive.cli import commands

    commands.closed_streams = frozenset(closed)
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115


def _flush_stdout(code: int) -> int:
    """Flush what is left for standard output: a reader that went away (``| head``)
    is quiet, as tar under SIGPIPE; one that cannot take it (a full disk) is an
    error, exit status 4, and never a success."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return code
    except OSError as err:
        print(f"chrootarchive: error: cannot write to standard output: "
              f"{(err.strerror or str(err)).lower()}", file=sys.stderr)
        return code or 4
    return code


def _catch_termination() -> None:
    """SIGTERM unwinds the command as Ctrl-C does (:class:`Terminated`): killed
    outright, it left its worker's ``--atomic`` staging directory behind."""
    _signal.signal(_signal.SIGTERM, _terminated)
    sys.unraisablehook = _unraisable


_default_unraisable = sys.unraisablehook


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """:class:`Terminated` raised where no exception can propagate (a weakref callback
    of the import system, as the modules load; a ``__del__``): Python printed it with
    a traceback and went on. SIGTERM is delivered again, from another thread, so that
    it lands at the main thread's next ordinary step."""
    if isinstance(unraisable.exc_value, Terminated):
        _signal.signal(_signal.SIGTERM, _terminated)
        _thread.start_new_thread(os.kill, (os.getpid(), _signal.SIGTERM))
        return
    _default_unraisable(unraisable)


def _terminated(signum: int, frame: object) -> None:
    global _terminated_by_signal
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)  # a second one kills at once
    _terminated_by_signal = True
    raise Terminated


def _interrupted(err: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM before the command's own handling (its modules loading, its
    arguments parsed): one line, as there, and no traceback."""
    if isinstance(err, Terminated) or _terminated_by_signal:
        print("chrootarchive: error: terminated", file=sys.stderr)
        return 143
    print("chrootarchive: error: interrupted", file=sys.stderr)
    return 130


def entry_point() -> None:
    """The console script and ``python -m chrootarchive``."""
    _open_closed_streams()
    _catch_termination()
    argv = sys.argv[1:]
    try:
        _start_workers_early(argv)
        code = main(argv)
    except KeyboardInterrupt as err:
        code = _interrupted(err)
    finally:
        standby = sys.modules.get("chrootarchive.runner.standby")
        if standby is not None:  # an early worker not used (a usage error, openat2,
            standby.stop_all()   # an interrupt): no process is left behind
    # Exit without interpreter shutdown: a feeding thread may still be blocked reading
    # standard input (a worker that stopped early), and finalizing would wait on it.
    code = _flush_stdout(code)
    try:
        sys.stderr.flush()
    except OSError:  # nowhere left to say it
        code = code or 4
    os._exit(code)
