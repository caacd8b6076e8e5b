"""Datasets as tensors, and the paper's drift tasks (§5.1).

Every sample carries its integer index in its source dataset: the Forward Cache is keyed by it.
Pixels are scaled to [0, 1] and not otherwise normalised (no mean/std shift), as in the paper's
C code, so that rotation's zero fill is the background colour.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from instantft.data import files
from instantft.data.readers import read_idx_pair, read_svhn_mat
from instantft.digest import cached_digest
from instantft.errors import InstantFTError
from instantft.settings import TASK_SAMPLES

BASE_DATASETS = ("mnist", "fmnist", "svhn")
DRIFT_DATASETS = ("rotmnist", "rotfmnist", "svhn")
Split = Literal["train", "test", "extra"]


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) float32 in [0, 1], labels (N,) int64, and each sample's source index."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.labels) != n or len(self.indices) != n:
            raise ValueError(f"{self.name}: images, labels and indices differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def fingerprint(self) -> str:
        """A short hash of the content: what the Forward Cache checks its entries against. Hashed
        once while the tensors are unchanged (:mod:`instantft.digest`), so images or labels changed
        in place are seen and never served stale activations."""
        tensors = (self.images, self.labels, self.indices)

        def compute() -> str:
            h = hashlib.sha256()
            for t in tensors:
                h.update(t.contiguous().numpy().tobytes())
            return h.hexdigest()[:16]

        return cached_digest("imageset", tensors, compute)

    def subset(self, rows: torch.Tensor | slice, name: str | None = None) -> ImageSet:
        return ImageSet(name or self.name, self.images[rows], self.labels[rows], self.indices[rows])


def _to_imageset(name: str, images: np.ndarray, labels: np.ndarray) -> ImageSet:
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return ImageSet(name, x, torch.from_numpy(np.array(labels, dtype=np.int64)), torch.arange(len(labels)))


_IDX_NAMES = {"train": "train", "test": "t10k"}


def load_split(dataset: str, split: Split, data_dir: str | os.PathLike[str] | None = None) -> ImageSet:
    """Load one split of ``mnist``, ``fmnist`` (train/test) or ``svhn`` (train/test/extra)."""
    if dataset in ("mnist", "fmnist"):
        if split not in _IDX_NAMES:
            raise InstantFTError(f"{dataset} has splits train and test, not {split!r}")
        stem = _IDX_NAMES[split]
        names = [f"{stem}-images-idx3-ubyte.gz", f"{stem}-labels-idx1-ubyte.gz"]
        paths = files.locate(dataset, names, data_dir)
        images, labels = read_idx_pair(paths[names[0]], paths[names[1]])
    elif dataset == "svhn":
        name = f"{split}_32x32.mat"
        if name not in files.REGISTRY["svhn"]:
            raise InstantFTError(f"svhn has splits train, test and extra, not {split!r}")
        images, labels = read_svhn_mat(files.locate("svhn", [name], data_dir)[name])
    else:
        raise InstantFTError(f"unknown dataset {dataset!r}; valid: {', '.join(BASE_DATASETS)}")
    return _to_imageset(f"{dataset}-{split}", images, labels)


def rotate(images: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate (N, C, H, W) images counter-clockwise by ``angle_deg`` about the centre
    (bilinear interpolation, zero fill)."""
    if angle_deg % 360 == 0:
        return images.clone()
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    # grid_sample maps output coords to input coords; y points down, so this is CCW on screen.
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=images.dtype).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class DriftTask:
    """A fine-tuning set and an evaluation set drawn from drifted data, and the base dataset
    the backbone was pre-trained on."""

    dataset: str
    base_dataset: str
    angle: float
    finetune: ImageSet
    evaluate: ImageSet


