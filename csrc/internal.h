/* Internal to the C core: the per-ISA kernel table (kern.h is compiled once per instruction set
 * and the best one the CPU supports is picked at run time). */
#ifndef IFT_INTERNAL_H
#define IFT_INTERNAL_H

#include "instantft.h"

/* conv tiles: 4 output channels x IFT_JB columns; the im2col buffer is padded to whole tiles */
#define IFT_JB_MAX 32

typedef struct ift_kernels {
    const char *name;
    void (*forward)(const ift_chain *chain, const float *image, float *row, float *work);
    void (*forward_group)(const ift_chain *chain, const float *const *image, float *const *row, int g, float *work);
    void (*encode)(const float *x, int64_t n, int64_t block_size, uint8_t *codes, float *absmax);
    void (*decode)(const uint8_t *codes, const float *absmax, int64_t blocks, int64_t block_size, float *out);
    /* train: see ift_train; rows/codes from the cache view; returns steps done */
    int64_t (*train)(const ift_adapters *ad, const ift_cache *cache, const float *images, int64_t image_width,
                     const int64_t *slot_of, const int64_t *labels, const int64_t *order, const int64_t *offsets,
                     int64_t first, int64_t last, float lr, double *losses, int threads);
    void (*logits)(const ift_adapters *ad, const float *image, const float *row, float *logits);
} ift_kernels;

const ift_kernels *ift_kernels_get(void);
int64_t ift_chain_work_for(const ift_chain *chain, int jb);

#endif
