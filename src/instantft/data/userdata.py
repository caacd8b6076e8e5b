"""The user's own data from files: an image folder (one sub-folder per class) or a ``.npz`` file.

Both become the :class:`~instantft.data.ImageSet` every method trains on, and :func:`user_task`
splits one into a fine-tuning and an evaluation part the way :func:`~instantft.data.make_task`
does for the paper's tasks (a seeded random permutation). Everything that can be checked is
checked before the pixels are decoded or the arrays read (image headers, ``.npy`` headers), so a
bad file costs one line of error, not a traceback or gigabytes of memory.

Image folders follow torchvision's ``ImageFolder`` convention: ``root/<class>/<image>``, classes
sorted by name (class ``i`` is the ``i``-th name), PNG and JPEG files only (decoded by Pillow),
other files and hidden entries ignored. Pixels are scaled to [0, 1]; grey-scale images give one
channel, RGB three. A sample's index (what the Forward Cache is keyed by) is its position in
the sorted (class, file name) order: stable for an unchanged folder.

``.npz`` files hold ``x`` (N, ...) and ``y`` (N,) integer labels; ``uint8`` ``x`` is scaled to
[0, 1], floating ``x`` is used as it is (the model may expect its own normalisation); an
(N, H, W) ``x`` gains a channel axis, as the bundled datasets do. No pickled arrays are read.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format

from instantft.data.datasets import DriftTask, ImageSet
from instantft.errors import InstantFTError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")
# Pillow mode -> (mode decoded to, channels). Palette and 1-bit images are expanded; modes with
# alpha or more than 8 bits per channel are refused rather than silently reduced.
MODES = {"L": ("L", 1), "1": ("L", 1), "RGB": ("RGB", 3), "P": ("RGB", 3)}
DATA_BUDGET_BYTES = 2 * 2**30  # the float32 tensors of one data set may take at most this much memory


@dataclass(frozen=True)
class UserData:
    """A data set read from the user's files, with its class names (``None`` for ``.npz``)."""

    data: ImageSet
    classes: list[str] | None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_budget(path: Path, n: int, per_sample: int) -> None:
    need = n * per_sample * 4
    if need > DATA_BUDGET_BYTES:
        raise InstantFTError(
            f"{path}: {n} samples of {per_sample} values need {need / 2**30:.1f} GiB as float32, "
            f"more than the {DATA_BUDGET_BYTES / 2**30:g} GiB data budget"
        )


# --- image folders ----------------------------------------------------------------------------
def _class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InstantFTError(f"{root}: no class folders (expected {root}/<class name>/<image>.png)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            e.name
            for e in os.scandir(root / name)
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
        )
        if not found:
            raise InstantFTError(f"{root / name}: class folder holds no PNG or JPEG image")
        files.extend((root / name / f, label) for f in found)
    return classes, files


