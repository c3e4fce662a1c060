/*
 * The fuzz targets' port (fuzz_common.h): a card folder through pread, one arena, output
 * captured in a buffer, a deterministic clock; booting an engine on it, running a line and
 * putting the engine back after an input. The output checks are fuzz_check.c's.
 */
#include "fuzz_common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A deterministic clock: every reading advances it, so step times are never
 * zero and every run of an input prints the same numbers. */
static uint64_t fz_time_us(void *ctx)
{
    fz_port *p = (fz_port *)ctx;
    p->clock += 137;
    return p->clock;
}

static uint64_t fz_cycles(void *ctx)
{
    fz_port *p = (fz_port *)ctx;
    p->clock += 3;
    return p->clock * 240u;
}

#define FZ_MAX_OUTPUT (64u << 20)

static void fz_write(void *ctx, const char *text, size_t n)
{
    fz_port *p = (fz_port *)ctx;
    if (n > FZ_MAX_OUTPUT - p->out_len) fz_break("more than 64 MiB of output for one input", p->out, p->out_len);
    if (p->out_len + n > p->out_cap) {
        size_t cap = p->out_cap ? p->out_cap : 65536;
        while (cap < p->out_len + n) cap *= 2;
        char *grown = (char *)realloc(p->out, cap);
        if (!grown) {
            fprintf(stderr, "fuzz port: out of memory for output\n");
            exit(2);
        }
        p->out = grown;
        p->out_cap = cap;
    }
    memcpy(p->out + p->out_len, text, n);
    p->out_len += n;
}

void fz_port_init(fz_port *p, const char *root, size_t arena_bytes)
{
    memset(p, 0, sizeof *p);
    if (strlen(root) >= sizeof p->root) {
        fprintf(stderr, "fuzz port: card path too long: %s\n", root);
        exit(2);
    }
    memcpy(p->root, root, strlen(root) + 1);
    p->card.root = p->root;
    void *arena = malloc(arena_bytes);
    if (!arena) {
        fprintf(stderr, "fuzz port: cannot allocate an arena of %lu bytes\n", (unsigned long)arena_bytes);
        exit(2);
    }
    /* The chunk buffer the linux port hands the core by default (the ESP32's internal SRAM
     * buffer), malloc'd at its exact size so that ASan sees a read or write past its end;
     * TINYLLM_FUZZ_CHUNK_BUFFER_BYTES=0 leaves it out (every chunk in the arena). */
    void *chunk = NULL;
    size_t chunk_bytes = 0;
#ifdef TL_DEFAULT_CHUNK_BUFFER_BYTES
    chunk_bytes = TL_DEFAULT_CHUNK_BUFFER_BYTES;
    const char *env = getenv("TINYLLM_FUZZ_CHUNK_BUFFER_BYTES");
    if (env && *env) chunk_bytes = (size_t)strtoul(env, NULL, 10);
    if (chunk_bytes && !(chunk = malloc(chunk_bytes))) {
        fprintf(stderr, "fuzz port: cannot allocate a chunk buffer of %lu bytes\n", (unsigned long)chunk_bytes);
        exit(2);
    }
#endif
    p->port = (tl_port){
        .ctx = p, /* its first member is the posix_card the storage calls take */
        .time_us = fz_time_us,
        .cycles = fz_cycles,
        .settle = NULL,
        .write = fz_write,
        .arena = arena,
        .arena_bytes = arena_bytes,
    };
    posix_card_storage(&p->port);
#ifdef TL_DEFAULT_CHUNK_BUFFER_BYTES
    p->port.chunk_buffer = chunk;
    p->port.chunk_buffer_bytes = chunk_bytes;
#else
    (void)chunk;
    (void)chunk_bytes;
#endif
}

void fz_reset_output(fz_port *p)
{
    p->out_len = 0;
    p->clock = 0;
}

