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

/* One read handed to the reader task (tl_port.read_start / read_wait). */
typedef struct esp32_read_request {
    int32_t handle;
    uint64_t offset;
    void *buf;
    size_t n;
    int64_t got;
} esp32_read_request;

typedef struct esp32_port {
    const char *root;                     /* "/sdcard" */
    int64_t pos[ESP32_PORT_MAX_FDS];      /* current offset per fd, -1 = unknown */
    uint32_t last_ccount;                 /* cycle counter extension to 64 bits */
    uint64_t cycles_high;
    int64_t last_cycles_us;
    void *bounce;        /* internal DMA-capable RAM that card reads land in (NULL: read in place) */
    size_t bounce_bytes;
    uint64_t disk_reads; /* read() calls into the VFS/FatFs, all files */
    /* Read-ahead: a task (on the other core where there is one) that runs one
     * read at a time for the core while its caller computes. */
    void *reader;                  /* TaskHandle_t, NULL: none (the core reads in turn) */
    void *go, *done;               /* SemaphoreHandle_t: request posted / request finished */
    esp32_read_request request;
    /* The flash tier: the "weights" data partition, mapped once at the first load and kept. */
    const uint8_t *tier_map; /* NULL: not mapped yet */
    size_t tier_bytes;
} esp32_port;

/* The flash tier's handle: no VFS descriptor (those are < ESP32_PORT_MAX_FDS) has it. */
#define ESP32_FLASH_TIER_HANDLE 0x7ff0
/* partitions.csv's weights partition: the first application-defined type, subtype 0. */
#define ESP32_FLASH_TIER_LABEL "weights"
#define ESP32_FLASH_TIER_TYPE 0x40
#define ESP32_FLASH_TIER_SUBTYPE 0x00

/* Fills `port` (callbacks + ctx); arena fields are set by the caller. Takes,
 * from internal DMA-capable RAM, a bounce buffer of `bounce_bytes` (rounded
 * down to whole sectors; 0 = none; also the most one read() asks of FatFs) and
 * the core's chunk buffer of `chunk_bytes` (0 = none: the core uses the arena),
 * and starts the reader task. Returns -1 if the bounce buffer could not be had;
 * a chunk buffer or reader that could not is left out (NULL in `port`), which
 * only costs speed. */
int esp32_port_init(esp32_port *ctx, tl_port *port, const char *root, size_t bounce_bytes, size_t chunk_bytes);

#endif
