/* The hot loops, compiled once per instruction set (core.c includes this file with KN(name)
 * giving each copy its own names, IFT_JB the conv tile width, IFT_TL the lanes of the training dot
 * products and IFT_DECODE the NF4 decoder to use). Plain C written so that GCC vectorises it:
 * fixed-size register tiles, no reductions across loop iterations except through explicit lanes,
 * no fast-math (NaN and inf behave as IEEE says, so a diverging run is still detected).
 *
 * Summation order does not depend on the instruction set (the dot products of the fill always
 * use 16 lanes, summed in the same order), so every copy gives the same activations up to FMA
 * contraction. */

#define IFT_ALWAYS_INLINE static inline __attribute__((always_inline))
#ifndef EPI_NONE
#define EPI_NONE 0
#define EPI_RELU 1
#define EPI_RELU_POOL 2
#endif

/* this copy's native vector (IFT_VW floats), unaligned loads and stores */
typedef float KN(vf) __attribute__((vector_size(IFT_VW * 4), aligned(4), may_alias));
typedef int32_t KN(vi) __attribute__((vector_size(IFT_VW * 4)));
/* the vector type is may_alias and aligned(4): dereferencing it is an unaligned load/store */
IFT_ALWAYS_INLINE KN(vf) KN(load)(const float *p) { return *(const KN(vf) *)p; }
IFT_ALWAYS_INLINE void KN(store)(float *p, KN(vf) v) { *(KN(vf) *)p = v; }
/* the training loop's vector (IFT_TW floats: 256-bit on AVX-512 too, which measured faster there:
 * its rows are not 64-byte aligned, so 512-bit loads split across cache lines) */
typedef float KN(tv) __attribute__((vector_size(IFT_TW * 4), aligned(4), may_alias));
IFT_ALWAYS_INLINE KN(tv) KN(tload)(const float *p) { return *(const KN(tv) *)p; }
IFT_ALWAYS_INLINE void KN(tstore)(float *p, KN(tv) v) { *(KN(tv) *)p = v; }
IFT_ALWAYS_INLINE KN(vf) KN(splat)(float x)
{
    KN(vf) zero = {0};
    return zero + x; /* GCC broadcasts a scalar operand */
}

/* ---- the frozen forward ---------------------------------------------------------------- */

/* out[q][j0 + l] = bias + sum_{c,ky,kx} w[co0+q][c][ky][kx] * x[c*sc + ky*sy + kx*sx + j0 + l]: the
 * conv as a GEMM whose B matrix is either an im2col buffer (sx = Np) or the zero-padded input
 * itself, shifted (sx = 1: the "wide" output, Wp columns a row), with the NCO x IFT_JB tile of
 * accumulators in vector registers. */
IFT_ALWAYS_INLINE void KN(conv_tile)(const int nco, const ift_op *op, const float *x, int64_t sc, int64_t sy,
                                     int64_t sx, int64_t j0, int64_t co0, float *out, int64_t ostride, int64_t limit)
{
    enum { NV = IFT_JB / IFT_VW };
    const int64_t C = op->in_c, kh = op->kh, kw = op->kw, T = C * kh * kw;
    const float *w = op->weight + co0 * T;
    KN(vf) acc[4][NV];
    for (int q = 0; q < nco; q++) {
        float b0 = op->bias ? op->bias[co0 + q] : 0.0f;
        for (int v = 0; v < NV; v++) acc[q][v] = KN(splat)(b0);
    }
    int64_t t = 0;
    for (int64_t c = 0; c < C; c++)
        for (int64_t ky = 0; ky < kh; ky++) {
            const float *xr = x + c * sc + ky * sy + j0;
            for (int64_t kx = 0; kx < kw; kx++, t++) {
                KN(vf) xv[NV];
                for (int v = 0; v < NV; v++) xv[v] = KN(load)(xr + kx * sx + v * IFT_VW);
                for (int q = 0; q < nco; q++) {
                    const float wq = w[q * T + t];
                    for (int v = 0; v < NV; v++) acc[q][v] += xv[v] * wq;
                }
            }
        }
    int64_t n = limit - j0 < IFT_JB ? limit - j0 : IFT_JB;
    for (int q = 0; q < nco; q++) {
        float *dst = out + (co0 + q) * ostride + j0;
        if (n == IFT_JB) {
            for (int v = 0; v < NV; v++) KN(store)(dst + v * IFT_VW, acc[q][v]);
        } else {
            float tmp[IFT_JB];
            for (int v = 0; v < NV; v++) KN(store)(tmp + v * IFT_VW, acc[q][v]);
            for (int64_t l = 0; l < n; l++) dst[l] = tmp[l];
        }
    }
}

