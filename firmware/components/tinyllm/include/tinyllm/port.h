/*
 * The port interface: everything the portable core needs from a platform.
 *
 * A port (linux, xtensa-sim, esp32) fills one tl_port and hands it to
 * tl_engine_init(). The core never calls the OS, never mallocs (except cJSON
 * while parsing model_config.json at start-up) and never touches a file
 * system directly: it reads through these calls and counts bytes and calls
 * itself, so the statistics mean the same thing on every target.
 */
#ifndef TINYLLM_PORT_H
#define TINYLLM_PORT_H

#include <stddef.h>
#include <stdint.h>

enum {
    TL_OPEN_NOT_FOUND = -1,  /* no such file */
    TL_OPEN_NOT_A_FILE = -2, /* a directory, device, pipe or socket */
    TL_OPEN_DENIED = -3,     /* permission denied */
    TL_OPEN_FAILED = -4      /* any other reason (a symlink loop, an I/O error...) */
};

typedef struct tl_port {
    void *ctx; /* passed back to every call */

    /* Storage, rooted at the card: paths are like "tinyllm_weights/q_proj.bin".
     * open returns a handle >= 0, or a TL_OPEN_* code saying why not (a port
     * that cannot tell returns TL_OPEN_NOT_FOUND). It must never block: a
     * named pipe or a device is TL_OPEN_NOT_A_FILE. The core keeps up to ~25
     * files open at once (every tensor and scale file). */
    int32_t (*open)(void *ctx, const char *path);
    int64_t (*size)(void *ctx, int32_t handle);          /* bytes, or -1 */
    /* Read exactly n bytes at offset (short only at end of file); returns the
     * number of bytes read, or -1 on error. One call = one "read call" in the stats. */
    int64_t (*read_at)(void *ctx, int32_t handle, uint64_t offset, void *buf, size_t n);
    void (*close)(void *ctx, int32_t handle);
    /* Optional, both or neither (NULL: the core reads with read_at, in turn):
     * read_start hands one read to a reader that runs beside the caller (the
     * ESP32 app: a task on the other core) and returns 0 at once (-1: it could
     * not, and the core reads with read_at instead); read_wait waits for that
     * read and returns what read_at would have. At most one read is in flight,
     * and the core calls no other storage function until it has waited. */
    int (*read_start)(void *ctx, int32_t handle, uint64_t offset, void *buf, size_t n);
    int64_t (*read_wait)(void *ctx);
    /* Optional (NULL: none): storage reads the port has issued below the core
     * so far (the ESP32 app: read() calls into FatFs, each at most one SD
     * transfer). Reported per `gen` as "disk_reads" beside the core's read calls. */
    uint64_t (*disk_reads)(void *ctx);
    /* Optional (NULL: none): opens the flash tier (docs/contracts.md §1b), a read-only region
     * holding copies of some weight bytes: the ESP32 app's "weights" data partition,
     * memory-mapped; linux and xtensa-sim: a file standing in for it (--flash-tier FILE).
     * Returns a handle that size, read_at, read_start and close take as a file's (the core
     * checks its header and CRCs at every load and closes it with the set), or a TL_OPEN_* code. */
    int32_t (*open_flash_tier)(void *ctx);
    /* Optional (NULL: none): the port's own memory beside the arena (the ESP32
     * app: its internal-RAM heap, where the chunk buffers, FatFs and the tasks
     * live): the most of it ever in use since boot, and its size, in bytes.
     * Reported per `gen` as "internal_ram_peak" / "internal_ram_size". */
    void (*internal_ram)(void *ctx, uint64_t *peak_used, uint64_t *size);

    /* Clocks: microseconds and cycles since some fixed start (boot). */
    uint64_t (*time_us)(void *ctx);
    uint64_t (*cycles)(void *ctx);
    /* Optional (NULL: none): called just before a generation is timed. A port
     * under an RTOS waits for the next scheduler tick here, so periodic
     * interrupts fall at the same points of every run and instruction counts
     * under QEMU -icount repeat exactly. */
    void (*settle)(void *ctx);

    /* Console output. The core writes whole lines in one or more pieces; a
     * piece ending in '\n' ends a line (a good moment to flush). */
    void (*write)(void *ctx, const char *text, size_t n);

    /* The arena: the memory the core uses. Its size is the memory budget. */
    void *arena;
    size_t arena_bytes;

    /* Optional (NULL: none): a buffer for the streamed chunks in memory that
     * the storage DMA can write and the CPU reads fastest (the ESP32's internal
     * SRAM; its arena is in PSRAM, which the SD DMA cannot reach and which is
     * slow to read). The core uses it instead of an arena buffer when the chunk
     * buffer fits in it, so the sizes, reads and results are the same either way;
     * when two fit, lm_head reads its next chunk into one while computing the other. */
    void *chunk_buffer;
    size_t chunk_buffer_bytes;
} tl_port;

#endif
