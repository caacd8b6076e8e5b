"""Readers for the datasets' original file formats: gzip'ed IDX (MNIST, Fashion-MNIST) and
MATLAB .mat (SVHN cropped digits). Every format problem is a one-line error naming the file."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from instantft.errors import InstantFTError

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


#: an IDX payload claiming more than this is refused before it is decompressed (MNIST's
#: largest file holds 47 MB), so a small file cannot make the reader allocate gigabytes
MAX_IDX_BYTES = 1 << 28


def _read_gzip(path: Path, limit: int) -> bytes:
    """At most ``limit`` decompressed bytes (one more tells the caller there was more), read
    in chunks: ``read(limit)`` would allocate ``limit`` bytes up front whatever the file holds."""
    try:
        with gzip.open(path, "rb") as fh:
            parts: list[bytes] = []
            left = limit
            while left > 0 and (block := fh.read(min(left, 1 << 20))):
                parts.append(block)
                left -= len(block)
            return b"".join(parts)
    except (gzip.BadGzipFile, OSError, EOFError, zlib.error) as exc:
        kind = "truncated gzip data" if isinstance(exc, EOFError) else f"not a valid gzip file ({exc})"
        raise InstantFTError(f"{path}: {kind}") from None


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Parse a gzip'ed IDX file of unsigned bytes: images (magic 2051) or labels (2049)."""
    from instantft.fileio import check_regular

    path = Path(path)
    check_regular(path, "IDX file")  # a FIFO or a device would block or never end
    ndim = 3 if magic == IDX_IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)
    head = _read_gzip(path, header)
    if len(head) < 4:
        raise InstantFTError(f"{path}: truncated IDX header ({len(head)} bytes)")
    (got_magic,) = struct.unpack(">i", head[:4])
    if got_magic != magic:
        raise InstantFTError(f"{path}: wrong IDX magic number {got_magic} (expected {magic})")
    if len(head) < header:
        raise InstantFTError(f"{path}: truncated IDX header ({len(head)} bytes)")
    dims = struct.unpack(f">{ndim}I", head[4:header])  # sizes are unsigned 32-bit
    count = math.prod(dims)
    if count > MAX_IDX_BYTES:
        raise InstantFTError(f"{path}: IDX header {tuple(dims)} claims {count} bytes (limit {MAX_IDX_BYTES})")
    raw = _read_gzip(path, header + count + 1)
    if len(raw) - header != count:
        got = f"more than {count}" if len(raw) - header > count else str(len(raw) - header)
        raise InstantFTError(f"{path}: IDX payload has {got} bytes, header {tuple(dims)} needs {count}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64, checked against each other."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise InstantFTError(f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images")
    check_labels(labels, labels_path)
    return images, labels.astype(np.int64)


def check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        bad = labels[(labels < 0) | (labels > 9)][0]
        raise InstantFTError(f"{path}: label {int(bad)} outside 0-9")


#: zlib's largest expansion ratio: a v5 .mat variable cannot hold more than this many bytes per
#: byte of file, so a header claiming more is refused before scipy allocates it
MAT_MAX_EXPANSION = 1032
_MAT_ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "single": 4}


def _check_mat_sizes(path: Path) -> None:
    """Only MATLAB 5 files (what SVHN ships; v4 headers make scipy allocate what they claim),
    and no variable claiming more bytes than the file could decompress to."""
    import scipy.io

    from instantft.fileio import open_regular

    with open_regular(path, ".mat file") as fh:
        head = fh.read(128)
    if len(head) < 128 or 0 in head[:4] or head[126:128] not in (b"IM", b"MI"):
        raise InstantFTError(f"{path}: not a MATLAB 5 .mat file (SVHN's format)")
    variables = scipy.io.whosmat(path)
    budget = MAT_MAX_EXPANSION * max(path.stat().st_size, 1)
    for name, shape, cls in variables:
        claimed = math.prod(shape) * _MAT_ITEMSIZE.get(cls, 8)
        if claimed > budget:
            raise InstantFTError(f"{path}: .mat variable {name!r} claims {claimed} bytes, more than the file can hold")


def read_svhn_mat(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits: ``X`` uint8 (32, 32, 3, N) -> (N, 3, 32, 32); ``y`` 1..10 -> 0..9."""
    import scipy.io

    path = Path(path)
    try:
        _check_mat_sizes(path)
        mat = scipy.io.loadmat(path)
    except InstantFTError:
        raise
    except MemoryError:
        raise InstantFTError(f"{path}: .mat file claims more memory than is available") from None
    except Exception as exc:  # scipy raises many types (MatReadError, ValueError, struct.error, ...)
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InstantFTError(f"{path}: not a readable MATLAB .mat file ({first})") from None
    for key in ("X", "y"):
        if key not in mat:
            raise InstantFTError(
                f"{path}: .mat file has no '{key}' variable (found: {sorted(k for k in mat if not k.startswith('__'))})"
            )
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    for key, arr in (("X", x), ("y", y)):
        if arr.dtype.kind not in "uif" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
            raise InstantFTError(f"{path}: .mat variable {key} is not an array of finite numbers ({arr.dtype})")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise InstantFTError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, N)")
    if x.shape[3] != y.shape[0]:
        raise InstantFTError(f"{path}: {y.shape[0]} labels but X has {x.shape[3]} images")
    if y.size and (y.min() < 1 or y.max() > 10):
        bad = y[(y < 1) | (y > 10)][0]
        raise InstantFTError(f"{path}: label {int(bad)} outside 1-10")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8)
    labels = y.astype(np.int64) % 10
    return images, labels
