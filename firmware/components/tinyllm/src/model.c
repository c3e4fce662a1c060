#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "crc32.h"
#include "kernels.h"
#include "output.h"

/* A real model_config.json is 4-8 KB; cJSON needs about twice the text in
 * heap, and the bare-metal port reserves 96 KiB of heap for it. */
#define TL_MAX_CONFIG_BYTES (32u * 1024u)

static const char *const TAG_LOADER = "weight_loader";

static int max3(int a, int b, int c)
{
    int m = a > b ? a : b;
    return m > c ? m : c;
}

static void join_path(char *out, size_t n, const char *dir, const char *file)
{
    if (dir && dir[0]) snprintf(out, n, "%s/%s", dir, file);
    else snprintf(out, n, "%s", file);
}

/* Records why opening `path` failed (a TL_OPEN_* code from the port). */
static int open_failed(tl_model *m, const char *path, int32_t why)
{
    return tl_fail_open(m->err, path, why);
}

/* Every storage read ends here, so the statistics are the core's own. */
static int read_done(tl_model *m, const char *what, uint64_t off, void *buf, size_t n, int64_t got)
{
    m->read_calls++;
#ifdef TINYLLM_FAULT_INJECTION
    if (m->fault && m->fault->kind != TL_FAULT_NONE && --m->fault->countdown == 0) {
        if (m->fault->kind == TL_FAULT_FLIP && got > 0) /* silent corruption: bit 0 of the middle byte */
            ((uint8_t *)buf)[got / 2] ^= 1u;
        else
            got = m->fault->kind == TL_FAULT_FAIL ? -1 : got / 2;
        m->fault->kind = TL_FAULT_NONE; /* one fault per `fault` command */
    }
#endif
    if (got > 0) m->bytes_read += (uint64_t)got;
    if (got != (int64_t)n)
        return tl_fail(m->err, TL_E_IO, "read %s: offset %llu, wanted %lu bytes, got %lld", what,
                       (unsigned long long)off, (unsigned long)n, (long long)got);
    return TL_OK;
}

static int read_exact(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n)
{
    return read_done(m, what, off, buf, n, m->port->read_at(m->port->ctx, fh, off, buf, n));
}

/* Read-ahead (lm_head's chunks): read_start hands a read to the port's reader
 * (the ESP32 app: a task on the other core) and returns; read_wait waits for
 * it. A port without one runs the read at wait: the same code path, in turn. */
static void read_start(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n)
{
    m->pending.active = 1;
    m->pending.fh = fh;
    m->pending.what = what;
    m->pending.off = off;
    m->pending.buf = buf;
    m->pending.n = n;
    m->pending.async = m->port->read_start && m->port->read_wait &&
                       m->port->read_start(m->port->ctx, fh, off, buf, n) == 0;
}

static int read_wait(tl_model *m)
{
    if (!m->pending.active) return TL_OK;
    m->pending.active = 0;
    int64_t got = m->pending.async ? m->port->read_wait(m->port->ctx)
                                   : m->port->read_at(m->port->ctx, m->pending.fh, m->pending.off, m->pending.buf,
                                                      m->pending.n);
    return read_done(m, m->pending.what, m->pending.off, m->pending.buf, m->pending.n, got);
}

/* Leaving a stream early (an error, a fallback): nothing may still be writing a buffer. */
static int read_drain(tl_model *m, int code)
{
    if (m->pending.active && m->pending.async) (void)m->port->read_wait(m->port->ctx);
    m->pending.active = 0;
    return code;
}

/* ---------------------------------------------------------------- start-up */

static int read_config(tl_model *m, uint32_t *card_id, const char *precision)
{
    char path[160];
    join_path(path, sizeof path, m->dir, "model_config.json");
    int32_t fh = m->port->open(m->port->ctx, path);
    if (fh < 0) return open_failed(m, path, fh);
    int64_t size = m->port->size(m->port->ctx, fh);
    if (size <= 0 || (uint64_t)size > TL_MAX_CONFIG_BYTES) {
        m->port->close(m->port->ctx, fh);
        return tl_fail(m->err, TL_E_CONFIG, "%s: size %lld bytes, expected 1..%u", path, (long long)size,
                       TL_MAX_CONFIG_BYTES);
    }
    /* The text only lives in the arena while it is parsed. */
    size_t mark = tl_arena_mark(m->arena);
    char *text = (char *)tl_arena_alloc(m->arena, (size_t)size + 1, "model_config.json text", m->err);
    int rc = text ? read_exact(m, fh, path, 0, text, (size_t)size) : m->err->code;
    m->port->close(m->port->ctx, fh);
    if (rc == TL_OK) {
        *card_id = tl_crc32(0, text, (size_t)size);
        tl_log(m->port, TAG_LOADER, "Loaded %s (%lld bytes), card id %08lx", path, (long long)size,
               (unsigned long)*card_id);
        rc = tl_config_parse(text, (size_t)size, precision, &m->cfg, &m->man, m->err);
    }
    tl_arena_reset(m->arena, mark);
    return rc;
}

