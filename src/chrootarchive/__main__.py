"""``python -m chrootarchive``.

``-m`` puts the working directory first on ``sys.path``, and an unpack often writes
there (``untar evil.tar .``): a ``json.py`` from the archive would then be what this
process imports next, outside the jail. The entry is dropped before anything else runs
(our own modules come from the package's directory, whatever ``sys.path`` says);
``-P`` (``PYTHONSAFEPATH``) has the same effect.
"""

import os
import sys


def _drop_working_directory() -> None:
    if sys.flags.safe_path or not sys.path:
        return
    first = sys.path[0]
    try:
        if first == "" or os.path.samefile(first, os.getcwd()):
            del sys.path[0]
    except OSError:
        del sys.path[0]  # a working directory that is gone is no place to import from


_drop_working_directory()

from chrootarchive.cli import entry_point  # noqa: E402 - after the path is safe

entry_point()
