"""The backbone seam: taps found by one traced forward on any module, matched PEFT-style, read
by hooks; the fingerprint follows the weights; bad models and bad tap names are one line."""

from __future__ import annotations

import doctest
from collections import OrderedDict

import pytest
import torch
from torch import nn

import instantft
from instantft.backbones import Backbone, create_backbone, list_backbones
from instantft.errors import InstantFTError
from instantft.models import build


def test_auto_taps_of_lenet5_are_the_papers_x0_to_x4():
    bb = Backbone(build("lenet5-mnist"))
    assert [t.name for t in bb.taps] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert bb.sizes == [784, 1176, 400, 120, 84]
    assert [t.is_model_input for t in bb.taps] == [True, False, False, False, False]
    assert bb.cache_sizes == [1176, 400, 120, 84, 10] and bb.num_classes == 10
    model = build("lenet5-mnist")
    x = torch.rand(5, 1, 28, 28)
    xs, logits = Backbone(model).trace(x)
    ref_xs, ref_logits = model.trace(x)
    for a, b in zip(xs, ref_xs, strict=True):
        assert torch.equal(a, b.flatten(1))
    assert torch.equal(logits, ref_logits)


def test_explicit_taps_exact_suffix_regex_and_output():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    bb = Backbone(model, taps=["5", "re:[13]", "3:output"], example=(1, 28, 28))
    assert [t.label for t in bb.taps] == ["1", "3", "3:output", "5"]  # forward order, not pattern order
    assert bb.sizes == [784, 32, 16, 16]
    lenet = Backbone(build("lenet5-mnist"), taps=["fc1", "conv2:output"])
    assert [t.label for t in lenet.taps] == ["conv2:output", "fc1"] and lenet.sizes == [1600, 400]
    block = nn.Sequential(OrderedDict(fc=nn.Linear(784, 8), act=nn.ReLU()))
    nested = nn.Sequential(OrderedDict(flat=nn.Flatten(), block=block, out=nn.Linear(8, 2)))
    assert [t.name for t in Backbone(nested, taps="fc", example=(1, 28, 28)).taps] == ["block.fc"]  # suffix match


def test_a_model_input_tap_is_read_from_the_data():
    mlp = Backbone(build("mlp-mnist"))
    assert mlp.taps[0].is_model_input and mlp.cache_sizes == [128, 64, 10]


def test_in_place_ops_after_a_tap_do_not_corrupt_it():
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            out = self.b(h)
            h.mul_(0)  # changes the tensor tapped as b's input after b has read it
            return out

    torch.manual_seed(0)
    model = InPlace()
    x = torch.randn(3, 4)
    xs, _ = Backbone(model, example=(4,)).trace(x)
    torch.testing.assert_close(xs[1], model.a(x).detach())


def test_fingerprint_follows_weights_buffers_and_taps():
    bb = Backbone(build("resnet8-mnist"))
    first = bb.fingerprint()
    assert bb.fingerprint() == first
    bb.model.bn.running_mean.add_(1.0)
    second = bb.fingerprint()
    assert second != first
    bb.model.fc.weight.data.add_(1.0)
    assert bb.fingerprint() != second
    assert Backbone(build("lenet5-mnist"), taps="fc1").fingerprint() != Backbone(build("lenet5-mnist")).fingerprint()


def test_registry_covers_every_architecture():
    assert {"lenet5-mnist", "lenet5-svhn", "mlp-mnist", "resnet8-mnist"} <= set(list_backbones())
    for name in list_backbones():
        bb = create_backbone(name)
        classes = {"mlp-fan": 3, "mlp-fan-speed": 4}.get(name, 10)  # fan types / fan speeds
        assert bb.num_classes == classes and len(bb.taps) >= 3
    with pytest.raises(InstantFTError, match="unknown backbone"):
        create_backbone("vgg")


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (nn.Linear(784, 10), {"taps": "nope", "example": (784,)}, "tap 'nope' matches no module"),
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), {"example": (3, 32, 32)}, "rejects inputs of shape"),
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), {}, "pass example="),
        (nn.Sequential(nn.Linear(4, 4)), {"taps": [], "example": (4,)}, "at least one module"),
        ("not a model", {}, "must be a torch.nn.Module"),
    ],
)
def test_bad_models_and_taps_are_one_line(model, kwargs, message):
    with pytest.raises(InstantFTError, match=message) as info:
        Backbone(model, **kwargs)
    assert "\n" not in str(info.value)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f, self.g = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(self.f(self.f(x)))


def test_a_module_run_twice_is_not_tapped_but_the_model_still_fine_tunes():
    from instantft.methods import FineTuneConfig, create

    bb = Backbone(Twice(), example=(4,))
    assert [t.name for t in bb.taps] == ["g"] and bb.skipped == ["f"]
    with pytest.raises(InstantFTError, match="runs 2 times"):
        Backbone(Twice(), taps="f", example=(4,))
    assert set(create("ft-all", Twice(), FineTuneConfig(), example=(4,)).trainable()) >= {"f.weight", "g.weight"}
    with pytest.raises(InstantFTError, match=r"skip2-lora: .* has no Conv2d or Linear module to tap"):
        create("skip2-lora", nn.Sequential(nn.Flatten(), nn.ReLU()), FineTuneConfig(), example=(784,))


