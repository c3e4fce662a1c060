/*
 * A console session and the prompt file (docs/contracts.md §3): each line run by the
 * command interpreter (engine.c) and counted, so a port's loop only reads lines.
 */
#include <stdarg.h>
#include <stdio.h>

#include "engine.h"

/* ------------------------------------------------------------------ session */

int tl_session_line(tl_engine *e, tl_session *s, char *line, size_t len)
{
    int r;
    if (line) {
        r = tl_engine_exec_bytes(e, line, len);
    } else {
        tl_session_refuse(e, s, TL_E_COMMAND, "console line longer than %lu bytes: ignored",
                          (unsigned long)(TL_LINE_BYTES - 1u));
        return TL_CMD_FAILED;
    }
    if (r == TL_CMD_FAILED) s->failed++;
    if (r == TL_CMD_QUIT) s->quit = 1;
    return r;
}

void tl_session_refuse(tl_engine *e, tl_session *s, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err.msg, sizeof e->err.msg, fmt, ap);
    va_end(ap);
    e->err.code = code;
    tl_engine_report(e);
    tl_emit_ready(e->port);
    s->failed++;
}

int tl_session_exit_code(const tl_session *s) { return s->failed ? 1 : 0; }

/* ------------------------------------------------------------------ scripts */

/* A prompt file is commands for a session, not a data set: 1 MiB is thousands of them. */
#define TL_SCRIPT_MAX_BYTES (1024u * 1024u)

/* A failure of the prompt file itself (not of one of its commands): one error line, TINYLLM_READY. */
static int script_failed(tl_engine *e, tl_session *s)
{
    tl_engine_report(e);
    tl_emit_ready(e->port);
    s->failed++;
    return 1;
}

/* Splits the open file (`size` bytes, read 128 at a time) into lines and runs each one;
 * a line longer than TL_LINE_BYTES - 1 is refused whole. */
static void script_lines(tl_engine *e, tl_session *s, int32_t fh, uint64_t size, const char *path)
{
    const tl_port *port = e->port;
    char *line = e->script_line; /* in the engine: a `load` in the file re-lays out the arena */
    size_t len = 0;
    int overlong = 0;
    char chunk[128];
    uint64_t off = 0;
    while (!s->quit) {
        int64_t got = 0;
        if (off < size) {
            uint64_t left = size - off;
            got = port->read_at(port->ctx, fh, off, chunk, left < sizeof chunk ? (size_t)left : sizeof chunk);
            if (got <= 0) {
                tl_fail(&e->err, TL_E_IO, "read %s: offset %llu failed", path, (unsigned long long)off);
                script_failed(e, s);
                return;
            }
            off += (uint64_t)got;
        }
        int at_end = got == 0;
        if (at_end) chunk[got++] = '\n'; /* the last line may lack its newline */
        for (int64_t i = 0; i < got && !s->quit; i++) {
            if (chunk[i] != '\n') {
                if (len + 1 < TL_LINE_BYTES) line[len++] = chunk[i];
                else overlong = 1;
                continue;
            }
            line[len] = '\0';
            if (!overlong) {
                tl_session_line(e, s, line, len);
            } else {
                tl_fail(&e->err, TL_E_COMMAND, "%s: line longer than %lu bytes", path,
                        (unsigned long)(TL_LINE_BYTES - 1u));
                script_failed(e, s);
            }
            len = 0;
            overlong = 0;
        }
        if (at_end) return;
    }
}

int tl_engine_run_script(tl_engine *e, const char *path, tl_session *s)
{
    const tl_port *port = e->port;
    int32_t fh = port->open(port->ctx, path);
    if (fh == TL_OPEN_NOT_FOUND) return -1;
    if (fh < 0) { /* there, but not a file we can read (a pipe, a directory...) */
        tl_fail_open(&e->err, path, fh);
        return script_failed(e, s);
    }
    int64_t size = port->size(port->ctx, fh);
    if (size < 0) { /* running it as empty would skip its commands without a word */
        tl_fail(&e->err, TL_E_IO, "%s: its size cannot be read", path);
        port->close(port->ctx, fh);
        return script_failed(e, s);
    }
    if (size > (int64_t)TL_SCRIPT_MAX_BYTES) { /* read 128 bytes at a time, a huge one would look like a hang */
        tl_fail(&e->err, TL_E_FILE_SIZE, "%s: %lld bytes, more than the %lu a prompt file may hold", path,
                (long long)size, (unsigned long)TL_SCRIPT_MAX_BYTES);
        port->close(port->ctx, fh);
        return script_failed(e, s);
    }
    tl_log(port, TL_TAG_INFER, "Running prompt file %s (%lld bytes)", path, (long long)size);
    int failed_before = s->failed;
    script_lines(e, s, fh, (uint64_t)size, path);
    port->close(port->ctx, fh);
    return s->failed - failed_before;
}
