/*
 * The output-protocol checks of the fuzz targets (fuzz_common.h, docs/contracts.md §5):
 * a contract break prints what broke and the output, then abort()s. The port they check
 * is fuzz_port.c's.
 */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fz_break(const char *what, const char *out, size_t len)
{
    fprintf(stderr, "\nCONTRACT BREAK: %s\n---- output (%lu bytes; bytes outside 0x20..0x7e as \\xNN) ----\n", what,
            (unsigned long)len);
    size_t shown = len < 16384 ? len : 16384;
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c == '\n') fputs("\\x0A\n", stderr);
        else if (c >= 0x20 && c < 0x7f) fputc(c, stderr);
        else fprintf(stderr, "\\x%02X", c);
    }
    if (shown < len) fputs("\n... (cut)", stderr);
    fputs("\n---- end of output ----\n", stderr);
    abort();
}

typedef struct fz_line {
    const char *s;
    size_t n; /* without its '\n' */
} fz_line;

static int starts(const fz_line *l, const char *prefix)
{
    size_t k = strlen(prefix);
    return l->n >= k && memcmp(l->s, prefix, k) == 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static const char *const error_codes[] = {"E_CONFIG", "E_FILE_MISSING", "E_FILE_SIZE", "E_CHECKSUM", "E_IO",
                                          "E_OOM",    "E_PROMPT",       "E_COMMAND",   "E_NUMERIC"};

static int is_error_line(const fz_line *l) { return starts(l, "TINYLLM_ERROR"); }
static int is_ready_line(const fz_line *l) { return l->n == 13 && memcmp(l->s, "TINYLLM_READY", 13) == 0; }

/* NULL if the line has one of the shapes the engine prints, else why not. */
static const char *shape_error(const fz_line *l)
{
    const char *s = l->s;
    size_t n = l->n;
    if (is_ready_line(l)) return NULL;
    if (starts(l, "TINYLLM_ERROR ")) {
        size_t i = 14;
        for (size_t c = 0; c < sizeof error_codes / sizeof error_codes[0]; c++) {
            size_t k = strlen(error_codes[c]);
            if (n > i + k + 1 && memcmp(s + i, error_codes[c], k) == 0 && s[i + k] == ' ') return NULL;
        }
        return "a TINYLLM_ERROR line without a known code and a message";
    }
    if (starts(l, "TINYLLM_INFO {") || starts(l, "TINYLLM_RESULT {"))
        return s[n - 1] == '}' ? NULL : "a TINYLLM_INFO/RESULT line that does not end its JSON object";
    if (starts(l, "Generated tokens:")) {
        for (size_t i = 17; i < n;) {
            if (s[i] != ' ' || i + 1 >= n || !is_digit(s[i + 1])) return "a malformed 'Generated tokens:' line";
            i++;
            while (i < n && is_digit(s[i])) i++;
        }
        return NULL;
    }
    if (starts(l, "I (")) {
        size_t i = 3;
        if (i >= n || !is_digit(s[i])) return "a log line without its time";
        while (i < n && is_digit(s[i])) i++;
        if (i + 2 > n || s[i] != ')' || s[i + 1] != ' ') return "a log line without its time";
        i += 2;
        size_t tag = i;
        while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_')) i++;
        if (i == tag || i + 2 > n || s[i] != ':' || s[i + 1] != ' ') return "a log line without its tag";
        return NULL;
    }
    return "a line of no known shape (a piece of a line split by a raw newline?)";
}

/* Splits out into lines; checks they are complete, printable and well-shaped. */
static size_t split_lines(const char *out, size_t len, fz_line **lines)
{
    size_t count = 0;
    for (size_t i = 0; i < len; i++) count += out[i] == '\n';
    *lines = (fz_line *)calloc(count ? count : 1, sizeof **lines);
    if (!*lines) {
        fprintf(stderr, "fuzz: out of memory\n");
        exit(2);
    }
    size_t k = 0, start = 0;
    for (size_t i = 0; i < len; i++) {
        if (out[i] != '\n') continue;
        (*lines)[k].s = out + start;
        (*lines)[k].n = i - start;
        k++;
        start = i + 1;
    }
    return count;
}

void fz_check_lines(const char *out, size_t len)
{
    if (len && out[len - 1] != '\n') fz_break("the output ends inside a line (no final newline)", out, len);
    size_t col = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c == '\n') {
            if (col == 0) fz_break("an empty output line", out, len);
            col = 0;
            continue;
        }
        col++;
        if (c < 0x20 || c > 0x7e) {
            char what[120];
            snprintf(what, sizeof what, "a raw byte 0x%02X (not printable ASCII) at output offset %lu", c,
                     (unsigned long)i);
            fz_break(what, out, len);
        }
    }
    fz_line *lines;
    size_t n = split_lines(out, len, &lines);
    for (size_t i = 0; i < n; i++) {
        const char *why = shape_error(&lines[i]);
        if (why) {
            char what[200];
            snprintf(what, sizeof what, "output line %lu is %s", (unsigned long)i + 1, why);
            free(lines);
            fz_break(what, out, len);
        }
    }
    free(lines);
}

