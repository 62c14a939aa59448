"""Run many extractions in one process and report each outcome as plain data.

Used by ``tests/test_mechanisms.py`` in two ways: imported by the (root) test process,
and run as a script by an unprivileged user under ``/usr/bin/python3`` from a
world-readable copy (so it imports nothing but ``chrootarchive`` and the standard
library)::

    python3 mech_driver.py JOBS.json RESULTS.json [THREADS]

A job is ``{"id", "op", "archives", "dest", "in_root", "options"}``: ``op`` is ``untar``
(each archive unpacked into ``dest`` in turn), ``layer`` (each archive applied as a
layer onto ``dest``, lowest first) or ``root`` (``untar_with_root(archive, in_root,
dest)``: ``dest`` is the jail's root); ``options`` are :class:`UnpackOptions` fields.

An outcome is ``{"ok": [UnpackResult as JSON, ...]}``, ``{"error": {"type",
"message", "entry"}}`` for a :class:`ChrootArchiveError`, or ``{"crash": traceback}``
for anything else (a bug: an exception that is not part of the API).
"""

from __future__ import annotations

import json
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    import chrootarchive
    from chrootarchive.operations.untar import apply_layer

    try:
        options = chrootarchive.UnpackOptions(**job.get("options", {}))
        results = []
        for archive in job["archives"]:
            if job["op"] == "untar":
                result = chrootarchive.untar(archive, job["dest"], options)
            elif job["op"] == "layer":
                result = apply_layer(archive, job["dest"], options)
            elif job["op"] == "root":
                result = chrootarchive.untar_with_root(archive, job["in_root"], job["dest"],
                                                       options)
            else:
                raise ValueError(f"unknown op {job['op']!r}")
            results.append(result.to_json())
        return {"ok": results}
    except chrootarchive.ChrootArchiveError as err:
        return {"error": {"type": type(err).__name__, "message": err.message,
                          "entry": err.entry}}
    except BaseException:
        return {"crash": traceback.format_exc()}


def run_jobs(jobs: list[dict[str, Any]], threads: int = 4) -> dict[str, dict[str, Any]]:
    """Every job's outcome, by id (jobs run concurrently: each has its own directories)."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        outcomes = list(pool.map(run_job, jobs))
    return {job["id"]: outcome for job, outcome in zip(jobs, outcomes, strict=True)}


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        jobs = json.load(f)
    threads = int(argv[2]) if len(argv) > 2 else 4
    outcomes = run_jobs(jobs, threads)
    with open(argv[1], "w") as f:
        json.dump(outcomes, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
