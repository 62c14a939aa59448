"""Numbers out of range are bad archives (exit 1, entry named), never exit 70 (issue 14, item 5)."""

from __future__ import annotations

import pytest

from helpers.cli import run_cli
from helpers.tarbuild import TarBuilder, base256

CASES = {
    "devmajor-2^31": TarBuilder().chardev("dev", base256(1 << 31, 8), 0),
    "devminor-2^31": TarBuilder().chardev("dev", 0, base256(1 << 31, 8)),
    "devmajor-2^12": TarBuilder().chardev("dev", 1 << 12, 0),
    "devminor-2^20": TarBuilder().blockdev("dev", 0, 1 << 20),
    "uid-2^32-1": TarBuilder().file("f", b"x", uid=base256((1 << 32) - 1, 8)),
    "gid-2^32-1": TarBuilder().file("f", b"x", gid=base256((1 << 32) - 1, 8)),
    "pax-uid-2^32-1": TarBuilder().pax({"uid": str((1 << 32) - 1)}).file("f", b"x"),
    "pax-gid-2^32-1": TarBuilder().pax({"gid": str((1 << 32) - 1)}).file("f", b"x"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_of_range_number_is_malformed(tmp_path, case: str) -> None:  # type: ignore[no-untyped-def]
    archive = tmp_path / "a.tar"
    CASES[case].write(archive)
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run_cli("untar", archive, dest)
    assert result.rc == 1, result
    assert "bug" not in result.err and "Overflow" not in result.err, result.err
    assert any(s in result.err for s in ("dev:", "f:", "extended header")), result.err
    assert not (dest / "f").exists() and not (dest / "dev").exists()