/* Opens t->name in the set's folder and checks its size against the
 * manifest's: the part every file of a set shares. */
static int open_checked(tl_model *m, tl_tensor *t, uint64_t want_bytes)
{
    char path[160];
    join_path(path, sizeof path, m->dir, t->name);
    t->fh = m->port->open(m->port->ctx, path);
    if (t->fh < 0) {
        int32_t why = t->fh;
        t->fh = -1;
        return open_failed(m, path, why);
    }
    int64_t size = m->port->size(m->port->ctx, t->fh);
    if (size < 0 || (uint64_t)size != want_bytes)
        return tl_fail(m->err, TL_E_FILE_SIZE, "%s: expected %llu bytes, actual %lld", path,
                       (unsigned long long)want_bytes, (long long)size);
    t->bytes = (uint64_t)size;
    return TL_OK;
}

static int open_file(tl_model *m, tl_tensor *t, int id, int scales)
{
    tl_file_name(t->name, sizeof t->name, id, scales);
    if (open_checked(m, t, m->man.bytes[scales][id])) return m->err->code;
    t->shape = tl_tensor_shape(&m->cfg, id);
    if (scales) {
        t->shape.cols = 1;
        t->elem = 4;
    } else {
        t->elem = (m->cfg.int8 && tl_tensor_quantized(id)) ? 1 : 4;
    }
    return TL_OK;
}

/* lm_head_proxy.bin, listed in a float32 set's manifest: a [vocab] table of
 * records (TL_PROXY_HEADER_BYTES + hidden bytes each), always streamed. The
 * records are packed (5-byte header), so the scale is read with memcpy. */
static int open_proxy(tl_model *m)
{
    tl_tensor *t = &m->proxy;
    snprintf(t->name, sizeof t->name, "%s", TL_PROXY_FILE);
    if (open_checked(m, t, m->man.proxy_bytes)) return m->err->code;
    t->shape = (tl_shape){1, m->cfg.vocab, m->cfg.hidden + TL_PROXY_HEADER_BYTES};
    t->elem = 1;
    return TL_OK;
}

int tl_model_open(tl_model *m, const tl_options *opt, uint32_t *card_id)
{
    snprintf(m->dir, sizeof m->dir, "%s", opt->weights_dir ? opt->weights_dir : "");
    for (int id = 0; id < TL_NT; id++) m->w[id].fh = m->scale[id].fh = -1;
    m->proxy.fh = -1;

    if (read_config(m, card_id, opt->precision ? opt->precision : "float32")) return m->err->code;
    const tl_config *c = &m->cfg;
    tl_log(m->port, TAG_LOADER,
           "Model %s: vocab %d, hidden %d, intermediate %d, layers %d, heads %d, kv heads %d, head dim %d, "
           "max positions %d, dtype %s",
           c->model_name, c->vocab, c->hidden, c->inter, c->layers, c->heads, c->kv_heads, c->head_dim, c->max_pos,
           c->int8 ? "int8" : "float32");

    for (int id = 0; id < TL_NT; id++) {
        if (open_file(m, &m->w[id], id, 0)) return m->err->code;
        if (c->int8 && tl_tensor_quantized(id) && open_file(m, &m->scale[id], id, 1)) return m->err->code;
    }
    if (m->man.has_proxy && open_proxy(m)) return m->err->code;
    int files = 0;
    for (int id = 0; id < TL_NT; id++) files += (m->w[id].fh >= 0) + (m->scale[id].fh >= 0);
    tl_log(m->port, TAG_LOADER, "All %d weight files present with the expected sizes (%llu bytes)%s",
           files + (m->proxy.fh >= 0), (unsigned long long)tl_model_total_file_bytes(m),
           m->proxy.fh >= 0 ? ", lm_head proxy included" : "");
    return TL_OK;
}

