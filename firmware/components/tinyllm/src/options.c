/*
 * The weight-set layout options (docs/contracts.md §3) in one table: `load`'s key=value
 * words and the ports' command lines both go through tl_option_set, and both usage texts
 * are printed from the table, so a name, its range and its help are written once.
 * The same names everywhere: `--lm-head full` on a command line is `lm_head=full` in a
 * `load` line (dashes there, underscores here).
 */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "tinyllm/tinyllm.h"

static void set_context(tl_options *o, unsigned long long v) { o->context = (int)v; }
static void set_chunk(tl_options *o, unsigned long long v) { o->chunk_rows = (int)v; }
static void set_resident(tl_options *o, unsigned long long v) { o->no_resident = v == 0; }
static void set_arena(tl_options *o, unsigned long long v) { o->arena_bytes = (size_t)v; }
static void set_lm_head(tl_options *o, unsigned long long v) { o->lm_head = (int)v; }
static void set_candidates(tl_options *o, unsigned long long v) { o->max_candidates = (int)v; }
static void set_flash(tl_options *o, unsigned long long v) { o->no_flash = v == 0; }

/* In the order of TL_LM_HEAD_*: a word's index is its mode. */
static const char *const lm_head_modes[] = {"auto", "full", "pruned", NULL};

typedef struct tl_option {
    const char *name;            /* load's spelling; the command line's is "--" + name, '_' -> '-' */
    const char *arg;             /* what the value looks like, for the usage */
    unsigned long long min, max; /* a count's range; a word's index range */
    const char *const *words;    /* the value is one of these (its index is set), or NULL: a count */
    void (*set)(tl_options *o, unsigned long long v);
    const char *help;
} tl_option;

/* Counts start at 1 wherever 0 is tl_options' "not given": a 0 typed by hand would
 * otherwise silently mean the default. The arena's max is half a size_t (what a port can
 * address): the ports check what they can really allocate themselves (malloc, or the
 * simulator's RAM) and the engine checks a `load` budget against the port's arena (E_OOM),
 * since both limits are only known at run time. */
static const tl_option options[] = {
    {"context", "N", 1, INT_MAX, NULL, set_context, "positions kept (default and most: max_position_embeddings)"},
    {"chunk", "N", 1, INT_MAX, NULL, set_chunk, "rows per streamed chunk (default 256)"},
    {"resident", "0|1", 0, 1, NULL, set_resident, "0: stream every matrix at every use (default 1: keep what fits)"},
    {"arena", "N", 1, SIZE_MAX / 2, NULL, set_arena,
     "bytes: a port's arena (default 3840 KiB, the ESP32 app's); load: a budget in it"},
    {"lm_head", "auto|full|pruned", TL_LM_HEAD_AUTO, TL_LM_HEAD_PRUNED, lm_head_modes, set_lm_head,
     "float32 logits: auto (pruned if the set has the proxy and it fits), full, pruned"},
    {"candidates", "N", 1, TL_PRUNE_MAX_CANDIDATES, NULL, set_candidates,
     "pruned lm_head: more candidate rows stream it in full (default: the most)"},
    {"flash", "0|1", 0, 1, NULL, set_flash, "0: leave the flash tier unused (default 1: used when it matches the set)"},
};
#define N_OPTIONS ((int)(sizeof options / sizeof options[0]))
_Static_assert(TL_DEFAULT_ARENA_BYTES == 3840u * 1024u, "the arena's help names its default");
_Static_assert(TL_LM_HEAD_AUTO == 0 && TL_LM_HEAD_FULL == 1 && TL_LM_HEAD_PRUNED == 2, "lm_head_modes' order");

/* ------------------------------------------------------------------- parsing */

/* Appends to buf[n] at *len, cut to fit. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void append(char *buf, size_t n, size_t *len, const char *fmt, ...)
{
    if (*len >= n) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf + *len, n - *len, fmt, ap);
    va_end(ap);
    *len = w < 0 ? n : *len + (size_t)w;
}

/* A count: decimal digits only (no sign, no blank, no hex), into *out; -1 if it is not
 * one or does not fit 64 bits. */
static int parse_digits(const char *s, unsigned long long *out)
{
    unsigned long long v = 0;
    if (!s || !*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (ULLONG_MAX - d) / 10u) return -1;
        v = v * 10u + d;
    }
    *out = v;
    return 0;
}

int tl_parse_count(const char *s, unsigned long long max, unsigned long long *out)
{
    unsigned long long v;
    if (parse_digits(s, &v) || v > max) return -1;
    *out = v;
    return 0;
}

