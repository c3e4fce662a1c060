/* The console's input on the ESP32: a task drains the UART as bytes arrive into a
 * buffer in PSRAM, so lines pasted while a command runs wait there, and bytes
 * that do not fit are counted and marked where they went missing. */
#ifndef TINYLLM_CONSOLE_H
#define TINYLLM_CONSOLE_H

#include <stddef.h>

/* Installs the UART driver and starts the reader task. Returns 0, or -1 with *why set. */
int console_start(size_t buffer_bytes, const char **why);

/* Reads one line (CR, LF or CRLF ends it) into buf, NUL-terminated, without its end.
 * Returns its length; CONSOLE_OVERLONG if it did not fit (the rest was dropped);
 * CONSOLE_LOST if bytes of it were lost: the buffer was full (*lost: how many) or the
 * UART's FIFO overflowed (how many unknown: *lost counts only the former). */
enum { CONSOLE_OVERLONG = -1, CONSOLE_LOST = -2 };
int console_read_line(char *buf, size_t cap, unsigned long *lost);

#endif
