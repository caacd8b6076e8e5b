/* tensors_sha256: the canonical tensor hash (format 2) and 0.1.0's (format 1); see tensor_hash.h. */
#include "tensor_hash.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the hashed data is little-endian; this code hashes memory as it is"
#endif

static int by_name(const void *a, const void *b) {
    return strcmp(((const st_out_tensor *)a)->name, ((const st_out_tensor *)b)->name);
}

static void put_u64(sha256_ctx *c, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    sha256_update(c, b, sizeof b);
}

int tensors_sha256(st_out_tensor *ts, int n, int format, char hex[65]) {
    if (format != 1 && format != IFT_TENSORS_SHA256_FORMAT) return -1;
    qsort(ts, (size_t)n, sizeof *ts, by_name);
    sha256_ctx c;
    sha256_init(&c);
    for (int i = 0; i < n; i++) {
        const st_out_tensor *t = &ts[i];
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        if (format == IFT_TENSORS_SHA256_FORMAT) {
            const char *tag = st_dtype_name(t->dtype);
            sha256_update(&c, t->name, strlen(t->name) + 1);
            sha256_update(&c, tag, strlen(tag) + 1);
            put_u64(&c, (uint64_t)t->ndim);
            for (int d = 0; d < t->ndim; d++) put_u64(&c, t->shape[d]);
        } else {
            if (t->dtype != ST_F32) return -1;
            char head[600];
            int len = snprintf(head, sizeof head, "%s:(", t->name);
            for (int d = 0; d < t->ndim && len < (int)sizeof head; d++)
                len += snprintf(head + len, sizeof head - (size_t)len, "%s%llu", d ? ", " : "",
                                (unsigned long long)t->shape[d]);
            if (len < (int)sizeof head)
                len += snprintf(head + len, sizeof head - (size_t)len, "%s):torch.float32", t->ndim == 1 ? "," : "");
            if (len >= (int)sizeof head) return -1;
            sha256_update(&c, head, (size_t)len);
        }
        sha256_update(&c, t->data, (size_t)(numel * st_itemsize(t->dtype)));
    }
    sha256_hex(&c, hex);
    return 0;
}
