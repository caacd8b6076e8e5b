"""The compiled kernels (numba, ``cache=True``): the whole Skip2-LoRA / InstantFT training run in
one call, NF4 encode/decode, and the cache fill (the frozen LeNet-5 forward, row by row).

Why compiled: one SGD step is ~0.8 MFLOP (20 samples × 5 adapters of rank 4 over 2,584 inputs,
forward and update). Each ATen call costs microseconds, so a step written with torch ops is
dominated by dispatch; here a step is a few plain loops over preallocated buffers.

How the step is laid out (see :mod:`instantft.methods.skip_lora` for the maths):

- all five A_k live side by side in one matrix ``A`` (R × D, D = Σ d_k); ``seg[k]`` says where
  x_{k-1} comes from (image or cache row), at which offset, into which columns of ``A``;
- ``B`` is (C, K, R); the rank R is padded to a multiple of 4 with zero rows of A and zero
  columns of B, which stay exactly zero (their gradients are products with zeros), so the
  micro-kernels can always work on 4 ranks × 4 samples at a time;
- the forward ``h = A_k x`` and the update ``A_k -= lr·scale·(g B_k)ᵀ x`` are 4×4 register-blocked
  loops that LLVM vectorises; g, ∂B and the softmax are tiny and written plainly.

Every kernel keeps IEEE NaN/inf semantics (no ``nnan``/``ninf`` fast-math flags) so that a
diverging run is still detected.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from instantft.engine.layout import SRC_IMAGE

#: fast-math without nnan/ninf: vectorised reductions and FMA contraction, NaN still detectable
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
#: for the NF4 encoder: the division must stay exact to match :func:`instantft.nf4.quantize`
EXACT = {"nsz", "contract", "reassoc"}


# --- the SGD step -------------------------------------------------------------------------------
@njit(fastmath=FAST, inline="always")
def _dot4x4(a, r0, c0, n, x0, x1, x2, x3, o, h, b, k):
    """h[b+i, k, r0+q] = A[r0+q, c0:c0+n] · x_i[o:o+n] for 4 samples i and 4 ranks q."""
    a0 = a[r0, c0 : c0 + n]
    a1 = a[r0 + 1, c0 : c0 + n]
    a2 = a[r0 + 2, c0 : c0 + n]
    a3 = a[r0 + 3, c0 : c0 + n]
    y0 = x0[o : o + n]
    y1 = x1[o : o + n]
    y2 = x2[o : o + n]
    y3 = x3[o : o + n]
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
    for j in range(n):
        p0, p1, p2, p3 = a0[j], a1[j], a2[j], a3[j]
        v = y0[j]
        s00 += p0 * v
        s01 += p1 * v
        s02 += p2 * v
        s03 += p3 * v
        v = y1[j]
        s10 += p0 * v
        s11 += p1 * v
        s12 += p2 * v
        s13 += p3 * v
        v = y2[j]
        s20 += p0 * v
        s21 += p1 * v
        s22 += p2 * v
        s23 += p3 * v
        v = y3[j]
        s30 += p0 * v
        s31 += p1 * v
        s32 += p2 * v
        s33 += p3 * v
    h[b, k, r0], h[b, k, r0 + 1], h[b, k, r0 + 2], h[b, k, r0 + 3] = s00, s01, s02, s03
    h[b + 1, k, r0], h[b + 1, k, r0 + 1], h[b + 1, k, r0 + 2], h[b + 1, k, r0 + 3] = s10, s11, s12, s13
    h[b + 2, k, r0], h[b + 2, k, r0 + 1], h[b + 2, k, r0 + 2], h[b + 2, k, r0 + 3] = s20, s21, s22, s23
    h[b + 3, k, r0], h[b + 3, k, r0 + 1], h[b + 3, k, r0 + 2], h[b + 3, k, r0 + 3] = s30, s31, s32, s33


@njit(fastmath=FAST, inline="always")
def _dot1x4(a, r0, c0, n, x0, o, h, b, k):
    """The one-sample tail of :func:`_dot4x4` (batches not a multiple of 4)."""
    a0 = a[r0, c0 : c0 + n]
    a1 = a[r0 + 1, c0 : c0 + n]
    a2 = a[r0 + 2, c0 : c0 + n]
    a3 = a[r0 + 3, c0 : c0 + n]
    y0 = x0[o : o + n]
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for j in range(n):
        v = y0[j]
        s0 += a0[j] * v
        s1 += a1[j] * v
        s2 += a2[j] * v
        s3 += a3[j] * v
    h[b, k, r0], h[b, k, r0 + 1], h[b, k, r0 + 2], h[b, k, r0 + 3] = s0, s1, s2, s3


@njit(fastmath=FAST, inline="always")
def _axpy4x4(a, r0, c0, n, x0, x1, x2, x3, o, f, b, k):
    """A[r0+q, c0:c0+n] -= Σ_i f[b+i, k, r0+q] · x_i[o:o+n] for 4 samples i and 4 ranks q."""
    a0 = a[r0, c0 : c0 + n]
    a1 = a[r0 + 1, c0 : c0 + n]
    a2 = a[r0 + 2, c0 : c0 + n]
    a3 = a[r0 + 3, c0 : c0 + n]
    y0 = x0[o : o + n]
    y1 = x1[o : o + n]
    y2 = x2[o : o + n]
    y3 = x3[o : o + n]
    f00, f01, f02, f03 = f[b, k, r0], f[b, k, r0 + 1], f[b, k, r0 + 2], f[b, k, r0 + 3]
    f10, f11, f12, f13 = f[b + 1, k, r0], f[b + 1, k, r0 + 1], f[b + 1, k, r0 + 2], f[b + 1, k, r0 + 3]
    f20, f21, f22, f23 = f[b + 2, k, r0], f[b + 2, k, r0 + 1], f[b + 2, k, r0 + 2], f[b + 2, k, r0 + 3]
    f30, f31, f32, f33 = f[b + 3, k, r0], f[b + 3, k, r0 + 1], f[b + 3, k, r0 + 2], f[b + 3, k, r0 + 3]
    for j in range(n):
        v0, v1, v2, v3 = y0[j], y1[j], y2[j], y3[j]
        a0[j] -= f00 * v0 + f10 * v1 + f20 * v2 + f30 * v3
        a1[j] -= f01 * v0 + f11 * v1 + f21 * v2 + f31 * v3
        a2[j] -= f02 * v0 + f12 * v1 + f22 * v2 + f32 * v3
        a3[j] -= f03 * v0 + f13 * v1 + f23 * v2 + f33 * v3


@njit(fastmath=FAST, inline="always")
def _axpy1x4(a, r0, c0, n, x0, o, f, b, k):
    """The one-sample tail of :func:`_axpy4x4`."""
    a0 = a[r0, c0 : c0 + n]
    a1 = a[r0 + 1, c0 : c0 + n]
    a2 = a[r0 + 2, c0 : c0 + n]
    a3 = a[r0 + 3, c0 : c0 + n]
    y0 = x0[o : o + n]
    f0, f1, f2, f3 = f[b, k, r0], f[b, k, r0 + 1], f[b, k, r0 + 2], f[b, k, r0 + 3]
    for j in range(n):
        v = y0[j]
        a0[j] -= f0 * v
        a1[j] -= f1 * v
        a2[j] -= f2 * v
        a3[j] -= f3 * v


@njit(fastmath=FAST)
def _forward(images, img_rows, cached, cache_rows, nb, A, seg, h):
    """h[b, k, :] = A_k x_{k-1} for the nb samples of a step; sample b's x0 is
    ``images[img_rows[b]]`` and its cached inputs are in ``cached[cache_rows[b]]``."""
    K, R = seg.shape[0], A.shape[0]
    for k in range(K):
        src, rows = (images, img_rows) if seg[k, 0] == SRC_IMAGE else (cached, cache_rows)
        o, c0, n = seg[k, 1], seg[k, 2], seg[k, 3]
        for r0 in range(0, R, 4):
            b = 0
            while b + 4 <= nb:
                x0, x1, x2, x3 = src[rows[b]], src[rows[b + 1]], src[rows[b + 2]], src[rows[b + 3]]
                _dot4x4(A, r0, c0, n, x0, x1, x2, x3, o, h, b, k)
                b += 4
            while b < nb:
                _dot1x4(A, r0, c0, n, src[rows[b]], o, h, b, k)
                b += 1


@njit(fastmath=FAST)
def _update_a(images, img_rows, cached, cache_rows, nb, A, seg, f):
    """A_k -= Σ_b f[b, k, :]ᵀ x_{k-1,b} (f already holds lr·scale·g B_k)."""
    K, R = seg.shape[0], A.shape[0]
    for k in range(K):
        src, rows = (images, img_rows) if seg[k, 0] == SRC_IMAGE else (cached, cache_rows)
        o, c0, n = seg[k, 1], seg[k, 2], seg[k, 3]
        for r0 in range(0, R, 4):
            b = 0
            while b + 4 <= nb:
                x0, x1, x2, x3 = src[rows[b]], src[rows[b + 1]], src[rows[b + 2]], src[rows[b + 3]]
                _axpy4x4(A, r0, c0, n, x0, x1, x2, x3, o, f, b, k)
                b += 4
            while b < nb:
                _axpy1x4(A, r0, c0, n, src[rows[b]], o, f, b, k)
                b += 1


@njit(fastmath=FAST)
def _sgd_step(images, img_rows, cached, cache_rows, labels, nb, A, B, seg, logit_off, lr, scale, h, g, f, y):
    """One SGD step on nb samples; returns the mean cross-entropy before the update.

    Samples are ``images[img_rows[b]]`` (x0) and ``cached[cache_rows[b]]`` (x1..x4, f(x)). B is
    (C, K, R) so that each class's row of all B_k, like each sample's h and f, is one contiguous
    vector of K·R values: the small products below are then vector loops too.
    """
    C, K, R = B.shape
    KR = K * R
    Bc = B.reshape((C, KR))
    hb_all = h.reshape((h.shape[0], KR))
    fb_all = f.reshape((f.shape[0], KR))
    _forward(images, img_rows, cached, cache_rows, nb, A, seg, h)
    loss = 0.0
    for b in range(nb):  # y = f(x) + scale·Σ_k B_k h_k; g = (softmax(y) − onehot)/nb
        row, hb = cached[cache_rows[b]], hb_all[b]
        m = -np.inf
        for c in range(C):
            bc = Bc[c]
            v = np.float32(0.0)
            for j in range(KR):
                v += bc[j] * hb[j]
            y[c] = row[logit_off + c] + scale * v
            m = max(m, y[c])
        total = np.float32(0.0)
        for c in range(C):
            g[b, c] = np.exp(y[c] - m)
            total += g[b, c]
        label = labels[b]
        loss += np.log(total) + m - y[label]
        for c in range(C):
            g[b, c] = g[b, c] / total / nb
        g[b, label] -= np.float32(1.0) / nb
    step = np.float32(lr * scale)
    for b in range(nb):  # f = lr·scale·g B_k, with B from before the step
        fb = fb_all[b]
        fb[:] = 0.0
        for c in range(C):
            gc, bc = step * g[b, c], Bc[c]
            for j in range(KR):
                fb[j] += gc * bc[j]
    for c in range(C):  # B_k -= lr·scale·gᵀ h_k
        bc = Bc[c]
        for b in range(nb):
            gc, hb = step * g[b, c], hb_all[b]
            for j in range(KR):
                bc[j] -= gc * hb[j]
    _update_a(images, img_rows, cached, cache_rows, nb, A, seg, f)
    return loss / nb


@njit(fastmath=FAST)
def _workspace(nb_max, C, K, R):
    return (
        np.empty((nb_max, K, R), np.float32),
        np.empty((nb_max, C), np.float32),
        np.empty((nb_max, K, R), np.float32),
        np.empty(C, np.float32),
    )


@njit(cache=True, fastmath=FAST, nogil=True)
def train_fp32(images, rows, slot_of, labels, order, offsets, first, last, A, B, seg, logit_off, lr, scale, losses):
    """Steps ``first``..``last-1`` reading the fp32 Forward Cache ``rows`` (slot ``slot_of[i]``
    holds data row i). Step s uses data rows ``order[offsets[s]:offsets[s+1]]``. Writes each
    step's loss to ``losses``; stops after the first non-finite one and returns the steps done."""
    C, K, R = B.shape
    nb_max = 0
    for s in range(first, last):
        nb_max = max(nb_max, offsets[s + 1] - offsets[s])
    h, g, f, y = _workspace(nb_max, C, K, R)
    cache_rows = np.empty(nb_max, np.int64)
    step_labels = np.empty(nb_max, np.int64)
    for s in range(first, last):
        lo, nb = offsets[s], offsets[s + 1] - offsets[s]
        batch = order[lo : lo + nb]
        for b in range(nb):
            cache_rows[b] = slot_of[batch[b]]
            step_labels[b] = labels[batch[b]]
        loss = _sgd_step(images, batch, rows, cache_rows, step_labels, nb, A, B, seg, logit_off, lr, scale, h, g, f, y)
        losses[s] = loss
        if not np.isfinite(loss):
            return s + 1 - first
    return last - first


