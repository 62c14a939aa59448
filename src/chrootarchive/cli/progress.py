"""Progress bars on stderr (tqdm, a dependency): shown on a terminal only. (Should
tqdm be missing all the same, the work goes on without a bar.)"""

from __future__ import annotations

import os
import sys

from chrootarchive.errors import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from chrootarchive.image import LayerProgress


class ByteProgress:
    """A progress bar on stderr, only on a terminal and only once work takes a moment."""

    def __init__(self, total: int | None, enabled: bool, desc: str = "unpacking") -> None:
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm  # type: ignore[import-untyped]
        except ImportError:
            return
        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                         delay=0.5, leave=False, file=sys.stderr, desc=desc)

    def update(self, done: int) -> None:
        """``done``: bytes so far (the library's callbacks are cumulative)."""
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def source_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size if path != "-" else None
    except OSError:
        return None


class LayerBars:
    """One progress bar per layer on stderr (a terminal only)."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None
        self._index = -1
        self._done = 0
        self._tqdm: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._tqdm = tqdm

    def __call__(self, event: LayerProgress) -> None:
        if not self._enabled:
            return
        digest = printable(event.digest.partition(":")[2][:12])  # checked, yet escaped
        label = f"layer {event.index + 1}/{event.count} {digest}"
        if self._tqdm is None:
            if event.finished:
                print(f"{label}: applied", file=sys.stderr)
            return
        if event.index != self._index:
            self.close()
            self._index = event.index
            self._done = 0
            self._bar = self._tqdm(total=event.total, unit="B", unit_scale=True,
                                   unit_divisor=1024, leave=True, file=sys.stderr,
                                   desc=label)
        self._bar.update(event.done - self._done)
        self._done = event.done
        if event.finished:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