/* For a log line "I (<ms>) <tag>: <text>" whose text starts with `prefix`:
 * the text after that prefix and its length; NULL otherwise. */
static const char *log_text(const fz_line *l, const char *tag, const char *prefix, size_t *rest)
{
    if (!starts(l, "I (")) return NULL;
    size_t i = 3;
    while (i < l->n && is_digit(l->s[i])) i++;
    if (i + 2 > l->n || l->s[i] != ')' || l->s[i + 1] != ' ') return NULL;
    i += 2;
    size_t t = strlen(tag), p = strlen(prefix);
    if (l->n < i + t + 2 + p || memcmp(l->s + i, tag, t) != 0 || memcmp(l->s + i + t, ": ", 2) != 0 ||
        memcmp(l->s + i + t + 2, prefix, p) != 0)
        return NULL;
    i += t + 2 + p;
    *rest = l->n - i;
    return l->s + i;
}

/* Within lines[from, to) of a command that failed with `errors` error lines:
 * NULL if that many is what the contract allows, else why not. */
static const char *extra_errors_error(const fz_line *lines, size_t from, size_t to, size_t errors)
{
    if (errors <= 1) return NULL;
    size_t rest;
    /* verify: one E_CHECKSUM / E_IO line per bad file, then "Verify: <bad> of <n> files failed" */
    for (size_t i = from; i < to; i++) {
        const char *s = log_text(&lines[i], "weight_loader", "Verify: ", &rest);
        if (!s) continue;
        unsigned long bad = 0;
        for (size_t d = 0; d < rest && is_digit(s[d]); d++) bad = bad * 10u + (unsigned long)(s[d] - '0');
        for (size_t j = from; j < i; j++)
            if (is_error_line(&lines[j]) && !starts(&lines[j], "TINYLLM_ERROR E_CHECKSUM ") &&
                !starts(&lines[j], "TINYLLM_ERROR E_IO "))
                return "a failed verify printed an error other than E_CHECKSUM / E_IO";
        if (bad == errors) return NULL;
        return "a failed verify whose error lines do not match its count of bad files";
    }
    /* load: its own error, "Load failed: loading the <p> set again", then that reload's error */
    if (errors == 2) {
        size_t first = to, second = to;
        for (size_t i = from; i < to; i++) {
            if (!is_error_line(&lines[i])) continue;
            if (first == to) first = i;
            else second = i;
        }
        for (size_t i = first + 1; i < second; i++)
            if (log_text(&lines[i], "tinyllm_inference", "Load failed: loading the ", &rest)) return NULL;
    }
    return "one failure printed more than one TINYLLM_ERROR line";
}

