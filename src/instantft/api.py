"""The Python API: fine-tune any PyTorch classifier on your own tensors in four calls.

>>> import torch
>>> from torch import nn
>>> import instantft
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
>>> x, y = torch.rand(200, 1, 8, 8), torch.randint(0, 4, (200,))
>>> ft = instantft.FineTuner(net, method="instantft", epochs=3)
>>> result = ft.fit((x, y))
>>> result.steps, result.trainable_params
(30, 416)
>>> ft.predict(x[:5]).shape
torch.Size([5, 4])

``ft.save("adapter.safetensors")`` writes the adapters (safetensors + a JSON record with the base
model's fingerprint and the tap layout) and ``FineTuner.load(path, net)`` rebuilds them on the
same base model, refusing any other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from instantft.backbones import Backbone, TapSpec
from instantft.data import ImageSet
from instantft.errors import InstantFTError
from instantft.machine import torch_threads
from instantft.methods import FineTuneConfig, FitResult, Method, create, method_names
from instantft.methods.adapter_io import load_adapter, save_adapter
from instantft.settings import Runtime

Data = tuple[torch.Tensor, torch.Tensor] | Dataset | ImageSet


def as_imageset(data: Data, name: str = "user-data") -> ImageSet:
    """(x, y) tensors, a ``Dataset`` yielding (x, y), or an ImageSet -> an ImageSet whose sample
    ids are the row numbers (the Forward Cache keys)."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, Dataset):
        try:
            batches = list(DataLoader(data, batch_size=1024, shuffle=False))
            x = torch.cat([torch.as_tensor(b[0]) for b in batches])
            y = torch.cat([torch.as_tensor(b[1]) for b in batches])
        except (TypeError, IndexError, ValueError, RuntimeError) as exc:
            raise InstantFTError(f"the dataset must yield (x, y) pairs of tensors ({exc})") from None
    else:
        raise InstantFTError(f"data must be (x, y) tensors or a torch Dataset, got {type(data).__name__}")
    if len(x) != len(y):
        raise InstantFTError(f"x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise InstantFTError("no samples to fine-tune on")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InstantFTError(f"y must be a 1-D tensor of integer class labels, got {y.dtype} of shape {tuple(y.shape)}")
    x = x.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise InstantFTError("x holds NaN or infinite values")
    return ImageSet(name, x, y.detach().to(torch.int64), torch.arange(len(x)))


class FineTuner:
    """Fine-tune ``model`` (any classifier ``nn.Module``: batch -> logits) with ``method``.

    ``taps`` chooses the activations the skip adapters read (``"auto"``: the input of every
    Conv2d and Linear module, see :mod:`instantft.backbones`); every other keyword is a setting:
    a field of :class:`~instantft.settings.FineTuneConfig` (``rank``, ``epochs``, ``lr``,
    ``batch_size``, ``seed``, ``scale``, ...), saved with the adapters, or of
    :class:`~instantft.settings.Runtime` (``engine``, ``threads``, ``cache_fill``, ...), which is not.
    ``model`` itself is never modified: the methods work
    on a frozen copy. The method is built on the first :meth:`fit` (the taps are found with the
    data's input shape) unless ``example`` (a batch or the per-sample input shape) is given.
    """

    def __init__(
        self,
        model: nn.Module | Backbone,
        method: str = "instantft",
        taps: TapSpec = "auto",
        example: torch.Tensor | tuple[int, ...] | None = None,
        **settings: Any,
    ) -> None:
        if method not in method_names():
            raise InstantFTError(f"unknown method {method!r}; valid: {', '.join(method_names())}")
        valid = set(FineTuneConfig.model_fields) | set(Runtime.model_fields)
        unknown = sorted(set(settings) - valid)
        if unknown:
            raise InstantFTError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        self.model, self.method_name, self.taps = model, method, taps
        self.config = FineTuneConfig(**{k: v for k, v in settings.items() if k in FineTuneConfig.model_fields})
        self.runtime = Runtime(**{k: v for k, v in settings.items() if k in Runtime.model_fields})
        self.method: Method | None = None
        if example is not None or getattr(model, "input_shape", None) is not None or isinstance(model, Backbone):
            self.method = create(method, model, self.config, taps, example, self.runtime)

    def _method(self, x: torch.Tensor | None = None) -> Method:
        if self.method is None:
            if x is None:
                raise InstantFTError("call fit() first (or pass example= so the taps can be found)")
            self.method = create(self.method_name, self.model, self.config, self.taps, x[:2], self.runtime)
        return self.method

    def fit(self, data: Data) -> FitResult:
        """Train on ``data`` ((x, y) tensors or a Dataset); returns epoch losses, seconds, steps,
        cache bytes and the number of trained values. A diverging run raises
        :class:`~instantft.methods.DivergedError` and leaves the adapters of before the call."""
        images = as_imageset(data)
        method = self._method(images.images)
        classes = method.backbone.num_classes
        if int(images.labels.min()) < 0 or int(images.labels.max()) >= classes:
            raise InstantFTError(
                f"labels must be in 0..{classes - 1} (the model has {classes} outputs), got "
                f"{int(images.labels.min())}..{int(images.labels.max())}"
            )
        method.drop_stale_cache(images)  # new data or a changed base: a fresh cache
        before = {k: v.detach().clone() for k, v in method.trainable().items()}
        try:
            with torch_threads(self.runtime.threads):
                return method.fit(images)
        except InstantFTError:
            method.load_trainable(before)  # a diverged fit must not leave half-trained tensors behind
            raise

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of base + adapters for a batch of inputs (no grad)."""
        method = self._method(x)
        method.backbone.check_input(x)
        with torch.no_grad():
            return method.logits(x.to(torch.float32))

    @property
    def trainable_params(self) -> int:
        return self._method().trainable_parameters()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """The trained tensors as safetensors + JSON record (method, config, taps, base fingerprint)."""
        return save_adapter(path, self._method())

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | Backbone) -> FineTuner:
        """Rebuild a saved fine-tune on ``model``; an adapter made for another base is refused."""
        method, record = load_adapter(path, model)
        ft = cls.__new__(cls)
        ft.model, ft.method_name, ft.taps = model, method.name, record.get("taps") or "auto"
        ft.config, ft.runtime, ft.method = method.config, method.runtime, method
        return ft

    def __repr__(self) -> str:
        state = "unfitted" if self.method is None else f"{self.trainable_params} trainable values"
        return f"FineTuner({type(self.model).__name__}, method={self.method_name!r}, {state})"
