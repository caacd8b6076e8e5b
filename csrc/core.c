/* The C core's entry points: the chain (shapes and checks), the Forward Cache, and the batch
 * functions (fill, train, predict), dispatching to the kernels of the best instruction set the
 * CPU has (kern.h, compiled here once per set). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "instantft.h"
#include "internal.h"

#define IFT_MAX_KR 4096
#define IFT_G 4 /* samples a fill runs through the chain together */ /* K * R of one sample's projections kept on the stack */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define IFT_X86_DISPATCH 1
#include <immintrin.h>
#endif

/* scratch of a conv: stride 1, the zero-padded input (with room for the shifted reads of the
 * last tile) then the wide output; other strides, the im2col matrix */
static int64_t ift_conv_padded_len(const ift_op *op)
{
    const int64_t Hp = op->in_h + 2 * op->ph, Wp = op->in_w + 2 * op->pw;
    const int64_t M = (int64_t)op->out_h * Wp, Mp = (M + IFT_JB_MAX - 1) / IFT_JB_MAX * IFT_JB_MAX;
    const int64_t last = (op->in_c - 1) * Hp * Wp + (op->kh - 1) * Wp + (op->kw - 1) + Mp;
    int64_t n = op->in_c * Hp * Wp > last ? op->in_c * Hp * Wp : last;
    return (n + 15) / 16 * 16;
}

static int64_t ift_conv_work(const ift_op *op)
{
    if (op->sh == 1 && op->sw == 1) {
        const int64_t Wp = op->in_w + 2 * op->pw, M = (int64_t)op->out_h * Wp;
        return ift_conv_padded_len(op) + (int64_t)op->out_c * ((M + IFT_JB_MAX - 1) / IFT_JB_MAX * IFT_JB_MAX);
    }
    const int64_t N = (int64_t)op->out_h * op->out_w, Np = (N + IFT_JB_MAX - 1) / IFT_JB_MAX * IFT_JB_MAX;
    return (int64_t)op->in_c * op->kh * op->kw * Np;
}

/* 16 floats: the partial sums of every dot product of the fill, whatever the target's registers */
typedef float ift_v16 __attribute__((vector_size(64), aligned(4), may_alias));
#define ift_load16(p) (*(const ift_v16 *)(p))
typedef float ift_v8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef float ift_v4 __attribute__((vector_size(16), aligned(4), may_alias));

/* horizontal sums as a fixed tree (halves added, down to 4 lanes): the same order on every
 * instruction set, and a few extract+add instructions instead of one add per lane */
#define IFT_INLINE static inline __attribute__((always_inline))
IFT_INLINE float ift_sum_4(ift_v4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
IFT_INLINE float ift_sum_8(ift_v8 v)
{
    ift_v4 a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char *)&v + sizeof a, sizeof b);
    return ift_sum_4(a + b);
}
IFT_INLINE float ift_sum_16(ift_v16 v)
{
    ift_v8 a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char *)&v + sizeof a, sizeof b);
    return ift_sum_8(a + b);
}

#define IFT_CAT_(a, b) a##_##b
#define IFT_CAT(a, b) IFT_CAT_(a, b)

/* the portable copy (plain C; on aarch64 -O3 vectorises it with NEON) */
#define KN(name) IFT_CAT(name, generic)
#define IFT_JB 8
#define IFT_VW 4
#define IFT_LO 2
#define IFT_HS 2
#define IFT_TW IFT_VW
#define IFT_DECODE 0
#include "kern.h"
#undef KN
#undef IFT_JB
#undef IFT_VW
#undef IFT_LO
#undef IFT_HS
#undef IFT_TW
#undef IFT_DECODE

#ifdef IFT_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define KN(name) IFT_CAT(name, avx2)
#define IFT_JB 16
#define IFT_VW 8
#define IFT_LO 2
#define IFT_HS 2
#define IFT_TW IFT_VW
#define IFT_DECODE 1
#include "kern.h"
#undef KN
#undef IFT_JB
#undef IFT_VW
#undef IFT_LO
#undef IFT_HS
#undef IFT_TW
#undef IFT_DECODE
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#define KN(name) IFT_CAT(name, avx512)
#define IFT_JB 32
#define IFT_VW 16
#define IFT_LO 4
#define IFT_HS 4
#define IFT_TW 8
#define IFT_DECODE 2
#include "kern.h"
#undef KN
#undef IFT_JB
#undef IFT_VW
#undef IFT_LO
#undef IFT_HS
#undef IFT_TW
#undef IFT_DECODE
#pragma GCC pop_options
#endif

