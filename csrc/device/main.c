/* instantft-device DIR [--threads N] [--dump-cache FILE]: fine-tune on the board.
 *
 * Reads DIR/bundle.safetensors (written by `instantft export`: the frozen chain backbone, the
 * initial adapters, the batch schedule, the fine-tuning and evaluation images as uint8),
 * fills the Forward Cache with the frozen forward, trains the skip adapters, evaluates before
 * and after, writes DIR/adapter.safetensors atomically (the file `instantft evaluate --adapter`
 * reads) and prints one JSON line. Bad input: one `error: ...` line on stderr, exit 2, and
 * nothing written. Needs libc and libm only; the evaluation set is streamed in chunks so the
 * peak memory is the fine-tuning images (as float) + the cache + the weights.
 * --dump-cache FILE also writes the filled Forward Cache (NF4 codes + absmax, or fp32 rows, in
 * sample order) as safetensors: to compare builds (x86 vs aarch64) byte for byte. */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../instantft.h"
#include "safetensors.h"
#include "tensor_hash.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader copies it as is"
#endif

#define BUNDLE_FORMAT "instantft-device-bundle/1"
#define ADAPTER_KEY "instantft_adapter"
#define OP_FIELDS 9 /* kind, out_c, kh, kw, sh, sw, ph, pw, tap */
#define MAX_OPS 256
#define MAX_DIM 100000000ull /* no single dimension of a bundle is larger */
#define EVAL_CHUNK 128
#define FILL_CHUNK 64

static const char *bundle_path;

/* One line on stderr, exit 2. Control characters and bytes that are not UTF-8 (a damaged
 * bundle's names may hold them) are shown as '?': the message stays one line of text. */
static void die(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *end = msg + strlen(msg);
    for (char *p = msg; *p; p++) {
        if ((unsigned char)*p >= 0x80) {
            int n = st_utf8_length(p, end);
            if (n > 0) p += n - 1;
            else *p = '?';
        } else if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *p = '?';
        }
    }
    fprintf(stderr, "error: %s\n", msg);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A tensor the bundle must hold, with this dtype and rank; dims[i] >= 0 must match exactly. */
static const st_tensor *need(const st_file *st, const char *name, st_dtype dtype, int ndim, const int64_t *dims) {
    const st_tensor *t = st_find(st, name);
    if (!t) die("%s: no tensor %s (not a bundle of this version?)", bundle_path, name);
    if (t->dtype != dtype)
        die("%s: tensor %s is %s, expected %s", bundle_path, name, st_dtype_name(t->dtype), st_dtype_name(dtype));
    if (t->ndim != ndim) die("%s: tensor %s has %d dimensions, expected %d", bundle_path, name, t->ndim, ndim);
    for (int i = 0; i < ndim; i++) {
        if (t->shape[i] > MAX_DIM) die("%s: tensor %s: dimension %d is too large", bundle_path, name, i);
        if (dims && dims[i] >= 0 && t->shape[i] != (uint64_t)dims[i])
            die("%s: tensor %s has size %llu in dimension %d, expected %lld", bundle_path, name,
                (unsigned long long)t->shape[i], i, (long long)dims[i]);
    }
    return t;
}

static void *load(st_file *st, const st_tensor *t) {
    size_t n = (size_t)(t->end - t->begin);
    void *buf = xmalloc(n);
    if (st_read(st, t, 0, buf, n)) die("%s", st->err);
    return buf;
}

static const char *meta(const st_file *st, const char *key) {
    const char *v = st_meta_get(st, key);
    if (!v) die("%s: no metadata %s (not a bundle of this version?)", bundle_path, key);
    return v;
}

static double meta_number(const st_file *st, const char *key) {
    const char *v = meta(st, key);
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(x)) die("%s: metadata %s = \"%s\" is not a finite number", bundle_path, key, v);
    return x;
}

static int64_t meta_int(const st_file *st, const char *key, int64_t lo, int64_t hi) {
    const char *v = meta(st, key);
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi)
        die("%s: metadata %s = \"%s\" is not an integer in %lld..%lld", bundle_path, key, v, (long long)lo, (long long)hi);
    return (int64_t)x;
}

