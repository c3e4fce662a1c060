/*
 * 64-bit integer helpers that Debian's lx106 libgcc lacks (on the ESP8266 they live in
 * ROM). picolibc's printf and the core's 64-bit counters need them. Each is the plain
 * textbook algorithm over libgcc's own __udivmoddi4 or 32-bit multiplies.
 */
#include <stdint.h>

uint64_t __udivmoddi4(uint64_t num, uint64_t den, uint64_t *rem);
uint64_t __udivdi3(uint64_t a, uint64_t b);
uint64_t __umoddi3(uint64_t a, uint64_t b);
int64_t __divdi3(int64_t a, int64_t b);
uint64_t __muldi3(uint64_t a, uint64_t b);

uint64_t __udivdi3(uint64_t a, uint64_t b) { return __udivmoddi4(a, b, 0); }

uint64_t __umoddi3(uint64_t a, uint64_t b)
{
    uint64_t r;
    __udivmoddi4(a, b, &r);
    return r;
}

int64_t __divdi3(int64_t a, int64_t b)
{
    uint64_t ua = a < 0 ? -(uint64_t)a : (uint64_t)a;
    uint64_t ub = b < 0 ? -(uint64_t)b : (uint64_t)b;
    uint64_t q = __udivmoddi4(ua, ub, 0);
    return (a < 0) != (b < 0) ? -(int64_t)q : (int64_t)q;
}

/* (ah*2^32 + al) * (bh*2^32 + bl) mod 2^64 = al*bl + ((ah*bl + al*bh) << 32) */
uint64_t __muldi3(uint64_t a, uint64_t b)
{
    uint32_t al = (uint32_t)a, ah = (uint32_t)(a >> 32), bl = (uint32_t)b, bh = (uint32_t)(b >> 32);
    /* al*bl needs the full 64-bit product: split into 16-bit halves (MUL32 gives the low 32 bits only) */
    uint32_t a0 = al & 0xffffu, a1 = al >> 16, b0 = bl & 0xffffu, b1 = bl >> 16;
    uint64_t low = (uint64_t)(a0 * b0) + (((uint64_t)(a1 * b0) + (uint64_t)(a0 * b1)) << 16) + ((uint64_t)(a1 * b1) << 32);
    return low + ((uint64_t)(ah * bl + al * bh) << 32);
}
