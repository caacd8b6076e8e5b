/* The C core checked against the Python reference's golden dump (tests/golden/write_golden.py),
 * as llm.c's test_gpt2.c checks train_gpt2.c: NF4 bytes exactly, floats to 1e-5 relative (to the
 * largest magnitude of the array), per-step losses, the first step's gradients, the adapters after
 * training from an fp32 and an NF4 cache, inference with adapters; plus the cache's contract and
 * the non-finite checks. Usage: test_core GOLDEN. Exit 0 when every check passes. */
#include "test_dump.h" /* first: see there */

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "instantft.h"

#define RTOL 1e-5

static int failures;

static void check(int ok, const char *what)
{
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    failures += !ok;
}

/* max |got - want| <= RTOL * max(|want|, tiny) over the array */
static void close_f32(const float *got, const float *want, int64_t n, const char *what)
{
    double scale = 1e-30, err = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)want[i]));
    for (int64_t i = 0; i < n; i++) err = fmax(err, fabs((double)got[i] - (double)want[i]));
    char msg[160];
    snprintf(msg, sizeof msg, "%s (max err %.2e of max %.2e)", what, err, scale);
    check(err <= RTOL * scale && err == err, msg);
}

static void close_f64(const double *got, const double *want, int64_t n, const char *what)
{
    double worst = 0;
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(got[i] - want[i]) / fmax(fabs(want[i]), 1e-30));
    char msg[160];
    snprintf(msg, sizeof msg, "%s (max rel err %.2e)", what, worst);
    check(worst <= RTOL && worst == worst, msg);
}

