"""The one thing pyproject.toml cannot say without setuptools' experimental tables: three
small extensions in C (issue 16), the tar reader's fast path for one header, the
helper process's loop over a batch of small files, and the system calls that Python
3.11 lacks (without ctypes, a third of the worker's start-up).

All are optional: without a C compiler and Python's headers the install still
succeeds, and the same rules run in Python (``reader._ustar_py``,
``finisher._finish_batch``, ``_linux._ctypes_calls``), slower on archives of many small
files and in the worker's start. One build serves every Python from 3.11 on (the
stable ABI).
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel

# Modules under chrootarchive/, each with its Python reference, which is its fallback.
_EXTENSIONS = ("tarformat._ustar", "engine._finish", "_syscall")


class _Wheel(bdist_wheel):
    """A wheel tagged for the stable ABI only when it holds the extensions: built without
    a compiler it is pure Python, and says so (py3-none-any)."""

    def get_tag(self) -> tuple[str, str, str]:
        if not any(Path(self.bdist_dir).rglob("_*.so")):
            self.root_is_pure = True
            return "py3", "none", "any"
        return super().get_tag()


setup(
    ext_modules=[
        Extension(
            f"chrootarchive.{name}",
            sources=[f"src/chrootarchive/{name.replace('.', '/')}.c"],
            depends=["src/chrootarchive/stable_refs.h"],  # in the sdist too
            define_macros=[("Py_LIMITED_API", "0x030B0000")],
            py_limited_api=True,
            optional=True,
        )
        for name in _EXTENSIONS
    ],
    cmdclass={"bdist_wheel": _Wheel},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