void tl_model_close(tl_model *m)
{
    for (int id = 0; id < TL_NT; id++) {
        tl_tensor *ts[2] = {&m->w[id], &m->scale[id]};
        for (int i = 0; i < 2; i++) {
            if (ts[i]->fh >= 0) m->port->close(m->port->ctx, ts[i]->fh);
            ts[i]->fh = -1;
        }
    }
    if (m->proxy.fh >= 0) m->port->close(m->port->ctx, m->proxy.fh);
    m->proxy.fh = -1;
}

uint64_t tl_model_total_file_bytes(const tl_model *m)
{
    uint64_t total = 0;
    for (int id = 0; id < TL_NT; id++) total += m->w[id].bytes + m->scale[id].bytes;
    return total + m->proxy.bytes;
}

/* Sizes are computed in 64 bits; anything past SIZE_MAX cannot fit anyway
 * (on a 32-bit target) and becomes an E_OOM instead of wrapping around. */
static size_t clamp_size(uint64_t bytes) { return bytes > (uint64_t)SIZE_MAX ? SIZE_MAX : (size_t)bytes; }

static void *alloc_floats(tl_model *m, uint64_t n, const char *what)
{
    return tl_arena_alloc(m->arena, clamp_size(n * sizeof(float)), what, m->err);
}

static uint64_t align16(uint64_t n) { return (n + 15u) & ~(uint64_t)15u; }

/* Bytes of one proxy read: chunk_rows records rounded down to 4 KiB (up to a
 * 512-byte sector if smaller), so every read starts and ends on a sector
 * (FatFs reads a partial sector with a single-block command of its own) and
 * splits evenly into DMA bounce-buffer pieces (the ESP32 port's are 4 KiB
 * multiples). */
static uint64_t proxy_block_bytes(int chunk_rows, int hidden)
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
    if (m->prune || w->resident) return TL_OK;
    if (s->fh >= 0 && !s->resident) {
        if (s->bytes + 32u + reserve > (uint64_t)tl_arena_available(m->arena)) return TL_OK;
        if (make_resident(m, s)) return m->err->code;
    }
    uint64_t row_bytes = (uint64_t)w->shape.cols * (uint64_t)w->elem;
    uint64_t avail = (uint64_t)tl_arena_available(m->arena);
    if (avail < reserve + 64u) return TL_OK;
    uint64_t rows = (avail - reserve - 64u) / row_bytes / 512u * 512u;
    if (rows > (uint64_t)w->shape.rows) rows = (uint64_t)w->shape.rows;
    if (rows == 0) return TL_OK;
    if (rows == (uint64_t)w->shape.rows) return make_resident(m, w);
    w->resident = tl_arena_alloc(m->arena, (size_t)(rows * row_bytes), "lm_head resident rows", m->err);
    if (!w->resident) return m->err->code;
    w->resident_rows = (long)rows;
    m->resident_bytes += rows * row_bytes;
    tl_log(m->port, TAG_LOADER, "lm_head: rows 0..%lu resident (%llu bytes), the other %lu streamed",
           (unsigned long)rows - 1, (unsigned long long)(rows * row_bytes), (unsigned long)(w->shape.rows - (int)rows));
    return read_exact(m, w->fh, w->name, 0, w->resident, (size_t)(rows * row_bytes));
}