#if defined(__aarch64__)
#define IFT_GENERIC_NAME "neon"
#else
#define IFT_GENERIC_NAME "generic"
#endif

static const ift_kernels kernels_generic = {IFT_GENERIC_NAME, forward_generic, forward_group_generic, encode_row_generic, decode_generic, train_generic,
                                            logits_generic};
#ifdef IFT_X86_DISPATCH
static const ift_kernels kernels_avx2 = {"avx2", forward_avx2, forward_group_avx2, encode_row_avx2, decode_avx2, train_avx2, logits_avx2};
static const ift_kernels kernels_avx512 = {"avx512", forward_avx512, forward_group_avx512, encode_row_avx512, decode_avx512, train_avx512, logits_avx512};
#endif

/* The best kernels for this CPU; IFT_ISA=generic|avx2|avx512 forces a lower set (tests, bench). */
const ift_kernels *ift_kernels_get(void)
{
    static const ift_kernels *chosen = NULL;
    if (chosen) return chosen;
    const ift_kernels *k = &kernels_generic;
#ifdef IFT_X86_DISPATCH
    __builtin_cpu_init();
    const char *want = getenv("IFT_ISA");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    if (want && strcmp(want, "generic") == 0) avx2 = avx512 = 0;
    if (want && strcmp(want, "avx2") == 0) avx512 = 0;
    k = avx512 ? &kernels_avx512 : avx2 ? &kernels_avx2 : &kernels_generic;
#endif
    chosen = k; /* a benign race: every thread stores the same pointer */
    return chosen;
}

int ift_abi_version(void) { return IFT_ABI_VERSION; }

/* ---- the ABI's struct layout, for ctypes ------------------------------------------------ */
typedef struct {
    const char *name;
    size_t offset;
} ift_field;

#define IFT_FIELD(S, m) {#m, offsetof(S, m)}

static size_t layout_line(char *out, size_t cap, size_t len, const char *name, size_t size, const ift_field *f,
                          size_t n)
{
    if (len < cap) len += (size_t)snprintf(out + len, cap - len, "%s %zu", name, size);
    for (size_t i = 0; i < n && len < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, " %s:%zu", f[i].name, f[i].offset);
    if (len < cap) len += (size_t)snprintf(out + len, cap - len, "\n");
    return len;
}

