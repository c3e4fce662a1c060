/* Console output: ESP-IDF-style log lines and piecewise machine lines, no heap. */
#ifndef TINYLLM_OUTPUT_H
#define TINYLLM_OUTPUT_H

#include <stddef.h>

#include "tinyllm/port.h"

/* Buffers a line in pieces and hands it to port->write in chunks, so a long
 * TINYLLM_RESULT line never needs one big buffer. */
typedef struct tl_writer {
    const tl_port *port;
    size_t len;
    char buf[256];
} tl_writer;

void tl_w_init(tl_writer *w, const tl_port *port);
void tl_w_puts(tl_writer *w, const char *s);
void tl_w_printf(tl_writer *w, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void tl_w_float(tl_writer *w, float v); /* %.9g, or null if not finite (JSON has no nan) */
void tl_w_endline(tl_writer *w);        /* '\n' and flush */

/* "TINYLLM_ERROR <CODE> <message>" */
void tl_emit_error(const tl_port *port, int code, const char *msg);
/* "TINYLLM_READY" */
void tl_emit_ready(const tl_port *port);

#endif
