/*
 * The ESP-IDF port of the Tiny-LLM core: storage is POSIX I/O through the VFS
 * on the FAT card mounted at `root`, clocks are esp_timer and the CPU cycle
 * counter, the console is stdout.
 */
#ifndef TINYLLM_PORT_ESP32_H
#define TINYLLM_PORT_ESP32_H

#include <stdint.h>

#include "tinyllm/port.h"

/* File descriptors handed out by ESP-IDF's VFS are small integers (< 64,
 * FD_SETSIZE); we remember each one's file position to skip needless seeks. */
#define ESP32_PORT_MAX_FDS 64

typedef struct esp32_port {
    const char *root;                     /* "/sdcard" */
    int64_t pos[ESP32_PORT_MAX_FDS];      /* current offset per fd, -1 = unknown */
    uint32_t last_ccount;                 /* cycle counter extension to 64 bits */
    uint64_t cycles_high;
    int64_t last_cycles_us;
} esp32_port;

/* Fills `port` (callbacks + ctx); arena fields are set by the caller. */
void esp32_port_init(esp32_port *ctx, tl_port *port, const char *root);

#endif