static void KN(conv_tiles)(const ift_op *op, const float *x, int64_t sc, int64_t sy, int64_t sx, int64_t cols,
                           float *out, int64_t ostride, int64_t limit)
{
    const int64_t Co = op->out_c;
    int64_t co0 = 0;
    for (; co0 + 4 <= Co; co0 += 4)
        for (int64_t j0 = 0; j0 < cols; j0 += IFT_JB) KN(conv_tile)(4, op, x, sc, sy, sx, j0, co0, out, ostride, limit);
    for (int64_t j0 = 0; j0 < cols && co0 < Co; j0 += IFT_JB) {
        switch (Co - co0) {
        case 3: KN(conv_tile)(3, op, x, sc, sy, sx, j0, co0, out, ostride, limit); break;
        case 2: KN(conv_tile)(2, op, x, sc, sy, sx, j0, co0, out, ostride, limit); break;
        default: KN(conv_tile)(1, op, x, sc, sy, sx, j0, co0, out, ostride, limit); break;
        }
    }
}

/* conv2d: stride 1 straight from a zero-padded copy of the input (the output computed on rows of
 * Wp columns, then compacted); other strides through an im2col buffer. Work sizes: ift_conv_work.
 * epi: the ops fused after it, EPI_NONE, EPI_RELU, or EPI_RELU_POOL (ReLU then 2x2/2 max-pool,
 * stride-1 convs only): written straight from the wide rows, max(relu(a), relu(b)) = relu(max(a, b)). */
static void KN(conv2d)(const ift_op *op, const float *in, float *out, float *work, int epi)
{
    const int64_t C = op->in_c, H = op->in_h, W = op->in_w, kh = op->kh, kw = op->kw;
    const int64_t Ho = op->out_h, Wo = op->out_w, N = Ho * Wo;
    if (op->sh == 1 && op->sw == 1) {
        const int64_t Hp = H + 2 * op->ph, Wp = W + 2 * op->pw, M = Ho * Wp;
        const int64_t Mp = (M + IFT_JB_MAX - 1) / IFT_JB_MAX * IFT_JB_MAX;
        const int64_t plen = ift_conv_padded_len(op);
        float *pad = work, *wide = work + plen;
        if (op->ph || op->pw || plen > C * H * W) memset(pad, 0, (size_t)plen * sizeof(float));
        if (op->ph || op->pw) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t y = 0; y < H; y++)
                    memcpy(pad + (c * Hp + y + op->ph) * Wp + op->pw, in + (c * H + y) * W, (size_t)W * sizeof(float));
        } else {
            memcpy(pad, in, (size_t)(C * H * W) * sizeof(float));
        }
        KN(conv_tiles)(op, pad, Hp * Wp, Wp, 1, Mp, wide, Mp, Mp);
        if (epi == EPI_RELU_POOL) {
            const int64_t Po = Ho / 2, Qo = Wo / 2;
            for (int64_t co = 0; co < op->out_c; co++)
                for (int64_t py = 0; py < Po; py++) {
                    const float *r0 = wide + co * Mp + 2 * py * Wp, *r1 = r0 + Wp;
                    float *d = out + (co * Po + py) * Qo;
                    for (int64_t px = 0; px < Qo; px++) {
                        float a = r0[2 * px] > r0[2 * px + 1] ? r0[2 * px] : r0[2 * px + 1];
                        float b = r1[2 * px] > r1[2 * px + 1] ? r1[2 * px] : r1[2 * px + 1];
                        float m = a > b ? a : b;
                        d[px] = m > 0.0f ? m : 0.0f;
                    }
                }
            return;
        }
        for (int64_t co = 0; co < op->out_c; co++)
            for (int64_t y = 0; y < Ho; y++) {
                const float *r = wide + co * Mp + y * Wp;
                float *d = out + (co * Ho + y) * Wo;
                if (epi == EPI_RELU)
                    for (int64_t x = 0; x < Wo; x++) d[x] = r[x] > 0.0f ? r[x] : 0.0f;
                else
                    memcpy(d, r, (size_t)Wo * sizeof(float));
            }
        return;
    }
    const int64_t Np = (N + IFT_JB_MAX - 1) / IFT_JB_MAX * IFT_JB_MAX;
    float *col = work;
    for (int64_t c = 0; c < C; c++)
        for (int64_t ky = 0; ky < kh; ky++)
            for (int64_t kx = 0; kx < kw; kx++) {
                float *dst = col + ((c * kh + ky) * kw + kx) * Np;
                for (int64_t y = 0; y < Ho; y++) {
                    int64_t iy = y * op->sh - op->ph + ky;
                    float *d = dst + y * Wo;
                    for (int64_t x = 0; x < Wo; x++) {
                        int64_t ix = x * op->sw - op->pw + kx;
                        d[x] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? in[(c * H + iy) * W + ix] : 0.0f;
                    }
                }
                for (int64_t j = N; j < Np; j++) dst[j] = 0.0f;
            }
    KN(conv_tiles)(op, col, kh * kw * Np, kw * Np, Np, Np, out, N, N);
    if (epi == EPI_RELU)
        for (int64_t j = 0; j < op->out_c * N; j++) out[j] = out[j] > 0.0f ? out[j] : 0.0f;
}

/* 16-lane dot product in a fixed summation order (the same on every instruction set: the 16
 * partial sums are one 64-byte vector, split into registers as the target has them) */
