"""The fixed-point datapath: every primitive bit-exact against APyTypes (an independent
arbitrary-precision fixed-point library, test-only), the NF4 codec against exact rationals, the
fine-tune with wide formats against float InstantFT, and the counters on a too-narrow format."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from apytypes import APyFixedArray, OverflowMode, QuantizationMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instantft import nf4
from instantft.cli import main
from instantft.errors import InstantFTError
from instantft.fixedpoint import FixedPointConfig, QFormat
from instantft.fixedpoint.memory import memory_estimate, memory_markdown
from instantft.fixedpoint.nf4_codec import LEVEL_FORMAT, LEVELS, decode, encode, entry_bits
from instantft.fixedpoint.ops import (
    Counters,
    Into,
    add,
    divide,
    matmul,
    mul,
    quantize,
    requantize,
    round_shift,
    saturate,
    to_float,
)
from instantft.fixedpoint.softmax import build_tables, softmax
from instantft.methods import FineTuneConfig, create
from instantft.methods.fixed_point import FixedPointInstantFT
from instantft.models import accuracy, build, save_checkpoint
from instantft.settings import Runtime

QMODE = {"truncate": QuantizationMode.TRN, "round-half-up": QuantizationMode.RND}
ROUNDING = st.sampled_from(["truncate", "round-half-up"])
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small integer and float ops: one thread is faster, and immune to OpenMP barrier stalls."""
    from instantft.machine import torch_threads

    with torch_threads(1):
        yield


# --- oracle helpers -------------------------------------------------------------------------------
def apy(w: torch.Tensor, fmt: QFormat) -> APyFixedArray:
    """Words -> an APyTypes array of the same format (from two's-complement bit patterns)."""
    mask = (1 << fmt.bits) - 1
    bits = np.array([int(v) & mask for v in w.flatten().tolist()], dtype=object).reshape(tuple(w.shape))
    return APyFixedArray(bits.tolist(), int_bits=fmt.int_bits, frac_bits=fmt.frac_bits)


def words(x: APyFixedArray, fmt: QFormat) -> torch.Tensor:
    """An APyTypes array of format ``fmt`` -> signed words."""
    flat = np.array(x.to_bits(), dtype=object).flatten().tolist()
    signed = [b - (1 << fmt.bits) if b >> (fmt.bits - 1) else b for b in flat]
    return torch.tensor(signed, dtype=torch.int64).reshape(x.shape)


def cast(x: APyFixedArray, fmt: QFormat, rounding: str) -> torch.Tensor:
    """Round into ``fmt``'s fraction bits, then saturate: two casts, because APyTypes 0.5.1 gets
    the sign wrong when one cast both shifts left far and saturates
    (``APyFixedArray([2**33 - 5], int_bits=64, frac_bits=0).cast(1, 35, TRN, SAT)`` gives -1)."""
    rounded = x.cast(max(x.int_bits, fmt.int_bits) + 2, fmt.frac_bits, QMODE[rounding], OverflowMode.WRAP)
    return words(rounded.cast(fmt.int_bits, fmt.frac_bits, QuantizationMode.TRN, OverflowMode.SAT), fmt)


@st.composite
def formats(draw, max_bits: int = 48) -> QFormat:
    i = draw(st.integers(1, min(24, max_bits - 1)))
    f = draw(st.integers(0, max_bits - i))
    return QFormat(i, f)


@st.composite
def word_arrays(draw, fmt: QFormat, shape: tuple[int, ...]) -> torch.Tensor:
    """Random words with the edges (min, max, 0, ±1) well represented."""
    n = math.prod(shape)
    picks = [fmt.min_int, fmt.max_int, 0, 1, -1, fmt.min_int + 1, fmt.max_int - 1]
    edges = st.sampled_from([v for v in picks if fmt.min_int <= v <= fmt.max_int])  # Q1.0 holds only -1 and 0
    vals = draw(st.lists(st.one_of(st.integers(fmt.min_int, fmt.max_int), edges), min_size=n, max_size=n))
    return torch.tensor(vals, dtype=torch.int64).reshape(shape)


# --- formats --------------------------------------------------------------------------------------
def test_format_parsing_and_limits():
    q = QFormat.parse("Q8.16")
    assert (q.int_bits, q.frac_bits, q.bits, q.min_int, q.max_int) == (8, 16, 24, -(2**23), 2**23 - 1)
    assert str(QFormat.parse("q4.12")) == "Q4.12"
    for bad in ["8.16", "Q8", "Q0.8", "Q30.30"]:
        with pytest.raises(InstantFTError):
            QFormat.parse(bad)
    with pytest.raises(InstantFTError):
        FixedPointConfig(softmax_table_size=1000)
    with pytest.raises(InstantFTError):
        FixedPointConfig(softmax_range=6.0)
    assert FixedPointConfig(param_format="q6.10").param == QFormat(6, 10)
    assert FixedPointConfig(param_format="q6.10").param_format == "Q6.10"


