/*
 * Tiny-LLM inference core: public API used by the ports.
 *
 * A port is storage + clock + console + arena (port.h); everything else is here:
 *
 *   tl_engine *e = tl_engine_init(&port, &opts);   // prints start-up lines, TINYLLM_INFO, TINYLLM_READY
 *   if (!e) { tl_exit_line(&port, 2); exit(2); }    // TINYLLM_ERROR was already printed
 *   tl_session s = {0, 0};
 *   tl_engine_run_script(e, "prompts.txt", &s);     // optional boot-time prompt file
 *   while (!s.quit && read a line) tl_session_line(e, &s, line, len);   // line NULL: it was too long
 *   tl_exit_line(&port, tl_session_exit_code(&s));
 */
#ifndef TINYLLM_TINYLLM_H
#define TINYLLM_TINYLLM_H

#include <stddef.h>
#include <stdint.h>

#include "tinyllm/port.h"

/* The memory budget the ESP32-CAM app gets: 3840 KiB of PSRAM (ESP-IDF leaves
 * a largest free block of 3904 KiB; the app keeps 64 KiB of it for the heap).
 * The host and emulator ports default to it, so residency and every per-token
 * figure match the board's. */
#define TL_DEFAULT_ARENA_BYTES 3932160u
/* The ESP32-CAM app's chunk buffer in internal SRAM (CONFIG_TINYLLM_CHUNK_BUFFER_KB
 * = 104 KiB, port.h: two chunks of tiny-llm's lm_head, one read while the other is
 * computed): the host and emulator ports have one too, for the same layout. */
#define TL_DEFAULT_CHUNK_BUFFER_BYTES 106496u
/* A console or prompt-file line: at most TL_LINE_BYTES - 1 bytes ("gen" with a
 * whole context of ids, ~6 KB for tiny-llm, fits). A longer one is refused
 * whole (E_COMMAND), never run cut off. Ports size their line buffer with it. */
#define TL_LINE_BYTES 8192u

/* How a weight set is laid out. All but the first two are the options of the table in
 * options.c (tl_option_set): a `load` line's words and a port's command-line options. */
typedef struct tl_options {
    const char *weights_dir; /* card-relative folder; NULL: the precision's (tl_weights_dir) */
    const char *precision;   /* "float32" or "int8"; must equal model_config.json "dtype" */
    int context;             /* context: 0 = max_position_embeddings, else min(that, context) */
    int chunk_rows;          /* chunk: rows per streamed chunk (lm_head, streamed matrices); 0: 256 */
    int no_flash;            /* flash=0: every streamed byte from the card, the flash tier left unused */
    int no_resident;         /* resident=0: stream every matrix from the card even if it would fit */
    size_t arena_bytes;      /* arena: memory budget; 0 = the port's whole arena, else at most that */
    int lm_head;             /* lm_head: TL_LM_HEAD_*, how a float32 set computes its logits */
    int max_candidates;      /* candidates: pruned lm_head's cap on candidate rows; 0: 512 */
} tl_options;

/* How a float32 set computes lm_head (docs/contracts.md §2, "pruned lm_head"):
 * AUTO uses the set's int8 proxy when it has one and its table fits the arena,
 * FULL always streams the float32 matrix, PRUNED requires the proxy. Pruned and
 * full give the same tokens and top-k logits, bit for bit. */
enum { TL_LM_HEAD_AUTO = 0, TL_LM_HEAD_FULL = 1, TL_LM_HEAD_PRUNED = 2 };

/* The card folder of a precision's weight set (docs/contracts.md §1):
 * "tinyllm_float32_weights" or "tinyllm_weights"; NULL for an unknown precision. */
const char *tl_weights_dir(const char *precision);

/* The codes of "TINYLLM_ERROR <CODE> <message>" (docs/contracts.md §5). */
enum {
    TL_OK = 0,
    TL_E_CONFIG,
    TL_E_FILE_MISSING,
    TL_E_FILE_SIZE,
    TL_E_CHECKSUM,
    TL_E_IO,
    TL_E_OOM,
    TL_E_PROMPT,
    TL_E_COMMAND,
    TL_E_NUMERIC, /* a NaN or infinity in an activation or logit (corrupt weights) */
    TL_E_CRASH,   /* a CPU exception (a port's fault handler) */
    TL_E_COUNT
};

/* Result of one command line. */
enum {
    TL_CMD_OK = 0,      /* command ran; TINYLLM_READY printed */
    TL_CMD_FAILED = 1,  /* TINYLLM_ERROR printed, then TINYLLM_READY */
    TL_CMD_QUIT = 2,    /* "quit": nothing printed, the port prints TINYLLM_EXIT */
    TL_CMD_IGNORED = 3  /* blank line or comment: nothing printed */
};