IFT_ALWAYS_INLINE float KN(hsum16)(ift_v16 s) { return ift_sum_16(s); }

IFT_ALWAYS_INLINE float KN(dot16)(const float *a, const float *x, int64_t n)
{
    ift_v16 s = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) s += ift_load16(a + j) * ift_load16(x + j);
    float t[16] = {0};
    for (int l = 0; j + l < n; l++) t[l] = a[j + l] * x[j + l];
    return KN(hsum16)(s + ift_load16(t));
}

/* out[o] = bias[o] + W[o] . x, four outputs at a time sharing the loads of x (each output's sum
 * in the order of dot16) */
static void KN(linear)(const ift_op *op, const float *x, float *out)
{
    const int64_t n = (int64_t)op->in_c * op->in_h * op->in_w, O = op->out_c;
    const float *w = op->weight;
    int64_t o = 0;
    for (; o + 4 <= O; o += 4) {
        ift_v16 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        const float *w0 = w + o * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
        int64_t j = 0;
        for (; j + 16 <= n; j += 16) {
            ift_v16 v = ift_load16(x + j);
            s0 += ift_load16(w0 + j) * v;
            s1 += ift_load16(w1 + j) * v;
            s2 += ift_load16(w2 + j) * v;
            s3 += ift_load16(w3 + j) * v;
        }
        float r[4];
        const float *ws[4] = {w0, w1, w2, w3};
        ift_v16 ss[4] = {s0, s1, s2, s3};
        for (int q = 0; q < 4; q++) {
            float t[16] = {0};
            for (int l = 0; j + l < n; l++) t[l] = ws[q][j + l] * x[j + l];
            r[q] = KN(hsum16)(ss[q] + ift_load16(t));
        }
        for (int q = 0; q < 4; q++) out[o + q] = r[q] + (op->bias ? op->bias[o + q] : 0.0f);
    }
    for (; o < O; o++) out[o] = KN(dot16)(w + o * n, x, n) + (op->bias ? op->bias[o] : 0.0f);
}

static void KN(maxpool)(const ift_op *op, const float *in, float *out)
{
    const int64_t C = op->in_c, H = op->in_h, W = op->in_w, Ho = op->out_h, Wo = op->out_w;
    for (int64_t c = 0; c < C; c++)
        for (int64_t y = 0; y < Ho; y++)
            for (int64_t x = 0; x < Wo; x++) {
                float m = -INFINITY;
                for (int64_t ky = 0; ky < op->kh; ky++) {
                    int64_t iy = y * op->sh - op->ph + ky;
                    if (iy < 0 || iy >= H) continue;
                    for (int64_t kx = 0; kx < op->kw; kx++) {
                        int64_t ix = x * op->sw - op->pw + kx;
                        if (ix < 0 || ix >= W) continue;
                        float v = in[(c * H + iy) * W + ix];
                        /* NaN propagates, as in torch */
                        m = (v > m || v != v) ? v : m;
                    }
                }
                out[(c * Ho + y) * Wo + x] = m;
            }
}

/* 2x2, stride 2, no padding: the common case, without the bounds tests */
static void KN(maxpool2)(const ift_op *op, const float *in, float *out)
{
    const int64_t C = op->in_c, W = op->in_w, Ho = op->out_h, Wo = op->out_w, H = op->in_h;
    for (int64_t c = 0; c < C; c++)
        for (int64_t y = 0; y < Ho; y++) {
            const float *r0 = in + (c * H + 2 * y) * W, *r1 = r0 + W;
            float *d = out + (c * Ho + y) * Wo;
            for (int64_t x = 0; x < Wo; x++) {
                float a = r0[2 * x] > r0[2 * x + 1] ? r0[2 * x] : r0[2 * x + 1];
                float b = r1[2 * x] > r1[2 * x + 1] ? r1[2 * x] : r1[2 * x + 1];
                d[x] = a > b ? a : b;
            }
        }
}

/* out_i[o] = bias[o] + W[o] . x_i for a group of up to IFT_G samples: IFT_LO outputs x 4 samples
 * of 16-lane accumulators, so each weight load serves four samples (a GEMM, not g GEMVs: fc1's
 * weights are read once per group instead of once per sample). Sums in the order of dot16. */
