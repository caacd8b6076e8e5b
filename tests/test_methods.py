"""The method x network matrix: counts, no-op at init, gradients vs autograd, save/load, and
the Skip-LoRA == Skip2-LoRA equivalence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from instantft.errors import InstantFTError
from instantft.methods import METHODS, DivergedError, FineTuneConfig, create, schedule
from instantft.methods.adapter_io import load_adapter, save_adapter
from instantft.models import build
from instantft.settings import Runtime

ARCHS = ["lenet5-mnist", "lenet5-svhn"]


def expected_trainable(name: str, arch: str, rank: int) -> int:
    """Derived from the layer sizes, never from the paper's table."""
    model = build(arch)
    d_in, d_out = model.layer_input_sizes(), model.layer_output_sizes()
    weights = [layer.weight.numel() for layer in model.layers]
    biases = [layer.bias.numel() for layer in model.layers]
    classes = model.config.num_classes
    return {
        "none": 0,
        "ft-all": sum(weights) + sum(biases),
        "ft-last": weights[-1] + biases[-1],
        "ft-bias": sum(biases),
        "lora-all": sum(rank * (i + o) for i, o in zip(d_in, d_out, strict=True)),
        "lora-last": rank * (d_in[-1] + d_out[-1]),
        "skip-lora": sum(rank * (i + classes) for i in d_in),
        "skip2-lora": sum(rank * (i + classes) for i in d_in),
        "instantft": sum(rank * (i + classes) for i in d_in),
    }[name]


def test_backbone_parameter_counts():
    assert sum(p.numel() for p in build("lenet5-mnist").parameters()) == 61706
    assert sum(p.numel() for p in build("lenet5-svhn").parameters()) == 62006


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rank", [4, 8])
@pytest.mark.parametrize("name", list(METHODS))
def test_trainable_counts(name: str, arch: str, rank: int):
    method = create(name, build(arch), FineTuneConfig(rank=rank))
    assert method.trainable_parameters() == expected_trainable(name, arch, rank)


def random_batch(arch: str, n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = build(arch)
    return torch.rand(n, *model.input_shape, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(METHODS))
def test_adapter_is_noop_at_init(name: str, arch: str):
    torch.manual_seed(0)
    base = build(arch)
    x, _ = random_batch(arch)
    method = create(name, base, FineTuneConfig())
    with torch.no_grad():
        assert torch.allclose(method.logits(x), base(x), atol=1e-5)


def reference_logits(base: torch.nn.Module, x: torch.Tensor, tensors: dict[str, torch.Tensor], name: str, scale: float):
    """An independent functional definition of every method's forward pass."""
    p = dict(base.named_parameters())
    for k, v in tensors.items():
        p[k] = v  # ft-*: the trained weights replace the base ones
    lora = {i: (tensors[f"{n}.A"], tensors[f"{n}.B"]) for i, n in enumerate(["conv1", "conv2", "fc1", "fc2", "fc3"])
            if f"{n}.A" in tensors}

    def layer(i: int, n: str, h: torch.Tensor) -> torch.Tensor:
        w, b = p.get(f"{n}.weight", p.get(f"{n}.layer.weight")), p.get(f"{n}.bias", p.get(f"{n}.layer.bias"))
        pad = base.conv1.padding if i == 0 else 0
        y = F.conv2d(h, w, b, padding=pad) if i < 2 else F.linear(h, w, b)
        if i in lora:
            a, bb = lora[i]
            y = y + scale * (h.flatten(1) @ a.t() @ bb.t()).view_as(y)
        return y

    xs = [x]
    h = F.max_pool2d(F.relu(layer(0, "conv1", x)), 2)
    xs.append(h)
    h = F.max_pool2d(F.relu(layer(1, "conv2", h)), 2).flatten(1)
    xs.append(h)
    h = F.relu(layer(2, "fc1", h))
    xs.append(h)
    h = F.relu(layer(3, "fc2", h))
    xs.append(h)
    y = layer(4, "fc3", h)
    for k in range(1, 6):
        if f"skip{k}.A" in tensors:
            y = y + scale * (xs[k - 1].flatten(1) @ tensors[f"skip{k}.A"].t() @ tensors[f"skip{k}.B"].t())
    return y


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", [n for n in METHODS if n != "none"])
def test_gradients_match_autograd(name: str, arch: str):
    """Each method's gradients (hand-written for the skip family) vs autograd on the functional
    reference above, in float64, with B nonzero so every gradient is exercised."""
    torch.manual_seed(1)
    base = build(arch).double()
    method = create(name, base, FineTuneConfig(scale=0.7))
    if hasattr(method, "model"):
        method.model.double()
    else:
        method.base.double()
        method.adapters.A = [a.double() for a in method.adapters.A]
        method.adapters.B = [torch.randn_like(b, dtype=torch.float64) * 0.1 for b in method.adapters.B]
    with torch.no_grad():
        for k, t in method.trainable().items():
            if k.endswith(".B"):
                t.normal_(0, 0.1)
    x, y = random_batch(arch)
    x = x.double()
    got = method.gradients(x, y)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in method.trainable().items()}
    ref_base = method.base if not hasattr(method, "model") else build(arch).double()
    if hasattr(method, "model"):
        ref_base.load_state_dict({k.replace(".layer.", "."): v for k, v in method.model.state_dict().items()
                                  if not k.endswith((".A", ".B"))})
    loss = F.cross_entropy(reference_logits(ref_base, x, leaves, name, 0.7), y)
    want = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    assert set(got) == set(want)
    for k in want:
        err = (got[k] - want[k]).norm() / want[k].norm().clamp_min(1e-30)
        assert err <= 1e-5, (k, float(err))


