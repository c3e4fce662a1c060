/*
 * fuzz_flash_tier: the input is a flash tier (docs/contracts.md §1b), the bytes of the ESP32
 * app's weights partition. It is written to a scratch file that the port opens as its tier, then
 * `load float32` checks it and a `gen` runs. Whatever the bytes: the load succeeds (a tier that
 * does not match is never used, only said so), the output keeps the protocol (fuzz_check.c),
 * the generated tokens are the card's own (computed once at start-up with flash=0: a tier that
 * is used serves copies of the card's bytes), and no file handle outlives the next load.
 *
 * The header and payload CRCs stop almost every mutation early; ci/fuzz.sh adds a valid tier of
 * the fuzz card's float32 set to the seeds (the committed ones cannot match a fresh export's
 * card id), so the checks after the CRCs and the reads through a used tier run too. And every
 * input with the magic runs a second time with its card id set to the card's and both CRCs made
 * right, so a mutated extent table reaches the extent checks and, where they pass, the reads
 * split across card and tier. Such a tier is consistent but may hold other bytes than the card
 * (the CRCs cannot tell: the harness that writes it can), so there the tokens may differ; the
 * load, the gen, the protocol and the handles must still hold, under ASan and UBSan.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crc32.h"
#include "flash_tier.h"
#include "fuzz_common.h"

#define FZ_GEN "gen 1 5 9 n=3 k=2\n"
#define FZ_LOAD "load float32\n"
#define FZ_LOAD_CARD_ONLY "load float32 flash=0\n"

static fz_port port;
static tl_engine *engine;
static char tier_path[4200];
static char expected[256]; /* the card's "Generated tokens:" line */
static uint32_t card_id;    /* the float32 set's, from its TINYLLM_INFO line */
static uint8_t repaired[8u << 20];

static void remove_tier(void) { unlink(tier_path); }

/* Where `key` first appears in the last command's output (at a line's start if `line_start`), or NULL. */
static const char *find_in_output(const fz_port *p, const char *key, int line_start)
{
    for (size_t i = 0; i + strlen(key) <= p->out_len; i++)
        if (memcmp(p->out + i, key, strlen(key)) == 0 && (!line_start || i == 0 || p->out[i - 1] == '\n'))
            return p->out + i;
    return NULL;
}

/* The "Generated tokens:" line of the last command's output, into out (empty if none). */
static void generated_line(const fz_port *p, char *out, size_t n)
{
    out[0] = '\0';
    const char *at = find_in_output(p, "Generated tokens:", 1);
    if (!at) return;
    size_t left = p->out_len - (size_t)(at - p->out);
    const char *end = (const char *)memchr(at, '\n', left);
    size_t len = end ? (size_t)(end - at) : left;
    if (len >= n) len = n - 1;
    memcpy(out, at, len);
    out[len] = '\0';
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* A copy of a tier with this card's id and both CRCs right (docs/contracts.md §1b); its size, or 0
 * for an input without the magic, a usable extent count or room in the buffer. */
static size_t repair(const uint8_t *data, size_t size)
{
    if (size < TL_TIER_HEADER_BYTES || size > sizeof repaired || memcmp(data, TL_TIER_MAGIC, 8) != 0) return 0;
    uint32_t n = tl_le32(data + 12);
    if (n < 1 || n > TL_TIER_MAX_EXTENTS) return 0;
    memcpy(repaired, data, size);
    put_le32(repaired + 8, card_id);
    uint32_t crc = 0; /* the payload: every extent's copy in table order (one the tier cannot hold is refused before) */
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = repaired + TL_TIER_FIXED_BYTES + i * TL_TIER_EXTENT_BYTES;
        uint64_t bytes = tl_le32(e + 40), at = tl_le32(e + 44);
        if (at <= size && bytes <= size - at) crc = tl_crc32(crc, repaired + at, (size_t)bytes);
    }
    put_le32(repaired + 16, crc);
    put_le32(repaired + 20, 0);
    put_le32(repaired + 20, tl_crc32(0, repaired, TL_TIER_FIXED_BYTES + n * TL_TIER_EXTENT_BYTES));
    return size;
}

static void run_ok(const char *line, const char *why)
{
    if (fz_exec_checked(engine, &port, line, strlen(line)) != TL_CMD_OK) fz_break(why, port.out, port.out_len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_selftest_from_env();
    const char *tmp = getenv("TMPDIR");
    snprintf(tier_path, sizeof tier_path, "%s/tinyllm-fuzz-tier-%ld.bin", tmp && *tmp ? tmp : "/tmp", (long)getpid());
    atexit(remove_tier);
    engine = fz_boot_engine(&port, fz_card_from_env());
    port.card.flash_tier = tier_path; /* read at every load from now on */
    run_ok(FZ_LOAD_CARD_ONLY, "load float32 flash=0 failed at start-up");
    const char *key = "\"card_id\":\"";
    const char *at = find_in_output(&port, key, 0);
    unsigned id;
    if (!at || sscanf(at + strlen(key), "%8x", &id) != 1)
        fz_break("the load's TINYLLM_INFO has no card_id", port.out, port.out_len);
    card_id = id;
    run_ok(FZ_GEN, "the card-only gen failed at start-up");
    generated_line(&port, expected, sizeof expected);
    if (!expected[0]) fz_break("the card-only gen printed no tokens", port.out, port.out_len);
    return 0;
}

/* One tier through load, gen and a card-only load. `from_the_card`: the tier holds the card's
 * bytes or goes unused, so the gen must give the card's tokens; else it may hold any bytes, and
 * the gen may end in a clean error too (E_NUMERIC for weights out of range). */
static void run_tier(const uint8_t *data, size_t size, int from_the_card)
{
    fz_write_file(tier_path, data, size);
    run_ok(FZ_LOAD, "a load failed on a flash tier (a tier that does not match must only go unused)");
    if (from_the_card) {
        run_ok(FZ_GEN, "a gen failed with a flash tier attached");
        char got[256];
        generated_line(&port, got, sizeof got);
        if (strcmp(got, expected) != 0)
            fz_break("the tokens differ from the card's with this flash tier", port.out, port.out_len);
    } else {
        fz_exec_checked(engine, &port, FZ_GEN, strlen(FZ_GEN)); /* the protocol holds either way */
    }
    run_ok(FZ_LOAD_CARD_ONLY, "load float32 flash=0 failed after a flash tier");
    if (port.card.open_handles != port.boot_handles)
        fz_break("a file handle (the tier's?) outlived the next load", port.out, port.out_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run_tier(data, size, 1);
    size_t n = repair(data, size);
    if (n && memcmp(repaired, data, n) != 0) run_tier(repaired, n, 0);
    return 0;
}