int tl_model_layout(tl_model *m, const tl_options *opt, size_t reserve_fixed, size_t reserve_per_position)
{
    const tl_config *c = &m->cfg;
    int H = c->hidden, d = c->head_dim, qdim = c->heads * d, kvdim = c->kv_heads * d;
    int max_in = max3(H, qdim, c->inter);

    m->context = c->max_pos;
    if (opt->context > 0 && opt->context < m->context) m->context = opt->context;
    m->chunk_rows = opt->chunk_rows > 0 ? opt->chunk_rows : 256;
    if (m->chunk_rows > c->vocab) m->chunk_rows = c->vocab;

    uint64_t kv = (uint64_t)c->layers * (uint64_t)m->context * (uint64_t)kvdim;
    if (!(m->key_cache = alloc_floats(m, kv, "key cache")) || !(m->value_cache = alloc_floats(m, kv, "value cache")))
        return m->err->code;

    if (!(m->x = alloc_floats(m, (size_t)H, "x")) || !(m->xb = alloc_floats(m, (size_t)H, "xb")) ||
        !(m->q = alloc_floats(m, (size_t)qdim, "q")) || !(m->att_out = alloc_floats(m, (size_t)qdim, "att_out")) ||
        !(m->hb = alloc_floats(m, (size_t)c->inter, "hb")) || !(m->hb2 = alloc_floats(m, (size_t)c->inter, "hb2")) ||
        !(m->att = alloc_floats(m, (size_t)m->context, "attention scores")) ||
        !(m->logits = alloc_floats(m, (size_t)m->chunk_rows, "logits chunk")) ||
        !(m->norm_row = alloc_floats(m, (size_t)H, "norm row")) ||
        !(m->row_scales = alloc_floats(m, (size_t)m->chunk_rows, "row scales")) ||
        !(m->inv_freq = alloc_floats(m, (size_t)(d / 2), "rope inv_freq")) ||
        !(m->rope_cos = alloc_floats(m, (size_t)(d / 2), "rope cos")) ||
        !(m->rope_sin = alloc_floats(m, (size_t)(d / 2), "rope sin")))
        return m->err->code;
    if (c->int8 && !(m->qx = (int8_t *)tl_arena_alloc(m->arena, (size_t)max_in, "quantized activation", m->err)))
        return m->err->code;

    /* Chunk buffer: chunk_rows rows of the lm_head that is streamed (the
     * proxy's records when pruning, else lm_head's rows), and at least one row
     * of the widest matrix. */
    uint64_t reserve = (uint64_t)reserve_fixed + (uint64_t)reserve_per_position * ((uint64_t)m->context + 1u) + 64u;
    uint64_t elem = c->int8 ? 1u : 4u;
    uint64_t one_row = (uint64_t)max_in * elem;
    uint64_t full_bytes = (uint64_t)m->chunk_rows * (uint64_t)H * elem;
    /* the proxy's records (5 + H bytes) straddle sectors: it is read in aligned
     * blocks of about chunk_rows records, plus room to carry one partial record over */
    uint64_t proxy_rec = (uint64_t)H + TL_PROXY_HEADER_BYTES;
    uint64_t proxy_bytes = proxy_block_bytes(m->chunk_rows, H) + proxy_rec;
    if (full_bytes < one_row) full_bytes = one_row;
    if (proxy_bytes < one_row) proxy_bytes = one_row;

    /* Pruned lm_head: its bound table comes before resident matrices, since it
     * saves the most card bytes per arena byte (a float32 lm_head row is 4x
     * its proxy record; a resident matrix saves only itself). */
    if (opt->lm_head == TL_LM_HEAD_PRUNED && m->proxy.fh < 0)
        return tl_fail(m->err, TL_E_CONFIG, "lm_head=pruned: the %s set has no %s (export it with the harness)",
                       c->int8 ? "int8" : "float32", TL_PROXY_FILE);
    if (m->proxy.fh >= 0 && opt->lm_head != TL_LM_HEAD_FULL) {
        /* Auto prunes when its buffers fit, or when they take no more than the full
         * stream's chunk would (then pruning is better in every way). The arena
         * aligns every allocation to 16 bytes. */
        uint64_t need = align16(proxy_bytes) + align16((uint64_t)c->vocab * 4u) + align16(TL_PRUNE_MAX_CANDIDATES * 4u);
        m->prune = opt->lm_head == TL_LM_HEAD_PRUNED || need <= align16(full_bytes) ||
                   need + reserve <= (uint64_t)tl_arena_available(m->arena);
        if (!m->prune)
            tl_log(m->port, TAG_LOADER, "lm_head proxy: %llu arena bytes needed, %lu free: streaming lm_head in full",
                   (unsigned long long)(need + reserve), (unsigned long)tl_arena_available(m->arena));
    }
    m->max_candidates = opt->max_candidates > 0 && opt->max_candidates < TL_PRUNE_MAX_CANDIDATES
                            ? opt->max_candidates : TL_PRUNE_MAX_CANDIDATES;
    m->stream_bytes = clamp_size(m->prune ? proxy_bytes : full_bytes);
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
    if (m->prune &&
        (!(m->upper = alloc_floats(m, (uint64_t)c->vocab, "lm_head upper bounds")) ||
         !(m->candidates = (int32_t *)tl_arena_alloc(m->arena, TL_PRUNE_MAX_CANDIDATES * sizeof(int32_t),
                                                      "lm_head candidates", m->err))))
        return m->err->code;

    tl_rope_inv_freq(m->inv_freq, d, c->theta);
    m->attn_scale = (float)(1.0 / sqrt((double)d)); /* HF: head_dim**-0.5 */

    /* Residency: norms first (tiny, used every layer), then matrices in order
     * of use, each with its scales, as long as the whole tensor fits. The
     * embedding (one row per step) and lm_head (chunked) are always streamed. */
    static const int order[] = {TL_T_NORM1, TL_T_NORM2, TL_T_FINAL_NORM, TL_T_Q,  TL_T_K,
                                TL_T_V,     TL_T_O,     TL_T_GATE,       TL_T_UP, TL_T_DOWN};
    if (!opt->no_resident) {
        for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
            int id = order[i];
            tl_tensor *w = &m->w[id], *s = &m->scale[id];
            uint64_t need = w->bytes + s->bytes + 32u; /* + alignment padding */
            if (need + reserve > (uint64_t)tl_arena_available(m->arena) || need > (uint64_t)(size_t)-1) continue;
            if (make_resident(m, w)) return m->err->code;
            if (s->fh >= 0 && make_resident(m, s)) return m->err->code;
        }
        if (keep_lm_head_rows(m, reserve)) return m->err->code;
    }
    char resident[160] = "", streamed[160] = "";
    for (int id = 0; id < TL_NT; id++) {
        char *list = fully_resident(&m->w[id]) ? resident : streamed;
        size_t len = strlen(list);
        snprintf(list + len, 160 - len, "%s%s", len ? " " : "", tl_tensor_base(id));
    }
    tl_log(m->port, TAG_LOADER, "Resident (%llu bytes): %s", (unsigned long long)m->resident_bytes,
           resident[0] ? resident : "none");
    tl_log(m->port, TAG_LOADER, "Streamed from card: %s", streamed[0] ? streamed : "none");
    if (m->prune) tl_log(m->port, TAG_LOADER, "lm_head pruned: %s streamed, candidate float32 rows read", TL_PROXY_FILE);
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
            if (read_exact(m, s->fh, s->name, (uint64_t)row0 * 4u, m->row_scales, (size_t)n * 4u))
                return m->err->code;
            *scales = m->row_scales;
        }
    }
    return TL_OK;
}

