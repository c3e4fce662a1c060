/* Small checks of the numeric kernels and CRC-32 (ctest). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "crc32.h"
#include "kernels.h"

static int failures;
#define CHECK(cond)                                                                                                \
    do {                                                                                                           \
        if (!(cond)) {                                                                                             \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                                 \
            failures++;                                                                                            \
        }                                                                                                          \
    } while (0)

int main(void)
{
    /* zlib.crc32(b"123456789") == 0xcbf43926 */
    CHECK(tl_crc32(0, "123456789", 9) == 0xCBF43926u);
    CHECK(tl_crc32(tl_crc32(0, "1234", 4), "56789", 5) == 0xCBF43926u);

    /* Activation quantization: round half to even, clamp, zero vector. */
    float x[4] = {127.0f, 0.5f, 1.5f, -2.5f};
    int8_t q[4];
    float sx = tl_quantize_act(q, x, 4);
    CHECK(sx == 1.0f);
    CHECK(q[0] == 127 && q[1] == 0 && q[2] == 2 && q[3] == -2);
    float z[3] = {0, 0, 0};
    CHECK(tl_quantize_act(q, z, 3) == 1.0f && q[0] == 0);

    /* int8 matvec: acc * (scale * sx) */
    int8_t W[6] = {1, 2, 3, -1, -2, -3};
    float sc[2] = {0.5f, 2.0f};
    int8_t qx[3] = {1, 1, 1};
    float y[2];
    tl_matvec_i8(y, W, sc, qx, 0.25f, 2, 3);
    CHECK(y[0] == 6.0f * 0.125f && y[1] == -6.0f * 0.5f);

    /* RoPE rotate_half: position 0 is the identity; the pair (i, i + d/2) rotates. */
    float inv[2], c[2], s[2];
    tl_rope_inv_freq(inv, 4, 10000.0f);
    CHECK(inv[0] == 1.0f && fabsf(inv[1] - 0.01f) < 1e-7f);
    float v[4] = {1, 2, 3, 4};
    tl_rope_angles(c, s, inv, 2, 0);
    tl_rope_apply(v, c, s, 2);
    CHECK(v[0] == 1 && v[1] == 2 && v[2] == 3 && v[3] == 4);
    tl_rope_angles(c, s, inv, 2, 1);
    tl_rope_apply(v, c, s, 2);
    CHECK(fabsf(v[0] - (cosf(1) - 3 * sinf(1))) < 1e-6f && fabsf(v[2] - (3 * cosf(1) + sinf(1))) < 1e-6f);

    float p[3] = {1, 2, 3};
    tl_softmax(p, 3);
    CHECK(fabsf(p[0] + p[1] + p[2] - 1.0f) < 1e-6f && p[2] > p[1]);

    float n[2] = {3, 4}, w[2] = {1, 2}, o[2];
    tl_rmsnorm(o, n, w, 2, 0.0f);
    CHECK(fabsf(o[0] - 3 / sqrtf(12.5f)) < 1e-6f && fabsf(o[1] - 8 / sqrtf(12.5f)) < 1e-6f);

    if (failures == 0) printf("kernels: all checks passed\n");
    return failures ? 1 : 0;
}
