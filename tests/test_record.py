"""Records (``chrootarchive._record``): the option and result classes are defined without
``dataclasses`` (17 ms of the command line's start), and must still be, to a caller,
the frozen dataclasses their class bodies declare.

Each check compares a record with the same class body made by ``dataclasses`` itself,
or uses the ``dataclasses`` functions a caller would (``fields``, ``replace``,
``asdict``, ``is_dataclass``) on the public classes.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from chrootarchive import (
    IDMap,
    Limits,
    ListedEntry,
    PackOptions,
    PackResult,
    UnpackOptions,
    UnpackResult,
)
from chrootarchive._record import field, make_field, make_record
from chrootarchive.image.results import ImageResult
from chrootarchive.options import Result

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PUBLIC = [IDMap, Limits, UnpackOptions, Result, UnpackResult, PackOptions, PackResult,
          ListedEntry]


def _bodies(decorate: Any, field_of: Any) -> tuple[type[Any], type[Any]]:
    """The same two class bodies (a base and a subclass), made by ``decorate``."""

    @decorate
    class Base:
        """A base with a required field, a default, a factory and a check."""

        name: str
        size: int = 0
        tags: tuple[str, ...] = field_of(default=())
        extra: Mapping[str, int] = field_of(default_factory=dict)

        def __post_init__(self) -> None:
            if self.size < 0:
                raise ValueError("size must be >= 0")
            object.__setattr__(self, "tags", tuple(self.tags))

        def doubled(self) -> int:
            return self.size * 2

    @decorate
    class Child(Base):
        """A subclass that adds a field and changes a default."""

        size: int = 7
        more: bool = False

    return Base, Child


RecordBase, RecordChild = _bodies(make_record(frozen=True), make_field)
DataBase, DataChild = _bodies(dataclasses.dataclass(frozen=True), dataclasses.field)
# Pickle finds classes by their module and qualified name.
for _cls, _name in ((RecordBase, "RecordBase"), (RecordChild, "RecordChild"),
                    (DataBase, "DataBase"), (DataChild, "DataChild")):
    _cls.__qualname__ = _cls.__name__ = _name


def _keyword_bodies(decorate: Any, field_of: Any) -> type[Any]:
    """A subclass of ``RecordBase``'s body whose own fields are keyword-only: required
    ones after the base's defaults (what ``ImageResult`` needs)."""
    base = RecordBase if decorate is make_record else DataBase

    @decorate(frozen=True, kw_only=True)
    class Keyed(base):  # type: ignore[valid-type,misc]
        kind: str
        count: int = 1
        labels: tuple[str, ...] = field_of(default=())

    return Keyed


RecordKeyed = _keyword_bodies(make_record, make_field)
DataKeyed = _keyword_bodies(dataclasses.dataclass, dataclasses.field)
RecordKeyed.__qualname__ = RecordKeyed.__name__ = "RecordKeyed"
DataKeyed.__qualname__ = DataKeyed.__name__ = "DataKeyed"


def _hash_or_error(obj: object) -> object:
    try:
        return hash(obj)
    except TypeError as err:  # a dict field: unhashable, as a frozen dataclass is
        return str(err)


def _same(record: object, data: object) -> None:
    """``record`` shows and compares as ``data`` does, but for the class's name."""
    shown = (repr(data).replace("DataBase(", "RecordBase(").replace("DataChild(", "RecordChild(")
             .replace("DataKeyed(", "RecordKeyed("))
    assert repr(record) == shown


@pytest.mark.parametrize("pair", [(RecordBase, DataBase), (RecordChild, DataChild)],
                         ids=["base", "subclass"])
