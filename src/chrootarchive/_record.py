"""Frozen records: the option and result classes as ``@dataclass(frozen=True)`` makes
them, without importing ``dataclasses`` to define them.

``dataclasses`` imports ``inspect`` (with ``ast``, ``dis`` and ``tokenize``) and compiles
each class's methods from source: 17 ms of the command line's start, more than the rest
of its own imports (docs/performance.md, issue 16). A record gets the same fields from
the same class body (annotations, defaults, :func:`field`), shares its methods with every
other record instead, and is a dataclass on demand: the first time anything looks for
``__dataclass_fields__`` (``dataclasses.fields``, ``replace``, ``asdict``,
``is_dataclass``, a dataclass inheriting from it), the record builds the same class with
``dataclasses`` and lends its field descriptions. Type checkers see the real
``dataclass`` (``options`` imports it under ``TYPE_CHECKING``), and
``tests/test_record.py`` checks that both agree.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

__all__ = ["as_dict", "field", "make_field", "make_record", "record", "record_as_dict",
           "replace", "replace_record"]

_MISSING = object()


class _Field:
    """What :func:`field` declares: a default, or a factory of one."""

    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any, default_factory: Any) -> None:
        self.default = default
        self.default_factory = default_factory


def make_field(*, default: Any = _MISSING, default_factory: Any = _MISSING) -> Any:
    """``dataclasses.field`` for a record: ``default`` or ``default_factory``."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory)


class _AsDataclass:
    """``__dataclass_fields__``, ``__dataclass_params__`` or ``__signature__`` of a record
    class: those of the same class built with ``dataclasses``, made on first use."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type) -> Any:
        if self.name == "__signature__":
            if owner.__init__ is not _init:  # type: ignore[misc]  # a subclass's own
                return None  # inspect reads that __init__ instead
            import inspect

            return inspect.signature(_twin(owner))
        return getattr(_twin(owner), self.name)


_TWINS: dict[type, type] = {}


def _twin(owner: type) -> type:
    """``owner``'s fields as a class made by ``dataclasses`` (once per class)."""
    twin = _TWINS.get(owner)
    if twin is None:
        import dataclasses

        fields = []
        keyword_only = owner.__record_kw_only__  # type: ignore[attr-defined]
        for name, annotation in owner.__record_annotations__:  # type: ignore[attr-defined]
            spec = owner.__record_defaults__.get(name, _MISSING)  # type: ignore[attr-defined]
            kw_only = name in keyword_only
            if isinstance(spec, _Field):
                made = (dataclasses.field(default_factory=spec.default_factory, kw_only=kw_only)
                        if spec.default_factory is not _MISSING
                        else dataclasses.field(default=spec.default, kw_only=kw_only))
            elif spec is _MISSING:
                made = dataclasses.field(kw_only=kw_only)
            else:
                made = dataclasses.field(default=spec, kw_only=kw_only)
            fields.append((name, annotation, made))
        twin = _TWINS[owner] = dataclasses.make_dataclass(owner.__name__, fields, frozen=True)
    return twin


def _is_record(cls: type) -> bool:
    """Whether ``cls`` was made by :func:`make_record` (not a subclass made otherwise)."""
    return "__record_fields__" in cls.__dict__


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    names = cls.__record_fields__
    if not args and tuple(kwargs) == names and "__record_fields__" in cls.__dict__:
        # Every field by name, in order (a listing's entries: 4 us each by the loop
        # below, a fifth of listing 200k names): the values are the instance's own. Not
        # for a plain subclass, which may define a property of a field's name.
        self.__dict__.update(kwargs)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()
        return
    positional = cls.__record_positional__  # the fields but the keyword-only ones
    if len(args) > len(positional):
        raise TypeError(f"{cls.__name__}() takes {len(positional)} positional arguments "
                        f"but {len(args)} were given")
    values = dict(zip(positional, args, strict=False))
    for name, value in kwargs.items():
        if name not in names:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}")
        if name in values:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
        values[name] = value
    set_ = object.__setattr__
    for name in names:
        if name in values:
            set_(self, name, values[name])
            continue
        spec = cls.__record_defaults__.get(name, _MISSING)
        if spec is _MISSING:
            raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
        if isinstance(spec, _Field):
            spec = spec.default if spec.default_factory is _MISSING else spec.default_factory()
        set_(self, name, spec)
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in type(self).__record_fields__)


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_fields__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: object) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: object) -> None:
    if _is_record(type(self)) or name in type(self).__record_fields__:
        _refuse(name)
    object.__setattr__(self, name, value)  # a plain subclass's own attribute


def _frozen_delattr(self: Any, name: str) -> None:
    if _is_record(type(self)) or name in type(self).__record_fields__:
        _refuse(name)
    object.__delattr__(self, name)


def _refuse(name: str) -> None:
    import dataclasses

    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _replace(self: Any, /, **changes: Any) -> Any:
    return replace_record(self, **changes)


def _annotations(cls: type) -> list[tuple[str, str]]:
    """The fields ``cls`` declares itself: its annotations but ``ClassVar``."""
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - inspect is what we avoid
    return [(name, ann) for name, ann in own.items()
            if not str(ann).startswith(("ClassVar", "typing.ClassVar"))]


