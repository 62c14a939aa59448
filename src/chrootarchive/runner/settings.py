"""Process-wide switches of the runner, set through the public API (never the environment)."""

from __future__ import annotations

__all__ = ["debug", "set_debug"]

_debug = False


def set_debug(enabled: bool) -> None:
    """Workers print their traceback on failure (the command line's ``--debug``)."""
    global _debug
    _debug = bool(enabled)


def debug() -> bool:
    return _debug
