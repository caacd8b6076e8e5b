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
#: the fewest bits a file of each mode may store per pixel (a palette image may use 1-bit indices)
MODE_MIN_BITS = {"L": 8, "1": 1, "RGB": 24, "P": 1}
#: the most uncompressed bytes one byte of file can expand to: zlib's limit for PNG (as for .mat
#: files); generous for JPEG, whose flattest 8x8 block still costs a few bits
MAX_EXPANSION = {"PNG": 1032, "JPEG": 4096}
DATA_BUDGET_BYTES = 2 * 2**30  # the float32 tensors of one data set may take at most this much memory
MAX_FILE_BYTES = 2 * 2**30  # no data file read is larger than this


#: at most this many members in a ``.npz`` (instantft reads two; counted from the zip's end record
#: before its central directory is parsed)
MAX_NPZ_MEMBERS = 64


@dataclass(frozen=True)
class UserData:
    """A data set read from the user's files, with its class names (``None`` for ``.npz``) and
    the SHA-256 of what was read (:func:`data_sha256`): an adapter record pins its data by it."""

    data: ImageSet
    classes: list[str] | None
    sha256: str = ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_budget(path: Path, n: int, per_sample: int, transient: int = 0) -> None:
    """``n`` float32 samples of ``per_sample`` values, plus ``transient`` bytes a reader needs
    on the way (one decoded image), within the data budget: checked before any allocation."""
    need = n * per_sample * 4 + transient
    if need > DATA_BUDGET_BYTES:
        raise InstantFTError(
            f"{path}: {n} samples of {per_sample} values need {need / 2**30:.1f} GiB as float32, "
            f"more than the {DATA_BUDGET_BYTES / 2**30:g} GiB data budget"
        )


def _read_regular(path: Path, what: str) -> bytes:
    """The bytes of a regular file of at most the data budget (nothing else is opened)."""
    from instantft.fileio import open_regular

    with open_regular(path, what, MAX_FILE_BYTES) as fh:
        return fh.read()


# --- image folders ----------------------------------------------------------------------------
def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise InstantFTError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError as exc:  # a symlink loop (ELOOP), a permission problem
        raise InstantFTError(f"{entry.path}: cannot read ({exc.strerror or exc})") from None


