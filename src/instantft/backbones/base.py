"""The seam between any PyTorch classifier and instantft: a frozen ``nn.Module`` and its taps.

A **tap** is a named point of the network whose activation feeds a skip adapter: the input (or
the output) of one module. ``taps="auto"`` taps the input of every ``Conv2d`` and ``Linear`` in
the order the forward runs them, which for LeNet-5 is exactly the paper's x0..x4. Explicit taps
are module names matched the way PEFT matches ``target_modules``: an exact name, a suffix
(``"fc1"`` matches ``"net.fc1"``) or ``"re:<regex>"``; ``"name:output"`` taps the module's output.

Shapes are discovered by one traced forward (forward hooks), never written down; the same hooks
read the taps of every later batch (:meth:`Backbone.trace`), so one mechanism serves any model.

A tap whose activation *is* the model input (LeNet-5's x0, an MLP's flattened image) is read from
the data by the training loops instead of being stored in the Forward Cache. In ``auto`` mode a
module reading the very tensor an earlier tap already reads (a ResNet block's first conv and its
1×1 shortcut) adds no second tap: the adapter of the first already sees that activation.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from instantft.errors import InstantFTError
from instantft.models.checkpoint import weights_sha256

TapPoint = Literal["input", "output"]
TapSpec = str | Sequence[str]

#: module types tapped by ``taps="auto"`` (and adapted by LoRA-All)
ADAPTABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Tap:
    """One tapped activation: module name, input or output, per-sample shape."""

    name: str
    point: TapPoint
    shape: tuple[int, ...]
    kind: str
    is_model_input: bool = False

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def label(self) -> str:
        """How the tap is written in ``taps=[...]`` and in adapter records."""
        return self.name if self.point == "input" else f"{self.name}:output"


@dataclass(frozen=True)
class Layer:
    """A ``Conv2d`` or ``Linear`` module as the forward runs it (for LoRA and FT-Last)."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def in_size(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)


def _first_tensor(args: Any, kwargs: dict[str, Any] | None = None) -> torch.Tensor | None:
    """A module's (first) input or output tensor: positional first, then keyword arguments."""
    if isinstance(args, torch.Tensor):
        return args
    if isinstance(args, tuple | list) and args and isinstance(args[0], torch.Tensor):
        return args[0]
    for value in (kwargs or {}).values():
        if isinstance(value, torch.Tensor):
            return value
    return None


def _parse(pattern: str) -> tuple[str, TapPoint]:
    for point in ("input", "output"):
        if pattern.endswith(f":{point}"):
            return pattern[: -len(point) - 1], point  # type: ignore[return-value]
    return pattern, "input"


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        try:
            return re.fullmatch(pattern[3:], name) is not None
        except re.error as exc:
            raise InstantFTError(f"--taps {pattern!r}: not a valid regular expression ({exc})") from None
    return name == pattern or name.endswith("." + pattern)