static void check_finite(const float *x, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) die("%s: %s holds a non-finite value", bundle_path, what);
}

/* uint8 pixels -> float in [0, 1], as the Python side (float32 division by 255) */
static void to_float(const uint8_t *u8, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) out[i] = (float)u8[i] / 255.0f;
}

/* Labels as int64, each < classes. */
static int64_t *load_labels(st_file *st, const char *name, int64_t n, int64_t classes) {
    int64_t dims[1] = {n};
    const st_tensor *t = need(st, name, ST_U8, 1, dims);
    uint8_t *raw = load(st, t);
    int64_t *out = xmalloc((size_t)n * sizeof *out);
    for (int64_t i = 0; i < n; i++) {
        if (raw[i] >= classes) die("%s: %s[%lld] = %u, but the model has %lld classes", bundle_path, name, (long long)i, raw[i], (long long)classes);
        out[i] = raw[i];
    }
    free(raw);
    return out;
}

/* Fail before any work if path cannot be created (the real write is atomic anyway). */
static void probe_writable(const char *path) {
    size_t n = strlen(path) + 32;
    char *probe = xmalloc(n);
    snprintf(probe, n, "%s.%ld.probe", path, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) die("%s: cannot write here (%s)", path, strerror(errno));
    close(fd);
    unlink(probe);
    free(probe);
    int dfd = open(path, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        close(dfd);
        die("%s: is a directory, expected a file name", path);
    }
}

typedef struct {
    ift_chain chain;
    ift_op ops[MAX_OPS];
    float *weights[MAX_OPS], *biases[MAX_OPS];
    int64_t n_taps, tap_sizes[MAX_OPS], seg[MAX_OPS * 4];
} model;

static void load_chain(st_file *st, model *m) {
    const st_tensor *ti = need(st, "chain.input", ST_I32, 1, (int64_t[]){3});
    const st_tensor *to = need(st, "chain.ops", ST_I32, 2, (int64_t[]){-1, OP_FIELDS});
    if (to->shape[0] < 1 || to->shape[0] > MAX_OPS) die("%s: chain.ops must hold 1..%d ops", bundle_path, MAX_OPS);
    int32_t *in = load(st, ti), *raw = load(st, to);
    int32_t n_ops = (int32_t)to->shape[0];
    for (int32_t i = 0; i < n_ops; i++) {
        const int32_t *f = raw + (size_t)i * OP_FIELDS;
        ift_op *op = &m->ops[i];
        memset(op, 0, sizeof *op);
        op->kind = f[0], op->out_c = f[1], op->kh = f[2], op->kw = f[3], op->sh = f[4], op->sw = f[5], op->ph = f[6],
        op->pw = f[7], op->tap = f[8];
        if (op->kind == IFT_OP_CONV2D || op->kind == IFT_OP_LINEAR) {
            char name[64];
            snprintf(name, sizeof name, "chain.%d.weight", i);
            const st_tensor *w = st_find(st, name);
            if (!w) die("%s: no tensor %s", bundle_path, name);
            w = need(st, name, ST_F32, op->kind == IFT_OP_CONV2D ? 4 : 2, NULL);
            m->weights[i] = load(st, w);
            check_finite(m->weights[i], w->numel, name);
            op->weight = m->weights[i];
            snprintf(name, sizeof name, "chain.%d.bias", i);
            if (st_find(st, name)) {
                const st_tensor *b = need(st, name, ST_F32, 1, (int64_t[]){op->out_c});
                m->biases[i] = load(st, b);
                check_finite(m->biases[i], b->numel, name);
                op->bias = m->biases[i];
            }
        }
    }
    char err[256] = "";
    if (ift_chain_init(&m->chain, m->ops, n_ops, in[0], in[1], in[2], err, sizeof err) != IFT_OK)
        die("%s: the backbone chain is inconsistent: %s", bundle_path, err[0] ? err : "bad ops");
    /* the weights' shapes against what the chain derived from the input shape */
    for (int32_t i = 0; i < n_ops; i++) {
        const ift_op *op = &m->ops[i];
        if (!op->weight) continue;
        char name[64];
        snprintf(name, sizeof name, "chain.%d.weight", i);
        if (op->kind == IFT_OP_CONV2D)
            need(st, name, ST_F32, 4, (int64_t[]){op->out_c, op->in_c, op->kh, op->kw});
        else
            need(st, name, ST_F32, 2, (int64_t[]){op->out_c, (int64_t)op->in_c * op->in_h * op->in_w});
    }
    m->n_taps = m->chain.n_taps;
    if (m->n_taps < 1 || m->n_taps > MAX_OPS) die("%s: the chain has no taps", bundle_path);
    if (ift_chain_tap_sizes(&m->chain, m->tap_sizes) != IFT_OK || ift_chain_segments(&m->chain, m->seg) != IFT_OK)
        die("%s: cannot lay out the taps", bundle_path);
    free(in);
    free(raw);
}

