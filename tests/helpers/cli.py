"""Running the command line, and checking its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

CLI = [sys.executable, "-m", "chrootarchive"]


class CLIResult(tuple[int, str, str]):
    """``(rc, stdout, stderr)``, also reachable as ``.rc``, ``.out``, ``.err``."""

    @property
    def rc(self) -> int:
        return self[0]

    @property
    def out(self) -> str:
        return self[1]

    @property
    def err(self) -> str:
        return self[2]


def run_cli(
    *args: str | os.PathLike[str],
    input: bytes | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    umask: int | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> CLIResult:
    """Run ``[*prefix, python, -m, chrootarchive, *args]``; stdin is ``input`` (or empty)."""
    cmd = [*(prefix or []), *CLI, *(os.fspath(a) for a in args)]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    proc = subprocess.run(
        cmd,
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
        env=full_env,
        preexec_fn=preexec,
        cwd=cwd,
    )
    return CLIResult(
        (
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )
    )


def assert_one_line_error(
    result: CLIResult, *, rc: int | tuple[int, ...] = 1, mentions: tuple[str, ...] = ()
) -> str:
    """The command failed with status ``rc`` and printed exactly one line on stderr,
    ``chrootarchive: error: ...``, without a traceback. Returns that line."""
    rcs = (rc,) if isinstance(rc, int) else rc
    assert result.rc in rcs, f"exit status {result.rc}, expected {rc}; stderr: {result.err!r}"
    assert "Traceback" not in result.err, f"traceback without --debug: {result.err}"
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}: {result.err!r}"
    line = lines[0]
    assert line.startswith("chrootarchive: error: "), f"bad error line: {line!r}"
    assert len(line) > len("chrootarchive: error: ") + 5, f"empty error message: {line!r}"
    for word in mentions:
        assert word.lower() in line.lower(), f"{word!r} not mentioned in {line!r}"
    return line