typedef struct tl_engine tl_engine;

/* Lays out the arena, checks config and files, loads resident weights.
 * Returns NULL after printing TINYLLM_ERROR on any start-up failure. */
tl_engine *tl_engine_init(const tl_port *port, const tl_options *opt);

/* Runs one command line (modified in place while parsing): gen, info, verify,
 * load, quit (docs/contracts.md §3). */
int tl_engine_exec(tl_engine *e, char *line);

/* tl_engine_exec for a line of `len` bytes as read (its newline may be
 * included): a NUL byte inside it would cut the command short, so such a line
 * is refused with E_COMMAND (TL_CMD_FAILED) instead of run. */
int tl_engine_exec_bytes(tl_engine *e, char *line, size_t len);

/* A console session: what a port's command loop counts. */
typedef struct tl_session {
    int failed; /* commands that printed TINYLLM_ERROR (TL_CMD_FAILED) */
    int quit;   /* 1 after "quit": the port stops reading and prints TINYLLM_EXIT */
} tl_session;

/* Runs one console line of `len` bytes as read (tl_engine_exec_bytes) and
 * counts it in *s. line == NULL: the line did not fit the port's buffer of
 * TL_LINE_BYTES; it is not run (its cut-off front could be a different
 * command): E_COMMAND and TINYLLM_READY. Returns the TL_CMD_* result. */
int tl_session_line(tl_engine *e, tl_session *s, char *line, size_t len);

/* A console line the port could not read whole (e.g. bytes of it lost on the way): not run;
 * the error line (code, message), TINYLLM_READY, and counted as failed in *s. */
void tl_session_refuse(tl_engine *e, tl_session *s, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* TINYLLM_EXIT's code for a session that ended: 1 if a command failed, else 0. */
int tl_session_exit_code(const tl_session *s);

/* Runs every line of a card-relative file (the boot prompt file) into *s.
 * Returns the number of its commands that failed, or -1 (nothing printed) if
 * the file does not exist. */
int tl_engine_run_script(tl_engine *e, const char *path, tl_session *s);

/* ---- options (options.c) ---- */

/* The weight-set layout options, one table for a `load` line and a port's command line,
 * with the same names: context, chunk, resident, arena, lm_head, candidates, spelled
 * `lm_head=full` in `load` and `--lm-head full` on a command line. Sets option `name` (either
 * spelling) of *o from `value` (NULL: none was given), checked against the option's range.
 * Returns TL_OK; TL_OPTION_UNKNOWN if the table has no such name (nothing written); else
 * TL_E_COMMAND with msg[msg_bytes] naming the option, the value and what it takes. *seen
 * (start at 0 for each line): an option given twice is an error, as for tl_option_index.
 * `arena`: on a port's command line the memory the port allocates (the engine's budget is
 * then all of it); in `load`, a budget within the port's arena. */
enum { TL_OPTION_UNKNOWN = -1, TL_OPTION_REPEATED = -2 };
int tl_option_set(tl_options *o, const char *name, const char *value, uint32_t *seen, char *msg, size_t msg_bytes);

/* The table as text in buf[n] (cut to fit), returned: TL_USAGE_LOAD "[context=N] [chunk=N] ...",
 * TL_USAGE_ARGS "[--context N] [--chunk N] ...", TL_USAGE_HELP one line per option with its help. */
enum { TL_USAGE_LOAD, TL_USAGE_ARGS, TL_USAGE_HELP };
const char *tl_option_usage(int style, char *buf, size_t n);

/* Parses a whole-word decimal count 0..max (digits only: no sign, no blanks) for a port's
 * own command-line options. Returns 0, or -1 (then *out is left alone). */
int tl_parse_count(const char *s, unsigned long long max, unsigned long long *out);

/* Index of `word` in names[0..n) (n <= 32), or TL_OPTION_UNKNOWN; TL_OPTION_REPEATED when
 * *seen already has its bit: which of two values should win would be a guess, so every
 * option list (a port's command line, `load`, `gen`) refuses a repeat. Sets the bit. */
int tl_option_index(const char *const *names, int n, const char *word, uint32_t *seen);

/* Output helpers shared with the ports. */
void tl_log(const tl_port *port, const char *tag, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void tl_exit_line(const tl_port *port, int code); /* "TINYLLM_EXIT <code>" */
/* "TINYLLM_ERROR <CODE> <message>" (code TL_E_*), the message formatted, then escaped
 * like every error line: for a port's own errors (a bad command-line option, no
 * arena, a missing host prompt file, a CPU exception), with or without an engine. */
void tl_port_error(const tl_port *port, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#endif
