"""Fingerprints are hashed once per process and still see every in-place change."""

from __future__ import annotations

import torch

from instantft import digest
from instantft.data import ImageSet
from instantft.models import build, model_fingerprint


def _set(n: int = 50) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    return ImageSet("s", torch.rand(n, 1, 8, 8, generator=gen), torch.arange(n) % 3, torch.arange(n))


def test_a_fingerprint_is_computed_once_while_nothing_changes(monkeypatch):
    data, calls = _set(), []
    real = digest.cached_digest

    def counting(tag, tensors, compute):
        return real(tag, tensors, lambda: calls.append(tag) or compute())

    monkeypatch.setattr("instantft.data.datasets.cached_digest", counting)
    first = data.fingerprint
    assert data.fingerprint == first and data.fingerprint == first
    assert calls == ["imageset"]


def test_in_place_changes_give_a_new_fingerprint():
    data = _set()
    before = data.fingerprint
    data.images[7, 0, 2, 2] += 0.25  # a torch write: the version counter moves
    assert data.fingerprint != before
    data = _set()
    before = data.fingerprint
    data.labels.numpy()[0] = 2  # a write through numpy at a probed position (the first)
    assert data.fingerprint != before


def test_weights_fingerprint_follows_the_weights():
    model = build("lenet5-mnist")
    a = model_fingerprint(model)
    assert model_fingerprint(model) == a
    with torch.no_grad():
        model.fc3.bias.add_(1.0)
    assert model_fingerprint(model) != a


def test_entries_die_with_their_tensors():
    data = _set()
    _ = data.fingerprint
    held = len(digest._entries)
    del data
    import gc

    gc.collect()
    assert len(digest._entries) < held
