"""Filling the Forward Cache: the frozen base forward of the samples it does not hold, written
into cache rows ``[cached taps | f(x)]`` equal (float rounding aside) to
:meth:`instantft.backbones.Backbone.trace`.

This is the largest single cost of a Skip2-LoRA run (0.85 of its 1.29 GFLOP on LeNet-5). Rows
enter the cache one way, :meth:`instantft.cache.ForwardCache.fill`, from one of two forwards:

- a chain backbone (:func:`instantft.engine.chain.cached_chain`: LeNet-5, MLPs, plain
  ``nn.Sequential`` CNNs): the C core's forward writes the rows straight into the cache storage,
  an NF4 row encoded while it is still in L1, over torch's thread count;
- any other backbone: its own batched no-grad torch forward in passes of :data:`TORCH_CHUNK`
  samples, each pass stored (and NF4-encoded) as soon as it is done.
"""

from __future__ import annotations

import torch

from instantft.backbones import Backbone
from instantft.cache import ForwardCache

#: samples per torch pass: the activations of a pass stay in L2 instead of streaming through memory
TORCH_CHUNK = 256


@torch.no_grad()
def torch_rows(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """The cache rows of ``images`` from the backbone's own forward (any backbone)."""
    xs, logits = backbone.trace(images)
    cached = [x for x, t in zip(xs, backbone.taps, strict=True) if not t.is_model_input]
    return torch.cat([*cached, logits], dim=1)


@torch.no_grad()
def fill_cache(backbone: Backbone, cache: ForwardCache, keys: torch.Tensor, images: torch.Tensor,
               fingerprint: str) -> None:  # fmt: skip
    """Store the rows of ``images`` under ``keys`` (none of them held yet); ``fingerprint`` is the
    backbone's, under which its chain conversion is kept."""
    from instantft.engine.chain import cached_chain

    chain = cached_chain(backbone, fingerprint)
    if chain is not None:
        x = images.contiguous().numpy()
        cache.fill(keys, lambda start: chain.fill_cache_slots(cache, start, x, torch.get_num_threads()))
        return

    def write(start: int) -> None:
        for lo in range(0, len(images), TORCH_CHUNK):
            cache.store(torch_rows(backbone, images[lo : lo + TORCH_CHUNK]), start + lo)

    cache.fill(keys, write)


__all__ = ["TORCH_CHUNK", "fill_cache", "torch_rows"]