const char *ift_layout_info(void)
{
    static char info[2048];
    static const ift_field op[] = {
        IFT_FIELD(ift_op, kind),   IFT_FIELD(ift_op, out_c),  IFT_FIELD(ift_op, kh),         IFT_FIELD(ift_op, kw),
        IFT_FIELD(ift_op, sh),     IFT_FIELD(ift_op, sw),     IFT_FIELD(ift_op, ph),         IFT_FIELD(ift_op, pw),
        IFT_FIELD(ift_op, tap),    IFT_FIELD(ift_op, weight), IFT_FIELD(ift_op, bias),       IFT_FIELD(ift_op, in_c),
        IFT_FIELD(ift_op, in_h),   IFT_FIELD(ift_op, in_w),   IFT_FIELD(ift_op, out_h),      IFT_FIELD(ift_op, out_w),
        IFT_FIELD(ift_op, out_cc), IFT_FIELD(ift_op, tap_offset),
    };
    static const ift_field chain[] = {
        IFT_FIELD(ift_chain, ops),          IFT_FIELD(ift_chain, n_ops),       IFT_FIELD(ift_chain, in_c),
        IFT_FIELD(ift_chain, in_h),         IFT_FIELD(ift_chain, in_w),        IFT_FIELD(ift_chain, in_size),
        IFT_FIELD(ift_chain, num_classes),  IFT_FIELD(ift_chain, row_width),   IFT_FIELD(ift_chain, logit_offset),
        IFT_FIELD(ift_chain, input_is_tap), IFT_FIELD(ift_chain, n_taps),      IFT_FIELD(ift_chain, work_floats),
        IFT_FIELD(ift_chain, act_floats),
    };
    static const ift_field cache[] = {
        IFT_FIELD(ift_cache, storage),  IFT_FIELD(ift_cache, width),   IFT_FIELD(ift_cache, capacity),
        IFT_FIELD(ift_cache, count),    IFT_FIELD(ift_cache, block_size), IFT_FIELD(ift_cache, blocks),
        IFT_FIELD(ift_cache, rows),     IFT_FIELD(ift_cache, codes),   IFT_FIELD(ift_cache, absmax),
        IFT_FIELD(ift_cache, keys),     IFT_FIELD(ift_cache, slot_of), IFT_FIELD(ift_cache, key_space),
        IFT_FIELD(ift_cache, owns),
    };
    static const ift_field adapters[] = {
        IFT_FIELD(ift_adapters, K),   IFT_FIELD(ift_adapters, R), IFT_FIELD(ift_adapters, C),
        IFT_FIELD(ift_adapters, D),   IFT_FIELD(ift_adapters, seg), IFT_FIELD(ift_adapters, A),
        IFT_FIELD(ift_adapters, B),   IFT_FIELD(ift_adapters, logit_offset), IFT_FIELD(ift_adapters, scale),
    };
    static const ift_field train[] = {
        IFT_FIELD(ift_train_args, cache),   IFT_FIELD(ift_train_args, images),  IFT_FIELD(ift_train_args, image_width),
        IFT_FIELD(ift_train_args, slot_of), IFT_FIELD(ift_train_args, labels),  IFT_FIELD(ift_train_args, order),
        IFT_FIELD(ift_train_args, offsets), IFT_FIELD(ift_train_args, n_steps), IFT_FIELD(ift_train_args, losses),
        IFT_FIELD(ift_train_args, lr),      IFT_FIELD(ift_train_args, threads),
    };
#define IFT_N(a) (sizeof a / sizeof a[0])
    if (!info[0]) { /* a benign race: every thread writes the same bytes */
        size_t len = 0;
        len = layout_line(info, sizeof info, len, "ift_op", sizeof(ift_op), op, IFT_N(op));
        len = layout_line(info, sizeof info, len, "ift_chain", sizeof(ift_chain), chain, IFT_N(chain));
        len = layout_line(info, sizeof info, len, "ift_cache", sizeof(ift_cache), cache, IFT_N(cache));
        len = layout_line(info, sizeof info, len, "ift_adapters", sizeof(ift_adapters), adapters, IFT_N(adapters));
        layout_line(info, sizeof info, len, "ift_train_args", sizeof(ift_train_args), train, IFT_N(train));
    }
#undef IFT_N
    return info;
}

const char *ift_build_info(void)
{
    static char info[64];
    snprintf(info, sizeof info, "%s%s", ift_kernels_get()->name,
#ifdef _OPENMP
             "+openmp"
#else
             ""
#endif
    );
    return info;
}

const char *ift_strerror(int code)
{
    switch (code) {
    case IFT_OK: return "ok";
    case IFT_EINVAL: return "invalid argument";
    case IFT_ENOMEM: return "out of memory";
    case IFT_EFULL: return "cache full";
    case IFT_EKEY: return "bad or repeated cache key";
    case IFT_ELOSS: return "non-finite loss";
    case IFT_EPARAM: return "non-finite adapter weights after the last update";
    default: return "unknown error";
    }
}

static int threads_for(int threads)
{
#ifdef _OPENMP
    return threads > 0 ? threads : omp_get_max_threads();
#else
    (void)threads;
    return 1;
#endif
}

/* ---- the chain ------------------------------------------------------------------------- */
static int fail(char *err, size_t errlen, int32_t i, const char *msg)
{
    if (err && errlen) snprintf(err, errlen, "op %d: %s", (int)i, msg);
    return IFT_EINVAL;
}