def test_a_record_is_the_dataclass_of_its_class_body(pair: tuple[type[Any], type[Any]]) -> None:
    record_cls, data_cls = pair
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = [
        (("a",), {}), (("a", 3), {"tags": ["x", "y"]}), ((), {"name": "b", "extra": {"k": 1}})]
    for args, kwargs in calls:
        record, data = record_cls(*args, **kwargs), data_cls(*args, **kwargs)
        _same(record, data)
        assert record == record_cls(*args, **kwargs)
        assert _hash_or_error(record) == _hash_or_error(data)
        assert record != data  # another class, as two dataclasses are
        assert dataclasses.asdict(record) == dataclasses.asdict(data)
        assert dataclasses.astuple(record) == dataclasses.astuple(data)
        _same(dataclasses.replace(record, size=5), dataclasses.replace(data, size=5))
        _same(copy.copy(record), data)
        _same(copy.deepcopy(record), data)
        _same(pickle.loads(pickle.dumps(record)), data)
        assert record.doubled() == data.doubled()
        if sys.version_info >= (3, 13):  # copy.replace: the protocol of 3.13
            _same(copy.replace(record, name="z"), copy.replace(data, name="z"))  # type: ignore[attr-defined]
    assert dataclasses.is_dataclass(record_cls)
    described = [[(f.name, f.type, f.default, f.default_factory) for f in dataclasses.fields(c)]
                 for c in (record_cls, data_cls)]
    assert described[0] == described[1]
    # getattr: the assertion above narrowed record_cls to a type that does not declare it
    assert getattr(record_cls, "__match_args__") == data_cls.__match_args__
    assert str(inspect.signature(record_cls)) == str(inspect.signature(data_cls))


def test_a_keyword_only_record_is_the_dataclass_of_its_class_body() -> None:
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = [
        (("a",), {"kind": "k"}), (("a", 3), {"kind": "k", "count": 2}),
        ((), {"name": "b", "kind": "k", "labels": ("x",)})]
    for args, kwargs in calls:
        record, data = RecordKeyed(*args, **kwargs), DataKeyed(*args, **kwargs)
        _same(record, data)
        assert dataclasses.asdict(record) == dataclasses.asdict(data)
        _same(dataclasses.replace(record, kind="z"), dataclasses.replace(data, kind="z"))
        _same(pickle.loads(pickle.dumps(record)), data)
    described = [[(f.name, f.type, f.default, f.default_factory, f.kw_only)
                  for f in dataclasses.fields(c)] for c in (RecordKeyed, DataKeyed)]
    assert described[0] == described[1]
    assert RecordKeyed.__match_args__ == DataKeyed.__match_args__
    assert str(inspect.signature(RecordKeyed)) == str(inspect.signature(DataKeyed))
    refused: tuple[Callable[[type[Any]], object], ...] = (
        lambda cls: cls("a"),  # the keyword-only field missing
        lambda cls: cls("a", 1, (), {}, "k"),  # given by position
        lambda cls: cls("a", kind="k", size=-1))
    for call in refused:
        with pytest.raises(Exception) as data_err:
            call(DataKeyed)
        with pytest.raises(data_err.type):
            call(RecordKeyed)


@pytest.mark.parametrize("call", [
    lambda cls: cls(),  # a required field missing
    lambda cls: cls("a", 1, (), {}, "too many"),
    lambda cls: cls("a", nonsense=1),
    lambda cls: cls("a", name="b"),  # twice
    lambda cls: cls("a", size=-1),  # __post_init__ refuses it
    lambda cls: dataclasses.replace(cls("a"), nonsense=1),
    lambda cls: dataclasses.replace(cls("a"), size=-1),
], ids=["missing", "too-many", "unknown", "twice", "post-init", "replace-unknown",
        "replace-checked"])
def test_a_record_refuses_what_its_dataclass_refuses(call: Any) -> None:
    with pytest.raises(Exception) as data_err:
        call(DataBase)
    with pytest.raises(data_err.type):
        call(RecordBase)


def test_a_record_is_frozen() -> None:
    record = RecordBase("a")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'size'"):
        record.size = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        del record.size
    assert record.size == 0


