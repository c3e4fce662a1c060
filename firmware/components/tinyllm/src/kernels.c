#include "kernels.h"

#include <math.h>

/* Unrolled by four, one accumulator: the same additions in the same order as the
 * plain loop (the same bits), with a quarter of the loop and pointer updates. */
void tl_matvec_f32(float *y, const float *W, const float *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        const float *w = W + (long)r * cols;
        float acc = 0.0f;
        int j = 0;
        for (; j + 4 <= cols; j += 4) {
            acc += w[j] * x[j];
            acc += w[j + 1] * x[j + 1];
            acc += w[j + 2] * x[j + 2];
            acc += w[j + 3] * x[j + 3];
        }
        for (; j < cols; j++) acc += w[j] * x[j];
        y[r] = acc;
    }
}

/* Four int8 values from one aligned 32-bit load (little-endian byte j = element j;
 * on a big-endian core both operands swap alike, and integer sums do not care). */
typedef uint32_t tl_word __attribute__((may_alias)); /* may read int8 storage (GCC, Clang) */

static uint32_t load4(const void *p)
{
    return *(const tl_word *)p; /* one l32i (ESP-IDF builds without builtin memcpy) */
}

static int aligned4(const void *p) { return ((uintptr_t)p & 3u) == 0; }

#define TL_BYTE(v, k) ((int32_t)(int8_t)(uint8_t)((v) >> (8 * (k))))

/* int8 -> float by table: a core without an FPU (lx106) pays a library call per
 * conversion otherwise. Index = the byte's unsigned value. */
#define TL_I8(i) ((float)((i) < 128 ? (i) : (i) - 256))
#define TL_I8_4(i) TL_I8(i), TL_I8((i) + 1), TL_I8((i) + 2), TL_I8((i) + 3)
#define TL_I8_16(i) TL_I8_4(i), TL_I8_4((i) + 4), TL_I8_4((i) + 8), TL_I8_4((i) + 12)
#define TL_I8_64(i) TL_I8_16(i), TL_I8_16((i) + 16), TL_I8_16((i) + 32), TL_I8_16((i) + 48)
static const float i8_to_float[256] = {TL_I8_64(0), TL_I8_64(64), TL_I8_64(128), TL_I8_64(192)};

float tl_dot_i8_f32(const int8_t *q, const float *x, int n)
{
    const uint8_t *u = (const uint8_t *)q;
    float acc = 0.0f;
    int j = 0;
    for (; j < n && !aligned4(u + j); j++) acc += i8_to_float[u[j]] * x[j]; /* records are 5 + H bytes */
    for (; j + 4 <= n; j += 4) { /* then four bytes per load, still added in order j = 0, 1, 2, ... */
        uint32_t v = load4(u + j);
        acc += i8_to_float[v & 0xffu] * x[j];
        acc += i8_to_float[(v >> 8) & 0xffu] * x[j + 1];
        acc += i8_to_float[(v >> 16) & 0xffu] * x[j + 2];
        acc += i8_to_float[v >> 24] * x[j + 3];
    }
    for (; j < n; j++) acc += i8_to_float[u[j]] * x[j];
    return acc;
}

/* a + b * c in one rounding where the core has a fused multiply-add (the ESP32's
 * madd.s): the proxy's bound allows any order, with or without FMA (contracts §2). */
#ifdef __FP_FAST_FMAF
#define TL_MADD(a, b, c) fmaf((b), (c), (a))
#else
#define TL_MADD(a, b, c) ((a) + (b) * (c))
#endif

/* One column j of four rows: each x[j] is loaded once for the four products. */
#define TL_PROXY_COL(j)                                                                                      \
    do {                                                                                                     \
        float xj = x[j];                                                                                     \
        s0 = TL_MADD(s0, i8_to_float[q0[j]], xj);                                                            \
        s1 = TL_MADD(s1, i8_to_float[q1[j]], xj);                                                            \
        s2 = TL_MADD(s2, i8_to_float[q2[j]], xj);                                                            \
        s3 = TL_MADD(s3, i8_to_float[q3[j]], xj);                                                            \
    } while (0)

void tl_proxy_dots(float *d, const int8_t *q, size_t stride, const float *x, int n, int rows)
{
    int i = 0;
    for (; i + 4 <= rows; i += 4) {
        const uint8_t *q0 = (const uint8_t *)q + (size_t)i * stride, *q1 = q0 + stride, *q2 = q1 + stride,
                      *q3 = q2 + stride;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        int j = 0;
        for (; j + 4 <= n; j += 4) { /* byte loads: the records are 5 + H bytes, any alignment */
            TL_PROXY_COL(j);
            TL_PROXY_COL(j + 1);
            TL_PROXY_COL(j + 2);
            TL_PROXY_COL(j + 3);
        }
        for (; j < n; j++) TL_PROXY_COL(j);
        d[i] = s0;
        d[i + 1] = s1;
        d[i + 2] = s2;
        d[i + 3] = s3;
    }
    for (; i < rows; i++) d[i] = tl_dot_i8_f32(q + (size_t)i * stride, x, n);
}

float tl_quantize_act(int8_t *qx, const float *x, int n)
{
    float xmax = 0.0f;
    for (int j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        if (a > xmax) xmax = a;
    }
    float sx = xmax / 127.0f;
    if (xmax == 0.0f || !isfinite(xmax)) sx = 1.0f;
    for (int j = 0; j < n; j++) {
        float q = rintf(x[j] / sx); /* round half to even (default rounding mode) */
        if (q != q) q = 0.0f;       /* NaN from corrupt weights: no undefined cast below */
        if (q > 127.0f) q = 127.0f;
        if (q < -127.0f) q = -127.0f;
        qx[j] = (int8_t)q;
    }
    return sx;
}