def make_task(
    dataset: str,
    *,
    angle: float | None = None,
    samples: int | None = TASK_SAMPLES,
    seed: int = 0,
    eval_samples: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> DriftTask:
    """The paper's protocol (§5.1).

    ``fan``, ``fan-*``: the cooling-fan tasks of :mod:`instantft.data.fan` (``samples`` None:
    all of the target's take 1).
    ``rotmnist``/``rotfmnist``: ``samples`` test images drawn at random (``seed``) form the
    fine-tuning set, the rest of the test split the evaluation set; both rotated by ``angle``.
    ``svhn``: fine-tune on the first ``samples`` of the train split, evaluate on the test split
    (no ``angle``: the drift is the pre-training set size N). ``angle`` None means 90° for the
    rotated datasets.
    """
    if eval_samples is not None and eval_samples < 1:
        raise InstantFTError(f"--eval-samples must be >= 1, got {eval_samples}")
    if dataset.startswith("fan"):  # the cooling-fan tasks: instantft.data.fan (no angle)
        from instantft.data.fan import fan_task

        return fan_task(dataset, samples=samples, seed=seed, eval_samples=eval_samples, data_dir=data_dir)
    samples = TASK_SAMPLES if samples is None else samples
    if angle is not None and not math.isfinite(angle):
        raise InstantFTError(f"--angle must be a finite number of degrees, got {angle}")
    if dataset in ("rotmnist", "rotfmnist"):
        angle = 90.0 if angle is None else angle
        base = dataset.removeprefix("rot")
        test = load_split(base, "test", data_dir)
        if not 1 <= samples < len(test):
            raise InstantFTError(f"--samples must be in 1..{len(test) - 1} for {dataset}, got {samples}")
        perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
        ft_rows, ev_rows = perm[:samples], perm[samples:]
        if eval_samples is not None:
            ev_rows = ev_rows[:eval_samples]
        tag = f"{dataset}-{angle:g}deg-seed{seed}"
        ft, ev = test.subset(ft_rows), test.subset(ev_rows)
        return DriftTask(
            dataset,
            base,
            angle,
            ImageSet(f"{tag}-finetune", rotate(ft.images, angle), ft.labels, ft.indices),
            ImageSet(f"{tag}-eval", rotate(ev.images, angle), ev.labels, ev.indices),
        )
    if dataset == "svhn":
        if angle:
            raise InstantFTError("--angle applies to rotmnist/rotfmnist; svhn's drift is the pre-training size N")
        train = load_split("svhn", "train", data_dir)
        test = load_split("svhn", "test", data_dir)
        if not 1 <= samples <= len(train):
            raise InstantFTError(f"--samples must be in 1..{len(train)} for svhn, got {samples}")
        ft = train.subset(slice(0, samples), f"svhn-train-first{samples}")
        ev = test if eval_samples is None else test.subset(slice(0, eval_samples))
        return DriftTask("svhn", "svhn", 0.0, ft, ev)
    raise InstantFTError(f"unknown drift dataset {dataset!r}; valid: {', '.join(DRIFT_DATASETS)}")


def pretraining_set(
    dataset: str, samples: int | None = None, split: Split | None = None, data_dir: str | os.PathLike[str] | None = None
) -> tuple[ImageSet, ImageSet]:
    """(train, test) for pre-training: the first ``samples`` of ``split`` (SVHN default: extra,
    as in the paper) and the dataset's test split."""
    if dataset.startswith("fan"):  # a cooling-fan source: its take 1 and take 2
        from instantft.data.fan import fan_pretraining_set

        if samples is not None:  # take 1 is ordered by class: its first N would be one class
            raise InstantFTError("--samples does not apply to a fan source: its backbone is trained on all of take 1")
        train, test = fan_pretraining_set(dataset, data_dir)
    else:
        split = split or ("extra" if dataset == "svhn" else "train")
        train, test = load_split(dataset, split, data_dir), load_split(dataset, "test", data_dir)
    if samples is not None:
        if not 1 <= samples <= len(train):
            where = split or train.name
            raise InstantFTError(f"--samples must be in 1..{len(train)} for {dataset} {where}, got {samples}")
        train = train.subset(slice(0, samples), f"{train.name}-first{samples}")
    return train, test
