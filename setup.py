"""Build the C core (csrc/) into the package at install time, so nothing compiles at run time.

The shared library is declared as the extension ``instantft._cinstantft`` only so that pip's
ordinary build (``pip install -e .`` from ``make``) compiles it next to the package with the
platform's compiler; it has no Python entry point and includes no Python header: Python loads it
with ctypes (:mod:`instantft.engine.cengine`). OpenMP is used when the compiler has it. Without a
working C compiler the install still succeeds, and ``--engine auto`` falls back to the reference
loop. The device program (``make device``) is built from these sources plus csrc/device/.
"""

from __future__ import annotations

import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["csrc/core.c", "csrc/nf4.c"]
FLAGS = ["-std=gnu11", "-O3", "-ffp-contract=fast", "-Wall", "-Wextra", "-Wno-psabi", "-fvisibility=default"]


class BuildCore(build_ext):
    """build_ext that adds OpenMP where the compiler supports it and never fails the install."""

    def _has_openmp(self) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp.c")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
                self.compiler.link_executable(objs, os.path.join(tmp, "omp"), extra_postargs=["-fopenmp"])
            except Exception:
                return False
        return True

    def build_extensions(self) -> None:
        omp = self._has_openmp()
        for ext in self.extensions:
            ext.extra_compile_args = [*FLAGS, *(["-fopenmp"] if omp else [])]
            ext.extra_link_args = ["-fopenmp"] if omp else []
        try:
            super().build_extensions()
        except Exception as exc:  # no compiler: the package works without the C engine
            print(f"warning: the instantft C core was not built ({exc}); --engine c is unavailable", file=sys.stderr)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # a plain C library: no PyInit_ symbol to export


setup(
    ext_modules=[
        Extension(
            "instantft._cinstantft",
            SOURCES,
            depends=["csrc/instantft.h", "csrc/internal.h", "csrc/kern.h"],
            libraries=["m"],
        )
    ],
    cmdclass={"build_ext": BuildCore},
)