/* Evaluation accuracy, streaming the images EVAL_CHUNK at a time. */
static int64_t evaluate(st_file *st, const ift_chain *chain, const ift_adapters *ad, const st_tensor *images,
                        const int64_t *labels, int64_t n, int threads) {
    size_t per = (size_t)chain->in_size;
    uint8_t *u8 = xmalloc(EVAL_CHUNK * per);
    float *x = xmalloc(EVAL_CHUNK * per * sizeof *x);
    int64_t correct = 0;
    for (int64_t i = 0; i < n; i += EVAL_CHUNK) {
        int64_t b = n - i < EVAL_CHUNK ? n - i : EVAL_CHUNK;
        if (st_read(st, images, (uint64_t)i * per, u8, (uint64_t)b * per)) die("%s", st->err);
        to_float(u8, (size_t)b * per, x);
        int64_t c = ift_evaluate(chain, ad, x, labels + i, b, threads);
        if (c < 0) die("evaluation failed");
        correct += c;
    }
    free(u8);
    free(x);
    return correct;
}

/* The adapter record: the bundle's (the JSON object `finetune --save-adapter` writes, for the
 * initial adapters, ending in "tensors_sha256": "<64 hex digits>"}) with that hash replaced by
 * the hash of the trained tensors. Anything else is refused (before any work: see main). */
#define HASH_KEY "\"tensors_sha256\": \""
static char *adapter_record(const char *base, const char *hex) {
    size_t n = strlen(base), tail = strlen(HASH_KEY) + 64 + 2; /* key, digits, closing quote and brace */
    if (n < tail + 1 || base[0] != '{' || strcmp(base + n - 2, "\"}") != 0 ||
        strncmp(base + n - tail, HASH_KEY, strlen(HASH_KEY)) != 0)
        die("%s: metadata adapter_record is not an adapter record ending in its tensors_sha256", bundle_path);
    for (size_t i = n - 66; i < n - 2; i++)
        if (!((base[i] >= '0' && base[i] <= '9') || (base[i] >= 'a' && base[i] <= 'f')))
            die("%s: metadata adapter_record: tensors_sha256 is not 64 hex digits", bundle_path);
    char *out = xmalloc(n + 1);
    memcpy(out, base, n + 1);
    memcpy(out + n - 66, hex, 64);
    return out;
}

/* The cache in sample order (row i = fine-tuning sample i), as safetensors. The fill stores
 * sample i in slot i, so the storage is written as it is; otherwise it is reordered first. */
