/*
 * ESP-IDF port: see port_esp32.h.
 *
 * Storage uses open/lseek/read/fstat rather than stdio: no FILE buffers are
 * allocated (the core keeps every weight file open, up to 24) and each core
 * read is one VFS read straight into the caller's buffer. The file position
 * is tracked so sequential chunk reads (lm_head) never seek; FatFs fast seek
 * (CONFIG_FATFS_USE_FASTSEEK) makes the remaining seeks cheap.
 *
 * The arena is in PSRAM, which the ESP32's SD/MMC DMA cannot reach: given a
 * PSRAM destination, ESP-IDF's sdmmc_read_sectors falls back to one
 * single-block command per 512-byte sector. So the core's chunk buffer (every
 * streamed byte) is in internal DMA-capable RAM, read into directly, and the
 * other reads (start-up, embedding rows) go through a bounce buffer there. Into
 * either, FatFs issues one multi-block read per piece (at most a cluster).
 */
#include "port_esp32.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "esp_cpu.h"
#include "esp_heap_caps.h"
#include "esp_memory_utils.h"
#include "esp_partition.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/semphr.h"
#include "freertos/task.h"
#include "sdkconfig.h"

/* newlib's off_t is 32-bit here: offsets beyond this cannot be sought. */
#define MAX_OFFSET 0x7fffffffLL

static int64_t *pos_slot(esp32_port *p, int fd)
{
    return (fd >= 0 && fd < ESP32_PORT_MAX_FDS) ? &p->pos[fd] : NULL;
}

static int32_t esp_open(void *ctx, const char *path)
{
    esp32_port *p = (esp32_port *)ctx;
    char full[192];
    int n = snprintf(full, sizeof full, "%s/%s", p->root, path);
    if (n < 0 || (size_t)n >= sizeof full) return -1;
    struct stat st;
    if (stat(full, &st) == 0 && !S_ISREG(st.st_mode)) return TL_OPEN_NOT_A_FILE;
    int fd = open(full, O_RDONLY); /* read-only: FatFs fast seek applies */
    if (fd < 0) return errno == EACCES ? TL_OPEN_DENIED : TL_OPEN_NOT_FOUND;
    int64_t *slot = pos_slot(p, fd);
    if (slot) *slot = 0;
    return (int32_t)fd;
}

/* The flash tier: the weights partition mapped into the data address space (through the
 * flash cache), so a read is a memcpy, run by the reader task like a card read. Mapped
 * once and kept: every load checks it again, and the MMU pages stay free for nothing else. */
static int32_t esp_open_flash_tier(void *ctx)
{
    esp32_port *p = (esp32_port *)ctx;
    if (p->tier_map) return ESP32_FLASH_TIER_HANDLE;
    const esp_partition_t *part = esp_partition_find_first((esp_partition_type_t)ESP32_FLASH_TIER_TYPE,
                                                           (esp_partition_subtype_t)ESP32_FLASH_TIER_SUBTYPE,
                                                           ESP32_FLASH_TIER_LABEL);
    if (!part) return TL_OPEN_NOT_FOUND;
    const void *map = NULL;
    esp_partition_mmap_handle_t handle;
    if (esp_partition_mmap(part, 0, part->size, ESP_PARTITION_MMAP_DATA, &map, &handle) != ESP_OK)
        return TL_OPEN_FAILED;
    p->tier_map = (const uint8_t *)map;
    p->tier_bytes = part->size;
    return ESP32_FLASH_TIER_HANDLE;
}

static int64_t tier_read(const esp32_port *p, uint64_t offset, void *buf, size_t n)
{
    if (offset > p->tier_bytes || n > p->tier_bytes - offset) return -1;
    memcpy(buf, p->tier_map + offset, n);
    return (int64_t)n;
}

static int64_t esp_size(void *ctx, int32_t h)
{
    if (h == ESP32_FLASH_TIER_HANDLE) return (int64_t)((esp32_port *)ctx)->tier_bytes;
    struct stat st;
    if (fstat(h, &st) != 0) return -1;
    return (int64_t)st.st_size;
}

