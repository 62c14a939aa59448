"""Messages a terminal can trust: hostile entry names never reach it raw (issue 14, item 6)."""

from __future__ import annotations

import pytest

from chrootarchive.errors import MalformedArchiveError, printable
from helpers.cli import run_cli
from helpers.tarbuild import TarBuilder, truncate

HOSTILE = [
    "a\x1b[32m OK\x1b[0m",
    "a\rOK",
    "a\nchrootarchive: done",
    "a\x9b31m",
    "a\x7fb",
    "n" * 2100,
    b"bad\xff\xfe".decode("utf-8", "surrogateescape"),
]


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]


@pytest.mark.parametrize("name", HOSTILE)
def test_printable_has_no_control(name: str) -> None:
    shown = printable(name)
    assert not [c for c in shown if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]
    assert len(shown) <= 200
    assert shown.encode("utf-8")  # no lone surrogate left


def test_error_str_escapes_and_shortens_entry() -> None:
    err = MalformedArchiveError("truncated data", "x" * 2100 + "\x1b[32mOK")
    text = str(err)
    assert "\x1b" not in text and "\\x1b[32mOK" in text
    assert text.endswith(": truncated data") and len(text) < 200


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_cli_error_with_hostile_name(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    """A truncated entry with a hostile name: one line, no raw control, the problem shown."""
    data = TarBuilder().file(name.encode("utf-8", "surrogateescape"), b"x" * 4000).build(eoa=False)
    archive = tmp_path / "a.tar"
    archive.write_bytes(truncate(data, 512 + 1000))
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run_cli("untar", archive, dest)
    assert result.rc == 1, result
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert not _raw_controls(result.err), repr(result.err)
    assert lines[0].startswith("chrootarchive: error: ")
    assert len(lines[0]) < 400
    assert "trunc" in lines[0].lower() or "end" in lines[0].lower(), lines[0]
