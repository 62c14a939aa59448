"""A concurrent attacker for tests/test_races.py: swaps paths as fast as it can.

Run as a separate process (``python -I attacker.py CONFIG_JSON``), as root or, through
``setpriv``, as an unprivileged user. Standard library only: it must not import the
package under test nor the test helpers (an unprivileged user may not read them).

Protocol:

* ``CONFIG_JSON`` (one argv element) says what to attack (see :func:`main`).
* The attacker sets up (the symlinks it swaps in), prints ``ready`` on stdout, then
  waits until ``trigger`` exists (a path the extraction creates, so no swap can happen
  before the extraction has started and pinned its destination).
* It then swaps in a loop for ``window`` seconds, then stays idle (a swap loop slows
  the extraction down ten times; the rest of it runs at full speed). The number of
  successful swaps is kept, as a little-endian uint64, at offset 0 of the ``counter``
  file (16 bytes, mmap'ed by both sides), so the test can read how many swaps happened
  *before* the extraction returned.
* The test asks it to stop by setting byte 8 of that file to 1. The attacker then puts
  the original layout back where it can, prints one JSON line
  ``{"swaps": N, "errors": E, "ops": K}`` and exits 0.

Modes:

``dir-exchange``
    ``renameat2(dest/T, dest/.swap-i, RENAME_EXCHANGE)`` for every target directory T,
    where ``.swap-i`` is a symlink to one of ``link_to``: the directory and the symlink
    trade places atomically, again and again. With ``once``: swap each target once and
    keep it swapped (directory modes/times applied at the end must not follow it).
    Otherwise the directories are put back when the window ends.
``dir-rename``
    For all targets: rename T away (into ``hold``), put a symlink at T; then for all
    targets: remove the symlink, rename the directory back. Not atomic: T is missing
    for a moment, then a symlink, then the directory again.
``parent-swap``
    The destination's parent ``parent`` trades places with a symlink to ``link_to[0]``,
    alternately by rename + symlink and by ``RENAME_EXCHANGE``.
``file-swap``
    Each target file T is replaced by a symlink to ``link_to`` (kind ``symlink``) or a
    hard link to ``victim_file`` (kind ``hardlink``): directly when T is missing (the
    moment between an unlink and a re-create), else by ``rename`` over it.
"""

from __future__ import annotations

import ctypes  # noqa: TID251 - the attacker is not the library; renameat2 is not in os
import errno
import json
import mmap
import os
import platform
import struct
import sys
import time

TYPE_CHECKING = False  # the racer imports no more than it needs
if TYPE_CHECKING:
    from typing import Any

RENAME_EXCHANGE = 2
AT_FDCWD = -100
_SYSCALL_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "armv7l": 382, "ppc64le": 357,
                      "s390x": 347, "riscv64": 276}

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2_fn = getattr(_libc, "renameat2", None)


def renameat2(old: str, new: str, flags: int) -> None:
    o, n = os.fsencode(old), os.fsencode(new)
    if _renameat2_fn is not None:
        rc = _renameat2_fn(AT_FDCWD, o, AT_FDCWD, n, ctypes.c_uint(flags))
    else:
        nr = _SYSCALL_RENAMEAT2[platform.machine()]
        rc = _libc.syscall(ctypes.c_long(nr), AT_FDCWD, o, AT_FDCWD, n, ctypes.c_uint(flags))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