int ift_chain_init(ift_chain *ch, ift_op *ops, int32_t n_ops, int32_t in_c, int32_t in_h, int32_t in_w, char *err,
                   size_t errlen)
{
    if (!ch || !ops || n_ops < 1) return fail(err, errlen, 0, "no ops");
    if (in_c < 1 || in_h < 1 || in_w < 1) return fail(err, errlen, 0, "input shape must be positive");
    memset(ch, 0, sizeof *ch);
    ch->ops = ops;
    ch->n_ops = n_ops;
    ch->in_c = in_c, ch->in_h = in_h, ch->in_w = in_w;
    ch->in_size = (int64_t)in_c * in_h * in_w;
    int64_t c = in_c, h = in_h, w = in_w, offset = 0, act = ch->in_size, col = 0;
    for (int32_t i = 0; i < n_ops; i++) {
        ift_op *op = &ops[i];
        op->in_c = (int32_t)c, op->in_h = (int32_t)h, op->in_w = (int32_t)w;
        int64_t in_size = c * h * w;
        if (op->tap < IFT_TAP_NONE || op->tap > IFT_TAP_INPUT) return fail(err, errlen, i, "bad tap kind");
        if (op->tap == IFT_TAP_INPUT && in_size != ch->in_size)
            return fail(err, errlen, i, "a tap equal to the model input must have its size");
        op->tap_offset = -1;
        if (op->tap == IFT_TAP_CACHED) {
            op->tap_offset = offset;
            offset += in_size;
        }
        if (op->tap != IFT_TAP_NONE) ch->n_taps++;
        if (i == 0 && op->tap == IFT_TAP_INPUT) ch->input_is_tap = 1;
        switch (op->kind) {
        case IFT_OP_CONV2D:
        case IFT_OP_MAXPOOL: {
            if (op->kh < 1 || op->kw < 1 || op->sh < 1 || op->sw < 1 || op->ph < 0 || op->pw < 0)
                return fail(err, errlen, i, "kernel and stride must be >= 1, padding >= 0");
            int64_t oh = (h + 2 * op->ph - op->kh) / op->sh + 1, ow = (w + 2 * op->pw - op->kw) / op->sw + 1;
            if (h + 2 * op->ph < op->kh || w + 2 * op->pw < op->kw || oh < 1 || ow < 1)
                return fail(err, errlen, i, "kernel larger than the padded input");
            if (op->kind == IFT_OP_CONV2D) {
                if (op->out_c < 1 || !op->weight) return fail(err, errlen, i, "conv needs out_c >= 1 and a weight");
                op->out_h = (int32_t)oh, op->out_w = (int32_t)ow;
                int64_t t = ift_conv_work(op);
                col = t > col ? t : col;
                c = op->out_c;
            } else if (2 * op->ph > op->kh || 2 * op->pw > op->kw) {
                return fail(err, errlen, i, "pool padding must be at most half the kernel");
            }
            h = oh, w = ow;
            break;
        }
        case IFT_OP_RELU: break;
        case IFT_OP_FLATTEN:
            c = c * h * w, h = 1, w = 1;
            break;
        case IFT_OP_LINEAR:
            if (op->out_c < 1 || !op->weight) return fail(err, errlen, i, "linear needs out_c >= 1 and a weight");
            c = op->out_c, h = 1, w = 1;
            break;
        default: return fail(err, errlen, i, "unknown op kind");
        }
        op->out_cc = (int32_t)c, op->out_h = (int32_t)h, op->out_w = (int32_t)w;
        act = c * h * w > act ? c * h * w : act;
    }
    ch->num_classes = c * h * w;
    ch->logit_offset = offset;
    ch->row_width = offset + ch->num_classes;
    ch->act_floats = (act + 15) / 16 * 16;
    ch->work_floats = 2 * IFT_G * ch->act_floats + col + 16;
    return IFT_OK;
}

int ift_chain_tap_sizes(const ift_chain *ch, int64_t *sizes)
{
    int32_t k = 0;
    for (int32_t i = 0; i < ch->n_ops; i++)
        if (ch->ops[i].tap != IFT_TAP_NONE)
            sizes[k++] = (int64_t)ch->ops[i].in_c * ch->ops[i].in_h * ch->ops[i].in_w;
    return IFT_OK;
}

int ift_chain_segments(const ift_chain *ch, int64_t *seg)
{
    int64_t col = 0;
    int32_t k = 0;
    for (int32_t i = 0; i < ch->n_ops; i++) {
        const ift_op *op = &ch->ops[i];
        if (op->tap == IFT_TAP_NONE) continue;
        int64_t n = (int64_t)op->in_c * op->in_h * op->in_w;
        int64_t *s = seg + 4 * k++;
        s[0] = op->tap == IFT_TAP_INPUT ? IFT_SRC_IMAGE : IFT_SRC_CACHE;
        s[1] = op->tap == IFT_TAP_INPUT ? 0 : op->tap_offset;
        s[2] = col;
        s[3] = n;
        col += n;
    }
    return IFT_OK;
}