def test_skip_lora_and_skip2_lora_train_the_same_adapters(mnist_backbone, small_task):
    model, _ = mnist_backbone
    cfg, reference = FineTuneConfig(epochs=3), Runtime(engine="reference")
    trained = {}
    for name in ("skip-lora", "skip2-lora"):
        m = create(name, model, cfg, runtime=reference)
        m.fit(small_task.finetune)
        trained[name] = m.trainable()
    for k, v in trained["skip-lora"].items():
        assert torch.allclose(v, trained["skip2-lora"][k], rtol=1e-4, atol=1e-6), k
    lazy = create("skip2-lora", model, cfg, runtime=Runtime(engine="reference", cache_fill="lazy"))
    lazy.fit(small_task.finetune)
    for k, v in lazy.trainable().items():
        assert torch.allclose(v, trained["skip2-lora"][k], rtol=1e-4, atol=1e-6), k


def test_instantft_cache_is_over_7x_smaller(mnist_backbone, small_task):
    model, _ = mnist_backbone
    sizes = {n: create(n, model, FineTuneConfig(epochs=1)).fit(small_task.finetune).cache_bytes
             for n in ("skip2-lora", "instantft")}
    assert sizes["skip2-lora"] == len(small_task.finetune) * 1790 * 4
    assert sizes["skip2-lora"] / sizes["instantft"] >= 7.0


@pytest.mark.parametrize("name", ["ft-all", "lora-all", "skip-lora", "instantft"])
def test_every_method_learns(name: str, mnist_backbone, small_task):
    model, _ = mnist_backbone
    m = create(name, model, FineTuneConfig(epochs=3))
    before = F.cross_entropy(m.logits(small_task.finetune.images), small_task.finetune.labels)
    result = m.fit(small_task.finetune)
    after = F.cross_entropy(m.logits(small_task.finetune.images), small_task.finetune.labels)
    assert result.steps == 3 * (160 // 20)
    assert float(after) < 0.7 * float(before)


@pytest.mark.parametrize("name", ["ft-all", "skip2-lora"])
def test_divergence_names_epoch_and_step(name: str, mnist_backbone, small_task):
    model, _ = mnist_backbone
    with pytest.raises(DivergedError, match=r"loss (is (nan|inf)|\S+) at epoch 1, step \d+"):
        create(name, model, FineTuneConfig(lr=1e30)).fit(small_task.finetune)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("rank", 0, "rank must be >= 1"), ("epochs", 0, "epochs must be >= 1"),
     ("batch_size", 0, "batch_size must be >= 1"), ("lr", 0.0, "lr must be > 0"), ("lr", -1.0, "lr must be > 0")],
)
def test_bad_hyperparameters(field: str, value: float, message: str):
    with pytest.raises(InstantFTError, match=message):
        FineTuneConfig(**{field: value})


def test_batch_larger_than_samples(mnist_backbone, small_task):
    model, _ = mnist_backbone
    with pytest.raises(InstantFTError, match="larger than the 160 fine-tuning samples"):
        create("lora-all", model, FineTuneConfig(batch_size=500)).fit(small_task.finetune)


def test_unknown_method_lists_valid_names():
    with pytest.raises(InstantFTError, match="valid: none, ft-all"):
        create("lora-some", build("lenet5-mnist"), FineTuneConfig())


@pytest.mark.parametrize("name", ["ft-bias", "lora-all", "instantft"])
def test_adapter_round_trip_and_refused_for_another_base(name: str, tmp_path: Path, mnist_backbone, small_task):
    model, _ = mnist_backbone
    m = create(name, model, FineTuneConfig(epochs=1))
    m.fit(small_task.finetune)
    path = save_adapter(tmp_path / "a.safetensors", m)
    loaded, record = load_adapter(path, model)
    assert record["method"] == name
    x = small_task.evaluate.images[:50]
    assert torch.allclose(loaded.logits(x), m.logits(x), atol=1e-6)
    other = build("lenet5-mnist")
    with pytest.raises(InstantFTError, match="another base model"):
        load_adapter(path, other)


@pytest.mark.parametrize(("drop_last", "steps", "last"), [(True, 510, 20), (False, 520, 4)])
def test_schedule_drops_or_keeps_the_partial_batch(drop_last: bool, steps: int, last: int):
    """1,024 = 51 × 20 + 4: the default drops the 4-sample step of every epoch."""
    batches = list(schedule(1024, FineTuneConfig(drop_last=drop_last)))
    assert len(batches) == steps
    assert len(batches[-1][2]) == last and batches[-1][:2] == (9, steps // 10 - 1)
    epoch0 = torch.cat([rows for e, _, rows in batches if e == 0])
    assert len(set(epoch0.tolist())) == len(epoch0) == (1020 if drop_last else 1024)