def test_modules_called_with_keyword_arguments_are_seen():
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(6, 5), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(input=torch.relu(self.body(x)))

    from instantft.methods import FineTuneConfig, create

    model = Keywords()
    bb = Backbone(model, example=(6,))
    assert [t.name for t in bb.taps] == ["body", "head"]
    x = torch.randn(3, 6)
    torch.testing.assert_close(bb.trace(x)[0][1], torch.relu(model.body(x)).detach())
    assert set(create("ft-last", model, FineTuneConfig(), example=(6,)).trainable()) == {"head.weight", "head.bias"}


def test_a_non_contiguous_example_gives_the_same_layout():
    lenet = build("lenet5-mnist")
    wide = torch.rand(2, 1, 28, 56)[..., ::2]
    assert [t.is_model_input for t in Backbone(lenet, example=wide).taps] == [True, False, False, False, False]


def test_reload_matches_recorded_taps_exactly_and_a_backbone_takes_them(tmp_path):
    nested = nn.Sequential(nn.Sequential(nn.Linear(6, 6), nn.ReLU()), nn.Linear(6, 3))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    ft = instantft.FineTuner(nested, method="skip2-lora", taps=["0.0", "1"], epochs=1, example=(6,))
    ft.fit((x, y))
    path = ft.save(tmp_path / "a.safetensors")
    again = instantft.FineTuner.load(path, nested)  # "1" must not match "0.1" as a suffix
    assert torch.equal(again.predict(x), ft.predict(x))
    other_taps = Backbone(nested, taps=["1:output"], example=(6,))
    from_backbone = instantft.FineTuner.load(path, other_taps)  # the record's taps, not the backbone's
    assert torch.equal(from_backbone.predict(x), ft.predict(x))


def test_a_fine_tuner_fits_new_data_with_a_fresh_cache():
    model = build("lenet5-mnist")
    ft = instantft.FineTuner(model, method="instantft", epochs=1)
    a = (torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,)))
    b = (torch.rand(60, 1, 28, 28), torch.randint(0, 10, (60,)))
    ft.fit(a)
    result = ft.fit(b)  # new data: not refused, not served stale rows
    assert result.cache_bytes == 60 * ft.method.cache.row_bytes  # type: ignore[union-attr]


def test_logits_not_a_batch_of_vectors_is_refused():
    with pytest.raises(InstantFTError, match=r"\(batch, classes\) logits"):
        Backbone(nn.Sequential(nn.Conv2d(1, 2, 3)), example=(1, 8, 8))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ((torch.rand(10, 1, 28, 28), torch.zeros(9, dtype=torch.long)), "x has 10 samples but y has 9"),
        ((torch.rand(10, 1, 28, 28), torch.rand(10)), "integer class labels"),
        ((torch.full((4, 1, 28, 28), float("nan")), torch.zeros(4, dtype=torch.long)), "NaN or infinite"),
        ((torch.rand(40, 1, 28, 28), torch.full((40,), 10)), r"labels must be in 0\.\.9"),
        ((torch.rand(40, 3, 32, 32), torch.zeros(40, dtype=torch.long)), "per sample"),
        ("nonsense", "data must be"),
    ],
)
def test_bad_user_data_is_one_line(data, message):
    ft = instantft.FineTuner(build("lenet5-mnist"), method="skip2-lora", epochs=1)
    with pytest.raises(InstantFTError, match=message):
        ft.fit(data)


def test_unknown_method_and_option():
    with pytest.raises(InstantFTError, match="unknown method"):
        instantft.FineTuner(nn.Linear(2, 2), method="magic")
    with pytest.raises(InstantFTError, match="unknown option"):
        instantft.FineTuner(nn.Linear(2, 2), method="instantft", learning_rate=0.1)


def test_fit_accepts_a_torch_dataset():
    x, y = torch.rand(60, 1, 28, 28), torch.randint(0, 10, (60,))
    ds = torch.utils.data.TensorDataset(x, y)
    model = build("lenet5-mnist")
    a = instantft.FineTuner(model, method="skip2-lora", epochs=1)
    b = instantft.FineTuner(model, method="skip2-lora", epochs=1)
    a.fit(ds)
    b.fit((x, y))
    assert torch.equal(a.predict(x), b.predict(x))


@pytest.mark.parametrize("module", ["instantft.api", "instantft.backbones.base"])
def test_docstring_examples_run(module: str):
    import importlib

    failed, attempted = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's "Any model, any data" snippet, as a reader would paste it."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = text.split("## Any model, any data", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "adapter.safetensors").is_file()
