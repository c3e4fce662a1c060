/*
 * The model (docs/contracts.md §2): arena layout and weight residency, then the forward
 * pass with lm_head streamed in full. The pruned lm_head is prune.c's.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels.h"
#include "output.h"
#include "storage.h"

static int max3(int a, int b, int c)
{
    int m = a > b ? a : b;
    return m > c ? m : c;
}

/* Sizes are computed in 64 bits; anything past SIZE_MAX cannot fit anyway
 * (on a 32-bit target) and becomes an E_OOM instead of wrapping around. */
static size_t clamp_size(uint64_t bytes) { return bytes > (uint64_t)SIZE_MAX ? SIZE_MAX : (size_t)bytes; }

static void *alloc_floats(tl_model *m, uint64_t n, const char *what)
{
    return tl_arena_alloc(m->arena, clamp_size(n * sizeof(float)), what, m->err);
}

static uint64_t align16(uint64_t n) { return (n + 15u) & ~(uint64_t)15u; }

/* Rounded down to 4 KiB (up to a 512-byte sector if smaller), so every read starts and
 * ends on a sector (FatFs reads a partial sector with a single-block command of its own)
 * and splits evenly into DMA bounce-buffer pieces (the ESP32 port's are 4 KiB multiples). */
uint64_t tl_proxy_block_bytes(int chunk_rows, int hidden)
{
    uint64_t bytes = (uint64_t)chunk_rows * ((uint64_t)hidden + TL_PROXY_HEADER_BYTES);
    return bytes >= 4096u ? bytes & ~(uint64_t)4095u : (bytes + 511u) & ~(uint64_t)511u;
}

/* Reads a whole file into the arena. */
static int make_resident(tl_model *m, tl_tensor *t)
{
    t->resident = tl_arena_alloc(m->arena, (size_t)t->bytes, t->name, m->err);
    if (!t->resident) return m->err->code;
    t->resident_rows = (long)t->shape.layers * t->shape.rows;
    m->resident_bytes += t->bytes;
    return read_exact(m, t->fh, t->name, 0, t->resident, (size_t)t->bytes);
}

static int fully_resident(const tl_tensor *t) { return t->resident_rows == (long)t->shape.layers * t->shape.rows; }

/* Spare arena after everything else holds lm_head's first rows (and, int8,
 * all its row scales): a streamed lm_head is most of every token's reads, and
 * a resident row is never read again. Whole 512-row blocks keep the streamed
 * rest's reads sector-aligned. A pruned float32 lm_head is not streamed. */
static int keep_lm_head_rows(tl_model *m, uint64_t reserve)
{
    tl_tensor *w = &m->w[TL_T_LM_HEAD], *s = &m->scale[TL_T_LM_HEAD];
    if (m->prune.on || w->resident) return TL_OK;
    if (s->fh >= 0 && !s->resident) {
        if (s->bytes + TL_ARENA_PAD(2) + reserve > (uint64_t)tl_arena_available(m->arena)) return TL_OK; /* scales, rows */
        if (make_resident(m, s)) return m->err->code;
    }
    uint64_t row_bytes = (uint64_t)w->shape.cols * (uint64_t)w->elem;
    uint64_t avail = (uint64_t)tl_arena_available(m->arena);
    uint64_t margin = reserve + TL_ARENA_PAD(4); /* the rows' allocation, with room to spare */
    if (avail < margin) return TL_OK;
    uint64_t rows = (avail - margin) / row_bytes / 512u * 512u;
    if (rows > (uint64_t)w->shape.rows) rows = (uint64_t)w->shape.rows;
    if (rows == 0) return TL_OK;
    if (rows == (uint64_t)w->shape.rows) return make_resident(m, w);
    w->resident = tl_arena_alloc(m->arena, (size_t)(rows * row_bytes), "lm_head resident rows", m->err);
    if (!w->resident) return m->err->code;
    w->resident_rows = (long)rows;
    m->resident_bytes += rows * row_bytes;
    tl_log(m->port, TL_TAG_LOADER, "lm_head: rows 0..%lu resident (%llu bytes), the other %lu streamed",
           (unsigned long)rows - 1, (unsigned long long)(rows * row_bytes), (unsigned long)(w->shape.rows - (int)rows));
    return read_exact(m, w->fh, w->name, 0, w->resident, (size_t)(rows * row_bytes));
}

