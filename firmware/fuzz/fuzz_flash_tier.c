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
 * card id), so the checks after the CRCs and the reads through a used tier run too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"

#define FZ_GEN "gen 1 5 9 n=3 k=2\n"
#define FZ_LOAD "load float32\n"
#define FZ_LOAD_CARD_ONLY "load float32 flash=0\n"

static fz_port port;
static tl_engine *engine;
static char tier_path[4200];
static char expected[256]; /* the card's "Generated tokens:" line */

static void remove_tier(void) { unlink(tier_path); }

/* The "Generated tokens:" line of the last command's output, into out (empty if none). */
static void generated_line(const fz_port *p, char *out, size_t n)
{
    out[0] = '\0';
    const char *key = "Generated tokens:";
    for (size_t i = 0; i + strlen(key) <= p->out_len; i++) {
        if (memcmp(p->out + i, key, strlen(key)) != 0 || (i > 0 && p->out[i - 1] != '\n')) continue;
        const char *end = (const char *)memchr(p->out + i, '\n', p->out_len - i);
        size_t len = end ? (size_t)(end - (p->out + i)) : p->out_len - i;
        if (len >= n) len = n - 1;
        memcpy(out, p->out + i, len);
        out[len] = '\0';
        return;
    }
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
    run_ok(FZ_GEN, "the card-only gen failed at start-up");
    generated_line(&port, expected, sizeof expected);
    if (!expected[0]) fz_break("the card-only gen printed no tokens", port.out, port.out_len);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_write_file(tier_path, data, size);
    run_ok(FZ_LOAD, "a load failed on a flash tier (a tier that does not match must only go unused)");
    run_ok(FZ_GEN, "a gen failed with a flash tier attached");
    char got[256];
    generated_line(&port, got, sizeof got);
    if (strcmp(got, expected) != 0) fz_break("the tokens differ from the card's with this flash tier", port.out, port.out_len);
    run_ok(FZ_LOAD_CARD_ONLY, "load float32 flash=0 failed after a flash tier");
    if (port.card.open_handles != port.boot_handles)
        fz_break("a file handle (the tier's?) outlived the next load", port.out, port.out_len);
    return 0;
}