static void dump_cache(const ift_cache *c, const int64_t *slot_of, int64_t n, const char *path) {
    char err[ST_ERR_LEN];
    st_out_tensor t[2];
    int in_order = 1, count;
    for (int64_t i = 0; i < n; i++) in_order &= slot_of[i] == i;
    void *a = NULL, *b = NULL;
    if (c->storage == IFT_NF4) {
        size_t cb = (size_t)(c->blocks * c->block_size / 2), nb = (size_t)c->blocks;
        uint8_t *codes = c->codes;
        float *absmax = c->absmax;
        if (!in_order) {
            a = codes = xmalloc((size_t)n * cb);
            b = absmax = xmalloc((size_t)n * nb * sizeof *absmax);
            for (int64_t i = 0; i < n; i++) {
                memcpy(codes + (size_t)i * cb, c->codes + (size_t)slot_of[i] * cb, cb);
                memcpy(absmax + (size_t)i * nb, c->absmax + (size_t)slot_of[i] * nb, nb * sizeof *absmax);
            }
        }
        t[0] = (st_out_tensor){"absmax", ST_F32, 2, {(uint64_t)n, nb}, absmax};
        t[1] = (st_out_tensor){"codes", ST_U8, 2, {(uint64_t)n, cb}, codes};
        count = 2;
    } else {
        size_t w = (size_t)c->width;
        float *rows = c->rows;
        if (!in_order) {
            a = rows = xmalloc((size_t)n * w * sizeof *rows);
            for (int64_t i = 0; i < n; i++)
                memcpy(rows + (size_t)i * w, c->rows + (size_t)slot_of[i] * w, w * sizeof *rows);
        }
        t[0] = (st_out_tensor){"rows", ST_F32, 2, {(uint64_t)n, w}, rows};
        count = 1;
    }
    if (st_write_atomic(path, t, count, NULL, NULL, err)) die("%s", err);
    free(a), free(b);
}

/* Peak resident memory of this process image (VmHWM of /proc/self/status, kB; Linux), -1 if
 * unknown. Not getrusage: after exec, ru_maxrss still counts the parent's pages of the fork. */
