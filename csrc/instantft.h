/* instantft C core: NF4, the Forward Cache, the frozen forward of a chain backbone, and the
 * Skip-LoRA training loop, for the Python engine (ctypes) and the device program alike.
 *
 * C11, libc + libm only (OpenMP optional: built with -fopenmp the fill is parallel over
 * samples). No Python headers. Every function is reentrant; only ift_cache_alloc and the batch
 * functions (fill, train, predict: their scratch, freed before return) allocate; errors are
 * returned, never printed.
 *
 * The Python side mirrors the structs below with ctypes (src/instantft/engine/cengine.py) and
 * compares them with ift_layout_info() when it loads the library: change a struct here and there
 * together, and bump IFT_ABI_VERSION.
 *
 * Conventions (the same as the Python side, see src/instantft/engine/layout.py):
 * - A cache row is [tap 1 | ... | tap T | logits] (float32), the taps that are not the model input,
 *   in forward order. x0 (the model input), when it is a tap, is read from the images instead.
 * - Adapters are packed (ift_adapters_pack, the one packing): A is R x D row-major (R = rank
 *   rounded up to a multiple of 4, D = sum of the tap widths), B is C x K x R (class c's row of all
 *   B_k is contiguous). The padding rows of A and columns of B are zero and stay zero.
 * - Segment k (int64 x4): {source (IFT_SRC_IMAGE / IFT_SRC_CACHE), offset in the source row,
 *   first column of A, length}: exactly Layout.segments().
 * - NF4: the QLoRA codebook; a row of n values is padded with zeros to whole blocks of
 *   block_size (even; 64 by default), absmax per block (fp32), code = number of thresholds strictly
 *   below x/absmax (absmax 0 -> divide by 1), two codes a byte, first value in the LOW nibble.
 *   Bit-identical to instantft.nf4.quantize / dequantize.
 */
#ifndef INSTANTFT_H
#define INSTANTFT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IFT_ABI_VERSION 2

/* return codes (0 = ok; negative = error) */
#define IFT_OK 0
#define IFT_EINVAL (-1)      /* bad argument / inconsistent shapes */
#define IFT_ENOMEM (-2)      /* allocation failed */
#define IFT_EFULL (-3)       /* cache capacity exceeded */
#define IFT_EKEY (-4)        /* key already present / absent */
#define IFT_ELOSS (-5)       /* a training step's loss was not finite (training stopped after it) */
#define IFT_EPARAM (-6)      /* A or B not finite after the last update */

int ift_abi_version(void);
const char *ift_strerror(int code);
/* "avx512" / "avx2" / "neon" / "generic" + "+openmp" : what the kernels were built for */
const char *ift_build_info(void);
/* The size and field offsets of every struct declared here, so that a caller mirroring them (the
 * Python side's ctypes structures) can refuse a library built with another layout. One line per
 * struct, "name size field:offset field:offset ...\n", fields in declaration order. */
const char *ift_layout_info(void);

/* ---- NF4 ------------------------------------------------------------------------------ */
#define IFT_NF4_BLOCK 64
extern const float ift_nf4_levels[16];
extern const float ift_nf4_thresholds[15]; /* midpoints of neighbouring levels (fp32) */

int64_t ift_nf4_blocks(int64_t n, int64_t block_size);          /* ceil(n / block_size) */
int64_t ift_nf4_code_bytes(int64_t n, int64_t block_size);      /* blocks * block_size / 2 */
int64_t ift_nf4_row_bytes(int64_t n, int64_t block_size);       /* code bytes + 4 * blocks */
/* codes: ift_nf4_code_bytes(n) bytes, absmax: ift_nf4_blocks(n) floats */
void ift_nf4_encode_row(const float *x, int64_t n, int64_t block_size, uint8_t *codes, float *absmax);
/* out: n floats (the padding of the last block is not written) */
void ift_nf4_decode_row(const uint8_t *codes, const float *absmax, int64_t n, int64_t block_size, float *out);
/* rows: (count, n) row-major; codes (count, code_bytes), absmax (count, blocks) */
void ift_nf4_encode_rows(const float *rows, int64_t count, int64_t n, int64_t block_size, uint8_t *codes,
                         float *absmax);

/* ---- the Forward Cache ---------------------------------------------------------------- */
#define IFT_FP32 0
#define IFT_NF4 1

/* A view of cache storage (the Python side owns its tensors; ift_cache_alloc owns its own).
 * Slot s holds the row of sample key keys[s]; slot_of is a key -> slot table of key_space
 * entries (-1 = absent), so keys are 0 <= key < key_space. */