# --- primitives vs APyTypes -----------------------------------------------------------------------
FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(-300, 300),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.0**-17, -(2.0**-17), 3 * 2.0**-18, 5e-324]),
)


@FAST
@given(fmt=formats(), xs=st.lists(FLOATS, min_size=1, max_size=20), rounding=ROUNDING)
def test_quantize_matches_apytypes(fmt: QFormat, xs: list[float], rounding: str):
    x = torch.tensor(xs, dtype=torch.float64)
    exact = APyFixedArray.from_float(np.array(xs), int_bits=1100, frac_bits=1100)  # every float64, exactly
    c = Counters()
    got = quantize(x, fmt, rounding, c, "x")
    assert torch.equal(got, cast(exact, fmt, rounding))
    ref = [Fraction(v) * 2**fmt.frac_bits for v in xs]
    # saturation is decided on the rounded word (Q1.0: 0.5 rounds half up to 1, past the top 0)
    words = [math.floor(v + Fraction(1, 2)) if rounding == "round-half-up" else math.floor(v) for v in ref]
    assert c.tensors["x"].saturated == sum(1 for w in words if w > fmt.max_int or w < fmt.min_int)
    assert c.tensors["x"].underflow == int(((x != 0) & (got == 0)).sum())


@FAST
@given(data=st.data(), rounding=ROUNDING)
def test_mul_matches_apytypes(data, rounding: str):
    fa, fb, fo = data.draw(formats()), data.draw(formats()), data.draw(formats())
    a = data.draw(word_arrays(fa, (12,)))
    b = data.draw(word_arrays(fb, (12,)))
    got = mul(a, fa, b, fb, fo, rounding)
    assert torch.equal(got, cast(apy(a, fa) * apy(b, fb), fo, rounding))


@FAST
@given(data=st.data(), rounding=ROUNDING, with_bias=st.booleans())
def test_matmul_matches_apytypes(data, rounding: str, with_bias: bool):
    """The MAC, including the 48-bit formats that need the digit-wise exact accumulator."""
    fa, fb, fo = data.draw(formats()), data.draw(formats()), data.draw(formats())
    m, k, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 9)), data.draw(st.integers(1, 3))
    a = data.draw(word_arrays(fa, (m, k)))
    b = data.draw(word_arrays(fb, (k, n)))
    ref = apy(a, fa) @ apy(b, fb)
    bias = None
    if with_bias:
        bias = data.draw(word_arrays(fb, (n,)))
        ref = ref + apy(bias.reshape(1, n).expand(m, n).contiguous(), fb)
    got = matmul(a, fa, b, fb, Into(fo, rounding), bias=bias)
    assert torch.equal(got, cast(ref, fo, rounding))


@FAST
@given(
    v=st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=20),
    frac=st.integers(0, 62),
    fmt=formats(),
    rounding=ROUNDING,
)
def test_requantize_shift_and_saturate_match_apytypes(v: list[int], frac: int, fmt: QFormat, rounding: str):
    """A word with ``frac`` fraction bits shifted (either way) into ``fmt``: round, then saturate."""
    t = torch.tensor(v, dtype=torch.int64)
    wide = QFormat.__new__(QFormat)  # a 64-bit format outside the datapath's limit, for the oracle only
    object.__setattr__(wide, "int_bits", 64 - frac)
    object.__setattr__(wide, "frac_bits", frac)
    c = Counters()
    got = requantize(t, frac, fmt, rounding, c, "r")
    assert torch.equal(got, cast(apy(t, wide), fmt, rounding))
    shifted = round_shift(t, frac - fmt.frac_bits, rounding)
    assert c.tensors["r"].saturated == int(((shifted > fmt.max_int) | (shifted < fmt.min_int)).sum())
    assert c.tensors["r"].underflow == int(((t != 0) & (got == 0)).sum())


@FAST
@given(data=st.data())
def test_saturate_matches_apytypes(data):
    fmt = data.draw(formats(max_bits=40))
    big = QFormat(fmt.int_bits + 8, fmt.frac_bits)
    v = data.draw(word_arrays(big, (16,)))
    got, mask = saturate(v, fmt)
    ref = cast(apy(v, big), fmt, "truncate")
    assert torch.equal(got, ref)
    assert torch.equal(mask, got != v)


