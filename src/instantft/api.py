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
from torch.utils.data import Dataset

from instantft.backbones import Backbone, TapSpec
from instantft.data import ImageSet
from instantft.errors import InstantFTError
from instantft.machine import torch_threads
from instantft.methods import FineTuneConfig, FitResult, Method, create, method_names
from instantft.methods.adapter_io import load_adapter, save_adapter
from instantft.settings import Runtime, check_adapter_memory, check_steps

Data = tuple[torch.Tensor, torch.Tensor] | Dataset | ImageSet


def check_inputs(x: Any, what: str = "x") -> torch.Tensor:
    """``x`` as a batch the methods can take: a tensor of real floating-point values, one row per
    sample (N, ...), finite, and of a size within the data budget as float32 (checked before the
    float32 copy is made). Anything else is one line saying what to pass."""
    from instantft.data.userdata import DATA_BUDGET_BYTES

    if not isinstance(x, torch.Tensor):
        raise InstantFTError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise InstantFTError(f"{what} must be a batch (N, ...) with one row per sample, got shape {tuple(x.shape)}")
    if x.is_complex() or not x.is_floating_point():
        raise InstantFTError(
            f"{what} must hold real floating-point values, got {x.dtype}: convert it (x.float(), scaled as the model "
            "expects)"
        )
    if x.numel() * 4 > DATA_BUDGET_BYTES:
        raise InstantFTError(
            f"{what} has {x.numel():,} values, {x.numel() * 4 / 2**30:.1f} GiB as float32: more than the "
            f"{DATA_BUDGET_BYTES / 2**30:g} GiB data budget"
        )
    if not bool(torch.isfinite(x).all()):
        raise InstantFTError(f"{what} holds NaN or infinite values")
    return x.detach().to(torch.float32).contiguous()


def _from_dataset(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) pairs of a map-style Dataset, stacked; its size checked from its first item
    before the rest is read."""
    from instantft.data.userdata import DATA_BUDGET_BYTES
    from instantft.usercode import user_code

    with user_code("the dataset"):
        n = len(data)  # type: ignore[arg-type]
        first = data[0] if n else None
    if first is None:
        raise InstantFTError("no samples to fine-tune on")
    if not (isinstance(first, tuple | list) and len(first) == 2):
        raise InstantFTError(f"the dataset must yield (x, y) pairs, its first item is a {type(first).__name__}")
    x0 = torch.as_tensor(first[0]) if not isinstance(first[0], torch.Tensor) else first[0]
    if n * max(1, x0.numel()) * 4 > DATA_BUDGET_BYTES:
        raise InstantFTError(
            f"the dataset holds {n:,} samples of {x0.numel():,} values: more than the "
            f"{DATA_BUDGET_BYTES / 2**30:g} GiB data budget as float32"
        )
    xs, ys = [], []
    with user_code("the dataset"):
        for i in range(n):
            item = data[i]
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise InstantFTError(f"the dataset must yield (x, y) pairs, item {i} is a {type(item).__name__}")
            xi, yi = torch.as_tensor(item[0]), torch.as_tensor(item[1])
            if xi.shape != x0.shape or yi.ndim != 0:
                raise InstantFTError(
                    f"dataset item {i}: x of shape {tuple(xi.shape)} and y of shape {tuple(yi.shape)}; every x must "
                    f"be {tuple(x0.shape)} and every y one class number"
                )
            xs.append(xi)
            ys.append(yi)
    try:
        return torch.stack(xs), torch.stack(ys)
    except (TypeError, RuntimeError) as exc:
        raise InstantFTError(f"the dataset's items do not stack into tensors ({exc})") from None


def as_imageset(data: Data, name: str = "user-data") -> ImageSet:
    """(x, y) tensors, a ``Dataset`` yielding (x, y), or an ImageSet -> an ImageSet whose sample
    ids are the row numbers (the Forward Cache keys). Bad input of any kind is one
    :class:`InstantFTError` line (:func:`check_inputs`)."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, Dataset):
        x, y = _from_dataset(data)
    else:
        raise InstantFTError(f"data must be (x, y) tensors or a torch Dataset, got {type(data).__name__}")
    if y.ndim != 1 or y.is_complex() or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InstantFTError(f"y must be a 1-D tensor of integer class labels, got {y.dtype} of shape {tuple(y.shape)}")
    if x.ndim >= 1 and len(x) != len(y):
        raise InstantFTError(f"x has {len(x)} samples but y has {len(y)}")
    if len(y) == 0:
        raise InstantFTError("no samples to fine-tune on")
    x = check_inputs(x)
    return ImageSet(name, x, y.detach().to(torch.int64), torch.arange(len(x)))


def check_model(model: Any) -> None:
    """A classifier module whose floating-point parameters are float32 (what the methods train)."""
    if isinstance(model, Backbone):
        model = model.model
    if not isinstance(model, nn.Module):
        raise InstantFTError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and t.dtype != torch.float32:
            raise InstantFTError(
                f"the model's {name} is {t.dtype}; instantft fine-tunes float32 models: pass model.float()"
            )
        if t.is_complex():
            raise InstantFTError(f"the model's {name} is {t.dtype}; instantft fine-tunes real float32 models")


def _row_bytes(method: Method) -> int:
    """Bytes of one Forward Cache row of ``method`` (0 for a method without a cache)."""
    from instantft import nf4

    width = sum(method.backbone.cache_sizes)
    if method.cache_storage is None:
        return 0
    return nf4.nbytes_per_row(width) if method.cache_storage == "nf4" else 4 * width


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
        check_model(model)
        if isinstance(example, torch.Tensor):
            example = check_inputs(example, "example")
        self.model, self.method_name, self.taps = model, method, taps
        self.config = FineTuneConfig(**{k: v for k, v in settings.items() if k in FineTuneConfig.model_fields})
        self.runtime = Runtime(**{k: v for k, v in settings.items() if k in Runtime.model_fields})
        self.method: Method | None = None
        if example is not None or getattr(model, "input_shape", None) is not None or isinstance(model, Backbone):
            self.method = self._create(example)

    def _create(self, example: Any) -> Method:
        """The method, once the adapters' size is checked against the memory budget (from a traced
        copy of the backbone, before any adapter is allocated)."""
        traced = self.model if isinstance(self.model, Backbone) else Backbone(self.model, self.taps, example)
        check_adapter_memory(self.config.rank, traced.sizes, traced.num_classes)
        return create(self.method_name, self.model, self.config, self.taps, example, self.runtime)

    def _method(self, x: torch.Tensor | None = None) -> Method:
        if self.method is None:
            if x is None:
                raise InstantFTError("call fit() first (or pass example= so the taps can be found)")
            self.method = self._create(x[:2])
        return self.method

    def fit(self, data: Data) -> FitResult:
        """Train on ``data`` ((x, y) tensors or a Dataset); returns epoch losses, seconds, steps,
        cache bytes and the number of trained values. A diverging run raises
        :class:`~instantft.methods.DivergedError` and leaves the adapters of before the call.
        The steps, and the adapters with the Forward Cache, are checked against their limits
        before the cache is filled."""
        images = as_imageset(data)
        check_steps(self.config.epochs, len(images), self.config.batch_size)
        method = self._method(images.images)
        method.backbone.check_input(images.images[:1])
        check_adapter_memory(self.config.rank, method.backbone.sizes, method.backbone.num_classes,
                             len(images) * _row_bytes(method))  # fmt: skip
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
        x = check_inputs(x)
        method = self._method(x)
        method.backbone.check_input(x)
        with torch.no_grad():
            return method.logits(x)

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
