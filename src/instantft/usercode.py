"""The one place the user's code is called from a command: importing a ``--model`` module,
calling its factory, and every forward of the model it returns.

Whatever that code raises - any exception, and ``SystemExit`` too (a ``sys.exit(0)`` in a factory
must not end instantft with success having written nothing) - becomes one
:class:`~instantft.errors.InstantFTError` line naming what was called. ``KeyboardInterrupt`` is
the user's and passes through. A forward that switches autograd off (or on) for the whole
process, ``torch.set_grad_enabled(False)`` inside ``forward``, has the mode restored and is
refused: the adapters would silently stop learning.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from instantft.errors import InstantFTError


def describe(exc: BaseException) -> str:
    """An exception of the user's code in a few words (one line)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): sys.exit() would end instantft; raise an exception or return instead"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def user_code(what: str) -> Iterator[None]:
    """Run the user's code; anything it raises (``SystemExit`` included) is one line naming ``what``."""
    try:
        yield
    except (InstantFTError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # SystemExit, GeneratorExit, anything but the user's Ctrl-C
        raise InstantFTError(f"{what} raised {describe(exc)}") from None


def _guarded_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    what = getattr(self, "_instantft_what", type(self).__name__)
    grad = torch.is_grad_enabled()
    try:
        with user_code(f"{what}: the model's forward"):
            out = type(self).forward(self, *args, **kwargs)
    finally:
        changed = torch.is_grad_enabled() != grad
        torch.set_grad_enabled(grad)
    if changed:
        raise InstantFTError(
            f"{what}: the model's forward turned autograd {'off' if grad else 'on'} for the whole process "
            "(torch.set_grad_enabled); use `with torch.no_grad():` inside forward instead"
        )
    return out


def guard_model(model: nn.Module, what: str) -> nn.Module:
    """``model`` with every call of its forward run through :func:`user_code` (the instance's
    ``forward``, a bound method, so a deep copy of the model stays guarded and calls its own
    modules)."""
    object.__setattr__(model, "_instantft_what", what)
    object.__setattr__(model, "forward", types.MethodType(_guarded_forward, model))
    return model


def module_source(spec: str) -> str | None:
    """The source file of ``package.module`` of a ``--model`` spec, found without importing (and
    so without running) anything, from the working directory and ``sys.path``: an input of the
    run that no output may replace."""
    import importlib.machinery
    import os
    import sys

    module_name = spec.partition(":")[0]
    path: list[str] | None = [os.getcwd(), *sys.path]
    found = None
    for part in module_name.split("."):
        try:
            found = importlib.machinery.PathFinder.find_spec(part, path)
        except (ImportError, ValueError, OSError):
            return None
        if found is None:
            return None
        path = list(found.submodule_search_locations or [])
    return found.origin if found is not None and found.has_location else None
