/*
 * The ESP-IDF port of the Tiny-LLM core: storage is POSIX I/O through the VFS
 * on the FAT card mounted at `root`, clocks are esp_timer and the CPU cycle
 * counter, the console is stdout.
 */
#ifndef TINYLLM_PORT_ESP32_H
#define TINYLLM_PORT_ESP32_H

#include <stddef.h>
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
    void *bounce;        /* internal DMA-capable RAM that card reads land in (NULL: read in place) */
    size_t bounce_bytes;
    uint64_t disk_reads; /* read() calls into the VFS/FatFs, all files */
} esp32_port;

/* Fills `port` (callbacks + ctx); arena fields are set by the caller. Takes,
 * from internal DMA-capable RAM, a bounce buffer of `bounce_bytes` (rounded
 * down to whole sectors; 0 = none; also the most one read() asks of FatFs) and
 * the core's chunk buffer of `chunk_bytes` (0 = none: the core uses the arena).
 * Returns -1 if the bounce buffer could not be had; a chunk buffer that could
 * not is left out (port->chunk_buffer NULL), which only costs speed. */
int esp32_port_init(esp32_port *ctx, tl_port *port, const char *root, size_t bounce_bytes, size_t chunk_bytes);

#endif
