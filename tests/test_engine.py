"""The fast engine trains the same adapters as the reference loop, fills the same cache, and keeps
the reference's contract (cache identity, byte limit, divergence, callbacks). No timing here:
speed is ``instantft bench``'s business."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from instantft import engine, nf4
from instantft.backbones import Backbone
from instantft.cache import ForwardCache
from instantft.data import ImageSet
from instantft.engine.fill import compiled_rows_into, torch_rows_into
from instantft.engine.store import FastForwardCache
from instantft.errors import InstantFTError
from instantft.methods import DivergedError, FineTuneConfig, create
from instantft.models import build

FAST = (["c"] if engine.c_available() else []) + (["numba", "torch"] if engine.numba_available() else ["torch"])
SIZES = [1176, 400, 120, 84, 10]


@pytest.fixture(scope="module")
def backbone():
    """A fixed random LeNet-5 (MNIST shape): the engine must match the reference for any weights."""
    torch.manual_seed(0)
    return build("lenet5-mnist").eval()


@pytest.fixture(scope="module")
def data() -> ImageSet:
    """120 MNIST-shaped samples with sparse, image-like pixels (keys not in row order)."""
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(120, 1, 28, 28, generator=gen).sub_(0.6).clamp_(min=0).mul_(2.5)
    labels = torch.randint(0, 10, (120,), generator=gen)
    return ImageSet("engine-test", images, labels, torch.randperm(5000, generator=gen)[:120])


def fit_pair(name: str, backbone, data: ImageSet, config: FineTuneConfig, eng: str):
    ref = create(name, backbone, replace(config, engine="reference"))
    fast = create(name, backbone, replace(config, engine=eng))
    return ref, ref.fit(data), fast, fast.fit(data)


def assert_same_adapters(ref, fast, rtol: float = 1e-4, atol: float = 2e-6) -> None:
    a, b = ref.trainable(), fast.trainable()
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("eng", FAST)
@pytest.mark.parametrize("name", ["skip2-lora", "instantft"])
def test_fast_engine_trains_the_reference_adapters(name: str, eng: str, backbone, data: ImageSet):
    config = FineTuneConfig(epochs=3, batch_size=20, lr=0.1)
    ref, r, fast, f = fit_pair(name, backbone, data, config, eng)
    assert_same_adapters(ref, fast)
    assert f.steps == r.steps == 18
    assert f.cache_bytes == r.cache_bytes > 0
    assert f.epoch_losses == pytest.approx(r.epoch_losses, rel=1e-5)


@pytest.mark.parametrize("eng", FAST)
def test_odd_rank_and_ragged_batches(eng: str, backbone, data: ImageSet):
    """Rank 3 (padded to 4 inside) and batches of 7 with a last batch of 1 (the 1-sample tails)."""
    config = FineTuneConfig(epochs=2, batch_size=7, rank=3, drop_last=False, init="kaiming", scale=2.0, seed=3)
    ref, r, fast, f = fit_pair("instantft", backbone, data, config, eng)
    assert_same_adapters(ref, fast)
    assert f.steps == r.steps == 2 * 18


@pytest.mark.parametrize("arch", ["lenet5-mnist", "lenet5-svhn"])
@pytest.mark.parametrize("use_numba", [True, False] if engine.numba_available() else [False])
def test_fill_equals_trace(use_numba: bool, arch: str):
    torch.manual_seed(2)
    model = build(arch).eval()
    images = torch.rand(300, *model.input_shape)  # more than one chunk
    with torch.no_grad():
        xs, logits = model.trace(images)
    expected = torch.cat([x.flatten(1) for x in xs[1:]] + [logits], 1)
    out = torch.empty_like(expected)
    if use_numba:
        compiled_rows_into(Backbone(model), images, out)
    else:
        torch_rows_into(Backbone(model), images, out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_numba", [True, False] if engine.numba_available() else [False])
def test_fast_cache_stores_what_the_reference_cache_stores(use_numba: bool):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(9, 1790, generator=gen).relu_()
    rows[:, 1780:] = torch.randn(9, 10, generator=gen)  # logits: negative values too
    rows[1, :64] = 0.0  # an all-zero block
    rows[2, 5] = -0.0
    rows[3, 70] = nf4.NF4_THRESHOLDS[10] * rows[3, 64:128].abs().max()  # on a decision boundary
    keys = torch.tensor([7, 3, 100, 0, 5, 9, 11, 2, 50])
    for storage in ("fp32", "nf4"):
        ref = ForwardCache(SIZES, 9, storage)
        fast = FastForwardCache(SIZES, 9, storage, use_numba=use_numba)
        ref.put(keys[:4], rows[:4])
        ref.put(keys[4:], rows[4:])
        fast.put(keys[:4], rows[:4])
        fast.fill(keys[4:], lambda dst, ready: (dst.copy_(rows[4:]), ready(0, 2), ready(2, 5)))
        assert len(fast) == len(ref) and fast.nbytes == ref.nbytes
        assert torch.equal(fast.slots(keys), ref.slots(keys))
        assert torch.equal(fast.get(keys), ref.get(keys))
        if storage == "nf4":
            assert torch.equal(fast.codes, ref.codes) and torch.equal(fast.absmax, ref.absmax)
            if use_numba:  # the decoder fused into the compiled loop is bit-exact too
                from instantft.engine.kernels import decode_rows

                slots = fast.slots(keys)
                out = torch.empty(len(keys), fast.absmax.shape[1] * fast.block_size)
                codes, absmax, levels = fast.codes.numpy(), fast.absmax.numpy(), nf4.NF4_LEVELS.numpy()
                decode_rows(codes, absmax, levels, fast.block_size, slots.numpy(), out.numpy())
                assert torch.equal(out[:, : fast.width], ref.get(keys))


def test_fast_cache_byte_limit_and_capacity():
    cache = FastForwardCache(SIZES, capacity=3, max_bytes=2 * 7160)
    cache.put(torch.tensor([0, 1]), torch.zeros(2, 1790))
    with pytest.raises(InstantFTError, match="byte limit exceeded"):
        cache.fill(torch.tensor([2]), lambda dst, ready: None)
    assert len(cache) == 2
    with pytest.raises(InstantFTError, match="is full"):
        FastForwardCache(SIZES, capacity=1).put(torch.tensor([0, 1]), torch.zeros(2, 1790))


@pytest.mark.parametrize("eng", FAST)
def test_cache_is_bound_reused_and_limited(eng: str, backbone, data: ImageSet):
    config = FineTuneConfig(epochs=1, engine=eng)
    m = create("skip2-lora", backbone, config)
    m.fit(data)
    again = m.fit(data)  # the second fit reuses the filled cache
    assert again.cache_bytes == len(data) * 7160
    with pytest.raises(InstantFTError, match="filled from dataset"):
        m.fit(data.subset(slice(0, 60), "another"))
    with pytest.raises(InstantFTError, match="byte limit"):
        create("skip2-lora", backbone, replace(config, cache_max_bytes=10_000)).fit(data)


def test_a_second_fit_continues_like_the_reference(backbone, data: ImageSet):
    config = FineTuneConfig(epochs=1)
    ref, _, fast, _ = fit_pair("instantft", backbone, data, config, FAST[0])
    ref.fit(data)
    fast.fit(data)
    assert_same_adapters(ref, fast)


@pytest.mark.parametrize("eng", FAST)
def test_divergence_names_the_same_epoch_and_step(eng: str, backbone, data: ImageSet):
    config = FineTuneConfig(epochs=2, lr=1e25)
    messages = []
    for e in ("reference", eng):
        with pytest.raises(DivergedError) as info:
            create("skip2-lora", backbone, replace(config, engine=e)).fit(data)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "epoch 1, step" in messages[0]


@pytest.mark.parametrize("eng", FAST)
def test_on_step_sees_every_step_in_order(eng: str, backbone, data: ImageSet):
    seen: list[tuple[int, int]] = []
    config = FineTuneConfig(epochs=2, engine=eng)
    create("instantft", backbone, config).fit(data, on_step=lambda e, s: seen.append((e, s)))
    assert seen == [(e, s) for e in range(2) for s in range(6)]


def test_lazy_fill_and_skip_lora_use_the_reference_loop(backbone, data: ImageSet):
    for name, config in (
        ("skip2-lora", FineTuneConfig(epochs=1, cache_fill="lazy")),
        ("skip-lora", FineTuneConfig(epochs=1)),
    ):
        ref, _, fast, _ = fit_pair(name, backbone, data, config, "auto")
        assert_same_adapters(ref, fast, rtol=0, atol=0)


def test_engine_choice(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(InstantFTError, match="--engine"):
        create("skip2-lora", build("lenet5-mnist"), FineTuneConfig(engine="fast"))
    assert engine.resolve_engine("reference") == "reference"
    assert engine.resolve_engine("torch") == "torch"
    assert engine.resolve_engine("auto") == (
        "c" if engine.c_available() else "numba" if engine.numba_available() else "torch"
    )
    monkeypatch.setattr(engine, "c_available", lambda: False)
    monkeypatch.setattr(engine, "numba_available", lambda: False)
    assert engine.resolve_engine("auto") == "torch"
    with pytest.raises(InstantFTError, match="numba is not installed"):
        engine.resolve_engine("numba")


class OddTaps(torch.nn.Module):
    """Taps of widths 5, 7 and 13, none of them the model input, and 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(11, 5), torch.nn.Linear(5, 7), torch.nn.Linear(7, 13)
        self.out = torch.nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))))