def test_every_field_by_name_in_order_is_the_same_record() -> None:
    """A record made with every field by name, in order (the fast path a listing's
    entries take), is the one made any other way; a plain subclass that makes a field
    a read-only property refuses it either way, as the dataclass's does."""
    from chrootarchive.operations.listing import ListedEntry

    values: dict[str, Any] = {"name": "a", "kind": "file", "mode": 0o644, "uid": 1,
                              "gid": 2, "size": 3, "mtime": 4.0, "linkname": "",
                              "devmajor": 0, "devminor": 0}
    fast = ListedEntry(**values)
    slow = ListedEntry(*values.values())
    assert fast == slow and repr(fast) == repr(slow) and hash(fast) == hash(slow)
    assert vars(fast) == vars(slow) and list(vars(fast)) == list(values)
    assert dataclasses.asdict(fast) == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.size = 5  # type: ignore[misc]

    class Sized(ListedEntry):
        @property
        def size(self) -> int:
            return 0

    with pytest.raises(AttributeError):
        Sized(**values)
    with pytest.raises(AttributeError):
        Sized(*values.values())


def test_a_default_after_no_default_is_refused_as_dataclasses_refuses_it() -> None:
    for decorate in (make_record, dataclasses.dataclass(frozen=True)):
        class Body:
            first: int = 0
            second: int

        with pytest.raises(TypeError, match="non-default argument 'second'"):
            decorate(Body)


def test_field_takes_a_default_or_a_factory_not_both() -> None:
    with pytest.raises(ValueError, match="both default and default_factory"):
        field(default=1, default_factory=list)  # type: ignore[call-overload]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda cls: cls.__name__)
def test_the_public_classes_are_dataclasses_to_callers(cls: type[DataclassInstance]) -> None:
    """``fields``, ``replace`` and ``asdict`` work on every public option and result
    class, and describe what the class does: each field's default is what a new object
    gets."""
    needed: dict[type[Any], dict[str, object]] = {
        IDMap: {"container_id": 0, "host_id": 1000, "size": 1},
        ListedEntry: {"name": "a", "kind": "file", "mode": 0o644, "uid": 0, "gid": 0,
                      "size": 1, "mtime": 0.0},
    }
    required = needed.get(cls, {})
    made = cls(**required)
    assert dataclasses.is_dataclass(made)
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == list(cls.__record_fields__)  # type: ignore[attr-defined]
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert getattr(made, f.name) == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert getattr(made, f.name) == f.default_factory(), f.name
        else:
            assert f.name in required
    assert dataclasses.replace(made) == made
    assert dataclasses.asdict(made) == {f.name: _plain(getattr(made, f.name)) for f in fields}
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, None)


def _plain(value: object) -> object:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value  # type: ignore[arg-type]


def test_a_dataclass_inherits_a_records_fields() -> None:
    """``ImageResult`` is a dataclass made from the record ``Result``: it has Result's
    fields first, and is frozen as its base."""
    names = [f.name for f in dataclasses.fields(ImageResult)]
    assert names[:4] == ["entries", "size", "confinement", "warnings"]

    @dataclasses.dataclass(frozen=True)
    class Sub(UnpackResult):
        extra: int = 0

    sub = Sub(entries=2, extra=3)
    assert (sub.entries, sub.extra, sub.privileged) == (2, 3, {})
    with pytest.raises(TypeError, match="non-frozen dataclass"):
        dataclasses.dataclass(type("Thawed", (UnpackResult,), {}))


def test_options_validate_as_before() -> None:
    """A record's checks run on every new object, from ``replace`` too."""
    # A list, as callers pass it: the record makes it the tuple its field declares.
    options = UnpackOptions(excludes=["a/**"], filter="data")
    assert options.excludes == ("a/**",)
    with pytest.raises(ValueError, match=r"UnpackOptions\.filter"):
        dataclasses.replace(options, filter="nonsense")
    with pytest.raises(TypeError, match=r"Limits\.max_bytes"):
        Limits(max_bytes="1")  # type: ignore[arg-type]


