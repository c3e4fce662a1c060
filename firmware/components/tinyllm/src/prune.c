/*
 * The pruned lm_head (docs/contracts.md §2, "pruned lm_head"): a float32 set's logits
 * through its int8 proxy. The proxy is streamed and every row's float32 logit bounded;
 * only the rows whose upper bound reaches the k-th best lower bound are read from the
 * float32 lm_head. The top-k equals the full stream's bit for bit.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "model.h"
#include "output.h"
#include "storage.h"

/* Inserts v into the k best values kept in descending order in best[0..*n). */
static void keep_largest(float *best, int *n, int k, float v)
{
    if (*n == k && !(v > best[k - 1])) return;
    int p = *n < k ? (*n)++ : k - 1;
    while (p > 0 && v > best[p - 1]) {
        best[p] = best[p - 1];
        p--;
    }
    best[p] = v;
}

/* Per-row constants of the bound (docs/contracts.md §2, "pruned lm_head"), all
 * rounded up: float32 unit roundoff u, gamma_n = n u / (1 - n u), the norm
 * bound 127 sqrt(n) of an int8 row, and the underflow allowance. */
typedef struct tl_bound_consts {
    float gamma, two_qnorm, three_u, tiny, inflate, xnorm, error_unit;
} tl_bound_consts;

static float round_up(double v)
{
    float f = (float)v;
    return (double)f < v ? nextafterf(f, INFINITY) : f;
}

static tl_bound_consts bound_consts(const float *x, int n)
{
    const double u = 0x1p-24;
    double ss = 0.0; /* once per token, in double: its rounding is far below the slack */
    for (int j = 0; j < n; j++) ss += (double)x[j] * (double)x[j];
    tl_bound_consts b;
    b.gamma = round_up((double)n * u / (1.0 - (double)n * u));
    b.two_qnorm = round_up(2.0 * 127.0 * sqrt((double)n) * (1.0 + 0x1p-40));
    b.three_u = round_up(3.0 * u);
    b.tiny = round_up(((double)n + 2.0) * 0x1p-125);
    b.inflate = round_up(1.0 + 0x1p-16);
    b.xnorm = round_up(sqrt(ss) * (1.0 + 0x1p-40));
    b.error_unit = round_up(sqrt((double)n) / TL_PROXY_ERROR_DIVISOR * (1.0 + 0x1p-40));
    return b;
}

/* A candidate's exact logit contradicts the bounds the proxy gave it, which the
 * proof (contracts.md §2) rules out for an exported pair: lm_head.bin and its
 * proxy are not one export. Pruning could then miss the true top-k unseen, so
 * this step and every later one until the next load stream lm_head in full. */
static int proxy_disproved(tl_model *m, tl_topk *top, int row, float logit, const char *where, float bound)
{
    m->prune.disproved = 1;
    top->n = 0;
    tl_log(m->port, TL_TAG_LOADER,
           "lm_head proxy disproved at position %d: row %d's logit %.9g is %s %.9g; %s does not bound this "
           "lm_head.bin, streaming it in full until the next load",
           m->pos, row, (double)logit, where, (double)bound, TL_PROXY_FILE);
    return TL_OK; /* *fallback is still 1 */
}

/* Streams the proxy and bounds every row's float32 logit: the upper bounds into m->prune.upper,
 * the k best lower bounds into lower[0..*n_lower). Sets *usable, unless the step must stream
 * lm_head in full instead (a scale small enough for the error term to underflow, a NaN or
 * an overflow in the bounds). Returns TL_OK, or a read's error code. */