/* Corrupt weights (a NaN, an infinity, a RoPE theta that overflows) must not
 * turn into silent garbage tokens: every activation is checked as it is made,
 * and the first non-finite value ends the command naming where it appeared. */
static int check_finite(tl_model *m, const float *v, int n, const char *what, int layer)
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

/* y = W[layer] x for a projection; int8 sets quantize x once per call. */
static int linear(tl_model *m, float *y, int id, int layer, const float *x)
{
    const tl_tensor *w = &m->w[id];
    int rows = w->shape.rows, cols = w->shape.cols;
    float sx = m->cfg.int8 ? tl_quantize_act(m->qx, x, cols) : 0.0f;
    int per = rows_per_chunk(m, w);
    for (int r0 = 0; r0 < rows; r0 += per) {
        int n = rows - r0 < per ? rows - r0 : per;
        const void *wr = NULL;
        const float *sc = NULL;
        if (fetch_rows(m, id, (long)layer * rows + r0, n, &wr, &sc)) return m->err->code;
        if (m->cfg.int8) tl_matvec_i8(y + r0, (const int8_t *)wr, sc, m->qx, sx, n, cols);
        else tl_matvec_f32(y + r0, (const float *)wr, x, n, cols);
    }
    return check_finite(m, y, rows, tl_tensor_base(id), layer);
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
    *out = m->norm_row;
    return read_exact(m, t->fh, t->name, (uint64_t)layer * H * 4u, m->norm_row, H * 4u);
}

/* x = embed_tokens[token]: only that row (and its scale) is read. */
static int embed(tl_model *m, int token)
{
    tl_tensor *t = &m->w[TL_T_EMBED];
    size_t H = (size_t)m->cfg.hidden;
    if (!m->cfg.int8) {
        if (read_exact(m, t->fh, "embed_tokens.bin", (uint64_t)token * H * 4u, m->x, H * 4u)) return m->err->code;
        return check_finite(m, m->x, (int)H, "embed_tokens", 0);
    }
    float scale;
    if (read_exact(m, t->fh, "embed_tokens.bin", (uint64_t)token * H, m->stream, H) ||
        read_exact(m, m->scale[TL_T_EMBED].fh, "embed_tokens_scales.bin", (uint64_t)token * 4u, &scale, 4u))
        return m->err->code;
    const int8_t *q = (const int8_t *)m->stream;
    for (size_t j = 0; j < H; j++) m->x[j] = (float)q[j] * scale;
    return check_finite(m, m->x, (int)H, "embed_tokens", 0);
}

