#include "output.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "tinyllm/tinyllm.h"

static void flush(tl_writer *w)
{
    if (w->len) w->port->write(w->port->ctx, w->buf, w->len);
    w->len = 0;
}

void tl_w_init(tl_writer *w, const tl_port *port)
{
    w->port = port;
    w->len = 0;
}

void tl_w_puts(tl_writer *w, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        size_t room = sizeof w->buf - w->len;
        if (room == 0) {
            flush(w);
            room = sizeof w->buf;
        }
        size_t take = n < room ? n : room;
        memcpy(w->buf + w->len, s, take);
        w->len += take;
        s += take;
        n -= take;
    }
}

/* A piece is formatted into a small stack buffer; one that does not fit it
 * (vsnprintf says how long it is) is formatted again straight into the
 * writer's emptied line buffer, so a piece up to sizeof w->buf - 1 bytes is
 * never cut. The core's pieces are shorter (a model name is at most 47 bytes). */
void tl_w_printf(tl_writer *w, const char *fmt, ...)
{
    char tmp[160];
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= sizeof tmp) {
        flush(w);
        n = vsnprintf(w->buf, sizeof w->buf, fmt, again);
        w->len = n < 0 ? 0 : (size_t)n < sizeof w->buf ? (size_t)n : sizeof w->buf - 1;
    } else if (n >= 0) {
        tl_w_puts(w, tmp);
    }
    va_end(again);
}

void tl_w_float(tl_writer *w, float v)
{
    if (isfinite(v)) tl_w_printf(w, "%.9g", (double)v);
    else tl_w_puts(w, "null");
}

void tl_w_endline(tl_writer *w)
{
    tl_w_puts(w, "\n");
    flush(w);
}

static void write_str(const tl_port *port, const char *s) { port->write(port->ctx, s, strlen(s)); }

/* Copies `in` into out[0..cap) with every byte outside printable ASCII written
 * as \xNN: values from the card or the console (a dtype string, a command
 * word) are echoed in messages, and a raw newline, escape sequence or U+2028
 * there would forge or split protocol lines. Always NUL-terminates. */
static void escape_into(char *out, size_t cap, const char *in)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 1 < cap; p++) {
        if (*p >= 0x20 && *p < 0x7f) {
            out[o++] = (char)*p;
        } else if (o + 4 < cap) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        } else {
            break;
        }
    }
    out[o] = '\0';
}

void tl_emit_error(const tl_port *port, int code, const char *msg)
{
    char safe[300], line[340];
    escape_into(safe, sizeof safe, msg);
    snprintf(line, sizeof line, "TINYLLM_ERROR %s %s\n", tl_code_name(code), safe);
    write_str(port, line);
}

void tl_emit_ready(const tl_port *port) { write_str(port, "TINYLLM_READY\n"); }

void tl_exit_line(const tl_port *port, int code)
{
    char line[32];
    snprintf(line, sizeof line, "TINYLLM_EXIT %d\n", code);
    write_str(port, line);
}

void tl_log(const tl_port *port, const char *tag, const char *fmt, ...)
{
    char line[320], text[240];
    unsigned long long ms = (unsigned long long)(port->time_us(port->ctx) / 1000u);
    int n = snprintf(line, sizeof line, "I (%llu) %s: ", ms, tag);
    if (n < 0) return;
    size_t used = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    escape_into(line + used, sizeof line - used, text);
    size_t len = strlen(line);
    if (len >= sizeof line - 1) len = sizeof line - 2; /* keep room for the newline */
    line[len++] = '\n';
    port->write(port->ctx, line, len);
}
