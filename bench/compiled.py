"""Whether the compiled modules a benchmark is about to run are the ones to measure.

The package runs without its compiled modules (the same rules in Python, slower), and
with modules built by hand: one built with ``-O0`` for a debugger, or older than its
source, makes a run measure the wrong thing and look like a regression (it happened:
issue 16, eighteenth round). The benchmarks copy the package as it is; this says
what is wrong with it before an hour of measuring.
"""

from __future__ import annotations

import re
from pathlib import Path

# Modules under chrootarchive/ and their sources (setup.py builds the same list).
MODULES = {
    "tarformat/_ustar": ("tarformat/_ustar.c", "stable_refs.h"),
    "engine/_finish": ("engine/_finish.c", "stable_refs.h"),
}
# GCC and Clang record their flags in the debug information (Python's flags add -g).
_PRODUCER = re.compile(rb"(?:GNU C|clang version)[^\0]*")
_OPTIMISATION = re.compile(rb" -O(\w*)")


def problems(package: Path) -> list[str]:
    """What is wrong with the compiled modules of the package directory ``package``: one
    sentence each; none when each is built, optimised and newer than its sources."""
    found = []
    for module, sources in MODULES.items():
        built = sorted(package.glob(f"{module}.*.so"))
        if not built:
            found.append(f"{module} is not compiled: the package runs its Python "
                         "fallback (install with a C compiler, or build_ext --inplace)")
            continue
        binary = built[-1]
        producer = _PRODUCER.search(binary.read_bytes())
        levels = _OPTIMISATION.findall(producer.group()) if producer else []
        if not levels:
            found.append(f"{binary.name} records no compiler flags (built without -g?): "
                         "its optimisation is unknown")
        elif levels[-1] in (b"", b"0", b"g"):
            found.append(f"{binary.name} was built with -O{levels[-1].decode()}: "
                         "rebuild it (setup.py build_ext --inplace --force)")
        newer = [s for s in sources if (package / s).exists()
                 and (package / s).stat().st_mtime > binary.stat().st_mtime]
        if newer:
            found.append(f"{binary.name} is older than {', '.join(newer)}: rebuild it")
    return found
