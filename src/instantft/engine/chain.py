"""A backbone as a chain of ops for the C core's frozen forward (conv2d, ReLU, max-pool, flatten,
linear), with its taps placed on op inputs, or None when the model is not a plain chain.

Known chains: the in-tree LeNet-5 (whose forward calls functions, not modules, so its order is
written down here), the in-tree MLP, and any ``nn.Sequential`` (nested ones too) of ``Conv2d``,
``BatchNorm2d`` (folded into the conv before it), ``ReLU``, ``MaxPool2d``, ``Flatten``, ``Linear``
and the eval-mode identities (``Dropout``, ``Identity``). Anything else (a residual block, a
custom ``forward``, grouped or dilated convs) is not a chain: the C core then trains from a cache
filled by the backbone's own forward.

Every conversion is checked once on two inputs against the backbone's own trace, so a chain that
would fill different rows is never used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from instantft.backbones import Backbone
from instantft.engine import cengine
from instantft.engine.cengine import ChainOp
from instantft.models.fan import Standardize
from instantft.models.lenet import LeNet5
from instantft.models.mlp import MLP

#: the eval-mode identities a chain may contain
IDENTITIES = (nn.Dropout, nn.Identity)


@dataclass
class _Entry:
    """An op and the module it came from (its qualified name; "" for LeNet-5's functional ops)."""

    name: str
    op: ChainOp


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float32).contiguous().numpy().copy()


def _conv(m: nn.Conv2d) -> ChainOp | None:
    if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        return None
    return ChainOp(
        cengine.OP_CONV2D,
        m.out_channels,
        _pair(m.kernel_size),
        _pair(m.stride),
        _pair(m.padding),
        weight=_np(m.weight),
        bias=_np(m.bias),
    )


def _pool(m: nn.MaxPool2d) -> ChainOp | None:
    stride = m.stride if m.stride is not None else m.kernel_size
    if m.ceil_mode or m.return_indices or _pair(m.dilation) != (1, 1):
        return None
    return ChainOp(cengine.OP_MAXPOOL, 0, _pair(m.kernel_size), _pair(stride), _pair(m.padding))


def _fold_bn(op: ChainOp, bn: nn.BatchNorm2d) -> bool:
    """Fold an eval-mode BatchNorm into the conv before it (w·γ/σ, (b−μ)·γ/σ + β)."""
    if op.kind != cengine.OP_CONV2D or bn.running_mean is None or bn.running_var is None or op.weight is None:
        return False
    inv = (bn.running_var.double() + bn.eps).rsqrt()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv)
    w = torch.from_numpy(op.weight).double() * (gamma * inv).view(-1, 1, 1, 1)
    b = torch.from_numpy(op.bias).double() if op.bias is not None else torch.zeros_like(inv)
    op.weight = w.float().numpy()
    op.bias = ((b - bn.running_mean.double()) * gamma * inv + beta).float().numpy()
    return True


def _sequential(seq: nn.Sequential, prefix: str, out: list[_Entry]) -> bool:
    for name, m in seq.named_children():
        qual = f"{prefix}{name}"
        if isinstance(m, nn.Sequential):
            if not _sequential(m, qual + ".", out):
                return False
            continue
        if isinstance(m, IDENTITIES):
            continue
        op: ChainOp | None
        if isinstance(m, nn.Conv2d):
            op = _conv(m)
        elif isinstance(m, nn.BatchNorm2d):
            if not out or not _fold_bn(out[-1].op, m):
                return False
            out.append(_Entry(qual, ChainOp(0)))  # a marker: the BN's output is the folded conv's
            continue
        elif isinstance(m, nn.ReLU):
            op = ChainOp(cengine.OP_RELU)
        elif isinstance(m, nn.MaxPool2d):
            op = _pool(m)
        elif isinstance(m, nn.Flatten):
            op = ChainOp(cengine.OP_FLATTEN) if (m.start_dim, m.end_dim) == (1, -1) else None
        elif isinstance(m, nn.Linear):
            op = ChainOp(cengine.OP_LINEAR, m.out_features, weight=_np(m.weight), bias=_np(m.bias))
        elif isinstance(m, Standardize):  # (x - mean) * inv_std as a diagonal linear op
            w = torch.diag(m.inv_std)
            op = ChainOp(cengine.OP_LINEAR, len(m.mean), weight=_np(w), bias=_np(-m.mean * m.inv_std))
        else:
            return False
        if op is None:
            return False
        out.append(_Entry(qual, op))
    return True


def _lenet(model: LeNet5) -> list[_Entry] | None:
    """LeNet-5's forward as ops (its ReLU and pooling are function calls, not modules)."""
    conv1, conv2 = _conv(model.conv1), _conv(model.conv2)
    if conv1 is None or conv2 is None:
        return None

    def relu() -> _Entry:
        return _Entry("", ChainOp(cengine.OP_RELU))

    def pool() -> _Entry:
        return _Entry("", ChainOp(cengine.OP_MAXPOOL, 0, (2, 2), (2, 2)))

    return [
        _Entry("conv1", conv1),
        relu(),
        pool(),
        _Entry("conv2", conv2),
        relu(),
        pool(),
        _Entry("", ChainOp(cengine.OP_FLATTEN)),
        _Entry("fc1", _linear(model.fc1)),
        relu(),
        _Entry("fc2", _linear(model.fc2)),
        relu(),
        _Entry("fc3", _linear(model.fc3)),
    ]