static int proxy_bounds(tl_model *m, const float *xn, int k, float *lower, int *n_lower, int *usable)
{
    const tl_tensor *p = &m->proxy;
    int H = m->cfg.hidden, r = 0;
    size_t rec = (size_t)H + TL_PROXY_HEADER_BYTES;
    tl_bound_consts b = bound_consts(xn, H);
    if (!isfinite(b.xnorm)) return TL_OK;

    /* Sector-aligned blocks, each read `rec` bytes into its buffer; a record
     * cut by a block's end is carried to just before the next block (in the
     * other buffer, whose read is then in flight: it writes only from `rec` on). */
    size_t block = (size_t)tl_proxy_block_bytes(m->chunk_rows, H), carry = 0;
    if (block + rec > m->stream_bytes) block = (m->stream_bytes - rec) & ~(size_t)511u;
    uint8_t *buf[2] = {m->stream, m->stream2 ? m->stream2 : m->stream};
    int cur = 0;
    read_start(m, p->fh, p->name, 0, buf[0] + rec, p->bytes < block ? (size_t)p->bytes : block);
    for (uint64_t off = 0; off < p->bytes; off += block) {
        size_t n = p->bytes - off < block ? (size_t)(p->bytes - off) : block;
        if (read_wait(m)) return m->err->code;
        uint64_t off1 = off + block; /* the next block: into the other buffer while this one is computed */
        size_t n1 = off1 < p->bytes ? (p->bytes - off1 < block ? (size_t)(p->bytes - off1) : block) : 0;
        int nxt = cur ^ (buf[0] != buf[1]);
        if (n1 && nxt != cur) read_start(m, p->fh, p->name, off1, buf[nxt] + rec, n1);
        const uint8_t *data = buf[cur] + rec - carry;
        size_t have = carry + n, used = 0;
        int whole = (int)(have / rec); /* the block's complete records: their dot products first, */
        tl_proxy_dots(m->prune.upper + r, (const int8_t *)(data + TL_PROXY_HEADER_BYTES), rec, xn, H, whole);
        for (; have - used >= rec; used += rec, r++) { /* then each one's bounds, in place */
            const uint8_t *record = data + used;
            float scale;
            memcpy(&scale, record, 4);
            float proxy = scale * m->prune.upper[r];
            float s = fabsf(scale);
            if (s < 0x1p-100f) return read_drain(m, TL_OK); /* the error term could underflow: stream in full */
            float error = (float)record[4] * s * b.error_unit; /* >= ||w_r - scale q_r||, see above */
            float bound = (error + b.gamma * (b.two_qnorm * s + error)) * b.xnorm;
            bound = (bound + b.three_u * fabsf(proxy) + b.tiny * (1.0f + s)) * b.inflate;
            float hi = proxy + bound, lo = proxy - bound;
            if (!isfinite(proxy) || hi != hi || lo != lo) return read_drain(m, TL_OK); /* NaN, overflow: in full */
            m->prune.upper[r] = hi;
            keep_largest(lower, n_lower, k, lo);
        }
        carry = have - used; /* < rec */
        memmove(buf[nxt] + rec - carry, data + used, carry);
        if (n1 && nxt == cur) read_start(m, p->fh, p->name, off1, buf[nxt] + rec, n1); /* one buffer: now */
        cur = nxt;
    }
    *usable = 1;
    return TL_OK;
}

/* The rows whose upper bound reaches `threshold` (the k-th best lower bound when `have_k`)
 * are candidates: their exact logits (the full path's arithmetic, in ascending row order)
 * go into the top-k. Leaves *fallback set when there are too many of them or one of them
 * disproves its bounds. */
static int exact_candidates(tl_model *m, const float *xn, tl_topk *top, float threshold, int have_k, int *fallback)
{
    const tl_tensor *w = &m->w[TL_T_LM_HEAD];
    int V = m->cfg.vocab, H = m->cfg.hidden, k = top->k, n_cand = 0;
    for (int r = 0; r < V; r++) {
        if (!(m->prune.upper[r] >= threshold)) continue;
        if (n_cand == m->prune.max_candidates) return TL_OK;
        m->prune.candidates[n_cand++] = r;
    }

    size_t row_bytes = (size_t)H * 4u;
    for (int i = 0; i < n_cand; i++) {
        int r = m->prune.candidates[i];
        const float *row = (const float *)m->stream;
        if (r < w->resident_rows) row = (const float *)w->resident + (size_t)r * (size_t)H;
        else if (read_exact(m, w->fh, w->name, (uint64_t)r * row_bytes, m->stream, row_bytes)) return m->err->code;
        float logit;
        tl_matvec_f32(&logit, row, xn, 1, H); /* the full path's kernel: the same bits */
        if (tl_check_finite(m, &logit, 1, "lm_head", 0)) return m->err->code;
        float upper = m->prune.upper[r];
        if (!(logit <= upper)) return proxy_disproved(m, top, r, logit, "above its upper bound", upper);
        tl_topk_push(top, r, logit);
    }
    /* The k rows that set the threshold are candidates and their logits are >= their lower
     * bounds >= threshold: a k-th best logit below it means those bounds were false. */
    if (have_k && (top->n < k || top->logit[k - 1] < threshold))
        return proxy_disproved(m, top, top->n < k ? -1 : top->id[k - 1], top->n < k ? NAN : top->logit[k - 1],
                               "below the threshold", threshold);
    m->prune.last_candidates = n_cand;
    *fallback = 0;
    return TL_OK;
}

int tl_lm_head_pruned(tl_model *m, const float *xn, tl_topk *top, int *fallback)
{
    float lower[TL_MAX_TOPK];
    int n_lower = 0, usable = 0, k = top->k;
    *fallback = 1;
    top->n = 0;
    if (proxy_bounds(m, xn, k, lower, &n_lower, &usable)) return m->err->code;
    if (!usable) return TL_OK;
    float threshold = n_lower == k ? lower[k - 1] : -INFINITY;
    return exact_candidates(m, xn, top, threshold, n_lower == k, fallback);
}
