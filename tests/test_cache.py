"""The Forward Cache and NF4: identity checks, limits, storage sizes, quantisation error."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from instantft import nf4
from instantft.cache import CacheSource, ForwardCache
from instantft.errors import InstantFTError
from instantft.methods import FineTuneConfig, create
from instantft.settings import Runtime

SIZES = [1176, 400, 120, 84, 10]


def test_fp32_rows_round_trip_by_key():
    cache = ForwardCache(SIZES, capacity=10)
    rows = torch.randn(3, 1790)
    cache.put(torch.tensor([42, 7, 9000]), rows)
    assert torch.equal(cache.get(torch.tensor([9000, 42])), rows[[2, 0]])
    assert cache.contains(torch.tensor([7, 8])).tolist() == [True, False]
    assert cache.nbytes == 3 * 7160
    with pytest.raises(KeyError):
        cache.get(torch.tensor([8]))


def test_nf4_storage_size_and_error():
    cache = ForwardCache(SIZES, capacity=4, storage="nf4")
    rows = torch.relu(torch.randn(4, 1790))
    cache.put(torch.arange(4), rows)
    assert cache.nbytes == 4 * (28 * 32 + 28 * 4)  # 28 blocks of 64: packed codes + fp32 absmax
    back = cache.get(torch.arange(4))
    assert back.shape == rows.shape
    # the largest NF4 gap is 1 - 0.723 = 0.277 of the block's absmax: error <= half of it
    block_max = torch.nn.functional.pad(rows, (0, 2)).view(4, 28, 64).abs().amax(-1).repeat_interleave(64, 1)[:, :1790]
    assert bool(((back - rows).abs() <= 0.139 * block_max + 1e-6).all())


def test_cache_refuses_another_model_or_dataset():
    cache = ForwardCache(SIZES, capacity=4)
    cache.bind(CacheSource("model-a", "data-a"))
    cache.bind(CacheSource("model-a", "data-a"))
    with pytest.raises(InstantFTError, match="another base model"):
        cache.bind(CacheSource("model-b", "data-a"))
    with pytest.raises(InstantFTError, match="filled from dataset data-a"):
        cache.bind(CacheSource("model-a", "data-b"))


def test_byte_limit_fails_loudly_and_keeps_entries():
    cache = ForwardCache(SIZES, capacity=10, max_bytes=2 * 7160)
    cache.put(torch.tensor([0, 1]), torch.zeros(2, 1790))
    with pytest.raises(InstantFTError, match="byte limit exceeded"):
        cache.put(torch.tensor([2]), torch.zeros(1, 1790))
    assert len(cache) == 2


def test_method_cache_is_bound_to_its_data(mnist_backbone, small_task):
    model, _ = mnist_backbone
    m = create("skip2-lora", model, FineTuneConfig(epochs=1))
    m.fit(small_task.finetune)
    other = small_task.evaluate.subset(slice(0, 160))
    with pytest.raises(InstantFTError, match="filled from dataset"):
        m.fit(other)


def test_method_byte_limit(mnist_backbone, small_task):
    model, _ = mnist_backbone
    with pytest.raises(InstantFTError, match="byte limit"):
        limited = Runtime(cache_max_bytes=10_000)
        create("skip2-lora", model, FineTuneConfig(epochs=1), runtime=limited).fit(small_task.finetune)


def test_nf4_codebook_is_qlora():
    assert len(nf4.NF4_LEVELS) == 16 and float(nf4.NF4_LEVELS[7]) == 0.0
    assert float(nf4.NF4_LEVELS[0]) == -1.0 and float(nf4.NF4_LEVELS[-1]) == 1.0
    assert torch.all(nf4.NF4_LEVELS[1:] > nf4.NF4_LEVELS[:-1])


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 1000))
def test_nf4_round_trip_picks_nearest_level(n: int, seed: int):
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(seed))
    q = nf4.quantize(x)
    assert q.codes.shape == (2, nf4.blocks_for(n) * 32) and q.nbytes == 2 * nf4.nbytes_per_row(n)
    back = nf4.dequantize(q)
    padded = torch.nn.functional.pad(x, (0, nf4.blocks_for(n) * 64 - n)).view(2, -1, 64)
    absmax = padded.abs().amax(-1, keepdim=True)
    levels = nf4.NF4_LEVELS.view(1, 1, 1, 16) * absmax.unsqueeze(-1)
    nearest = (padded.unsqueeze(-1) - levels).abs().min(-1).values.view(2, -1)[:, :n]
    assert torch.allclose((back - x).abs(), nearest, atol=1e-5)
    assert torch.allclose(back.abs().amax(1), x.abs().amax(1))  # the absmax itself is exact
