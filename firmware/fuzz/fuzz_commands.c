/*
 * fuzz_commands: the input is console input. An engine booted once (float32
 * set of the micro card named by TINYLLM_FUZZ_CARD, context FZ_CONTEXT) runs
 * each line (split on '\n', the newline kept as a console line has it) with
 * tl_engine_exec_bytes, so NUL bytes inside a line are exercised. After every
 * line its output is checked against the protocol (fuzz_check.c): printable
 * ASCII lines of known shapes, one TINYLLM_READY last, exactly one
 * TINYLLM_ERROR for a failed command. `quit` ends the input as it ends the
 * console. Afterwards a `fault off` and `load float32` put the engine back to
 * its boot state if a line could have changed it, and no file handle may have
 * leaked.
 *
 * Kept fast: at most FZ_MAX_LINES lines of an input run, and a `load` line
 * whose context= would lift the context above FZ_CONTEXT is not run (so no
 * `gen` takes more than FZ_CONTEXT forward passes; longer ones fail E_PROMPT,
 * which is exercised).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#define FZ_MAX_LINES 32

static fz_port port;
static tl_engine *engine;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_selftest_from_env();
    engine = fz_boot_engine(&port, fz_card_from_env());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    int dirty = 0, lines = 0;
    for (size_t start = 0; start < size && lines < FZ_MAX_LINES;) {
        const char *nl = (const char *)memchr(text + start, '\n', size - start);
        size_t len = nl ? (size_t)(nl - (text + start)) + 1 : size - start;
        const char *line = text + start;
        start += len;
        if (fz_load_lifts_context(line, len)) continue;
        lines++;
        dirty |= fz_changes_state(line, len);
        if (fz_exec_checked(engine, &port, line, len) == TL_CMD_QUIT) break;
    }
    fz_end_input(engine, &port, dirty);
    return 0;
}
