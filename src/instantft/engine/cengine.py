"""The C core (``csrc/``) from Python, through its plain C ABI with ctypes.

The shared library is compiled when the package is installed (``setup.py`` builds it as the
extension ``instantft._cinstantft``; it has no Python entry point, only the C functions of
``csrc/instantft.h``), so nothing is ever compiled at run time. Every function here takes numpy
arrays (C-contiguous, the dtypes the C side expects, checked). The ctypes structures mirror the C
structs; at load they are compared with the library's own sizes and field offsets
(``ift_layout_info``), and a library that differs is refused.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from instantft.errors import InstantFTError

if TYPE_CHECKING:
    from instantft.cache import ForwardCache
    from instantft.engine.layout import Layout

#: must equal IFT_ABI_VERSION of the library
ABI_VERSION = 2
OK, EINVAL, ENOMEM, EFULL, EKEY, ELOSS, EPARAM = 0, -1, -2, -3, -4, -5, -6
FP32, NF4 = 0, 1
OP_CONV2D, OP_RELU, OP_MAXPOOL, OP_FLATTEN, OP_LINEAR = 1, 2, 3, 4, 5
TAP_NONE, TAP_CACHED, TAP_INPUT = 0, 1, 2

_f32p = ctypes.POINTER(ctypes.c_float)
_i64p = ctypes.POINTER(ctypes.c_int64)
_u8p = ctypes.POINTER(ctypes.c_uint8)
_f64p = ctypes.POINTER(ctypes.c_double)


class _Op(ctypes.Structure):
    _fields_ = [
        *((n, ctypes.c_int32) for n in ("kind", "out_c", "kh", "kw", "sh", "sw", "ph", "pw", "tap")),
        ("weight", _f32p),
        ("bias", _f32p),
        *((n, ctypes.c_int32) for n in ("in_c", "in_h", "in_w", "out_h", "out_w", "out_cc")),
        ("tap_offset", ctypes.c_int64),
    ]


class _Chain(ctypes.Structure):
    _fields_ = [
        ("ops", ctypes.POINTER(_Op)),
        *((n, ctypes.c_int32) for n in ("n_ops", "in_c", "in_h", "in_w")),
        *((n, ctypes.c_int64) for n in ("in_size", "num_classes", "row_width", "logit_offset")),
        ("input_is_tap", ctypes.c_int32),
        ("n_taps", ctypes.c_int32),
        ("work_floats", ctypes.c_int64),
        ("act_floats", ctypes.c_int64),
    ]


class _Cache(ctypes.Structure):
    _fields_ = [
        ("storage", ctypes.c_int),
        *((n, ctypes.c_int64) for n in ("width", "capacity", "count", "block_size", "blocks")),
        ("rows", _f32p),
        ("codes", _u8p),
        ("absmax", _f32p),
        ("keys", _i64p),
        ("slot_of", _i64p),
        ("key_space", ctypes.c_int64),
        ("owns", ctypes.c_int),
    ]


class _Adapters(ctypes.Structure):
    _fields_ = [
        *((n, ctypes.c_int64) for n in ("K", "R", "C", "D")),
        ("seg", _i64p),
        ("A", _f32p),
        ("B", _f32p),
        ("logit_offset", ctypes.c_int64),
        ("scale", ctypes.c_float),
    ]


class _TrainArgs(ctypes.Structure):
    _fields_ = [
        ("cache", ctypes.POINTER(_Cache)),
        ("images", _f32p),
        ("image_width", ctypes.c_int64),
        *((n, _i64p) for n in ("slot_of", "labels", "order", "offsets")),
        ("n_steps", ctypes.c_int64),
        ("losses", _f64p),
        ("lr", ctypes.c_float),
        ("threads", ctypes.c_int32),
    ]


#: the C structs this module mirrors, by their C name (checked against ift_layout_info at load)
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "ift_op": _Op,
    "ift_chain": _Chain,
    "ift_cache": _Cache,
    "ift_adapters": _Adapters,
    "ift_train_args": _TrainArgs,
}


def python_layout() -> dict[str, tuple[int, list[tuple[str, int]]]]:
    """{struct: (size, [(field, offset), ...])} of the ctypes mirrors."""
    return {
        name: (ctypes.sizeof(cls), [(f[0], getattr(cls, f[0]).offset) for f in cls._fields_])
        for name, cls in STRUCTS.items()
    }


def parse_layout(info: str) -> dict[str, tuple[int, list[tuple[str, int]]]]:
    """``ift_layout_info()``'s text as :func:`python_layout` gives it."""
    out = {}
    for line in info.strip().splitlines():
        name, size, *fields = line.split()
        out[name] = (int(size), [(f.split(":")[0], int(f.split(":")[1])) for f in fields])
    return out


