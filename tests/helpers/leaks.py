"""What a test may leave behind: mounts, pivot directories, child processes, fds."""

from __future__ import annotations

import os
import time
from pathlib import Path

from chrootarchive.runner import standby


def child_pids(parent: int | None = None) -> list[tuple[int, str, str]]:
    """``(pid, comm, state)`` of the children of ``parent`` (default: this process),
    zombies included, from ``/proc/*/stat`` (psutil is not a dependency)."""
    parent = os.getpid() if parent is None else parent
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        head, _, rest = data.rpartition(")")  # comm may hold spaces and parentheses
        fields = rest.split()
        if len(fields) >= 2 and int(fields[1]) == parent:
            out.append((int(entry), head.partition("(")[2], fields[0]))
    return out


def idle_standbys() -> set[int]:
    """This process's standby workers (``chrootarchive.runner.standby``): kept on purpose, so
    not a leak, as long as each still waits for its job outside any jail."""
    pids = set(standby.running())
    for pid in pids:
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue  # gone meanwhile
        assert root == "/", f"standby worker {pid} is kept but jailed at {root}"
    return pids


def wait_no_new_children(before: set[int], timeout: float = 2.0) -> list[tuple[int, str, str]]:
    """Children not in ``before`` still present after ``timeout`` seconds (idle
    standby workers excepted)."""
    deadline = time.monotonic() + timeout
    while True:
        kept = idle_standbys()
        extra = [c for c in child_pids() if c[0] not in before and c[0] not in kept]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


def open_fds() -> dict[int, str]:
    """fd -> what it points to."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def pivot_leftovers(root: Path) -> list[str]:
    """``.pivot_root*`` directories anywhere under ``root``."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        found += [os.path.join(dirpath, d) for d in dirnames if d.startswith(".pivot_root")]
    return found


def _scope(root: Path) -> str:
    """The directory whose mounts we watch: pytest's base temporary directory (all our
    destinations live below it), so that mounts made by unrelated processes on a
    shared machine do not count."""
    for parent in [root, *root.parents]:
        if parent.name.startswith("pytest-of-"):
            return str(parent)
    return str(root)


def relevant_mounts(lines: list[str], scope: str) -> list[str]:
    """Mount table lines for ``/`` itself (its propagation flags included) and for
    anything mounted at or below ``scope``."""
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        mount_point = fields[4].encode().decode("unicode_escape")
        if mount_point == "/" or mount_point == scope or mount_point.startswith(scope + "/"):
            out.append(line)
    return out


class LeakCheck:
    """Record the state now; :meth:`problems` lists what changed since."""

    def __init__(self, root: Path, *, fds: bool = False) -> None:
        self.root = root
        self.check_fds = fds
        self.scope = _scope(root)
        self.mounts = relevant_mounts(mountinfo(), self.scope)
        self.children = {pid for pid, _, _ in child_pids()}
        self.fds = open_fds() if fds else {}

    def problems(self) -> list[str]:
        out = []
        after = relevant_mounts(mountinfo(), self.scope)
        if after != self.mounts:
            added = sorted(set(after) - set(self.mounts))
            removed = sorted(set(self.mounts) - set(after))
            out.append(f"mount table changed: added {added}, removed {removed}")
        left = pivot_leftovers(self.root)
        if left:
            out.append(f".pivot_root directories left behind: {left}")
        extra = wait_no_new_children(self.children)
        if extra:
            out.append(f"child processes left behind: {extra}")
        if self.check_fds:
            now = open_fds()
            kept = set(standby.descriptors())  # the control sockets of idle standbys
            new = {fd: what for fd, what in now.items() if fd not in self.fds and fd not in kept}
            if new:
                out.append(f"file descriptors leaked: {new}")
        return out

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "; ".join(problems)


#: For the programs that tests run (``os`` imported): ``children_of_ours()``, the pids
#: of the program's children (one that ends while it looks is not one).
CHILDREN_OF_OURS = """
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

#: Lines for a script run with ``python -c``, after ``import sys``: count in ``started``
#: the worker interpreters it spawns through ``subprocess`` (each ``subprocess.Popen``
#: raises an audit event with its arguments; a worker's are its boot code, jail.main).
#: A worker the command line starts first (``os.posix_spawn``) is not counted.
COUNT_SPAWNED_WORKERS = """
started = []

def count_workers(event, args):
    if event == "subprocess.Popen" and any("chrootarchive.jail.main" in str(a)
                                           for a in args[1]):
        started.append(1)

sys.addaudithook(count_workers)
"""
