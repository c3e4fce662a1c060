/*
 * The flash tier (docs/contracts.md §1b): a read-only region beside the card (the ESP32 app's
 * "weights" data partition, memory-mapped; a file standing in for it on linux and xtensa-sim)
 * holding copies of byte ranges of the loaded set's files. Bound to the set by its card id and
 * CRCs; checked once at `load`, then storage.c serves every read of a covered range from it.
 * A tier that does not match is never used: one log line says why, and every byte comes from
 * the card as before (the same bytes, so the same tokens).
 */
#ifndef TINYLLM_FLASH_TIER_H
#define TINYLLM_FLASH_TIER_H

#include <stdint.h>

#define TL_TIER_MAGIC "TLFLASH1"
#define TL_TIER_HEADER_BYTES 4096u /* header and extent table; payloads start at or after it */
#define TL_TIER_FIXED_BYTES 32u    /* the header before the extent table */
#define TL_TIER_EXTENT_BYTES 48u   /* one extent table entry */
#define TL_TIER_MAX_EXTENTS 8
#define TL_TIER_NAME_BYTES 32u     /* an extent's file name, NUL-padded */

struct tl_tensor;

/* One range of one of the set's files, copied into the tier. */
typedef struct tl_extent {
    const struct tl_tensor *file; /* the set's file, matched by name at load */
    uint64_t file_off;  /* where the range starts in the file */
    uint64_t bytes;     /* its length */
    uint64_t tier_off;  /* where its copy starts in the tier */
} tl_extent;

typedef struct tl_tier {
    int32_t fh;           /* the tier's handle from the port, -1 when not in use */
    int n;                /* extents in use (0: every read goes to the card) */
    tl_extent ext[TL_TIER_MAX_EXTENTS];
    uint64_t bytes;       /* bytes the extents hold */
    char status[120];     /* "used", or why not (TINYLLM_INFO "flash_tier") */
} tl_tier;

struct tl_model;

/* Opens the port's flash tier and checks it against the set just opened (card_id: its
 * model_config.json's CRC-32); uses m->stream as scratch. Never fails the load: a tier that
 * does not match is closed, with one loader line naming why. `off`: `load ... flash=0`. */
void tl_tier_attach(struct tl_model *m, uint32_t card_id, int off);
/* Closes the tier's handle (safe when none is open). */
void tl_tier_close(struct tl_model *m);
/* The extent covering byte `off` of file fh, with *len the bytes it covers from there; or NULL
 * with *len the bytes up to the next extent of that file (UINT64_MAX when none follows). */
const tl_extent *tl_tier_at(const struct tl_model *m, int32_t fh, uint64_t off, uint64_t *len);
/* A little-endian u32 of the tier's header (docs/contracts.md §1b). */
static inline uint32_t tl_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
/* Where byte `off` of the extent's file is in the tier. */
static inline uint64_t tl_tier_offset(const tl_extent *x, uint64_t off) { return x->tier_off + (off - x->file_off); }

#endif
