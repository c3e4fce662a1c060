/*
 * fuzz_prompt_file: the input is a prompt file (card /prompts.txt). It is
 * written to a scratch card folder (the micro card's two weight folders
 * linked in, see below) and run with tl_engine_run_script on an engine booted
 * once like fuzz_commands'. The whole output is checked (fuzz_check.c): every
 * line printable and well-shaped, each command's output ending in one
 * TINYLLM_READY with one TINYLLM_ERROR if it failed, and the count of failed
 * commands the function returns equal to what the output shows. Then the
 * engine is put back to its boot state if a line could have changed it.
 *
 * Kept fast like fuzz_commands: an input with more than FZ_MAX_COMMANDS
 * command lines, or a `load` line whose context= lifts the context above
 * FZ_CONTEXT, is not run (returns -1: libFuzzer keeps it out of the corpus).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"

#define FZ_MAX_COMMANDS 32
#define FZ_PROMPT_FILE "fuzz_prompts.txt"

static fz_port port;
static tl_engine *engine;
static char scratch[4096];     /* the scratch card folder */
static char prompt_path[4200]; /* its prompt file */

static void remove_scratch(void)
{
    static const char *const names[] = {FZ_PROMPT_FILE, "tinyllm_float32_weights", "tinyllm_weights"};
    char path[4300];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", scratch, names[i]);
        unlink(path);
    }
    rmdir(scratch);
}

/* A folder of our own per process (libFuzzer's -jobs/-fork run several):
 * symlinks to the card's weight folders, and the prompt file. */
static void make_scratch(const char *card)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/tinyllm-fuzz-prompts-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    char real_card[4096];
    if (!mkdtemp(scratch) || !realpath(card, real_card)) {
        fprintf(stderr, "fuzz_prompt_file: cannot make a scratch folder in %s: %s\n", tmp ? tmp : "/tmp",
                strerror(errno));
        exit(2);
    }
    atexit(remove_scratch);
    static const char *const sets[] = {"tinyllm_float32_weights", "tinyllm_weights"};
    for (size_t i = 0; i < 2; i++) {
        char from[8200], to[4300];
        snprintf(from, sizeof from, "%s/%s", real_card, sets[i]);
        snprintf(to, sizeof to, "%s/%s", scratch, sets[i]);
        if (symlink(from, to) != 0) {
            fprintf(stderr, "fuzz_prompt_file: symlink %s -> %s: %s\n", to, from, strerror(errno));
            exit(2);
        }
    }
    snprintf(prompt_path, sizeof prompt_path, "%s/%s", scratch, FZ_PROMPT_FILE);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_selftest_from_env();
    make_scratch(fz_card_from_env());
    engine = fz_boot_engine(&port, scratch);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    int dirty = 0, commands = 0;
    for (size_t start = 0; start < size;) {
        const char *nl = (const char *)memchr(text + start, '\n', size - start);
        size_t len = nl ? (size_t)(nl - (text + start)) + 1 : size - start;
        const char *line = text + start, *word;
        size_t n;
        start += len;
        if (fz_load_lifts_context(line, len)) return -1;
        fz_first_word(line, len, &word, &n);
        if (n && word[0] != '#' && ++commands > FZ_MAX_COMMANDS) return -1;
        dirty |= fz_changes_state(line, len);
    }
    fz_write_file(prompt_path, data, size);
    tl_session session = {0, 0};
    fz_reset_output(&port);
    int failed = tl_engine_run_script(engine, FZ_PROMPT_FILE, &session);
    fz_echo(&port);
    fz_check_lines(port.out, port.out_len);
    fz_check_script(port.out, port.out_len, failed);
    fz_end_input(engine, &port, dirty);
    return 0;
}
