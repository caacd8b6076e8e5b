"""The fast training loops of Skip2-LoRA and InstantFT (issues 5 and 10).

Written the ordinary way, a Skip2-LoRA step is ~100 ATen calls around ~5 µs of arithmetic, so
the method's speed advantage mostly disappears into framework overhead. This package removes it:

- :mod:`~instantft.engine.fill`: the cache fill - the compiled LeNet-5 forward written straight
  into cache storage (NF4 encoded row by row), or a batched torch forward;
- :mod:`~instantft.engine.store`: a Forward Cache filled in place;
- :mod:`~instantft.engine.kernels`: numba kernels (``cache=True``) - every epoch in one call,
  hand-written gradients, preallocated buffers, NF4 dequantisation fused into the step, and the
  fill;
- :mod:`~instantft.engine.torch_loop`: the same step in plain torch, used when numba is absent;
- :mod:`~instantft.engine.cengine` and :mod:`~instantft.engine.chain`: the portable C core
  (``csrc/``, compiled at install, loaded with ctypes) - the frozen forward of chain backbones,
  NF4, and the training loop for any tap layout; the same sources build the device program;
- :mod:`~instantft.engine.fit`: the ``fit`` that ties them together.

Engines (``FineTuneConfig.engine`` / ``--engine``): ``c``, ``numba``, ``torch``, ``reference``
(the plain loop in :mod:`instantft.methods.skip_lora`), and ``auto`` = c if the library was
built, else numba if importable, else torch.
"""

from __future__ import annotations

import functools

from instantft.errors import InstantFTError

ENGINES = ("auto", "c", "numba", "torch", "reference")


@functools.cache
def c_available() -> bool:
    """The C core was compiled at install and loads (no compiler is ever run here)."""
    from instantft.engine import cengine

    return cengine.available()


@functools.cache
def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine: str) -> str:
    """The backend ``engine`` stands for: ``c``, ``numba``, ``torch`` or ``reference``."""
    if engine not in ENGINES:
        raise InstantFTError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "c" if c_available() else "numba" if numba_available() else "torch"
    if engine == "c" and not c_available():
        raise InstantFTError("--engine c: the C core was not built (reinstall with a C compiler: pip install -e .)")
    if engine == "numba" and not numba_available():
        raise InstantFTError("--engine numba: numba is not installed (pip install numba, or use --engine torch)")
    return engine


__all__ = ["ENGINES", "c_available", "numba_available", "resolve_engine"]
