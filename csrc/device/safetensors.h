/* A safetensors reader and writer for exactly the headers instantft writes (device bundles and
 * adapters): an 8-byte little-endian header length, a JSON object of
 *   "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}
 * entries plus an optional "__metadata__" object of string values, then the raw data.
 *
 * Why hand-written: the device program depends on libc only. Every length, offset, shape
 * product and string is checked against the bytes actually present before it is used, so no
 * header, however it lies, can make the reader touch memory or file bytes it should not.
 * Tensor data is not loaded at open: st_read() reads a bounded byte range of one tensor, so the
 * 7 MB evaluation set can be streamed in chunks. C11, libc only. */
#ifndef INSTANTFT_DEVICE_SAFETENSORS_H
#define INSTANTFT_DEVICE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (16u << 20) /* 16 MiB: far above any bundle's header, bounds the allocation */
#define ST_ERR_LEN 320

typedef enum { ST_U8, ST_I8, ST_I16, ST_U16, ST_I32, ST_U32, ST_I64, ST_U64, ST_F16, ST_BF16, ST_F32, ST_F64, ST_BOOL, ST_NDTYPES } st_dtype;

typedef struct {
    char *name;     /* NUL-terminated, points into st_file's string arena */
    st_dtype dtype;
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end; /* byte range in the data section, end - begin == numel * itemsize */
} st_tensor;

typedef struct {
    char *key;
    char *value;
} st_meta;

typedef struct {
    FILE *fh;
    uint64_t file_size;
    uint64_t data_start; /* 8 + header length */
    uint64_t data_size;
    int n_tensors;
    st_tensor *tensors;
    int n_meta;
    st_meta *meta;
    char *arena; /* decoded strings */
    char err[ST_ERR_LEN];
} st_file;

size_t st_itemsize(st_dtype d);
const char *st_dtype_name(st_dtype d);

/* 0 on success; -1 with a one-line reason in st->err (the file is closed again). */
int st_open(st_file *st, const char *path);
void st_close(st_file *st);
const st_tensor *st_find(const st_file *st, const char *name);
const char *st_meta_get(const st_file *st, const char *key);
/* Read bytes [offset, offset + nbytes) of tensor t into dst; -1 (and st->err) if out of range or short. */
int st_read(st_file *st, const st_tensor *t, uint64_t offset, void *dst, uint64_t nbytes);

/* Length (2..4) of the well-formed UTF-8 sequence at p, or -1. */
int st_utf8_length(const char *p, const char *end);

/* Parse a header held in memory (what st_open does after reading it); exposed for tests. */
int st_parse_header(st_file *st, const char *json, size_t len);

/* --- writing ------------------------------------------------------------------------------ */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    const void *data;
} st_out_tensor;

/* Write tensors + one metadata entry (meta_key -> meta_value, a plain string escaped here; NULL
 * key for none) to path atomically: temp file beside it, fsync, rename, fsync of the directory.
 * On failure the previous file is untouched, the temp file removed, -1 returned and err set. */
int st_write_atomic(const char *path, const st_out_tensor *tensors, int n, const char *meta_key,
                    const char *meta_value, char err[ST_ERR_LEN]);

#endif