/* The KV cache and the activation buffers of one position. */
static int alloc_activations(tl_model *m)
{
    const tl_config *c = &m->cfg;
    tl_activations *a = &m->act;
    int H = c->hidden, d = c->head_dim, qdim = c->heads * d, kvdim = c->kv_heads * d;
    int max_in = max3(H, qdim, c->inter);
    uint64_t kv = (uint64_t)c->layers * (uint64_t)m->context * (uint64_t)kvdim;
    if (!(a->key_cache = alloc_floats(m, kv, "key cache")) || !(a->value_cache = alloc_floats(m, kv, "value cache")))
        return m->err->code;

    if (!(a->x = alloc_floats(m, (size_t)H, "x")) || !(a->xb = alloc_floats(m, (size_t)H, "xb")) ||
        !(a->q = alloc_floats(m, (size_t)qdim, "q")) || !(a->att_out = alloc_floats(m, (size_t)qdim, "att_out")) ||
        !(a->hb = alloc_floats(m, (size_t)c->inter, "hb")) || !(a->hb2 = alloc_floats(m, (size_t)c->inter, "hb2")) ||
        !(a->att = alloc_floats(m, (size_t)m->context, "attention scores")) ||
        !(a->logits = alloc_floats(m, (size_t)m->chunk_rows, "logits chunk")) ||
        !(a->norm_row = alloc_floats(m, (size_t)H, "norm row")) ||
        !(a->row_scales = alloc_floats(m, (size_t)m->chunk_rows, "row scales")) ||
        !(a->inv_freq = alloc_floats(m, (size_t)(d / 2), "rope inv_freq")) ||
        !(a->rope_cos = alloc_floats(m, (size_t)(d / 2), "rope cos")) ||
        !(a->rope_sin = alloc_floats(m, (size_t)(d / 2), "rope sin")))
        return m->err->code;
    if (c->quantized && !(a->qx = (int8_t *)tl_arena_alloc(m->arena, (size_t)max_in, "quantized activation", m->err)))
        return m->err->code;
    return TL_OK;
}

/* The chunk buffer(s) for streamed rows, and whether lm_head is pruned (then
 * its bound and candidate tables too). `reserve`: arena bytes to keep free. */
