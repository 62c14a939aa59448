"""The confinement mechanisms, as the package itself lists and checks them.

Tests import the package's ladder only through :func:`_ladder`, so that a move of the
ladder functions (to ``chrootarchive.runner.ladder``, say) is a one-line change here.
"""

from __future__ import annotations

import os
from types import ModuleType


def _ladder() -> ModuleType:
    """The module that holds ``MECHANISMS`` and ``candidates``."""
    from chrootarchive.jail import confine

    return confine


#: Every mechanism the package can be asked for by name (``UnpackOptions(confine=...)``).
MECHANISMS: tuple[str, ...] = tuple(_ladder().MECHANISMS)


def unavailable_reason(name: str) -> str | None:
    """Why this machine cannot run ``name`` (the package's own answer), or None."""
    from chrootarchive.errors import ConfinementError

    try:
        _ladder().candidates(name)
    except ConfinementError as err:  # MechanismUnavailableError is one
        return err.message
    return None


def on_ci() -> bool:
    """CI runs as root on Linux 6.x, where every mechanism works: none may be missing."""
    return os.environ.get("CI", "").lower() == "true"
