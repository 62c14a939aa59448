"""The one thing pyproject.toml cannot say without setuptools' experimental tables: the
tar reader's fast path for one header, in C (issue 16).

It is optional: without a C compiler and Python's headers the install still succeeds,
and the reader uses the same rules in Python (``reader._ustar_py``), slower on archives
of many small files. One build serves every Python from 3.11 on (the stable ABI).
"""

from setuptools import Extension, setup

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
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