void ift_chain_forward(const ift_chain *ch, const float *image, float *row, float *work)
{
    ift_kernels_get()->forward(ch, image, row, work);
}

/* rows [lo, hi) of a fill, one work buffer per thread; nf4: encode each row while it is hot */
static int fill_any(const ift_chain *ch, const float *images, int64_t n, float *rows, int64_t block_size,
                    uint8_t *codes, float *absmax, int threads)
{
    if (!ch || (!images && n > 0) || n < 0) return IFT_EINVAL;
    const ift_kernels *kern = ift_kernels_get();
    const int nt = threads_for(threads);
    const int64_t cb = codes ? ift_nf4_code_bytes(ch->row_width, block_size) : 0;
    const int64_t nb = codes ? ift_nf4_blocks(ch->row_width, block_size) : 0;
    const int64_t groups = (n + IFT_G - 1) / IFT_G;
    int status = IFT_OK;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && n > 16)
#endif
    {
        float *work = malloc((size_t)(ch->work_floats + (codes ? IFT_G * ch->row_width : 0)) * sizeof(float));
        if (!work) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = IFT_ENOMEM;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
        for (int64_t gi = 0; gi < groups; gi++) {
            if (!work) continue;
            const int64_t i0 = gi * IFT_G;
            const int g = n - i0 < IFT_G ? (int)(n - i0) : IFT_G;
            const float *x[IFT_G];
            float *r[IFT_G];
            for (int i = 0; i < g; i++) {
                x[i] = images + (i0 + i) * ch->in_size;
                r[i] = codes ? work + ch->work_floats + i * ch->row_width : rows + (i0 + i) * ch->row_width;
            }
            kern->forward_group(ch, x, r, g, work);
            if (codes)
                for (int i = 0; i < g; i++)
                    kern->encode(r[i], ch->row_width, block_size, codes + (i0 + i) * cb, absmax + (i0 + i) * nb);
        }
        free(work);
    }
    (void)nt;
    return status;
}

int ift_chain_fill_fp32(const ift_chain *ch, const float *images, int64_t n, float *rows, int threads)
{
    if (!rows && n > 0) return IFT_EINVAL;
    return fill_any(ch, images, n, rows, 0, NULL, NULL, threads);
}

static int block_ok(int64_t block_size) { return block_size >= 2 && block_size % 2 == 0 && block_size <= (1 << 20); }

int ift_chain_fill_nf4(const ift_chain *ch, const float *images, int64_t n, int64_t block_size, uint8_t *codes,
                       float *absmax, int threads)
{
    if (!block_ok(block_size) || ((!codes || !absmax) && n > 0)) return IFT_EINVAL;
    return fill_any(ch, images, n, NULL, block_size, codes, absmax, threads);
}

/* ---- the Forward Cache ----------------------------------------------------------------- */
int ift_cache_alloc(ift_cache *c, int storage, int64_t width, int64_t capacity, int64_t block_size, int64_t key_space)
{
    if (!c || width < 1 || capacity < 0 || key_space < 0 || (storage != IFT_FP32 && storage != IFT_NF4))
        return IFT_EINVAL;
    if (storage == IFT_NF4 && !block_ok(block_size)) return IFT_EINVAL;
    memset(c, 0, sizeof *c);
    c->storage = storage;
    c->width = width;
    c->capacity = capacity;
    c->block_size = storage == IFT_NF4 ? block_size : 0;
    c->blocks = storage == IFT_NF4 ? ift_nf4_blocks(width, block_size) : 0;
    c->key_space = key_space;
    c->owns = 1;
    size_t cap = (size_t)(capacity > 0 ? capacity : 1);
    if (storage == IFT_FP32) {
        c->rows = malloc(cap * (size_t)width * sizeof(float));
    } else {
        c->codes = malloc(cap * (size_t)ift_nf4_code_bytes(width, block_size));
        c->absmax = malloc(cap * (size_t)c->blocks * sizeof(float));
    }
    c->keys = malloc(cap * sizeof(int64_t));
    c->slot_of = malloc((size_t)(key_space > 0 ? key_space : 1) * sizeof(int64_t));
    if ((storage == IFT_FP32 ? !c->rows : (!c->codes || !c->absmax)) || !c->keys || !c->slot_of) {
        ift_cache_free(c);
        return IFT_ENOMEM;
    }
    for (int64_t k = 0; k < key_space; k++) c->slot_of[k] = -1;
    return IFT_OK;
}