# --- NF4 ----------------------------------------------------------------------------------------
@intrinsic
def _decode16(typingctx, levels, packed, pi, scale, out, oi):
    """out[oi:oi+16] = levels[codes] · scale for the 16 codes packed in packed[pi:pi+8] (low
    nibble first).

    Written in LLVM IR because the 16-entry lookup is the hot spot of InstantFT and LLVM turns
    this "extract from a 16-float vector by a vector of indices" pattern into one permute
    instruction (``vpermps`` on AVX-512/AVX2) where the CPU has one, plain loads elsewhere; numba
    code would do 16 scalar loads. The caller guarantees the bounds.
    """
    sig = types.void(levels, packed, pi, scale, out, oi)

    def codegen(context, builder, signature, args):
        levels_v, packed_v, pi_v, scale_v, out_v, oi_v = args
        lt, pt, _, _, ot, _ = signature.args
        f32, i8, i32 = ir.FloatType(), ir.IntType(8), ir.IntType(32)
        table_ptr = context.make_array(lt)(context, builder, levels_v).data
        packed_ptr = builder.gep(context.make_array(pt)(context, builder, packed_v).data, [pi_v])
        out_ptr = builder.gep(context.make_array(ot)(context, builder, out_v).data, [oi_v])
        table = builder.load(builder.bitcast(table_ptr, ir.VectorType(f32, 16).as_pointer()), align=4)
        bytes8 = builder.load(builder.bitcast(packed_ptr, ir.VectorType(i8, 8).as_pointer()), align=1)
        lo = builder.and_(bytes8, ir.Constant(ir.VectorType(i8, 8), [15] * 8))
        hi = builder.lshr(bytes8, ir.Constant(ir.VectorType(i8, 8), [4] * 8))
        interleave = ir.Constant(ir.VectorType(i32, 16), [q for i in range(8) for q in (i, i + 8)])
        codes = builder.zext(builder.shuffle_vector(lo, hi, interleave), ir.VectorType(i32, 16))
        values = ir.Constant(ir.VectorType(f32, 16), None)
        for i in range(16):
            code = builder.extract_element(codes, ir.Constant(i32, i))
            values = builder.insert_element(values, builder.extract_element(table, code), ir.Constant(i32, i))
        s = builder.insert_element(ir.Constant(ir.VectorType(f32, 16), None), scale_v, ir.Constant(i32, 0))
        s = builder.shuffle_vector(s, s, ir.Constant(ir.VectorType(i32, 16), [0] * 16))
        builder.store(builder.fmul(values, s), builder.bitcast(out_ptr, ir.VectorType(f32, 16).as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(fastmath=FAST)
def _decode_row(codes, absmax, levels, block_size, out):
    """Dequantise one NF4 row (codes: packed bytes, absmax: one scale a block) into ``out``."""
    half = block_size // 2
    for blk in range(absmax.shape[0]):
        s = absmax[blk]
        for q in range(0, half, 8):
            _decode16(levels, codes, blk * half + q, s, out, blk * block_size + 2 * q)


@njit(cache=True, fastmath=FAST, nogil=True)
def decode_rows(codes, absmax, levels, block_size, slots, out):
    """out[i] = dequantised row ``slots[i]``: the decoder of :func:`train_nf4` on its own (for tests)."""
    for i in range(slots.shape[0]):
        _decode_row(codes[slots[i]], absmax[slots[i]], levels, block_size, out[i])


@njit(cache=True, fastmath=FAST, nogil=True)
def train_nf4(
    images, codes, absmax, levels, block_size, slot_of, labels, order, offsets, first, last, A, B, seg, logit_off,
    lr, scale, losses,
):  # fmt: skip
    """:func:`train_fp32` reading the NF4 Forward Cache: each step first dequantises its samples'
    rows into a small buffer (``levels[code]·absmax``, bit-identical to :func:`instantft.nf4.dequantize`),
    which stays in L1/L2 for the forward and the update."""
    C, K, R = B.shape
    nb_max = 0
    for s in range(first, last):
        nb_max = max(nb_max, offsets[s + 1] - offsets[s])
    h, g, f, y = _workspace(nb_max, C, K, R)
    decoded = np.empty((nb_max, absmax.shape[1] * block_size), np.float32)
    cache_rows = np.arange(nb_max)
    step_labels = np.empty(nb_max, np.int64)
    for s in range(first, last):
        lo, nb = offsets[s], offsets[s + 1] - offsets[s]
        batch = order[lo : lo + nb]
        for b in range(nb):
            slot = slot_of[batch[b]]
            _decode_row(codes[slot], absmax[slot], levels, block_size, decoded[b])
            step_labels[b] = labels[batch[b]]
        loss = _sgd_step(
            images, batch, decoded, cache_rows, step_labels, nb, A, B, seg, logit_off, lr, scale, h, g, f, y
        )
        losses[s] = loss
        if not np.isfinite(loss):
            return s + 1 - first
    return last - first


@njit(fastmath=EXACT)
def _encode_workspace(nblocks, block_size):
    padded = np.zeros(nblocks * block_size, np.float32)
    top_bits = np.zeros(nblocks, np.int32)
    return padded, np.empty(nblocks * block_size, np.uint8), top_bits, np.zeros(nblocks, np.bool_)


@njit(fastmath=EXACT)
def _encode_row(row, thresholds, block_size, codes, absmax, padded, code, top_bits, negative):
    """One row of :func:`encode_nf4` (the other arguments are its workspace)."""
    nblocks = absmax.shape[0]
    bits = padded.view(np.int32)
    top = top_bits.view(np.float32)  # the absmax of each block
    padded[: row.shape[0]] = row
    for blk in range(nblocks):
        b = bits[blk * block_size : (blk + 1) * block_size]
        largest, signs = np.int32(0), np.int32(0)
        for j in range(block_size):
            largest = max(largest, np.int32(b[j] & np.int32(0x7FFFFFFF)))
            signs = np.int32(signs | b[j])
        top_bits[blk] = largest
        negative[blk] = signs < 0
    for blk in range(nblocks):
        absmax[blk] = top[blk]
        s = top[blk] if top[blk] > 0 else np.float32(1.0)
        x = padded[blk * block_size : (blk + 1) * block_size]
        c = code[blk * block_size : (blk + 1) * block_size]
        if negative[blk]:
            for j in range(block_size):
                v = x[j] / s
                k = np.uint8(0)
                for t in range(15):
                    k += np.uint8(thresholds[t] < v)
                c[j] = k
        else:
            for j in range(block_size):
                v = x[j] / s
                k = np.uint8(7)
                for t in range(7, 15):
                    k += np.uint8(thresholds[t] < v)
                c[j] = k
    for q in range(codes.shape[0]):
        codes[q] = code[2 * q] | (code[2 * q + 1] << np.uint8(4))


@njit(cache=True, fastmath=EXACT, nogil=True)
def encode_nf4(rows, thresholds, block_size, codes, absmax):
    """Quantise fp32 rows to NF4 exactly as :func:`instantft.nf4.quantize` does: zero padding to
    whole blocks, absmax per block, x / absmax, code = number of thresholds below it (the nearest
    level), two codes a byte, low nibble first.

    Two shortcuts that keep the result bit-identical: |x| is compared as an integer bit pattern
    (for floats that is the order of |x|, it vectorises, and a NaN still wins the maximum as in
    ``torch.amax``); and a block without a sign bit set (ReLU outputs: x1..x4) is above the
    seven negative thresholds, so only the other eight are compared.
    """
    work = _encode_workspace(absmax.shape[1], block_size)
    for i in range(rows.shape[0]):
        _encode_row(rows[i], thresholds, block_size, codes[i], absmax[i], *work)


# --- the cache fill -----------------------------------------------------------------------------
@njit(fastmath=FAST)
def _conv_relu_pool(flat, cin, height, width, weight, bias, conv, rowmax, out):
    """out (cout, P, P) = maxpool2×2(ReLU(conv5×5(x) + bias)), x = the first cin·height·width
    values of ``flat`` seen as (cin, height, width) (already zero-padded; ``flat`` has some slack
    after it); 5×5 kernels, an even number of output channels.

    Each input channel is one flat array, so a whole output channel is a single long vector loop
    (``conv`` is (cout, m), m ≥ (height−4)·width rounded up to 16, so a few wrap-around columns
    and tail values are computed and never read): per kernel row, out[j] += Σ_kx w·in[j + ky·W +
    kx], two output channels at a time to share the input loads. oneDNN runs conv1 (one input
    channel) at a few GFLOP/s; this is several times faster.
    """
    cout, m = conv.shape
    half = (height - 4) // 2
    for co in range(cout):
        conv[co, :] = bias[co]
    for co in range(0, cout, 2):
        ca, cb = conv[co], conv[co + 1]
        for ci in range(cin):
            for ky in range(5):
                first = ci * height * width + ky * width
                src = flat[first : first + m + 4]
                a0, a1, a2 = weight[co, ci, ky, 0], weight[co, ci, ky, 1], weight[co, ci, ky, 2]
                a3, a4 = weight[co, ci, ky, 3], weight[co, ci, ky, 4]
                b0, b1, b2 = weight[co + 1, ci, ky, 0], weight[co + 1, ci, ky, 1], weight[co + 1, ci, ky, 2]
                b3, b4 = weight[co + 1, ci, ky, 3], weight[co + 1, ci, ky, 4]
                for j in range(m):
                    s0, s1, s2, s3, s4 = src[j], src[j + 1], src[j + 2], src[j + 3], src[j + 4]
                    ca[j] += a0 * s0 + a1 * s1 + a2 * s2 + a3 * s3 + a4 * s4
                    cb[j] += b0 * s0 + b1 * s1 + b2 * s2 + b3 * s3 + b4 * s4
    for co in range(cout):
        c = conv[co]
        for py in range(half):
            top = c[2 * py * width : 2 * py * width + width]
            bottom = c[(2 * py + 1) * width : (2 * py + 1) * width + width]
            for j in range(width):
                rowmax[j] = max(top[j], bottom[j])
            dst = out[co, py]
            for px in range(half):
                dst[px] = max(max(rowmax[2 * px], rowmax[2 * px + 1]), np.float32(0.0))


@njit(fastmath=FAST)
def _linear(x, weight, bias, relu, out):
    """out = weight·x + bias (ReLU'd if ``relu``): one vector dot product per output."""
    for o in range(weight.shape[0]):
        w = weight[o]
        acc = np.float32(0.0)
        for i in range(x.shape[0]):
            acc += w[i] * x[i]
        v = acc + bias[o]
        out[o] = max(v, np.float32(0.0)) if relu else v


@njit(fastmath=FAST)
def _padded_size(cin, height, width):
    """(flat buffer length, m) for a 5×5 conv over (cin, height, width): m = outputs computed per
    channel (a multiple of 16), the buffer long enough for the last shifted read."""
    m = -(-((height - 4) * width) // 16) * 16
    return max(cin * height * width, (cin - 1) * height * width + 4 * width + m + 4), m


@njit(fastmath=FAST)
def _fill_workspace(cin, size, pad, w1, w2):
    wp = size + 2 * pad
    len1, m1 = _padded_size(cin, wp, wp)
    s1 = (wp - 4) // 2
    len2, m2 = _padded_size(w1.shape[0], s1, s1)
    return (
        np.zeros(len1, np.float32),
        np.empty((w1.shape[0], m1), np.float32),
        np.zeros(len2, np.float32),
        np.empty((w2.shape[0], m2), np.float32),
        np.empty(max(wp, s1), np.float32),
    )


@njit(fastmath=FAST)
def _base_row(image, pad, w1, b1, w2, b2, w3, b3, w4, b4, w5, b5, row, flat1, conv1, flat2, conv2, rowmax):
    """row = [x1 | x2 | x3 | x4 | f(x)] of one image (cin, H, W): the frozen base forward."""
    cin, height, width = image.shape
    wp = width + 2 * pad
    s1 = (height + 2 * pad - 4) // 2
    s2 = (s1 - 4) // 2
    c1, c2 = w1.shape[0], w2.shape[0]
    n1, n2, n3, n4 = c1 * s1 * s1, c2 * s2 * s2, w3.shape[0], w4.shape[0]
    for ci in range(cin):  # zero padding: the border of flat1 stays 0
        for y in range(height):
            first = (ci * (height + 2 * pad) + pad + y) * wp + pad
            flat1[first : first + width] = image[ci, y]
    x1 = row[:n1].reshape((c1, s1, s1))
    _conv_relu_pool(flat1, cin, height + 2 * pad, wp, w1, b1, conv1, rowmax, x1)
    flat2[:n1] = row[:n1]
    x2 = row[n1 : n1 + n2].reshape((c2, s2, s2))
    _conv_relu_pool(flat2, c1, s1, s1, w2, b2, conv2, rowmax, x2)
    x3 = row[n1 + n2 : n1 + n2 + n3]
    _linear(row[n1 : n1 + n2], w3, b3, True, x3)
    x4 = row[n1 + n2 + n3 : n1 + n2 + n3 + n4]
    _linear(x3, w4, b4, True, x4)
    _linear(x4, w5, b5, False, row[n1 + n2 + n3 + n4 :])


@njit(cache=True, fastmath=FAST, nogil=True)
def fill_rows(images, pad, w1, b1, w2, b2, w3, b3, w4, b4, w5, b5, rows):
    """rows[i] = the Forward Cache row of images[i] (the whole LeNet-5 forward, compiled: no
    torch op, so no OpenMP barrier that another process on the machine can stall)."""
    work = _fill_workspace(images.shape[1], images.shape[2], pad, w1, w2)
    for i in range(images.shape[0]):
        _base_row(images[i], pad, w1, b1, w2, b2, w3, b3, w4, b4, w5, b5, rows[i], *work)


@njit(cache=True, fastmath=FAST, nogil=True)
def fill_rows_nf4(images, pad, w1, b1, w2, b2, w3, b3, w4, b4, w5, b5, thresholds, block_size, codes, absmax):
    """:func:`fill_rows` for the NF4 cache: each row is encoded (:func:`encode_nf4`) while it is
    still in L1, so the fp32 rows never exist as a whole."""
    work = _fill_workspace(images.shape[1], images.shape[2], pad, w1, w2)
    s1 = (images.shape[2] + 2 * pad - 4) // 2
    s2 = (s1 - 4) // 2
    width = w1.shape[0] * s1 * s1 + w2.shape[0] * s2 * s2 + w3.shape[0] + w4.shape[0] + w5.shape[0]
    row = np.empty(width, np.float32)
    encode_work = _encode_workspace(absmax.shape[1], block_size)
    for i in range(images.shape[0]):
        _base_row(images[i], pad, w1, b1, w2, b2, w3, b3, w4, b4, w5, b5, row, *work)
        _encode_row(row, thresholds, block_size, codes[i], absmax[i], *encode_work)
