"""The Forward Cache kept in a node's Context.state between rounds, with its fingerprint checked."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict

from instantft.fleet.client import restore_cache, save_cache
from instantft.methods import create
from instantft.settings import FineTuneConfig, Runtime


@pytest.mark.parametrize("method", ["instantft", "skip2-lora"])
def test_fleet_cache_round_trips_through_the_context_state(method, mnist_backbone, small_task):
    net = mnist_backbone[0]
    data = small_task.finetune
    first = create(method, net, FineTuneConfig(epochs=1), runtime=Runtime(threads=1))
    first.fit(data)
    state = RecordDict()
    save_cache(state, first.cache)
    again = create(method, net, FineTuneConfig(epochs=1), runtime=Runtime(threads=1))
    cache, why = restore_cache(state, again, again.cache_source(data))
    assert cache is not None, why
    keys = data.indices
    torch.testing.assert_close(cache.get(keys), first.cache.get(keys), rtol=0, atol=0)
    # a fit on the restored cache trains exactly what a fit on a fresh one trains
    again.cache = cache
    again.fit(data)
    fresh = create(method, net, FineTuneConfig(epochs=1), runtime=Runtime(threads=1))
    fresh.fit(data)
    for k, v in fresh.trainable().items():
        torch.testing.assert_close(again.trainable()[k], v)


def test_fleet_cache_of_other_data_is_not_reused(mnist_backbone, small_task):
    net = mnist_backbone[0]
    m = create("instantft", net, FineTuneConfig(epochs=1), runtime=Runtime(threads=1))
    m.fit(small_task.finetune)
    state = RecordDict()
    save_cache(state, m.cache)
    other = small_task.finetune.subset(slice(0, 100))
    cache, why = restore_cache(state, m, m.cache_source(other))
    assert cache is None and why.startswith("stale")
    assert restore_cache(RecordDict(), m, m.cache_source(other)) == (None, "none kept")
