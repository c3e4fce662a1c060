/*
 * Storage: the weight set's files on the card (contracts.md §1). Reads
 * model_config.json, opens and size-checks every file, counts and reads
 * through the port (with the optional read-ahead), and verifies the CRCs.
 * The layout and the forward pass are model.c's.
 */
#include "storage.h"

#include <stdio.h>
#include <string.h>

#include "crc32.h"
#include "flash_tier.h"
#include "output.h"

/* A real model_config.json is 4-8 KB; cJSON needs about twice the text in
 * heap, and the bare-metal port reserves 96 KiB of heap for it. */
#define TL_MAX_CONFIG_BYTES (32u * 1024u)

/* ------------------------------------------------------------------- reads */

/* Every storage read ends here, so the statistics are the core's own. `flash`: it came from
 * the flash tier. */
static int read_done(tl_model *m, const char *what, uint64_t off, void *buf, size_t n, int64_t got, int flash)
{
    m->read_calls++;
    m->flash_reads += (uint64_t)(flash != 0);
#ifdef TINYLLM_FAULT_INJECTION
    if (m->fault && m->fault->kind != TL_FAULT_NONE && --m->fault->countdown == 0) {
        if (m->fault->kind == TL_FAULT_FLIP && got > 0) /* silent corruption: bit 0 of the middle byte */
            ((uint8_t *)buf)[got / 2] ^= 1u;
        else
            got = m->fault->kind == TL_FAULT_FAIL ? -1 : got / 2;
        m->fault->kind = TL_FAULT_NONE; /* one fault per `fault` command */
    }
#endif
    if (got > 0) {
        m->bytes_read += (uint64_t)got;
        if (flash) m->flash_bytes += (uint64_t)got;
    }
    if (got != (int64_t)n)
        return tl_fail(m->err, TL_E_IO, "read %s%s: offset %llu, wanted %lu bytes, got %lld", what,
                       flash ? " (flash tier)" : "", (unsigned long long)off, (unsigned long)n, (long long)got);
    return TL_OK;
}

/* One read from one tier: bytes [off, off + n) of file fh, all within one extent or all on the card. */
static int read_piece(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n,
                      const tl_extent *x)
{
    const tl_port *p = m->port;
    if (!x) return read_done(m, what, off, buf, n, p->read_at(p->ctx, fh, off, buf, n), 0);
    return read_done(m, what, off, buf, n, p->read_at(p->ctx, m->tier.fh, tl_tier_offset(x, off), buf, n), 1);
}

/* A range that the tier's extents cut is read piece by piece, each from its own tier. */
int tl_read_exact(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n)
{
    if (m->tier.n == 0) return read_piece(m, fh, what, off, buf, n, NULL);
    size_t done = 0;
    do {
        uint64_t len;
        const tl_extent *x = tl_tier_at(m, fh, off + done, &len);
        size_t k = len < n - done ? (size_t)len : n - done;
        if (read_piece(m, fh, what, off + done, (uint8_t *)buf + done, k, x)) return m->err->code;
        done += k;
    } while (done < n);
    return TL_OK;
}

void tl_read_start(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n)
{
    uint64_t len = UINT64_MAX;
    const tl_extent *x = m->tier.n ? tl_tier_at(m, fh, off, &len) : NULL;
    m->pending.active = 1;
    m->pending.mixed = len < n; /* read in pieces, in turn, at wait */
    m->pending.flash = x != NULL && !m->pending.mixed;
    m->pending.fh = m->pending.flash ? m->tier.fh : fh;
    m->pending.what = what;
    m->pending.off = m->pending.flash ? tl_tier_offset(x, off) : off;
    m->pending.file_off = off;
    m->pending.buf = buf;
    m->pending.n = n;
    m->pending.async = !m->pending.mixed && m->port->read_start && m->port->read_wait &&
                       m->port->read_start(m->port->ctx, m->pending.fh, m->pending.off, buf, n) == 0;
}

