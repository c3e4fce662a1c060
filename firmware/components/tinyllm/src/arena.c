#include "arena.h"

#include <string.h>

#define TL_ALIGN 16u

void tl_arena_init(tl_arena *a, void *buf, size_t size)
{
    a->base = (uint8_t *)buf;
    a->size = size;
    a->used = 0;
    a->peak = 0;
    /* Start aligned even if the port's buffer is not. */
    uintptr_t mis = (uintptr_t)buf % TL_ALIGN;
    if (mis != 0) a->used = (size_t)(TL_ALIGN - mis) <= size ? (size_t)(TL_ALIGN - mis) : size;
}

static size_t aligned_used(const tl_arena *a)
{
    size_t u = a->used;
    return (u + (TL_ALIGN - 1u)) & ~(size_t)(TL_ALIGN - 1u);
}

size_t tl_arena_available(const tl_arena *a)
{
    size_t start = aligned_used(a);
    return start >= a->size ? 0 : a->size - start;
}

void *tl_arena_alloc(tl_arena *a, size_t bytes, const char *what, tl_err *err)
{
    size_t start = aligned_used(a);
    size_t avail = start >= a->size ? 0 : a->size - start;
    if (bytes > avail) {
        tl_fail(err, TL_E_OOM, "arena: %s needs %lu bytes, %lu available (budget %lu, used %lu)", what,
                (unsigned long)bytes, (unsigned long)avail, (unsigned long)a->size, (unsigned long)a->used);
        return NULL;
    }
    void *p = a->base + start;
    a->used = start + bytes;
    if (a->used > a->peak) a->peak = a->used;
    memset(p, 0, bytes);
    return p;
}