void ift_cache_free(ift_cache *c)
{
    if (!c || !c->owns) return;
    free(c->rows);
    free(c->codes);
    free(c->absmax);
    free(c->keys);
    free(c->slot_of);
    memset(c, 0, sizeof *c);
}

int64_t ift_cache_nbytes(const ift_cache *c)
{
    int64_t row = c->storage == IFT_FP32 ? 4 * c->width : ift_nf4_row_bytes(c->width, c->block_size);
    return c->count * row;
}

int64_t ift_cache_slot(const ift_cache *c, int64_t key)
{
    if (!c || !c->slot_of || key < 0 || key >= c->key_space) return -1;
    return c->slot_of[key];
}

/* all keys new, distinct, in range, and room for them; marks nothing */
static int check_keys(const ift_cache *c, const int64_t *keys, int64_t n)
{
    if (n < 0 || (n > 0 && !keys)) return IFT_EINVAL;
    if (c->count + n > c->capacity) return IFT_EFULL;
    int64_t i = 0;
    for (; i < n; i++) {
        int64_t k = keys[i];
        if (k < 0 || k >= c->key_space || c->slot_of[k] != -1) break;
        c->slot_of[k] = -2; /* provisional, to catch repeats */
    }
    for (int64_t j = 0; j < i; j++) c->slot_of[keys[j]] = -1;
    return i == n ? IFT_OK : IFT_EKEY;
}

static void record(ift_cache *c, const int64_t *keys, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        c->keys[c->count + i] = keys[i];
        c->slot_of[keys[i]] = c->count + i;
    }
    c->count += n;
}

int ift_cache_import_fp32(ift_cache *c, const int64_t *keys, int64_t n, const float *rows)
{
    if (!c || (!rows && n > 0)) return IFT_EINVAL;
    int rc = check_keys(c, keys, n);
    if (rc) return rc;
    if (c->storage == IFT_FP32)
        memcpy(c->rows + c->count * c->width, rows, (size_t)(n * c->width) * sizeof(float));
    else
        ift_nf4_encode_rows(rows, n, c->width, c->block_size,
                            c->codes + c->count * ift_nf4_code_bytes(c->width, c->block_size),
                            c->absmax + c->count * c->blocks);
    record(c, keys, n);
    return IFT_OK;
}

int ift_cache_import_nf4(ift_cache *c, const int64_t *keys, int64_t n, const uint8_t *codes, const float *absmax)
{
    if (!c || c->storage != IFT_NF4 || ((!codes || !absmax) && n > 0)) return IFT_EINVAL;
    int rc = check_keys(c, keys, n);
    if (rc) return rc;
    int64_t cb = ift_nf4_code_bytes(c->width, c->block_size);
    memcpy(c->codes + c->count * cb, codes, (size_t)(n * cb));
    memcpy(c->absmax + c->count * c->blocks, absmax, (size_t)(n * c->blocks) * sizeof(float));
    record(c, keys, n);
    return IFT_OK;
}

int ift_cache_row(const ift_cache *c, int64_t slot, float *out)
{
    if (!c || !out || slot < 0 || slot >= c->count) return IFT_EINVAL;
    if (c->storage == IFT_FP32)
        memcpy(out, c->rows + slot * c->width, (size_t)c->width * sizeof(float));
    else
        ift_nf4_decode_row(c->codes + slot * ift_nf4_code_bytes(c->width, c->block_size), c->absmax + slot * c->blocks,
                           c->width, c->block_size, out);
    return IFT_OK;
}

