"""The worker's start-up: what it imports, and the lean stand-ins that make that possible.

A one-file archive costs about as much as starting the worker, and most of the start-up
was importing the standard library (``json`` pulls in ``re`` and ``enum``, ``dataclasses``
pulls in ``inspect``, ``typing``...). The worker now imports only what it uses; these
tests keep it that way, and check that each stand-in (JSON from the C accelerator, a
percent-decoder, a normpath-free fast path for clean names) agrees with what it replaces.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import subprocess
import sys
import tarfile
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chrootarchive
from chrootarchive import _wire
from chrootarchive.engine import names as paths
from chrootarchive.errors import BreakoutError, MalformedArchiveError
from chrootarchive.tarformat import reader as tarreader

SRC = str(Path(chrootarchive.__file__).resolve().parent.parent)

# What the worker imports as it boots, before its job arrives and before the jail: the
# child, the mechanisms, the file operations and the job's module (child._boot).
_WORKER_IMPORTS = """
import sys
sys.path.insert(0, sys.argv[1])
from chrootarchive.jail import main as child
child._boot(sys.argv[2])
sys.stdout.write(" ".join(sorted(sys.modules)))
"""

# Each of these costs the worker milliseconds, or is parent-side only.
HEAVY = {
    "json", "re", "enum", "typing", "dataclasses", "inspect", "subprocess", "socket",
    "selectors", "threading", "queue", "tempfile", "random", "shutil", "urllib",
    "urllib.parse", "contextlib", "functools", "collections", "platform", "signal",
    "importlib", "chrootarchive.options",
}
# The parent's packages: the worker never loads any module of these.
PARENT_PACKAGES = ("chrootarchive.cli", "chrootarchive.image", "chrootarchive.operations",
                   "chrootarchive.runner")


def test_unpack_worker_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _WORKER_IMPORTS, SRC, "unpack"],
        capture_output=True, text=True, check=True,
    )
    loaded = set(out.stdout.split())
    assert "chrootarchive.engine.unpacker" in loaded  # the check looked at a real worker's imports
    assert not HEAVY & loaded, f"the worker now imports {sorted(HEAVY & loaded)}"
    parent = sorted(m for m in loaded if m.startswith(PARENT_PACKAGES))
    assert not parent, f"the worker now imports parent code: {parent}"


def test_a_one_file_untar_works_from_a_lean_worker(tmp_path: Path) -> None:
    """End to end: the lean worker, jailed with imports forbidden, unpacks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("d/x.txt")
        info.size = 5
        info.pax_headers = {"LIBARCHIVE.xattr.user.k%41": "dg=="}  # percent, base64
        t.addfile(info, io.BytesIO(b"hello"))
    archive = tmp_path / "one.tar"
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "dest"
    result = chrootarchive.untar(archive, dest)
    assert result.entries == 1 and result.confinement in ("pivot", "chroot")
    assert (dest / "d" / "x.txt").read_bytes() == b"hello"
    assert os.getxattr(dest / "d" / "x.txt", "user.kA") == b"v"


def test_excludes_and_timeout_still_work_in_the_jail(tmp_path: Path) -> None:
    """Patterns need ``re`` and the timeout ``signal``: imported before the jail."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in ("keep/a", "drop/b", "keep/c.log"):
            info = tarfile.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    options = chrootarchive.UnpackOptions(
        excludes=("drop", "*/*.log"), limits=chrootarchive.Limits(timeout=60.0)
    )
    chrootarchive.untar(archive, tmp_path / "dest", options)
    assert sorted(p.name for p in (tmp_path / "dest").rglob("*")) == ["a", "keep"]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_wire_is_json(value: object) -> None:
    encoded = _wire.dumps(value)
    assert json.loads(encoded) == value
    assert _wire.loads(encoded) == value
    assert _wire.loads(json.dumps(value).encode()) == value


@pytest.mark.parametrize("document", [b"", b"{", b"[1] 2", b"NaN", b"{'a': 1}", b"\xff"])
def test_wire_refuses_what_is_not_json(document: bytes) -> None:
    with pytest.raises(ValueError):
        _wire.loads(document)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("%0123456789abcdefABCDEFgz/é"), max_size=12))
def test_percent_decode_is_unquote_to_bytes(text: str) -> None:
    assert tarreader._percent_decode(text) == urllib.parse.unquote_to_bytes(text)


def test_percent_decode_keeps_undecodable_bytes() -> None:
    # Names are decoded with surrogateescape: a lone surrogate is the byte it stands for.
    assert tarreader._percent_decode("a\udcff%41%zz") == b"a\xffA%zz"


def _reference_clean(name: str) -> str:
    """clean_name() as it was: always through normpath."""
    if "\x00" in name:
        raise MalformedArchiveError("NUL", name)
    cleaned = posixpath.normpath(name) if name else "."
    if cleaned.startswith("/"):
        return posixpath.normpath("/" + cleaned.lstrip("/")).lstrip("/") or "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise BreakoutError("leaves", name)
    return cleaned


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", ".", "/", "..", "./", "\x00", "é"]), max_size=10)
       .map("".join))
def test_clean_name_fast_path_agrees_with_normpath(name: str) -> None:
    try:
        expected: str | type[Exception] = _reference_clean(name)
    except (BreakoutError, MalformedArchiveError) as err:
        expected = type(err)
    try:
        got: str | type[Exception] = paths.clean_name(name)
    except (BreakoutError, MalformedArchiveError) as err:
        got = type(err)
    assert got == expected