static int alloc_stream(tl_model *m, const tl_options *opt, uint64_t reserve)
{
    const tl_config *c = &m->cfg;
    int H = c->hidden;
    int max_in = max3(H, c->heads * c->head_dim, c->inter);
    /* Chunk buffer: chunk_rows rows of the lm_head that is streamed (the
     * proxy's records when pruning, else lm_head's rows), and at least one row
     * of the widest matrix. */
    uint64_t elem = c->quantized ? 1u : 4u;
    uint64_t one_row = (uint64_t)max_in * elem;
    uint64_t full_bytes = (uint64_t)m->chunk_rows * (uint64_t)H * elem;
    /* the proxy's records (5 + H bytes) straddle sectors: it is read in aligned
     * blocks of about chunk_rows records, plus room to carry one partial record over */
    uint64_t proxy_rec = (uint64_t)H + TL_PROXY_HEADER_BYTES;
    uint64_t proxy_bytes = tl_proxy_block_bytes(m->chunk_rows, H) + proxy_rec;
    if (full_bytes < one_row) full_bytes = one_row;
    if (proxy_bytes < one_row) proxy_bytes = one_row;

    /* Pruned lm_head: its bound table comes before resident matrices, since it
     * saves the most card bytes per arena byte (a float32 lm_head row is 4x
     * its proxy record; a resident matrix saves only itself). */
    if (opt->lm_head == TL_LM_HEAD_PRUNED && m->proxy.fh < 0)
        return tl_fail(m->err, TL_E_CONFIG, "lm_head=pruned: the %s set has no %s (export it with the harness)",
                       tl_config_dtype(c), TL_PROXY_FILE);
    if (m->proxy.fh >= 0 && opt->lm_head != TL_LM_HEAD_FULL) {
        /* Auto prunes when its buffers fit, or when they take no more than the full
         * stream's chunk would (then pruning is better in every way). The arena
         * aligns every allocation to 16 bytes. */
        uint64_t need = align16(proxy_bytes) + align16((uint64_t)c->vocab * 4u) + align16(TL_PRUNE_MAX_CANDIDATES * 4u);
        m->prune.on = opt->lm_head == TL_LM_HEAD_PRUNED || need <= align16(full_bytes) ||
                   need + reserve <= (uint64_t)tl_arena_available(m->arena);
        if (!m->prune.on)
            tl_log(m->port, TL_TAG_LOADER, "lm_head proxy: %llu arena bytes needed, %lu free: streaming lm_head in full",
                   (unsigned long long)(need + reserve), (unsigned long)tl_arena_available(m->arena));
    }
    m->prune.max_candidates = opt->max_candidates > 0 && opt->max_candidates < TL_PRUNE_MAX_CANDIDATES
                            ? opt->max_candidates : TL_PRUNE_MAX_CANDIDATES;
    m->stream_bytes = clamp_size(m->prune.on ? proxy_bytes : full_bytes);
    m->stream_in_port = m->port->chunk_buffer && m->port->chunk_buffer_bytes >= m->stream_bytes;
    m->stream2 = NULL;
    if (m->stream_in_port) { /* same size as from the arena: the same reads */
        m->stream = (uint8_t *)m->port->chunk_buffer;
        size_t second = (size_t)align16(m->stream_bytes); /* two fit: lm_head reads ahead */
        if (m->port->chunk_buffer_bytes >= second && m->port->chunk_buffer_bytes - second >= m->stream_bytes)
            m->stream2 = m->stream + second;
    } else if (!(m->stream = (uint8_t *)tl_arena_alloc(m->arena, m->stream_bytes, "stream chunk buffer", m->err))) {
        return m->err->code;
    }
    if (m->prune.on &&
        (!(m->prune.upper = alloc_floats(m, (uint64_t)c->vocab, "lm_head upper bounds")) ||
         !(m->prune.candidates = (int32_t *)tl_arena_alloc(m->arena, TL_PRUNE_MAX_CANDIDATES * sizeof(int32_t),
                                                      "lm_head candidates", m->err))))
        return m->err->code;
    return TL_OK;
}

/* The residency policy: norms first (tiny, used every layer), then matrices in order
 * of use, each with its scales, as long as the whole tensor fits and
 * `reserve` bytes stay free; then lm_head's first rows in what is left. The
 * embedding (one row per step) is always streamed. */
static int place_resident(tl_model *m, uint64_t reserve)
{
    static const int order[] = {TL_T_NORM1, TL_T_NORM2, TL_T_FINAL_NORM, TL_T_Q,  TL_T_K,
                                TL_T_V,     TL_T_O,     TL_T_GATE,       TL_T_UP, TL_T_DOWN};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        int id = order[i];
        tl_tensor *w = &m->w[id], *s = &m->scale[id];
        uint64_t need = w->bytes + s->bytes + TL_ARENA_PAD(2); /* the tensor and its scales */
        if (need + reserve > (uint64_t)tl_arena_available(m->arena) || need > (uint64_t)(size_t)-1) continue;
        if (make_resident(m, w)) return m->err->code;
        if (s->fh >= 0 && make_resident(m, s)) return m->err->code;
    }
    return keep_lm_head_rows(m, reserve);
}