def test_round_shift_ties_and_negative_values():
    v = torch.tensor([-6, -5, -3, -2, -1, 1, 2, 3, 5, 6])  # /4: -1.5 -1.25 -0.75 -0.5 -0.25 ...
    assert round_shift(v, 2, "truncate").tolist() == [-2, -2, -1, -1, -1, 0, 0, 0, 1, 1]
    assert round_shift(v, 2, "round-half-up").tolist() == [-1, -1, -1, 0, 0, 0, 1, 1, 1, 2]
    assert round_shift(torch.tensor([3, -3]), -4, "truncate").tolist() == [48, -48]


@FAST
@given(data=st.data(), divisor=st.integers(1, 64), rounding=ROUNDING)
def test_divide_matches_exact_rationals(data, divisor: int, rounding: str):
    fa, fo = data.draw(formats(max_bits=40)), data.draw(formats(max_bits=40))
    a = data.draw(word_arrays(fa, (10,)))
    got = divide(a, fa, divisor, fo, rounding)
    for q, g in zip(a.tolist(), got.tolist(), strict=True):
        x = Fraction(q, 2**fa.frac_bits * divisor) * 2**fo.frac_bits
        r = math.floor(x) if rounding == "truncate" else math.floor(x + Fraction(1, 2))
        assert g == min(max(r, fo.min_int), fo.max_int)


def test_add_saturates_and_counts():
    fmt = QFormat(4, 4)
    c = Counters()
    out = add(torch.tensor([100, -100, 5]), torch.tensor([100, -100, 5]), fmt, c, "s")
    assert out.tolist() == [127, -128, 10]
    assert c.tensors["s"].saturated == 2


# --- table softmax vs an APyTypes implementation of the same tables -------------------------------
def oracle_softmax(y: torch.Tensor, fmt: QFormat, size: int, rng: float, rounding: str, classes: int):
    """The table softmax spelled out with exact rationals and APyTypes arithmetic."""
    w = Fraction(rng) / size
    sum_range = 1 << (classes - 1).bit_length()
    v = Fraction(sum_range, size)

    def entry(x: float) -> torch.Tensor:
        exact = APyFixedArray.from_float(np.array([x]), int_bits=1100, frac_bits=1100)
        return cast(exact, fmt, rounding)[0]

    exp_table = [entry(math.exp(-(i + 0.5) * (rng / size))) for i in range(size)]
    first = min(math.floor(Fraction(int(exp_table[0]), 2**fmt.frac_bits) / v), size - 1)
    out = []
    for row in y.tolist():
        top = max(row)
        idx = [min(math.floor(Fraction(top - q, 2**fmt.frac_bits) / w), size - 1) for q in row]
        e = torch.stack([exp_table[i] for i in idx])
        total = int(cast(apy(e.reshape(1, -1), fmt).sum(axis=1), fmt, "truncate")[0])  # exact, saturating
        j = min(math.floor(Fraction(total, 2**fmt.frac_bits) / v), size - 1)
        recip = entry(1.0 / ((max(j, first) + 0.5) * (sum_range / size)))
        p = apy(e, fmt) * apy(recip.reshape(1), fmt)
        out.append(cast(p, fmt, rounding))
    return torch.stack(out)


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    size=st.sampled_from([16, 64, 1024]),
    rng=st.sampled_from([4.0, 8.0, 16.0]),
    classes=st.sampled_from([2, 3, 10]),
    rounding=ROUNDING,
)
def test_table_softmax_matches_apytypes(data, size: int, rng: float, classes: int, rounding: str):
    fmt = data.draw(st.sampled_from([QFormat(8, 16), QFormat(6, 10), QFormat(10, 20), QFormat(4, 8)]))
    config = FixedPointConfig(act_format=str(fmt), rounding=rounding, softmax_table_size=size, softmax_range=rng)
    lim = min(fmt.max_int, 20 << fmt.frac_bits)  # logits within ±20 and the format's edges
    y = data.draw(word_arrays(QFormat(fmt.int_bits, fmt.frac_bits), (3, classes))).clamp(-lim, lim)
    tables = build_tables(config, classes)
    got = softmax(y, tables, rounding)
    assert torch.equal(got, oracle_softmax(y, fmt, size, rng, rounding, classes))


