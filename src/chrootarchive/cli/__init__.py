"""The ``chrootarchive`` command line.

Every error is one line, ``chrootarchive: error: ENTRY: PROBLEM``, and an exit status:
0 done, 1 bad archive, 2 usage, 3 no confinement mechanism, 4 destination (or, for
``tar`` and ``cp``, source) problem, 70 internal error. ``--debug`` adds tracebacks.

:mod:`.main` parses and dispatches; one module per command (:mod:`.untar`,
:mod:`.layer`, :mod:`.image`, :mod:`.pack` for ``tar`` and ``cp``) adds its parser and
runs it, importing its operation only then; :mod:`.args`, :mod:`.output` and
:mod:`.progress` are what the commands share.
"""

from __future__ import annotations

from chrootarchive.cli.main import build_parser, entry_point, main

__all__ = ["build_parser", "entry_point", "main"]
