"""Atomic file writes and hashing, shared by checkpoints, adapters and results.

An interrupted write must leave the previous file intact, so everything is written to a
temporary file in the target directory, fsync'ed, then renamed over the target.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instantft.errors import InstantFTError


def ensure_writable(path: str | os.PathLike[str]) -> Path:
    """Fail now, with one line, if ``path`` cannot be written - before hours of work, not after."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InstantFTError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    if path.is_dir():
        raise InstantFTError(f"{path}: is a directory, expected a file name")
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temp file beside ``path``, fsync it, rename it to ``path``."""
    path = ensure_writable(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_with_record(path: str | os.PathLike[str], state: dict[str, Any], key: str, record: dict[str, Any]) -> Path:
    """Write tensors as ``.safetensors`` with a JSON ``record`` under ``key`` in the header,
    atomically: the one file format of checkpoints and adapters (never pickle)."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={key: json.dumps(record)}))


def read_record(path: str | os.PathLike[str], key: str, kind: str) -> dict[str, Any]:
    """The JSON record under ``key`` of a ``.safetensors`` file, without loading its tensors;
    ``kind`` ("checkpoint", "adapter") names the file in errors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InstantFTError(f"{path}: {kind} file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InstantFTError(f"{path}: not a valid safetensors file ({exc})") from None
    if key not in meta:
        raise InstantFTError(f"{path}: not an instantft {kind} (no '{key}' metadata)")
    try:
        return dict(json.loads(meta[key]))
    except json.JSONDecodeError:
        raise InstantFTError(f"{path}: {kind} metadata is not valid JSON") from None


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """All tensors of a ``.safetensors`` file; a damaged file is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InstantFTError(f"{path}: cannot read tensors ({exc})") from None
