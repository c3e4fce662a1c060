/*
 * Linux host port: the card is a folder, storage is pread(), the console is
 * stdin/stdout, the arena is one malloc of the board's memory budget.
 *
 *   tinyllm --card DIR [--precision float32|int8] [--prompts FILE|none]
 *           [--arena-bytes N] [--context N] [--chunk-rows N] [--no-resident] [--lm-head M]
 *           [--max-candidates N] [--chunk-buffer-bytes N]
 *
 * Exit codes: 0 ok, 1 a command failed, 2 start-up error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "posix_card.h"
#include "tinyllm/tinyllm.h"

#if defined(__SANITIZE_ADDRESS__)
/* The ASan build: an arena too big to allocate is E_OOM like in the plain build, not an
 * ASan abort (ASan's allocator would otherwise treat a huge malloc as a fatal error). */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }
#endif

/* The app's internal-SRAM chunk buffer (port.h), so the arena's layout is the board's. */
static _Alignas(16) unsigned char chunk_buffer[TL_DEFAULT_CHUNK_BUFFER_BYTES];

typedef struct posix_port {
    posix_card card; /* first: the storage calls take the port's ctx as a posix_card */
    struct timespec start;
} posix_port;

static uint64_t elapsed_ns(const posix_port *p)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t ns = (int64_t)(now.tv_sec - p->start.tv_sec) * 1000000000 + (now.tv_nsec - p->start.tv_nsec);
    return (uint64_t)ns;
}

static uint64_t posix_time_us(void *ctx) { return elapsed_ns((const posix_port *)ctx) / 1000u; }

/* No portable cycle counter: nanoseconds stand in for cycles on the host. */
static uint64_t posix_cycles(void *ctx) { return elapsed_ns((const posix_port *)ctx); }

static void posix_write(void *ctx, const char *text, size_t n)
{
    (void)ctx;
    fwrite(text, 1, n, stdout);
    if (n && text[n - 1] == '\n') fflush(stdout); /* the harness reads us through a pipe */
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tinyllm --card DIR [--precision float32|int8] [--prompts FILE|none]\n"
            "               [--arena-bytes N] [--context N] [--chunk-rows N] [--no-resident]\n"
            "               [--lm-head auto|full|pruned] [--max-candidates N] [--chunk-buffer-bytes N]\n"
            "  --card DIR        card root: DIR/tinyllm_float32_weights or DIR/tinyllm_weights\n"
            "  --precision P     float32 (default) or int8\n"
            "  --prompts FILE    prompt file run at start-up (default DIR/prompts.txt if present;\n"
            "                    'none' disables); then commands are read from stdin\n"
            "  --arena-bytes N   memory budget (default %u = the ESP32 app's 3840 KiB PSRAM arena)\n"
            "  --context N       max positions, 1.. (default max_position_embeddings)\n"
            "  --chunk-rows N    rows per streamed chunk, 1.. (default 256)\n"
            "  --no-resident     stream every matrix from the card at every use\n"
            "  --lm-head MODE    float32 logits: auto (default: pruned through lm_head_proxy.bin when\n"
            "                    the set has it), full (stream the float32 lm_head), pruned (require it)\n"
            "  --max-candidates N  pruned lm_head: a step with more candidate rows streams it in full\n"
            "                    (1..512, default 512)\n"
            "  --chunk-buffer-bytes N  the port's chunk buffer outside the arena, as the ESP32 app's\n"
            "                    internal SRAM one (0..%u, default %u; 0: chunks in the arena)\n",
            TL_DEFAULT_ARENA_BYTES, TL_DEFAULT_CHUNK_BUFFER_BYTES, TL_DEFAULT_CHUNK_BUFFER_BYTES);
}

/* Runs a stream's lines (a --prompts FILE, then stdin) into the session until it ends or quits. */
/* Runs every line of f. Returns -1 if reading f failed (not at its end: an error, e.g. stdin
 * a directory), with errno set. */
static int run_lines(tl_engine *e, tl_session *s, FILE *f)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    errno = 0;
    while (!s->quit && (n = getline(&line, &cap, f)) >= 0) tl_session_line(e, s, line, (size_t)n);
    int failed = ferror(f) ? -1 : 0;
    int saved = errno;
    free(line);
    errno = saved;
    return failed;
}

/* Runs a host-side prompt file (--prompts FILE). Returns -1 if it is not a regular file. */
static int run_host_prompts(tl_engine *e, tl_session *s, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return -1; /* a pipe would block */
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    run_lines(e, s, f);
    fclose(f);
    return 0;
}

/* A bad command line: the protocol's error and exit lines (the harness reads
 * them like any other start-up error), then the usage on stderr. */
static int bad_usage(const tl_port *port, const char *what, const char *value)
{
    if (value) tl_port_error(port, TL_E_COMMAND, "bad argument: %s '%s' (see --help)", what, value);
    else tl_port_error(port, TL_E_COMMAND, "bad argument: %s (see --help)", what);
    tl_exit_line(port, 2);
    usage(stderr);
    return 2;
}

