"""Options are checked when they are made: a bad value is the caller's error at once
(``TypeError`` for a wrong type, ``ValueError`` for a bad value), with a message naming
the field and the value, before any process starts, and exit status 2 on the command
line. Every field of every option class has a bad type and (where a value can be bad)
a bad value below; the good values are the defaults and those the other tests use."""

from __future__ import annotations

import ast
import dataclasses
import gzip
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import zstandard

import chrootarchive.options as options_module
from chrootarchive import IDMap, Limits, PackOptions, UnpackOptions, tar
from chrootarchive.jail.confine import MECHANISMS
from helpers.cli import run_cli

_NO_BAD_VALUE = object()  # a bool or a class: every value of the right type is good

#: (class, field, a value of the wrong type, a bad value of the right type)
FIELDS: list[tuple[type, str, object, object]] = [
    (IDMap, "container_id", "0", -1),
    (IDMap, "host_id", 1.0, 2**32 - 1),  # (uid_t)-1 means "no change" to the kernel
    (IDMap, "size", True, 0),
    *((Limits, name, bad_type, bad_value) for name, bad_type, bad_value in [
        ("max_bytes", "1G", 0), ("max_entries", 1.5, -1), ("max_file_size", True, 0),
        ("max_path_length", "4096", 0), ("max_path_depth", 3.0, -3),
        ("max_xattr_bytes", b"1", 0), ("max_memory", "64M", 47 << 20),
        ("reserve", "5%", 100), ("timeout", "60", 0),
    ]),
    (UnpackOptions, "no_lchown", 1, _NO_BAD_VALUE),
    (UnpackOptions, "chown", 5, (-1, 0)),
    (UnpackOptions, "uid_maps", IDMap(0, 1000, 1), (IDMap(0, 1000, 10), IDMap(5, 2000, 10))),
    (UnpackOptions, "gid_maps", [(0, 1000, 1)], (IDMap(0, 1000, 10), IDMap(20, 1005, 1))),
    (UnpackOptions, "excludes", "*.txt", ["ok", "[abc"]),
    (UnpackOptions, "no_overwrite_dir_nondir", "no", _NO_BAD_VALUE),
    (UnpackOptions, "best_effort_xattrs", 0, _NO_BAD_VALUE),
    (UnpackOptions, "confine", None, "jail"),
    (UnpackOptions, "whiteout_format", b"aufs", "btrfs"),
    (UnpackOptions, "rootless_xattr", None, _NO_BAD_VALUE),
    (UnpackOptions, "limits", {"max_bytes": 1}, _NO_BAD_VALUE),
    (UnpackOptions, "filter", True, "trusting"),
    (UnpackOptions, "strip_components", "1", -1),
    (UnpackOptions, "old_files", None, "overwrite"),
    (UnpackOptions, "exclude_style", 1, "rsync"),
    (UnpackOptions, "atomic", 1.0, _NO_BAD_VALUE),
    (UnpackOptions, "members", "a.txt", ["a", "../b"]),
    (PackOptions, "include_files", "a", ["a", "../b"]),
    (PackOptions, "excludes", b"x", ["a[b"]),
    (PackOptions, "exclude_style", 1, "gnu"),
    (PackOptions, "rebase_names", {"a": 1}, {"../a": "b"}),
    (PackOptions, "include_source_dir", 1, _NO_BAD_VALUE),
    (PackOptions, "chown", (0, "0"), (0, 2**32 - 1)),
    (PackOptions, "uid_maps", [IDMap(0, 0, 1), "x"], (IDMap(0, 0, 5), IDMap(4, 100, 1))),
    (PackOptions, "gid_maps", None, (IDMap(0, 0, 2), IDMap(1, 0, 1))),
    (PackOptions, "user_names", {"0": "root"}, {2**32 - 1: "nobody"}),
    (PackOptions, "group_names", {0: 5}, {0: "ro\x00ot"}),
    (PackOptions, "compression", None, "lz4"),
    (PackOptions, "compression_level", "9", 10),  # with gzip: 0-9
    (PackOptions, "xattrs", "yes", _NO_BAD_VALUE),
    (PackOptions, "whole_second_mtimes", None, _NO_BAD_VALUE),
    (PackOptions, "sparse", "yes", _NO_BAD_VALUE),
    (PackOptions, "confine", 0, "nope"),
]

#: Fields some bad values need beside them (IDMap has no defaults).
_BASE: dict[type, dict[str, Any]] = {
    IDMap: {"container_id": 0, "host_id": 0, "size": 1},
    PackOptions: {"compression": "gzip"},  # so that compression_level has a range
}


def _cases(kind: str) -> list[Any]:
    index = 2 if kind == "type" else 3
    return [pytest.param(row[0], row[1], row[index], id=f"{row[0].__name__}.{row[1]}")
            for row in FIELDS if row[index] is not _NO_BAD_VALUE]


