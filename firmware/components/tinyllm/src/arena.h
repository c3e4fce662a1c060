/* Bump allocator over the one buffer the port hands us; tracks a high-water mark. */
#ifndef TINYLLM_ARENA_H
#define TINYLLM_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct tl_arena {
    uint8_t *base;
    size_t size; /* budget */
    size_t used;
    size_t peak; /* high-water mark of used */
} tl_arena;

void tl_arena_init(tl_arena *a, void *buf, size_t size);
/* 16-byte aligned, zeroed. On failure records E_OOM naming `what` and returns NULL. */
void *tl_arena_alloc(tl_arena *a, size_t bytes, const char *what, tl_err *err);
/* Room that n allocations may lose to alignment (tl_arena_alloc aligns each to 16
 * bytes): what a size estimate adds so that the allocations it stands for fit. */
#define TL_ARENA_PAD(n) ((uint64_t)(n) * 16u)
/* Bytes that one more allocation of any size could still get (after alignment). */
size_t tl_arena_available(const tl_arena *a);
/* Temporary allocations: remember `used`, allocate, then roll back. */
static inline size_t tl_arena_mark(const tl_arena *a) { return a->used; }
static inline void tl_arena_reset(tl_arena *a, size_t mark) { a->used = mark; }

#endif
