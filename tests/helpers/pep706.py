"""tarfile's extraction filters (PEP 706) came with Python 3.11.4 (and 3.12): Debian 12's
Python 3.11.2, the README's fresh machine, has none (no ``filter=``, no
``tarfile.data_filter``, no ``FilterError``; ``shutil.unpack_archive`` takes no
``filter=`` either). The tests compare with tarfile's filters where it has them, and
unpack their own archives either way."""

from __future__ import annotations

import os
import tarfile
from typing import Literal

#: Whether this Python's tarfile (and shutil) take ``filter=``.
HAS_FILTERS = hasattr(tarfile, "data_filter")


def extract_own(archive: tarfile.TarFile, path: str | os.PathLike[str],
                filter: Literal["fully_trusted", "tar", "data"] = "fully_trusted") -> None:
    """Extract one of the tests' own (trusted) archives: with ``filter`` where tarfile
    takes one (3.12 and 3.13 warn without it), as tarfile always did before."""
    if HAS_FILTERS:
        archive.extractall(path, filter=filter)
    else:
        archive.extractall(path)
