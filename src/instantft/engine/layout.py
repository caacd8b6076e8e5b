"""How the skip adapters are packed for the C core.

All A_k sit side by side in one matrix ``A`` (R × Σ d_k) and all B_k in one (C, K, R) array, so
a step is a handful of loops (or matmuls) over contiguous memory. The rank is padded to a
multiple of 4 with zero rows of A and zero columns of B: those give h = 0, so their gradients are
exactly zero and they stay zero, while the C micro-kernels always see 4 ranks. The packing itself is
the C core's ``ift_adapters_pack`` (:meth:`instantft.engine.cengine.Adapters.pack`).

Each adapter reads its input either from the data row (a tap that is the model input, such as
LeNet-5's x0) or from a slice of the Forward Cache row ``[cached taps | f(x)]``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from instantft.backbones import Backbone

#: where a segment's input comes from (the ``source`` column of :meth:`Layout.segments`)
SRC_IMAGE, SRC_CACHE = 0, 1


@dataclass(frozen=True)
class Layout:
    """Where each adapter k reads x_k (the data row or a slice of the cache row) and which
    columns of the packed A it owns."""

    sizes: tuple[int, ...]  # d_1..d_K: flattened taps
    from_image: tuple[bool, ...]  # tap k is the model input itself
    d_image: int  # flattened model input (the data row)
    num_classes: int
    rank: int  # the adapters' rank
    padded_rank: int  # rank rounded up to a multiple of 4

    @classmethod
    def for_backbone(cls, backbone: Backbone, rank: int) -> Layout:
        flags = tuple(t.is_model_input for t in backbone.taps)
        return cls(tuple(backbone.sizes), flags, backbone.input_size, backbone.num_classes, rank, -(-rank // 4) * 4)

    @property
    def cache_width(self) -> int:
        """[cached taps | f(x)]: the Forward Cache row."""
        return self.logit_offset + self.num_classes

    @property
    def logit_offset(self) -> int:
        return sum(d for d, img in zip(self.sizes, self.from_image, strict=True) if not img)

    @property
    def total_inputs(self) -> int:
        return sum(self.sizes)

    @property
    def columns(self) -> list[tuple[int, int]]:
        edges = np.cumsum([0, *self.sizes]).tolist()
        return list(itertools.pairwise(edges))

    @property
    def sources(self) -> list[tuple[str, int, int]]:
        """(source, offset in the source row, length) of each adapter's input."""
        out = []
        off = 0
        for d, img in zip(self.sizes, self.from_image, strict=True):
            if img:
                out.append(("image", 0, d))
            else:
                out.append(("cache", off, d))
                off += d
        return out

    def segments(self) -> np.ndarray:
        """(K, 4) int64 rows [source, offset, first column of A, length] for the kernels."""
        return np.array(
            [
                [SRC_IMAGE if src == "image" else SRC_CACHE, off, col[0], n]
                for (src, off, n), col in zip(self.sources, self.columns, strict=True)
            ],
            dtype=np.int64,
        ).reshape(-1, 4)

    def pack(self, A: list[torch.Tensor], B: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapters' tensors copied into a packed A (R', D) and B (C, K, R'), R' the padded
        rank, by the C core's ``ift_adapters_pack`` (the one packing, the device program's too)."""
        from instantft.engine import cengine

        packed = cengine.Adapters.pack(self, A, B, 1.0)
        return torch.from_numpy(packed.A), torch.from_numpy(packed.B)

    def unpack(self, a: torch.Tensor, b: torch.Tensor, A: list[torch.Tensor], B: list[torch.Tensor]) -> None:
        """Copy the packed tensors back into the adapters' own (in place, ``ift_adapters_unpack``)."""
        from instantft.engine import cengine

        a_np, b_np = a.contiguous().numpy(), b.contiguous().numpy()
        cengine.Adapters(a_np, b_np, self.segments(), self.logit_offset, 1.0, self.rank).unpack(A, B)
