"""The library inside a caller's program: what the program's other threads do to a call.

Each test runs a small program in a process of its own (it interrupts or forks that
process), which prints what it saw as JSON. What is proven:

- ``_thread.interrupt_main`` (a watchdog's, an IDE's: no signal, only a flag the next
  bytecode sees) stops a long unpack at once, as it stops ``tarfile``'s loop: the
  caller's thread never waits for the worker in a call that runs no bytecode.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import chrootarchive

SRC = str(Path(chrootarchive.__file__).resolve().parent.parent)

PRELUDE = """
import json, os, select, sys, threading, time
sys.path.insert(0, sys.argv[1])
import chrootarchive

top = sys.argv[2]


def children_of_ours():
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = f.read().rpartition(")")[2].split()[1]
            except OSError:
                continue
            if ppid == str(os.getpid()):
                found.append(p)
    return found
"""


def run(tmp_path: Path, body: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, SRC, str(tmp_path), *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CHROOTARCHIVE_STANDBY": "0"},  # a worker is a call's child
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def long_names_archive(path: Path, count: int = 1000) -> None:
    """``count`` empty files whose names (2.4 KB each) fill the pipe that lists them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(("d" * 200 + "/") * 12 + f"f{i}"))
    path.write_bytes(buf.getvalue())


def test_interrupt_main_stops_a_long_unpack(tmp_path: Path) -> None:
    """The worker is held (its list of names waits on a reader that is slow until the
    worker is gone), and the caller's thread waits for it: interrupt_main then must
    end the call, and the worker, within moments. It came only when the worker had
    finished: an archive of minutes (4 s here, 20,000 files) ran to its end, the
    KeyboardInterrupt after it."""
    long_names_archive(tmp_path / "long.tar")
    seen = run(tmp_path, """
import _thread
first = threading.Event()
until = []
def slow(name):
    if not until:
        until.append(time.monotonic() + 10)
        first.set()
    while children_of_ours() and time.monotonic() < until[0]:
        time.sleep(0.01)   # held while the worker lives (10 s at most)
def interrupter():
    first.wait()
    time.sleep(0.2)   # the caller's thread now waits for the worker
    sent.append(time.monotonic())
    _thread.interrupt_main()
sent = []
threading.Thread(target=interrupter, daemon=True).start()
try:
    chrootarchive.untar(os.path.join(top, "long.tar"), os.path.join(top, "dest"),
                        on_entry=slow)
    outcome = "finished"
except KeyboardInterrupt:
    outcome = "interrupted"
after = time.monotonic() - sent[0]
children = children_of_ours()
again = chrootarchive.untar(os.path.join(top, "long.tar"), os.path.join(top, "again"))
print(json.dumps({"outcome": outcome, "after": after, "children": children,
                  "again": again.entries}))
""")
    assert seen["outcome"] == "interrupted"
    assert seen["after"] < 5, f"the interrupt was seen {seen['after']:.1f} s late"
    assert seen["children"] == [], "the interrupted call left its worker"
    assert seen["again"] == 1000  # and the next call works
