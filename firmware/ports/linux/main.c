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
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tinyllm/tinyllm.h"

#if defined(__SANITIZE_ADDRESS__)
/* The ASan build: an arena too big to allocate is E_OOM like in the plain build, not an
 * ASan abort (ASan's allocator would otherwise treat a huge malloc as a fatal error). */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }
#endif

/* The ESP32 app's arena, so residency and memory figures here are the board's. */
#define DEFAULT_ARENA_BYTES TL_DEFAULT_ARENA_BYTES

/* The app's internal-SRAM chunk buffer (port.h), so the arena's layout is the board's. */
static _Alignas(16) unsigned char chunk_buffer[TL_DEFAULT_CHUNK_BUFFER_BYTES];

typedef struct posix_port {
    const char *card_dir;
    struct timespec start;
} posix_port;

static int32_t open_error(int err)
{
    if (err == ENOENT || err == ENOTDIR) return TL_OPEN_NOT_FOUND;
    if (err == EACCES || err == EPERM) return TL_OPEN_DENIED;
    return TL_OPEN_FAILED;
}

static int32_t posix_open(void *ctx, const char *path)
{
    const posix_port *p = (const posix_port *)ctx;
    char full[4096];
    int n = snprintf(full, sizeof full, "%s/%s", p->card_dir, path);
    if (n < 0 || (size_t)n >= sizeof full) return -1;
    /* stat first: opening a named pipe would block until a writer appears */
    struct stat st;
    if (stat(full, &st) != 0) return open_error(errno);
    if (!S_ISREG(st.st_mode)) return TL_OPEN_NOT_A_FILE;
    int fd = open(full, O_RDONLY | O_NONBLOCK); /* non-blocking: in case it changed since stat */
    if (fd < 0) return open_error(errno);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return TL_OPEN_NOT_A_FILE;
    }
    return (int32_t)fd;
}

static int64_t posix_size(void *ctx, int32_t h)
{
    (void)ctx;
    struct stat st;
    if (fstat(h, &st) != 0) return -1;
    return (int64_t)st.st_size;
}

static int64_t posix_read_at(void *ctx, int32_t h, uint64_t offset, void *buf, size_t n)
{
    (void)ctx;
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(h, (char *)buf + done, n - done, (off_t)(offset + done));
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (got == 0) break; /* end of file */
        done += (size_t)got;
    }
    return (int64_t)done;
}

static void posix_close(void *ctx, int32_t h)
{
    (void)ctx;
    close(h);
}

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
            "  --context N       max positions (default max_position_embeddings)\n"
            "  --chunk-rows N    rows per streamed chunk (default 256)\n"
            "  --no-resident     stream every matrix from the card at every use\n"
            "  --lm-head MODE    float32 logits: auto (default: pruned through lm_head_proxy.bin when\n"
            "                    the set has it), full (stream the float32 lm_head), pruned (require it)\n"
            "  --max-candidates N  pruned lm_head: a step with more candidate rows streams it in full\n"
            "                    (1..512, default 512)\n"
            "  --chunk-buffer-bytes N  the port's chunk buffer outside the arena, as the ESP32 app's\n"
            "                    internal SRAM one (0..%u, default %u; 0: chunks in the arena)\n",
            DEFAULT_ARENA_BYTES, TL_DEFAULT_CHUNK_BUFFER_BYTES, TL_DEFAULT_CHUNK_BUFFER_BYTES);
}

static int parse_count(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    if (!s || !*s || *s == '-') return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max) return -1;
    *out = v;
    return 0;
}

/* Runs a host-side prompt file (--prompts FILE). Returns failed commands, sets *quit. */
static int run_host_prompts(tl_engine *e, const char *path, int *quit)
{
    *quit = 0;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return -1; /* a pipe would block */
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    int failed = 0;
    ssize_t n;
    while (!*quit && (n = getline(&line, &cap, f)) >= 0) {
        int r = tl_engine_exec_bytes(e, line, (size_t)n);
        if (r == TL_CMD_FAILED) failed++;
        if (r == TL_CMD_QUIT) *quit = 1;
    }
    free(line);
    fclose(f);
    return failed;
}

/* A bad command line: the protocol's error and exit lines (the harness reads
 * them like any other start-up error), then the usage on stderr. */
