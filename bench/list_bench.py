#!/usr/bin/env python3
"""Listing (``tar -t``): time ``chrootarchive list`` against GNU tar, bsdtar and
Python's ``tarfile`` on the benchmark's inputs (``bench/build_inputs.py``).

``python bench/list_bench.py [--inputs rootfs.tar,linux.tar] [--runs 5] [--variant NAME=SRC]``

Each command lists the archive to ``/dev/null``; the tools take turns, the starting one
rotating each round; medians (min-max) of the wall time. ``chrootarchive`` is the
console script's code run by this interpreter with ``SRC`` first on ``sys.path`` (this
checkout's ``src`` by default; ``--variant`` adds another tree, for a before/after).
``tarfile`` is ``tarfile.open(IN).getnames()`` (which reads every header; for a .zst
input, not supported by 3.11's ``tarfile``, the row is left out). No jail is involved:
a listing only parses (docs/performance.md, twenty-ninth round).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_INPUTS = Path("/var/tmp/chrootarchive-bench/inputs")
SRC = Path(__file__).resolve().parents[1] / "src"


def _ours(tree: str, archive: str) -> list[str]:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "sys.argv = ['chrootarchive', 'list', sys.argv[2]]; "
            "from chrootarchive.cli import entry_point; entry_point()")
    return [sys.executable, "-c", code, tree, archive]


def _commands(archive: str, variants: dict[str, str]) -> dict[str, list[str]]:
    commands = {name: _ours(tree, archive) for name, tree in variants.items()}
    commands["gnutar"] = ["tar", "-tf", archive]
    commands["bsdtar"] = ["bsdtar", "-tf", archive]
    if not archive.endswith(".zst"):
        commands["tarfile"] = [sys.executable, "-c",
                               "import sys, tarfile; tarfile.open(sys.argv[1]).getnames()",
                               archive]
    return commands


def _time(command: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{command[0]} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed


def _shown(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_INPUTS, help="the inputs' directory")
    ap.add_argument("--inputs", default="rootfs.tar,linux.tar,small.tar,large.tar,rootfs.tar.gz",
                    help="comma-separated names in --dir")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=SRC",
                    help="also list with the chrootarchive of the source tree SRC")
    args = ap.parse_args()
    variants = {"chrootarchive": str(SRC)}
    for spec in args.variant:
        name, _, tree = spec.partition("=")
        variants[name] = tree
    print(f"kernel {platform.release()}; {args.runs} rounds; medians (min-max)\n")
    print("| input | " + " | ".join([*variants, "GNU tar", "bsdtar", "tarfile"]) + " |")
    print("|---|" + "---:|" * (len(variants) + 3))
    for name in args.inputs.split(","):
        archive = str(args.dir / name)
        if not os.path.exists(archive):
            raise SystemExit(f"{archive}: missing (bench/build_inputs.py makes it)")
        commands = _commands(archive, variants)
        times: dict[str, list[float]] = {tool: [] for tool in commands}
        tools = list(commands)
        for round_ in range(args.runs):
            for tool in tools[round_ % len(tools):] + tools[:round_ % len(tools)]:
                times[tool].append(_time(commands[tool]))
        cells = [f"{_shown(statistics.median(t))} ({_shown(min(t))}-{_shown(max(t))})"
                 if (t := times.get(tool)) else "" for tool in
                 [*variants, "gnutar", "bsdtar", "tarfile"]]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
