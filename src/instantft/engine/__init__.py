"""The fast training loops of Skip2-LoRA and InstantFT (issue 5).

Written the ordinary way, a Skip2-LoRA step is ~100 ATen calls around ~5 µs of arithmetic, so
the method's speed advantage mostly disappears into framework overhead. This package removes it:

- :mod:`~instantft.engine.fill`: the cache fill - the compiled LeNet-5 forward written straight
  into cache storage (NF4 encoded row by row), or a batched torch forward;
- :mod:`~instantft.engine.store`: a Forward Cache filled in place;
- :mod:`~instantft.engine.kernels`: numba kernels (``cache=True``) - every epoch in one call,
  hand-written gradients, preallocated buffers, NF4 dequantisation fused into the step, and the
  fill;
- :mod:`~instantft.engine.torch_loop`: the same step in plain torch, used when numba is absent;
- :mod:`~instantft.engine.fit`: the ``fit`` that ties them together.

Engines (``FineTuneConfig.engine`` / ``--engine``): ``numba``, ``torch``, ``reference`` (the
plain loop in :mod:`instantft.methods.skip_lora`), and ``auto`` = numba if importable, else torch.
"""

from __future__ import annotations

import functools

from instantft.errors import InstantFTError

ENGINES = ("auto", "numba", "torch", "reference")


@functools.cache
def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine: str) -> str:
    """The backend ``engine`` stands for: ``numba``, ``torch`` or ``reference``."""
    if engine not in ENGINES:
        raise InstantFTError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "numba" if numba_available() else "torch"
    if engine == "numba" and not numba_available():
        raise InstantFTError("--engine numba: numba is not installed (pip install numba, or use --engine torch)")
    return engine


__all__ = ["ENGINES", "numba_available", "resolve_engine"]
