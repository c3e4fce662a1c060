/* The flash tier: see flash_tier.h and docs/contracts.md §1b. */
#include "flash_tier.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "crc32.h"
#include "model.h"

static uint64_t le64(const uint8_t *p) { return (uint64_t)tl_le32(p) | (uint64_t)tl_le32(p + 4) << 32; }

void tl_tier_close(tl_model *m)
{
    if (m->tier.fh >= 0) m->port->close(m->port->ctx, m->tier.fh);
    m->tier.fh = -1;
    m->tier.n = 0;
    m->tier.bytes = 0;
}

/* The tier is not used: closes it and says why, once. */
static void refuse(tl_model *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->tier.status, sizeof m->tier.status, fmt, ap);
    va_end(ap);
    tl_tier_close(m);
    tl_log(m->port, TL_TAG_LOADER, "Flash tier not used: %s; every weight byte comes from the card", m->tier.status);
}

/* The set's open file called `name`, or NULL. */
static const tl_tensor *file_named(const tl_model *m, const char *name)
{
    for (int id = 0; id < TL_NT; id++) {
        const tl_tensor *ts[2] = {&m->w[id], &m->scale[id]};
        for (int i = 0; i < 2; i++)
            if (ts[i]->fh >= 0 && strcmp(ts[i]->name, name) == 0) return ts[i];
    }
    return m->proxy.fh >= 0 && strcmp(m->proxy.name, name) == 0 ? &m->proxy : NULL;
}

static int all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

/* Extent i of the table at e: bound to the set's file it names and to the tier's size. */
static int read_extent(tl_model *m, int i, const uint8_t *e, uint64_t tier_size)
{
    char name[TL_TIER_NAME_BYTES + 1];
    memcpy(name, e, TL_TIER_NAME_BYTES);
    name[TL_TIER_NAME_BYTES] = '\0';
    const tl_tensor *t = file_named(m, name);
    tl_extent *x = &m->tier.ext[i];
    *x = (tl_extent){t, le64(e + 32), tl_le32(e + 40), tl_le32(e + 44)};
    if (!t) {
        for (char *c = name; *c; c++) { /* flash bytes: printable, and nothing that ends a JSON string */
            unsigned char u = (unsigned char)*c;
            if (u < 0x20 || u > 0x7e || u == '"' || u == '\\') *c = '?';
        }
        refuse(m, "extent %d names %.40s, not a file of this set", i, name);
        return -1;
    }
    if (x->bytes == 0 || x->file_off > t->bytes || x->bytes > t->bytes - x->file_off) {
        refuse(m, "extent %d: bytes %llu..%llu of %s, which has %llu", i, (unsigned long long)x->file_off,
               (unsigned long long)(x->file_off + x->bytes), name, (unsigned long long)t->bytes);
        return -1;
    }
    if (x->tier_off < TL_TIER_HEADER_BYTES || x->tier_off > tier_size || x->bytes > tier_size - x->tier_off) {
        refuse(m, "the partition is too small: extent %d (%s) ends at byte %llu of %llu", i, name,
               (unsigned long long)(x->tier_off + x->bytes), (unsigned long long)tier_size);
        return -1;
    }
    for (int j = 0; j < i; j++) { /* one byte of a file has one place */
        const tl_extent *y = &m->tier.ext[j];
        if (y->file == x->file && x->file_off < y->file_off + y->bytes && y->file_off < x->file_off + x->bytes) {
            refuse(m, "extents %d and %d overlap in %s", j, i, name);
            return -1;
        }
    }
    return 0;
}

/* CRC-32 of every extent's copy in the tier, in table order, read through m->stream. */
static int payload_crc(tl_model *m, uint32_t *crc)
{
    *crc = 0;
    for (int i = 0; i < m->tier.n; i++) {
        const tl_extent *x = &m->tier.ext[i];
        for (uint64_t done = 0; done < x->bytes;) {
            uint64_t left = x->bytes - done;
            size_t n = left < m->stream_bytes ? (size_t)left : m->stream_bytes;
            if (m->port->read_at(m->port->ctx, m->tier.fh, x->tier_off + done, m->stream, n) != (int64_t)n)
                return -1;
            *crc = tl_crc32(*crc, m->stream, n);
            done += n;
        }
    }
    return 0;
}

