"""The fast training loop of Skip2-LoRA and InstantFT.

Written the ordinary way, a Skip2-LoRA step is ~100 ATen calls around ~5 µs of arithmetic, so
the method's speed advantage mostly disappears into framework overhead. The portable C core
(``csrc/``, compiled at install, loaded with ctypes, the same sources as the device program)
removes it:

- :mod:`~instantft.engine.cengine`: the C core's ABI (structs checked against the library's
  own layout at load), NF4, the adapters' packing, the training loop for any tap layout;
- :mod:`~instantft.engine.chain`: a backbone as the C core's chain of ops (its frozen forward);
- :mod:`~instantft.engine.fill`: the one cache fill (the C chain forward, or the torch forward
  of any other backbone) through :meth:`instantft.cache.ForwardCache.fill`;
- :mod:`~instantft.engine.fit`: the ``fit`` that ties them together.

Engines (``Runtime.engine`` / ``--engine``): ``reference`` (the plain torch loop in
:mod:`instantft.methods.skip_lora`: the readable specification, and the fallback where no C
compiler was found at install), ``c`` (the product), and ``auto`` = c if the library was built,
else reference.
"""

from __future__ import annotations

import functools

from instantft.errors import InstantFTError

ENGINES = ("auto", "c", "reference")


@functools.cache
def c_available() -> bool:
    """The C core was compiled at install and loads (no compiler is ever run here)."""
    from instantft.engine import cengine

    return cengine.available()


def resolve_engine(engine: str) -> str:
    """The backend ``engine`` stands for: ``c`` or ``reference``."""
    if engine not in ENGINES:
        raise InstantFTError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "c" if c_available() else "reference"
    if engine == "c" and not c_available():
        raise InstantFTError("--engine c: the C core was not built (reinstall with a C compiler: pip install -e .)")
    return engine


__all__ = ["ENGINES", "c_available", "resolve_engine"]
