#!/usr/bin/env python3
"""The command line with its CPU time split by process: ``bench/ab.py --split``.

``python bench/split_run.py OUT.json untar ARCHIVE DEST`` runs the console script's
entry point in this process (the same early worker, the same imports), and, as it
exits, writes to ``OUT.json`` the user and system time of this process (the command
line: its main thread and the feeding thread that decompresses into the ring) and of
its reaped children (the jailed worker and its helper). What takes the longest path of
a pipeline shows here, not in the process tree's total.
"""

from __future__ import annotations

import json
import os
import resource
import sys

TYPE_CHECKING = False  # no typing import in the process measured
if TYPE_CHECKING:
    from typing import NoReturn


def main() -> None:
    out = sys.argv.pop(1)
    real_exit = os._exit

    def exit_with_split(status: int) -> NoReturn:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out, "w") as f:
            json.dump({"parent_user": own.ru_utime, "parent_system": own.ru_stime,
                       "workers_user": children.ru_utime,
                       "workers_system": children.ru_stime}, f)
        real_exit(status)

    os._exit = exit_with_split  # entry_point ends with os._exit
    from chrootarchive.cli import entry_point

    entry_point()


if __name__ == "__main__":
    main()