class LayoutMismatch(RuntimeError):
    """The library's structs are not laid out as this module's ctypes mirrors."""


def check_layout(lib: ctypes.CDLL, path: str) -> None:
    """Refuse a library whose struct sizes or field offsets differ from the ctypes mirrors (a
    library built from other sources, or by a compiler with other alignment rules)."""
    got, want = parse_layout(lib.ift_layout_info().decode()), python_layout()
    bad = [name for name in want if got.get(name) != want[name]]
    if bad:
        first = bad[0]
        raise LayoutMismatch(
            f"the C core at {path} does not match instantft.engine.cengine: struct {first} is "
            f"{got.get(first)} in the library, {want[first]} in Python (reinstall: pip install -e .)"
        )


def library_path() -> str | None:
    """Where the installed shared library is (found without importing it: it is not a module)."""
    override = os.environ.get("INSTANTFT_CLIB")
    if override:
        return override
    spec = importlib.util.find_spec("instantft._cinstantft")
    return spec.origin if spec is not None and spec.origin else None


def _declare(lib: ctypes.CDLL) -> None:
    i64, i32, c_int = ctypes.c_int64, ctypes.c_int32, ctypes.c_int
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "ift_abi_version": (c_int, []),
        "ift_build_info": (ctypes.c_char_p, []),
        "ift_strerror": (ctypes.c_char_p, [c_int]),
        "ift_nf4_encode_rows": (None, [_f32p, i64, i64, i64, _u8p, _f32p]),
        "ift_nf4_decode_row": (None, [_u8p, _f32p, i64, i64, _f32p]),
        "ift_chain_init": (
            c_int,
            [ctypes.POINTER(_Chain), ctypes.POINTER(_Op), i32, i32, i32, i32, ctypes.c_char_p, ctypes.c_size_t],
        ),
        "ift_chain_segments": (c_int, [ctypes.POINTER(_Chain), _i64p]),
        "ift_chain_fill_fp32": (c_int, [ctypes.POINTER(_Chain), _f32p, i64, _f32p, c_int]),
        "ift_chain_fill_nf4": (c_int, [ctypes.POINTER(_Chain), _f32p, i64, i64, _u8p, _f32p, c_int]),
        "ift_predict": (c_int, [ctypes.POINTER(_Chain), ctypes.POINTER(_Adapters), _f32p, i64, _f32p, c_int]),
        "ift_adapters_logits": (None, [ctypes.POINTER(_Adapters), _f32p, _f32p, _f32p]),
        "ift_train": (i64, [ctypes.POINTER(_Adapters), ctypes.POINTER(_TrainArgs), i64, i64, ctypes.POINTER(c_int)]),
        "ift_adapters_pack": (c_int, [ctypes.POINTER(_Adapters), i64, ctypes.POINTER(_f32p), ctypes.POINTER(_f32p)]),
        "ift_adapters_unpack": (c_int, [ctypes.POINTER(_Adapters), i64, ctypes.POINTER(_f32p), ctypes.POINTER(_f32p)]),
        "ift_layout_info": (ctypes.c_char_p, []),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded C core, or None when it was not built (no C compiler at install time). A library
    that is there but from other sources (another ABI version, structs laid out otherwise than
    the ctypes mirrors here) is refused with one error: an install to redo, not a fallback."""
    path = library_path()
    if path is None or not os.path.exists(path):
        return None
    # OpenMP threads that finish early sleep instead of spinning: a spinning thread takes the
    # core another process on the machine needs
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        lib = ctypes.CDLL(path)
        lib.ift_abi_version.restype, lib.ift_abi_version.argtypes = ctypes.c_int, []
        version = lib.ift_abi_version()
    except (OSError, AttributeError):
        return None
    if version != ABI_VERSION:
        raise InstantFTError(f"the C core at {path} has ABI version {version}, this package needs {ABI_VERSION} "
                             "(reinstall: pip install -e .)")  # fmt: skip
    try:
        _declare(lib)
    except AttributeError as exc:
        raise InstantFTError(f"the C core at {path} lacks a function ({exc}); reinstall: pip install -e .") from None
    try:
        check_layout(lib, path)
    except LayoutMismatch as exc:
        raise InstantFTError(str(exc)) from None
    return lib


def available() -> bool:
    return library() is not None


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the instantft C core is not built (reinstall with a C compiler: pip install -e .)")
    return lib


def build_info() -> str:
    """The instruction set the kernels run with and whether OpenMP is in (e.g. ``avx512+openmp``)."""
    return _lib().ift_build_info().decode()


def _ptr(a: np.ndarray | None, dtype: Any, ctype: Any, name: str, writable: bool = False) -> Any:
    if a is None:
        return None
    if a.dtype != dtype or not a.flags.c_contiguous or (writable and not a.flags.writeable):
        raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype).name} array")
    return a.ctypes.data_as(ctypes.POINTER(ctype))


def _f32(a: np.ndarray | None, name: str, writable: bool = False) -> Any:
    return _ptr(a, np.float32, ctypes.c_float, name, writable)


def _i64(a: np.ndarray | None, name: str) -> Any:
    return _ptr(a, np.int64, ctypes.c_int64, name)


def _u8(a: np.ndarray, name: str, writable: bool = False) -> Any:
    return _ptr(a, np.uint8, ctypes.c_uint8, name, writable)


# --- NF4 ----------------------------------------------------------------------------------------
def encode_nf4(rows: np.ndarray, block_size: int, codes: np.ndarray, absmax: np.ndarray) -> None:
    """Quantise fp32 rows (n, w) into codes (n, blocks·block_size/2) and absmax (n, blocks),
    bit-identical to :func:`instantft.nf4.quantize`."""
    n, w = rows.shape
    nb = -(-w // block_size)
    if codes.shape != (n, nb * block_size // 2) or absmax.shape != (n, nb) or block_size % 2:
        raise ValueError("codes/absmax do not match rows and block_size")
    _lib().ift_nf4_encode_rows(
        _f32(rows, "rows"), n, w, block_size, _u8(codes, "codes", True), _f32(absmax, "absmax", True)
    )


def decode_rows(codes: np.ndarray, absmax: np.ndarray, block_size: int, slots: np.ndarray, out: np.ndarray) -> None:
    """out[i] = the dequantised row ``slots[i]`` (out (n, width), width <= blocks·block_size)."""
    lib = _lib()
    width = out.shape[1]
    if absmax.shape[1] * block_size < width or codes.shape[1] * 2 != absmax.shape[1] * block_size:
        raise ValueError("codes/absmax do not match out and block_size")
    for i, s in enumerate(np.asarray(slots, dtype=np.int64)):
        lib.ift_nf4_decode_row(
            _u8(codes[s], "codes"), _f32(absmax[s], "absmax"), width, block_size, _f32(out[i], "out", True)
        )


# --- the chain ----------------------------------------------------------------------------------
@dataclass
class ChainOp:
    """One op of a chain backbone as the C core sees it (see csrc/instantft.h, ``ift_op``)."""

    kind: int
    out_c: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    tap: int = TAP_NONE
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


@dataclass
class Chain:
    """A chain backbone loaded into the C core: ``fill`` writes cache rows [cached taps | logits]."""

    in_shape: tuple[int, int, int]
    ops: list[ChainOp]
    _keep: list[Any] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        lib = _lib()
        n = len(self.ops)
        self._ops = (_Op * n)()
        for c_op, op in zip(self._ops, self.ops, strict=True):
            c_op.kind, c_op.out_c, c_op.tap = op.kind, op.out_c, op.tap
            c_op.kh, c_op.kw = op.kernel
            c_op.sh, c_op.sw = op.stride
            c_op.ph, c_op.pw = op.padding
            for attr in ("weight", "bias"):
                arr = getattr(op, attr)
                if arr is not None:
                    arr = np.ascontiguousarray(arr, dtype=np.float32)
                    self._keep.append(arr)
                    setattr(c_op, attr, _f32(arr, attr))
        self._chain = _Chain()
        err = ctypes.create_string_buffer(256)
        rc = lib.ift_chain_init(ctypes.byref(self._chain), self._ops, n, *self.in_shape, err, 256)
        if rc != OK:
            raise ValueError(f"chain rejected by the C core: {err.value.decode()}")

    @property
    def row_width(self) -> int:
        return int(self._chain.row_width)

    @property
    def num_classes(self) -> int:
        return int(self._chain.num_classes)

    @property
    def in_size(self) -> int:
        return int(self._chain.in_size)

    @property
    def logit_offset(self) -> int:
        return int(self._chain.logit_offset)

    def segments(self) -> np.ndarray:
        seg = np.zeros((int(self._chain.n_taps), 4), np.int64)
        _lib().ift_chain_segments(ctypes.byref(self._chain), _i64(seg, "seg"))
        return seg

    def _images(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32).reshape(len(images), -1)
        if x.shape[1] != self.in_size:
            raise ValueError(f"images have {x.shape[1]} values per sample, the chain takes {self.in_size}")
        return x

    def fill(self, images: np.ndarray, rows: np.ndarray, threads: int = 1) -> None:
        """rows (n, row_width) float32 = the cache rows of ``images``."""
        x = self._images(images)
        if rows.shape != (len(x), self.row_width):
            raise ValueError(f"rows must be ({len(x)}, {self.row_width}), got {rows.shape}")
        rc = _lib().ift_chain_fill_fp32(
            ctypes.byref(self._chain), _f32(x, "images"), len(x), _f32(rows, "rows", True), threads
        )
        if rc != OK:
            raise MemoryError("C cache fill failed")

    def fill_nf4(
        self, images: np.ndarray, block_size: int, codes: np.ndarray, absmax: np.ndarray, threads: int = 1
    ) -> None:
        """The NF4 cache rows of ``images``, encoded row by row."""
        x = self._images(images)
        nb = -(-self.row_width // block_size)
        if codes.shape != (len(x), nb * block_size // 2) or absmax.shape != (len(x), nb):
            raise ValueError("codes/absmax do not match the chain's row width and block_size")
        rc = _lib().ift_chain_fill_nf4(
            ctypes.byref(self._chain),
            _f32(x, "images"),
            len(x),
            block_size,
            _u8(codes, "codes", True),
            _f32(absmax, "absmax", True),
            threads,
        )
        if rc != OK:
            raise ValueError(f"C NF4 fill failed: {_lib().ift_strerror(rc).decode()}")

    def fill_cache_slots(self, cache: ForwardCache, start: int, images: np.ndarray, threads: int = 1) -> None:
        """The rows of ``images`` straight into ``cache``'s slots ``start..`` (fp32 rows, or NF4
        codes and absmax): a ``write`` of :meth:`instantft.cache.ForwardCache.fill`."""
        n = len(images)
        if cache.width != self.row_width:
            raise ValueError(f"the cache holds rows of {cache.width} values, the chain writes {self.row_width}")
        if cache.storage == "fp32":
            self.fill(images, cache.rows[start : start + n].numpy(), threads)
        else:
            codes, absmax = cache.codes[start : start + n].numpy(), cache.absmax[start : start + n].numpy()
            self.fill_nf4(images, cache.block_size, codes, absmax, threads)

    def rows(self, images: np.ndarray, threads: int = 1) -> np.ndarray:
        out = np.empty((len(images), self.row_width), np.float32)
        self.fill(images, out, threads)
        return out

    def predict(self, images: np.ndarray, adapters: Adapters | None = None, threads: int = 1) -> np.ndarray:
        """Logits (n, C): the base forward, plus scale·Σ B_k A_k x_k when ``adapters`` are given."""
        x = self._images(images)
        out = np.empty((len(x), self.num_classes), np.float32)
        ad = ctypes.byref(adapters.struct) if adapters is not None else None
        rc = _lib().ift_predict(
            ctypes.byref(self._chain), ad, _f32(x, "images"), len(x), _f32(out, "out", True), threads
        )
        if rc != OK:
            raise ValueError(f"C predict failed: {_lib().ift_strerror(rc).decode()}")
        return out


# --- adapters and training ----------------------------------------------------------------------
class Adapters:
    """Packed A (R', D) and B (C, K, R') float32 arrays (trained in place), their segments, and
    the ``ift_adapters`` struct that points at them."""

    def __init__(self, A: np.ndarray, B: np.ndarray, seg: np.ndarray, logit_offset: int, scale: float,
                 rank: int | None = None) -> None:  # fmt: skip
        """``rank``: the adapters' own rank (R' rounded it up to a multiple of 4; default R')."""
        C, K, R = B.shape
        if A.shape[0] != R or seg.shape != (K, 4) or R % 4:
            raise ValueError(f"A {A.shape}, B {B.shape} and segments {seg.shape} do not match (R' a multiple of 4)")
        self.A, self.B, self.seg = A, B, np.ascontiguousarray(seg, dtype=np.int64)
        self.struct = _Adapters(
            K, R, C, A.shape[1], _i64(self.seg, "seg"), _f32(A, "A", True), _f32(B, "B", True), logit_offset, scale
        )
        self.rank = R if rank is None else rank

    @classmethod
    def pack(cls, layout: Layout, A: list[torch.Tensor], B: list[torch.Tensor], scale: float) -> Adapters:
        """The adapters' own tensors (A_k rank × d_k, B_k C × rank) packed by the C core
        (``ift_adapters_pack``, the device program's packing too)."""
        R, K = layout.padded_rank, len(layout.sizes)
        packed = cls(np.empty((R, layout.total_inputs), np.float32), np.empty((layout.num_classes, K, R), np.float32),
                     layout.segments(), layout.logit_offset, scale, layout.rank)  # fmt: skip
        a = [np.ascontiguousarray(t.detach().numpy(), dtype=np.float32) for t in A]
        b = [np.ascontiguousarray(t.detach().numpy(), dtype=np.float32) for t in B]
        packed._check_parts(a, b)
        if _lib().ift_adapters_pack(ctypes.byref(packed.struct), layout.rank, _ptrs(a, False), _ptrs(b, False)) != OK:
            raise ValueError("ift_adapters_pack rejected the adapters")
        return packed

    def unpack(self, A: list[torch.Tensor], B: list[torch.Tensor]) -> None:
        """Copy the packed arrays back into the adapters' own tensors (in place, ``ift_adapters_unpack``)."""
        a = [np.empty(tuple(t.shape), np.float32) for t in A]
        b = [np.empty(tuple(t.shape), np.float32) for t in B]
        self._check_parts(a, b)
        if _lib().ift_adapters_unpack(ctypes.byref(self.struct), self.rank, _ptrs(a, True), _ptrs(b, True)) != OK:
            raise ValueError("ift_adapters_unpack rejected the adapters")
        with torch.no_grad():
            for dst, src in zip([*A, *B], [*a, *b], strict=True):
                dst.copy_(torch.from_numpy(src))

    def _check_parts(self, a: list[np.ndarray], b: list[np.ndarray]) -> None:
        C, K, _ = self.B.shape
        sizes = self.seg[:, 3].tolist()
        if [x.shape for x in a] != [(self.rank, d) for d in sizes] or [x.shape for x in b] != [(C, self.rank)] * K:
            raise ValueError("the adapters' tensors do not match the packed layout")