typedef struct ift_cache {
    int storage;           /* IFT_FP32 or IFT_NF4 */
    int64_t width;         /* floats per row */
    int64_t capacity;      /* slots */
    int64_t count;         /* slots used */
    int64_t block_size;    /* NF4 */
    int64_t blocks;        /* NF4: blocks per row */
    float *rows;           /* fp32: capacity x width */
    uint8_t *codes;        /* nf4: capacity x (blocks * block_size / 2) */
    float *absmax;         /* nf4: capacity x blocks */
    int64_t *keys;         /* capacity: key of each slot */
    int64_t *slot_of;      /* key_space: slot of each key or -1 */
    int64_t key_space;
    int owns;              /* 1: ift_cache_free frees the arrays */
} ift_cache;

int ift_cache_alloc(ift_cache *c, int storage, int64_t width, int64_t capacity, int64_t block_size,
                    int64_t key_space);
void ift_cache_free(ift_cache *c);
int64_t ift_cache_nbytes(const ift_cache *c);     /* count * row bytes (codes + absmax for NF4) */
int64_t ift_cache_slot(const ift_cache *c, int64_t key);   /* -1 when absent or out of range */
/* Import rows computed elsewhere (any backbone): n rows (n x width fp32), encoded if NF4. All or
 * nothing: IFT_EKEY if a key is out of range, repeated or present, IFT_EFULL if they do not fit. */
int ift_cache_import_fp32(ift_cache *c, const int64_t *keys, int64_t n, const float *rows);
/* NF4 rows already encoded (e.g. by instantft.nf4): codes n x code_bytes, absmax n x blocks */
int ift_cache_import_nf4(ift_cache *c, const int64_t *keys, int64_t n, const uint8_t *codes, const float *absmax);
/* Decode/copy the row of a slot into out (width floats). */
int ift_cache_row(const ift_cache *c, int64_t slot, float *out);

/* ---- the frozen forward of a chain backbone --------------------------------------------- */
#define IFT_OP_CONV2D 1   /* weight (out_c, in_c, kh, kw), bias (out_c) or NULL */
#define IFT_OP_RELU 2
#define IFT_OP_MAXPOOL 3  /* kernel kh x kw, stride, padding (-inf), floor mode */
#define IFT_OP_FLATTEN 4
#define IFT_OP_LINEAR 5   /* weight (out_c, in features), bias (out_c) or NULL */
#define IFT_TAP_NONE 0
#define IFT_TAP_CACHED 1
#define IFT_TAP_INPUT 2

typedef struct ift_op {
    int32_t kind;
    int32_t out_c;                   /* conv: output channels; linear: output features */
    int32_t kh, kw, sh, sw, ph, pw;  /* conv / maxpool: kernel, stride, padding */
    int32_t tap;                     /* IFT_TAP_NONE / IFT_TAP_CACHED / IFT_TAP_INPUT: this op's input is a
                                        tap stored in the cache row, or a tap equal to the model input
                                        (e.g. an MLP's flattened image: read from the images, not cached) */
    const float *weight;
    const float *bias;
    /* filled by ift_chain_init: the input and output shape (c, h, w; flat: c = features, h = w = 1) */
    int32_t in_c, in_h, in_w, out_h, out_w, out_cc;
    int64_t tap_offset;              /* offset of this tap in the cache row; -1 if the model input or no tap */
} ift_op;

typedef struct ift_chain {
    ift_op *ops;
    int32_t n_ops;
    int32_t in_c, in_h, in_w;        /* model input shape */
    int64_t in_size;                 /* in_c * in_h * in_w */
    int64_t num_classes;             /* size of the last op's output */
    int64_t row_width;               /* cache row: cached taps + num_classes */
    int64_t logit_offset;            /* = row_width - num_classes */
    int32_t input_is_tap;            /* ops[0].tap */
    int32_t n_taps;                  /* taps including the model input when it is one */
    int64_t work_floats;             /* scratch floats per thread for ift_chain_forward */
    int64_t act_floats;              /* (internal) largest activation, padded */
} ift_chain;

/* Check the ops (shapes, kinds, weights present) and fill their derived fields. On error returns
 * IFT_EINVAL and, if err != NULL, writes a message (errlen bytes max). */
int ift_chain_init(ift_chain *chain, ift_op *ops, int32_t n_ops, int32_t in_c, int32_t in_h, int32_t in_w,
                   char *err, size_t errlen);
/* The K x 4 segments of the adapters over the chain's taps (K = n_taps), as Layout.segments():
 * a tap equal to the model input reads the image (offset 0), the others their cache-row slice. */
