"""What ``engine.finisher._Batch`` declares on top of the compiled ``Batch`` (whose stub
does not): for the tests' own subclasses of either, to type-check."""

from __future__ import annotations


class BatchMembers:
    """Annotations only: it adds nothing to an instance."""

    _names: list[str]
    _own: list[tuple[str, object, int, int, int] | None]
    _sizes: list[int]
    _name_sizes: list[int]
    _numbers: list[int]
    pending: set[str]