def _ptrs(arrays: list[np.ndarray], writable: bool) -> Any:
    out = (_f32p * len(arrays))()
    for i, a in enumerate(arrays):
        out[i] = _f32(a, "adapter", writable)
    return out


class CacheView:
    """An ``ift_cache`` view of a :class:`instantft.cache.ForwardCache`'s storage (the arrays
    kept alive here)."""

    def __init__(self, storage: int, width: int, rows: np.ndarray | None = None, codes: np.ndarray | None = None,
                 absmax: np.ndarray | None = None, block_size: int = 0) -> None:  # fmt: skip
        self.arrays = (rows, codes, absmax)
        view = self.struct = _Cache()
        view.storage, view.width = storage, width
        if storage == FP32:
            assert rows is not None
            view.rows, view.capacity = _f32(rows, "rows"), len(rows)
        else:
            assert codes is not None and absmax is not None
            view.codes, view.absmax, view.capacity = _u8(codes, "codes"), _f32(absmax, "absmax"), len(codes)
            view.block_size, view.blocks = block_size, absmax.shape[1]
        view.count = view.capacity

    @classmethod
    def of(cls, cache: ForwardCache) -> CacheView:
        if cache.storage == "fp32":
            return cls(FP32, cache.width, rows=cache.rows.numpy())
        return cls(NF4, cache.width, codes=cache.codes.numpy(), absmax=cache.absmax.numpy(),
                   block_size=cache.block_size)  # fmt: skip


