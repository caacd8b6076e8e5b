"""Table 1 computed from the model: trainable parameters, forward/backward FLOPs and memory of one sample.

Nothing here is a stored number. :func:`describe` runs the backbone once on a random sample and
reads each conv/FC layer's shapes from forward hooks, finding the ReLU and 2×2 max-pool after it
by matching the next layer's input; :func:`plan_of` attributes every tensor of
``method.trainable()`` to a layer's weight, bias or adapter. :func:`costs` then counts, for a
batch of one, with fp32 values (4 B) and 1 KB = 1000 B:

Forward FLOPs
    2 per multiply-accumulate, 1 add per bias element, 1 op per ReLU element, 3 comparisons per
    2×2 max-pool window; an adapter (A: r × d_in, B: d_out × r) adds 2·r·(d_in + d_out). Adding
    the adapter's output to the layer's (or the logits) is not counted.

Backward FLOPs (:class:`Convention` defaults)
    2 per MAC for a weight gradient and for an input gradient, 1 op per bias-gradient element,
    1 op per ReLU element passed through, 0 for max-pool (routing) and for the softmax/
    cross-entropy gradient, no parameter update. An adapter costs 2·r·d_out (∂B) + 2·r·d_out
    (Bᵀ·g) + 2·r·d_in (∂A) + 2·r·d_in (its input gradient Aᵀ·(Bᵀg)) when that is counted.
    Input gradients follow the *layer-order rule*: a layer, or an adapter placed at it, computes
    its input gradient when some earlier layer holds a trainable tensor. For the base layers and
    LoRA this is exactly what backprop needs (it equals torch's FlopCounterMode on autograd plus
    the element-wise ops). For Skip-LoRA/InstantFT it also counts A_kᵀ(B_kᵀg) for k = 2..5,
    which nothing uses (our :class:`SkipAdapters.grads` skips it); the paper's InstantFT column
    (and its 20.9× and 14.1–40.6× ratios) includes them, so ``backward_flops`` does too and
    ``backward_flops_required`` gives the count without them.

Memory
    All weights and adapter matrices; one gradient per trainable value; the forward activations of
    one sample (the input, each layer's output after an in-place ReLU, each pooled output) and
    each adapter's r-vector h = A·x. Where the method backpropagates: the logits' gradient, the
    gradient of every activation on the backward path, one 4-byte argmax index per pooled value
    passed through, and each adapter's ∂h. The Forward Cache of Skip2-LoRA/InstantFT (one row
    per fine-tuning sample) is not part of this per-sample model.

With these defaults every cell of the paper's Table 1 is reproduced at its printed precision;
:mod:`instantft.analysis.conventions` scores the alternatives that were tried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from instantft.adapters import LoRALayer, SkipAdapters
from instantft.errors import InstantFTError
from instantft.methods import FineTuneConfig, Method, create
from instantft.models import ARCH_FOR_DATASET, LeNet5, build_lenet

AdapterInputGrads = Literal["layer-order", "required", "always"]


@dataclass(frozen=True)
class Layer:
    """One conv/FC layer as it runs on one sample; sizes are flattened element counts."""

    name: str
    d_in: int  # its input x_{k-1}
    d_out: int  # its pre-activation output (what a LoRA adapter writes)
    macs: int
    weight_params: int
    bias_params: int
    relu: bool
    pooled: int  # elements after the 2×2 max-pool that follows it; 0 if none

    @property
    def pool_window(self) -> int:
        return self.d_out // self.pooled if self.pooled else 1


def _activation_after(y: torch.Tensor, nxt: torch.Tensor) -> tuple[bool, bool]:
    """(relu, pool): which of ReLU and 2×2 max-pool turn layer output y into the next input."""
    for relu in (False, True):
        for pool in (False, True):
            z = F.relu(y) if relu else y
            if pool:
                if z.dim() != 4:
                    continue
                z = F.max_pool2d(z, 2)
            if z.numel() == nxt.numel() and torch.allclose(z.flatten(1), nxt.flatten(1)):
                return relu, pool
    raise InstantFTError(f"cannot tell how a layer's output of shape {tuple(y.shape)} becomes the next input")


def describe(model: LeNet5) -> list[Layer]:
    """The backbone's layers, found by running it on random samples with forward hooks."""
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, k=k: outputs.__setitem__(k, out.detach()))
        for k, module in enumerate(model.layers)
    ]
    try:
        x = torch.randn(4, *model.input_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            xs, logits = model.trace(x)
    finally:
        for h in hooks:
            h.remove()
    layers = []
    for k, module in enumerate(model.layers):
        if not isinstance(module, nn.Conv2d | nn.Linear):
            raise InstantFTError(f"layer {k + 1} is a {type(module).__name__}, expected Conv2d or Linear")
        y = outputs[k]
        nxt = xs[k + 1] if k + 1 < len(xs) else logits
        relu, pool = _activation_after(y, nxt) if k + 1 < len(xs) else (False, False)
        bias = module.bias.numel() if module.bias is not None else 0
        layers.append(
            Layer(
                name=f"layer{k + 1}:{type(module).__name__}",
                d_in=xs[k][0].numel(),
                d_out=y[0].numel(),
                macs=y[0].numel() * module.weight[0].numel(),  # each output element: one filter / row
                weight_params=module.weight.numel(),
                bias_params=bias,
                relu=relu,
                pooled=nxt[0].numel() if pool else 0,
            )
        )
    return layers


@dataclass(frozen=True)
class Adapter:
    """A low-rank adapter reading the input of layer ``layer`` (0-based)."""

    layer: int
    rank: int
    d_in: int
    d_out: int
    to_logits: bool  # Skip-LoRA: writes the logits; LoRA: writes the layer's pre-activation

    @property
    def params(self) -> int:
        return self.rank * (self.d_in + self.d_out)


@dataclass(frozen=True)
class Plan:
    """What a method trains: layer weights, layer biases and adapters (layer indices 0-based)."""

    weights: frozenset[int] = frozenset()
    biases: frozenset[int] = frozenset()
    adapters: tuple[Adapter, ...] = ()

    @property
    def trains(self) -> bool:
        return bool(self.weights or self.biases or self.adapters)

    @property
    def first_trainable(self) -> int | None:
        """Lowest layer holding anything trainable (the layer-order rule's cut-off)."""
        positions = self.weights | self.biases | {a.layer for a in self.adapters}
        return min(positions) if positions else None

    @property
    def lowest_on_base_path(self) -> int | None:
        """Lowest layer whose trainable tensors get their gradient back through the base network."""
        positions = self.weights | self.biases | {a.layer for a in self.adapters if not a.to_logits}
        return min(positions) if positions else None


def plan_of(method: Method) -> Plan:
    """Attribute every tensor of ``method.trainable()`` to a weight, a bias or an adapter."""
    trained = {id(t): name for name, t in method.trainable().items()}
    claimed: set[int] = set()
    weights: set[int] = set()
    biases: set[int] = set()
    adapters: list[Adapter] = []
    skip = getattr(method, "adapters", None)
    if isinstance(skip, SkipAdapters):
        for k, (a, b) in enumerate(zip(skip.A, skip.B, strict=True)):
            adapters.append(Adapter(k, a.shape[0], a.shape[1], b.shape[0], to_logits=True))
            claimed |= {id(a), id(b)}
    model = cast(LeNet5, getattr(method, "model", method.base))
    for k, module in enumerate(model.layers):
        if isinstance(module, LoRALayer):
            adapters.append(Adapter(k, module.A.shape[0], module.A.shape[1], module.B.shape[0], to_logits=False))
            claimed |= {id(module.A), id(module.B)}
            module = module.layer
        if id(module.weight) in trained:
            weights.add(k)
            claimed.add(id(module.weight))
        if module.bias is not None and id(module.bias) in trained:
            biases.add(k)
            claimed.add(id(module.bias))
    if unknown := set(trained) - claimed:
        names = sorted(trained[i] for i in unknown)
        raise InstantFTError(f"method {method.name}: cannot place trainable tensors {names} in Table 1")
    return Plan(frozenset(weights), frozenset(biases), tuple(sorted(adapters, key=lambda a: a.layer)))


@dataclass(frozen=True)
class Convention:
    """How the backward FLOPs and the memory are counted; the defaults fit the paper's Table 1."""

    # backward FLOPs
    weight_grad_flops_per_mac: int = 2
    input_grad_flops_per_mac: int = 2
    bias_grad_flops: bool = True  # 1 op per output element
    relu_backward_flops: bool = True  # 1 op per element
    pool_backward_flops: int = 0  # ops per pooled value
    loss_grad_flops: int = 0  # ops per logit for softmax − onehot
    adapter_input_grads: AdapterInputGrads = "layer-order"
    merge_adds: bool = False  # adding an adapter's input gradient to the base's
    # memory
    count_input: bool = True
    count_pre_pool: bool = True  # keep (and backprop through) the pre-pool tensor as well as the pooled one
    separate_pre_relu: bool = False  # pre-ReLU values stored besides the ReLU output (no in-place ReLU)
    pool_indices: bool = True  # one argmax index per pooled value, where backprop passes the pool
    activation_grads: bool = True  # gradients of the activations on the backward path
    logits_grad: bool = True
    adapter_hidden: bool = True  # h = A·x and ∂h, r values each
    bytes_per_value: int = 4


DEFAULT = Convention()


@dataclass(frozen=True)
class Costs:
    """One Table 1 row, computed."""

    trainable_params: int
    forward_flops: int
    backward_flops: int
    backward_flops_required: int  # without adapter input gradients nothing uses
    memory_bytes: int
    memory: dict[str, int] = field(default_factory=dict)  # bytes: weights, gradients, activations, backward


def forward_flops(layers: list[Layer], plan: Plan) -> int:
    """The base forward plus every adapter's two matrix-vector products."""
    total = 0
    for layer in layers:
        total += 2 * layer.macs
        total += layer.d_out if layer.bias_params else 0
        total += layer.d_out if layer.relu else 0
        total += (layer.pool_window - 1) * layer.pooled
    return total + sum(2 * a.params for a in plan.adapters)


def _adapter_needs_input_grad(a: Adapter, plan: Plan, rule: AdapterInputGrads) -> bool:
    if rule == "always":
        return a.layer > 0
    if rule == "layer-order":
        cut = plan.first_trainable
        return cut is not None and a.layer > cut
    cut = plan.lowest_on_base_path  # required: only where it feeds a trainable tensor below
    return cut is not None and a.layer > cut


def backward_flops(layers: list[Layer], plan: Plan, conv: Convention = DEFAULT) -> int:
    """Gradient FLOPs of one sample: the base network from the logits down to the lowest layer
    trained through it, then each adapter."""
    if not plan.trains:
        return 0
    w_mac, x_mac = conv.weight_grad_flops_per_mac, conv.input_grad_flops_per_mac
    total = conv.loss_grad_flops * layers[-1].d_out
    low = plan.lowest_on_base_path
    if low is not None:
        for k in range(low, len(layers)):
            layer = layers[k]
            total += w_mac * layer.macs if k in plan.weights else 0
            total += layer.d_out if k in plan.biases and conv.bias_grad_flops else 0
            total += x_mac * layer.macs if k > low else 0
            total += layer.d_out if layer.relu and conv.relu_backward_flops else 0
            total += conv.pool_backward_flops * layer.pooled
    for a in plan.adapters:
        total += w_mac * a.rank * a.d_out + x_mac * a.rank * a.d_out + w_mac * a.rank * a.d_in
        if _adapter_needs_input_grad(a, plan, conv.adapter_input_grads):
            total += x_mac * a.rank * a.d_in
            total += a.d_in if conv.merge_adds else 0
    return total


def memory_values(layers: list[Layer], plan: Plan, conv: Convention = DEFAULT) -> dict[str, int]:
    """Values held for one training step of one sample, by kind."""
    weights = sum(layer.weight_params + layer.bias_params for layer in layers) + sum(a.params for a in plan.adapters)
    gradients = sum(layers[k].weight_params for k in plan.weights) + sum(layers[k].bias_params for k in plan.biases)
    gradients += sum(a.params for a in plan.adapters)
    activations = layers[0].d_in if conv.count_input else 0
    for layer in layers:
        activations += layer.d_out if not layer.pooled or conv.count_pre_pool else 0
        activations += layer.pooled
        activations += layer.d_out if layer.relu and conv.separate_pre_relu else 0
    hidden = sum(a.rank for a in plan.adapters) if conv.adapter_hidden else 0
    backward = 0
    if plan.trains:
        backward += layers[-1].d_out if conv.logits_grad else 0
        backward += hidden
        low = plan.lowest_on_base_path
        if low is not None and conv.activation_grads:
            for layer in layers[low:-1]:
                backward += layer.d_out if not layer.pooled or conv.count_pre_pool else 0
                backward += layer.pooled
                backward += layer.d_out if layer.relu and conv.separate_pre_relu else 0
        if low is not None and conv.pool_indices:
            backward += sum(layer.pooled for layer in layers[low:-1])
    return {"weights": weights, "gradients": gradients, "activations": activations + hidden, "backward": backward}


def costs(layers: list[Layer], plan: Plan, conv: Convention = DEFAULT) -> Costs:
    values = memory_values(layers, plan, conv)
    memory = {k: v * conv.bytes_per_value for k, v in values.items()}
    required = Convention(**{**conv.__dict__, "adapter_input_grads": "required"})
    return Costs(
        trainable_params=sum(layers[k].weight_params for k in plan.weights)
        + sum(layers[k].bias_params for k in plan.biases)
        + sum(a.params for a in plan.adapters),
        forward_flops=forward_flops(layers, plan),
        backward_flops=backward_flops(layers, plan, conv),
        backward_flops_required=backward_flops(layers, plan, required),
        memory_bytes=sum(memory.values()),
        memory=memory,
    )


def network(dataset: str) -> LeNet5:
    """The backbone of a dataset (mnist, fmnist, svhn); its weights do not matter here."""
    if dataset not in ARCH_FOR_DATASET:
        raise InstantFTError(f"unknown dataset {dataset!r}; valid: {', '.join(ARCH_FOR_DATASET)}")
    return build_lenet(ARCH_FOR_DATASET[dataset])


def method_plan(model: LeNet5, layers: list[Layer], method: str, rank: int) -> tuple[Method, Plan]:
    """A registered method at a rank and its plan, checked against its own trainable parameter count."""
    m = create(method, model, FineTuneConfig(rank=rank))
    plan = plan_of(m)
    counted = costs(layers, plan).trainable_params
    if counted != m.trainable_parameters():
        raise InstantFTError(f"method {method}: counted {counted} trainable values, it has {m.trainable_parameters()}")
    return m, plan