static void KN(linear_group)(const ift_op *op, const float *const *x, float *const *out, int g)
{
    const int64_t n = (int64_t)op->in_c * op->in_h * op->in_w, O = op->out_c;
    const float *w = op->weight;
    int i0 = 0;
    for (; i0 + 4 <= g; i0 += 4) {
        const float *x0 = x[i0], *x1 = x[i0 + 1], *x2 = x[i0 + 2], *x3 = x[i0 + 3];
        int64_t o = 0;
        for (; o + IFT_LO <= O; o += IFT_LO) {
            ift_v16 s[IFT_LO][4];
            for (int q = 0; q < IFT_LO; q++)
                for (int i = 0; i < 4; i++) s[q][i] = (ift_v16){0};
            int64_t j = 0;
            for (; j + 16 <= n; j += 16) {
                ift_v16 v0 = ift_load16(x0 + j), v1 = ift_load16(x1 + j), v2 = ift_load16(x2 + j),
                        v3 = ift_load16(x3 + j);
                for (int q = 0; q < IFT_LO; q++) {
                    ift_v16 wq = ift_load16(w + (o + q) * n + j);
                    s[q][0] += wq * v0;
                    s[q][1] += wq * v1;
                    s[q][2] += wq * v2;
                    s[q][3] += wq * v3;
                }
            }
            for (int q = 0; q < IFT_LO; q++)
                for (int i = 0; i < 4; i++) {
                    const float *wq = w + (o + q) * n, *xi = x[i0 + i];
                    float t[16] = {0};
                    for (int l = 0; j + l < n; l++) t[l] = wq[j + l] * xi[j + l];
                    out[i0 + i][o + q] = KN(hsum16)(s[q][i] + ift_load16(t)) + (op->bias ? op->bias[o + q] : 0.0f);
                }
        }
        for (; o < O; o++)
            for (int i = 0; i < 4; i++)
                out[i0 + i][o] = KN(dot16)(w + o * n, x[i0 + i], n) + (op->bias ? op->bias[o] : 0.0f);
    }
    for (; i0 < g; i0++) KN(linear)(op, x[i0], out[i0]);
}

/* The frozen forward of g <= IFT_G samples: row_i = [cached taps | logits] of image_i. Work: two
 * activation buffers a sample, then the conv scratch. */
static void KN(forward_group)(const ift_chain *ch, const float *const *image, float *const *row, int g, float *work)
{
    const float *cur[IFT_G];
    float *dst[IFT_G];
    int which[IFT_G];
    float *conv_work = work + 2 * IFT_G * ch->act_floats;
    for (int i = 0; i < g; i++) cur[i] = image[i], which[i] = 0;
    for (int32_t k = 0; k < ch->n_ops; k++) {
        const ift_op *op = &ch->ops[k];
        const int64_t in_size = (int64_t)op->in_c * op->in_h * op->in_w;
        int epi = EPI_NONE, skip = 0;
        if (op->kind == IFT_OP_CONV2D) { /* fuse the ReLU (and a 2x2/2 pool) that follow, when untapped */
            const ift_op *r = k + 1 < ch->n_ops ? &ch->ops[k + 1] : NULL;
            const ift_op *p = k + 2 < ch->n_ops ? &ch->ops[k + 2] : NULL;
            if (r && r->kind == IFT_OP_RELU && r->tap == IFT_TAP_NONE) {
                epi = EPI_RELU, skip = 1;
                if (p && p->kind == IFT_OP_MAXPOOL && p->tap == IFT_TAP_NONE && op->sh == 1 && op->sw == 1 &&
                    p->kh == 2 && p->kw == 2 && p->sh == 2 && p->sw == 2 && p->ph == 0 && p->pw == 0)
                    epi = EPI_RELU_POOL, skip = 2;
            }
        }
        const int last = k + skip == ch->n_ops - 1;
        for (int i = 0; i < g; i++) {
            if (op->tap == IFT_TAP_CACHED) memcpy(row[i] + op->tap_offset, cur[i], (size_t)in_size * sizeof(float));
            dst[i] = last ? row[i] + ch->logit_offset : work + (2 * i + which[i]) * ch->act_floats;
        }
        switch (op->kind) {
        case IFT_OP_CONV2D:
            for (int i = 0; i < g; i++) KN(conv2d)(op, cur[i], dst[i], conv_work, epi);
            break;
        case IFT_OP_LINEAR: KN(linear_group)(op, cur, dst, g); break;
        case IFT_OP_MAXPOOL:
            for (int i = 0; i < g; i++) {
                if (op->kh == 2 && op->kw == 2 && op->sh == 2 && op->sw == 2 && op->ph == 0 && op->pw == 0)
                    KN(maxpool2)(op, cur[i], dst[i]);
                else
                    KN(maxpool)(op, cur[i], dst[i]);
            }
            break;
        case IFT_OP_RELU:
            for (int i = 0; i < g; i++) {
                if (!last && cur[i] != image[i]) dst[i] = (float *)cur[i]; /* in place in a work buffer */
                const float *c = cur[i];
                float *d = dst[i];
                for (int64_t j = 0; j < in_size; j++) d[j] = c[j] > 0.0f ? c[j] : (c[j] != c[j] ? c[j] : 0.0f);
            }
            break;
        default: /* flatten: the same values */
            for (int i = 0; i < g; i++) {
                if (last)
                    memcpy(dst[i], cur[i], (size_t)in_size * sizeof(float));
                else
                    dst[i] = (float *)cur[i];
            }
            break;
        }
        for (int i = 0; i < g; i++) {
            if (dst[i] != cur[i]) which[i] ^= 1;
            cur[i] = dst[i];
        }
        k += skip;
    }
}

static void KN(forward)(const ift_chain *ch, const float *image, float *row, float *work)
{
    KN(forward_group)(ch, &image, &row, 1, work);
}

/* ---- NF4 encode (the fill's, bit-identical to instantft.nf4.quantize) ----------------------- */

