#!/usr/bin/env python3
"""Time (or profile) the unpacker alone: what the jailed worker runs, without the
command line, the parent's feed, the worker's start-up and its lock-down.

As root: ``python bench/engine_time.py ARCHIVE EMPTY_DIR [--profile] [--no-helper]``.
The archive must be a plain tar. The process chroots into ``EMPTY_DIR`` (so the
unpacker's relative paths stay inside, as in the worker's jail; no mount namespace, no
seccomp) and runs :class:`~chrootarchive.engine.unpacker.Unpacker` on the archive, with
the helper process allowed as the worker allows it for a plain tar read from a file.
Printed on stderr: wall time of the extraction, user and system time of the worker
process (all its threads), of its main thread alone, and of the helper. For a sampling
profile instead, run it under ``py-spy record -r 1000 -f raw -o out.txt --``;
``--profile`` prints a cProfile table (which slows Python code down several times).
Issue 16's breakdown in docs/performance.md was measured this way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from chrootarchive.engine import fsops, unpacker
from chrootarchive.options import UnpackOptions, unpack_spec
from chrootarchive.tarformat.reader import TarReader


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archive")
    ap.add_argument("dest", help="an empty directory (the process chroots into it)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile table")
    ap.add_argument("--no-helper", action="store_true", help="do not fork the helper")
    args = ap.parse_args()
    import chrootarchive.engine.finisher  # noqa: F401 - imported before the chroot

    if args.profile:  # nothing can be imported after the chroot
        import cProfile
        import pstats

    source = os.open(args.archive, os.O_RDONLY)
    spec = unpack_spec(UnpackOptions())
    thread_stat = os.open("/proc/thread-self/stat", os.O_RDONLY)  # no /proc after chroot
    os.chroot(args.dest)
    os.chdir("/")
    os.umask(0)  # as the worker
    worker = unpacker.Unpacker(fsops.FileOps(), spec, lambda line: print(line, file=sys.stderr))
    if not args.no_helper:
        worker.finisher_countdown = unpacker.FINISHER_AFTER
    start, before, thread_before = time.perf_counter(), os.times(), time.thread_time()
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        worker.run(TarReader(source))
        profile.disable()
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    else:
        worker.run(TarReader(source))
    wall, after = time.perf_counter() - start, os.times()
    fields = os.pread(thread_stat, 4096, 0).decode().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    main_thread = time.thread_time() - thread_before
    print(f"wall {wall:.3f} s; worker user {after.user - before.user:.3f} s, system "
          f"{after.system - before.system:.3f} s; main thread {main_thread:.3f} s (since "
          f"the start: user {int(fields[11]) / tick:.2f} s, system "
          f"{int(fields[12]) / tick:.2f} s); helper user "
          f"{after.children_user - before.children_user:.3f} s, system "
          f"{after.children_system - before.children_system:.3f} s", file=sys.stderr)
    helper = worker.finisher
    if helper is not None:
        print(f"helper: {helper.taken:,} files taken ({helper.by_name:,} by name, "
              f"{helper.extents:,} extents, {worker.extents_here:,} more copied by the worker, "
              f"{worker.extents_handed_over:,} begun by it and finished by the helper), "
              f"{helper.given_back:,} given back; "
              f"{worker.stats.entries - helper.taken:,} entries done by the worker",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
