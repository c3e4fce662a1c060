/*
 * The command interpreter (docs/contracts.md §3-§5): gen, info, verify, load, quit and
 * the test builds' fault; prompt validation, greedy decoding, and the TINYLLM_* machine
 * lines next to the ESP-IDF-style human log lines. Lines reach it from a console session
 * or the prompt file (session.c); `load`'s options are the table's (options.c).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "storage.h"

#define TL_DEFAULT_N 16
#define TL_DEFAULT_K 2

#define TL_STEP_FULL (-1)     /* lm_head streamed in full (as asked, or no logits) */
#define TL_STEP_FALLBACK (-2) /* pruning was on, but this step streamed lm_head in full */

/* ------------------------------------------------------------------- lines */

static void print_info(tl_engine *e)
{
    tl_model *m = &e->model;
    tl_writer *w = &e->out;
    tl_w_printf(w, "TINYLLM_INFO {\"model\":\"%s\",\"precision\":\"%s\",\"card_id\":\"%08lx\",", m->cfg.model_name,
                tl_config_dtype(&m->cfg), (unsigned long)e->card_id);
    tl_w_printf(w, "\"arena_budget\":%lu,\"arena_used\":%lu,\"context\":%d,\"resident_bytes\":%llu,",
                (unsigned long)e->arena.size, (unsigned long)e->arena.used, m->context,
                (unsigned long long)m->resident_bytes);
    tl_w_printf(w, "\"lm_head\":\"%s\",\"chunk_buffer\":\"%s\",\"chunk_bytes\":%lu,\"chunk_buffers\":%d,"
                "\"read_ahead\":%d,", m->prune.on ? "pruned" : "full", m->stream_in_port ? "port" : "arena",
                (unsigned long)m->stream_bytes, m->stream2 ? 2 : 1, m->stream2 && e->port->read_start ? 1 : 0);
    tl_w_printf(w, "\"flash_tier\":\"%s\",\"flash_tier_bytes\":%llu}", m->tier.status,
                (unsigned long long)m->tier.bytes);
    tl_w_endline(w);
}

int tl_engine_report(tl_engine *e)
{
    tl_emit_error(e->port, e->err.code, e->err.msg);
    e->err.code = TL_OK;
    return TL_CMD_FAILED;
}

/* ------------------------------------------------------------------- start */

const char *tl_weights_dir(const char *precision)
{
    if (precision && strcmp(precision, "float32") == 0) return "tinyllm_float32_weights";
    if (precision && strcmp(precision, "int8") == 0) return "tinyllm_weights";
    return NULL;
}

/* The set just opened must come from the export of the other precision's set loaded
 * before it (contracts.md §1, "export_id"); a set of the same precision replaces the record. */
static int same_export(tl_engine *e, const tl_config *cfg)
{
    if (!e->export_precision[0] || strcmp(e->export_precision, tl_config_dtype(cfg)) == 0 ||
        strcmp(e->export_id, cfg->export_id) == 0)
        return TL_OK;
    return tl_fail(&e->err, TL_E_CONFIG,
                   "the %s set is from export \"%s\", the %s set from export \"%s\": the card mixes two models "
                   "(export it again)",
                   tl_config_dtype(cfg), cfg->export_id, e->export_precision, e->export_id);
}

/* Closes the loaded set (if any) and empties the engine's end of the arena:
 * the model is zeroed and pointed at the engine's arena, error and fault. */
static void drop_set(tl_engine *e)
{
    tl_model *m = &e->model;
    if (e->precision[0]) tl_model_close(m);
    e->precision[0] = '\0';
    memset(m, 0, sizeof *m);
    m->port = e->port;
    m->arena = &e->arena;
    m->err = &e->err;
    m->fault = &e->fault;
    e->tokens = NULL;
    e->steps = NULL;
    e->arena.used = e->arena.peak = e->base;
}

