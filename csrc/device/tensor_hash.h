/* The SHA-256 of a set of named tensors that adapter records carry (``tensors_sha256``), in C as
 * instantft.fileio.tensors_sha256 computes it in Python.
 *
 * Format 2 (the record says "tensors_sha256_format": 2; a bundle's metadata
 * "tensors_sha256_format" = "2"): the SHA-256 of, for each tensor in increasing byte order of
 * the UTF-8 names,
 *     name bytes, 0x00,
 *     dtype tag (the safetensors name: "F32", "I64", "U8", ...), 0x00,
 *     ndim as a little-endian uint64, each dimension as a little-endian uint64,
 *     the data: numel * itemsize bytes, row-major, little-endian.
 * Format 1 (records without a format, written by 0.1.0): F32 tensors only, the text
 * "name:(d0, d1):torch.float32" (Python's str of a shape tuple: "(d0,)" for one dimension)
 * then the bytes; kept so that old bundles and adapters still verify. */
#ifndef INSTANTFT_DEVICE_TENSOR_HASH_H
#define INSTANTFT_DEVICE_TENSOR_HASH_H

#include "safetensors.h"

#define IFT_TENSORS_SHA256_FORMAT 2

/* 64 hex digits + NUL of tensors ts[0..n) in format 1 or 2 (sorts ts by name); -1 for another
 * format or a tensor format 1 cannot describe, else 0. */
int tensors_sha256(st_out_tensor *ts, int n, int format, char hex[65]);

#endif