/* The fixed header and extent table: magic, count, header CRC and card id. Returns the count, or 0. */
static int check_header(tl_model *m, uint8_t *head, size_t size, uint32_t card_id)
{
    if (memcmp(head, TL_TIER_MAGIC, 8) != 0) {
        refuse(m, all_bytes(head, size, 0xFF) ? "the partition is erased (never written)"
                  : all_bytes(head, size, 0) ? "the partition is empty (zeros)"
                  : "the partition holds no tier (no " TL_TIER_MAGIC " header)");
        return 0;
    }
    uint32_t n = tl_le32(head + 12), stored = tl_le32(head + 20);
    if (n < 1 || n > TL_TIER_MAX_EXTENTS) {
        refuse(m, "its header lists %lu extents, expected 1..%d", (unsigned long)n, TL_TIER_MAX_EXTENTS);
        return 0;
    }
    memset(head + 20, 0, 4); /* the CRC covers the header with its own field zero */
    uint32_t crc = tl_crc32(0, head, TL_TIER_FIXED_BYTES + n * TL_TIER_EXTENT_BYTES);
    if (crc != stored) {
        refuse(m, "header crc32 %08lx, expected %08lx (a damaged or half-written partition)", (unsigned long)crc,
               (unsigned long)stored);
        return 0;
    }
    if (tl_le32(head + 8) != card_id) {
        refuse(m, "it was made for the set with card id %08lx, this set's is %08lx", (unsigned long)tl_le32(head + 8),
               (unsigned long)card_id);
        return 0;
    }
    return (int)n;
}

void tl_tier_attach(tl_model *m, uint32_t card_id, int off)
{
    tl_tier *tier = &m->tier;
    *tier = (tl_tier){.fh = -1};
    snprintf(tier->status, sizeof tier->status, off ? "off (flash=0)" : "none");
    if (off || !m->port->open_flash_tier) return; /* a port without one: nothing to say */
    int32_t fh = m->port->open_flash_tier(m->port->ctx);
    if (fh == TL_OPEN_NOT_FOUND) { /* none given (e.g. a build without the partition): nothing to say */
        snprintf(tier->status, sizeof tier->status, "no weights partition");
        return;
    }
    if (fh < 0) {
        refuse(m, "the weights partition could not be opened (%s)",
               fh == TL_OPEN_NOT_A_FILE ? "not a regular file" : fh == TL_OPEN_DENIED ? "permission denied"
                                                                   : "not readable or not mappable");
        return;
    }
    tier->fh = fh;
    int64_t size = m->port->size(m->port->ctx, fh);
    uint8_t head[TL_TIER_FIXED_BYTES + TL_TIER_MAX_EXTENTS * TL_TIER_EXTENT_BYTES];
    if (size < (int64_t)TL_TIER_HEADER_BYTES) {
        refuse(m, "the partition has %lld bytes, less than its %u-byte header", (long long)size, TL_TIER_HEADER_BYTES);
        return;
    }
    if (m->port->read_at(m->port->ctx, fh, 0, head, sizeof head) != (int64_t)sizeof head) {
        refuse(m, "its header could not be read");
        return;
    }
    int n = check_header(m, head, sizeof head, card_id);
    if (n == 0) return;
    tier->n = n;
    for (int i = 0; i < n; i++) {
        if (read_extent(m, i, head + TL_TIER_FIXED_BYTES + (size_t)i * TL_TIER_EXTENT_BYTES, (uint64_t)size)) return;
        tier->bytes += tier->ext[i].bytes;
    }
    uint32_t crc, want = tl_le32(head + 16);
    if (payload_crc(m, &crc)) {
        refuse(m, "its payload could not be read");
        return;
    }
    if (crc != want) {
        refuse(m, "payload crc32 %08lx, expected %08lx (damaged flash, or a partition written half)",
               (unsigned long)crc, (unsigned long)want);
        return;
    }
    snprintf(tier->status, sizeof tier->status, "used");
    for (int i = 0; i < n; i++) {
        const tl_extent *x = &tier->ext[i];
        tl_log(m->port, TL_TAG_LOADER, "Flash tier: %s bytes %llu..%llu (%llu bytes) read from flash, not the card",
               x->file->name, (unsigned long long)x->file_off, (unsigned long long)(x->file_off + x->bytes),
               (unsigned long long)x->bytes);
    }
}

const tl_extent *tl_tier_at(const tl_model *m, int32_t fh, uint64_t off, uint64_t *len)
{
    *len = UINT64_MAX;
    for (int i = 0; i < m->tier.n; i++) {
        const tl_extent *x = &m->tier.ext[i];
        if (x->file->fh != fh) continue;
        if (off >= x->file_off && off - x->file_off < x->bytes) {
            *len = x->bytes - (off - x->file_off);
            return x;
        }
        if (x->file_off > off && x->file_off - off < *len) *len = x->file_off - off;
    }
    return NULL;
}
