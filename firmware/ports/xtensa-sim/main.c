/*
 * xtensa-sim port: the portable core, bare metal on QEMU `-M sim -cpu lx106`.
 *
 * Everything the core needs from a platform comes through Xtensa ISS semihosting
 * (`simcall`): the console is the host's stdin/stdout, the card is a host folder (the
 * files mtools extracted from the FAT image), and exit ends QEMU with our exit code.
 * Arguments come from `-semihosting-config enable=on,arg=...`:
 *
 *   tinyllm --card DIR [--precision float32|int8] [--prompts card|none] [--chunk-buffer-bytes N]
 *           [--flash-tier FILE] [--context N] [--chunk N] [--resident 0|1] [--arena N] [--lm-head M] [--candidates N]
 *           [--selftest-exception]   (executes an illegal instruction: tests the vectors)
 *
 * The options of the second line are the core's table (options.c), the same as `load`'s;
 * --arena is the size of the arena this port hands the core (at most the RAM the linker
 * script leaves it).
 *
 * Cycles: under `-icount shift=0,sleep=off` QEMU advances virtual time by 1 ns per
 * executed instruction and CCOUNT ticks at the core's clock, so CCOUNT is
 * deterministic up to one tick (its phase against the instruction count is set at
 * QEMU's reset, not always the same). It is reported scaled to executed instructions (the scale is
 * measured at start-up on a loop of known length): "cycles" on this target are the
 * instructions of an ideal one-instruction-per-cycle core, and "us" is virtual time.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinyllm/tinyllm.h"

/* The app's internal-SRAM chunk buffer (port.h), as on linux. */
static _Alignas(16) unsigned char chunk_buffer[TL_DEFAULT_CHUNK_BUFFER_BYTES];

/* The console line buffer: up to TL_LINE_BYTES - 1 bytes and the NUL, as on the ESP32. */
#define LINE_MAX_BYTES (TL_LINE_BYTES - 1u)

enum { SYS_EXIT = 1, SYS_READ = 3, SYS_WRITE = 4, SYS_OPEN = 5, SYS_CLOSE = 6, SYS_LSEEK = 19,
       SYS_ARGC = 1000, SYS_ARGV_SZ = 1001, SYS_ARGV = 1002 };

long tl_sim_simcall(long nr, long a, long b, long c);
void tl_sim_spin(unsigned n);
uint32_t tl_sim_ccount(void);

extern char __bss_start[], __bss_end[], __arena_start[], __arena_end[];

/* ---- console and exit ------------------------------------------------------------ */