/* code = number of thresholds strictly below v, for 16 values; FIRST = 7 skips the negative
 * thresholds (all below v when the block has no sign bit set, e.g. ReLU outputs). Constant trip
 * counts: a compare and an add per threshold on whole vectors. */
IFT_ALWAYS_INLINE void KN(codes16)(const int first, const float *v, uint8_t *out)
{
    int32_t k[16];
    for (int c = 0; c < 16; c += IFT_VW) { /* native vectors: a compare and a subtract per threshold */
        const KN(vf) x = KN(load)(v + c);
        KN(vi) kc = (KN(vi)){0} + first;
        for (int t = first; t < 15; t++) kc -= (x > ift_nf4_thresholds[t]); /* a true compare is -1 */
        memcpy(k + c, &kc, sizeof kc);
    }
    for (int q = 0; q < 8; q++) out[q] = (uint8_t)(k[2 * q] | (k[2 * q + 1] << 4));
}

/* One row: zero padding to whole blocks, absmax per block (|x| compared as its bit pattern: for
 * floats that is the order of |x|, and a NaN wins as in torch.amax), x / absmax (an IEEE
 * division, as torch's; absmax 0 divides by 1), two codes a byte, low nibble first. */
static void KN(encode_row)(const float *x, int64_t n, int64_t bs, uint8_t *codes, float *absmax)
{
    const int64_t nb = (n + bs - 1) / bs;
    for (int64_t blk = 0; blk < nb; blk++) {
        const float *xb = x + blk * bs;
        const int64_t m = n - blk * bs < bs ? n - blk * bs : bs;
        uint8_t *cb = codes + blk * (bs / 2);
        uint32_t big[16] = {0}, sg[16] = {0};
        int64_t j = 0;
        for (; j + 16 <= m; j += 16)
            for (int l = 0; l < 16; l++) {
                uint32_t b;
                memcpy(&b, xb + j + l, 4);
                uint32_t a = b & 0x7FFFFFFFu;
                big[l] = a > big[l] ? a : big[l];
                sg[l] |= b;
            }
        for (int l = 0; j + l < m; l++) {
            uint32_t b;
            memcpy(&b, xb + j + l, 4);
            uint32_t a = b & 0x7FFFFFFFu;
            big[l] = a > big[l] ? a : big[l];
            sg[l] |= b;
        }
        uint32_t largest = 0, signs = 0;
        for (int l = 0; l < 16; l++) largest = big[l] > largest ? big[l] : largest, signs |= sg[l];
        float top;
        memcpy(&top, &largest, 4);
        absmax[blk] = top;
        const float s = top > 0.0f ? top : 1.0f;
        const int negative = (signs >> 31) != 0;
        for (j = 0; j + 16 <= bs; j += 16) {
            float v[16];
            if (j + 16 <= m)
                for (int l = 0; l < 16; l++) v[l] = xb[j + l] / s;
            else
                for (int l = 0; l < 16; l++) v[l] = j + l < m ? xb[j + l] / s : 0.0f;
            if (negative)
                KN(codes16)(0, v, cb + j / 2);
            else
                KN(codes16)(7, v, cb + j / 2);
        }
        for (; j < bs; j += 2) { /* blocks that are not a multiple of 16 */
            int pair[2];
            for (int e = 0; e < 2; e++) {
                float v = j + e < m ? xb[j + e] / s : 0.0f;
                int k = negative ? 0 : 7;
                for (int t = negative ? 0 : 7; t < 15; t++) k += ift_nf4_thresholds[t] < v;
                pair[e] = k;
            }
            cb[j / 2] = (uint8_t)(pair[0] | (pair[1] << 4));
        }
    }
}

/* ---- NF4 decode (the training loop's hot spot for InstantFT) ----------------------------- */
static void KN(decode)(const uint8_t *codes, const float *absmax, int64_t blocks, int64_t bs, float *out)
{
#if IFT_DECODE == 2 /* AVX-512: one 16-entry permute per 16 values */
    const __m512 table = _mm512_loadu_ps(ift_nf4_levels);
    const __m128i low = _mm_set1_epi8(0x0F);
    if (bs % 16 == 0) {
        for (int64_t b = 0; b < blocks; b++) {
            const __m512 s = _mm512_set1_ps(absmax[b]);
            const uint8_t *c = codes + b * (bs / 2);
            float *o = out + b * bs;
            for (int64_t q = 0; q < bs / 2; q += 8) {
                __m128i by = _mm_loadl_epi64((const __m128i *)(c + q));
                __m128i lo = _mm_and_si128(by, low), hi = _mm_and_si128(_mm_srli_epi16(by, 4), low);
                __m512i idx = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
                _mm512_storeu_ps(o + 2 * q, _mm512_mul_ps(_mm512_permutexvar_ps(idx, table), s));
            }
        }
        return;
    }
#elif IFT_DECODE == 1 /* AVX2: two 8-entry permutes and a blend per 8 values */
    const __m256 t0 = _mm256_loadu_ps(ift_nf4_levels), t1 = _mm256_loadu_ps(ift_nf4_levels + 8);
    const __m128i low = _mm_set1_epi8(0x0F);
    const __m256i seven = _mm256_set1_epi32(7);
    if (bs % 16 == 0) {
        for (int64_t b = 0; b < blocks; b++) {
            const __m256 s = _mm256_set1_ps(absmax[b]);
            const uint8_t *c = codes + b * (bs / 2);
            float *o = out + b * bs;
            for (int64_t q = 0; q < bs / 2; q += 8) {
                __m128i by = _mm_loadl_epi64((const __m128i *)(c + q));
                __m128i lo = _mm_and_si128(by, low), hi = _mm_and_si128(_mm_srli_epi16(by, 4), low);
                __m128i inter = _mm_unpacklo_epi8(lo, hi);
                for (int half = 0; half < 2; half++) {
                    __m256i idx = _mm256_cvtepu8_epi32(half ? _mm_srli_si128(inter, 8) : inter);
                    __m256 a = _mm256_permutevar8x32_ps(t0, idx), z = _mm256_permutevar8x32_ps(t1, idx);
                    __m256 v = _mm256_blendv_ps(a, z, _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, seven)));
                    _mm256_storeu_ps(o + 2 * q + 8 * half, _mm256_mul_ps(v, s));
                }
            }
        }
        return;
    }
