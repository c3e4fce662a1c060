/*
 * Linux host port: the card is a folder, storage is pread(), the console is
 * stdin/stdout, the arena is one malloc of the board's memory budget.
 *
 *   tinyllm --card DIR [--precision float32|int8] [--prompts FILE|none] [--chunk-buffer-bytes N]
 *           [--flash-tier FILE] [--context N] [--chunk N] [--resident 0|1] [--arena N] [--lm-head M] [--candidates N]
 *
 * The options of the second line are the core's table (options.c), the same as `load`'s;
 * --arena is the size of the arena this port allocates.
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
    char args[256], help[1024];
    fprintf(f,
            "usage: tinyllm --card DIR [--precision float32|int8] [--prompts FILE|none] [--chunk-buffer-bytes N]\n"
            "               [--flash-tier FILE] %s\n"
            "  --card DIR                 card root: DIR/tinyllm_float32_weights or DIR/tinyllm_weights\n"
            "  --precision P              float32 (default) or int8\n"
            "  --prompts FILE             prompt file run at start-up (default DIR/prompts.txt if present;\n"
            "                             'none' disables); then commands are read from stdin\n"
            "  --chunk-buffer-bytes N     the port's chunk buffer outside the arena, as the ESP32 app's\n"
            "                             internal SRAM one (default %u; 0: chunks in the arena) [0..%u]\n"
            "  --flash-tier FILE          a file standing in for the ESP32 app's weights partition (the\n"
            "                             flash tier: `tinyllm-harness flash-tier` makes it)\n"
            "the weight-set layout, as `load`'s options (--lm-head M is load's lm_head=M):\n%s",
            tl_option_usage(TL_USAGE_ARGS, args, sizeof args), TL_DEFAULT_CHUNK_BUFFER_BYTES,
            TL_DEFAULT_CHUNK_BUFFER_BYTES, tl_option_usage(TL_USAGE_HELP, help, sizeof help));
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

/* The command line. The port's own options are its flags[]; every other one is the core's
 * table of layout options (tl_option_set) or unknown. Each option at most once (which of two
 * should win would be a guess). Returns -1 to go on, or the exit code: 0 after --help, 2
 * after a bad option (its error and exit lines printed). */
typedef struct args {
    const char *card, *prompts, *flash_tier;
    unsigned long long chunk_buffer_bytes;
    tl_options opt; /* the precision, and the layout options */
} args;

static int parse_args(const tl_port *port, int argc, char **argv, args *a)
{
    enum { F_CARD, F_PRECISION, F_PROMPTS, F_CHUNK_BUFFER, F_FLASH_TIER, F_COUNT };
    static const char *const flags[F_COUNT] = {"--card", "--precision", "--prompts", "--chunk-buffer-bytes",
                                               "--flash-tier"};
    uint32_t seen = 0, seen_layout = 0;
    char msg[200];
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        int f = tl_option_index(flags, F_COUNT, name, &seen);
        if (f == TL_OPTION_REPEATED) return bad_usage(port, "option given twice", name);
        if (f == TL_OPTION_UNKNOWN) {
            int rc = tl_option_set(&a->opt, name, val, &seen_layout, msg, sizeof msg);
            if (rc == TL_OPTION_UNKNOWN) return bad_usage(port, "unknown option", name);
            if (rc != TL_OK) return bad_usage(port, msg, NULL);
            i++;
            continue;
        }
        if (!val || !*val) return bad_usage(port, name, "(missing value)");
        i++;
        int bad = 0;
        switch (f) {
        case F_CARD: a->card = val; break;
        case F_PRECISION: a->opt.precision = val; break;
        case F_PROMPTS: a->prompts = val; break;
        case F_FLASH_TIER: a->flash_tier = val; break;
        default: bad = tl_parse_count(val, TL_DEFAULT_CHUNK_BUFFER_BYTES, &a->chunk_buffer_bytes); break;
        }
        if (bad) return bad_usage(port, name, val);
    }
    if (!a->card) return bad_usage(port, "--card DIR is required", NULL);
    if (strcmp(a->opt.precision, "float32") != 0 && strcmp(a->opt.precision, "int8") != 0)
        return bad_usage(port, "--precision (expected float32 or int8)", a->opt.precision);
    return -1;
}

/* The start-up prompts: the card's prompts.txt if there is one, else the host file
 * --prompts names ('none': no prompts). Returns -1 if that named file cannot be run
 * (its error line printed): a start-up error. */
static int run_start_prompts(tl_engine *e, tl_session *s, const tl_port *port, const char *prompts)
{
    if (prompts == NULL) {
        tl_engine_run_script(e, "prompts.txt", s); /* optional, card-rooted */
    } else if (strcmp(prompts, "none") != 0 && run_host_prompts(e, s, prompts) < 0) {
        /* An explicitly named prompt file that is missing is a start-up error. */
        tl_port_error(port, TL_E_FILE_MISSING, "%s: prompt file not found or not a regular file", prompts);
        return -1;
    }
    return 0;
}

/* Output that could not be written (a full disk, a closed pipe) is a failed run, said on
 * stderr: the protocol lines themselves are what was lost. Returns the exit code. */
static int check_output(int code)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "tinyllm: cannot write the output (stdout): %s\n", strerror(errno));
        return code ? code : 1;
    }
    return code;
}

int main(int argc, char **argv)
{
    posix_port pp = {{NULL, 0, NULL}, {0, 0}};
    clock_gettime(CLOCK_MONOTONIC, &pp.start);
    tl_port port = {.ctx = &pp, .time_us = posix_time_us, .cycles = posix_cycles, .write = posix_write};
    posix_card_storage(&port);
    /* --arena sizes the arena this port allocates; the engine's budget is then all of it
     * (tl_options' arena_bytes: `load ... arena=N` can only ask for less) */
    args a = {NULL, NULL, NULL, TL_DEFAULT_CHUNK_BUFFER_BYTES,
              {.precision = "float32", .arena_bytes = TL_DEFAULT_ARENA_BYTES}};
    int done = parse_args(&port, argc, argv, &a);
    if (done >= 0) return done;
    const char *card = a.card, *precision = a.opt.precision;
    size_t arena_bytes = a.opt.arena_bytes;
    pp.card.root = card;
    pp.card.flash_tier = a.flash_tier;

    void *arena = malloc(arena_bytes);
    if (!arena) {
        tl_port_error(&port, TL_E_OOM, "cannot allocate an arena of %llu bytes", (unsigned long long)arena_bytes);
        tl_exit_line(&port, 2);
        return 2;
    }
    port.arena = arena;
    port.arena_bytes = arena_bytes;
    port.chunk_buffer = a.chunk_buffer_bytes ? chunk_buffer : NULL;
    port.chunk_buffer_bytes = (size_t)a.chunk_buffer_bytes;

    tl_log(&port, "app_main", "Tiny-LLM ESP32 Inference Engine Starting");
    tl_log(&port, "app_main", "Linux port: card %s, precision %s, arena %llu bytes", card, precision,
           (unsigned long long)arena_bytes);
    tl_engine *e = tl_engine_init(&port, &a.opt);
    tl_session session = {0, 0};
    if (!e || run_start_prompts(e, &session, &port, a.prompts) < 0) {
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
    return check_output(code);
}
