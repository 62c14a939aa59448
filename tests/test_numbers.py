"""Numbers out of range are bad archives (exit 1, entry named), never exit 70 (issue 14, item 5)."""

from __future__ import annotations

import os
from pathlib import Path

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
def test_out_of_range_number_is_malformed(tmp_path: Path, case: str) -> None:
    archive = tmp_path / "a.tar"
    CASES[case].write(archive)
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run_cli("untar", archive, dest)
    assert result.rc == 1, result
    assert "bug" not in result.err and "Overflow" not in result.err, result.err
    assert any(s in result.err for s in ("dev:", "f:", "extended header")), result.err
    assert not (dest / "f").exists() and not (dest / "dev").exists()


# Every other numeric field the reader takes, at the edges of what the syscalls it
# reaches accept: a clear result (exit 0 or 1 naming the entry), never exit 70.
_BIG = (1 << 63) - 1


def _sparse(realsize: int, offset: int) -> TarBuilder:
    """A GNU 1.0 sparse file "f" of ``realsize`` bytes with one byte of data at ``offset``."""
    sparse_map = f"1\n{offset}\n1\n".encode().ljust(512, b"\x00")
    return TarBuilder().pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                             "GNU.sparse.name": "f", "GNU.sparse.realsize": str(realsize)}
                            ).file("GNUSparseFile.0/f", sparse_map + b"z")
_SKIP = 8_700_000_000_000_000_000  # below the --max-file-size given, beyond any file system
EDGES = {
    # Times beyond what utimensat takes are clamped, as GNU tar does.
    "mtime-base256-huge": (TarBuilder().file("f", b"x", mtime=base256((1 << 88) - 1, 12)), 0),
    "mtime-base256-negative": (TarBuilder().file("f", b"x", mtime=base256(-(1 << 87), 12)), 0),
    "dir-mtime-huge": (TarBuilder().dir("f", mtime=base256((1 << 88) - 1, 12)), 0),
    "symlink-mtime-huge": (TarBuilder().symlink("f", "t", mtime=base256((1 << 88) - 1, 12)), 0),
    "pax-mtime-1e18": (TarBuilder().pax({"mtime": "9" * 18}).file("f", b"x"), 0),
    "pax-mtime-minus-1e18": (TarBuilder().pax({"mtime": "-" + "9" * 18}).file("f", b"x"), 0),
    "pax-atime-1e18": (TarBuilder().pax({"atime": "9" * 18}).dir("f"), 0),
    "pax-mtime-1e19": (TarBuilder().pax({"mtime": "9" * 19}).file("f", b"x"), 1),
    # Sizes up to off_t's maximum: a truncated archive, wherever the data is skipped
    # (lseek past the file system's largest offset failed with EINVAL: exit 70).
    "size-2^63-1": (TarBuilder().file("f", b"", size=base256(_BIG, 12)), 1),
    "size-8.7e18-excluded": (TarBuilder().file("skip", b"", size=base256(_SKIP, 12))
                             .file("f", b"y"), 1),
    "size-8.7e18-whiteout": (TarBuilder().file(".wh.skip", b"", size=base256(_SKIP, 12))
                             .file("f", b"y"), 1),
    "size-20T-excluded": (TarBuilder().file("skip", b"", size=base256(20 << 40, 12))
                          .file("f", b"y"), 1),
    "pax-size-2^63-1": (TarBuilder().pax({"size": str(_BIG)}).file("f", b"x"), 1),
    "size-2^63": (TarBuilder().file("f", b"", size=base256(1 << 63, 12)), 1),
    # Sparse maps: bounded by their file's size, itself by off_t; a file the destination
    # cannot hold is "file too large" (4), or fine where it can (XFS, tmpfs).
    "sparse-realsize-2^63": (_sparse(1 << 63, 1 << 62), 1),
    "sparse-region-beyond-realsize": (_sparse(1 << 40, (1 << 41)), 1),
    "sparse-2^62": (_sparse(1 << 62, (1 << 62) - 1), (0, 4)),
}


@pytest.mark.parametrize("confine", ["pivot", "openat2"])
@pytest.mark.parametrize("case", sorted(EDGES))
def test_numeric_edges_never_exit_70(tmp_path: Path, case: str, confine: str) -> None:
    builder, rc = EDGES[case]
    archive = tmp_path / "a.tar"
    builder.write(archive)
    dest = tmp_path / "dest"
    dest.mkdir()
    # No file size limit in the way (the largest one accepted), so the values reach
    # the syscalls; the layer command, so that whiteouts are applied.
    result = run_cli("apply-layer", "--max-file-size", "8000000T", "--confine", confine,
                     "--exclude", "skip", archive, dest)
    assert result.rc in (rc if isinstance(rc, tuple) else (rc,)), result
    assert "bug" not in result.err and "Error:" not in result.err, result.err
    if result.rc:
        assert result.err.startswith(("chrootarchive: error: f:", "chrootarchive: error: skip:",
                                      "chrootarchive: error: .wh.skip:",
                                      "chrootarchive: error: GNUSparseFile.0/f:",
                                      "chrootarchive: error: extended header")), result.err
    else:
        assert (dest / "f").is_symlink() or (dest / "f").exists()
        if case == "sparse-2^62":
            assert os.lstat(dest / "f").st_size == 1 << 62


def test_limit_beyond_rlim_t_is_no_overflow(tmp_path: Path) -> None:
    """--max-file-size above 2^63 (a huge unit) is "no limit" for the kernel's
    RLIMIT_FSIZE backstop, not an OverflowError in the worker (exit 70)."""
    archive = tmp_path / "a.tar"
    TarBuilder().file("f", b"x").write(archive)
    result = run_cli("untar", "--max-file-size", "100000000T", "--confine", "pivot", archive,
                     tmp_path / "dest")
    assert result.rc == 0, result.err
    assert (tmp_path / "dest" / "f").read_bytes() == b"x"