@pytest.mark.parametrize("eng", FAST)
@pytest.mark.parametrize("name", ["skip2-lora", "instantft"])
def test_any_tap_layout_and_class_count(name: str, eng: str):
    torch.manual_seed(4)
    model = OddTaps()
    gen = torch.Generator().manual_seed(5)
    data = ImageSet("odd", torch.randn(90, 11, generator=gen), torch.randint(0, 3, (90,), generator=gen),
                    torch.arange(90))  # fmt: skip
    config = FineTuneConfig(epochs=2, batch_size=8, drop_last=False, rank=3)
    ref = create(name, model, replace(config, engine="reference"), taps=["b", "c", "out"], example=(11,))
    fast = create(name, model, replace(config, engine=eng), taps=["b", "c", "out"], example=(11,))
    assert [t.is_model_input for t in fast.backbone.taps] == [False, False, False]
    r, f = ref.fit(data), fast.fit(data)
    assert_same_adapters(ref, fast)
    assert f.cache_bytes == r.cache_bytes > 0 and f.steps == r.steps == 2 * 12


@pytest.mark.parametrize("eng", [*FAST, "reference"])
@pytest.mark.parametrize(("option", "value"), [("scale", 1e30), ("lr", 1e20)])
def test_an_overflowing_last_update_is_divergence(eng: str, option: str, value: float, backbone, data: ImageSet):
    """The issue-12 cases: 40 samples, 1 epoch, the update after the last loss overflows; the
    loss of every step is finite or caught, the adapters after it are not: nothing is kept."""
    config = replace(FineTuneConfig(epochs=1, batch_size=20, engine=eng), **{option: value})
    with pytest.raises(DivergedError, match="diverged"):
        create("instantft", backbone, config).fit(data.subset(slice(0, 40)))


@pytest.mark.skipif(not engine.numba_available(), reason="numba is not installed")
def test_a_damaged_numba_cache_is_one_line(monkeypatch: pytest.MonkeyPatch, backbone, data: ImageSet):
    """numba unpickles its on-disk kernel cache on a kernel's first call; a truncated file there
    (what `head -c 100` on a .nbc file gives: UnpicklingError) must not be a traceback."""
    import pickle

    from instantft.engine import kernels

    def damaged(*args, **kwargs):
        raise pickle.UnpicklingError("pickle data was truncated")

    monkeypatch.setattr(kernels, "train_fp32", damaged)
    with pytest.raises(InstantFTError, match=r"compiled-kernel cache failed to load .* delete the kernels") as info:
        create("skip2-lora", backbone, FineTuneConfig(epochs=1, engine="numba")).fit(data)
    assert "\n" not in str(info.value)
