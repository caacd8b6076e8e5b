"""Every method × every kind of backbone, in the manner of PEFT's tests/test_custom_models.py:
the paper's LeNet-5, the in-tree MLP and ResNet-8 (BatchNorm, residual blocks), and a model
defined only here. Each case checks that the adapters start as a no-op, that a short fit lowers
the loss, that the base model (weights *and* buffers) is untouched, that save/load gives the
same predictions, and that the cache paths train what the no-cache path trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instantft import FineTuner
from instantft.data import load_split
from instantft.errors import InstantFTError
from instantft.methods import FineTuneConfig, create, method_names
from instantft.models import build
from instantft.settings import Runtime


class TinyBNNet(nn.Module):
    """A model instantft has never seen: conv-BN-ReLU, a residual add, dropout, a classifier head
    in a ``ModuleDict``, and an in-place ReLU right after a tapped module."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.ModuleDict({"hidden": nn.Linear(4 * 7 * 7, 16), "out": nn.Linear(16, 10)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = F.max_pool2d(h + self.mix(h), 4)
        h = F.relu(self.head["hidden"](self.drop(h.flatten(1))))
        return self.head["out"](h)


def tiny_mlp() -> nn.Module:
    """An MLP written here, not in instantft: three Linear layers in a plain ``nn.Sequential``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 10))


def make(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = {"tiny-bn": TinyBNNet, "tiny-mlp": tiny_mlp}.get(arch, lambda: build(arch))()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


ARCHS = ["lenet5-mnist", "mlp-mnist", "resnet8-mnist", "tiny-bn", "tiny-mlp"]
METHODS = [m for m in method_names() if m != "none"]


@pytest.fixture(scope="module")
def data():
    """120 real MNIST test images (the bundled split), rotated-free: enough to lower a loss."""
    test = load_split("mnist", "test")
    return test.images[:120], test.labels[:120]


def config(**kw) -> dict:
    return {"epochs": 2, "batch_size": 20, "lr": 0.05, **kw}


def loss_of(ft: FineTuner, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(ft.predict(x), y))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_method_on_backbone(method: str, arch: str, data, tmp_path: Path):
    x, y = data
    model = make(arch)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base_logits = model(x)
    ft = FineTuner(model, method=method, example=x[:2], **config())
    torch.testing.assert_close(ft.predict(x), base_logits, rtol=0, atol=1e-5)  # init is a no-op
    frozen_buffers = {k: v.clone() for k, v in ft.method.base.named_buffers()}  # type: ignore[union-attr]

    loss0 = loss_of(ft, x, y)
    result = ft.fit((x, y))
    assert result.steps == 2 * (120 // 20) and len(result.epoch_losses) == 2
    assert result.trainable_params == ft.trainable_params > 0
    assert loss_of(ft, x, y) < loss0  # a short fit lowers the loss

    after = model.state_dict()  # the caller's model: bit-identical, buffers included
    assert set(after) == set(before_state)
    for k, v in before_state.items():
        assert torch.equal(after[k], v), k
    for k, v in ft.method.base.named_buffers():  # type: ignore[union-attr]
        assert torch.equal(v, frozen_buffers[k]), f"{k} moved during fit (BatchNorm must stay in eval mode)"
    trained = {id(t) for t in ft.method.trainable().values()}  # type: ignore[union-attr]
    frozen = {k.replace(".layer.", "."): p for k, p in ft.method.base.named_parameters()  # type: ignore[union-attr]
              if id(p) not in trained}  # fmt: skip
    assert frozen or method == "ft-all"
    for k, p in frozen.items():  # every parameter the method does not train is where it started
        assert torch.equal(p, before_state[k]), k

    path = ft.save(tmp_path / "adapter.safetensors")
    again = FineTuner.load(path, model)
    assert torch.equal(again.predict(x), ft.predict(x))
    other = make(arch)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    with pytest.raises(InstantFTError, match="another base model"):
        FineTuner.load(path, other)


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_paths_train_the_no_cache_adapters(arch: str, data):
    """skip2-lora (fp32 cache, fast engine) == skip-lora (base forward every step); instantft's
    fast engine == its reference loop (the NF4 cache changes the values, not the path)."""
    x, y = data
    model = make(arch)
    cfg = FineTuneConfig(**config())
    runs = {}
    for name, engine in (("skip-lora", "reference"), ("skip2-lora", "auto"), ("instantft", "reference"),
                         ("instantft", "auto")):  # fmt: skip
        m = create(name, model, cfg, example=x[:2], runtime=Runtime(engine=engine))
        from instantft.api import as_imageset

        m.fit(as_imageset((x, y)))
        runs[name, engine] = m.trainable()
    for a, b in ((("skip-lora", "reference"), ("skip2-lora", "auto")),
                 (("instantft", "reference"), ("instantft", "auto"))):  # fmt: skip
        for k in runs[a]:
            torch.testing.assert_close(runs[b][k], runs[a][k], rtol=1e-4, atol=2e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_skip_adapters_see_every_tap_of_the_resnet():
    from instantft.backbones import Backbone

    bb = Backbone(make("resnet8-mnist"))
    names = [t.name for t in bb.taps]
    assert names[0] == "stem" and names[-1] == "fc" and bb.taps[0].is_model_input
    assert not any("shortcut" in n for n in names)  # reads the same tensor as the block's conv1
    assert len(bb.layers) == len(names) + 2  # ... but both shortcuts are layers LoRA could adapt
    m = create("instantft", bb, FineTuneConfig())
    assert m.trainable_parameters() == sum(4 * (t.size + 10) for t in bb.taps)


def test_methods_that_cannot_apply_fail_before_training():
    convs_only = nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten())  # no Linear, no bias-free check
    with pytest.raises(InstantFTError, match=r"ft-last: .* has no Linear"):
        create("ft-last", convs_only, FineTuneConfig(), example=(1, 28, 28))
    with pytest.raises(InstantFTError, match=r"lora-last: .* has no tapped"):
        create("lora-last", convs_only, FineTuneConfig(), example=(1, 28, 28))
    no_bias = nn.Sequential(nn.Flatten(), nn.Linear(784, 10, bias=False))
    with pytest.raises(InstantFTError, match=r"ft-bias: .* has no bias"):
        create("ft-bias", no_bias, FineTuneConfig(), example=(1, 28, 28))
    with pytest.raises(InstantFTError, match="ft-last: no Conv2d or Linear module named 'nope'"):
        create("ft-last", build("lenet5-mnist"), FineTuneConfig(last_layer="nope"))


def test_ft_last_and_lora_last_take_a_named_module():
    model = build("lenet5-mnist")
    ft = create("ft-last", model, FineTuneConfig(last_layer="fc2"))
    assert set(ft.trainable()) == {"fc2.weight", "fc2.bias"}
    lora = create("lora-last", model, FineTuneConfig(last_layer="conv2"))
    assert set(lora.trainable()) == {"conv2.A", "conv2.B"}


def test_an_exploding_loss_is_divergence_and_keeps_the_previous_adapters(data):
    """A loss that climbs past 1e4 × the first step's (not only NaN/inf) is divergence; the
    FineTuner then restores what it had before the failed fit."""
    from instantft.methods import DivergedError

    x, y = data
    for method in ("ft-all", "skip-lora", "skip2-lora", "instantft"):
        ft = FineTuner(make("mlp-mnist"), method=method, epochs=3, lr=1e6)
        snapshot = {k: v.clone() for k, v in ft._method(x).trainable().items()}
        with pytest.raises(DivergedError, match="diverged"):
            ft.fit((x, y))
        for k, v in ft._method().trainable().items():
            assert torch.equal(v, snapshot[k]), (method, k)