int main(int argc, char **argv)
{
    if (argc != 2 || load(argv[1])) {
        fprintf(stderr, "usage: test_core GOLDEN (a readable tests/golden dump)\n");
        return 2;
    }
    printf("kernels: %s\n", ift_build_info());
    uint64_t n;
    /* ---- NF4 against instantft.nf4 ---- */
    const float *nf4_in = get("nf4_in", 0, &n);
    const int64_t nrow = 3, width = (int64_t)n / 3, bs = IFT_NF4_BLOCK;
    uint8_t *codes = calloc((size_t)(nrow * ift_nf4_code_bytes(width, bs)), 1);
    float *absmax = calloc((size_t)(nrow * ift_nf4_blocks(width, bs)), sizeof(float));
    ift_nf4_encode_rows(nf4_in, nrow, width, bs, codes, absmax);
    uint64_t ncodes;
    const uint8_t *want_codes = get("nf4_codes", 2, &ncodes);
    check(memcmp(codes, want_codes, ncodes) == 0, "NF4 codes bit-identical (signs, zeros, -0, exact levels, padding)");
    check(memcmp(absmax, get("nf4_absmax", 0, NULL), (size_t)(nrow * ift_nf4_blocks(width, bs)) * 4) == 0,
          "NF4 absmax bit-identical");
    float *dec = malloc((size_t)(nrow * width) * sizeof(float));
    for (int64_t i = 0; i < nrow; i++)
        ift_nf4_decode_row(codes + i * ift_nf4_code_bytes(width, bs), absmax + i * ift_nf4_blocks(width, bs), width,
                           bs, dec + i * width);
    check(memcmp(dec, get("nf4_decoded", 0, NULL), (size_t)(nrow * width) * 4) == 0, "NF4 decode bit-identical");

    /* ---- the chain forward against the backbone's torch trace ---- */
    const int64_t *shape = get("in_shape", 1, NULL);
    ift_op ops[32];
    int32_t n_ops = load_ops(ops, 32);
    ift_chain ch;
    char err[128];
    int rc = ift_chain_init(&ch, ops, n_ops, (int32_t)shape[0], (int32_t)shape[1], (int32_t)shape[2], err, sizeof err);
    check(rc == IFT_OK, "chain accepted");
    if (rc) {
        printf("  %s\n", err);
        return 1;
    }
    uint64_t nimg, nrows;
    const float *images = get("images", 0, &nimg);
    const float *want_rows = get("rows", 0, &nrows);
    const int64_t N = (int64_t)nimg / ch.in_size, W = ch.row_width;
    check((int64_t)nrows == N * W, "row width matches the backbone's cache row");
    float *rows = malloc((size_t)(N * W) * sizeof(float));
    for (int threads = 1; threads <= 2; threads++) {
        memset(rows, 0, (size_t)(N * W) * sizeof(float));
        ift_chain_fill_fp32(&ch, images, N, rows, threads);
        close_f32(rows, want_rows, N * W, threads == 1 ? "fill: cache rows = torch trace (1 thread)"
                                                       : "fill: cache rows = torch trace (2 threads)");
    }
    float *one = malloc((size_t)W * sizeof(float)), *work = malloc((size_t)ch.work_floats * sizeof(float));
    ift_chain_forward(&ch, images + 5 * ch.in_size, one, work);
    check(memcmp(one, rows + 5 * W, (size_t)W * 4) == 0, "one-sample forward = batch fill, bit for bit");
    const int64_t cb = ift_nf4_code_bytes(W, bs), nb = ift_nf4_blocks(W, bs);
    uint8_t *fc = malloc((size_t)(N * cb)), *ec = malloc((size_t)(N * cb));
    float *fa = malloc((size_t)(N * nb) * 4), *ea = malloc((size_t)(N * nb) * 4);
    ift_chain_fill_nf4(&ch, images, N, bs, fc, fa, 2);
    ift_nf4_encode_rows(rows, N, W, bs, ec, ea);
    check(memcmp(fc, ec, (size_t)(N * cb)) == 0 && memcmp(fa, ea, (size_t)(N * nb) * 4) == 0,
          "NF4 fill = encode(fp32 fill), bit for bit");
    ift_nf4_encode_rows(want_rows, N, W, bs, ec, ea);
    check(memcmp(ec, get("rows_codes", 2, NULL), (size_t)(N * cb)) == 0 &&
              memcmp(ea, get("rows_absmax", 0, NULL), (size_t)(N * nb) * 4) == 0,
          "NF4 of the reference rows = nf4.quantize, bit for bit");

    /* ---- the Forward Cache: import, keys, capacity ---- */
    ift_cache fp, q4;
    check(ift_cache_alloc(&fp, IFT_FP32, W, N, 0, 1000) == IFT_OK, "fp32 cache allocated");
    check(ift_cache_alloc(&q4, IFT_NF4, W, N, bs, 1000) == IFT_OK, "nf4 cache allocated");
    int64_t *keys = malloc((size_t)N * sizeof(int64_t));
    for (int64_t i = 0; i < N; i++) keys[i] = 997 - 37 * i; /* sparse, descending */
    check(ift_cache_import_fp32(&fp, keys, N - 3, want_rows) == IFT_OK, "fp32 import");
    check(ift_cache_import_fp32(&fp, keys, 1, want_rows) == IFT_EKEY, "re-import of a present key refused");
    int64_t twice[2] = {keys[N - 2], keys[N - 2]};
    check(ift_cache_import_fp32(&fp, twice, 2, want_rows) == IFT_EKEY && fp.count == N - 3,
          "a repeated key refused, nothing imported");
    int64_t outside = 1000;
    check(ift_cache_import_fp32(&fp, &outside, 1, want_rows) == IFT_EKEY, "a key out of range refused");
    /* the last three rows from the chain fill: only the missing keys are computed */
    check(ift_cache_fill_chain(&fp, &ch, keys, images, N, 2) == IFT_OK && fp.count == N, "fill of missing keys");
    check(ift_cache_import_fp32(&fp, &outside, 0, want_rows) == IFT_OK, "an empty import is fine");
    int64_t spare = 3;
    check(ift_cache_import_fp32(&fp, &spare, 1, want_rows) == IFT_EFULL, "capacity enforced");
    check(ift_cache_slot(&fp, keys[4]) == 4 && ift_cache_slot(&fp, 5) == -1 && ift_cache_slot(&fp, -1) == -1,
          "key -> slot");
    ift_cache_row(&fp, N - 1, one);
    close_f32(one, want_rows + (N - 1) * W, W, "a filled slot holds the sample's row");
    check(ift_cache_nbytes(&fp) == N * W * 4, "fp32 bytes");
    check(ift_cache_import_nf4(&q4, keys, N, get("rows_codes", 2, NULL), get("rows_absmax", 0, NULL)) == IFT_OK,
          "nf4 import of codes encoded in Python");
    check(ift_cache_nbytes(&q4) == N * ift_nf4_row_bytes(W, bs), "nf4 bytes");

    /* ---- training against the reference loop ---- */
    uint64_t nseg, na, nbb, noff;
    const int64_t *seg = get("seg", 1, &nseg);
    const float *A0 = get("A0", 0, &na), *B0 = get("B0", 0, &nbb), *ls = get("lr_scale", 0, NULL);
    const int64_t *labels = get("labels", 1, NULL), *order = get("order", 1, NULL), *offsets = get("offsets", 1, &noff);
    const int64_t K = (int64_t)nseg / 4, steps = (int64_t)noff - 1;
    int64_t R = 4, C = ch.num_classes;
    check((int64_t)nbb == C * K * R, "B is C x K x R'");
    float *A = malloc(na * 4), *B = malloc(nbb * 4);
    ift_adapters ad = {K, R, C, (int64_t)na / R, seg, A, B, ch.logit_offset, ls[1]};
    int64_t *slot_of = malloc((size_t)N * sizeof(int64_t));
    for (int64_t i = 0; i < N; i++) slot_of[i] = ift_cache_slot(&fp, keys[i]);
    double *losses = calloc((size_t)steps, sizeof(double));
    int status = -99;
    /* the first step's gradients: one step with lr = 1 moves A by dA and B by dB */
    memcpy(A, A0, na * 4), memcpy(B, B0, nbb * 4);
    int64_t one_step[2] = {offsets[0], offsets[1]};
    ift_cache imported;
    ift_cache_alloc(&imported, IFT_FP32, W, N, 0, N);
    for (int64_t i = 0; i < N; i++) keys[i] = i;
    ift_cache_import_fp32(&imported, keys, N, want_rows);
    /* the reference rows, so only training differs; one step first */
    ift_train_args args = {&imported, images, ch.in_size, keys, labels, order, one_step, 1, losses, 1.0f, 1};
    int64_t done = ift_train(&ad, &args, 0, 1, &status);
    check(done == 1 && status == IFT_OK, "one step");
    float *dA = malloc(na * 4), *dB = malloc(nbb * 4);
    for (uint64_t i = 0; i < na; i++) dA[i] = A0[i] - A[i];
    for (uint64_t i = 0; i < nbb; i++) dB[i] = B0[i] - B[i];
    /* A0 - A1 loses the low bits of A0: compare at the precision A0 allows */
    double amax = 0, gerr = 0, gmax = 0;
    const float *wdA = get("dA0", 0, NULL);
    for (uint64_t i = 0; i < na; i++) amax = fmax(amax, fabs(A0[i])), gmax = fmax(gmax, fabs(wdA[i]));
    for (uint64_t i = 0; i < na; i++) gerr = fmax(gerr, fabs((double)dA[i] - wdA[i]));
    char msg[160];
    snprintf(msg, sizeof msg, "dA of step 1 = reference gradient (err %.2e, |dA| %.2e, |A| %.2e)", gerr, gmax, amax);
    check(gerr <= RTOL * gmax + 4 * FLT_EPSILON * amax, msg);
    close_f32(dB, get("dB0", 0, NULL), (int64_t)nbb, "dB of step 1 = reference gradient");
    /* the whole schedule, fp32 cache, 1 and 2 threads */
    for (int threads = 1; threads <= 2; threads++) {
        memcpy(A, A0, na * 4), memcpy(B, B0, nbb * 4);
        args = (ift_train_args){&imported, images, ch.in_size, keys, labels, order, offsets, steps, losses, ls[0], threads};
        done = ift_train(&ad, &args, 0, steps, &status);
        check(done == steps && status == IFT_OK, "fp32 training: every step");
        close_f64(losses, get("losses", 3, NULL), steps, "fp32 training: per-step losses");
        close_f32(A, get("A_fp32", 0, NULL), (int64_t)na, "fp32 training: A");
        close_f32(B, get("B_fp32", 0, NULL), (int64_t)nbb, "fp32 training: B");
    }
    /* inference with the trained adapters (chain forward + adapters) */
    float *logits = malloc((size_t)(N * C) * sizeof(float));
    check(ift_predict(&ch, &ad, images, N, logits, 2) == IFT_OK, "predict");
    close_f32(logits, get("logits_adapted", 0, NULL), N * C, "logits with adapters = reference");
    int64_t correct = 0;
    for (int64_t i = 0; i < N; i++) {
        int64_t best = 0;
        for (int64_t c = 1; c < C; c++) best = logits[i * C + c] > logits[i * C + best] ? c : best;
        correct += best == labels[i];
    }
    check(ift_evaluate(&ch, &ad, images, labels, N, 1) == correct, "evaluate = argmax of predict");
    /* NF4 cache: slots in another order than the data rows */
    for (int64_t i = 0; i < N; i++) slot_of[i] = ift_cache_slot(&q4, 997 - 37 * i);
    memcpy(A, A0, na * 4), memcpy(B, B0, nbb * 4);
    ift_train_args q4_args = {&q4, images, ch.in_size, slot_of, labels, order, offsets, steps, losses, ls[0], 1};
    done = ift_train(&ad, &q4_args, 0, steps, &status);
    check(done == steps && status == IFT_OK, "nf4 training: every step");
    close_f64(losses, get("losses_nf4", 3, NULL), steps, "nf4 training: per-step losses");
    close_f32(A, get("A_nf4", 0, NULL), (int64_t)na, "nf4 training: A");
    close_f32(B, get("B_nf4", 0, NULL), (int64_t)nbb, "nf4 training: B");
    /* resuming epoch by epoch gives the same adapters as one call */
    memcpy(A, A0, na * 4), memcpy(B, B0, nbb * 4);
    int64_t half = steps / 2;
    ift_train(&ad, &q4_args, 0, half, &status);
    ift_train(&ad, &q4_args, half, steps, &status);
    check(ift_train(&ad, &q4_args, 0, steps + 1, &status) == 0 && status == IFT_EINVAL,
          "a step past the schedule: IFT_EINVAL, no step");
    close_f32(A, get("A_nf4", 0, NULL), (int64_t)na, "nf4 training in two calls: A");

    /* ---- divergence: the first non-finite loss stops; an overflowing last update is reported ---- */
    memcpy(A, A0, na * 4), memcpy(B, B0, nbb * 4);
    ad.scale = 3.0f;
    args = (ift_train_args){&imported, images, ch.in_size, keys, labels, order, one_step, 1, losses, FLT_MAX, 1};
    done = ift_train(&ad, &args, 0, 1, &status);
    check(done == 1 && status == IFT_EPARAM && isfinite(losses[0]),
          "a finite loss but an overflowing update: IFT_EPARAM");
    args = (ift_train_args){&imported, images, ch.in_size, keys, labels, order, offsets, steps, losses, 0.1f, 1};
    done = ift_train(&ad, &args, 0, steps, &status);
    check(done == 1 && status == IFT_ELOSS && !isfinite(losses[0]), "non-finite loss: stops after that step");
    ad.scale = ls[1];

    /* ---- bad arguments ---- */
    ift_op bad = ops[0];
    bad.kh = 99;
    ift_chain bc;
    check(ift_chain_init(&bc, &bad, 1, (int32_t)shape[0], (int32_t)shape[1], (int32_t)shape[2], err, sizeof err) ==
                  IFT_EINVAL && strstr(err, "kernel") != NULL,
          "a kernel larger than the input: IFT_EINVAL with a message");
    int64_t badseg[64];
    memcpy(badseg, seg, (size_t)nseg * 8);
    badseg[4 * (K - 1) + 3] += 1000;
    ift_adapters badad = ad;
    badad.seg = badseg;
    done = ift_train(&badad, &args, 0, steps, &status);
    check(done == 0 && status == IFT_EINVAL, "a segment past the row: IFT_EINVAL, no step");

    ift_cache_free(&fp);
    ift_cache_free(&q4);
    ift_cache_free(&imported);
    free(codes), free(absmax), free(dec), free(rows), free(one), free(work), free(fc), free(ec), free(fa), free(ea);
    free(keys), free(A), free(B), free(slot_of), free(losses), free(dA), free(dB), free(logits);
    free_arrays();
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
