"""Checkpoints: round trip, atomic writes, corrupt files, another architecture; pre-training."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from instantft.errors import InstantFTError
from instantft.models import build, load_checkpoint, read_metadata, save_checkpoint


def test_round_trip_with_metadata(tmp_path: Path):
    model = build("lenet5-svhn")
    path = save_checkpoint(tmp_path / "c.safetensors", model, {"dataset": "svhn", "seed": 3})
    loaded, meta = load_checkpoint(path)
    assert meta["architecture"] == "lenet5-svhn" and meta["seed"] == 3 and "weights_sha256" in meta
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_interrupted_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = save_checkpoint(tmp_path / "c.safetensors", build("lenet5-mnist"), {"seed": 1})
    before = path.read_bytes()

    def boom(state, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, build("lenet5-mnist"), {"seed": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_corrupt_file(tmp_path: Path):
    path = save_checkpoint(tmp_path / "c.safetensors", build("lenet5-mnist"), {})
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InstantFTError, match="do not match their recorded sha256"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(InstantFTError, match="not a valid safetensors file"):
        read_metadata(path)


def test_other_architecture(tmp_path: Path):
    path = save_checkpoint(tmp_path / "c.safetensors", build("lenet5-svhn"), {})
    with pytest.raises(InstantFTError, match="checkpoint is for lenet5-svhn, this task needs lenet5-mnist"):
        load_checkpoint(path, expect_arch="lenet5-mnist")


def test_shortened_pretraining_learns(tmp_path: Path):
    """On the bundled test split (no training split offline): 6000 images to train, 4000 to test."""
    from instantft.data import load_split
    from instantft.pretrain import PretrainConfig, pretrain_to_file
    from instantft.settings import Training

    split = load_split("mnist", "test")
    data = (split.subset(slice(0, 6000)), split.subset(slice(6000, None)))
    config = PretrainConfig(dataset="mnist", samples=6000, training=Training(epochs=1))
    meta = pretrain_to_file(config, tmp_path / "p.safetensors", data=data, show_progress=False)
    assert meta["test_accuracy"] > 0.7  # chance is 0.1
    _model, meta2 = load_checkpoint(tmp_path / "p.safetensors")
    assert meta2["test_accuracy"] == meta["test_accuracy"] and meta2["samples"] == 6000


def test_bundled_checkpoints_reach_their_stated_accuracy():
    """The README states these; the test split is bundled with the package."""
    from instantft.data import load_split
    from instantft.models import accuracy, bundled_checkpoint, predict

    floors = {("lenet5", "mnist"): 0.98, ("lenet5", "fmnist"): 0.87, ("mlp", "mnist"): 0.97,
              ("mlp", "fmnist"): 0.87, ("resnet8", "mnist"): 0.98, ("resnet8", "fmnist"): 0.87}  # fmt: skip
    for (family, dataset), floor in floors.items():
        model, meta = load_checkpoint(bundled_checkpoint(dataset, family))
        assert meta["architecture"].startswith(family)
        test = load_split(dataset, "test")
        acc = accuracy(predict(model, test.images), test.labels)
        assert acc == pytest.approx(meta["test_accuracy"], abs=1e-6)
        assert acc > floor