def test_table_softmax_is_close_to_softmax_and_counts_clamped_inputs():
    config = FixedPointConfig()
    y = torch.tensor([[0.0, 1.0, -2.0, 3.5, -20.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    c = Counters()
    p = softmax(quantize(y, config.act, "round-half-up"), build_tables(config, 5), "round-half-up", c)
    assert torch.allclose(to_float(p, config.act), torch.softmax(y.double(), 1), atol=5e-3)
    assert c.tensors["softmax.exp_index"].saturated == 1  # -20 is 23.5 below the max: beyond range 8


# --- NF4 cache codec ------------------------------------------------------------------------------
MIDPOINTS = [Fraction(int(lo) + int(hi), 2 ** (LEVEL_FORMAT.frac_bits + 1)) for lo, hi in itertools.pairwise(LEVELS)]


def nearest_level_code(q: int, a: int) -> int:
    """The float codec's rule, exactly: nearest of the (rounded) levels to q/a, ties to the lower."""
    return 0 if a == 0 else sum(1 for t in MIDPOINTS if Fraction(q, a) > t)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), rounding=ROUNDING)
def test_nf4_codec_picks_the_nearest_level_and_dequantises_exactly(data, rounding: str):
    fmt = data.draw(st.sampled_from([QFormat(8, 16), QFormat(4, 6), QFormat(16, 28), QFormat(16, 32)]))
    width = data.draw(st.integers(1, 80))
    rows = data.draw(word_arrays(fmt, (2, width)))
    c = Counters()
    packed, absmax = encode(rows, fmt, c)
    assert packed.shape == (2, nf4.blocks_for(width) * 32)
    codes = nf4.unpack_codes(packed)
    for r in range(2):
        for i in range(width):
            a = int(absmax[r, i // 64])
            assert a == min(int(rows[r, (i // 64) * 64 : (i // 64 + 1) * 64].abs().max()), fmt.max_int)
            if fmt.bits <= 45:
                assert int(codes[r, i]) == nearest_level_code(int(rows[r, i]), a)
    padded = torch.zeros(2, nf4.blocks_for(width) * 64, dtype=torch.int64)
    padded[:, :width] = rows
    assert c.tensors["nf4.absmax"].saturated == int((padded.view(2, -1, 64) == fmt.min_int).any(-1).sum())
    got = decode(packed, absmax, width, fmt, rounding)
    ref = cast(apy(LEVELS[codes].reshape(2, -1, 64), LEVEL_FORMAT) * apy(absmax.unsqueeze(-1), fmt), fmt, rounding)
    assert torch.equal(got, ref.reshape(2, -1)[:, :width])


def test_nf4_codec_agrees_with_the_float_codec():
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 3
    fmt = QFormat(8, 16)
    q = quantize(x, fmt, "round-half-up")
    packed, absmax = encode(q, fmt)
    ref = nf4.quantize(to_float(q, fmt).float())
    agree = (nf4.unpack_codes(packed) == nf4.unpack_codes(ref.codes)).float().mean()
    assert agree > 0.999  # only values within float32 rounding of a threshold may differ
    back = to_float(decode(packed, absmax, 300, fmt, "round-half-up"), fmt)
    assert torch.allclose(back.float(), nf4.dequantize(ref), atol=1e-3)
    assert entry_bits(1790, fmt) == 28 * 64 * 4 + 28 * 24


# --- the fine-tune --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone():
    """A fixed random LeNet-5 (the numerics do not need a trained one; this keeps the test standalone)."""
    torch.manual_seed(0)
    return build("lenet5-mnist").eval()


@pytest.fixture(scope="module")
def task():
    from instantft.data import make_task

    return make_task("rotmnist", angle=45, samples=80, seed=0, eval_samples=100)


def test_wide_formats_track_float_instantft(backbone, task):
    """Q16.32 everywhere and fine softmax tables: the integer datapath follows the float method."""
    config = FineTuneConfig(epochs=2, seed=3, lr=0.1)
    fixed = FixedPointConfig(act_format="Q16.32", param_format="Q16.32", softmax_table_size=1 << 14,
                             softmax_range=16.0)  # fmt: skip
    fl = create("instantft", backbone, config, runtime=Runtime(engine="reference"))  # the plain float loop
    fl.fit(task.finetune)
    fx = FixedPointInstantFT(backbone, config, fixed=fixed)
    res = fx.fit(task.finetune)
    assert res.steps == 8 and fx.counters.total("saturated") == fx.counters.tensors["softmax.exp_index"].saturated
    for name, ref in fl.trainable().items():
        got = fx.trainable()[name]
        assert torch.allclose(got, ref, rtol=0, atol=2e-3 * float(ref.abs().max()) + 1e-6), name
    images, labels = task.evaluate.images, task.evaluate.labels
    lf, lx = fl.logits(images), fx.logits(images)
    assert (lf - lx).abs().max() < 2e-3 * lf.abs().max()
    assert abs(accuracy(lf, labels) - accuracy(lx, labels)) <= 0.01


def test_default_formats_train_and_narrow_formats_saturate(backbone, task):
    config = FineTuneConfig(epochs=1, seed=0)
    ok = FixedPointInstantFT(backbone, config)
    ok.fit(task.finetune)
    assert {"conv1.out", "skip1.dA", "grad.output", "nf4.dequant"} <= set(ok.counters.tensors)
    narrow = FixedPointInstantFT(backbone, config, fixed=FixedPointConfig(act_format="Q1.8", param_format="Q2.6"))
    narrow.fit(task.finetune)
    sat = narrow.counters.saturating()
    assert "input" in sat or "conv1.out" in sat  # activations clipped at ±1 (pixels reach 1.0)
    assert narrow.counters.tensors["param.fc1.weight"].underflow > 0  # weights below 2^-7 vanish
    assert narrow.counters.total("saturated") > 0 and narrow.counters.total("underflow") > 0


def test_fixed_method_is_instantft_only(backbone):
    from instantft.methods import create

    with pytest.raises(InstantFTError, match="implemented for instantft"):
        create("lora-all", backbone, FineTuneConfig(), fixed=FixedPointConfig())


def test_cli_fixed_run_records_numerics_counters_and_memory(backbone, tmp_path, capsys):
    ckpt = tmp_path / "b.safetensors"
    save_checkpoint(ckpt, backbone, {"dataset": "mnist"})
    common = ["finetune", "--dataset", "rotmnist", "--checkpoint", str(ckpt), "--samples", "60"]
    common += ["--eval-samples", "50", "--epochs", "1", "--json"]
    assert main([*common, "--method", "instantft", "--numerics", "fixed", "--param-format", "Q6.10"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["numerics"] == "fixed"
    fx = rec["fixed_point"]
    assert (fx["act_format"], fx["param_format"], fx["rounding"]) == ("Q8.16", "Q6.10", "round-half-up")
    assert "conv1.out" in fx["counters"] and fx["memory"]["total_bits"] > 0
    assert main([*common, "--method", "lora-all", "--numerics", "fixed"]) == 2
    assert "implemented for instantft" in capsys.readouterr().err


def test_fixed_point_runs_on_any_chain_backbone_and_refuses_others(task):
    """The integer datapath is the core's op chain, not LeNet-5's: the bundled MLP runs it (and a
    wide format tracks float InstantFT there too); a residual network is refused in one line."""
    from instantft.methods import create
    from instantft.models import build
    from instantft.settings import Runtime

    mlp = build("mlp-mnist").eval()
    config = FineTuneConfig(epochs=1, seed=1, lr=0.05)
    wide = FixedPointConfig(act_format="Q16.32", param_format="Q16.32", softmax_table_size=1 << 14,
                            softmax_range=16.0)  # fmt: skip
    fx = create("instantft", mlp, config, fixed=wide)
    fl = create("instantft", mlp, config, runtime=Runtime(engine="reference"))
    fx.fit(task.finetune)
    fl.fit(task.finetune)
    for name, ref in fl.trainable().items():
        got = fx.trainable()[name]
        assert torch.allclose(got, ref, atol=2e-3 * max(1.0, float(ref.abs().max()))), name
    assert fx.report()["memory"]["architecture"] == "mlp-mnist"
    with pytest.raises(InstantFTError, match="--numerics fixed runs the FPGA core's datapath, a chain"):
        create("instantft", build("resnet8-mnist").eval(), config, fixed=FixedPointConfig())


def test_memory_estimate_for_the_paper_formats():
    est = memory_estimate(FixedPointConfig())
    bits = {b["name"]: b["bits"] for b in est["buffers"]}
    assert bits["frozen parameters"] == 61706 * 16
    assert bits["adapter weights A, B"] == bits["adapter gradients dA, dB"] == 10456 * 16
    assert bits["layer inputs x0..x4"] == 20 * (784 + 1176 + 400 + 120 + 84) * 24
    assert bits["softmax tables (exp, reciprocal)"] == 2 * 1024 * 24
    assert bits["NF4 cache entries"] == 20 * (28 * 64 * 4 + 28 * 24)
    assert est["total_bits"] == sum(bits.values())
    assert "| **total** |" in memory_markdown(est)