def _merge(annotations: dict[str, str], defaults: dict[str, object],
           fields: list[tuple[str, str]], given: dict[str, object]) -> None:
    """Add ``fields`` (and the defaults ``given`` for them) as a class body adds them
    to its bases': a field declared again keeps its place, and takes its new default
    or none."""
    for name, annotation in fields:
        annotations[name] = annotation
        if name in given:
            defaults[name] = given[name]
        else:
            defaults.pop(name, None)


def make_record(cls: type[T] | None = None, /, *, frozen: bool = True,
                kw_only: bool = False) -> Any:
    """``@dataclass(frozen=True)`` at run time, as cheap as a plain class; ``kw_only``:
    the fields this class declares are keyword-only, as ``dataclass(kw_only=True)``
    makes them (they may then follow fields with defaults)."""
    if not frozen:
        raise TypeError("records are frozen")

    def make(cls: type[T]) -> type[T]:
        # Fields in the order dataclasses gives them: the bases' first (most basic
        # first), a redeclared field keeping its place; then this class's own.
        annotations: dict[str, str] = {}
        defaults: dict[str, object] = {}
        keyword_only: set[str] = set()
        for base in reversed(cls.__mro__[1:]):
            if "__record_fields__" in base.__dict__:
                _merge(annotations, defaults, base.__record_annotations__,  # type: ignore[attr-defined]
                       base.__record_defaults__)  # type: ignore[attr-defined]
                keyword_only |= base.__record_kw_only__  # type: ignore[attr-defined]
        own = _annotations(cls)
        for name, _ in own:  # a field declared again takes this class's kind
            (keyword_only.add if kw_only else keyword_only.discard)(name)
        # A field given again without a value keeps the value its class inherits.
        own_defaults = {name: getattr(cls, name) for name, _ in own
                        if getattr(cls, name, _MISSING) is not _MISSING}
        for name, value in own_defaults.items():
            if not isinstance(value, _Field) and type(value).__hash__ is None:
                raise ValueError(f"mutable default {type(value)} for field {name} is not "
                                 "allowed: use default_factory")
        _merge(annotations, defaults, own, own_defaults)
        for name, value in own_defaults.items():
            if isinstance(value, _Field):
                if value.default_factory is _MISSING:
                    setattr(cls, name, value.default)
                else:
                    delattr(cls, name)
        seen_default = ""
        for name in annotations:
            if name in keyword_only:
                continue
            if name in defaults:
                seen_default = name
            elif seen_default:
                raise TypeError(f"non-default argument {name!r} follows default argument")
        names = tuple(annotations)
        positional = tuple(name for name in names if name not in keyword_only)
        for name in ("__setattr__", "__delattr__"):
            if name in cls.__dict__:
                raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
        attrs: dict[str, object] = {
            "__record_fields__": names, "__record_annotations__": list(annotations.items()),
            "__record_defaults__": defaults, "__record_kw_only__": frozenset(keyword_only),
            "__record_positional__": positional, "__match_args__": positional,
            "__setattr__": _frozen_setattr, "__delattr__": _frozen_delattr,
            "__replace__": _replace,
            "__dataclass_fields__": _AsDataclass("__dataclass_fields__"),
            "__dataclass_params__": _AsDataclass("__dataclass_params__"),
            "__signature__": _AsDataclass("__signature__"),
        }
        # As dataclasses: a method the class body defines itself is kept.
        for name, method in (("__init__", _init), ("__repr__", _repr), ("__eq__", _eq)):
            if name not in cls.__dict__:
                attrs[name] = method
        own_hash = cls.__dict__.get("__hash__", _MISSING)
        if own_hash is _MISSING or (own_hash is None and "__eq__" in cls.__dict__):
            attrs["__hash__"] = _hash
        for name, value in attrs.items():
            setattr(cls, name, value)
        return cls

    return make if cls is None else make(cls)


def replace_record(obj: T, /, **changes: Any) -> T:
    """``dataclasses.replace`` for a record: a new one (checked again) with ``changes``."""
    cls = type(obj)
    if not _is_record(cls):  # a dataclass (or other) subclass of a record: its own fields
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    values = {name: getattr(obj, name) for name in cls.__record_fields__}  # type: ignore[attr-defined]
    for name in changes:
        if name not in values:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}")
    values.update(changes)
    made: T = cls(**values)
    return made


def record_as_dict(obj: Any) -> Any:
    """``dataclasses.asdict`` for records (nested records, tuples, lists and dicts)."""
    cls = type(obj)
    if _is_record(cls):
        return {name: record_as_dict(getattr(obj, name)) for name in cls.__record_fields__}
    if any("__dataclass_fields__" in c.__dict__ for c in cls.__mro__):  # a dataclass
        import dataclasses

        return dataclasses.asdict(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(record_as_dict(v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((record_as_dict(k), record_as_dict(v)) for k, v in obj.items())
    return obj


# What the rest of the code imports: type checkers see ``dataclasses`` itself (the same
# fields, checked by the dataclass plugin), the interpreter the records above.
if TYPE_CHECKING:
    from dataclasses import asdict as as_dict
    from dataclasses import dataclass as record
    from dataclasses import field as field
    from dataclasses import replace as replace
else:
    record, field, replace, as_dict = make_record, make_field, replace_record, record_as_dict