int ift_cache_fill_chain(ift_cache *c, const ift_chain *ch, const int64_t *keys, const float *images, int64_t n,
                         int threads)
{
    if (!c || !ch || ch->row_width != c->width || n < 0 || (n > 0 && (!keys || !images))) return IFT_EINVAL;
    int64_t todo = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = keys[i];
        if (k < 0 || k >= c->key_space) return IFT_EKEY;
        todo += c->slot_of[k] == -1;
    }
    /* the missing samples' images, in order, then one fill straight into the free slots */
    int64_t *new_keys = malloc((size_t)(todo > 0 ? todo : 1) * sizeof(int64_t));
    float *x = malloc((size_t)(todo > 0 ? todo : 1) * (size_t)ch->in_size * sizeof(float));
    if (!new_keys || !x) {
        free(new_keys);
        free(x);
        return IFT_ENOMEM;
    }
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (c->slot_of[keys[i]] == -1) {
            new_keys[m] = keys[i];
            memcpy(x + m * ch->in_size, images + i * ch->in_size, (size_t)ch->in_size * sizeof(float));
            m++;
        }
    int rc = check_keys(c, new_keys, m);
    if (rc == IFT_OK) {
        if (c->storage == IFT_FP32)
            rc = ift_chain_fill_fp32(ch, x, m, c->rows + c->count * c->width, threads);
        else
            rc = ift_chain_fill_nf4(ch, x, m, c->block_size,
                                    c->codes + c->count * ift_nf4_code_bytes(c->width, c->block_size),
                                    c->absmax + c->count * c->blocks, threads);
        if (rc == IFT_OK) record(c, new_keys, m);
    }
    free(new_keys);
    free(x);
    return rc;
}

/* ---- adapters -------------------------------------------------------------------------- */
int ift_adapters_check(const ift_adapters *ad, int64_t image_width, int64_t row_width)
{
    if (!ad || !ad->seg || !ad->A || !ad->B || ad->K < 1 || ad->R < 4 || ad->R % 4 || ad->C < 1 || ad->D < 1)
        return IFT_EINVAL;
    if (ad->K * ad->R > IFT_MAX_KR) return IFT_EINVAL;
    if (ad->logit_offset < 0 || ad->logit_offset + ad->C > row_width) return IFT_EINVAL;
    for (int64_t k = 0; k < ad->K; k++) {
        const int64_t *s = ad->seg + 4 * k;
        int64_t limit = s[0] == IFT_SRC_IMAGE ? image_width : row_width;
        if ((s[0] != IFT_SRC_IMAGE && s[0] != IFT_SRC_CACHE) || s[1] < 0 || s[3] < 1 || s[1] + s[3] > limit ||
            s[2] < 0 || s[2] + s[3] > ad->D)
            return IFT_EINVAL;
    }
    return IFT_OK;
}

static int all_finite(const float *x, int64_t n)
{
    int ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= isfinite(x[i]) != 0;
    return ok;
}

int64_t ift_train(const ift_adapters *ad, const ift_train_args *args, int64_t first, int64_t last, int *status)
{
    int dummy;
    if (!status) status = &dummy;
    *status = IFT_EINVAL;
    if (!args) return 0;
    const ift_cache *cache = args->cache;
    if (!cache || !args->slot_of || !args->labels || !args->order || !args->offsets || !args->losses || first < 0 ||
        last < first || last > args->n_steps)
        return 0;
    if (ift_adapters_check(ad, args->images ? args->image_width : 0, cache->width)) return 0;
    if (cache->storage == IFT_FP32 ? !cache->rows : (!cache->codes || !cache->absmax || cache->block_size < 2))
        return 0;
    for (int64_t s = first; s < last; s++)
        if (args->offsets[s + 1] < args->offsets[s]) return 0;
    if (last == first) {
        *status = IFT_OK;
        return 0;
    }
    int64_t done = ift_kernels_get()->train(ad, cache, args->images, args->image_width, args->slot_of, args->labels,
                                            args->order, args->offsets, first, last, args->lr, args->losses,
                                            args->threads > 1 ? args->threads : 1);
    if (done < 0) {
        *status = IFT_ENOMEM;
        return 0;
    }
    if (done < last - first)
        *status = IFT_ELOSS;
    else if (!all_finite(ad->A, ad->R * ad->D) || !all_finite(ad->B, ad->C * ad->K * ad->R))
        *status = IFT_EPARAM;
    else
        *status = IFT_OK;
    return done;
}

static int pack_ok(const ift_adapters *ad, int64_t rank)
{
    if (!ad || !ad->seg || !ad->A || !ad->B || ad->K < 1 || ad->C < 1 || rank < 1 || rank > ad->R) return 0;
    for (int64_t k = 0; k < ad->K; k++) {
        const int64_t *s = ad->seg + 4 * k;
        if (s[2] < 0 || s[3] < 1 || s[2] + s[3] > ad->D) return 0;
    }
    return 1;
}

