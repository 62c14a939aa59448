"""The confinement mechanisms, as the package itself lists and checks them.

The list is the confinement package's (``chrootarchive.jail.confine.MECHANISMS``); whether
this machine can run one is the ladder's answer (``chrootarchive.runner.ladder``).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

import pytest

from chrootarchive.jail import confine
from chrootarchive.runner import ladder
from helpers.tree import Snapshot

#: Every mechanism the package can be asked for by name (``UnpackOptions(confine=...)``).
MECHANISMS: tuple[str, ...] = tuple(confine.MECHANISMS)


def unavailable_reason(name: str) -> str | None:
    """Why this machine cannot run ``name`` (the package's own answer), or None."""
    from chrootarchive.errors import ConfinementError

    try:
        ladder.candidates(name)
    except ConfinementError as err:  # MechanismUnavailableError is one
        return err.message
    return None


def require(name: str) -> str:
    """``name``, if this machine can run it; else skip the test with the package's
    reason, or on CI (:func:`on_ci`) fail it: there a missing mechanism is a bug."""
    reason = unavailable_reason(name)
    if reason is not None:
        if on_ci():
            pytest.fail(f"on CI every mechanism must work: {reason}")
        pytest.skip(reason)
    return name


def variants(*, without: Collection[str] = (),
             slow_beyond: Collection[str] | None = None) -> list[Any]:
    """Parameters for ``@pytest.mark.parametrize("mechanism", ..., indirect=True)``: the
    ``mechanism`` fixture (skip or CI failure included) over :data:`MECHANISMS`.

    Args:
        without: mechanisms this test is not about, for a reason its comment gives.
        slow_beyond: when set, every other mechanism's variant is marked ``slow`` (a
            slow test keeps only these in the fast tier).
    """
    return [pytest.param(name, id=name,
                         marks=pytest.mark.slow if slow_beyond is not None
                         and name not in slow_beyond else ())
            for name in MECHANISMS if name not in without]


def on_ci() -> bool:
    """CI runs as root on Linux 6.x, where every mechanism works: none may be missing."""
    return os.environ.get("CI", "").lower() == "true"


#: Mechanisms that, even as root, cannot give files arbitrary owners or make device
#: nodes: ``userns`` maps the caller's subordinate ids only, so owners outside them
#: and devices are skipped, each with a warning (``test_mechanisms.py`` checks those).
LIMITED_AS_ROOT = frozenset({"userns"})

_DEVICES = ("chardev", "blockdev")


def comparable(snap: Snapshot, mechanism: str) -> Snapshot:
    """A tree snapshot (``helpers.tree``) without what ``mechanism`` cannot reproduce:
    under a limited one, owners and device nodes are left out of the comparison."""
    if mechanism not in LIMITED_AS_ROOT:
        return snap
    return {path: {k: v for k, v in info.items() if k not in ("uid", "gid")}
            for path, info in snap.items() if info.get("type") not in _DEVICES}