#endif
    for (int64_t b = 0; b < blocks; b++) {
        const float s = absmax[b];
        const uint8_t *c = codes + b * (bs / 2);
        float *o = out + b * bs;
        for (int64_t q = 0; q < bs / 2; q++) {
            o[2 * q] = ift_nf4_levels[c[q] & 0x0F] * s;
            o[2 * q + 1] = ift_nf4_levels[c[q] >> 4] * s;
        }
    }
}

/* ---- the Skip-LoRA step ----------------------------------------------------------------- */

/* h[b][k][r0+q] = A[r0+q, c0:c0+n] . x_b[0:n] for NS samples and 4 ranks (IFT_TW lanes each) */
IFT_ALWAYS_INLINE void KN(hdot)(const int ns, const float *A, int64_t D, int64_t r0, int64_t c0, int64_t n,
                                const float *const *x, float *h, int64_t KR, int64_t k, int64_t R)
{
    KN(tv) s[4][4];
    for (int i = 0; i < ns; i++)
        for (int q = 0; q < 4; q++) s[i][q] = (KN(tv)){0};
    const float *a0 = A + r0 * D + c0, *a1 = a0 + D, *a2 = a1 + D, *a3 = a2 + D;
    int64_t j = 0;
    for (; j + IFT_TW <= n; j += IFT_TW) {
        KN(tv) p0 = KN(tload)(a0 + j), p1 = KN(tload)(a1 + j), p2 = KN(tload)(a2 + j), p3 = KN(tload)(a3 + j);
        for (int i = 0; i < ns; i++) {
            KN(tv) v = KN(tload)(x[i] + j);
            s[i][0] += p0 * v;
            s[i][1] += p1 * v;
            s[i][2] += p2 * v;
            s[i][3] += p3 * v;
        }
    }
    for (int i = 0; i < ns; i++)
        for (int q = 0; q < 4; q++) {
            const float *aq = A + (r0 + q) * D + c0;
            float tail = 0.0f;
            for (int64_t l = j; l < n; l++) tail += aq[l] * x[i][l];
            h[i * KR + k * R + r0 + q] = IFT_CAT(ift_sum, IFT_TW)(s[i][q]) + tail;
        }
}

/* A[r0+q, c0+j] -= sum_i f[b+i][k][r0+q] * x_i[j] for j in [j0, j1), NS samples, 4 ranks: j outside,
 * so each x_i vector is loaded once for the four rows of A */
IFT_ALWAYS_INLINE void KN(aupd)(const int ns, float *A, int64_t D, int64_t r0, int64_t c0, int64_t j0, int64_t j1,
                                const float *const *x, const float *f, int64_t KR, int64_t k, int64_t R)
{
    float fq[4][4];
    for (int i = 0; i < ns; i++)
        for (int q = 0; q < 4; q++) fq[i][q] = f[i * KR + k * R + r0 + q];
    float *a[4] = {A + r0 * D + c0, A + (r0 + 1) * D + c0, A + (r0 + 2) * D + c0, A + (r0 + 3) * D + c0};
    int64_t j = j0;
    if (ns == 4) {
        const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
        /* (f0 x0 + f1 x1) + (f2 x2 + f3 x3): a tree, so the FMAs are not one dependent chain, and two
         * vectors an iteration */
        for (; j + 2 * IFT_TW <= j1; j += 2 * IFT_TW)
            for (int u = 0; u < 2; u++) {
                const int64_t jj = j + u * IFT_TW;
                KN(tv) v0 = KN(tload)(x0 + jj), v1 = KN(tload)(x1 + jj), v2 = KN(tload)(x2 + jj),
                       v3 = KN(tload)(x3 + jj);
                for (int q = 0; q < 4; q++) {
                    KN(tv) d = (v0 * fq[0][q] + v1 * fq[1][q]) + (v2 * fq[2][q] + v3 * fq[3][q]);
                    KN(tstore)(a[q] + jj, KN(tload)(a[q] + jj) - d);
                }
            }
        for (; j < j1; j++)
            for (int q = 0; q < 4; q++)
                a[q][j] -= (x0[j] * fq[0][q] + x1[j] * fq[1][q]) + (x2[j] * fq[2][q] + x3[j] * fq[3][q]);
    } else {
        const float *x0 = x[0];
        for (; j + IFT_TW <= j1; j += IFT_TW) {
            KN(tv) v0 = KN(tload)(x0 + j);
            for (int q = 0; q < 4; q++) KN(tstore)(a[q] + j, KN(tload)(a[q] + j) - v0 * fq[0][q]);
        }
        for (; j < j1; j++)
            for (int q = 0; q < 4; q++) a[q][j] -= x0[j] * fq[0][q];
    }
}