# -- what a class body may add, and subclasses made otherwise ---------------------------


def test_a_class_bodys_own_methods_are_kept_as_dataclasses_keeps_them() -> None:
    # Applied at run time: mypy cannot see the fields of the classes they return.
    decorators: tuple[Callable[[type], type[Any]], ...] = (
        make_record, dataclasses.dataclass(frozen=True))
    for decorate in decorators:
        class Secret:
            user: str
            token: str = "t"

            def __repr__(self) -> str:
                return f"Secret(user={self.user!r}, token=...)"

        assert repr(decorate(Secret)("me")) == "Secret(user='me', token=...)"

        class Thawed:
            size: int = 0

            def __setattr__(self, name: str, value: object) -> None:
                object.__setattr__(self, name, value)

        with pytest.raises(TypeError, match="Cannot overwrite attribute __setattr__"):
            decorate(Thawed)


def test_a_mutable_default_is_refused_as_dataclasses_refuses_it() -> None:
    for decorate in (make_record, dataclasses.dataclass(frozen=True)):
        class Shared:
            items: list[int] = []

        with pytest.raises(ValueError, match="mutable default <class 'list'> for field items"):
            decorate(Shared)


def test_a_field_given_again_keeps_its_inherited_default() -> None:
    for base in (RecordBase, DataBase):
        decorate = make_record if base is RecordBase else dataclasses.dataclass(frozen=True)

        class Again(base):  # type: ignore[valid-type, misc]
            size: int

        assert decorate(Again)("a").size == 0


def test_a_plain_subclass_may_add_attributes_but_not_change_fields() -> None:
    for base in (RecordBase, DataBase):
        class Plain(base):  # type: ignore[valid-type, misc]
            pass

        plain = Plain("a")
        plain.note = "mine"  # not a field: allowed, as for a dataclass's plain subclass
        assert plain.note == "mine"
        with pytest.raises(dataclasses.FrozenInstanceError):
            plain.size = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class OwnedOptions(UnpackOptions):
    """A caller's own options class: a dataclass made from the record UnpackOptions."""

    owner: str
    retries: int = 5


@dataclasses.dataclass(frozen=True)
class CountedResult(UnpackResult):
    extra: int = 0


def test_a_dataclass_subclass_keeps_its_own_fields_through_our_code() -> None:
    """``replace`` and ``asdict`` as the operations use them (``atomic`` turned off for
    the staging directory's unpack, ``to_json``) keep a subclass's fields."""
    from chrootarchive._record import as_dict, replace

    options = OwnedOptions(owner="me", retries=9, atomic=True)
    changed = replace(options, atomic=False)
    assert (type(changed), changed.owner, changed.retries, changed.atomic) \
        == (OwnedOptions, "me", 9, False)
    assert as_dict(options)["owner"] == "me"
    assert CountedResult(entries=1, extra=3).to_json()["extra"] == 3
    assert "layers" in inspect.signature(ImageResult).parameters
    assert "owner" in inspect.signature(OwnedOptions).parameters
    assert list(inspect.signature(UnpackResult).parameters)[:2] == ["entries", "size"]


def test_a_dataclass_subclass_of_the_options_unpacks(tmp_path: Any) -> None:
    """The whole way: an atomic untar with a caller's dataclass of UnpackOptions."""
    import chrootarchive
    from helpers import tarbuild as tb

    archive = tmp_path / "a.tar"
    archive.write_bytes(tb.TarBuilder().file("hello.txt", b"hello\n").build())
    result = chrootarchive.untar(str(archive), str(tmp_path / "dest"),
                                 OwnedOptions(owner="me", atomic=True))
    assert result.entries == 1
    assert (tmp_path / "dest" / "hello.txt").read_bytes() == b"hello\n"