static long peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", (unsigned char)*s);
        else putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    const char *dir = NULL, *dump = NULL;
    int threads = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            char *end;
            long t = strtol(argv[++i], &end, 10);
            if (*end || t < 1 || t > 1024) die("--threads must be an integer >= 1, got %s", argv[i]);
            threads = (int)t;
        } else if (strcmp(argv[i], "--dump-cache") == 0 && i + 1 < argc) {
            dump = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: instantft-device DIR [--threads N] [--dump-cache FILE]\n"
                   "Fine-tune the skip adapters of the bundle in DIR (from `instantft export`),\n"
                   "write DIR/adapter.safetensors and print one JSON line. Kernels: %s\n",
                   ift_build_info());
            return 0;
        } else if (!dir && argv[i][0] != '-') {
            dir = argv[i];
        } else {
            die("unexpected argument %s (usage: instantft-device DIR [--threads N])", argv[i]);
        }
    }
    if (!dir) die("usage: instantft-device DIR [--threads N]");
    signal(SIGXFSZ, SIG_IGN); /* a full disk / file size limit is a write error, not a kill */
    size_t dlen = strlen(dir) + 32;
    char *bpath = xmalloc(dlen), *apath = xmalloc(dlen);
    snprintf(bpath, dlen, "%s/bundle.safetensors", dir);
    snprintf(apath, dlen, "%s/adapter.safetensors", dir);
    bundle_path = bpath;

    st_file st;
    if (st_open(&st, bpath)) die("%s", st.err);
    const char *format = meta(&st, "format");
    if (strcmp(format, BUNDLE_FORMAT) != 0) die("%s: format %s, this program reads %s", bpath, format, BUNDLE_FORMAT);
    const char *method = meta(&st, "method");
    const char *storage_name = meta(&st, "storage");
    int storage = strcmp(storage_name, "fp32") == 0 ? IFT_FP32 : strcmp(storage_name, "nf4") == 0 ? IFT_NF4 : -1;
    if (storage < 0) die("%s: storage must be fp32 or nf4, got %s", bpath, storage_name);
    double lr = meta_number(&st, "lr"), scale = meta_number(&st, "scale");
    if (!(lr > 0)) die("%s: lr must be > 0", bpath);
    int64_t block = meta_int(&st, "block_size", 2, 1 << 16);
    if (block % 2) die("%s: block_size must be even", bpath);
    const char *record = meta(&st, "adapter_record");
    /* the hash format of the record (absent: the bundle of 0.1.0, format 1); see tensor_hash.h */
    int hash_format = st_meta_get(&st, "tensors_sha256_format") ? (int)meta_int(&st, "tensors_sha256_format", 1, 2) : 1;
    free(adapter_record(record, "0000000000000000000000000000000000000000000000000000000000000000"));
    probe_writable(apath);
    if (dump) probe_writable(dump);

    static model m;
    load_chain(&st, &m);
    ift_chain *chain = &m.chain;
    int64_t K = m.n_taps, C = chain->num_classes, D = 0;
    for (int64_t k = 0; k < K; k++) D += m.tap_sizes[k];

    /* adapters: skip{k}.A (rank x d_k), skip{k}.B (C x rank), k = 1..K, packed as the core wants */
    char name[64];
    snprintf(name, sizeof name, "skip1.A");
    int64_t rank = (int64_t)need(&st, name, ST_F32, 2, NULL)->shape[0];
    if (rank < 1 || rank > 4096) die("%s: adapter rank %lld out of range", bpath, (long long)rank);
    int64_t R = (rank + 3) / 4 * 4;
    float *A = calloc((size_t)(R * D), sizeof *A), *B = calloc((size_t)(C * K * R), sizeof *B);
    float **a_k = calloc((size_t)K, sizeof *a_k), **b_k = calloc((size_t)K, sizeof *b_k);
    if (!A || !B || !a_k || !b_k) die("out of memory for the adapters");
    for (int64_t k = 0; k < K; k++) {
        int64_t d = m.tap_sizes[k];
        snprintf(name, sizeof name, "skip%lld.A", (long long)(k + 1));
        a_k[k] = load(&st, need(&st, name, ST_F32, 2, (int64_t[]){rank, d}));
        check_finite(a_k[k], (size_t)(rank * d), name);
        snprintf(name, sizeof name, "skip%lld.B", (long long)(k + 1));
        b_k[k] = load(&st, need(&st, name, ST_F32, 2, (int64_t[]){C, rank}));
        check_finite(b_k[k], (size_t)(C * rank), name);
    }
    snprintf(name, sizeof name, "skip%lld.A", (long long)(K + 1));
    if (st_find(&st, name)) die("%s: %s, but the chain has %lld taps", bpath, name, (long long)K);
    ift_adapters ad = {K, R, C, D, m.seg, A, B, chain->logit_offset, (float)scale};
    if (ift_adapters_check(&ad, chain->in_size, chain->row_width) != IFT_OK) die("%s: adapters do not fit the chain", bpath);
    if (ift_adapters_pack(&ad, rank, (const float *const *)a_k, (const float *const *)b_k) != IFT_OK)
        die("%s: cannot pack the adapters", bpath);

    /* data */
    const st_tensor *fti = need(&st, "finetune.images", ST_U8, 4, (int64_t[]){-1, chain->in_c, chain->in_h, chain->in_w});
    int64_t N = (int64_t)fti->shape[0];
    if (N < 1) die("%s: no fine-tuning images", bpath);
    const st_tensor *ftl = need(&st, "finetune.labels", ST_U8, 1, NULL);
    if (ftl->shape[0] != (uint64_t)N)
        die("%s: %lld fine-tuning images but %llu labels", bpath, (long long)N, (unsigned long long)ftl->shape[0]);
    int64_t *labels = load_labels(&st, "finetune.labels", N, C);
    const st_tensor *evi = need(&st, "eval.images", ST_U8, 4, (int64_t[]){-1, chain->in_c, chain->in_h, chain->in_w});
    int64_t M = (int64_t)evi->shape[0];
    const st_tensor *evl = need(&st, "eval.labels", ST_U8, 1, NULL);
    if (evl->shape[0] != (uint64_t)M)
        die("%s: %lld evaluation images but %llu labels", bpath, (long long)M, (unsigned long long)evl->shape[0]);
    int64_t *eval_labels = load_labels(&st, "eval.labels", M, C);

    /* schedule: step s trains on rows order[offsets[s] .. offsets[s+1]) of the fine-tuning set */
    const st_tensor *tof = need(&st, "schedule.offsets", ST_I32, 1, NULL);
    if (tof->shape[0] < 2) die("%s: the schedule has no steps", bpath);
    int64_t S = (int64_t)tof->shape[0] - 1;
    const st_tensor *tor = need(&st, "schedule.order", ST_I32, 1, NULL);
    const st_tensor *tep = need(&st, "schedule.epoch", ST_I32, 1, (int64_t[]){S});
    int32_t *off32 = load(&st, tof), *ord32 = load(&st, tor), *ep32 = load(&st, tep);
    int64_t T = (int64_t)tor->shape[0];
    int64_t *offsets = xmalloc((size_t)(S + 1) * sizeof *offsets), *order = xmalloc((size_t)T * sizeof *order);
    if (off32[0] != 0 || off32[S] != T) die("%s: schedule.offsets must run from 0 to %lld", bpath, (long long)T);
    for (int64_t s = 0; s <= S; s++) {
        if (s && off32[s] <= off32[s - 1]) die("%s: schedule.offsets must increase (step %lld is empty)", bpath, (long long)s);
        offsets[s] = off32[s];
    }
    for (int64_t i = 0; i < T; i++) {
        if (ord32[i] < 0 || ord32[i] >= N) die("%s: schedule.order[%lld] = %d is not a fine-tuning row", bpath, (long long)i, ord32[i]);
        order[i] = ord32[i];
    }
    int64_t epochs = 0;
    for (int64_t s = 0; s < S; s++) {
        if (ep32[s] < (s ? ep32[s - 1] : 0) || ep32[s] > (s ? ep32[s - 1] + 1 : 0))
            die("%s: schedule.epoch must count up from 0", bpath);
        epochs = ep32[s] + 1;
    }
    free(off32), free(ord32);

    /* the fine-tuning images as float (the adapter of x0 reads them every step) */
    size_t per = (size_t)chain->in_size;
    uint8_t *u8 = load(&st, fti);
    float *images = xmalloc((size_t)N * per * sizeof *images);
    to_float(u8, (size_t)N * per, images);
    free(u8);

    int64_t before = evaluate(&st, chain, &ad, evi, eval_labels, M, threads);

    /* fine-tune: fill the cache with the frozen forward, then the schedule */
    double t0 = now();
    ift_cache cache;
    int rc = ift_cache_alloc(&cache, storage, chain->row_width, N, block, N);
    if (rc != IFT_OK) die("cannot allocate the forward cache: %s", ift_strerror(rc));
    int64_t *keys = xmalloc((size_t)N * sizeof *keys), *slot_of = xmalloc((size_t)N * sizeof *slot_of);
    for (int64_t i = 0; i < N; i++) keys[i] = i;
    /* in chunks: ift_cache_fill_chain copies the images it fills from, so one call over all N
     * would hold the fine-tuning images twice at the peak */
    for (int64_t i = 0; i < N; i += FILL_CHUNK) {
        int64_t b = N - i < FILL_CHUNK ? N - i : FILL_CHUNK;
        rc = ift_cache_fill_chain(&cache, chain, keys + i, images + (size_t)i * per, b, threads);
        if (rc != IFT_OK) die("cache fill failed: %s", ift_strerror(rc));
    }
    double t_fill = now() - t0;
    for (int64_t i = 0; i < N; i++) slot_of[i] = ift_cache_slot(&cache, i);
    double *losses = xmalloc((size_t)S * sizeof *losses);
    int status = IFT_OK;
    ift_train_args train = {&cache, images, chain->in_size, slot_of, labels, order, offsets, S, losses, (float)lr, threads};
    int64_t done = ift_train(&ad, &train, 0, S, &status);
    double seconds = now() - t0;
    if (status == IFT_ELOSS && done > 0) {
        int64_t s = done - 1, first = s;
        while (first > 0 && ep32[first - 1] == ep32[s]) first--;
        die("training diverged: loss is %g at epoch %d, step %lld (try a lower --lr)", losses[s], ep32[s] + 1,
            (long long)(s - first + 1));
    }
    if (status != IFT_OK) die("training failed: %s", ift_strerror(status));
    if (done != S) die("training stopped after %lld of %lld steps", (long long)done, (long long)S);
    check_finite(A, (size_t)(R * D), "the trained A");
    check_finite(B, (size_t)(C * K * R), "the trained B");
    int64_t cache_bytes = ift_cache_nbytes(&cache);
    if (dump) dump_cache(&cache, slot_of, N, dump);
    ift_cache_free(&cache);

    int64_t after = evaluate(&st, chain, &ad, evi, eval_labels, M, threads);

    /* the trained adapters, unpacked to the Python names and shapes */
    st_out_tensor *out = xmalloc((size_t)(2 * K) * sizeof *out);
    char (*names)[32] = xmalloc((size_t)(2 * K) * sizeof *names);
    if (ift_adapters_unpack(&ad, rank, a_k, b_k) != IFT_OK) die("cannot unpack the trained adapters");
    for (int64_t k = 0; k < K; k++) {
        int64_t d = m.tap_sizes[k];
        snprintf(names[2 * k], sizeof names[0], "skip%lld.A", (long long)(k + 1));
        snprintf(names[2 * k + 1], sizeof names[0], "skip%lld.B", (long long)(k + 1));
        out[2 * k] = (st_out_tensor){names[2 * k], ST_F32, 2, {(uint64_t)rank, (uint64_t)d}, a_k[k]};
        out[2 * k + 1] = (st_out_tensor){names[2 * k + 1], ST_F32, 2, {(uint64_t)C, (uint64_t)rank}, b_k[k]};
    }
    char hex[65], err[ST_ERR_LEN];
    if (tensors_sha256(out, (int)(2 * K), hash_format, hex)) die("cannot hash the trained adapters");
    char *full_record = adapter_record(record, hex);
    if (st_write_atomic(apath, out, (int)(2 * K), ADAPTER_KEY, full_record, err)) die("%s", err);
    free(full_record);

    printf("{\"method\": ");
    print_json_string(method);
    printf(", \"storage\": \"%s\", \"samples\": %lld, \"eval_samples\": %lld", storage_name, (long long)N, (long long)M);
    printf(", \"accuracy_before\": %.17g, \"accuracy_after\": %.17g", M ? (double)before / (double)M : NAN,
           M ? (double)after / (double)M : NAN);
    printf(", \"correct_before\": %lld, \"correct_after\": %lld", (long long)before, (long long)after);
    printf(", \"finetune_seconds\": %.6f, \"fill_seconds\": %.6f, \"steps\": %lld, \"epochs\": %lld", seconds, t_fill,
           (long long)S, (long long)epochs);
    printf(", \"cache_bytes\": %lld, \"epoch_losses\": [", (long long)cache_bytes);
    for (int64_t e = 0, s = 0; e < epochs; e++) {
        double sum = 0;
        int64_t n = 0;
        for (; s < S && ep32[s] == e; s++, n++) sum += losses[s];
        printf("%s%.17g", e ? ", " : "", n ? sum / (double)n : 0.0);
    }
    printf("], \"peak_rss_kb\": %ld, \"threads\": %d, \"kernels\": ", peak_rss_kb(), threads);
    print_json_string(ift_build_info());
    printf(", \"adapter\": ");
    print_json_string(apath);
    printf("}\n");

    for (int64_t k = 0; k < K; k++) free(a_k[k]), free(b_k[k]);
    free(a_k), free(b_k), free(out), free(names), free(losses), free(keys), free(slot_of), free(images), free(labels);
    free(eval_labels), free(offsets), free(order), free(ep32), free(A), free(B), free(bpath), free(apath);
    for (int i = 0; i < MAX_OPS; i++) free(m.weights[i]), free(m.biases[i]);
    st_close(&st);
    return fflush(stdout) == 0 ? 0 : 2;
}