/* forward of samples [b0, b1): h (nb x K x R) */
static void KN(step_forward)(const ift_adapters *ad, const float *const *xin, int64_t b0, int64_t b1, float *h)
{
    const int64_t K = ad->K, R = ad->R, KR = K * R, D = ad->D;
    for (int64_t k = 0; k < K; k++) {
        const int64_t *sg = ad->seg + 4 * k;
        const int64_t src = sg[0], off = sg[1], c0 = sg[2], n = sg[3];
        for (int64_t b = b0; b < b1;) {
            const int ns = b + IFT_HS <= b1 ? IFT_HS : 1;
            const float *x[4];
            for (int i = 0; i < ns; i++) x[i] = xin[2 * (b + i) + (src == IFT_SRC_CACHE)] + off;
            for (int64_t r0 = 0; r0 < R; r0 += 4) {
                if (ns == IFT_HS)
                    KN(hdot)(IFT_HS, ad->A, D, r0, c0, n, x, h + b * KR, KR, k, R);
                else
                    KN(hdot)(1, ad->A, D, r0, c0, n, x, h + b * KR, KR, k, R);
            }
            b += ns;
        }
    }
}

/* update of the columns [lo, hi) of A from f (nb x K x R) */
static void KN(step_update)(const ift_adapters *ad, const float *const *xin, int64_t nb, const float *f, int64_t lo,
                            int64_t hi)
{
    const int64_t K = ad->K, R = ad->R, KR = K * R, D = ad->D;
    for (int64_t k = 0; k < K; k++) {
        const int64_t *sg = ad->seg + 4 * k;
        const int64_t src = sg[0], off = sg[1], c0 = sg[2], n = sg[3];
        int64_t j0 = lo - c0 > 0 ? lo - c0 : 0, j1 = hi - c0 < n ? hi - c0 : n;
        if (j0 >= j1) continue;
        for (int64_t b = 0; b < nb;) {
            const int ns = b + 4 <= nb ? 4 : 1;
            const float *x[4];
            for (int i = 0; i < ns; i++) x[i] = xin[2 * (b + i) + (src == IFT_SRC_CACHE)] + off;
            for (int64_t r0 = 0; r0 < R; r0 += 4) {
                if (ns == 4)
                    KN(aupd)(4, ad->A, D, r0, c0, j0, j1, x, f + b * KR, KR, k, R);
                else
                    KN(aupd)(1, ad->A, D, r0, c0, j0, j1, x, f + b * KR, KR, k, R);
            }
            b += ns;
        }
    }
}

/* logits, softmax, loss, g, f = lr*scale*g B (B before the step), then B -= lr*scale*g^T h.
 * Returns the mean loss of the nb samples. */
static double KN(step_head)(const ift_adapters *ad, const float *const *xin, const int64_t *labels, int64_t nb,
                            float lr, const float *h, float *g, float *f, float *y)
{
    /* K*R is a multiple of 4 (R is): every loop over it runs on 4-float vectors */
    const int64_t C = ad->C, KR = ad->K * ad->R;
    float *B = ad->B;
    double loss = 0.0;
    for (int64_t b = 0; b < nb; b++) {
        const float *row = xin[2 * b + 1], *hb = h + b * KR;
        float m = -INFINITY;
        for (int64_t c = 0; c < C; c++) {
            const float *bc = B + c * KR;
            ift_v4 v = {0};
            for (int64_t j = 0; j < KR; j += 4) v += *(const ift_v4 *)(bc + j) * *(const ift_v4 *)(hb + j);
            y[c] = row[ad->logit_offset + c] + ad->scale * ift_sum_4(v);
            m = y[c] > m || y[c] != y[c] ? y[c] : m;
        }
        float total = 0.0f, *gb = g + b * C;
        for (int64_t c = 0; c < C; c++) {
            gb[c] = expf(y[c] - m);
            total += gb[c];
        }
        int64_t label = labels[b];
        loss += (double)logf(total) + (double)m - (double)y[label];
        for (int64_t c = 0; c < C; c++) gb[c] = gb[c] / total / (float)nb;
        gb[label] -= 1.0f / (float)nb;
    }
    const float step = lr * ad->scale;
    for (int64_t b = 0; b < nb; b++) { /* f = lr*scale*g B, with B from before the step */
        float *fb = f + b * KR;
        for (int64_t j = 0; j < KR; j += 4) {
            ift_v4 acc = {0};
            for (int64_t c = 0; c < C; c++) acc += *(const ift_v4 *)(B + c * KR + j) * (step * g[b * C + c]);
            *(ift_v4 *)(fb + j) = acc;
        }
    }
    for (int64_t c = 0; c < C; c++) { /* B -= lr*scale*g^T h */
        float *bc = B + c * KR;
        for (int64_t j = 0; j < KR; j += 4) {
            ift_v4 acc = *(const ift_v4 *)(bc + j);
            for (int64_t b = 0; b < nb; b++) acc -= *(const ift_v4 *)(h + b * KR + j) * (step * g[b * C + c]);
            *(ift_v4 *)(bc + j) = acc;
        }
    }
    return loss / (double)nb;
}

