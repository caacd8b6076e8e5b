"""Atomic file writes, hashing and the one tensor-file format, shared by checkpoints, adapters
and results.

An interrupted write must leave the previous file intact, so everything is written to a
temporary file in the target directory, fsync'ed, then renamed over the target. A temp file
carries the writer's process id in its name, so one left by a killed run is removed by the next
write to the same target. Nothing non-finite is ever written (tensors and JSON alike), a target
that exists and is not a regular file (``/dev/null``, a FIFO, a directory) is refused, and so is
a target that is one of the run's own inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, BinaryIO

from instantft.errors import InstantFTError

PathLike = str | os.PathLike[str]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


# --- what a run reads: its inputs, which no write may replace or write into ------------------
#: the inputs of the run in progress (``None``: no run scope, only the inputs passed are checked)
_RUN_INPUTS: ContextVar[list[Path] | None] = ContextVar("run_inputs", default=None)


@contextmanager
def run_scope() -> Iterator[None]:
    """Inside: every file or folder a reader declares (:func:`declare_input`) is an input of the
    run, and :func:`ensure_writable` refuses to write onto or into any of them. The command line
    runs each command in one scope; the library outside one checks only the inputs it is given."""
    token = _RUN_INPUTS.set([])
    try:
        yield
    finally:
        _RUN_INPUTS.reset(token)


def declare_input(path: PathLike | None) -> None:
    """``path`` (a file or a folder) is read by the run in progress: never written onto or into."""
    inputs = _RUN_INPUTS.get()
    if inputs is not None and path is not None:
        inputs.append(Path(path))


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` would be written inside ``folder`` (by resolved path, symlinks followed)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop: resolve() fails
        return False


def _existing_ancestor(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


# --- what a reader may open: regular files of a bounded size ----------------------------------
def open_regular(path: PathLike, what: str = "file", max_bytes: int | None = None) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (symlinks followed) of at most
    ``max_bytes``: the one place every reader of the user's files opens them. A FIFO, a device
    (``/dev/zero``), a socket or a directory is refused without waiting or reading; the file is
    declared an input of the run in progress (:func:`declare_input`)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without a writer
    except FileNotFoundError:
        raise InstantFTError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise InstantFTError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
            raise InstantFTError(f"{path}: {what} is {kind}; expected a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise InstantFTError(f"{path}: {what} is {st.st_size:,} bytes, more than the {max_bytes:,}-byte limit")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    declare_input(path)
    return fh


def check_regular(path: PathLike, what: str = "file", max_bytes: int | None = None) -> int:
    """The size of ``path`` if :func:`open_regular` accepts it (for readers that take a path)."""
    with open_regular(path, what, max_bytes) as fh:
        return os.fstat(fh.fileno()).st_size


def ensure_writable(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Fail now, with one line, if ``path`` cannot be written - before hours of work, not after.
    The one place that decides what a run may write; nothing is created here (the parent
    folders are made when the file is written, so a run that fails leaves nothing behind).

    Refused: a target that exists and is not a regular file (a device such as ``/dev/null``, a
    FIFO, a socket, a directory: replacing it by rename would destroy it), a target that is one
    of the run's inputs (``inputs`` and those declared in the :func:`run_scope`: the data file,
    the model's source file, weights, checkpoint, bundle; the same file by inode, so hard links
    and symlinks count) or lies inside an input folder (an image folder: nothing is written in
    it), and a directory that cannot be written."""
    path = Path(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # NotADirectoryError: the check below says why the directory is unusable
    except OSError as exc:
        raise InstantFTError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InstantFTError(f"{path}: is a directory, expected a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InstantFTError(f"{path}: exists and is not a regular file (a device, FIFO or socket); not replacing it")
    for inp in [*inputs, *(_RUN_INPUTS.get() or [])]:
        if inp is None:
            continue
        inp = Path(inp)
        if (st is not None and _same_file(path, inp)) or (inp.is_dir() and _inside(path, inp)):
            where = "inside" if inp.is_dir() else "also"
            raise InstantFTError(f"{path}: is {where} an input of this run ({inp}); choose another output file")
    parent = _existing_ancestor(path)
    if not parent.is_dir():
        raise InstantFTError(f"{path}: cannot write here ({parent} is not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InstantFTError(f"{path}: cannot write here (Permission denied)")
    return path


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temps(path: PathLike) -> list[Path]:
    """Remove the temp files of writes to ``path`` whose writer process no longer exists (a run
    killed mid-write); return what was removed. Temp files of live writers are left alone."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[^.]+\.(tmp|probe)$")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def atomic_write(path: PathLike, write: Callable[[Path], object], inputs: Iterable[PathLike | None] = ()) -> Path:
    """Call ``write(tmp)`` to fill a temp file beside ``path``, fsync it, rename it to ``path``."""
    path = ensure_writable(path, inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # only now: a run that failed created nothing
    except OSError as exc:
        raise InstantFTError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    clean_stale_temps(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InstantFTError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
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
        except OSError as exc:  # disk full, quota, I/O error: one line, previous file kept
            raise InstantFTError(f"{path}: write failed ({exc.strerror or exc}); previous file kept") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """JSON without ``NaN``/``Infinity`` (not JSON, and never a result worth keeping)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        raise InstantFTError(f"{path}: refusing to write a non-finite number ({_first_non_finite(obj)})") from None
    return atomic_write_text(path, text + "\n")


def _first_non_finite(obj: Any, where: str = "") -> str:
    """The JSON path of the first NaN/inf in ``obj`` (for the error message)."""
    stack: list[tuple[Any, str]] = [(obj, where or "$")]
    while stack:
        o, w = stack.pop()
        if isinstance(o, float) and not math.isfinite(o):
            return f"{w} = {o}"
        if isinstance(o, dict):
            stack.extend((v, f"{w}.{k}") for k, v in o.items())
        elif isinstance(o, list | tuple):
            stack.extend((v, f"{w}[{i}]") for i, v in enumerate(o))
    return "non-finite value"


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: the hash format :func:`tensors_sha256` writes (adapter records carry it as
#: ``tensors_sha256_format``; a record without one was hashed in format 1)
TENSORS_SHA256_FORMAT = 2

#: format 2's dtype tags: the safetensors names
_DTYPE_TAGS = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8", "torch.uint8": "U8",
    "torch.bool": "BOOL",
}  # fmt: skip


def tensors_sha256(state: dict[str, Any], fmt: int = TENSORS_SHA256_FORMAT) -> str:
    """The SHA-256 of a set of named tensors, what adapter records carry of their tensors; the
    device program computes the same in C (csrc/device/tensor_hash.h).

    Format 2 hashes a byte stream defined without Python: for each tensor in increasing byte
    order of the UTF-8 names, the name bytes and a NUL, the dtype tag (the safetensors name:
    ``F32``, ``I64``, ...) and a NUL, ndim and each dimension as little-endian uint64, then the
    data, row-major, little-endian. Format 1 (0.1.0's, records without a format) hashed the text
    ``f"{name}:{tuple(shape)}:{dtype}"`` then the bytes; kept so that old files still verify."""
    import torch

    if sys.byteorder != "little":
        raise InstantFTError("tensors_sha256 hashes memory as little-endian; this machine is big-endian")
    if fmt not in (1, 2):
        raise InstantFTError(f"unknown tensors_sha256_format {fmt!r}; this version reads 1 and 2")
    h = hashlib.sha256()
    for name in sorted(state, key=lambda n: n.encode()):
        t = state[name].detach().contiguous().cpu()
        if fmt == 1:
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        else:
            tag = _DTYPE_TAGS.get(str(t.dtype))
            if tag is None:
                raise InstantFTError(f"tensor {name}: dtype {t.dtype} has no tensors_sha256 tag")
            h.update(name.encode() + b"\0" + tag.encode() + b"\0")
            h.update(struct.pack(f"<{1 + t.dim()}Q", t.dim(), *t.shape))
        flat = t.reshape(-1)  # row-major; numpy has no bfloat16, its bits are hashed as int16
        h.update((flat.view(torch.int16) if t.dtype == torch.bfloat16 else flat).numpy().tobytes())
    return h.hexdigest()


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    import torch

    return [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_with_record(
    path: PathLike, state: dict[str, Any], key: str, record: dict[str, Any], inputs: Iterable[PathLike | None] = ()
) -> Path:
    """Write tensors as ``.safetensors`` with a JSON ``record`` under ``key`` in the header,
    atomically: the one file format of checkpoints and adapters (never pickle). A NaN or an
    infinity in any tensor or in the record is refused and nothing is written."""
    from safetensors.torch import save_file

    bad = non_finite_tensors(state)
    if bad:
        raise InstantFTError(f"{path}: refusing to save non-finite tensors ({', '.join(sorted(bad)[:5])})")
    try:
        text = json.dumps(record, allow_nan=False)
    except ValueError:
        raise InstantFTError(f"{path}: refusing to save a non-finite number ({_first_non_finite(record)})") from None
    def write(tmp: Path) -> None:
        from safetensors import SafetensorError

        try:
            save_file(state, str(tmp), metadata={key: text})
        except SafetensorError as exc:  # e.g. the disk filled while serialising
            raise InstantFTError(f"{path}: write failed ({str(exc).splitlines()[0]}); previous file kept") from None

    return atomic_write(path, write, inputs)


def _open_header(path: Path, kind: str) -> tuple[dict[str, str], dict[str, tuple[str, list[int]]]]:
    """The string metadata and (dtype, shape) of every tensor, from the header alone."""
    from safetensors import SafetensorError, safe_open

    check_regular(path, f"{kind} file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            shapes = {}
            for name in fh.keys():  # noqa: SIM118  (safe_open is not a mapping)
                sl = fh.get_slice(name)
                shapes[name] = (str(sl.get_dtype()), list(sl.get_shape()))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InstantFTError(f"{path}: not a valid safetensors file ({first})") from None
    return meta, shapes


def tensor_shapes(path: PathLike, kind: str = "tensor") -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) of each tensor in a ``.safetensors`` file, read from its header
    only (nothing allocated: a size check against these comes before any load)."""
    return _open_header(Path(path), kind)[1]


def read_record(path: PathLike, key: str, kind: str) -> dict[str, Any]:
    """The JSON record under ``key`` of a ``.safetensors`` file, without loading its tensors;
    ``kind`` ("checkpoint", "adapter") names the file in errors and picks the schema of
    :mod:`instantft.records` the record is validated against (size, depth, types, ranges)."""
    from instantft.records import SCHEMAS, parse_json_object, validate

    path = Path(path)
    meta, _ = _open_header(path, kind)
    if key not in meta:
        raise InstantFTError(f"{path}: not an instantft {kind} (no '{key}' metadata)")
    record = parse_json_object(meta[key], f"{path}: {kind} metadata")
    if kind in SCHEMAS:
        validate(SCHEMAS[kind], record, f"{path}: {kind} metadata")
    return record


def load_tensors(path: PathLike, kind: str = "tensor") -> dict[str, Any]:
    """All tensors of a ``.safetensors`` file; a damaged file, or a NaN or an infinity in any
    floating-point tensor, is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_regular(path, f"{kind} file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InstantFTError(f"{path}: cannot read tensors ({first})") from None
    bad = non_finite_tensors(state)
    if bad:
        raise InstantFTError(f"{path}: {kind} holds non-finite values (NaN or inf) in {', '.join(sorted(bad)[:5])}")
    return state