class Attacker:
    def __init__(self, cfg: dict[str, Any]) -> None:  # the JSON configuration
        self.cfg = cfg
        self.dest: str = cfg.get("dest", "")
        self.targets: list[str] = list(cfg.get("targets", []))
        self.link_to: list[str] = list(cfg.get("link_to", []))
        self.swaps = 0
        self.errors = 0
        self.ops = 0
        fd = os.open(cfg["counter"], os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, 16)
        finally:
            os.close(fd)
        self.deadline = time.monotonic() + float(cfg.get("timeout", 120))
        self.window = float(cfg.get("window", 3600))
        self.window_end = self.deadline

    # -- shared state ---------------------------------------------------------------

    def stopped(self) -> bool:
        return self.mm[8] != 0 or time.monotonic() > self.deadline

    def attacking(self) -> bool:
        """Still within the attack window (which starts at the trigger)."""
        return time.monotonic() < self.window_end and self.mm[8] == 0

    def swapped(self, n: int = 1) -> None:
        self.swaps += n
        struct.pack_into("<Q", self.mm, 0, self.swaps)

    def at(self, name: str) -> str:
        return os.path.join(self.dest, name)

    def link_target(self, i: int) -> str:
        return self.link_to[i % len(self.link_to)]

    # -- setup ----------------------------------------------------------------------

    def setup(self) -> None:
        mode = self.cfg["mode"]
        if mode == "dir-exchange":
            for i in range(len(self.targets)):
                os.symlink(self.link_target(i), self.at(f".swap-{i}"))
        elif mode == "parent-swap":
            os.symlink(self.link_to[0], self.cfg["parent"] + ".lnk")

    def wait_trigger(self) -> bool:
        trigger = self.cfg["trigger"]
        while not self.stopped():
            if os.path.lexists(trigger):
                return True
        return False

    # -- modes ----------------------------------------------------------------------

    def dir_exchange(self) -> None:
        n = len(self.targets)
        is_link = [False] * n
        once = bool(self.cfg.get("once"))
        while self.attacking():
            for i, t in enumerate(self.targets):
                if once and is_link[i]:
                    continue
                self.ops += 1
                try:
                    renameat2(self.at(t), self.at(f".swap-{i}"), RENAME_EXCHANGE)
                except OSError:
                    self.errors += 1
                    continue
                is_link[i] = not is_link[i]
                if is_link[i]:
                    self.swapped()
            if once and all(is_link):
                return  # keep them swapped
        if not once:
            for i, t in enumerate(self.targets):  # put the directories back
                if is_link[i]:
                    try:
                        renameat2(self.at(t), self.at(f".swap-{i}"), RENAME_EXCHANGE)
                    except OSError:
                        pass

    def dir_rename(self) -> None:
        hold = self.cfg.get("hold") or self.dest
        generation = 0
        while self.attacking():
            generation += 1
            away: list[tuple[str, str]] = []
            for i, t in enumerate(self.targets):
                moved = os.path.join(hold, f".away-{t.replace('/', '_')}-{generation}")
                self.ops += 1
                try:
                    os.rename(self.at(t), moved)
                except OSError:
                    self.errors += 1
                    continue
                away.append((t, moved))
                try:
                    os.symlink(self.link_target(i), self.at(t))
                    self.swapped()
                except OSError:
                    self.errors += 1
            for t, moved in away:
                self.ops += 1
                try:
                    os.unlink(self.at(t))
                except OSError:
                    self.errors += 1
                try:
                    os.rename(moved, self.at(t))
                except OSError:
                    self.errors += 1

    def parent_swap(self) -> None:
        parent = self.cfg["parent"]
        moved = parent + ".moved"
        lnk = parent + ".lnk"
        exchange = False
        while self.attacking():
            exchange = not exchange
            self.ops += 1
            if exchange:
                try:
                    renameat2(parent, lnk, RENAME_EXCHANGE)
                except OSError:
                    self.errors += 1
                    continue
                self.swapped()
                self._linger()
                try:
                    renameat2(parent, lnk, RENAME_EXCHANGE)
                except OSError:
                    self.errors += 1
            else:
                try:
                    os.rename(parent, moved)
                except OSError:
                    self.errors += 1
                    continue
                try:
                    os.symlink(self.link_to[0], parent)
                    self.swapped()
                    self._linger()
                    os.unlink(parent)
                except OSError:
                    self.errors += 1
                try:
                    os.rename(moved, parent)
                except OSError:
                    self.errors += 1
        self.restore_parent()

    def _linger(self) -> None:
        """Keep the swapped state for a moment (a few hundred microseconds)."""
        end = time.perf_counter() + 0.0003
        while time.perf_counter() < end:
            pass

    def restore_parent(self) -> None:
        """Put the real parent directory back (the test checks that it is there)."""
        parent = self.cfg["parent"]
        for _ in range(3):
            if os.path.isdir(parent) and not os.path.islink(parent):
                return
            try:
                if os.path.islink(parent):
                    lnk = parent + ".lnk"
                    if os.path.isdir(lnk) and not os.path.islink(lnk):
                        renameat2(parent, lnk, RENAME_EXCHANGE)
                        continue
                    os.unlink(parent)
                if os.path.isdir(parent + ".moved"):
                    os.rename(parent + ".moved", parent)
            except OSError:
                self.errors += 1

    def file_swap(self) -> None:
        kind = self.cfg["kind"]
        victim = self.cfg.get("victim_file", "")
        tmp = self.at(".fswap-tmp")
        i = 0
        while self.attacking():
            for t in self.targets:
                i += 1
                path = self.at(t)
                self.ops += 1
                try:
                    if kind == "hardlink":
                        os.link(victim, path)
                    else:
                        os.symlink(self.link_target(i), path)
                    self.swapped()  # landed in the gap between an unlink and a create
                    continue
                except FileExistsError:
                    pass
                except OSError:
                    self.errors += 1
                    continue
                try:
                    if kind == "hardlink":
                        os.link(victim, tmp)
                    else:
                        os.symlink(self.link_target(i), tmp)
                except FileExistsError:
                    pass
                except OSError:
                    self.errors += 1
                    continue
                try:
                    os.rename(tmp, path)
                    self.swapped()
                except OSError as err:
                    if err.errno != errno.ENOENT:
                        self.errors += 1

    def run(self) -> None:
        self.setup()
        print("ready", flush=True)
        if self.wait_trigger():
            self.window_end = min(self.deadline, time.monotonic() + self.window)
            getattr(self, self.cfg["mode"].replace("-", "_"))()
            while not self.stopped():  # the window is over: idle, out of the way
                time.sleep(0.002)
        elif self.cfg["mode"] == "parent-swap":
            self.restore_parent()
        print(json.dumps({"swaps": self.swaps, "errors": self.errors, "ops": self.ops}),
              flush=True)


def main() -> int:
    cfg = json.loads(sys.argv[1])
    Attacker(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
