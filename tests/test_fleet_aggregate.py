"""Aggregating low-rank adapters (no Flower needed) and the train_a setting the b-only fleet uses."""

from __future__ import annotations

import pytest
import torch

from instantft.fleet.aggregate import Update, aggregate, product_error, screen
from instantft.methods import create
from instantft.settings import FineTuneConfig, Runtime


def _updates(k: int = 4, r: int = 3, c: int = 5, d: int = 12, shared_a: bool = False, seed: int = 0) -> list[Update]:
    g = torch.Generator().manual_seed(seed)
    a0 = torch.randn(r, d, generator=g)
    out = []
    for i in range(k):
        a = a0 if shared_a else torch.randn(r, d, generator=g)
        arrays = (
            {"skip1.B": torch.randn(c, r, generator=g)}
            if shared_a
            else {"skip1.A": a, "skip1.B": torch.randn(c, r, generator=g)}
        )
        out.append(Update(f"device {i}", arrays, samples=10 * (i + 1)))
    return out


def test_fleet_fedavg_of_factors_is_not_the_mean_of_products():
    ups = _updates()
    assert product_error(ups, aggregate(ups, "fedavg")) > 0.3


def test_fleet_svd_is_the_best_rank_r_mean_of_products():
    ups = _updates()
    svd = product_error(ups, aggregate(ups, "svd"))
    assert svd < product_error(ups, aggregate(ups, "fedavg"))
    # exact when the mean of the products has rank <= r: every device shares the same A
    same_a = [Update(u.client, {"skip1.A": ups[0].arrays["skip1.A"], "skip1.B": u.arrays["skip1.B"]}, u.samples)
              for u in ups]  # fmt: skip
    assert product_error(same_a, aggregate(same_a, "svd")) < 1e-5


def test_fleet_b_only_is_exact_and_weighted_by_samples():
    ups = _updates(shared_a=True)
    a = {"skip1.A": torch.randn(3, 12, generator=torch.Generator().manual_seed(0))}
    merged = aggregate(ups, "b-only")
    assert product_error(ups, merged, shared_a=a) < 1e-6
    total = sum(u.samples for u in ups)
    want = sum(u.samples / total * u.arrays["skip1.B"] for u in ups)
    torch.testing.assert_close(merged["skip1.B"], want)


def test_fleet_screen_refuses_non_finite_and_clips_an_outlier():
    base = {"skip1.A": torch.zeros(3, 12), "skip1.B": torch.zeros(5, 3)}
    ups = _updates()
    ups[1].arrays["skip1.B"][0, 0] = float("nan")
    ups[2].arrays["skip1.A"][0, 0] = float("inf")
    ups[3] = Update("device 3", {k: v * 1e6 for k, v in ups[3].arrays.items()}, 40)
    ups.append(Update("device 4", {k: v.clone() for k, v in ups[0].arrays.items()}, 10))
    out = screen(ups, base, clip=5.0)
    assert set(out.refused) == {"device 1", "device 2"}
    assert set(out.clipped) == {"device 3"} and out.clipped["device 3"] < 1e-4
    merged = aggregate(out.kept, "fedavg")
    assert all(bool(torch.isfinite(t).all()) for t in merged.values())
    assert max(float(t.abs().max()) for t in merged.values()) < 100


@pytest.mark.parametrize("method", ["instantft", "skip-lora", "lora-all"])
def test_fleet_train_a_off_trains_only_b(method, mnist_backbone, small_task):
    net = mnist_backbone[0]
    config = FineTuneConfig(epochs=1, train_a=False)
    m = create(method, net, config, runtime=Runtime(threads=1))
    assert all(name.endswith(".B") for name in m.trainable())
    a_before = {n: p.detach().clone() for n, p in _a_tensors(m).items()}
    m.fit(small_task.finetune)
    for n, a in _a_tensors(m).items():
        torch.testing.assert_close(a, a_before[n], rtol=0, atol=0)
    assert any(float(t.detach().abs().sum()) > 0 for t in m.trainable().values())  # B moved


def _a_tensors(m) -> dict[str, torch.Tensor]:
    if hasattr(m, "adapters"):
        return {f"skip{k}.A": a for k, a in enumerate(m.adapters.A, 1)}
    return {n: p for n, p in m.model.named_parameters() if n.endswith(".A")}


def test_fleet_train_a_off_is_the_same_on_every_engine(mnist_backbone, small_task):
    """The C core always trains A: with train_a off the fit falls back to the reference loop,
    so engine="auto" and engine="reference" train the same B."""
    net = mnist_backbone[0]
    config = FineTuneConfig(epochs=2, train_a=False)
    got = {}
    for engine in ("auto", "reference"):
        m = create("instantft", net, config, runtime=Runtime(threads=1, engine=engine))
        m.fit(small_task.finetune)
        got[engine] = m.trainable()
    for k in got["reference"]:
        torch.testing.assert_close(got["auto"][k], got["reference"][k])
