/*
 * Numeric kernels of the forward pass (contracts.md §1, §2).
 * float32 everywhere; int8 weights use w8a8 row-wise symmetric quantization.
 */
#ifndef TINYLLM_KERNELS_H
#define TINYLLM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* y[r] = sum_j W[r][j] * x[j], accumulated in float in order j = 0..cols-1. */
void tl_matvec_f32(float *y, const float *W, const float *x, int rows, int cols);

/* sum_j (float)q[j] * x[j], accumulated in float in order j = 0..n-1 (the lm_head proxy). */
float tl_dot_i8_f32(const int8_t *q, const float *x, int n);

/* d[i] = sum_j (float)q[i * stride + j] * x[j] for `rows` rows `stride` bytes apart (the
 * lm_head proxy records): four rows per pass, any summation order, fused multiply-add
 * where the core has one, so the bits may differ by target (the proxy's bound allows it). */
void tl_proxy_dots(float *d, const int8_t *q, size_t stride, const float *x, int n, int rows);

/* Quantizes x to int8 with one scale (returned): qx = clamp(rint(x / sx), -127, 127). */
float tl_quantize_act(int8_t *qx, const float *x, int n);

/* The widest int8 matrix input: |sum| <= 127 * 127 * cols stays below 2^24, so the
 * int32 sum converts to float exactly (config.c refuses wider int8 models). */
#define TL_I8_MAX_COLS 1040

/* y[r] = (float)(sum_j W[r][j] * qx[j]) * (scale[r] * sx), exact integer accumulation. */
void tl_matvec_i8(float *y, const int8_t *W, const float *scale, const int8_t *qx, float sx, int rows, int cols);

/* o[j] = w[j] * (x[j] * (1 / sqrtf(ss / n + eps))), ss = sum of x^2 in order; o may alias x. */
void tl_rmsnorm(float *o, const float *x, const float *w, int n, float eps);

/* inv_freq[i] = 1 / theta^(2i/d), i < d/2, computed in double, rounded to float. */
void tl_rope_inv_freq(float *inv_freq, int head_dim, float theta);
/* cos/sin of pos * inv_freq[i] for one position. */
void tl_rope_angles(float *cos_t, float *sin_t, const float *inv_freq, int half, int pos);
/* Rotates one head vector in place, HF rotate_half convention (i pairs with i + d/2). */
void tl_rope_apply(float *v, const float *cos_t, const float *sin_t, int half);

/* In-place numerically stable softmax. */
void tl_softmax(float *x, int n);

/* SiLU: x * sigmoid(x). */
float tl_silu(float x);

#endif