def _make(cls: type, name: str, value: object) -> object:
    fields = dict(_BASE.get(cls, {}))
    if cls is PackOptions and name == "compression":
        fields.pop("compression")
    return cls(**{**fields, name: value})


def _refused(error: type[Exception], cls: type, name: str, value: object) -> None:
    """``cls(name=value)`` and ``replace(good, name=value)`` both raise ``error``,
    naming the field."""
    with pytest.raises(error) as info:
        _make(cls, name, value)
    assert name in str(info.value) and cls.__name__ in str(info.value), info.value
    good = cls(**_BASE.get(cls, {}))
    with pytest.raises(error):
        dataclasses.replace(good, **{name: value})


def test_every_field_has_cases() -> None:
    """The tables above cover every field of every option class."""
    for cls in (IDMap, Limits, UnpackOptions, PackOptions):
        covered = {row[1] for row in FIELDS if row[0] is cls}
        assert covered == {f.name for f in dataclasses.fields(cls)}, cls


@pytest.mark.parametrize(("cls", "name", "value"), _cases("type"))
def test_a_wrong_type_is_a_type_error(cls: type, name: str, value: object) -> None:
    _refused(TypeError, cls, name, value)


@pytest.mark.parametrize(("cls", "name", "value"), _cases("value"))
def test_a_bad_value_is_a_value_error(cls: type, name: str, value: object) -> None:
    _refused(ValueError, cls, name, value)


@pytest.mark.parametrize(("fields", "error"), [
    ({"excludes": b"*.txt"}, TypeError), ({"excludes": [1]}, TypeError),
    ({"excludes": {"a", "b"}}, TypeError), ({"excludes": {"a": 1}}, TypeError),  # no order
    ({"excludes": 5}, TypeError), ({"excludes": ["a\x00b"]}, ValueError),
    ({"excludes": ["[z-a]"]}, ValueError), ({"excludes": ["[]"]}, ValueError),
    ({"chown": (1,)}, TypeError), ({"chown": (1, 2, 3)}, TypeError),
    ({"chown": ("0", 0)}, TypeError), ({"chown": (0, True)}, TypeError),
    ({"uid_maps": "abc"}, TypeError), ({"uid_maps": 3}, TypeError),
    ({"uid_maps": [IDMap(0, 1000, 10), IDMap(5, 2000, 10)]}, ValueError),
    ({"confine": "Pivot"}, ValueError), ({"confine": ("pivot",)}, TypeError),
    ({"whiteout_format": None}, TypeError), ({"limits": Limits}, TypeError),
])
def test_more_bad_unpack_options(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="UnpackOptions"):
        UnpackOptions(**fields)


@pytest.mark.parametrize(("fields", "error"), [
    ({"include_files": ["a\x00"]}, ValueError), ({"include_files": [b"a"]}, TypeError),
    ({"rebase_names": {"a": "../b"}}, ValueError), ({"rebase_names": [("a", "b")]}, TypeError),
    ({"rebase_names": {1: "b"}}, TypeError), ({"rebase_names": {"a": "b/../c"}}, ValueError),
    ({"user_names": [(0, "root")]}, TypeError), ({"user_names": {-1: "x"}}, ValueError),
    ({"user_names": {True: "x"}}, TypeError), ({"group_names": {0.0: "x"}}, TypeError),
    ({"compression": "gzip", "compression_level": -1}, ValueError),
    ({"compression": "zstd", "compression_level": 0}, ValueError),
    ({"compression": "zstd", "compression_level": 23}, ValueError),
    ({"compression": "zstd", "compression_level": 3.0}, TypeError),
    ({"compression_level": 5}, ValueError),  # a level needs a compression
])
def test_more_bad_pack_options(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="PackOptions"):
        PackOptions(**fields)


@pytest.mark.parametrize(("fields", "error"), [
    ({"timeout": float("inf")}, ValueError), ({"timeout": float("nan")}, ValueError),
    ({"timeout": -1.0}, ValueError), ({"timeout": True}, TypeError),
    ({"timeout": 1e11}, ValueError),  # more than the worker's timer holds
    ({"max_bytes": 10.0**12}, TypeError), ({"max_entries": None, "max_bytes": -1}, ValueError),
])
def test_more_bad_limits(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="Limits"):
        Limits(**fields)


@pytest.mark.parametrize(("args", "error"), [
    ((2**32 - 10, 0, 20), ValueError), ((0, 2**32 - 10, 10), ValueError),
    ((0, 0, 2**32), ValueError), ((2**40, 0, 1), ValueError), ((0, 0, "1"), TypeError),
])
def test_id_ranges_must_not_overflow(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error, match="IDMap"):
        IDMap(*args)


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"\[x+\.\.\.x+'") as info:
        UnpackOptions(excludes=["[" + "x" * 10_000])
    assert len(str(info.value)) < 300
    with pytest.raises(ValueError, match=r"Limits\.max_bytes") as info:
        Limits(max_bytes=-(10**5000))  # too long even to print
    assert len(str(info.value)) < 300