static int is_dir(const char *root, const char *sub)
{
    char path[8192];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s/model_config.json", root, sub);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

const char *fz_card_from_env(void)
{
    const char *card = getenv("TINYLLM_FUZZ_CARD");
    if (!card || !*card) {
        fprintf(stderr, "TINYLLM_FUZZ_CARD is not set: it must name a micro card folder, e.g. made with\n"
                        "  .venv/bin/tinyllm-harness export --model micro --out build/fuzz/card\n"
                        "(ci/fuzz.sh makes and uses build/fuzz/card)\n");
        exit(2);
    }
    if (!is_dir(card, "tinyllm_float32_weights") || !is_dir(card, "tinyllm_weights")) {
        fprintf(stderr, "TINYLLM_FUZZ_CARD=%s is not a card folder: it needs tinyllm_float32_weights/ and "
                        "tinyllm_weights/ with their model_config.json (tinyllm-harness export --model micro)\n",
                card);
        exit(2);
    }
    return card;
}

tl_engine *fz_boot_engine(fz_port *p, const char *root)
{
    fz_port_init(p, root, TL_DEFAULT_ARENA_BYTES);
    tl_options opt = {.precision = "float32", .context = FZ_CONTEXT};
    fz_reset_output(p);
    tl_engine *e = tl_engine_init(&p->port, &opt);
    if (!e) {
        fprintf(stderr, "fuzz: the engine did not boot on %s:\n%.*s\n", root, (int)p->out_len, p->out);
        exit(2);
    }
    fz_check_lines(p->out, p->out_len);
    fz_check_command(p->out, p->out_len, TL_CMD_OK);
    p->boot_handles = p->card.open_handles;
    return e;
}

/* TINYLLM_FUZZ_ECHO=1: every command's output goes to stderr too (to read what a reproducer does). */
void fz_echo(const fz_port *p)
{
    static int echo = -1;
    if (echo < 0) echo = getenv("TINYLLM_FUZZ_ECHO") && strcmp(getenv("TINYLLM_FUZZ_ECHO"), "1") == 0;
    if (echo) fwrite(p->out, 1, p->out_len, stderr);
}

int fz_exec_checked(tl_engine *e, fz_port *p, const char *line, size_t len)
{
    char *copy = (char *)malloc(len + 1);
    if (!copy) {
        fprintf(stderr, "fuzz: out of memory\n");
        exit(2);
    }
    memcpy(copy, line, len);
    copy[len] = '\0'; /* as getline leaves it: the engine parses up to the NUL */
    fz_reset_output(p);
    int r = tl_engine_exec_bytes(e, copy, len);
    free(copy);
    fz_echo(p);
    fz_check_lines(p->out, p->out_len);
    fz_check_command(p->out, p->out_len, r);
    return r;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

void fz_first_word(const char *line, size_t len, const char **start, size_t *n)
{
    size_t i = 0;
    while (i < len && is_space(line[i])) i++;
    size_t j = i;
    while (j < len && line[j] && !is_space(line[j])) j++;
    *start = line + i;
    *n = j - i;
}

static int word_is(const char *w, size_t n, const char *want) { return n == strlen(want) && memcmp(w, want, n) == 0; }

int fz_changes_state(const char *line, size_t len)
{
    const char *w;
    size_t n;
    if (memchr(line, '\0', len)) return 0; /* refused whole */
    fz_first_word(line, len, &w, &n);
    return word_is(w, n, "load") || word_is(w, n, "fault");
}

/* 1 if `value` (n bytes) is a context= value the engine takes, above FZ_CONTEXT: parsed by
 * the core's own option table, as the engine parses it. */
static int context_lifts(const char *value, size_t n)
{
    char v[64], msg[160];
    if (n >= sizeof v) return 0; /* longer than any count the table takes */
    memcpy(v, value, n);
    v[n] = '\0';
    tl_options o = {.context = 0};
    uint32_t seen = 0;
    return tl_option_set(&o, "context", v, &seen, msg, sizeof msg) == TL_OK && o.context > FZ_CONTEXT;
}

int fz_load_lifts_context(const char *line, size_t len)
{
    const char *w;
    size_t n;
    if (memchr(line, '\0', len)) return 0;
    fz_first_word(line, len, &w, &n);
    if (!word_is(w, n, "load")) return 0;
    const char *end = line + len;
    for (const char *p = w + n; p < end;) {
        while (p < end && is_space(*p)) p++;
        const char *q = p;
        while (q < end && !is_space(*q)) q++;
        if (q - p > 8 && memcmp(p, "context=", 8) == 0 && context_lifts(p + 8, (size_t)(q - p) - 8)) return 1;
        p = q;
    }
    return 0;
}

void fz_end_input(tl_engine *e, fz_port *p, int dirty)
{
    static const char fault_off[] = "fault off\n", reload[] = "load float32\n";
    if (dirty && fz_exec_checked(e, p, fault_off, sizeof fault_off - 1) != TL_CMD_OK)
        fz_break("the engine refused 'fault off' after this input", p->out, p->out_len);
    if (dirty && fz_exec_checked(e, p, reload, sizeof reload - 1) != TL_CMD_OK)
        fz_break("the engine could not load its boot set again after this input (it stopped answering)", p->out,
                 p->out_len);
    if (p->card.open_handles != p->boot_handles) {
        char what[160];
        snprintf(what, sizeof what, "file handles leaked: %d open after this input, %d after boot",
                 p->card.open_handles, p->boot_handles);
        fz_break(what, p->out, p->out_len);
    }
}

void fz_write_file(const char *path, const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t done = 0;
    while (fd >= 0 && done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += (size_t)n;
    }
    if (fd < 0 || done != size || close(fd) != 0) {
        fprintf(stderr, "fuzz: cannot write %s: %s\n", path, strerror(errno));
        exit(2);
    }
}