static void sim_write_all(const char *s, size_t n)
{
    while (n > 0) {
        long w = tl_sim_simcall(SYS_WRITE, 1, (long)s, (long)n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void sim_console(void *ctx, const char *text, size_t n)
{
    (void)ctx;
    sim_write_all(text, n);
}

/* Enough of a port for error and exit lines before (or without) the whole one. */
static const tl_port console = {.write = sim_console};

static _Noreturn void sim_exit(int code)
{
    for (;;) tl_sim_simcall(SYS_EXIT, code, 0, 0);
}

/* Called from the exception vectors (startup.S): a fault is an error line, not a hang. */
_Noreturn void tl_sim_fatal(long vector, long cause, long pc, long vaddr)
{
    static const char *const names[] = {"user", "kernel", "debug/level-2", "NMI", "double"};
    tl_port_error(&console, TL_E_CRASH, "%s exception: cause %ld at pc 0x%08lx (address 0x%08lx)",
                  vector >= 0 && vector < 5 ? names[vector] : "?", cause, (unsigned long)pc, (unsigned long)vaddr);
    tl_exit_line(&console, 3);
    sim_exit(3);
}

/* ---- clock: 64-bit CCOUNT, scaled to instructions --------------------------------- */

static uint64_t ticks_total;
static uint32_t ticks_last;
static uint32_t insns_per_tick = 1;

static uint64_t sim_ticks(void)
{
    uint32_t now = tl_sim_ccount();
    ticks_total += (uint32_t)(now - ticks_last); /* called often enough never to miss a wrap */
    ticks_last = now;
    return ticks_total;
}

static void calibrate_clock(void)
{
    enum { LOOPS = 100000 };
    uint32_t t0 = tl_sim_ccount();
    tl_sim_spin(LOOPS);
    uint32_t ticks = tl_sim_ccount() - t0;
    insns_per_tick = ticks ? (uint32_t)((2u * LOOPS + ticks / 2) / ticks) : 1u;
    if (insns_per_tick == 0) insns_per_tick = 1;
    ticks_last = tl_sim_ccount();
}

static uint64_t sim_cycles(void *ctx)
{
    (void)ctx;
    return sim_ticks() * insns_per_tick;
}

static uint64_t sim_time_us(void *ctx) { return sim_cycles(ctx) / 1000u; } /* 1 ns per instruction */

/* ---- storage: host files through semihosting -------------------------------------- */

typedef struct sim_port {
    const char *card_dir;
    const char *flash_tier; /* a host file standing in for the ESP32 app's weights partition, or NULL */
} sim_port;

static int32_t sim_open_path(const char *path)
{
    long fd = tl_sim_simcall(SYS_OPEN, (long)path, 0 /* O_RDONLY */, 0);
    return fd < 0 ? -1 : (int32_t)fd;
}

static int32_t sim_open(void *ctx, const char *path)
{
    const sim_port *p = (const sim_port *)ctx;
    char full[512];
    int n = snprintf(full, sizeof full, "%s/%s", p->card_dir, path);
    if (n < 0 || (size_t)n >= sizeof full) return -1;
    return sim_open_path(full);
}

static int32_t sim_open_flash_tier(void *ctx)
{
    const sim_port *p = (const sim_port *)ctx;
    return p->flash_tier ? sim_open_path(p->flash_tier) : TL_OPEN_NOT_FOUND;
}

static int64_t sim_size(void *ctx, int32_t h)
{
    (void)ctx;
    long end = tl_sim_simcall(SYS_LSEEK, h, 0, 2 /* SEEK_END */);
    return end < 0 ? -1 : (int64_t)end;
}

static int64_t sim_read_at(void *ctx, int32_t h, uint64_t offset, void *buf, size_t n)
{
    (void)ctx;
    sim_ticks(); /* keep the 64-bit cycle count current between long compute phases */
    if (offset > 0x7fffffffu) return -1; /* semihosting lseek takes a 32-bit offset */
    if (tl_sim_simcall(SYS_LSEEK, h, (long)offset, 0 /* SEEK_SET */) != (long)offset) return -1;
    size_t done = 0;
    while (done < n) {
        long got = tl_sim_simcall(SYS_READ, h, (long)((char *)buf + done), (long)(n - done));
        if (got < 0) return -1;
        if (got == 0) break;
        done += (size_t)got;
    }
    return (int64_t)done;
}

static void sim_close(void *ctx, int32_t h)
{
    (void)ctx;
    tl_sim_simcall(SYS_CLOSE, h, 0, 0);
}

/* ---- arguments ---------------------------------------------------------------------- */

static char argv_buf[4096];

static int sim_args(char ***argv_out)
{
    long argc = tl_sim_simcall(SYS_ARGC, 0, 0, 0);
    long size = tl_sim_simcall(SYS_ARGV_SZ, 0, 0, 0);
    if (argc <= 0 || size <= 0) return 0;
    if ((size_t)size > sizeof argv_buf) {
        tl_port_error(&console, TL_E_COMMAND, "arguments longer than %lu bytes", (unsigned long)sizeof argv_buf);
        tl_exit_line(&console, 2);
        sim_exit(2);
    }
    tl_sim_simcall(SYS_ARGV, (long)argv_buf, 0, 0); /* pointer table, then the strings */
    *argv_out = (char **)(void *)argv_buf;
    return (int)argc;
}

/* ---- console input: whole lines from semihosting reads of fd 0 --------------------- */

static char line_buf[LINE_MAX_BYTES + 1]; /* a longest line and its '\n' (which becomes the NUL) */
static size_t line_len;

/* Returns a line without its '\n', or NULL at end of input. A line longer than
 * LINE_MAX_BYTES is read to its end and dropped, and *overlong is set: running the
 * cut-off front of a command would run something the user did not ask for. */
static char *read_line(int *overlong, size_t *len)
{
    static size_t consumed;
    *overlong = 0;
    for (;;) {
        if (consumed) {
            memmove(line_buf, line_buf + consumed, line_len - consumed);
            line_len -= consumed;
            consumed = 0;
        }
        char *nl = memchr(line_buf, '\n', line_len);
        if (nl) {
            *nl = '\0';
            consumed = (size_t)(nl - line_buf) + 1;
            *len = consumed - 1;
            return line_buf; /* with *overlong set, this is the tail of a dropped line */
        }
        if (line_len == sizeof line_buf) { /* no newline in a full buffer: drop it, keep reading */
            *overlong = 1;
            line_len = 0;
        }
        long got = tl_sim_simcall(SYS_READ, 0, (long)(line_buf + line_len), (long)(sizeof line_buf - line_len));
        if (got <= 0) {
            if (line_len == 0 && !*overlong) return NULL;
            /* line_len < sizeof line_buf here: a full buffer was dropped before this read */
            line_buf[line_len] = '\0';
            consumed = line_len;
            *len = line_len;
            return line_buf; /* last line without '\n' (or the end of a dropped one) */
        }
        line_len += (size_t)got;
    }
}

/* A bad command line: the protocol's error and exit lines, with the usage. */
#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static _Noreturn void usage_exit(const char *fmt, ...)
{
    char what[160], layout[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    tl_port_error(&console, TL_E_COMMAND, "bad argument: %s: usage tinyllm --card DIR [--precision float32|int8] "
                  "[--prompts card|none] [--chunk-buffer-bytes N] %s", what,
                  tl_option_usage(TL_USAGE_ARGS, layout, sizeof layout));
    tl_exit_line(&console, 2);
    sim_exit(2);
}

typedef struct args {
    const char *card, *prompts, *flash_tier;
    unsigned long long chunk_buffer_bytes;
    tl_options opt; /* the precision, and the layout options */
} args;

/* As the linux port: the port's own options are its flags[], every other one is the core's
 * table (tl_option_set) or unknown; each at most once. Exits on a bad one. */
static void parse_args(int argc, char **argv, args *a)
{
    enum { F_CARD, F_PRECISION, F_PROMPTS, F_CHUNK_BUFFER, F_FLASH_TIER, F_SELFTEST, F_COUNT };
    static const char *const flags[F_COUNT] = {"--card", "--precision", "--prompts", "--chunk-buffer-bytes",
                                               "--flash-tier", "--selftest-exception"};
    uint32_t seen = 0, seen_layout = 0;
    char msg[200];
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int f = tl_option_index(flags, F_COUNT, name, &seen);
        if (f == TL_OPTION_REPEATED) usage_exit("'%s' given twice", name);
        if (f == TL_OPTION_UNKNOWN) {
            int rc = tl_option_set(&a->opt, name, val, &seen_layout, msg, sizeof msg);
            if (rc == TL_OPTION_UNKNOWN) usage_exit("unknown option '%s'", name);
            if (rc != TL_OK) usage_exit("%s", msg);
            i++;
            continue;
        }
        if (f == F_SELFTEST) __asm__ volatile("ill"); /* proves the vectors: E_CRASH, exit 3 */
        if (!val || !*val) usage_exit("'%s' (missing value)", name);
        i++;
        switch (f) {
        case F_CARD: a->card = val; break;
        case F_PRECISION: a->opt.precision = val; break;
        case F_PROMPTS: a->prompts = val; break;
        case F_FLASH_TIER: a->flash_tier = val; break;
        default:
            if (tl_parse_count(val, TL_DEFAULT_CHUNK_BUFFER_BYTES, &a->chunk_buffer_bytes))
                usage_exit("'%s' '%s'", name, val);
            break;
        }
    }
    if (!a->card) usage_exit("(missing --card)");
    if (strcmp(a->opt.precision, "float32") != 0 && strcmp(a->opt.precision, "int8") != 0)
        usage_exit("'--precision' '%s'", a->opt.precision);
    if (strcmp(a->prompts, "card") != 0 && strcmp(a->prompts, "none") != 0) usage_exit("'--prompts' '%s'", a->prompts);
}

static int run(void)
{
    char **argv = NULL;
    int argc = sim_args(&argv);
    /* --arena sizes the arena handed to the core; the engine's budget is then all of it
     * (tl_options' arena_bytes: `load ... arena=N` can only ask for less) */
    args a = {NULL, "card", NULL, TL_DEFAULT_CHUNK_BUFFER_BYTES,
              {.precision = "float32", .arena_bytes = TL_DEFAULT_ARENA_BYTES}};
    parse_args(argc, argv, &a);

    sim_port sp = {a.card, a.flash_tier};
    size_t arena_bytes = a.opt.arena_bytes, available = (size_t)(__arena_end - __arena_start);
    tl_port port = {
        .ctx = &sp, .open = sim_open, .size = sim_size, .read_at = sim_read_at, .close = sim_close,
        .open_flash_tier = sim_open_flash_tier,
        .time_us = sim_time_us, .cycles = sim_cycles, .write = sim_console,
        .arena = __arena_start, .arena_bytes = arena_bytes,
        .chunk_buffer = a.chunk_buffer_bytes ? chunk_buffer : NULL, .chunk_buffer_bytes = (size_t)a.chunk_buffer_bytes,
    };
    tl_log(&port, "app_main", "Tiny-LLM ESP32 Inference Engine Starting");
    tl_log(&port, "app_main", "xtensa-sim port: card %s, precision %s, arena %lu bytes (%lu available in RAM), "
           "1 CCOUNT tick = %lu instructions", a.card, a.opt.precision, (unsigned long)arena_bytes,
           (unsigned long)available, (unsigned long)insns_per_tick);
    if (arena_bytes > available) {
        tl_port_error(&port, TL_E_OOM, "arena: %lu bytes requested, the simulated RAM leaves %lu (raise QEMU's -m)",
                      (unsigned long)arena_bytes, (unsigned long)available);
        tl_exit_line(&port, 2);
        return 2;
    }
    tl_engine *e = tl_engine_init(&port, &a.opt);
    if (!e) {
        tl_exit_line(&port, 2);
        return 2;
    }
    tl_session session = {0, 0};
    if (strcmp(a.prompts, "card") == 0) tl_engine_run_script(e, "prompts.txt", &session);
    char *line;
    int overlong;
    size_t len;
    while (!session.quit && (line = read_line(&overlong, &len)) != NULL)
        tl_session_line(e, &session, overlong ? NULL : line, len);
    int code = tl_session_exit_code(&session);
    tl_exit_line(&port, code);
    return code;
}

/* Entry from startup.S. */
_Noreturn void tl_sim_start(void)
{
    memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));
    calibrate_clock();
    sim_exit(run());
}