int ift_adapters_pack(const ift_adapters *ad, int64_t rank, const float *const *A_k, const float *const *B_k)
{
    if (!pack_ok(ad, rank) || !A_k || !B_k) return IFT_EINVAL;
    for (int64_t k = 0; k < ad->K; k++)
        if (!A_k[k] || !B_k[k]) return IFT_EINVAL;
    memset(ad->A, 0, (size_t)(ad->R * ad->D) * sizeof(float));
    memset(ad->B, 0, (size_t)(ad->C * ad->K * ad->R) * sizeof(float));
    for (int64_t k = 0; k < ad->K; k++) {
        const int64_t col = ad->seg[4 * k + 2], d = ad->seg[4 * k + 3];
        for (int64_t r = 0; r < rank; r++) memcpy(ad->A + r * ad->D + col, A_k[k] + r * d, (size_t)d * sizeof(float));
        for (int64_t c = 0; c < ad->C; c++)
            memcpy(ad->B + (c * ad->K + k) * ad->R, B_k[k] + c * rank, (size_t)rank * sizeof(float));
    }
    return IFT_OK;
}

int ift_adapters_unpack(const ift_adapters *ad, int64_t rank, float *const *A_k, float *const *B_k)
{
    if (!pack_ok(ad, rank) || !A_k || !B_k) return IFT_EINVAL;
    for (int64_t k = 0; k < ad->K; k++)
        if (!A_k[k] || !B_k[k]) return IFT_EINVAL;
    for (int64_t k = 0; k < ad->K; k++) {
        const int64_t col = ad->seg[4 * k + 2], d = ad->seg[4 * k + 3];
        for (int64_t r = 0; r < rank; r++) memcpy(A_k[k] + r * d, ad->A + r * ad->D + col, (size_t)d * sizeof(float));
        for (int64_t c = 0; c < ad->C; c++)
            memcpy(B_k[k] + c * rank, ad->B + (c * ad->K + k) * ad->R, (size_t)rank * sizeof(float));
    }
    return IFT_OK;
}

void ift_adapters_logits(const ift_adapters *ad, const float *image, const float *row, float *logits)
{
    ift_kernels_get()->logits(ad, image, row, logits);
}

int ift_predict(const ift_chain *ch, const ift_adapters *ad, const float *images, int64_t n, float *logits,
                int threads)
{
    if (!ch || !logits || n < 0 || (n > 0 && !images)) return IFT_EINVAL;
    if (ad && (ift_adapters_check(ad, ch->in_size, ch->row_width) || ad->C != ch->num_classes)) return IFT_EINVAL;
    const ift_kernels *kern = ift_kernels_get();
    const int nt = threads_for(threads);
    int status = IFT_OK;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && n > 16)
#endif
    {
        float *work = malloc((size_t)(ch->work_floats + ch->row_width) * sizeof(float));
        if (!work) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = IFT_ENOMEM;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 16)
#endif
        for (int64_t i = 0; i < n; i++) {
            if (!work) continue;
            float *row = work + ch->work_floats;
            const float *x = images + i * ch->in_size;
            kern->forward(ch, x, row, work);
            if (ad)
                kern->logits(ad, x, row, logits + i * ch->num_classes);
            else
                memcpy(logits + i * ch->num_classes, row + ch->logit_offset, (size_t)ch->num_classes * sizeof(float));
        }
        free(work);
    }
    (void)nt;
    return status;
}

int64_t ift_evaluate(const ift_chain *ch, const ift_adapters *ad, const float *images, const int64_t *labels, int64_t n,
                     int threads)
{
    if (!ch || n < 0 || (n > 0 && !labels)) return -1;
    float *logits = malloc((size_t)(n > 0 ? n : 1) * (size_t)ch->num_classes * sizeof(float));
    if (!logits) return -1;
    int64_t correct = -1;
    if (ift_predict(ch, ad, images, n, logits, threads) == IFT_OK) {
        correct = 0;
        for (int64_t i = 0; i < n; i++) {
            const float *y = logits + i * ch->num_classes;
            int64_t best = 0;
            for (int64_t c = 1; c < ch->num_classes; c++)
                if (y[c] > y[best]) best = c;
            correct += best == labels[i];
        }
    }
    free(logits);
    return correct;
}
