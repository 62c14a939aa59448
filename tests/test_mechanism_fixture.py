"""The ``mechanism`` fixture: every mechanism of the package, a missing one skipped with
the package's reason, but on CI (``CI=true``) a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import mechanisms

TESTS = Path(__file__).resolve().parent

# In a child process: "not supported" is learned once per process, for good.
_REQUIRE_MISSING = """
import pytest
from chrootarchive.runner import ladder
from helpers.mechanisms import require
ladder.mark_unavailable("userns", "simulated: no user namespaces")
try:
    require("userns")
except pytest.skip.Exception as e:
    print("skip:", e.msg)
except pytest.fail.Exception as e:
    print("fail:", e.msg)
else:
    print("ran")
"""


def test_the_package_lists_the_mechanisms() -> None:
    assert mechanisms.MECHANISMS == ("pivot", "chroot", "userns", "openat2")


@pytest.mark.parametrize(("ci", "outcome"), [("", "skip"), ("true", "fail")])
def test_a_missing_mechanism_skips_except_on_ci(ci: str, outcome: str) -> None:
    env = {**os.environ, "CI": ci,
           "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", _REQUIRE_MISSING], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{outcome}:"), proc.stdout
    assert "simulated: no user namespaces" in proc.stdout