static int bad_usage(const tl_port *port, const char *what, const char *value)
{
    if (value) tl_command_error(port, "bad argument: %s '%s' (see --help)", what, value);
    else tl_command_error(port, "bad argument: %s (see --help)", what);
    tl_exit_line(port, 2);
    usage(stderr);
    return 2;
}

int main(int argc, char **argv)
{
    const char *card = NULL, *precision = "float32", *prompts = NULL;
    unsigned long long arena_bytes = DEFAULT_ARENA_BYTES, context = 0, chunk_rows = 0, max_candidates = 0;
    unsigned long long chunk_buffer_bytes = TL_DEFAULT_CHUNK_BUFFER_BYTES;
    int no_resident = 0, lm_head = TL_LM_HEAD_AUTO;
    posix_port pp = {card, {0, 0}};
    clock_gettime(CLOCK_MONOTONIC, &pp.start);
    tl_port port = {
        .ctx = &pp,
        .open = posix_open,
        .size = posix_size,
        .read_at = posix_read_at,
        .close = posix_close,
        .time_us = posix_time_us,
        .cycles = posix_cycles,
        .write = posix_write,
    };

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, takes_value = 1; /* bad: the option's value is wrong */
        if (strcmp(a, "--card") == 0 && val) card = val;
        else if (strcmp(a, "--precision") == 0 && val) precision = val;
        else if (strcmp(a, "--prompts") == 0 && val) prompts = val;
        else if (strcmp(a, "--arena-bytes") == 0) bad = parse_count(val, (size_t)-1 / 2, &arena_bytes);
        else if (strcmp(a, "--context") == 0) bad = parse_count(val, 1u << 24, &context);
        else if (strcmp(a, "--chunk-rows") == 0) bad = parse_count(val, 1u << 24, &chunk_rows);
        else if (strcmp(a, "--lm-head") == 0) bad = (lm_head = tl_lm_head_mode(val)) < 0;
        else if (strcmp(a, "--max-candidates") == 0) bad = parse_count(val, 512, &max_candidates) || !max_candidates;
        else if (strcmp(a, "--chunk-buffer-bytes") == 0)
            bad = parse_count(val, TL_DEFAULT_CHUNK_BUFFER_BYTES, &chunk_buffer_bytes);
        else if (strcmp(a, "--no-resident") == 0) {
            no_resident = 1;
            takes_value = 0;
        }
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else return bad_usage(&port, "unknown option or missing value", a);
        if (bad) return bad_usage(&port, a, val ? val : "(missing value)");
        i += takes_value;
    }
    if (!card) return bad_usage(&port, "--card DIR is required", NULL);
    if (strcmp(precision, "float32") != 0 && strcmp(precision, "int8") != 0)
        return bad_usage(&port, "--precision (expected float32 or int8)", precision);
    pp.card_dir = card;

    void *arena = malloc(arena_bytes ? (size_t)arena_bytes : 1u);
    if (!arena) {
        char msg[120];
        snprintf(msg, sizeof msg, "TINYLLM_ERROR E_OOM cannot allocate an arena of %llu bytes\n", arena_bytes);
        posix_write(&pp, msg, strlen(msg));
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

    int failed = 0, quit = 0;
    if (prompts == NULL) {
        int r = tl_engine_run_script(e, "prompts.txt", &quit); /* optional, card-rooted */
        if (r > 0) failed += r;
    } else if (strcmp(prompts, "none") != 0) {
        int r = run_host_prompts(e, prompts, &quit);
        if (r < 0) {
            /* An explicitly named prompt file that is missing is a start-up error. */
            tl_file_missing_error(&port, "%s: prompt file not found or not a regular file", prompts); /* escaped */
            tl_exit_line(&port, 2);
            free(arena);
            return 2;
        }
        failed += r;
    }

    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while (!quit && (n = getline(&line, &cap, stdin)) >= 0) {
        int r = tl_engine_exec_bytes(e, line, (size_t)n);
        if (r == TL_CMD_FAILED) failed++;
        if (r == TL_CMD_QUIT) quit = 1;
    }
    free(line);
    int code = failed ? 1 : 0;
    tl_exit_line(&port, code);
    free(arena);
    return code;
}
