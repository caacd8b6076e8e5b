"""Fine-tuning methods, one module per family, and a registry (:func:`create`, :data:`METHODS`).

Importing this package registers: none, ft-all, ft-last, ft-bias, lora-all, lora-last,
skip-lora, skip2-lora, instantft.
"""

from instantft.methods import full, lora, skip_lora  # noqa: F401  (registration)
from instantft.methods.base import (
    METHODS,
    AutogradMethod,
    DivergedError,
    FineTuneConfig,
    FitResult,
    Method,
    create,
    method_names,
    register,
    schedule,
)

__all__ = [
    "METHODS",
    "AutogradMethod",
    "DivergedError",
    "FineTuneConfig",
    "FitResult",
    "Method",
    "create",
    "method_names",
    "register",
    "schedule",
]