/* The loader's lines naming what is resident and what is streamed. */
static void log_residency(const tl_model *m)
{
    char resident[160] = "", streamed[160] = "";
    for (int id = 0; id < TL_NT; id++) {
        char *list = fully_resident(&m->w[id]) ? resident : streamed;
        size_t len = strlen(list);
        snprintf(list + len, 160 - len, "%s%s", len ? " " : "", tl_tensor_base(id));
    }
    tl_log(m->port, TL_TAG_LOADER, "Resident (%llu bytes): %s", (unsigned long long)m->resident_bytes,
           resident[0] ? resident : "none");
    tl_log(m->port, TL_TAG_LOADER, "Streamed from card: %s", streamed[0] ? streamed : "none");
    if (m->prune.on)
        tl_log(m->port, TL_TAG_LOADER, "lm_head pruned: %s streamed, candidate float32 rows read", TL_PROXY_FILE);
}

int tl_model_layout(tl_model *m, const tl_options *opt, size_t reserve_fixed, size_t reserve_per_position)
{
    const tl_config *c = &m->cfg;
    m->context = c->max_pos;
    if (opt->context > 0 && opt->context < m->context) m->context = opt->context;
    m->chunk_rows = opt->chunk_rows > 0 ? opt->chunk_rows : 256;
    if (m->chunk_rows > c->vocab) m->chunk_rows = c->vocab;
    /* What the caller allocates after the layout, and room for their alignment */
    uint64_t reserve = (uint64_t)reserve_fixed + (uint64_t)reserve_per_position * ((uint64_t)m->context + 1u) +
                       TL_ARENA_PAD(4);
    if (alloc_activations(m) || alloc_stream(m, opt, reserve)) return m->err->code;
    tl_rope_inv_freq(m->act.inv_freq, c->head_dim, c->theta);
    m->attn_scale = (float)(1.0 / sqrt((double)c->head_dim)); /* HF: head_dim**-0.5 */
    if (!opt->no_resident && place_resident(m, reserve)) return m->err->code;
    tl_tier_attach(m, m->card_id, opt->no_flash); /* PSRAM first, then the flash tier, then the card */
    log_residency(m);
    return TL_OK;
}

/* ------------------------------------------------------------ weight access */

/* Rows [row0, row0 + n) of a tensor (row index across all layers), either
 * straight from its resident copy or read through the chunk buffer; likewise
 * its scales when it has them. */
static int fetch_rows(tl_model *m, int id, long row0, int n, const void **rows, const float **scales)
{
    tl_tensor *w = &m->w[id], *s = &m->scale[id];
    size_t row_bytes = (size_t)w->shape.cols * (size_t)w->elem;
    if (row0 + n <= w->resident_rows) {
        *rows = (const uint8_t *)w->resident + (size_t)row0 * row_bytes;
    } else {
        if (read_exact(m, w->fh, w->name, (uint64_t)row0 * row_bytes, m->stream, (size_t)n * row_bytes))
            return m->err->code;
        *rows = m->stream;
    }
    *scales = NULL;
    if (s->fh >= 0) {
        if (s->resident) {
            *scales = (const float *)s->resident + row0;
        } else {
            if (read_exact(m, s->fh, s->name, (uint64_t)row0 * 4u, m->act.row_scales, (size_t)n * 4u))
                return m->err->code;
            *scales = m->act.row_scales;
        }
    }
    return TL_OK;
}

/* Corrupt weights (a NaN, an infinity, a RoPE theta that overflows) must not
 * turn into silent garbage tokens: every activation is checked as it is made,
 * and the first non-finite value ends the command naming where it appeared. */