/* Inserts (id, v) if it beats the current k-th; ids arrive in ascending order,
 * so an equal logit never displaces an earlier (lower) id. */
static void topk_push(tl_topk *t, int32_t id, float v)
{
    if (t->n == t->k && !(v > t->logit[t->n - 1])) return;
    int p = t->n < t->k ? t->n : t->k - 1;
    while (p > 0 && v > t->logit[p - 1]) {
        t->id[p] = t->id[p - 1];
        t->logit[p] = t->logit[p - 1];
        p--;
    }
    t->id[p] = id;
    t->logit[p] = v;
    if (t->n < t->k) t->n++;
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
    *sc = m->row_scales;
    return read_exact(m, s->fh, s->name, (uint64_t)r0 * 4u, m->row_scales, (size_t)n * 4u);
}

/* logits = lm_head xb, streamed in chunks of rows and folded into the top-k:
 * the [vocab, hidden] matrix is never in RAM. */
static int lm_head_topk(tl_model *m, const float *xn, tl_topk *top)
{
    const tl_tensor *w = &m->w[TL_T_LM_HEAD];
    int rows = w->shape.rows, cols = w->shape.cols;
    float sx = m->cfg.int8 ? tl_quantize_act(m->qx, xn, cols) : 0.0f;
    int per = rows_per_chunk(m, w);
    if (per > m->chunk_rows) per = m->chunk_rows; /* a resident lm_head too: m->logits holds chunk_rows */
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
        if (m->cfg.int8 && lm_head_scales(m, r0, n, &sc)) return m->err->code;
        /* the next streamed chunk: read into the other buffer while this one is computed */
        int r1 = r0 + n, n1 = r1 < rows ? chunk_at(w, per, r1) : 0, nxt = cur ^ (buf[0] != buf[1]);
        int stream_next = n1 > 0 && r1 + n1 > w->resident_rows;
        if (stream_next && nxt != cur)
            read_start(m, w->fh, w->name, (uint64_t)r1 * row_bytes, buf[nxt], (size_t)n1 * row_bytes);
        if (m->cfg.int8) tl_matvec_i8(m->logits, (const int8_t *)wr, sc, m->qx, sx, n, cols);
        else tl_matvec_f32(m->logits, (const float *)wr, xn, n, cols);
        if (check_finite(m, m->logits, n, "lm_head", 0)) return read_drain(m, m->err->code);
        for (int i = 0; i < n; i++) topk_push(top, r0 + i, m->logits[i]);
        if (stream_next && nxt == cur) /* one buffer: read the next chunk now */
            read_start(m, w->fh, w->name, (uint64_t)r1 * row_bytes, buf[nxt], (size_t)n1 * row_bytes);
        r0 = r1;
        n = n1;
        cur = nxt;
    }
    return TL_OK;
}

/* ------------------------------------------------------- pruned lm_head */

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

/* logits = lm_head xn through the proxy: stream the int8 proxy, bound every
 * row's float32 logit, read only the rows whose upper bound reaches the k-th
 * best lower bound, and fold their exact logits (the full path's arithmetic,
 * in ascending row order) into the top-k. Any other row is below k rows for
 * certain, so the top-k equals the full stream's bit for bit. Sets *fallback
 * (and leaves *top empty) when the step must stream in full instead: too many
 * candidates, or a NaN in the bounds. */
