#!/usr/bin/env python3
"""Before and after: the command line of two (or more) source trees, taking turns.

``python bench/ab.py --inputs rootfs.tar,small.tar.zst --variant before=/work/old/src
--variant after=/work/main/src [--gnutar] [--runs 5]``

Each round runs every variant once on each input (``chrootarchive untar INPUT DEST``
with ``PYTHONPATH`` set to the variant's tree, into a fresh directory of
``--target``), and GNU tar with ``--gnutar``; the order of the variants rotates each
round, so that a machine that slows down or speeds up during the run weighs on all of
them alike. Printed: the median wall time (and its minimum), the median CPU time of
the process tree, and the ratio to GNU tar's median in the same run. With
``--split``, each run goes through ``bench/split_run.py``, and the CPU time is also
shown by process: the command line's own (its feeding thread decompresses) and its
workers' (the jailed worker and its helper), user and system. A quick check between
two commits; the table of issue 16 is ``bench/run.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import compiled  # bench/compiled.py, beside this script

CONSOLE = Path(sys.executable).with_name("chrootarchive")
SPLIT_RUN = Path(__file__).with_name("split_run.py")
SPLIT_KEYS = ("parent_user", "parent_system", "workers_user", "workers_system")


def _run(argv: list[str], env: dict[str, str] | None) -> tuple[float, float]:
    before = os.times()
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user
           + after.children_system - before.children_system)
    return wall, cpu


def _split_text(splits: list[dict[str, float]]) -> str:
    """Median user/system time of the command line and of its workers."""
    med = {key: statistics.median(s[key] for s in splits) for key in SPLIT_KEYS}
    return (f"\n{'':31}parent {med['parent_user']:.3f} u + {med['parent_system']:.3f} s"
            f"   workers {med['workers_user']:.3f} u + {med['workers_system']:.3f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", required=True,
                    help="comma-separated names in DIR/inputs, or paths")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=SRC",
                    help="a source tree to run (PYTHONPATH); give two or more")
    ap.add_argument("--gnutar", action="store_true", help="also GNU tar (the ratios)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/chrootarchive-bench"))
    ap.add_argument("--target", type=Path, default=Path("/dev/shm/chrootarchive-ab"))
    ap.add_argument("--split", action="store_true",
                    help="also the CPU time of the command line and of its workers")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant)
    for name, tree in variants.items():
        for problem in compiled.problems(Path(tree) / "chrootarchive"):
            print(f"warning: {name}: {problem}", file=sys.stderr)
    names = [*variants, *(["gnutar"] if args.gnutar else [])]
    inputs = [p if os.sep in p else str(args.dir / "inputs" / p)
              for p in args.inputs.split(",")]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    splits: dict[tuple[str, str], list[dict[str, float]]] = {}
    split_file = args.target.with_name(args.target.name + ".split.json")
    print(f"kernel {os.uname().release}; {args.runs} rounds; target {args.target}")
    try:
        for round_ in range(args.runs):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for path in inputs:
                for name in order:
                    shutil.rmtree(args.target, ignore_errors=True)
                    if name == "gnutar":
                        args.target.mkdir(parents=True)
                        argv = ["tar", "-xf", path, "-C", str(args.target)]
                        env = None
                    else:
                        argv = [str(CONSOLE), "untar", path, str(args.target)]
                        if args.split:
                            argv[:1] = [sys.executable, str(SPLIT_RUN), str(split_file)]
                        env = dict(os.environ, PYTHONPATH=variants[name])
                    times.setdefault((path, name), []).append(_run(argv, env))
                    if args.split and name != "gnutar":
                        splits.setdefault((path, name), []).append(
                            json.loads(split_file.read_text()))
    finally:
        shutil.rmtree(args.target, ignore_errors=True)
        split_file.unlink(missing_ok=True)
    for path in inputs:
        runs = times.get((path, "gnutar"))
        gnutar = statistics.median(w for w, _ in runs) if runs else None
        for name in names:
            walls = [w for w, _ in times[(path, name)]]
            cpus = [c for _, c in times[(path, name)]]
            wall = statistics.median(walls)
            ratio = f"  ratio {wall / gnutar:.2f}" if gnutar else ""
            split = _split_text(splits[(path, name)]) if (path, name) in splits else ""
            print(f"{Path(path).name:18} {name:12} wall {wall:7.3f} s (min {min(walls):.3f})"
                  f"  cpu {statistics.median(cpus):6.3f} s{ratio}{split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