int main(int argc, char **argv)
{
    const char *card = NULL, *precision = "float32", *prompts = NULL;
    unsigned long long arena_bytes = TL_DEFAULT_ARENA_BYTES, context = 0, chunk_rows = 0, max_candidates = 0;
    unsigned long long chunk_buffer_bytes = TL_DEFAULT_CHUNK_BUFFER_BYTES;
    int no_resident = 0, lm_head = TL_LM_HEAD_AUTO;
    posix_port pp = {{card, 0}, {0, 0}};
    clock_gettime(CLOCK_MONOTONIC, &pp.start);
    tl_port port = {.ctx = &pp, .time_us = posix_time_us, .cycles = posix_cycles, .write = posix_write};
    posix_card_storage(&port);

    /* Each option at most once (which of two should win would be a guess); counts from 1 where
     * 0 would silently mean "the default", as `load` refuses context=0 and chunk=0. */
    enum { F_CARD, F_PRECISION, F_PROMPTS, F_ARENA, F_CONTEXT, F_CHUNK_ROWS, F_LM_HEAD, F_CANDIDATES, F_CHUNK_BUFFER,
           F_NO_RESIDENT, F_COUNT };
    static const char *const flags[F_COUNT] = {"--card", "--precision", "--prompts", "--arena-bytes", "--context",
                                               "--chunk-rows", "--lm-head", "--max-candidates",
                                               "--chunk-buffer-bytes", "--no-resident"};
    uint32_t seen = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        int f = tl_option_index(flags, F_COUNT, a, &seen);
        if (f == TL_OPTION_UNKNOWN) return bad_usage(&port, "unknown option", a);
        if (f == TL_OPTION_REPEATED) return bad_usage(&port, "option given twice", a);
        if (f == F_NO_RESIDENT) {
            no_resident = 1;
            continue;
        }
        const char *val = i + 1 < argc ? argv[++i] : NULL;
        int bad = !val || !*val;
        if (bad) return bad_usage(&port, a, "(missing value)");
        switch (f) {
        case F_CARD: card = val; break;
        case F_PRECISION: precision = val; break;
        case F_PROMPTS: prompts = val; break;
        case F_ARENA: bad = tl_parse_count(val, (size_t)-1 / 2, &arena_bytes); break;
        case F_CONTEXT: bad = tl_parse_count(val, 1u << 24, &context) || !context; break;
        case F_CHUNK_ROWS: bad = tl_parse_count(val, 1u << 24, &chunk_rows) || !chunk_rows; break;
        case F_LM_HEAD: bad = (lm_head = tl_lm_head_mode(val)) < 0; break;
        case F_CANDIDATES: bad = tl_parse_count(val, 512, &max_candidates) || !max_candidates; break;
        default: bad = tl_parse_count(val, TL_DEFAULT_CHUNK_BUFFER_BYTES, &chunk_buffer_bytes); break;
        }
        if (bad) return bad_usage(&port, a, val);
    }
    if (!card) return bad_usage(&port, "--card DIR is required", NULL);
    if (strcmp(precision, "float32") != 0 && strcmp(precision, "int8") != 0)
        return bad_usage(&port, "--precision (expected float32 or int8)", precision);
    pp.card.root = card;

    void *arena = malloc(arena_bytes ? (size_t)arena_bytes : 1u);
    if (!arena) {
        tl_port_error(&port, TL_E_OOM, "cannot allocate an arena of %llu bytes", arena_bytes);
        tl_exit_line(&port, 2);
        return 2;
    }
    port.arena = arena;
    port.arena_bytes = (size_t)arena_bytes;
    port.chunk_buffer = chunk_buffer_bytes ? chunk_buffer : NULL;
    port.chunk_buffer_bytes = (size_t)chunk_buffer_bytes;
    tl_options opt = {
        .precision = precision,
        .context = (int)context,
        .chunk_rows = (int)chunk_rows,
        .no_resident = no_resident,
        .lm_head = lm_head,
        .max_candidates = (int)max_candidates,
    };

    tl_log(&port, "app_main", "Tiny-LLM ESP32 Inference Engine Starting");
    tl_log(&port, "app_main", "Linux port: card %s, precision %s, arena %llu bytes", card, precision, arena_bytes);
    tl_engine *e = tl_engine_init(&port, &opt);
    if (!e) {
        tl_exit_line(&port, 2);
        free(arena);
        return 2;
    }

    tl_session session = {0, 0};
    if (prompts == NULL) {
        tl_engine_run_script(e, "prompts.txt", &session); /* optional, card-rooted */
    } else if (strcmp(prompts, "none") != 0 && run_host_prompts(e, &session, prompts) < 0) {
        /* An explicitly named prompt file that is missing is a start-up error. */
        tl_port_error(&port, TL_E_FILE_MISSING, "%s: prompt file not found or not a regular file", prompts);
        tl_exit_line(&port, 2);
        free(arena);
        return 2;
    }
    if (run_lines(e, &session, stdin) < 0) {
        tl_port_error(&port, TL_E_IO, "cannot read commands from stdin: %s", strerror(errno));
        session.failed = 1;
    }
    int code = tl_session_exit_code(&session);
    tl_exit_line(&port, code);
    free(arena);
    /* Output that could not be written (a full disk, a closed pipe) is a failed run, said on
     * stderr: the protocol lines themselves are what was lost. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "tinyllm: cannot write the output (stdout): %s\n", strerror(errno));
        return code ? code : 1;
    }
    return code;
}
