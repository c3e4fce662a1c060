/* zlib's CRC-32 (IEEE, reflected polynomial 0xEDB88320), streaming. */
#ifndef TINYLLM_CRC32_H
#define TINYLLM_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* crc = tl_crc32(0, buf, n) for one buffer; pass the previous result to continue. */
uint32_t tl_crc32(uint32_t crc, const void *buf, size_t n);

#endif