int ift_chain_segments(const ift_chain *chain, int64_t *seg);
/* Tap widths in forward order (n_taps values), model input first when it is a tap. */
int ift_chain_tap_sizes(const ift_chain *chain, int64_t *sizes);
/* One sample: image (in_size floats) -> row (row_width floats); work: work_floats floats. */
void ift_chain_forward(const ift_chain *chain, const float *image, float *row, float *work);
/* n samples (images n x in_size), rows n x row_width; threads <= 0: the OpenMP default. */
int ift_chain_fill_fp32(const ift_chain *chain, const float *images, int64_t n, float *rows, int threads);
/* the same, encoding each row to NF4 while it is in L1 (codes n x code_bytes, absmax n x blocks) */
int ift_chain_fill_nf4(const ift_chain *chain, const float *images, int64_t n, int64_t block_size, uint8_t *codes,
                       float *absmax, int threads);
/* Fill the cache for the given keys that it does not hold yet (images row i is key keys[i]). */
int ift_cache_fill_chain(ift_cache *c, const ift_chain *chain, const int64_t *keys, const float *images, int64_t n,
                         int threads);

/* ---- Skip-LoRA adapters: training, evaluation, inference -------------------------------- */
#define IFT_SRC_IMAGE 0
#define IFT_SRC_CACHE 1

typedef struct ift_adapters {
    int64_t K;            /* adapters (taps) */
    int64_t R;            /* padded rank, a multiple of 4 */
    int64_t C;            /* classes */
    int64_t D;            /* columns of A */
    const int64_t *seg;   /* K x 4 */
    float *A;             /* R x D */
    float *B;             /* C x K x R */
    int64_t logit_offset; /* where the base logits start in a cache row */
    float scale;
} ift_adapters;

int ift_adapters_check(const ift_adapters *ad, int64_t image_width, int64_t row_width);

/* The one packing of the adapters (Python, through ctypes, and the device program): A_k[k] is
 * rank x d_k row-major (d_k = seg[k][3]) and goes to rows 0..rank-1, columns seg[k][2].. of A;
 * B_k[k] is C x rank and goes to B[c][k][0..rank). Every other element of A and B (the rank
 * padding up to R) is set to zero. rank must be 1..R. */
int ift_adapters_pack(const ift_adapters *ad, int64_t rank, const float *const *A_k, const float *const *B_k);
/* The inverse: A_k[k] (rank x d_k) and B_k[k] (C x rank) from the packed A and B. */
int ift_adapters_unpack(const ift_adapters *ad, int64_t rank, float *const *A_k, float *const *B_k);

/* What a training run reads (the adapters are passed apart: they are what it writes). Data row i
 * is images[i] (image_width floats, read by the segments whose source is the image; images may be
 * NULL when none is), cache slot slot_of[i], label labels[i]. Step s trains on the data rows
 * order[offsets[s]..offsets[s+1]), s < n_steps; losses[s] = its mean cross-entropy before its
 * update. SGD with learning rate lr (lr * scale on the gradients, as the reference). threads: the
 * adapters' update in parallel (<= 1: serial). */
typedef struct ift_train_args {
    const ift_cache *cache;
    const float *images;
    int64_t image_width;
    const int64_t *slot_of;
    const int64_t *labels;
    const int64_t *order;
    const int64_t *offsets; /* n_steps + 1 */
    int64_t n_steps;
    double *losses;         /* n_steps */
    float lr;
    int32_t threads;
} ift_train_args;

/* Steps first..last-1 (0 <= first <= last <= n_steps). Returns the steps done (>= 0) and sets
 * *status: IFT_OK, IFT_ELOSS (stopped after the first non-finite loss), IFT_EPARAM (all losses
 * finite but A or B not finite after the last update), IFT_EINVAL (bad argument; 0 steps). */
int64_t ift_train(const ift_adapters *ad, const ift_train_args *args, int64_t first, int64_t last, int *status);

/* logits (C) = row's base logits + scale * sum_k B_k A_k x_k for one sample (image: x0, row: its
 * cache row, fp32). */
void ift_adapters_logits(const ift_adapters *ad, const float *image, const float *row, float *logits);
/* Inference with adapters: the chain forward then the adapters, n samples -> logits n x C. */
int ift_predict(const ift_chain *chain, const ift_adapters *ad, const float *images, int64_t n, float *logits,
                int threads);
/* Accuracy (correct count) of ift_predict's argmax against labels; -1 on error. */
int64_t ift_evaluate(const ift_chain *chain, const ift_adapters *ad, const float *images, const int64_t *labels,
                     int64_t n, int threads);

#ifdef __cplusplus
}
#endif
#endif /* INSTANTFT_H */