static void check_segment(const char *out, size_t len, const fz_line *lines, size_t from, size_t to, int failed)
{
    size_t errors = 0;
    for (size_t i = from; i < to; i++) errors += is_error_line(&lines[i]);
    if (failed && errors == 0) fz_break("a command failed without a TINYLLM_ERROR line", out, len);
    if (!failed && errors) fz_break("a command that succeeded printed a TINYLLM_ERROR line", out, len);
    const char *why = extra_errors_error(lines, from, to, errors);
    if (why) fz_break(why, out, len);
}

void fz_check_command(const char *out, size_t len, int result)
{
    if (result == TL_CMD_IGNORED || result == TL_CMD_QUIT) {
        if (len) fz_break(result == TL_CMD_QUIT ? "quit printed something" : "an ignored line printed something",
                          out, len);
        return;
    }
    if (result != TL_CMD_OK && result != TL_CMD_FAILED) fz_break("the engine returned an unknown result", out, len);
    fz_line *lines;
    size_t n = split_lines(out, len, &lines);
    size_t ready = 0;
    for (size_t i = 0; i < n; i++) ready += is_ready_line(&lines[i]);
    if (n == 0 || !is_ready_line(&lines[n - 1]) || ready != 1) {
        free(lines);
        fz_break("a command's output is not ended by exactly one TINYLLM_READY", out, len);
    }
    check_segment(out, len, lines, 0, n, result == TL_CMD_FAILED);
    free(lines);
}

void fz_check_script(const char *out, size_t len, int failed)
{
    if (failed < 0) fz_break("tl_engine_run_script did not find the prompt file", out, len);
    fz_line *lines;
    size_t n = split_lines(out, len, &lines);
    size_t from = 0;
    int failed_seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_ready_line(&lines[i])) continue;
        int errors = 0;
        for (size_t j = from; j < i; j++) errors += is_error_line(&lines[j]);
        check_segment(out, len, lines, from, i + 1, errors > 0);
        failed_seen += errors > 0;
        from = i + 1;
    }
    for (size_t j = from; j < n; j++) {
        /* after the last command only the file's own start line may remain (a file without commands) */
        if (from != 0 || is_error_line(&lines[j]) || !starts(&lines[j], "I (")) {
            free(lines);
            fz_break("output after the prompt file's last TINYLLM_READY", out, len);
        }
    }
    free(lines);
    if (failed_seen != failed) {
        char what[160];
        snprintf(what, sizeof what, "tl_engine_run_script counted %d failed commands, the output shows %d", failed,
                 failed_seen);
        fz_break(what, out, len);
    }
}

void fz_selftest_from_env(void)
{
    const char *path = getenv("TINYLLM_FUZZ_CHECK_TRANSCRIPT");
    if (!path || !*path) return;
    const char *result = getenv("TINYLLM_FUZZ_CHECK_RESULT");
    if (!result) result = "ok";
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "selftest: cannot open %s\n", path);
        exit(2);
    }
    size_t cap = 1 << 20, len = 0;
    char *buf = (char *)malloc(cap);
    if (!buf) exit(2);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *grown = (char *)realloc(buf, cap *= 2);
            if (!grown) exit(2);
            buf = grown;
        }
    }
    fclose(f);
    fz_check_lines(buf, len);
    if (strncmp(result, "script=", 7) == 0) fz_check_script(buf, len, atoi(result + 7));
    else if (strcmp(result, "ok") == 0) fz_check_command(buf, len, TL_CMD_OK);
    else if (strcmp(result, "failed") == 0) fz_check_command(buf, len, TL_CMD_FAILED);
    else if (strcmp(result, "ignored") == 0) fz_check_command(buf, len, TL_CMD_IGNORED);
    else if (strcmp(result, "quit") == 0) fz_check_command(buf, len, TL_CMD_QUIT);
    else {
        fprintf(stderr, "selftest: TINYLLM_FUZZ_CHECK_RESULT=%s (expected ok, failed, ignored, quit, script=N)\n",
                result);
        exit(2);
    }
    free(buf);
    printf("selftest: the transcript passes the contract checks\n");
    exit(0);
}