/* 1 if `word` is the table's `name` as spelled on a command line ("--lm-head") when
 * dashed, else as `load` spells it ("lm_head"). */
static int same_name(const char *name, const char *word, int dashed)
{
    for (; *name; name++, word++) {
        char want = dashed && *name == '_' ? '-' : *name;
        if (*word != want) return 0;
    }
    return *word == '\0';
}

/* The value of option t, as its index (words) or a count in range; -1 if it is neither. */
static int parse_value(const tl_option *t, const char *value, unsigned long long *v)
{
    if (!value) return -1;
    if (t->words) {
        for (unsigned long long i = 0; t->words[i]; i++)
            if (strcmp(value, t->words[i]) == 0) {
                *v = i;
                return 0;
            }
        return -1;
    }
    return parse_digits(value, v) || *v < t->min || *v > t->max ? -1 : 0;
}

/* What option t takes, for an error message: "auto, full or pruned", "0 or 1", "a count 1..512". */
static void expected(const tl_option *t, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = '\0';
    if (!t->words && t->max - t->min == 1) append(buf, n, &len, "%llu or %llu", t->min, t->max);
    else if (!t->words) append(buf, n, &len, "a count %llu..%llu", t->min, t->max);
    for (int i = 0; t->words && t->words[i]; i++)
        append(buf, n, &len, "%s%s", i == 0 ? "" : t->words[i + 1] ? ", " : " or ", t->words[i]);
}

int tl_option_set(tl_options *o, const char *name, const char *value, uint32_t *seen, char *msg, size_t msg_bytes)
{
    int dashed = strncmp(name, "--", 2) == 0, i = 0;
    while (i < N_OPTIONS && !same_name(options[i].name, dashed ? name + 2 : name, dashed)) i++;
    if (i == N_OPTIONS) return TL_OPTION_UNKNOWN;
    const tl_option *t = &options[i];
    if (*seen & (UINT32_C(1) << i)) { /* which of two values should win would be a guess */
        snprintf(msg, msg_bytes, "option %s%s given twice", name, dashed ? "" : "=");
        return TL_E_COMMAND;
    }
    *seen |= UINT32_C(1) << i;
    unsigned long long v;
    if (parse_value(t, value, &v) == 0) {
        t->set(o, v);
        return TL_OK;
    }
    char want[64];
    expected(t, want, sizeof want);
    if (!value) snprintf(msg, msg_bytes, "%s: missing value (expected %s)", name, want);
    else if (dashed) snprintf(msg, msg_bytes, "%s '%s': expected %s", name, value, want);
    else snprintf(msg, msg_bytes, "%s=%s: expected %s", name, value, want);
    return TL_E_COMMAND;
}

int tl_option_index(const char *const *names, int n, const char *word, uint32_t *seen)
{
    for (int i = 0; i < n && i < 32; i++)
        if (strcmp(word, names[i]) == 0) {
            if (*seen & (UINT32_C(1) << i)) return TL_OPTION_REPEATED;
            *seen |= UINT32_C(1) << i;
            return i;
        }
    return TL_OPTION_UNKNOWN;
}

/* --------------------------------------------------------------------- usage */

/* An option's name as `style` spells it: "lm_head" (load) or "--lm-head". */
static const char *spelled(const tl_option *t, int style, char *buf, size_t n)
{
    if (style == TL_USAGE_LOAD) return t->name;
    size_t len = 0;
    append(buf, n, &len, "--%s", t->name);
    for (char *p = buf; *p; p++)
        if (*p == '_') *p = '-';
    return buf;
}

const char *tl_option_usage(int style, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < N_OPTIONS; i++) {
        const tl_option *t = &options[i];
        char dashed[24], head[48];
        const char *name = spelled(t, style, dashed, sizeof dashed);
        if (style == TL_USAGE_LOAD) {
            append(buf, n, &len, "%s[%s=%s]", i ? " " : "", name, t->arg);
        } else if (style == TL_USAGE_ARGS) {
            append(buf, n, &len, "%s[%s %s]", i ? " " : "", name, t->arg);
        } else { /* one line each: name and value, help, a count's range */
            snprintf(head, sizeof head, "%s %s", name, t->arg);
            append(buf, n, &len, "  %-26s %s", head, t->help);
            if (!t->words && t->max - t->min > 1) {
                if (t->max >= INT_MAX) append(buf, n, &len, " [%llu..]", t->min);
                else append(buf, n, &len, " [%llu..%llu]", t->min, t->max);
            }
            append(buf, n, &len, "\n");
        }
    }
    return buf;
}