class Training:
    """One run's ``ift_train_args``: the cache, the data rows, the schedule ``(order, offsets)``
    (step s trains on rows ``order[offsets[s]:offsets[s+1]]``), where the losses go, the learning rate."""

    def __init__(
        self,
        cache: CacheView,
        images: np.ndarray | None,
        slot_of: np.ndarray,
        labels: np.ndarray,
        schedule: tuple[np.ndarray, np.ndarray],
        losses: np.ndarray,
        lr: float,
        threads: int = 1,
    ) -> None:
        order, offsets = schedule
        if losses.dtype != np.float64 or losses.shape[0] < len(offsets) - 1:
            raise ValueError("losses must be float64 with one entry per step")
        x = None if images is None else np.ascontiguousarray(images, dtype=np.float32).reshape(len(images), -1)
        keep = [np.ascontiguousarray(a, dtype=np.int64) for a in (slot_of, labels, order, offsets)]
        self._keep = (cache, x, keep, losses)
        self.struct = _TrainArgs(
            ctypes.pointer(cache.struct), _f32(x, "images"), 0 if x is None else x.shape[1],
            *(_i64(a, name) for a, name in zip(keep, ("slot_of", "labels", "order", "offsets"), strict=True)),
            len(offsets) - 1, _ptr(losses, np.float64, ctypes.c_double, "losses", True), lr, threads,
        )  # fmt: skip

    def steps(self, adapters: Adapters, first: int, last: int) -> tuple[int, int]:
        """Steps ``first..last-1``; returns (steps done, status): ``OK``, ``ELOSS`` (stopped after
        the first non-finite loss) or ``EPARAM`` (A or B non-finite after the last update)."""
        status = ctypes.c_int(EINVAL)
        done = _lib().ift_train(ctypes.byref(adapters.struct), ctypes.byref(self.struct), first, last,
                                ctypes.byref(status))  # fmt: skip
        if status.value == EINVAL:
            raise ValueError("ift_train rejected its arguments (segments, shapes or schedule)")
        if status.value == ENOMEM:
            raise MemoryError("ift_train: out of memory")
        return int(done), int(status.value)


