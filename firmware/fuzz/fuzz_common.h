/*
 * Shared pieces of the libFuzzer targets (firmware/fuzz/README.md):
 *  - a tl_port over a card folder (pread storage, one arena, output captured
 *    in a buffer, a deterministic clock): fuzz_port.c, and
 *  - the output-protocol checks (docs/contracts.md §5) that turn a contract
 *    break into a finding: they print what broke and abort(): fuzz_check.c.
 */
#ifndef TINYLLM_FUZZ_COMMON_H
#define TINYLLM_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "posix_card.h"
#include "tinyllm/tinyllm.h"

/* libFuzzer's entry points, defined by each target. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ------------------------------------------------------------------- port */

typedef struct fz_port {
    posix_card card;    /* first: the port's ctx is the fz_port (card.open_handles: files open now) */
    tl_port port;
    char root[4096];    /* the card folder: storage paths are relative to it */
    uint64_t clock;     /* fake microseconds: advanced on every read of the clock */
    int boot_handles;   /* files open after fz_boot_engine */
    char *out;          /* output captured since the last fz_take_output */
    size_t out_len, out_cap;
} fz_port;

/* Fills *p for the card folder `root` with an arena of `arena_bytes` (one
 * malloc, kept for the whole process). Exits with a message if it cannot. */
void fz_port_init(fz_port *p, const char *root, size_t arena_bytes);
/* Clears the captured output and restarts the clock (each input starts alike). */
void fz_reset_output(fz_port *p);

/* The card folder named by TINYLLM_FUZZ_CARD, checked: exits with a message
 * saying how to make one if it is not set or not a card. */
const char *fz_card_from_env(void);

/* Boots an engine on `root` the way every command target does (float32 set,
 * context clamped to FZ_CONTEXT), checking the boot output; exits on failure. */
#define FZ_CONTEXT 24
tl_engine *fz_boot_engine(fz_port *p, const char *root);

/* Runs one line (bytes as read, '\n' included if it had one) through
 * tl_engine_exec_bytes on a NUL-terminated copy, then checks its output. */
int fz_exec_checked(tl_engine *e, fz_port *p, const char *line, size_t len);

/* Writes an input to `path` whole (a prompt file, a flash tier); exits with a message if it cannot. */
void fz_write_file(const char *path, const uint8_t *data, size_t size);

/* With TINYLLM_FUZZ_ECHO=1 in the environment, writes the captured output to stderr. */
void fz_echo(const fz_port *p);

/* First word of a command line as tl_engine_exec splits it: [*start, *start + *n). */
void fz_first_word(const char *line, size_t len, const char **start, size_t *n);
/* 1 if the line is a `load` command whose context= option would lift the
 * context above FZ_CONTEXT (its value parsed by the core's option table): such
 * a line is not run, so that no command generates more than FZ_CONTEXT steps. */
int fz_load_lifts_context(const char *line, size_t len);
/* 1 if the line is a `load` or `fault` command (it changes engine state that
 * outlives the input). */
int fz_changes_state(const char *line, size_t len);
/* After an input: if it could have changed the engine's state (`dirty`: a load
 * or fault line ran), puts the engine back to its boot state (fault off,
 * float32 set with the boot options) and checks that it answered; then checks
 * that no file handle leaked. */
void fz_end_input(tl_engine *e, fz_port *p, int dirty);

/* ----------------------------------------------------------------- checks */

/* Prints "CONTRACT BREAK: <what>" and the transcript (escaped) to stderr, then abort(). */
void fz_break(const char *what, const char *out, size_t len)
#if defined(__GNUC__)
    __attribute__((noreturn))
#endif
    ;

/* Every line of `out` is complete ('\n'-terminated), printable ASCII
 * (0x20..0x7e) and one of the protocol's line shapes. */
void fz_check_lines(const char *out, size_t len);

/* Output of one command that returned `result` (TL_CMD_*): nothing for an
 * ignored line or quit; else one TINYLLM_READY, last; no TINYLLM_ERROR if it
 * succeeded, exactly one if it failed (documented exceptions: a verify prints
 * one per bad file, a load whose previous set cannot be loaded again prints
 * that second error after its "Load failed" line). */
void fz_check_command(const char *out, size_t len, int result);

/* Output of tl_engine_run_script that returned `failed`: its commands'
 * outputs one after the other, and `failed` of them failed. */
void fz_check_script(const char *out, size_t len, int failed);

/* Self-check hook: when TINYLLM_FUZZ_CHECK_TRANSCRIPT names a file, check its
 * bytes as the output of a command that returned TINYLLM_FUZZ_CHECK_RESULT
 * (ok, failed, ignored, quit, or script=<failed count>), print the verdict and
 * exit: 0 if it passes; a break aborts as in fuzzing. The tests use it to show
 * that the checks compiled into each fuzz binary catch known-bad output. */
void fz_selftest_from_env(void);

#endif