int tl_check_finite(tl_model *m, const float *v, int n, const char *what, int layer)
{
    for (int i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return tl_fail(m->err, TL_E_NUMERIC, "non-finite value in the %s output (layer %d, position %d, index %d): "
                           "the weights are corrupt or out of range (run verify)", what, layer, m->pos, i);
    return TL_OK;
}

/* How many rows of a streamed tensor go in one read. */
static int rows_per_chunk(const tl_model *m, const tl_tensor *w)
{
    if (fully_resident(w)) return w->shape.rows;
    size_t fit = m->stream_bytes / ((size_t)w->shape.cols * (size_t)w->elem);
    return fit < (size_t)m->chunk_rows ? (int)fit : m->chunk_rows;
}

/* y[0..n) = rows x: int8 rows with their scales against x quantized (qx, sx), or float32 rows against x. */
static void matvec(const tl_model *m, float *y, const void *rows, const float *sc, const float *x, float sx, int n,
                   int cols)
{
    if (m->cfg.quantized) tl_matvec_i8(y, (const int8_t *)rows, sc, m->act.qx, sx, n, cols);
    else tl_matvec_f32(y, (const float *)rows, x, n, cols);
}

/* y = W[layer] x for a projection; int8 sets quantize x once per call. */
static int linear(tl_model *m, float *y, int id, int layer, const float *x)
{
    const tl_tensor *w = &m->w[id];
    int rows = w->shape.rows, cols = w->shape.cols;
    float sx = m->cfg.quantized ? tl_quantize_act(m->act.qx, x, cols) : 0.0f;
    int per = rows_per_chunk(m, w);
    for (int r0 = 0; r0 < rows; r0 += per) {
        int n = rows - r0 < per ? rows - r0 : per;
        const void *wr = NULL;
        const float *sc = NULL;
        if (fetch_rows(m, id, (long)layer * rows + r0, n, &wr, &sc)) return m->err->code;
        matvec(m, y + r0, wr, sc, x, sx, n, cols);
    }
    return tl_check_finite(m, y, rows, tl_tensor_base(id), layer);
}

/* Norm weights of one layer (resident, or read into norm_row). */
static int norm_weights(tl_model *m, int id, int layer, const float **out)
{
    tl_tensor *t = &m->w[id];
    size_t H = (size_t)m->cfg.hidden;
    if (t->resident) {
        *out = (const float *)t->resident + (size_t)layer * H;
        return TL_OK;
    }
    *out = m->act.norm_row;
    return read_exact(m, t->fh, t->name, (uint64_t)layer * H * 4u, m->act.norm_row, H * 4u);
}

/* x = embed_tokens[token]: only that row (and its scale) is read. */
static int embed(tl_model *m, int token)
{
    tl_tensor *t = &m->w[TL_T_EMBED];
    size_t H = (size_t)m->cfg.hidden;
    if (!m->cfg.quantized) {
        if (read_exact(m, t->fh, "embed_tokens.bin", (uint64_t)token * H * 4u, m->act.x, H * 4u)) return m->err->code;
        return tl_check_finite(m, m->act.x, (int)H, "embed_tokens", 0);
    }
    float scale;
    if (read_exact(m, t->fh, "embed_tokens.bin", (uint64_t)token * H, m->stream, H) ||
        read_exact(m, m->scale[TL_T_EMBED].fh, "embed_tokens_scales.bin", (uint64_t)token * 4u, &scale, 4u))
        return m->err->code;
    const int8_t *q = (const int8_t *)m->stream;
    for (size_t j = 0; j < H; j++) m->act.x[j] = (float)q[j] * scale;
    return tl_check_finite(m, m->act.x, (int)H, "embed_tokens", 0);
}

/* Rows in lm_head's chunk that starts at row r0: up to `per`, never past the
 * end, and never straddling the end of the resident rows. */
static int chunk_at(const tl_tensor *w, int per, int r0)
{
    int n = w->shape.rows - r0 < per ? w->shape.rows - r0 : per;
    if (r0 < w->resident_rows && r0 + n > w->resident_rows) n = (int)(w->resident_rows - r0);
    return n;
}

/* The int8 row scales of lm_head rows [r0, r0 + n): resident, or read now. */
static int lm_head_scales(tl_model *m, int r0, int n, const float **sc)
{
    const tl_tensor *s = &m->scale[TL_T_LM_HEAD];
    if (s->resident) {
        *sc = (const float *)s->resident + r0;
        return TL_OK;
    }
    *sc = m->act.row_scales;
    return read_exact(m, s->fh, s->name, (uint64_t)r0 * 4u, m->act.row_scales, (size_t)n * 4u);
}

/* logits = lm_head xb, streamed in chunks of rows and folded into the top-k:
 * the [vocab, hidden] matrix is never in RAM. */
static int lm_head_topk(tl_model *m, const float *xn, tl_topk *top)
{
    const tl_tensor *w = &m->w[TL_T_LM_HEAD];
    int rows = w->shape.rows, cols = w->shape.cols;
    float sx = m->cfg.quantized ? tl_quantize_act(m->act.qx, xn, cols) : 0.0f;
    int per = rows_per_chunk(m, w);
    if (per > m->chunk_rows) per = m->chunk_rows; /* a resident lm_head too: m->act.logits holds chunk_rows */
    size_t row_bytes = (size_t)cols * (size_t)w->elem;
    uint8_t *buf[2] = {m->stream, m->stream2 ? m->stream2 : m->stream};
    int cur = 0;
    top->n = 0;
    int n = chunk_at(w, per, 0);
    if (n > 0 && w->resident_rows < n) read_start(m, w->fh, w->name, 0, buf[cur], (size_t)n * row_bytes);
    for (int r0 = 0; r0 < rows;) {
        const void *wr;
        if (r0 + n <= w->resident_rows) {
            wr = (const uint8_t *)w->resident + (size_t)r0 * row_bytes;
        } else { /* a streamed chunk: its read was started before */
            if (read_wait(m)) return m->err->code;
            wr = buf[cur];
        }
        const float *sc = NULL; /* (read before the next chunk's read starts: one read at a time) */
        if (m->cfg.quantized && lm_head_scales(m, r0, n, &sc)) return m->err->code;
        /* the next streamed chunk: read into the other buffer while this one is computed */
        int r1 = r0 + n, n1 = r1 < rows ? chunk_at(w, per, r1) : 0, nxt = cur ^ (buf[0] != buf[1]);
        int stream_next = n1 > 0 && r1 + n1 > w->resident_rows;
        if (stream_next && nxt != cur)
            read_start(m, w->fh, w->name, (uint64_t)r1 * row_bytes, buf[nxt], (size_t)n1 * row_bytes);
        matvec(m, m->act.logits, wr, sc, xn, sx, n, cols);
        if (tl_check_finite(m, m->act.logits, n, "lm_head", 0)) return read_drain(m, m->err->code);
        for (int i = 0; i < n; i++) tl_topk_push(top, r0 + i, m->act.logits[i]);
        if (stream_next && nxt == cur) /* one buffer: read the next chunk now */
            read_start(m, w->fh, w->name, (uint64_t)r1 * row_bytes, buf[nxt], (size_t)n1 * row_bytes);
        r0 = r1;
        n = n1;
        cur = nxt;
    }
    return TL_OK;
}

/* ------------------------------------------------------------ forward pass */

/* Attention of layer l at position pos, from xb: q, and k and v into the KV cache, rotated
 * (RoPE); each head's softmax-weighted sum of the values so far into att_out; then
 * xb = o_proj att_out. */
static int attention(tl_model *m, int l, int pos)
{
    const tl_config *c = &m->cfg;
    tl_activations *a = &m->act;
    int d = c->head_dim, half = d / 2;
    int kvdim = c->kv_heads * d, group = c->heads / c->kv_heads;
    size_t layer_off = (size_t)l * (size_t)m->context * (size_t)kvdim;
    float *k = a->key_cache + layer_off + (size_t)pos * (size_t)kvdim;
    float *v = a->value_cache + layer_off + (size_t)pos * (size_t)kvdim;
    if (linear(m, a->q, TL_T_Q, l, a->xb) || linear(m, k, TL_T_K, l, a->xb) || linear(m, v, TL_T_V, l, a->xb))
        return m->err->code;
    for (int h = 0; h < c->heads; h++) tl_rope_apply(a->q + h * d, a->rope_cos, a->rope_sin, half);
    for (int h = 0; h < c->kv_heads; h++) tl_rope_apply(k + h * d, a->rope_cos, a->rope_sin, half);

    for (int h = 0; h < c->heads; h++) {
        const float *qh = a->q + h * d;
        int kv_off = (h / group) * d; /* grouped-query attention */
        for (int u = 0; u <= pos; u++) {
            const float *ku = a->key_cache + layer_off + (size_t)u * (size_t)kvdim + kv_off;
            float s = 0.0f;
            for (int i = 0; i < d; i++) s += qh[i] * ku[i];
            a->att[u] = s * m->attn_scale;
        }
        tl_softmax(a->att, pos + 1);
        float *o = a->att_out + h * d;
        for (int i = 0; i < d; i++) o[i] = 0.0f;
        for (int u = 0; u <= pos; u++) {
            const float *vu = a->value_cache + layer_off + (size_t)u * (size_t)kvdim + kv_off;
            float p = a->att[u];
            for (int i = 0; i < d; i++) o[i] += p * vu[i];
        }
    }
    if (tl_check_finite(m, a->att_out, c->heads * d, "attention", l) || linear(m, a->xb, TL_T_O, l, a->att_out))
        return m->err->code;
    return TL_OK;
}

int tl_model_forward(tl_model *m, int token, int pos, tl_topk *top, int full)
{
    const tl_config *c = &m->cfg;
    tl_activations *a = &m->act;
    int H = c->hidden, half = c->head_dim / 2;
    float *x = a->x;
    const float *w;

    m->pos = pos;
    if (embed(m, token)) return m->err->code;
    tl_rope_angles(a->rope_cos, a->rope_sin, a->inv_freq, half, pos);
    if (tl_check_finite(m, a->rope_cos, half, "RoPE cos", 0) || tl_check_finite(m, a->rope_sin, half, "RoPE sin", 0))
        return m->err->code;

    for (int l = 0; l < c->layers; l++) {
        /* Attention block */
        if (norm_weights(m, TL_T_NORM1, l, &w)) return m->err->code;
        tl_rmsnorm(a->xb, x, w, H, c->eps);
        if (tl_check_finite(m, a->xb, H, "norm1", l) || attention(m, l, pos)) return m->err->code;
        for (int i = 0; i < H; i++) x[i] += a->xb[i];

        /* MLP block: down(silu(gate h) * up h) */
        if (norm_weights(m, TL_T_NORM2, l, &w)) return m->err->code;
        tl_rmsnorm(a->xb, x, w, H, c->eps);
        if (tl_check_finite(m, a->xb, H, "norm2", l)) return m->err->code;
        if (linear(m, a->hb, TL_T_GATE, l, a->xb) || linear(m, a->hb2, TL_T_UP, l, a->xb)) return m->err->code;
        for (int i = 0; i < c->inter; i++) a->hb[i] = tl_silu(a->hb[i]) * a->hb2[i];
        if (tl_check_finite(m, a->hb, c->inter, "SiLU(gate) * up", l)) return m->err->code;
        if (linear(m, a->xb, TL_T_DOWN, l, a->hb)) return m->err->code;
        for (int i = 0; i < H; i++) x[i] += a->xb[i];
    }

    if (!top) return TL_OK; /* logits not needed at this position */
    if (norm_weights(m, TL_T_FINAL_NORM, 0, &w)) return m->err->code;
    tl_rmsnorm(a->xb, x, w, H, c->eps);
    if (tl_check_finite(m, a->xb, H, "final_norm", 0)) return m->err->code;
    m->prune.last_candidates = -1;
    m->prune.last_fallback = 0;
    if (m->prune.on && !full) {
        if (m->prune.disproved) m->prune.last_fallback = 1; /* see prune.c's proxy_disproved() */
        else if (tl_lm_head_pruned(m, a->xb, top, &m->prune.last_fallback)) return m->err->code;
        if (!m->prune.last_fallback) return TL_OK;
    }
    return lm_head_topk(m, a->xb, top);
}