static int lm_head_pruned(tl_model *m, const float *xn, tl_topk *top, int *fallback)
{
    const tl_config *c = &m->cfg;
    const tl_tensor *p = &m->proxy, *w = &m->w[TL_T_LM_HEAD];
    int V = c->vocab, H = c->hidden, k = top->k;
    size_t rec = (size_t)H + TL_PROXY_HEADER_BYTES;
    tl_bound_consts b = bound_consts(xn, H);
    float lower[TL_MAX_TOPK];
    int n_lower = 0;
    *fallback = 1;
    top->n = 0;
    if (!isfinite(b.xnorm)) return TL_OK;

    /* Sector-aligned blocks, each read `rec` bytes into its buffer; a record
     * cut by a block's end is carried to just before the next block (in the
     * other buffer, whose read is then in flight: it writes only from `rec` on). */
    size_t block = (size_t)proxy_block_bytes(m->chunk_rows, H), carry = 0;
    if (block + rec > m->stream_bytes) block = (m->stream_bytes - rec) & ~(size_t)511u;
    uint8_t *buf[2] = {m->stream, m->stream2 ? m->stream2 : m->stream};
    int cur = 0, r = 0;
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
        tl_proxy_dots(m->upper + r, (const int8_t *)(data + TL_PROXY_HEADER_BYTES), rec, xn, H, whole);
        for (; have - used >= rec; used += rec, r++) { /* then each one's bounds, in place */
            const uint8_t *record = data + used;
            float scale;
            memcpy(&scale, record, 4);
            float proxy = scale * m->upper[r];
            float s = fabsf(scale);
            if (s < 0x1p-100f) return read_drain(m, TL_OK); /* the error term could underflow: stream in full */
            float error = (float)record[4] * s * b.error_unit; /* >= ||w_r - scale q_r||, see above */
            float bound = (error + b.gamma * (b.two_qnorm * s + error)) * b.xnorm;
            bound = (bound + b.three_u * fabsf(proxy) + b.tiny * (1.0f + s)) * b.inflate;
            float hi = proxy + bound, lo = proxy - bound;
            if (!isfinite(proxy) || hi != hi || lo != lo) return read_drain(m, TL_OK); /* NaN, overflow: in full */
            m->upper[r] = hi;
            keep_largest(lower, &n_lower, k, lo);
        }
        carry = have - used; /* < rec */
        memmove(buf[nxt] + rec - carry, data + used, carry);
        if (n1 && nxt == cur) read_start(m, p->fh, p->name, off1, buf[nxt] + rec, n1); /* one buffer: now */
        cur = nxt;
    }
    float threshold = n_lower == k ? lower[k - 1] : -INFINITY;
    int n_cand = 0;
    for (r = 0; r < V; r++) {
        if (!(m->upper[r] >= threshold)) continue;
        if (n_cand == m->max_candidates) return TL_OK;
        m->candidates[n_cand++] = r;
    }

    size_t row_bytes = (size_t)H * 4u;
    for (int i = 0; i < n_cand; i++) {
        r = m->candidates[i];
        const float *row = (const float *)m->stream;
        if (r < w->resident_rows) row = (const float *)w->resident + (size_t)r * (size_t)H;
        else if (read_exact(m, w->fh, w->name, (uint64_t)r * row_bytes, m->stream, row_bytes)) return m->err->code;
        float logit;
        tl_matvec_f32(&logit, row, xn, 1, H); /* the full path's kernel: the same bits */
        if (check_finite(m, &logit, 1, "lm_head", 0)) return m->err->code;
        topk_push(top, r, logit);
    }
    m->last_candidates = n_cand;
    *fallback = 0;
    return TL_OK;
}

/* ------------------------------------------------------------ forward pass */