static int64_t KN(train)(const ift_adapters *ad, const ift_cache *cache, const float *images, int64_t image_width,
                         const int64_t *slot_of, const int64_t *labels, const int64_t *order, const int64_t *offsets,
                         int64_t first, int64_t last, float lr, double *losses, int threads)
{
    const int64_t C = ad->C, KR = ad->K * ad->R;
    (void)threads;
    int64_t nb_max = 0;
    for (int64_t s = first; s < last; s++) nb_max = offsets[s + 1] - offsets[s] > nb_max ? offsets[s + 1] - offsets[s] : nb_max;
    const int nf4 = cache->storage == IFT_NF4;
    const int64_t dw = nf4 ? cache->blocks * cache->block_size : 0;
    size_t floats = (size_t)(nb_max * (2 * KR + C) + C + nb_max * dw + 16);
    float *work = malloc(floats * sizeof(float));
    const float **xin = malloc((size_t)(2 * nb_max + 2) * sizeof(*xin));
    int64_t *lab = malloc((size_t)(nb_max + 1) * sizeof(*lab));
    if (!work || !xin || !lab) {
        free(work);
        free(xin);
        free(lab);
        return -1;
    }
    float *h = work, *f = h + nb_max * KR, *g = f + nb_max * KR, *y = g + nb_max * C, *decoded = y + C + 16;
    int64_t done = last - first;
    int stop = 0;
#ifdef _OPENMP
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        for (int64_t s = first; s < last && !stop; s++) {
            const int64_t lo = offsets[s], nb = offsets[s + 1] - offsets[s];
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t b = 0; b < nb; b++) {
                const int64_t i = order[lo + b], slot = slot_of[i];
                xin[2 * b] = images ? images + i * image_width : NULL;
                if (nf4) {
                    float *d = decoded + b * dw;
                    KN(decode)(cache->codes + slot * (cache->blocks * cache->block_size / 2),
                               cache->absmax + slot * cache->blocks, cache->blocks, cache->block_size, d);
                    xin[2 * b + 1] = d;
                } else {
                    xin[2 * b + 1] = cache->rows + slot * cache->width;
                }
                lab[b] = labels[i];
            }
#ifdef _OPENMP
            int nt = omp_get_num_threads(), me = omp_get_thread_num();
#else
            int nt = 1, me = 0;
#endif
            {   /* samples in groups of IFT_HS, split evenly */
                int64_t groups = (nb + IFT_HS - 1) / IFT_HS, p0 = groups * me / nt, p1 = groups * (me + 1) / nt;
                int64_t b0 = IFT_HS * p0, b1 = IFT_HS * p1 < nb ? IFT_HS * p1 : nb;
                if (b0 < b1) KN(step_forward)(ad, xin, b0, b1, h);
            }
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
            {
                double loss = KN(step_head)(ad, xin, lab, nb, lr, h, g, f, y);
                losses[s] = loss;
                if (!isfinite(loss)) {
                    done = s + 1 - first;
                    stop = 1;
                }
            } /* implicit barrier */
            {   /* the adapters are independent given g: columns of A split evenly */
                int64_t c0 = ad->D * me / nt, c1 = ad->D * (me + 1) / nt;
                KN(step_update)(ad, xin, nb, f, c0, c1);
            }
#ifdef _OPENMP
#pragma omp barrier
#endif
        }
    }
    free(work);
    free(xin);
    free(lab);
    return done;
}

static void KN(logits)(const ift_adapters *ad, const float *image, const float *row, float *logits)
{
    const int64_t K = ad->K, R = ad->R, KR = K * R, C = ad->C;
    float h[IFT_MAX_KR];
    const float *xin[2] = {image, row};
    KN(step_forward)(ad, xin, 0, 1, h);
    for (int64_t c = 0; c < C; c++) {
        const float *bc = ad->B + c * KR;
        float v = 0.0f;
        for (int64_t j = 0; j < KR; j++) v += bc[j] * h[j];
        logits[c] = row[ad->logit_offset + c] + ad->scale * v;
    }
}
