/* The golden files Python writes (tests/golden/write_golden.py; instantft.engine.cengine.write_dump)
 * for the C test and bench programs: safetensors, read with the device program's reader
 * (device/safetensors.c, included here so that these programs build from their own source and
 * the core's), and a chain from the file's ops and weights. Header-only, for those programs (not
 * part of the core). Include it FIRST: the reader needs the POSIX declarations it asks for. */
#ifndef IFT_TEST_DUMP_H
#define IFT_TEST_DUMP_H

#include "device/safetensors.c"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "instantft.h"

typedef struct {
    char name[64];
    int dtype; /* 0 f32, 1 i64, 2 u8, 3 f64 */
    uint64_t count;
    void *data;
} array;

static array arrays[128];
static int n_arrays;

static void *get(const char *name, int dtype, uint64_t *count)
{
    for (int i = 0; i < n_arrays; i++)
        if (strcmp(arrays[i].name, name) == 0) {
            if (arrays[i].dtype != dtype) break;
            if (count) *count = arrays[i].count;
            return arrays[i].data;
        }
    fprintf(stderr, "golden: no array %s of dtype %d\n", name, dtype);
    exit(2);
}

/* every tensor of the file (F32, I64, U8 or F64), flattened */
static int load(const char *path)
{
    st_file st;
    if (st_open(&st, path)) {
        fprintf(stderr, "%s\n", st.err);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < st.n_tensors && rc == 0; i++) {
        const st_tensor *t = &st.tensors[i];
        array *a = &arrays[n_arrays];
        int dtype = t->dtype == ST_F32 ? 0 : t->dtype == ST_I64 ? 1 : t->dtype == ST_U8 ? 2 : t->dtype == ST_F64 ? 3 : -1;
        if (dtype < 0 || n_arrays >= 128 || strlen(t->name) >= sizeof a->name) {
            rc = -1;
            break;
        }
        snprintf(a->name, sizeof a->name, "%s", t->name);
        a->dtype = dtype;
        a->count = t->numel;
        a->data = malloc((size_t)(t->end - t->begin) + 1);
        if (!a->data || st_read(&st, t, 0, a->data, t->end - t->begin)) rc = -1;
        n_arrays++;
    }
    st_close(&st);
    return rc;
}

/* the array called name, or NULL */
static void *find(const char *name)
{
    for (int a = 0; a < n_arrays; a++)
        if (strcmp(arrays[a].name, name) == 0) return arrays[a].data;
    return NULL;
}

/* ops[] from the dump's "ops" (n x 9) and w{i}/b{i}; returns the op count */
static int32_t load_ops(ift_op *ops, int32_t max_ops)
{
    uint64_t n9;
    const int64_t *opv = get("ops", 1, &n9);
    int32_t n_ops = (int32_t)(n9 / 9);
    if (n_ops > max_ops) {
        fprintf(stderr, "dump: %d ops, at most %d\n", (int)n_ops, (int)max_ops);
        exit(2);
    }
    memset(ops, 0, sizeof(ift_op) * (size_t)n_ops);
    for (int32_t i = 0; i < n_ops; i++) {
        const int64_t *o = opv + 9 * i;
        ops[i].kind = (int32_t)o[0], ops[i].out_c = (int32_t)o[1], ops[i].kh = (int32_t)o[2], ops[i].kw = (int32_t)o[3];
        ops[i].sh = (int32_t)o[4], ops[i].sw = (int32_t)o[5], ops[i].ph = (int32_t)o[6], ops[i].pw = (int32_t)o[7];
        ops[i].tap = (int32_t)o[8];
        char name[16];
        snprintf(name, sizeof name, "w%d", (int)i);
        ops[i].weight = find(name);
        snprintf(name, sizeof name, "b%d", (int)i);
        ops[i].bias = find(name);
    }
    return n_ops;
}

static void free_arrays(void)
{
    for (int i = 0; i < n_arrays; i++) free(arrays[i].data);
    n_arrays = 0;
}

#endif