def load_image_folder(root: str | os.PathLike[str]) -> UserData:
    """Read ``root/<class>/<image>`` into an ImageSet (all images one size and one mode)."""
    from PIL import Image

    root = Path(root)
    classes, files = _class_files(root)
    first: tuple[Path, str, tuple[int, int]] | None = None
    # pass 1: headers only (Pillow decodes lazily), so sizes, modes and the budget are checked
    # before any pixel is decoded
    for path, _ in files:
        try:
            with Image.open(path) as im:
                fmt, mode, size = im.format, im.mode, im.size
        except Exception as exc:  # Pillow raises many types for a bad header
            raise InstantFTError(f"{path}: not a readable PNG or JPEG image ({_one_line(exc)})") from None
        if fmt not in IMAGE_FORMATS:
            raise InstantFTError(f"{path}: is a {fmt} image; image folders hold PNG or JPEG files")
        if mode not in MODES:
            raise InstantFTError(
                f"{path}: image mode {mode} is not supported (grey-scale L, 1-bit, palette P or RGB)"
            )
        if first is None:
            first = (path, mode, size)
            _check_budget(root, len(files), size[0] * size[1] * MODES[mode][1])
        elif size != first[2]:
            raise InstantFTError(
                f"{path}: image is {size[0]}x{size[1]} but {first[0]} is {first[2][0]}x{first[2][1]}; "
                "all images must be one size"
            )
        elif MODES[mode][0] != MODES[first[1]][0]:
            raise InstantFTError(
                f"{path}: image mode {mode} differs from {first[0]}'s {first[1]}; all images must be "
                "grey-scale or all RGB"
            )
    assert first is not None
    target, channels = MODES[first[1]]
    width, height = first[2]
    out = np.empty((len(files), height, width, channels), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as im:
                out[i] = np.asarray(im.convert(target)).reshape(height, width, channels)
        except Exception as exc:
            raise InstantFTError(f"{path}: corrupt image ({_one_line(exc)})") from None
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return UserData(ImageSet(root.name or str(root), images, labels, torch.arange(len(files))), classes)


# --- .npz files -------------------------------------------------------------------------------
def _npy_header(archive: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with archive.open(f"{key}.npy") as f:
            version = npy_format.read_magic(f)
            read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read(f)
    except KeyError:
        raise InstantFTError(f"{path}: no array {key!r} (a .npz for instantft holds x and y)") from None
    except Exception as exc:
        raise InstantFTError(f"{path}: array {key!r} is not a valid .npy entry ({_one_line(exc)})") from None
    return tuple(shape), dtype


def load_npz(path: str | os.PathLike[str]) -> UserData:
    """Read ``x`` and ``y`` from a ``.npz`` file (no pickle), checking shapes before reading."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InstantFTError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    with archive:
        (x_shape, x_dtype), (y_shape, y_dtype) = _npy_header(archive, "x", path), _npy_header(archive, "y", path)
    if x_dtype.hasobject or y_dtype.hasobject:
        raise InstantFTError(f"{path}: x and y must be numeric arrays, not objects (pickle is never loaded)")
    if x_dtype != np.uint8 and x_dtype.kind != "f":
        raise InstantFTError(f"{path}: x must be uint8 (scaled to [0, 1]) or floating point, not {x_dtype}")
    if y_dtype.kind not in "iu":
        raise InstantFTError(f"{path}: y must hold integer class labels, not {y_dtype}")
    if len(x_shape) < 2 or len(y_shape) != 1:
        raise InstantFTError(f"{path}: x must be (N, ...) and y (N,), got x {x_shape} and y {y_shape}")
    if x_shape[0] != y_shape[0]:
        raise InstantFTError(f"{path}: x has {x_shape[0]} samples but y has {y_shape[0]} labels")
    if x_shape[0] == 0:
        raise InstantFTError(f"{path}: holds no samples")
    _check_budget(path, x_shape[0], math.prod(x_shape[1:]))
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except Exception as exc:
        raise InstantFTError(f"{path}: cannot read x and y ({_one_line(exc)})") from None
    if x.dtype == np.uint8:
        images = torch.from_numpy(x.astype(np.float32)).div_(255.0)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = x.astype(np.float32)
        if not np.isfinite(x32).all():
            bad = int((~np.isfinite(x32)).reshape(len(x32), -1).any(axis=1).argmax())
            raise InstantFTError(f"{path}: x holds a non-finite value (NaN, inf or beyond float32), sample {bad}")
        images = torch.from_numpy(x32)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if y.min() < 0 or y.max() > 2**31 - 1:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise InstantFTError(f"{path}: y holds the label {bad}; labels are class numbers 0..C-1")
    labels = torch.from_numpy(y.astype(np.int64))
    return UserData(ImageSet(path.stem, images.contiguous(), labels, torch.arange(len(labels))), None)


def load_user_data(path: str | os.PathLike[str]) -> UserData:
    """An image folder (a directory) or a ``.npz`` file."""
    path = Path(path)
    if path.is_dir():
        return load_image_folder(path)
    if not path.exists():
        raise InstantFTError(f"{path}: no such file or folder")
    if path.suffix.lower() != ".npz":
        raise InstantFTError(f"{path}: --data takes an image folder or a .npz file with x and y")
    return load_npz(path)


# --- checks against the model and the split ----------------------------------------------------
def check_against_model(data: ImageSet, model: torch.nn.Module, source: str) -> int:
    """Run the model on one sample: it must accept the input shape and return (1, C) logits with
    every label below C. Returns C."""
    try:
        with torch.no_grad():
            out = model.eval()(data.images[:1])
    except Exception as exc:
        shape = tuple(data.images.shape[1:])
        raise InstantFTError(f"{source}: the model rejects inputs of shape {shape} ({_one_line(exc)})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InstantFTError(f"{source}: the model must return (batch, classes) logits, got {got}")
    classes = int(out.shape[1])
    top = int(data.labels.max())
    if top >= classes:
        raise InstantFTError(f"{source}: label {top} is outside the model's {classes} classes (0..{classes - 1})")
    return classes


def user_task(
    data: ImageSet, *, samples: int | None = None, seed: int = 0, eval_samples: int | None = None
) -> DriftTask:
    """Split user data like :func:`~instantft.data.make_task`: a seeded random permutation, the
    first ``samples`` for fine-tuning (default: 80 %), the rest (at most ``eval_samples``) for
    evaluation. There is no drift transform: the user's data is the drifted data."""
    n = len(data)
    if n < 2:
        raise InstantFTError(f"{data.name}: needs at least 2 samples (one to fine-tune on, one to evaluate), has {n}")
    if samples is None:
        samples = max(1, min(n - 1, round(0.8 * n)))
    if not 1 <= samples < n:
        raise InstantFTError(f"--samples must be in 1..{n - 1} for {data.name} ({n} samples), got {samples}")
    if eval_samples is not None and eval_samples < 1:
        raise InstantFTError(f"--eval-samples must be >= 1, got {eval_samples}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    ft_rows, ev_rows = perm[:samples], perm[samples:]
    if eval_samples is not None:
        ev_rows = ev_rows[:eval_samples]
    tag = f"{data.name}-seed{seed}"
    return DriftTask(
        data.name, data.name, 0.0, data.subset(ft_rows, f"{tag}-finetune"), data.subset(ev_rows, f"{tag}-eval")
    )