def _linear(m: nn.Linear) -> ChainOp:
    return ChainOp(cengine.OP_LINEAR, m.out_features, weight=_np(m.weight), bias=_np(m.bias))


def _entries(model: nn.Module) -> list[_Entry] | None:
    if isinstance(model, LeNet5):
        return _lenet(model)
    prefix, seq = "", model
    if isinstance(model, MLP):
        prefix, seq = "net.", model.net
    if not isinstance(seq, nn.Sequential):
        return None
    out: list[_Entry] = []
    return out if _sequential(seq, prefix, out) else None


def _place_taps(entries: list[_Entry], backbone: Backbone) -> list[ChainOp] | None:
    """The ops with each backbone tap on the input of one op, in forward order; None if a tap has
    no op input (a folded BatchNorm's input, the logits) or two taps land on the same op."""
    ops: list[ChainOp] = []
    first_of: dict[str, int] = {}  # module name -> index of its op in ``ops``
    after: dict[str, int] = {}  # module name -> index of the op that reads its output
    for e in entries:
        if e.op.kind == 0:  # folded BatchNorm: its input is gone, its output is the conv's
            after[e.name] = len(ops)
            continue
        if e.name:
            first_of.setdefault(e.name, len(ops))
        ops.append(e.op)
        if e.name:
            after[e.name] = len(ops)
    placed: list[int] = []
    for tap in backbone.taps:
        if tap.point == "input":
            if tap.name not in first_of:
                return None
            i = first_of[tap.name]
        else:
            i = after.get(tap.name, -1)
        if i < 0 or i >= len(ops) or (placed and i <= placed[-1]):
            return None
        if tap.is_model_input and any(o.kind != cengine.OP_FLATTEN for o in ops[:i]):
            return None
        ops[i].tap = cengine.TAP_INPUT if tap.is_model_input else cengine.TAP_CACHED
        placed.append(i)
    return ops


def chain_entries(backbone: Backbone) -> list[tuple[str, ChainOp]] | None:
    """The backbone as named ops with its taps placed, in Python alone (the C library need not be
    built): what the C core runs, and what the fixed-point datapath emulates; None if not a chain."""
    entries = _entries(backbone.model)
    ops = None if entries is None else _place_taps(entries, backbone)
    if entries is None or ops is None:
        return None
    names = [e.name for e in entries if e.op.kind != 0]  # _place_taps drops the folded BatchNorms
    return list(zip(names, ops, strict=True))


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    if len(shape) == 1:
        return (int(shape[0]), 1, 1)
    return None


def chain_for(backbone: Backbone, check: bool = True) -> cengine.Chain | None:
    """The backbone as a C-core chain with its taps, or None (not a chain, the C core is not built,
    or the chain's rows would differ from the backbone's trace)."""
    if not cengine.available():
        return None
    entries = _entries(backbone.model)
    in_shape = _shape3(tuple(backbone.input_shape))
    if entries is None or in_shape is None:
        return None
    ops = _place_taps(entries, backbone)
    if ops is None:
        return None
    try:
        chain = cengine.Chain(in_shape, ops)
    except ValueError:
        return None
    if chain.row_width != sum(backbone.cache_sizes) or chain.num_classes != backbone.num_classes:
        return None
    if check and not _matches_trace(chain, backbone):
        return None
    return chain


def _matches_trace(chain: cengine.Chain, backbone: Backbone) -> bool:
    """The chain's cache rows equal the backbone's own trace on two random inputs (float rounding
    aside): catches an op the conversion misread (e.g. a Linear applied over a spatial map)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, *backbone.input_shape, generator=gen)
    taps, logits = backbone.trace(x)
    cached = [t for t, tap in zip(taps, backbone.taps, strict=True) if not tap.is_model_input]
    want = torch.cat([*cached, logits], dim=1).numpy()
    got = chain.rows(x.numpy())
    scale = max(1.0, float(np.abs(want).max()))
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= 1e-4 * scale))


#: chains by the backbone fingerprint they were converted from (weights and tap layout: all a
#: chain depends on), so a new Backbone wrapper of the same weights is not converted again
_CHAINS: dict[str, cengine.Chain | None] = {}
_CHAINS_KEPT = 8


def cached_chain(backbone: Backbone, fingerprint: str) -> cengine.Chain | None:
    """:func:`chain_for`, converted once per backbone fingerprint. The in-tree LeNet-5 and MLP
    (their exact classes, whose forward is known) skip the trace check, which the tests cover."""
    if fingerprint not in _CHAINS:
        if len(_CHAINS) >= _CHAINS_KEPT:
            _CHAINS.pop(next(iter(_CHAINS)))
        _CHAINS[fingerprint] = chain_for(backbone, check=type(backbone.model) not in (LeNet5, MLP))
    return _CHAINS[fingerprint]


def flops_per_sample(chain: cengine.Chain) -> int:
    """Multiply-adds ×2 of the chain's convs and linears (for the bench's FLOP limit)."""
    total = 0
    for op in chain._ops:
        if op.kind == cengine.OP_CONV2D:
            total += 2 * op.out_c * op.out_h * op.out_w * op.in_c * op.kh * op.kw
        elif op.kind == cengine.OP_LINEAR:
            total += 2 * op.out_c * op.in_c * op.in_h * op.in_w
    return total


__all__ = ["cached_chain", "chain_for", "flops_per_sample"]
