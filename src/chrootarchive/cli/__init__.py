"""The ``chrootarchive`` command line.

Every error is one line, ``chrootarchive: error: ENTRY: PROBLEM``, and an exit status:
0 done, 1 bad archive, 2 usage, 3 no confinement mechanism, 4 the input cannot be read
or the destination written, 70 internal error (docs/json.md). ``--debug`` adds
tracebacks; ``--json`` adds the error as a JSON document on stdout.

:mod:`.main` parses and dispatches; one module per command (:mod:`.untar`,
:mod:`.layer`, :mod:`.image`, :mod:`.pack` for ``tar`` and ``cp``, :mod:`.listing` for
``list``) adds its parser and
runs it, importing its operation only then; :mod:`.args`, :mod:`.output` and
:mod:`.progress` are what the commands share.
"""

from __future__ import annotations

from chrootarchive.cli.main import build_parser, entry_point, main

__all__ = ["build_parser", "entry_point", "main"]
