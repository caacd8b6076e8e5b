"""instantft: ultra-fast on-device fine-tuning of CNNs (Skip2-LoRA / InstantFT).

The Python API (imported lazily, so ``import instantft`` stays cheap for the CLI)::

    ft = instantft.FineTuner(model, method="instantft", taps="auto", rank=4)
    result = ft.fit((x, y))
    logits = ft.predict(x)
    ft.save("adapter.safetensors")
    ft2 = instantft.FineTuner.load("adapter.safetensors", model)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FineTuner": "instantft.api",
    "as_imageset": "instantft.api",
    "Backbone": "instantft.backbones",
    "Tap": "instantft.backbones",
    "create_backbone": "instantft.backbones",
    "list_backbones": "instantft.backbones",
    "FineTuneConfig": "instantft.training",
    "FitResult": "instantft.training",
    "DivergedError": "instantft.training",
    "InstantFTError": "instantft.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'instantft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]
