/* NF4 encode/decode, bit-identical to instantft.nf4 (quantize / dequantize): see instantft.h. */
#include <string.h>

#include "instantft.h"
#include "internal.h"

/* torch's float32 NF4_LEVELS and NF4_THRESHOLDS = (L[1:] + L[:-1]) / 2, as exact hex literals */
const float ift_nf4_levels[16] = {
    -0x1.0000000000000p+0f, -0x1.6473620000000p-1f, -0x1.0cd6600000000p-1f, -0x1.9465400000000p-2f,
    -0x1.23449a0000000p-2f, -0x1.7a6a7e0000000p-3f, -0x1.74f0e20000000p-4f, 0x0.0p+0f,
    0x1.45f5fe0000000p-4f,  0x1.4995c60000000p-3f,  0x1.f809ba0000000p-3f,  0x1.5a06740000000p-2f,
    0x1.c349700000000p-2f,  0x1.200f560000000p-1f,  0x1.7227660000000p-1f,  0x1.0000000000000p+0f,
};
const float ift_nf4_thresholds[15] = {
    -0x1.b239b00000000p-1f, -0x1.38a4e00000000p-1f, -0x1.d709000000000p-2f, -0x1.5bd4ec0000000p-2f,
    -0x1.e079d80000000p-3f, -0x1.1a71780000000p-3f, -0x1.74f0e20000000p-5f, 0x1.45f5fe0000000p-5f,
    0x1.ec90c40000000p-4f,  0x1.a0cfc00000000p-3f,  0x1.2b05a80000000p-2f,  0x1.8ea7f20000000p-2f,
    0x1.00da080000000p-1f,  0x1.491b5e0000000p-1f,  0x1.b913b40000000p-1f,
};

int64_t ift_nf4_blocks(int64_t n, int64_t block_size) { return (n + block_size - 1) / block_size; }
int64_t ift_nf4_code_bytes(int64_t n, int64_t block_size) { return ift_nf4_blocks(n, block_size) * block_size / 2; }
int64_t ift_nf4_row_bytes(int64_t n, int64_t block_size)
{
    return ift_nf4_code_bytes(n, block_size) + 4 * ift_nf4_blocks(n, block_size);
}

/* The encoder runs on the best instruction set the CPU has (kern.h: KN(encode_row)). */
void ift_nf4_encode_row(const float *x, int64_t n, int64_t block_size, uint8_t *codes, float *absmax)
{
    ift_kernels_get()->encode(x, n, block_size, codes, absmax);
}

void ift_nf4_encode_rows(const float *rows, int64_t count, int64_t n, int64_t block_size, uint8_t *codes,
                         float *absmax)
{
    int64_t cb = ift_nf4_code_bytes(n, block_size), nb = ift_nf4_blocks(n, block_size);
    for (int64_t i = 0; i < count; i++) ift_nf4_encode_row(rows + i * n, n, block_size, codes + i * cb, absmax + i * nb);
}

void ift_nf4_decode_row(const uint8_t *codes, const float *absmax, int64_t n, int64_t block_size, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        uint8_t byte = codes[j / 2];
        int code = (j & 1) ? byte >> 4 : byte & 0x0F;
        out[j] = ift_nf4_levels[code] * absmax[j / block_size];
    }
}
