"""The C core (csrc/): its test program against the golden dump of the Python reference (also
under AddressSanitizer + UBSan, on each instruction set, and for aarch64 under qemu), and from
Python through ctypes: NF4 bit-identical to instantft.nf4, chain fills equal to the backbone's
trace, training equal to the reference loop. No timing here (that is ``instantft bench``)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from instantft import nf4
from instantft.adapters import SkipAdapters
from instantft.backbones import Backbone, create_backbone
from instantft.engine import cengine
from instantft.engine.chain import chain_for
from instantft.engine.layout import Layout
from instantft.training import FineTuneConfig

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
GOLDEN = ROOT / "tests" / "golden" / "core_small.safetensors"
SOURCES = [CSRC / "test_core.c", CSRC / "core.c", CSRC / "nf4.c"]
WARN = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-psabi", "-ffp-contract=fast", f"-I{CSRC}"]

needs_lib = pytest.mark.skipif(not cengine.available(), reason="the C core was not built at install (no compiler)")


def _golden_module():
    spec = importlib.util.spec_from_file_location("write_golden", ROOT / "tests" / "golden" / "write_golden.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["write_golden"] = mod
    spec.loader.exec_module(mod)
    return mod


def _cc() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _build(tmp: Path, name: str, flags: list[str], cc: str | None = None) -> Path:
    cc = cc or _cc()
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp / name
    cmd = [cc, *WARN, *flags, *map(str, SOURCES), "-o", str(exe), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return exe


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed: 0 failure(s)" in res.stdout
    return res.stdout


# --- the golden dump --------------------------------------------------------------------------------
def test_golden_dump_is_what_the_reference_writes_today():
    """The committed dump equals a fresh one from the Python reference (so it cannot go stale)."""
    wg = _golden_module()
    fresh, committed = wg.build(), wg.read(GOLDEN)
    assert sorted(fresh) == sorted(committed)
    for name, want in committed.items():
        got, want = fresh[name].ravel(), want.ravel()
        if want.dtype.kind in "iu":
            if name != "rows_codes":  # codes of torch-computed rows may flip at a boundary on another CPU
                np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            scale = max(float(np.abs(want).max()), 1e-30)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=name)
    rows = torch.from_numpy(committed["rows"]).view(len(committed["labels"]), -1)
    np.testing.assert_array_equal(nf4.quantize(rows).codes.numpy().ravel(), committed["rows_codes"].ravel())


# --- the C test program -------------------------------------------------------------------------------
def test_c_program_matches_the_golden_dump(tmp_path: Path):
    omp = (
        ["-fopenmp"]
        if subprocess.run([_cc() or "cc", "-fopenmp", "-E", "-x", "c", os.devnull], capture_output=True).returncode == 0
        else []
    )
    exe = _build(tmp_path, "test_core", ["-O2", *omp])
    out = _run([str(exe), str(GOLDEN)])
    assert "NF4 codes bit-identical" in out and "nf4 training: A" in out
    for isa in ("generic", "avx2"):  # the lower instruction sets the dispatcher can pick (x86)
        _run([str(exe), str(GOLDEN)], {"IFT_ISA": isa})


def test_c_program_under_address_and_ub_sanitizers(tmp_path: Path):
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    probe = subprocess.run(
        [_cc() or "cc", *flags, "-x", "c", "-", "-o", str(tmp_path / "probe")],
        input="int main(void){return 0;}",
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"the compiler cannot build with -fsanitize=address,undefined: {probe.stderr.strip()[:200]}")
    exe = _build(tmp_path, "test_core_asan", flags)
    for isa in ("", "generic", "avx2"):
        _run(
            [str(exe), str(GOLDEN)],
            {"IFT_ISA": isa, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1"},
        )


def test_c_program_on_aarch64_under_qemu(tmp_path: Path):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if cc is None or qemu is None:
        pytest.skip("aarch64 test skipped: needs the Debian packages gcc-aarch64-linux-gnu and qemu-user")
    exe = _build(tmp_path, "test_core_aarch64", ["-O2", "-mcpu=cortex-a53"], cc=cc)
    out = _run([qemu, "-L", "/usr/aarch64-linux-gnu", str(exe), str(GOLDEN)])
    assert "kernels: neon" in out


# --- from Python ----------------------------------------------------------------------------------------
@needs_lib
def test_the_library_is_plain_c():
    """No Python symbol in the shared library: the same sources build the device program."""
    nm, path = shutil.which("nm"), cengine.library_path()
    if nm is None or path is None:
        pytest.skip("nm not available")
    undefined = subprocess.run([nm, "-D", "--undefined-only", path], capture_output=True, text=True).stdout
    assert "Py" not in undefined
    assert cengine.build_info().split("+")[0] in {"avx512", "avx2", "generic", "neon"}


@needs_lib
@pytest.mark.parametrize(("rows", "width", "block"), [(5, 1790, 64), (3, 37, 64), (4, 100, 16), (2, 64, 2)])
def test_nf4_bit_identical_to_python(rows: int, width: int, block: int):
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(rows, width, generator=gen) * torch.rand(rows, 1, generator=gen) * 5
    x[0] = x[0].clamp(min=0)  # a ReLU-like row: the encoder's non-negative shortcut
    x[-1, : width // 2] = 0.0
    q = nf4.quantize(x, block)
    codes, absmax = np.empty_like(q.codes.numpy()), np.empty_like(q.absmax.numpy())
    cengine.encode_nf4(x.numpy(), block, codes, absmax)
    np.testing.assert_array_equal(codes, q.codes.numpy())
    np.testing.assert_array_equal(absmax, q.absmax.numpy())
    out = np.empty((rows, width), np.float32)
    cengine.decode_rows(codes, absmax, block, np.arange(rows), out)
    np.testing.assert_array_equal(out, nf4.dequantize(q).numpy())


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(5, 4, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(64, 10),
    )
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(-2, 2)
    return net.eval()


CHAINS = {
    "lenet5-mnist": lambda: create_backbone("lenet5-mnist"),
    "lenet5-svhn": lambda: create_backbone("lenet5-svhn"),
    "mlp-mnist": lambda: create_backbone("mlp-mnist"),
    "sequential-bn": lambda: Backbone(_bn_net(), example=(3, 16, 16)),
    "lenet5-explicit-taps": lambda: create_backbone("lenet5-mnist", taps=["conv2", "fc2"]),
}


@needs_lib
@pytest.mark.parametrize("name", list(CHAINS))
def test_chain_fill_equals_the_backbone_trace(name: str):
    torch.manual_seed(0)
    bb = CHAINS[name]()
    chain = chain_for(bb)
    assert chain is not None
    x = torch.rand(9, *bb.input_shape)
    taps, logits = bb.trace(x)
    want = torch.cat([t for t, tap in zip(taps, bb.taps, strict=True) if not tap.is_model_input] + [logits], 1)
    for threads in (1, 2):
        np.testing.assert_allclose(chain.rows(x.numpy(), threads), want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(chain.segments(), Layout.for_backbone(bb, 4).segments())
    np.testing.assert_allclose(chain.predict(x.numpy()), logits.numpy(), rtol=1e-5, atol=1e-5)


@needs_lib
def test_what_is_not_a_chain_is_refused():
    assert chain_for(create_backbone("resnet8-mnist")) is None  # residual adds
    sig = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 3))
    assert chain_for(Backbone(sig, example=(1, 4, 4))) is None  # an op the core does not have
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 3))
    assert chain_for(Backbone(grouped, example=(2, 4, 4))) is None
    bn_in = Backbone(_bn_net(), taps=["1"], example=(3, 16, 16))  # the folded BatchNorm's input is gone
    assert chain_for(bn_in) is None


def _reference_and_c(storage: str, threads: int):
    """Train LeNet-5's skip adapters on one random batch schedule with the reference SkipAdapters
    loop and with the C core from the same start; return both adapter sets."""
    torch.manual_seed(0)
    bb = create_backbone("lenet5-mnist")
    gen = torch.Generator().manual_seed(1)
    n = 60
    images = torch.rand(n, 1, 28, 28, generator=gen).sub_(0.6).clamp_(min=0).mul_(2.5)
    labels = torch.randint(0, 10, (n,), generator=gen)
    config = FineTuneConfig(rank=4, lr=0.1, batch_size=20)
    ref = SkipAdapters(bb.sizes, bb.num_classes, config, torch.Generator().manual_seed(2))
    layout = Layout.for_backbone(bb, config.rank)
    A, B = (t.numpy().copy() for t in layout.pack(ref.A, ref.B))
    taps, logits = bb.trace(images)
    rows = torch.cat([*taps[1:], logits], 1)
    if storage == "nf4":
        q = nf4.quantize(rows)
        parts = torch.split(nf4.dequantize(q), [*bb.cache_sizes], dim=1)
        taps, logits = [taps[0], *parts[:-1]], parts[-1]
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(3)])
    offsets = np.arange(0, 3 * n + 1, 20, dtype=np.int64)
    for a, b in itertools.pairwise(offsets):
        idx = order[a:b]
        ref.sgd_step([t[idx] for t in taps], logits[idx], labels[idx], config.lr)
    losses = np.full(len(offsets) - 1, np.nan)
    if storage == "fp32":
        view = cengine.CacheView(cengine.FP32, rows.shape[1], rows=rows.numpy())
    else:
        view = cengine.CacheView(cengine.NF4, rows.shape[1], codes=q.codes.numpy(), absmax=q.absmax.numpy(),
                                 block_size=q.block_size)  # fmt: skip
    adapters = cengine.Adapters(A, B, layout.segments(), layout.logit_offset, config.scale)
    run = cengine.Training(view, images.reshape(n, -1).numpy(), np.arange(n), labels.numpy(), (order.numpy(), offsets),
                           losses, config.lr, threads)  # fmt: skip
    done, status = run.steps(adapters, 0, len(offsets) - 1)
    assert done == len(offsets) - 1 and status == cengine.OK and np.isfinite(losses).all()
    return layout.pack(ref.A, ref.B), (torch.from_numpy(A), torch.from_numpy(B))


@needs_lib
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("storage", ["fp32", "nf4"])
def test_c_training_equals_the_reference_loop(storage: str, threads: int):
    (ra, rb), (ca, cb) = _reference_and_c(storage, threads)
    for ref, got in ((ra, ca), (rb, cb)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@needs_lib
def test_c_training_reports_an_overflowing_last_update():
    """A finite loss whose update overflows must not pass as a finished run."""
    A = np.full((4, 8), 0.5, np.float32)
    B = np.full((2, 1, 4), 0.5, np.float32)
    rows = np.array([[1e3, -1e3]], np.float32)
    images = np.ones((1, 8), np.float32)
    seg = np.array([[0, 0, 0, 8]], np.int64)
    losses = np.full(1, np.nan)
    schedule = (np.zeros(1, np.int64), np.array([0, 1], np.int64))
    view = cengine.CacheView(cengine.FP32, 2, rows=rows)
    run = cengine.Training(view, images, np.zeros(1, np.int64), np.zeros(1, np.int64), schedule, losses, 3e38)
    done, status = run.steps(cengine.Adapters(A, B, seg, 0, 2.0), 0, 1)
    assert done == 1 and np.isfinite(losses[0]) and status == cengine.EPARAM
    assert not np.isfinite(A).all()


@needs_lib
def test_the_python_structs_match_the_library():
    """The ctypes mirrors agree with ift_layout_info (checked at every load; a mismatch refuses)."""
    lib = cengine.library()
    assert lib is not None
    assert cengine.parse_layout(lib.ift_layout_info().decode()) == cengine.python_layout()


@needs_lib
def test_a_library_with_another_layout_is_refused(monkeypatch: pytest.MonkeyPatch):
    class Lied:
        @staticmethod
        def ift_layout_info() -> bytes:
            return b"ift_op 88 kind:0\n"

    with pytest.raises(cengine.LayoutMismatch, match="struct ift_op is"):
        cengine.check_layout(Lied(), "libfake.so")  # type: ignore[arg-type]


@needs_lib
@pytest.mark.parametrize("rank", [1, 3, 4, 6])
def test_packing_round_trips(rank: int):
    """ift_adapters_pack / _unpack (the one packing, Python's and the device's): every element
    lands where the segments say, the rank padding is zero, and unpacking gives the tensors back."""
    bb = create_backbone("mlp-mnist")
    layout = Layout.for_backbone(bb, rank)
    gen = torch.Generator().manual_seed(rank)
    A = [torch.randn(rank, d, generator=gen) for d in layout.sizes]
    B = [torch.randn(bb.num_classes, rank, generator=gen) for _ in layout.sizes]
    a, b = layout.pack(A, B)
    assert a.shape == (layout.padded_rank, layout.total_inputs)
    assert b.shape == (bb.num_classes, len(A), layout.padded_rank)
    for k, (lo, hi) in enumerate(layout.columns):
        assert torch.equal(a[:rank, lo:hi], A[k]) and torch.equal(b[:, k, :rank], B[k])
    assert not a[rank:].any() and not b[:, :, rank:].any()
    A2, B2 = [torch.zeros_like(t) for t in A], [torch.zeros_like(t) for t in B]
    layout.unpack(a, b, A2, B2)
    assert all(torch.equal(x, y) for x, y in zip([*A, *B], [*A2, *B2], strict=True))
