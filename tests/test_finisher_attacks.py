"""An attacker's review of the helper that creates files by name (issue 16).

The archive names a file the helper is still creating through another spelling: a
symlink to its directory, ``./`` and ``//`` forms. The tree must be the worker's alone.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from helpers import tree
from test_finisher import _add, _files_for_the_helper_to_start, _in_process


def _both(archive: bytes, tmp_path: Path) -> dict[str, dict]:
    results = {}
    for mode in ("alone", "plain"):
        (tmp_path / mode).mkdir()
        results[mode] = _in_process(archive, tmp_path / mode, mode)
    return results


def test_a_hardlink_through_a_symlink_to_a_file_the_helper_creates(tmp_path: Path) -> None:
    """``real/f`` goes to the helper; ``h`` links to it as ``s/f`` through the in-root
    symlink ``s -> real``: the worker alone links it; with the helper the same."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "real", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "s", kind=tarfile.SYMTYPE, linkname="real")
        _files_for_the_helper_to_start(tf)
        for i in range(20):
            _add(tf, f"real/f{i}", b"linked to " + str(i).encode())
            _add(tf, f"h{i}", kind=tarfile.LNKTYPE, linkname=f"s/f{i}")
    results = _both(buf.getvalue(), tmp_path)
    assert results["plain"]["helper"], results
    assert "error" not in results["alone"], results
    assert "error" not in results["plain"], results
    dest = tmp_path / "plain" / "dest"
    for i in range(20):
        assert (dest / f"h{i}").read_bytes() == b"linked to %d" % i


def test_other_spellings_of_a_pending_name_as_without_the_helper(tmp_path: Path) -> None:
    """``./x``, ``x/``, ``a//b``, ``d/../x`` name what the helper is creating: the
    worker waits for it exactly as for the plain name; the trees are the same."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _files_for_the_helper_to_start(tf)
        _add(tf, "x", b"first")
        _add(tf, "./x", b"second")
        _add(tf, "y", b"a file")
        _add(tf, "y/", kind=tarfile.DIRTYPE, mode=0o750)
        _add(tf, "./y//z", b"below")
        _add(tf, "a/w", b"w1")
        _add(tf, "a//w", b"w2")
        _add(tf, "hw", kind=tarfile.LNKTYPE, linkname="./a//w")
        _add(tf, "q", b"q")
        _add(tf, "a/../q", kind=tarfile.SYMTYPE, linkname="x")
        _add(tf, "hq", kind=tarfile.LNKTYPE, linkname="a/../x")
    trees = {}
    for mode in ("alone", "plain"):
        (tmp_path / mode).mkdir()
        result = _in_process(buf.getvalue(), tmp_path / mode, mode)
        assert "error" not in result, (mode, result)
        trees[mode] = tree.snapshot(tmp_path / mode / "dest", nlink=True)
    tree.assert_same(trees["alone"], trees["plain"], "the helper made another tree",
                     ignore=lambda path, key: key == "mtime_ns" and path in {".", "a"})
    dest = tmp_path / "plain" / "dest"
    assert (dest / "x").read_bytes() == b"second" and (dest / "y" / "z").read_bytes() == b"below"
    assert (dest / "hw").read_bytes() == b"w2" and (dest / "hq").read_bytes() == b"second"
