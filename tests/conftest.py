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

# CI runs the property tests on a fixed sequence of examples (a red CI is then reproducible);
# locally each run draws new ones and keeps finding what the fixed sequence does not.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


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


def write_svhn_mat(path: Path, n: int, seed: int = 0, drop: tuple[str, ...] = ()) -> Path:
    """A .mat file in SVHN's real layout: X uint8 (32, 32, 3, N), y (N, 1) in 1..10."""
    import numpy as np
    import scipy.io

    rng = np.random.default_rng(seed)
    data = {
        "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
        "y": rng.integers(1, 11, (n, 1)).astype(np.uint8),
    }
    scipy.io.savemat(path, {k: v for k, v in data.items() if k not in drop})
    return path


@pytest.fixture
def svhn_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory with small SVHN files (train 50, test 30, extra 120) whose checksums the
    registry is pointed at, so the real locate-and-verify path runs on them."""
    import hashlib

    from instantft.data import files

    d = tmp_path / "svhn"
    d.mkdir()
    for name, n in (("train_32x32.mat", 50), ("test_32x32.mat", 30), ("extra_32x32.mat", 120)):
        p = write_svhn_mat(d / name, n, seed=n)
        spec = files.REGISTRY["svhn"][name]
        digest = hashlib.md5(p.read_bytes()).hexdigest()
        monkeypatch.setitem(files.REGISTRY["svhn"], name, files.DataFile(spec.relpath, f"md5:{digest}", spec.urls))
    return tmp_path
