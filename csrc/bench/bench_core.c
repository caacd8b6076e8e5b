/* One piece of the C core's work on a dump that `instantft bench` writes (LeNet-5, the 1,024
 * fine-tuning images, the packed adapters, the run's schedule), for timing and for
 * `valgrind --tool=callgrind --toggle-collect=<entry point>` instruction counts:
 *
 *   bench_core DUMP fill|fill-nf4|epoch|epoch-nf4|run|run-nf4 [threads] [repeats]
 *
 * fill: ift_chain_fill_fp32 / _nf4 over every image; epoch: ift_train over the first epoch's steps
 * (the cache filled first); run: fill then every step; epochs: one fill, then the first epoch
 * `repeats` times (the training loop alone). Prints the median milliseconds of
 * `repeats` runs (default 1) and a checksum (so the work cannot be optimised away). */
#include "../test_dump.h" /* first: it asks for the POSIX declarations (clock_gettime too) */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../instantft.h"

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3 || load(argv[1])) {
        fprintf(stderr, "usage: bench_core DUMP fill|fill-nf4|epoch|epoch-nf4|run|run-nf4|epochs [threads] [repeats]\n");
        return 2;
    }
    const char *mode = argv[2];
    int threads = argc > 3 ? atoi(argv[3]) : 1, repeats = argc > 4 ? atoi(argv[4]) : 1;
    int nf4 = strstr(mode, "nf4") != NULL;
    const int64_t *shape = get("in_shape", 1, NULL);
    ift_op ops[64];
    int32_t n_ops = load_ops(ops, 64);
    ift_chain ch;
    char err[128];
    if (ift_chain_init(&ch, ops, n_ops, (int32_t)shape[0], (int32_t)shape[1], (int32_t)shape[2], err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    uint64_t nimg, na, nbb, nseg, noff;
    const float *images = get("images", 0, &nimg);
    const int64_t N = (int64_t)nimg / ch.in_size, W = ch.row_width, bs = IFT_NF4_BLOCK;
    const int64_t *seg = get("seg", 1, &nseg), *labels = get("labels", 1, NULL);
    const int64_t *order = get("order", 1, NULL), *offsets = get("offsets", 1, &noff);
    const int64_t *epoch_steps = get("epoch_steps", 1, NULL);
    const float *A0 = get("A0", 0, &na), *B0 = get("B0", 0, &nbb), *ls = get("lr_scale", 0, NULL);
    const int64_t K = (int64_t)nseg / 4;
    const int64_t Rp = (int64_t)nbb / (K * ch.num_classes), steps = (int64_t)noff - 1;
    float *A = malloc(na * 4), *B = malloc(nbb * 4);
    ift_adapters ad = {K, Rp, ch.num_classes, (int64_t)na / Rp, seg, A, B, ch.logit_offset, ls[1]};
    ift_cache cache;
    int64_t *keys = malloc((size_t)N * sizeof(int64_t));
    for (int64_t i = 0; i < N; i++) keys[i] = i;
    double *losses = calloc((size_t)steps, sizeof(double)), *ms = calloc((size_t)repeats, sizeof(double));
    double check = 0;
    int train = strncmp(mode, "epoch", 5) == 0 || strncmp(mode, "run", 3) == 0;
    int64_t last = strncmp(mode, "epoch", 5) == 0 ? epoch_steps[0] : steps;
    if (strcmp(mode, "epochs") == 0) { /* one fill, then `repeats` first epochs: the training loop alone */
        if (ift_cache_alloc(&cache, IFT_FP32, W, N, bs, N) || ift_cache_fill_chain(&cache, &ch, keys, images, N, threads))
            return 2;
        int status = 0;
        for (int r = 0; r < repeats; r++) {
            memcpy(A, A0, na * 4), memcpy(B, B0, nbb * 4);
            double t0 = now_ms();
            ift_train_args args = {&cache, images, ch.in_size, keys, labels, order, offsets, steps, losses, ls[0], 1};
            ift_train(&ad, &args, 0, epoch_steps[0], &status);
            ms[r] = now_ms() - t0;
        }
        check = losses[0];
        ift_cache_free(&cache);
    } else
    for (int r = 0; r < repeats; r++) {
        if (ift_cache_alloc(&cache, nf4 ? IFT_NF4 : IFT_FP32, W, N, bs, N)) return 2;
        memcpy(A, A0, na * 4), memcpy(B, B0, nbb * 4);
        int status = 0;
        double t0 = now_ms();
        if (strncmp(mode, "epoch", 5) == 0) {
            ift_cache_fill_chain(&cache, &ch, keys, images, N, threads);
            t0 = now_ms();
        } else if (ift_cache_fill_chain(&cache, &ch, keys, images, N, threads)) {
            return 2;
        }
        ift_train_args args = {&cache, images, ch.in_size, keys, labels, order, offsets, steps, losses, ls[0], 1};
        if (train) ift_train(&ad, &args, 0, last, &status);
        ms[r] = now_ms() - t0;
        if (status) fprintf(stderr, "warning: training status %s\n", ift_strerror(status));
        check = train ? losses[last - 1] + A[0] : (nf4 ? cache.absmax[0] : cache.rows[W - 1]);
        ift_cache_free(&cache);
    }
    qsort(ms, (size_t)repeats, sizeof(double), cmp);
    printf("{\"mode\": \"%s\", \"kernels\": \"%s\", \"threads\": %d, \"median_ms\": %.4f, \"check\": %.9g}\n", mode,
           ift_build_info(), threads, ms[repeats / 2], check);
    free(A), free(B), free(keys), free(losses), free(ms);
    free_arrays();
    return 0;
}