/* The loader's lines for the set just laid out, then TINYLLM_INFO. */
static void log_loaded(tl_engine *e)
{
    const tl_port *port = e->port;
    const tl_model *m = &e->model;
    tl_log(port, TL_TAG_INFER, "Arena: budget %lu bytes, used %lu (resident weights %llu), context %d, chunk rows %d, "
           "%s chunk buffer%s of %lu bytes in %s", (unsigned long)e->arena.size, (unsigned long)e->arena.used,
           (unsigned long long)m->resident_bytes, m->context, m->chunk_rows, m->stream2 ? "two" : "one",
           m->stream2 ? "s (lm_head reads ahead)" : "", (unsigned long)m->stream_bytes,
           m->stream_in_port ? "the port's fast memory" : "the arena");
    tl_log(port, TL_TAG_INFER, "Tiny-LLM inference engine initialized successfully");
    print_info(e);
}

/* Drops the loaded set (if any) and lays out the one `opt` names from the
 * engine's end of the arena: config and file checks, KV cache, buffers,
 * resident weights, token buffer and step log. Prints the loader lines and
 * TINYLLM_INFO; on failure records the error and leaves no set loaded. */
static int load_set(tl_engine *e, const tl_options *opt)
{
    const tl_port *port = e->port;
    tl_model *m = &e->model;
    drop_set(e);

    size_t budget = opt->arena_bytes ? opt->arena_bytes : port->arena_bytes;
    if (budget > port->arena_bytes)
        return tl_fail(&e->err, TL_E_OOM, "arena budget %lu bytes exceeds the port's arena of %lu bytes",
                       (unsigned long)budget, (unsigned long)port->arena_bytes);
    if (budget < e->base + 64u)
        return tl_fail(&e->err, TL_E_OOM, "arena budget %lu bytes: the engine alone takes %lu", (unsigned long)budget,
                       (unsigned long)e->base);
    e->arena.size = budget;
    const char *dir = opt->weights_dir ? opt->weights_dir : tl_weights_dir(opt->precision);
    if (!dir)
        return tl_fail(&e->err, TL_E_COMMAND, "unknown precision '%s' (expected float32 or int8)",
                       opt->precision ? opt->precision : "");
    tl_options o = *opt;
    o.weights_dir = dir;

    /* Keep room, while weights are made resident, for the token buffer and
     * step log (per position), allocated right after the layout. */
    size_t per_position = sizeof(int32_t) + sizeof(tl_step);
    if (tl_model_open(m, &o, &e->card_id) == TL_OK && same_export(e, &m->cfg) == TL_OK &&
        tl_model_layout(m, &o, 0, per_position) == TL_OK) {
        e->tokens = (int32_t *)tl_arena_alloc(&e->arena, ((size_t)m->context + 1) * sizeof(int32_t), "token buffer",
                                              &e->err);
        if (e->tokens)
            e->steps = (tl_step *)tl_arena_alloc(&e->arena, (size_t)m->context * sizeof(tl_step), "step log", &e->err);
    }
    /* Residency left room for these; if they did not fit, the budget is too
     * small even with every matrix streamed. */
    if (e->err.code != TL_OK) {
        tl_model_close(m);
        return e->err.code;
    }
    snprintf(e->precision, sizeof e->precision, "%s", tl_config_dtype(&m->cfg));
    snprintf(e->export_precision, sizeof e->export_precision, "%s", e->precision);
    memcpy(e->export_id, m->cfg.export_id, sizeof e->export_id);
    e->loaded = o;
    e->loaded.precision = e->precision;
    e->loaded.weights_dir = NULL; /* derived from the precision again on a reload */
    log_loaded(e);
    return TL_OK;
}

tl_engine *tl_engine_init(const tl_port *port, const tl_options *opt)
{
    tl_arena arena;
    tl_err err = {TL_OK, ""};
    tl_arena_init(&arena, port->arena, port->arena_bytes);
    tl_engine *e = (tl_engine *)tl_arena_alloc(&arena, sizeof *e, "engine state", &err);
    if (!e) {
        tl_emit_error(port, err.code, err.msg);
        return NULL;
    }
    e->port = port;
    e->arena = arena; /* from here on only e->arena is used */
    e->base = arena.used;
    e->boot = *opt;
    tl_w_init(&e->out, port);
    if (load_set(e, opt) != TL_OK) {
        tl_emit_error(port, e->err.code, e->err.msg);
        return NULL;
    }
    tl_emit_ready(port);
    return e;
}