#ifdef TL_XTENSA_MAC16
/* The ESP32's MAC16 unit: one instruction multiplies the signed 16-bit halves of
 * two registers into its 40-bit accumulator ACC (GCC never emits it). x is widened
 * to int16 once per matvec, two values per 32-bit word; mula.aa.ll / mula.aa.lh
 * pair a weight (sign-extended in a register's low half) with either half. ACC is
 * saved and restored with the task context (ESP-IDF's "extra" state). */
static int16_t x16[TL_I8_MAX_COLS] __attribute__((aligned(4)));

/* ACC += the four products of weights w[0..3] (one word) and x16[0..3] (two words). */
#define TL_MAC4(a, xa, xb)                                                                                   \
    __asm__ volatile("mula.aa.ll %0, %1\n\tmula.aa.lh %2, %1\n\tmula.aa.ll %3, %4\n\tmula.aa.lh %5, %4"   \
                     : : "r"(TL_BYTE(a, 0)), "r"(xa), "r"(TL_BYTE(a, 1)), "r"(TL_BYTE(a, 2)), "r"(xb),         \
                       "r"(TL_BYTE(a, 3)))

static int32_t dot_i8_mac16(const int8_t *w, int cols) /* cols % 8 == 0, w 4-byte aligned */
{
    int32_t acc;
    __asm__ volatile("wsr.acclo %0\n\twsr.acchi %0" : : "r"(0));
    for (int j = 0; j < cols; j += 8) { /* eight products per pass: less loop overhead */
        uint32_t a = load4(w + j), b = load4(w + j + 4);
        TL_MAC4(a, load4(x16 + j), load4(x16 + j + 2));
        TL_MAC4(b, load4(x16 + j + 4), load4(x16 + j + 6));
    }
    __asm__ volatile("rsr.acclo %0" : "=r"(acc)); /* |sum| < 2^24: the low 32 bits are all of it */
    return acc;
}
#endif

void tl_matvec_i8(float *y, const int8_t *W, const float *scale, const int8_t *qx, float sx, int rows, int cols)
{
#ifdef TL_XTENSA_MAC16
    int mac16 = cols % 8 == 0 && cols <= TL_I8_MAX_COLS && aligned4(W);
    if (mac16)
        for (int j = 0; j < cols; j++) x16[j] = qx[j];
#endif
    for (int r = 0; r < rows; r++) {
        const int8_t *w = W + (long)r * cols;
        int32_t acc = 0; /* exact in any order: config.c keeps 127 * 127 * cols < 2^24 */
        int j = 0;
#ifdef TL_XTENSA_MAC16
        if (mac16) {
            acc = dot_i8_mac16(w, cols);
            j = cols;
        }
#endif
        if (aligned4(w) && aligned4(qx)) /* four products per pair of loads */
            for (; j + 4 <= cols; j += 4) {
                uint32_t a = load4(w + j), b = load4(qx + j);
                acc += TL_BYTE(a, 0) * TL_BYTE(b, 0) + TL_BYTE(a, 1) * TL_BYTE(b, 1) +
                       TL_BYTE(a, 2) * TL_BYTE(b, 2) + TL_BYTE(a, 3) * TL_BYTE(b, 3);
            }
        for (; j < cols; j++) acc += (int32_t)w[j] * (int32_t)qx[j];
        float s = scale[r] * sx; /* rounded to float32 first, as the contract says */
        y[r] = (float)acc * s;
    }
}

void tl_rmsnorm(float *o, const float *x, const float *w, int n, float eps)
{
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    ss /= (float)n;
    float inv = 1.0f / sqrtf(ss + eps);
    for (int j = 0; j < n; j++) o[j] = w[j] * (x[j] * inv);
}

/*
 * The transcendental functions below are evaluated in double and rounded once to
 * float. A double libm result is within an ulp of double, so after rounding it is
 * the correctly rounded float (except with ~2^-29 odds): the same bits from glibc,
 * picolibc, newlib or NumPy. That is what lets the int8 path match the harness's
 * emulation bit for bit; expf/sinf implementations differ by an ulp between libms,
 * and one ulp can move an activation across an int8 rounding boundary.
 */
static float exp_rounded(float x) { return (float)exp((double)x); }

void tl_rope_inv_freq(float *inv_freq, int head_dim, float theta)
{
    for (int i = 0; i < head_dim / 2; i++)
        inv_freq[i] = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)head_dim));
}

void tl_rope_angles(float *cos_t, float *sin_t, const float *inv_freq, int half, int pos)
{
    for (int i = 0; i < half; i++) {
        float f = (float)pos * inv_freq[i];
        cos_t[i] = (float)cos((double)f); /* see exp_rounded */
        sin_t[i] = (float)sin((double)f);
    }
}

void tl_rope_apply(float *v, const float *cos_t, const float *sin_t, int half)
{
    for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos_t[i] - b * sin_t[i];
        v[i + half] = b * cos_t[i] + a * sin_t[i];
    }
}

void tl_softmax(float *x, int n)
{
    float mx = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = exp_rounded(x[i] - mx);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

float tl_silu(float x) { return x / (1.0f + exp_rounded(-x)); }
