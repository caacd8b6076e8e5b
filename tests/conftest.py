"""Shared fixtures. Tests read the real MNIST / Fashion-MNIST files through INSTANTFT_DATA
(default: ../shared/data beside the checkout) and never download (INSTANTFT_OFFLINE=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("INSTANTFT_DATA", str(ROOT.parent / "shared" / "data"))
os.environ["INSTANTFT_OFFLINE"] = "1"
torch.set_num_threads(1)  # tiny matmuls: a second thread only adds contention


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user cache directory out of tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(scope="session")
def mnist_backbone():
    """The bundled MNIST backbone and its metadata."""
    from instantft.run import load_backbone

    return load_backbone("rotmnist")


@pytest.fixture(scope="session")
def small_task():
    """A small RotMNIST 45° task: 160 fine-tuning samples, 500 evaluation samples."""
    from instantft.data import make_task

    return make_task("rotmnist", angle=45, samples=160, seed=0, eval_samples=500)
