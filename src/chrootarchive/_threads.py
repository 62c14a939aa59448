"""Waiting, in the caller's thread, for a thread of a call to end."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["STEP", "wait_ended"]

#: Seconds between looks for a KeyboardInterrupt while a thread is waited for: one
#: that ``_thread.interrupt_main`` raised (no signal) waits for the next bytecode.
STEP = 0.05


def wait_ended(ended: threading.Event, stop: Callable[[], None] | None = None) -> None:
    """Until a thread of the call has ended (it sets ``ended`` as its last step).

    Not ``Thread.join``: under 3.11 a join that a KeyboardInterrupt cuts short marks
    the thread ended while it runs on (a later join returns at once), and a blocking
    join runs no bytecode for ``_thread.interrupt_main``. An interrupt meanwhile calls
    ``stop`` (what ends the thread soon) and still waits for the end before it is
    raised: the thread does not outlive the call (a second interrupt is raised at once).
    """
    try:
        while not ended.wait(STEP):
            pass
    except BaseException:
        if stop is not None:
            stop()
        while not ended.wait(STEP):
            pass
        raise
