"""The one thing pyproject.toml cannot say without setuptools' experimental tables: the
tar reader's fast path for one header, in C (issue 16).

It is optional: without a C compiler and Python's headers the install still succeeds,
and the reader uses the same rules in Python (``reader._ustar_py``), slower on archives
of many small files. One build serves every Python from 3.11 on (the stable ABI).
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel


class _Wheel(bdist_wheel):
    """A wheel tagged for the stable ABI only when it holds the extension: built without
    a compiler it is pure Python, and says so (py3-none-any)."""

    def get_tag(self) -> tuple[str, str, str]:
        if not any(Path(self.bdist_dir).rglob("_ustar*.so")):
            self.root_is_pure = True
            return "py3", "none", "any"
        return super().get_tag()


setup(
    ext_modules=[
        Extension(
            "chrootarchive.tarformat._ustar",
            sources=["src/chrootarchive/tarformat/_ustar.c"],
            define_macros=[("Py_LIMITED_API", "0x030B0000")],
            py_limited_api=True,
            optional=True,
        ),
    ],
    cmdclass={"bdist_wheel": _Wheel},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