int tl_read_wait(tl_model *m)
{
    if (!m->pending.active) return TL_OK;
    m->pending.active = 0;
    if (m->pending.mixed) return tl_read_exact(m, m->pending.fh, m->pending.what, m->pending.off, m->pending.buf,
                                               m->pending.n);
    int64_t got = m->pending.async ? m->port->read_wait(m->port->ctx)
                                   : m->port->read_at(m->port->ctx, m->pending.fh, m->pending.off, m->pending.buf,
                                                      m->pending.n);
    return read_done(m, m->pending.what, m->pending.file_off, m->pending.buf, m->pending.n, got, m->pending.flash);
}

int tl_read_drain(tl_model *m, int code)
{
    if (m->pending.active && m->pending.async) (void)m->port->read_wait(m->port->ctx);
    m->pending.active = 0;
    return code;
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
    int rc = text ? tl_read_exact(m, fh, path, 0, text, (size_t)size) : m->err->code;
    m->port->close(m->port->ctx, fh);
    if (rc == TL_OK) {
        *card_id = m->card_id = tl_crc32(0, text, (size_t)size);
        tl_log(m->port, TL_TAG_LOADER, "Loaded %s (%lld bytes), card id %08lx", path, (long long)size,
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
        t->elem = (m->cfg.quantized && tl_tensor_quantized(id)) ? 1 : 4;
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
    m->tier.fh = -1;

    if (read_config(m, card_id, opt->precision ? opt->precision : "float32")) return m->err->code;
    const tl_config *c = &m->cfg;
    tl_log(m->port, TL_TAG_LOADER,
           "Model %s: vocab %d, hidden %d, intermediate %d, layers %d, heads %d, kv heads %d, head dim %d, "
           "max positions %d, dtype %s",
           c->model_name, c->vocab, c->hidden, c->inter, c->layers, c->heads, c->kv_heads, c->head_dim, c->max_pos,
           tl_config_dtype(c));

    for (int id = 0; id < TL_NT; id++) {
        if (open_file(m, &m->w[id], id, 0)) return m->err->code;
        if (c->quantized && tl_tensor_quantized(id) && open_file(m, &m->scale[id], id, 1)) return m->err->code;
    }
    if (m->man.has_proxy && open_proxy(m)) return m->err->code;
    int files = 0;
    for (int id = 0; id < TL_NT; id++) files += (m->w[id].fh >= 0) + (m->scale[id].fh >= 0);
    tl_log(m->port, TL_TAG_LOADER, "All %d weight files present with the expected sizes (%llu bytes)%s",
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
    tl_tier_close(m);
}

uint64_t tl_model_total_file_bytes(const tl_model *m)
{
    uint64_t total = 0;
    for (int id = 0; id < TL_NT; id++) total += m->w[id].bytes + m->scale[id].bytes;
    return total + m->proxy.bytes;
}

/* ------------------------------------------------------------------ verify */

/* Checks the file on the card now, opened again by its name: the handle opened at load would
 * still read a file that was since replaced, and only up to the size it had then. */
static int verify_file(tl_model *m, const tl_tensor *t, uint32_t want)
{
    const char *name = t->name;
    tl_tensor now = *t;
    uint32_t crc = 0;
    int rc = open_checked(m, &now, t->bytes);
    for (uint64_t off = 0; rc == TL_OK && off < t->bytes; off += m->stream_bytes) {
        uint64_t left = t->bytes - off;
        size_t n = left < m->stream_bytes ? (size_t)left : m->stream_bytes;
        rc = tl_read_exact(m, now.fh, name, off, m->stream, n);
        crc = tl_crc32(crc, m->stream, n);
    }
    if (now.fh >= 0) m->port->close(m->port->ctx, now.fh);
    if (rc != TL_OK) return rc;
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
        tl_log(m->port, TL_TAG_LOADER, "Verified %d files (%llu bytes): all crc32 match", files,
               (unsigned long long)tl_model_total_file_bytes(m));
    else tl_log(m->port, TL_TAG_LOADER, "Verify: %d of %d files failed", bad, files);
    return bad;
}