/* ---------------------------------------------------------------------- gen */

/* Parses a decimal integer that must be the whole word: -1 if it is not a
 * number, -2 if it is one but does not fit a long. */
static int parse_long(const char *s, long *out)
{
    char *end;
    if (!*s) return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end != '\0') return -1;
    if (errno == ERANGE) return -2;
    *out = v;
    return 0;
}

/* A gen's storage reads: every tier's, the flash tier's share, and the port's own count below. */
typedef struct tl_io {
    uint64_t bytes, reads, flash_bytes, flash_reads;
    long long disk_reads; /* -1: the port does not count them */
} tl_io;

static void print_result(tl_engine *e, int n_prompt, int n_new, int n_steps, int k, int full, uint64_t us,
                         uint64_t cycles, const tl_io *io)
{
    int tier = e->model.tier.n > 0;
    tl_writer *w = &e->out;
    tl_w_printf(w, "TINYLLM_RESULT {\"precision\":\"%s\",\"lm_head\":\"%s\",\"prompt\":[",
                tl_config_dtype(&e->model.cfg), e->model.prune.on && !full ? "pruned" : "full");
    for (int i = 0; i < n_prompt; i++) tl_w_printf(w, "%s%ld", i ? "," : "", (long)e->tokens[i]);
    tl_w_puts(w, "],\"tokens\":[");
    for (int i = 0; i < n_new; i++) tl_w_printf(w, "%s%ld", i ? "," : "", (long)e->tokens[n_prompt + i]);
    tl_w_printf(w, "],\"n_prompt\":%d,\"total_us\":%llu,\"total_cycles\":%llu,", n_prompt, (unsigned long long)us,
                (unsigned long long)cycles);
    tl_w_printf(w, "\"bytes_read\":%llu,\"read_calls\":%llu,", (unsigned long long)io->bytes,
                (unsigned long long)io->reads);
    if (tier)
        tl_w_printf(w, "\"flash_bytes\":%llu,\"flash_reads\":%llu,", (unsigned long long)io->flash_bytes,
                    (unsigned long long)io->flash_reads);
    if (io->disk_reads >= 0) tl_w_printf(w, "\"disk_reads\":%lld,", io->disk_reads);
    tl_w_printf(w, "\"peak_arena\":%lu,\"arena_budget\":%lu,", (unsigned long)e->arena.peak,
                (unsigned long)e->arena.size);
    if (e->port->internal_ram) {
        uint64_t peak = 0, size = 0;
        e->port->internal_ram(e->port->ctx, &peak, &size);
        tl_w_printf(w, "\"internal_ram_peak\":%llu,\"internal_ram_size\":%llu,", (unsigned long long)peak,
                    (unsigned long long)size);
    }
    tl_w_puts(w, "\"steps\":[");
    for (int p = 0; p < n_steps; p++) {
        const tl_step *s = &e->steps[p];
        tl_w_printf(w, "%s{\"pos\":%d,\"token\":%ld,\"us\":%llu,\"cycles\":%llu,\"bytes\":%llu,\"reads\":%llu", p ? "," : "",
                    p, (long)s->token, (unsigned long long)s->us, (unsigned long long)s->cycles,
                    (unsigned long long)s->bytes, (unsigned long long)s->reads);
        if (tier) tl_w_printf(w, ",\"flash_bytes\":%lu", (unsigned long)s->flash_bytes);
        if (s->candidates >= 0) tl_w_printf(w, ",\"candidates\":%d", (int)s->candidates);
        if (s->candidates == TL_STEP_FALLBACK) tl_w_puts(w, ",\"fallback\":1");
        if (s->ntop >= 0) {
            tl_w_puts(w, ",\"top\":[");
            int n = s->ntop < k ? s->ntop : k;
            for (int i = 0; i < n; i++) {
                tl_w_printf(w, "%s[%ld,", i ? "," : "", (long)s->top_id[i]);
                tl_w_float(w, s->top_logit[i]);
                tl_w_puts(w, "]");
            }
            tl_w_puts(w, "]");
        }
        tl_w_puts(w, "}");
    }
    tl_w_puts(w, "]}");
    tl_w_endline(w);
}