int tl_model_forward(tl_model *m, int token, int pos, tl_topk *top, int full)
{
    const tl_config *c = &m->cfg;
    int H = c->hidden, d = c->head_dim, half = d / 2;
    int kvdim = c->kv_heads * d, group = c->heads / c->kv_heads;
    float *x = m->x;
    const float *w;

    m->pos = pos;
    if (embed(m, token)) return m->err->code;
    tl_rope_angles(m->rope_cos, m->rope_sin, m->inv_freq, half, pos);
    if (check_finite(m, m->rope_cos, half, "RoPE cos", 0) || check_finite(m, m->rope_sin, half, "RoPE sin", 0))
        return m->err->code;

    for (int l = 0; l < c->layers; l++) {
        /* Attention block */
        if (norm_weights(m, TL_T_NORM1, l, &w)) return m->err->code;
        tl_rmsnorm(m->xb, x, w, H, c->eps);
        if (check_finite(m, m->xb, H, "norm1", l)) return m->err->code;

        size_t layer_off = (size_t)l * (size_t)m->context * (size_t)kvdim;
        float *k = m->key_cache + layer_off + (size_t)pos * (size_t)kvdim;
        float *v = m->value_cache + layer_off + (size_t)pos * (size_t)kvdim;
        if (linear(m, m->q, TL_T_Q, l, m->xb) || linear(m, k, TL_T_K, l, m->xb) || linear(m, v, TL_T_V, l, m->xb))
            return m->err->code;
        for (int h = 0; h < c->heads; h++) tl_rope_apply(m->q + h * d, m->rope_cos, m->rope_sin, half);
        for (int h = 0; h < c->kv_heads; h++) tl_rope_apply(k + h * d, m->rope_cos, m->rope_sin, half);

        for (int h = 0; h < c->heads; h++) {
            const float *qh = m->q + h * d;
            int kv_off = (h / group) * d; /* grouped-query attention */
            for (int u = 0; u <= pos; u++) {
                const float *ku = m->key_cache + layer_off + (size_t)u * (size_t)kvdim + kv_off;
                float s = 0.0f;
                for (int i = 0; i < d; i++) s += qh[i] * ku[i];
                m->att[u] = s * m->attn_scale;
            }
            tl_softmax(m->att, pos + 1);
            float *o = m->att_out + h * d;
            for (int i = 0; i < d; i++) o[i] = 0.0f;
            for (int u = 0; u <= pos; u++) {
                const float *vu = m->value_cache + layer_off + (size_t)u * (size_t)kvdim + kv_off;
                float p = m->att[u];
                for (int i = 0; i < d; i++) o[i] += p * vu[i];
            }
        }
        if (check_finite(m, m->att_out, c->heads * d, "attention", l) || linear(m, m->xb, TL_T_O, l, m->att_out))
            return m->err->code;
        for (int i = 0; i < H; i++) x[i] += m->xb[i];

        /* MLP block: down(silu(gate h) * up h) */
        if (norm_weights(m, TL_T_NORM2, l, &w)) return m->err->code;
        tl_rmsnorm(m->xb, x, w, H, c->eps);
        if (check_finite(m, m->xb, H, "norm2", l)) return m->err->code;
        if (linear(m, m->hb, TL_T_GATE, l, m->xb) || linear(m, m->hb2, TL_T_UP, l, m->xb)) return m->err->code;
        for (int i = 0; i < c->inter; i++) m->hb[i] = tl_silu(m->hb[i]) * m->hb2[i];
        if (check_finite(m, m->hb, c->inter, "SiLU(gate) * up", l)) return m->err->code;
        if (linear(m, m->xb, TL_T_DOWN, l, m->hb)) return m->err->code;
        for (int i = 0; i < H; i++) x[i] += m->xb[i];
    }

    if (!top) return TL_OK; /* logits not needed at this position */
    if (norm_weights(m, TL_T_FINAL_NORM, 0, &w)) return m->err->code;
    tl_rmsnorm(m->xb, x, w, H, c->eps);
    if (check_finite(m, m->xb, H, "final_norm", 0)) return m->err->code;
    m->last_candidates = -1;
    m->last_fallback = 0;
    if (m->prune && !full) {
        if (lm_head_pruned(m, m->xb, top, &m->last_fallback)) return m->err->code;
        if (!m->last_fallback) return TL_OK;
    }
    return lm_head_topk(m, m->xb, top);
}

/* ------------------------------------------------------------------ verify */

static int verify_file(tl_model *m, const tl_tensor *t, uint32_t want)
{
    const char *name = t->name;
    uint32_t crc = 0;
    for (uint64_t off = 0; off < t->bytes; off += m->stream_bytes) {
        uint64_t left = t->bytes - off;
        size_t n = left < m->stream_bytes ? (size_t)left : m->stream_bytes;
        if (read_exact(m, t->fh, name, off, m->stream, n)) return m->err->code;
        crc = tl_crc32(crc, m->stream, n);
    }
    if (crc != want)
        return tl_fail(m->err, TL_E_CHECKSUM, "%s/%s: crc32 expected %08lx, actual %08lx", m->dir, name,
                       (unsigned long)want, (unsigned long)crc);
    return TL_OK;
}

int tl_model_verify(tl_model *m)
{
    int bad = 0, files = 0;
    for (int id = 0; id < TL_NT; id++) {
        for (int scales = 0; scales < 2; scales++) {
            const tl_tensor *t = scales ? &m->scale[id] : &m->w[id];
            if (t->fh < 0) continue;
            files++;
            m->err->code = TL_OK;
            if (verify_file(m, t, m->man.crc32[scales][id])) {
                tl_emit_error(m->port, m->err->code, m->err->msg);
                bad++;
            }
        }
    }
    if (m->proxy.fh >= 0) {
        files++;
        m->err->code = TL_OK;
        if (verify_file(m, &m->proxy, m->man.proxy_crc32)) {
            tl_emit_error(m->port, m->err->code, m->err->msg);
            bad++;
        }
    }
    m->err->code = TL_OK;
    if (bad == 0)
        tl_log(m->port, TAG_LOADER, "Verified %d files (%llu bytes): all crc32 match", files,
               (unsigned long long)tl_model_total_file_bytes(m));
    else tl_log(m->port, TAG_LOADER, "Verify: %d of %d files failed", bad, files);
    return bad;
}
