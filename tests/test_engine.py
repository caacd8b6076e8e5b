"""The C engine trains the same adapters as the reference loop, fills the same cache, and keeps
the reference's contract (cache identity, byte limit, divergence, callbacks). No timing here:
speed is ``instantft bench``'s business."""

from __future__ import annotations

import pytest
import torch

from instantft import engine, nf4
from instantft.backbones import Backbone
from instantft.cache import ForwardCache
from instantft.data import ImageSet
from instantft.engine.chain import cached_chain
from instantft.engine.fill import fill_cache, torch_rows
from instantft.errors import InstantFTError
from instantft.methods import DivergedError, FineTuneConfig, create
from instantft.models import build
from instantft.settings import Runtime

FAST = ["c"] if engine.c_available() else []
needs_c = pytest.mark.skipif(not engine.c_available(), reason="the C core was not built at install (no compiler)")
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


def on(eng: str, **runtime) -> Runtime:
    return Runtime(engine=eng, **runtime)


def fit_pair(name: str, backbone, data: ImageSet, config: FineTuneConfig, eng: str, **runtime):
    ref = create(name, backbone, config, runtime=on("reference", **runtime))
    fast = create(name, backbone, config, runtime=on(eng, **runtime))
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


@needs_c
@pytest.mark.parametrize("storage", ["fp32", "nf4"])
@pytest.mark.parametrize("arch", ["lenet5-mnist", "lenet5-svhn", "resnet8-mnist"])
def test_the_fill_stores_what_put_of_the_trace_stores(storage: str, arch: str):
    """Both forwards of the one fill (the C chain's, LeNet-5; the torch forward, ResNet-8, not a
    chain) store the rows the reference's put of the backbone's trace stores."""
    torch.manual_seed(2)
    model = build(arch).eval()
    bb = Backbone(model)
    assert (cached_chain(bb, bb.fingerprint()) is None) == arch.startswith("resnet")
    images = torch.rand(300, *model.input_shape)  # more than one torch pass
    keys = torch.randperm(1000)[:300]
    ref, got = ForwardCache(bb.cache_sizes, 300, storage), ForwardCache(bb.cache_sizes, 300, storage)
    ref.put(keys, torch_rows(bb, images))
    fill_cache(bb, got, keys, images, bb.fingerprint())
    assert len(got) == len(ref) and got.nbytes == ref.nbytes and torch.equal(got.slots(keys), ref.slots(keys))
    tol = 1e-5 if storage == "fp32" else 0.2  # NF4: a code may flip at a level boundary
    torch.testing.assert_close(got.get(keys), ref.get(keys), rtol=tol, atol=tol * float(ref.get(keys).abs().max()))


def test_fill_in_parts_stores_what_put_stores():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(9, 1790, generator=gen).relu_()
    rows[:, 1780:] = torch.randn(9, 10, generator=gen)  # logits: negative values too
    rows[1, :64] = 0.0  # an all-zero block
    rows[2, 5] = -0.0
    rows[3, 70] = nf4.NF4_THRESHOLDS[10] * rows[3, 64:128].abs().max()  # on a decision boundary
    keys = torch.tensor([7, 3, 100, 0, 5, 9, 11, 2, 50])
    for storage in ("fp32", "nf4"):
        ref, parts = ForwardCache(SIZES, 9, storage), ForwardCache(SIZES, 9, storage)
        ref.put(keys, rows)
        parts.put(keys[:4], rows[:4])

        def write(start: int, parts: ForwardCache = parts) -> None:
            parts.store(rows[4:6], start)
            parts.store(rows[6:], start + 2)

        parts.fill(keys[4:], write)
        assert len(parts) == len(ref) and parts.nbytes == ref.nbytes
        assert torch.equal(parts.slots(keys), ref.slots(keys))
        assert torch.equal(parts.get(keys), ref.get(keys))


def test_fill_byte_limit_and_capacity():
    cache = ForwardCache(SIZES, capacity=3, max_bytes=2 * 7160)
    cache.put(torch.tensor([0, 1]), torch.zeros(2, 1790))
    written = []
    with pytest.raises(InstantFTError, match="byte limit exceeded"):
        cache.fill(torch.tensor([2]), written.append)
    assert len(cache) == 2 and not written  # refused before any work
    with pytest.raises(InstantFTError, match="is full"):
        ForwardCache(SIZES, capacity=1).put(torch.tensor([0, 1]), torch.zeros(2, 1790))


