"""The public names are one list: ``chrootarchive._EXPORTS`` (name -> module).

``__all__`` is computed from it; the ``TYPE_CHECKING`` imports in ``__init__`` repeat it
for type checkers (they cannot read a computed ``__all__``) and are checked here, as
Trio checks that every public name is exported once.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import chrootarchive

INIT = Path(chrootarchive.__file__)


def _tree() -> ast.Module:
    return ast.parse(INIT.read_text())


def _type_checking_imports() -> list[tuple[str, str]]:
    """(name, module) of each ``from chrootarchive... import X as X`` under TYPE_CHECKING."""
    found: list[tuple[str, str]] = []
    for node in _tree().body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith(
                    "chrootarchive"
                ):
                    for alias in stmt.names:
                        # "X as X" marks an explicit re-export (mypy --strict needs it).
                        assert alias.asname == alias.name, alias.name
                        found.append((alias.name, stmt.module or ""))
    return found


def _exports_keys() -> list[str]:
    """The keys of the ``_EXPORTS`` literal as written (a repeated key would hide)."""
    for node in _tree().body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "_EXPORTS"):
            assert isinstance(node.value, ast.Dict)
            return [ast.literal_eval(k) for k in node.value.keys if k is not None]
    raise AssertionError("no _EXPORTS literal in chrootarchive/__init__.py")


def test_each_public_name_is_listed_once() -> None:
    keys = _exports_keys()
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    imports = _type_checking_imports()
    names = [name for name, _ in imports]
    assert len(names) == len(set(names))
    assert dict(imports) == chrootarchive._EXPORTS
    assert chrootarchive.__all__ == sorted(chrootarchive._EXPORTS)


def test_every_public_name_resolves_to_its_module() -> None:
    for name, module in chrootarchive._EXPORTS.items():
        value = getattr(chrootarchive, name)
        assert value is getattr(sys.modules[module], name), name
        assert name in dir(chrootarchive)
    # Nothing else public but the subpackages and what the module itself uses.
    others = {name for name in dir(chrootarchive) if not name.startswith("_")
              and not isinstance(getattr(chrootarchive, name), types.ModuleType)}
    assert others - {"TYPE_CHECKING", "annotations"} == set(chrootarchive.__all__)


def test_star_import_gives_exactly_the_public_names() -> None:
    code = ("import chrootarchive; ns = {}; exec('from chrootarchive import *', ns); "
            "print(' '.join(sorted(k for k in ns if k != '__builtins__')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == sorted(chrootarchive._EXPORTS)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        chrootarchive.no_such_name  # type: ignore[attr-defined]  # the point
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("chrootarchive.no_such_name did not raise")