def exact_taps(labels: Sequence[str]) -> list[str]:
    """Tap patterns that match exactly the recorded ``labels`` (:attr:`Tap.label`) and nothing
    else: a recorded ``"1"`` must not match ``"0.1"`` as a suffix when an adapter is reloaded."""
    out = []
    for label in labels:
        name, point = _parse(label)
        out.append(f"re:{re.escape(name)}" + (":output" if point == "output" else ""))
    return out


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` are the same values in the same memory (a view such as flatten)."""
    return a.data_ptr() == b.data_ptr() and a.numel() == b.numel() and a.is_contiguous() and b.is_contiguous()


class Backbone:
    """A frozen classifier (batch -> logits) and its ordered taps.

    The model is deep-copied (the caller's module is never touched), put in ``eval()`` mode and
    has ``requires_grad`` turned off. ``example`` is one batch of inputs (or the per-sample input
    shape) for the traced forward that finds the taps; in-tree models know their input shape.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> bb = Backbone(net, example=(1, 28, 28))
    >>> [t.label for t in bb.taps], bb.sizes, bb.num_classes
    (['1', '3'], [784, 32], 10)
    """

    def __init__(
        self,
        model: nn.Module,
        taps: TapSpec = "auto",
        example: torch.Tensor | Sequence[int] | None = None,
        *,
        copy_model: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InstantFTError(f"a backbone must be a torch.nn.Module, got {type(model).__name__}")
        self.model = copy.deepcopy(model) if copy_model else model
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.spec: TapSpec = taps
        x = self._example(example)
        self.input_shape: tuple[int, ...] = tuple(x.shape[1:])
        self.taps, self.layers, self.num_classes = self._discover(x, taps)
        self._clone = False

    # --- discovery --------------------------------------------------------------------------
    def _example(self, example: torch.Tensor | Sequence[int] | None) -> torch.Tensor:
        if example is None:
            shape = getattr(self.model, "input_shape", None)
            if shape is None:
                raise InstantFTError(
                    f"{type(self.model).__name__}: pass example= (a batch of inputs or the input shape) so the taps "
                    "can be found by one forward pass"
                )
            example = tuple(shape)
        param = next(iter(self.model.parameters()), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        if isinstance(example, torch.Tensor):
            return example[:2].detach().to(device=device, dtype=dtype).contiguous()
        return torch.zeros(2, *example, dtype=dtype, device=device)

    def _discover(self, x: torch.Tensor, taps: TapSpec) -> tuple[list[Tap], list[Layer], int]:
        calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
        handles = []
        for name, module in self.model.named_modules():
            if not name:
                continue

            def hook(mod: nn.Module, args: Any, kwargs: dict[str, Any], out: Any, name: str = name) -> None:
                inp, res = _first_tensor(args, kwargs), _first_tensor(out)
                if inp is not None and res is not None:
                    calls.append((name, mod, inp, res))

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        try:
            with torch.no_grad():
                logits = self.model(x)
        except Exception as exc:  # the user's model rejects the input: one line, not a traceback
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise InstantFTError(
                f"{type(self.model).__name__} rejects inputs of shape {tuple(x.shape[1:])}: {first}"
            ) from None
        finally:
            for h in handles:
                h.remove()
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(x):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InstantFTError(f"{type(self.model).__name__} must map a batch to (batch, classes) logits, got {got}")
        runs: dict[str, int] = {}
        for name, *_ in calls:
            runs[name] = runs.get(name, 0) + 1
        layers = [
            Layer(name, type(m).__name__, tuple(i.shape[1:]), tuple(o.shape[1:]))
            for name, m, i, o in calls
            if isinstance(m, ADAPTABLE) and runs[name] == 1
        ]
        found: list[Tap] = []
        seen: list[torch.Tensor] = []
        self.skipped = sorted(n for n, count in runs.items() if count > 1)  # shared modules: no single activation

        def add(name: str, mod: nn.Module, point: TapPoint, act: torch.Tensor, dedupe: bool) -> None:
            if runs[name] > 1:
                if dedupe:  # auto: a module run several times per forward has no one activation to tap
                    return
                raise InstantFTError(f"module {name!r} runs {runs[name]} times in one forward; it cannot be tapped")
            if dedupe and any(_same_tensor(act, s) for s in seen):
                return
            seen.append(act)
            found.append(Tap(name, point, tuple(act.shape[1:]), type(mod).__name__, _same_tensor(act, x)))

        if isinstance(taps, str) and taps == "auto":
            for name, mod, inp, _ in calls:
                if isinstance(mod, ADAPTABLE):
                    add(name, mod, "input", inp, dedupe=True)
        else:
            patterns = [taps] if isinstance(taps, str) else list(taps)
            if not patterns:
                raise InstantFTError("taps: give 'auto' or at least one module name")
            parsed = [_parse(p) for p in patterns]
            for pattern, _ in parsed:
                if not any(_matches(pattern, name) for name, *_ in calls):
                    names = ", ".join(dict.fromkeys(n for n, *_ in calls))
                    raise InstantFTError(f"tap {pattern!r} matches no module the forward runs; modules: {names}")
            done: set[tuple[str, str]] = set()
            for name, mod, inp, out in calls:
                for pattern, point in parsed:
                    if _matches(pattern, name) and (name, point) not in done:
                        done.add((name, point))
                        add(name, mod, point, inp if point == "input" else out, dedupe=False)
        return found, layers, int(logits.shape[1])

    # --- what the rest of instantft reads ------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        """Flattened size of each tap, in forward order."""
        return [t.size for t in self.taps]

    @property
    def cache_sizes(self) -> list[int]:
        """The Forward Cache row: every tap that is not the model input, then the base logits."""
        return [t.size for t in self.taps if not t.is_model_input] + [self.num_classes]

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    def layout_signature(self) -> str:
        return ";".join(f"{t.label}={'x'.join(map(str, t.shape))}" for t in self.taps)

    def fingerprint(self) -> str:
        """sha256 of the weights and buffers and of the tap layout, computed afresh on each call
        (weights changed in place give a new fingerprint, so no stale cache is reused)."""
        weights = weights_sha256(self.model.state_dict(keep_vars=True))
        return hashlib.sha256(f"{weights};{self.layout_signature()}".encode()).hexdigest()

    def require_taps(self, who: str) -> None:
        """The skip methods need at least one tap: one line otherwise."""
        if not self.taps:
            raise InstantFTError(f"{who}: {type(self.model).__name__} has no Conv2d or Linear module to tap")

    def last_linear(self, name: str | None = None) -> Layer | None:
        """The layer ``name`` (a Conv2d or Linear the forward runs once), or the last Linear run."""
        if name is not None:
            chosen = [layer for layer in self.layers if layer.name == name]
            if not chosen:
                raise InstantFTError(f"no Conv2d or Linear module named {name!r} runs (once) in the forward")
            return chosen[0]
        linears = [layer for layer in self.layers if layer.kind == "Linear"]
        return linears[-1] if linears else None

    def clone(self) -> Backbone:
        """An independent copy (own weights) with the same taps, without a new discovery pass."""
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model)
        return twin

    # --- reading the taps ----------------------------------------------------------------------
    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One frozen forward: each tap's activation as (N, d_k) and the logits (N, C)."""
        got: dict[int, torch.Tensor] = {}
        versions: dict[int, int] = {}
        handles = []
        modules = dict(self.model.named_modules())
        for k, tap in enumerate(self.taps):
            if tap.is_model_input:
                continue

            def grab(t: torch.Tensor | None, k: int = k) -> None:
                if t is None:
                    return
                got[k] = t.clone() if self._clone else t
                versions[k] = t._version

            module = modules[tap.name]
            if tap.point == "input":
                handles.append(module.register_forward_pre_hook(
                    lambda m, a, kw, g=grab: g(_first_tensor(a, kw)), with_kwargs=True))  # fmt: skip
            else:
                handles.append(module.register_forward_hook(lambda m, a, o, g=grab: g(_first_tensor(o))))
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        if not self._clone and any(got[k]._version != v for k, v in versions.items()):
            self._clone = True  # an in-place op changed a tapped tensor after it was read: copy from now on
            return self.trace(x)
        n = len(x)
        out = [x.reshape(n, -1) if t.is_model_input else got[k].reshape(n, -1) for k, t in enumerate(self.taps)]
        return out, logits

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs of another per-sample shape than the one the taps were found with."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise InstantFTError(
                f"inputs have shape {tuple(x.shape[1:])} per sample, the backbone was traced with {self.input_shape}"
            )

    def __repr__(self) -> str:
        taps = ", ".join(f"{t.label}[{t.size}]" for t in self.taps)
        return f"Backbone({type(self.model).__name__}, {len(self.taps)} taps: {taps}; {self.num_classes} classes)"


def as_backbone(model: nn.Module | Backbone, taps: TapSpec = "auto", example: Any = None) -> Backbone:
    """A private frozen copy: of ``model`` with ``taps``; of a Backbone, with its own taps
    (``taps="auto"``) or re-traced with the explicit ``taps`` given."""
    if isinstance(model, Backbone):
        if isinstance(taps, str) and taps == "auto":
            return model.clone()
        return Backbone(model.model, taps, example if example is not None else model.input_shape)
    return Backbone(model, taps, example)


Factory = Callable[[], nn.Module]