static int64_t esp_read_at(void *ctx, int32_t h, uint64_t offset, void *buf, size_t n)
{
    esp32_port *p = (esp32_port *)ctx;
    if (h == ESP32_FLASH_TIER_HANDLE) return tier_read(p, offset, buf, n);
    if (offset > (uint64_t)MAX_OFFSET || n > (size_t)MAX_OFFSET) return -1;
    int64_t *slot = pos_slot(p, h);
    if (!slot || *slot != (int64_t)offset) {
        if (lseek(h, (off_t)offset, SEEK_SET) != (off_t)offset) {
            if (slot) *slot = -1;
            return -1;
        }
        if (slot) *slot = (int64_t)offset;
    }
    /* A destination the DMA can reach is read into directly; anything else
     * (the PSRAM arena) goes through the bounce buffer, one piece at a time. */
    int direct = p->bounce == NULL || (esp_ptr_dma_capable(buf) && ((uintptr_t)buf & 3u) == 0);
    size_t done = 0;
    while (done < n) {
        size_t want = n - done;
        char *dst = (char *)buf + done;
        if (p->bounce_bytes && want > p->bounce_bytes) want = p->bounce_bytes; /* one transfer at most */
        if (!direct) dst = (char *)p->bounce;
        ssize_t got = read(h, dst, want);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (slot) *slot = -1;
            return -1;
        }
        if (got == 0) break; /* end of file */
        if (!direct) memcpy((char *)buf + done, p->bounce, (size_t)got);
        p->disk_reads++;
        done += (size_t)got;
    }
    if (slot) *slot += (int64_t)done;
    return (int64_t)done;
}

static uint64_t esp_disk_reads(void *ctx) { return ((esp32_port *)ctx)->disk_reads; }

/* The byte-addressable internal-RAM heap (DRAM): its low-water mark since boot, as
 * bytes in use at that moment. */