def _class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = [e.name for e in _entries(root) if _is_dir(e)]
    if not classes:
        raise InstantFTError(f"{root}: no class folders (expected {root}/<class name>/<image>.png)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = [e.name for e in _entries(root / name) if e.name.lower().endswith(IMAGE_SUFFIXES)]
        if not found:
            raise InstantFTError(f"{root / name}: class folder holds no PNG or JPEG image")
        files.extend((root / name / f, label) for f in found)
    return classes, files


def load_image_folder(root: str | os.PathLike[str]) -> UserData:
    """Read ``root/<class>/<image>`` into an ImageSet (all images one size and one mode).

    Every image is a regular file (a FIFO, a device or a symlink loop is refused); pass 1 reads
    each file once, hashes it and reads its header only, so sizes, modes and the memory its
    decoding needs are checked before any pixel is decoded; pass 2 decodes each image straight
    into the float32 tensor, and a file changed between the passes is refused."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget decides, in one line
        return _load_image_folder(Path(root))


def _load_image_folder(root: Path) -> UserData:
    import hashlib
    import io

    from PIL import Image, UnidentifiedImageError

    from instantft.fileio import declare_input

    declare_input(root)
    classes, files = _class_files(root)
    first: tuple[Path, str, tuple[int, int]] | None = None
    digests: list[bytes] = []
    for path, _ in files:
        raw = _read_regular(path, "image")
        digests.append(hashlib.sha256(raw).digest())
        try:
            with Image.open(io.BytesIO(raw)) as im:
                fmt, mode, size = im.format, im.mode, im.size
        except UnidentifiedImageError:
            raise InstantFTError(f"{path}: not a readable PNG or JPEG image (unknown format)") from None
        except Exception as exc:  # Pillow raises many types for a bad header
            raise InstantFTError(f"{path}: not a readable PNG or JPEG image ({_one_line(exc)})") from None
        if fmt not in IMAGE_FORMATS:
            raise InstantFTError(f"{path}: is a {fmt} image; image folders hold PNG or JPEG files")
        if mode not in MODES:
            raise InstantFTError(
                f"{path}: image mode {mode} is not supported (grey-scale L, 1-bit, palette P or RGB)"
            )
        stored = size[0] * size[1] * MODE_MIN_BITS[mode] // 8
        if stored > MAX_EXPANSION[fmt] * len(raw):  # a small file claiming a huge image: no allocation
            raise InstantFTError(
                f"{path}: header claims a {size[0]}x{size[1]} image, more than its {len(raw):,} bytes can hold"
            )
        if first is None:
            first = (path, mode, size)
            pixels = size[0] * size[1]
            # the float32 tensor of every image, and one image decoded and converted on the way
            _check_budget(root, len(files), pixels * MODES[mode][1], transient=2 * 4 * pixels)
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
    images = torch.empty((len(files), channels, height, width), dtype=torch.float32)
    for i, (path, _) in enumerate(files):
        raw = _read_regular(path, "image")
        if hashlib.sha256(raw).digest() != digests[i]:
            raise InstantFTError(f"{path}: changed while it was being read")
        try:
            with Image.open(io.BytesIO(raw)) as im:
                if im.size != (width, height):
                    raise ValueError(f"decoded {im.size[0]}x{im.size[1]}")
                decoded = np.array(im.convert(target)).reshape(height, width, channels)
        except Exception as exc:
            raise InstantFTError(f"{path}: corrupt image ({_one_line(exc)})") from None
        images[i] = torch.from_numpy(decoded).permute(2, 0, 1)
    images.div_(255.0)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    h = hashlib.sha256()
    for (path, _), digest in zip(files, digests, strict=True):  # names and contents, in load order
        h.update(f"{path.parent.name}/{path.name}".encode("utf-8", "surrogateescape") + b"\0" + digest)
    return UserData(ImageSet(root.name or str(root), images, labels, torch.arange(len(files))), classes, h.hexdigest())


# --- .npz files -------------------------------------------------------------------------------
def _npz_members(raw: bytes, path: Path) -> None:
    """The zip's member count from its end record (before the central directory is parsed):
    at most :data:`MAX_NPZ_MEMBERS`."""
    import struct

    at = raw.rfind(b"PK\x05\x06", max(0, len(raw) - (1 << 16) - 22))
    if at < 0 or len(raw) < at + 22:
        raise InstantFTError(f"{path}: not a readable .npz file (no zip end record)")
    (entries,) = struct.unpack("<H", raw[at + 10 : at + 12])
    if entries > MAX_NPZ_MEMBERS:
        raise InstantFTError(f"{path}: holds {entries} members; a .npz for instantft holds x and y")


def _npy_member(archive: zipfile.ZipFile, key: str, path: Path) -> np.ndarray:
    """Array ``key`` of the archive: its header read and checked against the zip's size of the
    member and the data budget, then the array read (never a pickle)."""
    name = f"{key}.npy"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise InstantFTError(f"{path}: no array {key!r} (a .npz for instantft holds x and y)") from None
    if info.file_size > DATA_BUDGET_BYTES:
        raise InstantFTError(f"{path}: array {key!r} is {info.file_size:,} bytes, more than the data budget")
    try:
        with archive.open(info) as f:
            version = npy_format.read_magic(f)
            read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            if dtype.hasobject:
                raise InstantFTError(f"{path}: x and y must be numeric arrays, not objects (pickle is never loaded)")
            nbytes, held = math.prod(shape) * dtype.itemsize, info.file_size - f.tell()
            if nbytes != held:
                raise InstantFTError(f"{path}: array {key!r} header claims {nbytes:,} bytes, the member holds {held:,}")
            if key == "x":
                _check_budget(path, shape[0] if shape else 1, math.prod(shape[1:]), transient=nbytes)
            data = f.read(nbytes)
    except InstantFTError:
        raise
    except Exception as exc:
        raise InstantFTError(f"{path}: array {key!r} is not a valid .npy entry ({_one_line(exc)})") from None
    if len(data) != nbytes:
        raise InstantFTError(f"{path}: array {key!r} is truncated")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def load_npz(path: str | os.PathLike[str]) -> UserData:
    """Read ``x`` and ``y`` from a ``.npz`` file (no pickle), checking every size before reading:
    a regular file within the data budget, at most :data:`MAX_NPZ_MEMBERS` members with distinct
    names, each array's header against its member's size and the budget."""
    import hashlib
    import io

    path = Path(path)
    raw = _read_regular(path, ".npz file")
    _npz_members(raw, path)
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError) as exc:
        raise InstantFTError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    with archive:
        names = archive.namelist()
        if len(names) != len(set(names)):
            dup = next(n for n in names if names.count(n) > 1)
            raise InstantFTError(f"{path}: member {dup!r} appears more than once (which one is meant?)")
        x, y = _npy_member(archive, "x", path), _npy_member(archive, "y", path)
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise InstantFTError(f"{path}: x must be uint8 (scaled to [0, 1]) or floating point, not {x.dtype}")
    if y.dtype.kind not in "iu":
        raise InstantFTError(f"{path}: y must hold integer class labels, not {y.dtype}")
    if x.ndim < 2 or y.ndim != 1:
        raise InstantFTError(f"{path}: x must be (N, ...) and y (N,), got x {x.shape} and y {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise InstantFTError(f"{path}: x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise InstantFTError(f"{path}: holds no samples")
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
    digest = hashlib.sha256(raw).hexdigest()
    return UserData(ImageSet(path.stem, images.contiguous(), labels, torch.arange(len(labels))), None, digest)


def load_user_data(path: str | os.PathLike[str]) -> UserData:
    """An image folder (a directory) or a ``.npz`` file (a regular one: a FIFO or a device is
    refused without waiting on it)."""
    path = Path(path)
    if path.is_dir():
        return load_image_folder(path)
    if not path.exists() and not path.is_symlink():
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
