"""Optional dependencies. A plain ``pip install instantft`` pulls only what fine-tuning needs; a
command that needs more imports it through :func:`require`, which names the extra to install in
one line instead of a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from instantft.errors import InstantFTError

#: extra -> what it adds (pyproject.toml's [project.optional-dependencies] installs them)
EXTRAS: dict[str, str] = {
    "plot": "matplotlib: the plots of `instantft stream --plot` and of the studies",
    "stream": "river: the drift detectors of `instantft stream --detector`",
    "bench": "ONNX Runtime, onnx and PEFT: the peers of the speed studies (studies/c_core.py, studies/peft_lora.py)",
    "studies": "everything the scripts in studies/ import",
}


def require(extra: str, module: str, what: str = "this command") -> ModuleType:
    """``module`` imported, or an :class:`InstantFTError` whose one line says which extra installs
    it: ``<what> needs the '<extra>' extra: pip install 'instantft[<extra>]'``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    try:
        importlib.import_module(module.split(".")[0])  # a cached submodule must not hide a missing package
        return importlib.import_module(module)
    except ImportError:
        raise InstantFTError(f"{what} needs the '{extra}' extra: pip install 'instantft[{extra}]'") from None
