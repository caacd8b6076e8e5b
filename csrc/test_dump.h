/* Reading the named-array dumps that Python writes (instantft.engine.cengine.write_dump) for the
 * C test and bench programs, and a chain from the dump's ops and weights. Header-only, for those
 * programs (not part of the core). */
#ifndef IFT_TEST_DUMP_H
#define IFT_TEST_DUMP_H

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

static int load(const char *path)
{
    FILE *f = fopen(path, "rb");
    char magic[8];
    if (!f || fread(magic, 1, 8, f) != 8 || memcmp(magic, "IFTGOLD1", 8)) return -1;
    uint32_t n;
    while (fread(&n, 4, 1, f) == 1) {
        array *a = &arrays[n_arrays];
        uint8_t dtype;
        if (n >= sizeof a->name || n_arrays >= 128 || fread(a->name, 1, n, f) != n || fread(&dtype, 1, 1, f) != 1 ||
            fread(&a->count, 8, 1, f) != 1)
            return -1;
        a->name[n] = 0;
        a->dtype = dtype;
        size_t size = dtype == 2 ? 1 : dtype == 0 ? 4 : 8;
        a->data = malloc(a->count * size + 1);
        if (!a->data || fread(a->data, size, a->count, f) != a->count) return -1;
        n_arrays++;
    }
    fclose(f);
    return 0;
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