def test_good_values_are_accepted_and_normalised() -> None:
    for cls in (Limits, UnpackOptions, PackOptions):
        assert cls() == cls()  # the defaults
    assert Limits.strict().timeout == 3600.0
    assert Limits(timeout=1, max_bytes=None).timeout == 1
    assert Limits(timeout=0.001, max_entries=1, max_file_size=1, max_path_length=1,
                  max_path_depth=1, max_xattr_bytes=1, max_bytes=2**70).max_bytes == 2**70
    assert Limits(**{f.name: None for f in dataclasses.fields(Limits)}).timeout is None
    assert IDMap(0, 0, 2**32 - 1).size == 2**32 - 1
    assert IDMap(2**32 - 2, 0, 1).container_id == 2**32 - 2
    for mechanism in ("auto", *MECHANISMS):
        assert UnpackOptions(confine=mechanism).confine == mechanism
        assert PackOptions(confine=mechanism).confine == mechanism
    # Lists and a generator, as callers pass them (accepted by mypy --strict too: the
    # signature takes them); the fields hold tuples.
    options = UnpackOptions(
        excludes=["a", "!a/b", "*.log", "**/x", "[!a]?", "a\\*", "  ", ""],
        chown=[5, 6],
        uid_maps=[IDMap(0, 100000, 65536), IDMap(65536, 0, 1)],
        gid_maps=(m for m in [IDMap(0, 100000, 65536)]),
        confine="openat2",
        limits=Limits.strict(), whiteout_format="overlay", no_lchown=True,
        no_overwrite_dir_nondir=True, best_effort_xattrs=True, rootless_xattr=True,
        filter="tar", atomic=True)
    assert options.excludes == ("a", "!a/b", "*.log", "**/x", "[!a]?", "a\\*", "  ", "")
    assert options.chown == (5, 6)
    assert options.uid_maps == (IDMap(0, 100000, 65536), IDMap(65536, 0, 1))
    assert options.gid_maps == (IDMap(0, 100000, 65536),)
    pack = PackOptions(include_files=["a/", "/b", "."],
                       excludes=("**/*.o",),
                       compression="zstd", compression_level=22, user_names={0: "root"},
                       group_names={2**32 - 2: "nogroup"}, rebase_names={"a": "z", ".": ""},
                       chown=(0, 0), include_source_dir=True, xattrs=False,
                       whole_second_mtimes=True,
                       uid_maps=[IDMap(100000, 0, 65536)])
    assert pack.include_files == ("a", "b", ".") and pack.excludes == ("**/*.o",)
    assert pack.uid_maps == (IDMap(100000, 0, 65536),)
    assert dict(pack.rebase_names) == {"a": "z", ".": ""}
    assert PackOptions(compression="gzip", compression_level=0).compression_level == 0
    assert PackOptions(compression="none", compression_level=None).compression == "none"
    assert dataclasses.replace(options, atomic=False).excludes == options.excludes


def test_the_typed_signature_names_every_field() -> None:
    """The ``__init__`` that type checkers read (it takes lists where the fields hold
    tuples) names every field, in order, as the one that runs does: a field added
    without it could not be passed under ``mypy --strict``."""
    tree = ast.parse(Path(options_module.__file__).read_text())
    for cls in (UnpackOptions, PackOptions):
        body = next(node for node in tree.body
                    if isinstance(node, ast.ClassDef) and node.name == cls.__name__).body
        init = next(func for block in body if isinstance(block, ast.If)
                    for func in block.body
                    if isinstance(func, ast.FunctionDef) and func.name == "__init__")
        assert [arg.arg for arg in init.args.args[1:]] == [
            field.name for field in dataclasses.fields(cls)], cls.__name__


@pytest.mark.parametrize(("compression", "level"),
                         [("gzip", 0), ("gzip", 3), ("gzip", 4), ("gzip", 9),
                          ("zstd", 1), ("zstd", 22)])
def test_every_accepted_level_packs(compression: str, level: int, tmp_path: Path) -> None:
    """A level the options accept is one the compressor takes (ISA-L's gzip takes only
    0-3: higher ones go to zlib)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data " * 1000)
    options = PackOptions(compression=compression, compression_level=level)
    with tar(tmp_path / "src", options=options) as stream:
        data = stream.read()
    raw = (gzip.decompress(data) if compression == "gzip"
           else zstandard.ZstdDecompressor().decompressobj().decompress(data))
    with tarfile.open(fileobj=BytesIO(raw)) as archive:
        assert archive.getnames() == ["f"]


def test_a_bad_pattern_is_a_usage_error_before_any_worker(tmp_path: Any) -> None:
    (tmp_path / "a.tar").write_bytes(bytes(1024))
    dest = tmp_path / "dest"
    result = run_cli("untar", "--exclude", "[abc", tmp_path / "a.tar", dest)
    assert result.rc == 2, result
    assert result.err.startswith("chrootarchive: error:") and "[abc" in result.err
    assert "Traceback" not in result.err and not dest.exists()