@pytest.mark.parametrize("eng", FAST)
def test_cache_is_bound_reused_and_limited(eng: str, backbone, data: ImageSet):
    config = FineTuneConfig(epochs=1)
    m = create("skip2-lora", backbone, config, runtime=on(eng))
    m.fit(data)
    again = m.fit(data)  # the second fit reuses the filled cache
    assert again.cache_bytes == len(data) * 7160
    with pytest.raises(InstantFTError, match="filled from dataset"):
        m.fit(data.subset(slice(0, 60), "another"))
    with pytest.raises(InstantFTError, match="byte limit"):
        create("skip2-lora", backbone, config, runtime=on(eng, cache_max_bytes=10_000)).fit(data)


def test_a_second_fit_continues_like_the_reference(backbone, data: ImageSet):
    config = FineTuneConfig(epochs=1)
    ref, _, fast, _ = fit_pair("instantft", backbone, data, config, "auto")
    ref.fit(data)
    fast.fit(data)
    assert_same_adapters(ref, fast)


@pytest.mark.parametrize("eng", FAST)
def test_divergence_names_the_same_epoch_and_step(eng: str, backbone, data: ImageSet):
    config = FineTuneConfig(epochs=2, lr=1e25)
    messages = []
    for e in ("reference", eng):
        with pytest.raises(DivergedError) as info:
            create("skip2-lora", backbone, config, runtime=on(e)).fit(data)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "epoch 1, step" in messages[0]


@pytest.mark.parametrize("eng", FAST)
def test_on_step_sees_every_step_in_order(eng: str, backbone, data: ImageSet):
    seen: list[tuple[int, int]] = []
    config = FineTuneConfig(epochs=2)
    create("instantft", backbone, config, runtime=on(eng)).fit(data, on_step=lambda e, s: seen.append((e, s)))
    assert seen == [(e, s) for e in range(2) for s in range(6)]


def test_lazy_fill_and_skip_lora_use_the_reference_loop(backbone, data: ImageSet):
    for name, fill in (("skip2-lora", "lazy"), ("skip-lora", "batched")):
        ref, _, fast, _ = fit_pair(name, backbone, data, FineTuneConfig(epochs=1), "auto", cache_fill=fill)
        assert_same_adapters(ref, fast, rtol=0, atol=0)


def test_engine_choice(monkeypatch: pytest.MonkeyPatch):
    assert engine.ENGINES == ("auto", "c", "reference")
    for gone in ("fast", "numba", "torch"):
        with pytest.raises(InstantFTError, match="engine must be 'auto', 'c' or 'reference'"):
            Runtime(engine=gone)
        with pytest.raises(InstantFTError, match="--engine must be one of auto, c, reference"):
            engine.resolve_engine(gone)
    assert engine.resolve_engine("reference") == "reference"
    assert engine.resolve_engine("auto") == ("c" if engine.c_available() else "reference")
    monkeypatch.setattr(engine, "c_available", lambda: False)
    assert engine.resolve_engine("auto") == "reference"
    with pytest.raises(InstantFTError, match="the C core was not built"):
        engine.resolve_engine("c")


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
    ref = create(name, model, config, taps=["b", "c", "out"], example=(11,), runtime=on("reference"))
    fast = create(name, model, config, taps=["b", "c", "out"], example=(11,), runtime=on(eng))
    assert [t.is_model_input for t in fast.backbone.taps] == [False, False, False]
    r, f = ref.fit(data), fast.fit(data)
    assert_same_adapters(ref, fast)
    assert f.cache_bytes == r.cache_bytes > 0 and f.steps == r.steps == 2 * 12


@pytest.mark.parametrize("eng", [*FAST, "reference"])
@pytest.mark.parametrize(("option", "value"), [("scale", 1e30), ("lr", 1e20)])
def test_an_overflowing_last_update_is_divergence(eng: str, option: str, value: float, backbone, data: ImageSet):
    """40 samples, 1 epoch, the update after the last loss overflows; the
    loss of every step is finite or caught, the adapters after it are not: nothing is kept."""
    config = FineTuneConfig(epochs=1, batch_size=20, **{option: value})
    with pytest.raises(DivergedError, match="diverged"):
        create("instantft", backbone, config, runtime=on(eng)).fit(data.subset(slice(0, 40)))