/* Next whitespace-separated word of *cursor, NUL-terminated in place; NULL at the end. */
static char *next_word(char **cursor)
{
    char *p = *cursor;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    if (!*p) {
        *cursor = p;
        return NULL;
    }
    char *word = p;
    while (*p && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') p++;
    if (*p) *p++ = '\0';
    *cursor = p;
    return word;
}

/* A gen line (docs/contracts.md §3), parsed and checked against the loaded set. */
typedef struct tl_gen {
    int n_prompt; /* its ids are e->tokens[0 .. n_prompt) */
    int n_new, k, tf, full;
} tl_gen;

/* Parses `gen <id> [<id> ...] [n=<N>] [k=<K>] [tf=1] [full=1]` (`args`: the line after "gen")
 * into *g and the prompt into e->tokens; any bad word or a request past the context fails. */
static int gen_parse(tl_engine *e, char *args, tl_gen *g)
{
    tl_model *m = &e->model;
    static const char *const names[] = {"n", "k", "tf", "full"};
    long values[] = {TL_DEFAULT_N, TL_DEFAULT_K, 0, 0};
    uint32_t seen = 0;
    int n_prompt = 0;

    for (char *word; (word = next_word(&args)) != NULL;) {
        char *eq = strchr(word, '=');
        long v;
        if (eq) {
            *eq = '\0';
            int i = tl_option_index(names, 4, word, &seen);
            if (i == TL_OPTION_UNKNOWN)
                return tl_fail(&e->err, TL_E_COMMAND, "gen: unknown option '%s' (expected n=, k=, tf=, full=)", word);
            if (i == TL_OPTION_REPEATED) return tl_fail(&e->err, TL_E_COMMAND, "gen: option %s= given twice", word);
            if (parse_long(eq + 1, &v))
                return tl_fail(&e->err, TL_E_COMMAND, "gen: option %s=%s is not an integer", word, eq + 1);
            values[i] = v;
            continue;
        }
        int bad = parse_long(word, &v);
        if (bad == -2)
            return tl_fail(&e->err, TL_E_PROMPT, "gen: token id %s at prompt position %d out of range [0, %d)", word,
                           n_prompt, m->cfg.vocab);
        if (bad)
            return tl_fail(&e->err, TL_E_COMMAND, "gen: '%s' is neither a token id nor an option", word);
        if (v < 0 || v >= m->cfg.vocab)
            return tl_fail(&e->err, TL_E_PROMPT, "gen: token id %ld at prompt position %d out of range [0, %d)", v,
                           n_prompt, m->cfg.vocab);
        if (n_prompt <= m->context) e->tokens[n_prompt] = (int32_t)v; /* keep counting, stop storing */
        if (n_prompt < 0x7fffffff) n_prompt++;
    }
    long n_new = values[0], k = values[1], tf = values[2], full = values[3];
    if (n_new < 0) return tl_fail(&e->err, TL_E_COMMAND, "gen: n=%ld, expected n >= 0", n_new);
    if (n_new > 0x7fffffffL - n_prompt)
        return tl_fail(&e->err, TL_E_PROMPT, "gen: n=%ld exceeds the context of %d positions", n_new, m->context);
    if (k < 1 || k > TL_MAX_TOPK) return tl_fail(&e->err, TL_E_COMMAND, "gen: k=%ld, expected 1..%d", k, TL_MAX_TOPK);
    if (tf != 0 && tf != 1) return tl_fail(&e->err, TL_E_COMMAND, "gen: tf=%ld, expected 0 or 1", tf);
    if (full != 0 && full != 1) return tl_fail(&e->err, TL_E_COMMAND, "gen: full=%ld, expected 0 or 1", full);
    if (n_prompt < 1) return tl_fail(&e->err, TL_E_PROMPT, "gen: empty prompt, expected at least 1 token id");
    if (n_new == 0 && !tf) return tl_fail(&e->err, TL_E_COMMAND, "gen: n=0 is only allowed with tf=1");
    if ((long)n_prompt + n_new - 1 > m->context)
        return tl_fail(&e->err, TL_E_PROMPT,
                       "gen: prompt length %d + n %ld - 1 = %ld exceeds the context of %d positions", n_prompt, n_new,
                       (long)n_prompt + n_new - 1, m->context);
    g->n_prompt = n_prompt;
    g->n_new = (int)n_new; /* fits: n_prompt + n_new - 1 <= context */
    g->k = (int)k;
    g->tf = (int)tf;
    g->full = (int)full;
    return TL_OK;
}

/* The forward passes of a checked gen, one per position 0 .. n_prompt + n_new - 2 (the last
 * generated token is never fed back): greedy tokens into e->tokens, what each step cost and its
 * top-k into e->steps (printed only afterwards: console time stays out of the step times). */
static int gen_decode(tl_engine *e, const tl_gen *g, int n_steps)
{
    tl_model *m = &e->model;
    const tl_port *port = e->port;
    tl_topk top;
    for (int pos = 0; pos < n_steps; pos++) {
        tl_step *s = &e->steps[pos];
        uint64_t ts = port->time_us(port->ctx), cs = port->cycles(port->ctx);
        uint64_t bs = m->bytes_read, rs = m->read_calls, fs = m->flash_bytes;
        int generating = pos >= g->n_prompt - 1;
        int want_logits = g->tf || generating;
        top.k = g->k;
        top.n = 0;
        s->token = e->tokens[pos];
        if (tl_model_forward(m, e->tokens[pos], pos, want_logits ? &top : NULL, g->full)) return e->err.code;
        if (generating) e->tokens[pos + 1] = top.id[0]; /* greedy: argmax, ties to the lowest id */
        s->us = port->time_us(port->ctx) - ts;
        s->cycles = port->cycles(port->ctx) - cs;
        s->bytes = m->bytes_read - bs;
        s->reads = (uint32_t)(m->read_calls - rs);
        s->flash_bytes = (uint32_t)(m->flash_bytes - fs);
        s->ntop = (int16_t)(want_logits ? top.n : -1);
        s->candidates = (int16_t)(!want_logits ? TL_STEP_FULL
                                  : m->prune.last_fallback ? TL_STEP_FALLBACK : m->prune.last_candidates);
        for (int i = 0; i < top.n && want_logits; i++) {
            s->top_id[i] = top.id[i];
            s->top_logit[i] = top.logit[i];
        }
    }
    return TL_OK;
}

/* gen: parse, decode, then print the tokens and the TINYLLM_RESULT line. */
static int cmd_gen(tl_engine *e, char *args)
{
    tl_model *m = &e->model;
    const tl_port *port = e->port;
    tl_gen g = {0, 0, 0, 0, 0};
    if (gen_parse(e, args, &g)) return e->err.code;
    int n_prompt = g.n_prompt, n_new = g.n_new;
    int n_steps = n_prompt + n_new - 1;
    tl_log(port, TL_TAG_INFER, "Starting inference with prompt length: %d", n_prompt);
    if (port->settle) port->settle(port->ctx);
    uint64_t t0 = port->time_us(port->ctx), c0 = port->cycles(port->ctx);
    uint64_t b0 = m->bytes_read, r0 = m->read_calls, f0 = m->flash_bytes, fr0 = m->flash_reads;
    uint64_t d0 = port->disk_reads ? port->disk_reads(port->ctx) : 0;
    if (gen_decode(e, &g, n_steps)) return e->err.code;
    uint64_t us = port->time_us(port->ctx) - t0, cycles = port->cycles(port->ctx) - c0;

    tl_log(port, TL_TAG_INFER, "Generated %d tokens", n_new);
    tl_writer *w = &e->out;
    tl_w_puts(w, "Generated tokens:");
    for (int i = 0; i < n_new; i++) tl_w_printf(w, " %ld", (long)e->tokens[n_prompt + i]);
    tl_w_endline(w);
    unsigned long ms = (unsigned long)(us / 1000u);
    double tps = us ? (double)n_new * 1e6 / (double)us : 0.0;
    tl_log(port, TL_TAG_INFER, "Inference completed: %d tokens in %lu ms (%.2f tokens/sec)", n_new, ms, tps);
    long long disk_reads = port->disk_reads ? (long long)(port->disk_reads(port->ctx) - d0) : -1;
    tl_io io = {m->bytes_read - b0, m->read_calls - r0, m->flash_bytes - f0, m->flash_reads - fr0, disk_reads};
    print_result(e, n_prompt, n_new, n_steps, g.k, g.full, us, cycles, &io);
    return TL_OK;
}

/* --------------------------------------------------------------------- load */

/* load <float32|int8> [context=N] [chunk=N] ... (the options of options.c's table): lay out
 * another weight set (or the same one with other options) in the arena, as if the firmware
 * had booted with them; options not given are the port's. One firmware build thus serves
 * both precisions. */
static int cmd_load(tl_engine *e, char *args, tl_options *opt)
{
    char usage[160], msg[sizeof e->err.msg - 8];
    tl_option_usage(TL_USAGE_LOAD, usage, sizeof usage);
    *opt = e->boot;
    opt->weights_dir = NULL;
    opt->precision = next_word(&args);
    if (!opt->precision)
        return tl_fail(&e->err, TL_E_COMMAND, "load: expected a precision (load float32|int8 %s)", usage);
    if (!tl_weights_dir(opt->precision))
        return tl_fail(&e->err, TL_E_COMMAND, "load: unknown precision '%s' (expected float32 or int8)",
                       opt->precision);
    uint32_t seen = 0;
    for (char *word; (word = next_word(&args)) != NULL;) {
        char *eq = strchr(word, '=');
        int rc = TL_OPTION_UNKNOWN;
        if (eq && word[0] != '-') { /* "--context=5" is neither spelling */
            *eq = '\0';
            rc = tl_option_set(opt, word, eq + 1, &seen, msg, sizeof msg);
            *eq = '=';
        }
        if (rc == TL_OPTION_UNKNOWN)
            return tl_fail(&e->err, TL_E_COMMAND, "load: '%s' is not an option (%s)", word, usage);
        if (rc != TL_OK) return tl_fail(&e->err, rc, "load: %s", msg);
    }
    return load_set(e, opt);
}

/* -------------------------------------------------------------------- fault */

#ifdef TINYLLM_FAULT_INJECTION
/* fault fail|short|flip <N> | fault off: the N-th storage read from now fails,
 * comes back short, or comes back with one bit flipped, once. Test builds only:
 * the harness uses it to prove a failed or short read ends its command in E_IO
 * and the firmware goes on, and that `verify` catches a flipped bit. */
static int cmd_fault(tl_engine *e, char *args)
{
    char *kind = next_word(&args), *count = next_word(&args);
    long n = 0;
    if (kind && strcmp(kind, "off") == 0 && !count) {
        e->fault.kind = TL_FAULT_NONE;
        return TL_OK;
    }
    int k = !kind                        ? -1
            : strcmp(kind, "fail") == 0  ? TL_FAULT_FAIL
            : strcmp(kind, "short") == 0 ? TL_FAULT_SHORT
            : strcmp(kind, "flip") == 0  ? TL_FAULT_FLIP
                                         : -1;
    if (k < 0 || !count || parse_long(count, &n) || n < 1 || next_word(&args))
        return tl_fail(&e->err, TL_E_COMMAND, "fault: expected fault fail|short|flip <N >= 1> or fault off");
    e->fault.kind = k;
    e->fault.countdown = (uint64_t)n;
    tl_log(e->port, TL_TAG_INFER, "Fault armed: storage read %ld from now will %s", n, kind);
    return TL_OK;
}
#endif

/* ------------------------------------------------------------------ commands */

int tl_engine_exec(tl_engine *e, char *line)
{
    char *cursor = line;
    char *cmd = next_word(&cursor);
    if (!cmd || cmd[0] == '#') return TL_CMD_IGNORED;

    int rc = TL_OK;
    e->err.code = TL_OK;
    int bare = cursor[strspn(cursor, " \t\r\n")] == '\0'; /* no arguments after the command word */
    int needs_set = strcmp(cmd, "gen") == 0 || strcmp(cmd, "info") == 0 || strcmp(cmd, "verify") == 0;
    if (needs_set && !e->precision[0]) {
        rc = tl_fail(&e->err, TL_E_COMMAND, "%s: no weight set is loaded (the last load failed): load float32|int8",
                     cmd);
    } else if (strcmp(cmd, "gen") == 0) {
        rc = cmd_gen(e, cursor);
    } else if (strcmp(cmd, "info") == 0 && bare) {
        tl_model *m = &e->model;
        tl_log(e->port, TL_TAG_INFER, "Model %s (%s), card id %08lx, context %d, resident %llu bytes, arena %lu/%lu",
               m->cfg.model_name, tl_config_dtype(&m->cfg), (unsigned long)e->card_id, m->context,
               (unsigned long long)m->resident_bytes, (unsigned long)e->arena.used, (unsigned long)e->arena.size);
        print_info(e);
    } else if (strcmp(cmd, "verify") == 0 && bare) {
        if (tl_model_verify(&e->model) != 0) {
            tl_emit_ready(e->port); /* one E_CHECKSUM / E_IO line was printed per bad file */
            return TL_CMD_FAILED;
        }
    } else if (strcmp(cmd, "load") == 0) {
        tl_options previous = e->loaded, wanted;
        char previous_precision[sizeof e->precision];
        memcpy(previous_precision, e->precision, sizeof previous_precision);
        previous.precision = previous_precision;
        rc = cmd_load(e, cursor, &wanted);
        if (rc != TL_OK && previous_precision[0] && !e->precision[0]) {
            /* The old set was dropped before the new one failed: say why, then
             * load the old one again so the firmware keeps answering. */
            tl_engine_report(e);
            tl_log(e->port, TL_TAG_INFER, "Load failed: loading the %s set again", previous_precision);
            if (load_set(e, &previous) == TL_OK) {
                tl_emit_ready(e->port);
                return TL_CMD_FAILED;
            }
            rc = e->err.code; /* the old set cannot be loaded either: say that too */
        }
#ifdef TINYLLM_FAULT_INJECTION
    } else if (strcmp(cmd, "fault") == 0) {
        rc = cmd_fault(e, cursor);
#endif
    } else if (strcmp(cmd, "quit") == 0 && bare) {
        return TL_CMD_QUIT;
    } else {
        rc = tl_fail(&e->err, TL_E_COMMAND,
                     "unknown command or arguments: '%s' (expected gen, info, verify, load, quit)", cmd);
    }
    int result = TL_CMD_OK;
    if (rc != TL_OK) result = tl_engine_report(e);
    tl_emit_ready(e->port);
    return result;
}

int tl_engine_exec_bytes(tl_engine *e, char *line, size_t len)
{
    const char *nul = (const char *)memchr(line, '\0', len);
    if (nul) {
        tl_fail(&e->err, TL_E_COMMAND, "command line has a NUL byte at column %lu: ignored",
                (unsigned long)(nul - line) + 1u);
        tl_engine_report(e);
        tl_emit_ready(e->port);
        return TL_CMD_FAILED;
    }
    return tl_engine_exec(e, line);
}

void tl_port_error(const tl_port *port, int code, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tl_emit_error(port, code, msg);
}