# --- dumps for the C test and bench programs ----------------------------------------------------
#: named arrays for csrc/test_core.c and csrc/bench/bench_core.c: a safetensors file (read there
#: with the device program's reader) of float32, int64, uint8 and float64 tensors
DUMP_FORMAT = "instantft-dump/2"
DUMP_DTYPES = (np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.uint8), np.dtype(np.float64))


def write_dump(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    for name, a in arrays.items():
        if a.dtype not in DUMP_DTYPES:
            raise ValueError(f"{name}: dtype {a.dtype} is not one the C programs read")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata={"format": DUMP_FORMAT})


def read_dump(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        if (f.metadata() or {}).get("format") != DUMP_FORMAT:
            raise ValueError(f"{path}: not an instantft array dump ({DUMP_FORMAT})")
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def chain_arrays(chain: Chain) -> dict[str, np.ndarray]:
    """A chain as dump arrays: ``in_shape``, ``ops`` (n × 9: kind, out_c, kh, kw, sh, sw, ph, pw, tap),
    ``w{i}`` and ``b{i}``."""
    out: dict[str, np.ndarray] = {"in_shape": np.array(chain.in_shape, np.int64)}
    out["ops"] = np.array([[o.kind, o.out_c, *o.kernel, *o.stride, *o.padding, o.tap] for o in chain.ops], np.int64)
    for i, op in enumerate(chain.ops):
        if op.weight is not None:
            out[f"w{i}"] = np.ascontiguousarray(op.weight, np.float32).ravel()
        if op.bias is not None:
            out[f"b{i}"] = np.ascontiguousarray(op.bias, np.float32).ravel()
    return out


__all__ = [
    "Adapters",
    "CacheView",
    "Chain",
    "ChainOp",
    "Training",
    "available",
    "build_info",
    "chain_arrays",
    "decode_rows",
    "encode_nf4",
    "library",
    "read_dump",
    "write_dump",
]