static void esp_internal_ram(void *ctx, uint64_t *peak_used, uint64_t *size)
{
    (void)ctx;
    size_t total = heap_caps_get_total_size(MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
    *size = total;
    *peak_used = total - heap_caps_get_minimum_free_size(MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
}

/* ---- read-ahead: the core hands lm_head's next chunk to this task ---------- */

/* Above the main task (priority 1): on one core it runs as soon as a read is
 * posted and gives the CPU back while the SD transfer is under way. */
#define READER_PRIORITY 5
#define READER_STACK 6144 /* VFS -> FatFs -> SD/MMC driver */

static void reader_task(void *arg)
{
    esp32_port *p = (esp32_port *)arg;
    for (;;) {
        xSemaphoreTake((SemaphoreHandle_t)p->go, portMAX_DELAY);
        esp32_read_request *r = &p->request;
        r->got = esp_read_at(p, r->handle, r->offset, r->buf, r->n);
        xSemaphoreGive((SemaphoreHandle_t)p->done);
    }
}

static int esp_read_start(void *ctx, int32_t h, uint64_t offset, void *buf, size_t n)
{
    esp32_port *p = (esp32_port *)ctx;
    p->request = (esp32_read_request){h, offset, buf, n, -1};
    xSemaphoreGive((SemaphoreHandle_t)p->go); /* the semaphore orders the request's stores */
    return 0;
}

static int64_t esp_read_wait(void *ctx)
{
    esp32_port *p = (esp32_port *)ctx;
    xSemaphoreTake((SemaphoreHandle_t)p->done, portMAX_DELAY);
    return p->request.got;
}

/* The reader on the second core where there is one (the board), else beside
 * the main task on the only one (the QEMU config: one core, for repeatable
 * instruction counts). */
static void start_reader(esp32_port *p, tl_port *port)
{
    p->go = xSemaphoreCreateBinary();
    p->done = xSemaphoreCreateBinary();
    TaskHandle_t task = NULL;
    int core = portNUM_PROCESSORS > 1 ? 1 : 0;
    if (p->go && p->done &&
        xTaskCreatePinnedToCore(reader_task, "tl_reader", READER_STACK, p, READER_PRIORITY, &task, core) == pdPASS) {
        p->reader = task;
        port->read_start = esp_read_start;
        port->read_wait = esp_read_wait;
    }
}

static void esp_close(void *ctx, int32_t h)
{
    if (h == ESP32_FLASH_TIER_HANDLE) return; /* the mapping is kept for the next load */
    int64_t *slot = pos_slot((esp32_port *)ctx, h);
    if (slot) *slot = -1;
    close(h);
}

static uint64_t esp_time_us(void *ctx)
{
    (void)ctx;
    return (uint64_t)esp_timer_get_time(); /* microseconds since boot */
}

/* The Xtensa CCOUNT register is 32 bits (wraps every ~17.9 s at 240 MHz) and
 * a float32 step on the board can take longer than that, so the count is
 * extended to 64 bits: the elapsed wall time says how many whole wraps were
 * missed between two calls. */
static uint64_t esp_cycles(void *ctx)
{
    esp32_port *p = (esp32_port *)ctx;
    uint32_t now = (uint32_t)esp_cpu_get_cycle_count();
    int64_t now_us = esp_timer_get_time();
    uint32_t delta = now - p->last_ccount; /* modulo 2^32 */
    uint64_t expected = (uint64_t)(now_us - p->last_cycles_us) * (uint64_t)CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ;
    uint64_t wraps = 0;
    if (expected > (uint64_t)delta + 0x80000000ull) wraps = (expected - delta + 0x80000000ull) >> 32;
    p->cycles_high += wraps << 32;
    p->cycles_high += delta;
    p->last_ccount = now;
    p->last_cycles_us = now_us;
    return p->cycles_high;
}

/* Start timing with the console drained, right after a FreeRTOS tick: the
 * tick and UART interrupts then land at the same points of every generation,
 * so the cycle counts of two runs under QEMU -icount repeat (without this they
 * differ by the ~600 cycles of a tick handler, depending on when the command
 * arrived). */
static void esp_settle(void *ctx)
{
    (void)ctx;
    fflush(stdout);
    fsync(fileno(stdout)); /* the UART driver: wait until the log line has left the FIFO */
    vTaskDelay(1);
}

static void esp_write(void *ctx, const char *text, size_t n)
{
    (void)ctx;
    fwrite(text, 1, n, stdout);
    if (n && text[n - 1] == '\n') fflush(stdout); /* a whole line: push it to the UART now */
}

int esp32_port_init(esp32_port *ctx, tl_port *port, const char *root, size_t bounce_bytes, size_t chunk_bytes)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->root = root;
    /* Start-up only: the one allocation the port makes. Whole sectors, so a
     * sector-aligned read stays sector-aligned piece after piece. */
    bounce_bytes &= ~(size_t)511u;
    if (bounce_bytes) ctx->bounce = heap_caps_malloc(bounce_bytes, MALLOC_CAP_DMA | MALLOC_CAP_INTERNAL);
    ctx->bounce_bytes = ctx->bounce ? bounce_bytes : 0;
    for (int i = 0; i < ESP32_PORT_MAX_FDS; i++) ctx->pos[i] = -1;
    ctx->last_ccount = (uint32_t)esp_cpu_get_cycle_count();
    ctx->last_cycles_us = esp_timer_get_time();
    memset(port, 0, sizeof *port);
    port->ctx = ctx;
    port->open = esp_open;
    port->size = esp_size;
    port->read_at = esp_read_at;
    port->close = esp_close;
    port->disk_reads = esp_disk_reads;
    port->open_flash_tier = esp_open_flash_tier;
    port->internal_ram = esp_internal_ram;
    port->time_us = esp_time_us;
    port->cycles = esp_cycles;
    port->write = esp_write;
    port->settle = esp_settle;
    if (chunk_bytes) port->chunk_buffer = heap_caps_malloc(chunk_bytes, MALLOC_CAP_DMA | MALLOC_CAP_INTERNAL);
    port->chunk_buffer_bytes = port->chunk_buffer ? chunk_bytes : 0;
    start_reader(ctx, port);
    return bounce_bytes == 0 || ctx->bounce != NULL ? 0 : -1;
}
