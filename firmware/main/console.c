/*
 * Console input. A board's USB-serial bridge has no flow control: bytes that
 * arrive while the UART driver's buffer is full are dropped, and bytes left in
 * the UART's FIFO when its buffer filled wait there for the next byte to come
 * (a paste's last lines went unanswered until more input came). So a task
 * reads the driver as soon as bytes arrive, including while a command runs,
 * into a stream buffer in PSRAM; when that is full, the bytes are counted, and
 * the offset in the stream where they went missing is queued. The command loop
 * then refuses the one line those bytes belonged to (E_IO, naming the count)
 * and runs the lines before and after it.
 */
#include "console.h"

#include <stdint.h>

#include "driver/uart.h"
#include "driver/uart_vfs.h"
#include "esp_heap_caps.h"
#include "freertos/FreeRTOS.h"
#include "freertos/stream_buffer.h"
#include "freertos/task.h"
#include "sdkconfig.h"

#define DRIVER_RX_BYTES 512 /* the task empties it as bytes come: the stream buffer is the real one */
#define MAX_GAPS 16         /* places where bytes went missing that the reader has not reached */

/* A place in the stream where bytes went missing: `dropped` bytes after the first `offset`. */
typedef struct {
    uint32_t offset, dropped;
} gap_t;

static StreamBufferHandle_t s_stream;
static portMUX_TYPE s_lock = portMUX_INITIALIZER_UNLOCKED; /* guards the gaps: the task adds, the reader takes */
static gap_t s_gaps[MAX_GAPS];
static int s_first, s_count;
static uint32_t s_consumed; /* bytes the reader has taken: its offset in the stream */

/* Bytes dropped after the first `offset` accepted ones. Drops at one offset (the buffer stayed full)
 * are one gap; with MAX_GAPS pending the last one takes the count (rare: input is garbled then). */
static void add_gap(uint32_t offset, uint32_t dropped)
{
    taskENTER_CRITICAL(&s_lock);
    gap_t *last = s_count ? &s_gaps[(s_first + s_count - 1) % MAX_GAPS] : NULL;
    if (last && (last->offset == offset || s_count == MAX_GAPS)) {
        last->dropped += dropped;
    } else {
        s_gaps[(s_first + s_count) % MAX_GAPS] = (gap_t){offset, dropped};
        s_count++;
    }
    taskEXIT_CRITICAL(&s_lock);
}

/* Bytes missing right where the reader is (0: none), taking that mark. A gap at offset X was
 * added when X bytes had been accepted and the buffer was full, so before the reader got to X. */
static uint32_t take_gap(void)
{
    uint32_t lost = 0;
    taskENTER_CRITICAL(&s_lock);
    if (s_count && s_gaps[s_first].offset == s_consumed) {
        lost = s_gaps[s_first].dropped;
        s_first = (s_first + 1) % MAX_GAPS;
        s_count--;
    }
    taskEXIT_CRITICAL(&s_lock);
    return lost;
}

static void reader_task(void *arg)
{
    const int uart = (int)(intptr_t)arg;
    uint32_t accepted = 0;
    uint8_t chunk[64];
    for (;;) {
        int n = uart_read_bytes(uart, chunk, 1, portMAX_DELAY); /* wait for a byte, then take what came */
        if (n <= 0) continue;
        size_t more = 0;
        if (uart_get_buffered_data_len(uart, &more) == ESP_OK && more) {
            int m = uart_read_bytes(uart, chunk + 1, more < sizeof chunk - 1 ? more : sizeof chunk - 1, 0);
            if (m > 0) n += m;
        }
        size_t sent = xStreamBufferSend(s_stream, chunk, (size_t)n, 0);
        accepted += (uint32_t)sent;
        if (sent < (size_t)n) add_gap(accepted, (uint32_t)n - (uint32_t)sent);
    }
}

int console_start(size_t buffer_bytes, const char **why)
{
#if CONFIG_ESP_CONSOLE_UART
    const int uart = CONFIG_ESP_CONSOLE_UART_NUM;
    if (!uart_is_driver_installed(uart) && uart_driver_install(uart, DRIVER_RX_BYTES, 0, 0, NULL, 0) != ESP_OK) {
        *why = "cannot install the console UART driver";
        return -1;
    }
    uart_vfs_dev_use_driver(uart); /* stdout through the driver too, as ESP-IDF's console examples do */
    uint8_t *storage = heap_caps_malloc(buffer_bytes + 1, MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT);
    StaticStreamBuffer_t *control = heap_caps_malloc(sizeof *control, MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
    if (!storage || !control) {
        *why = "no memory for the console buffer";
        return -1;
    }
    s_stream = xStreamBufferCreateStatic(buffer_bytes + 1, 1, storage, control); /* one byte stays free: holds buffer_bytes */
    /* above the command loop's priority: bytes are taken as they arrive, even during a gen */
    if (xTaskCreate(reader_task, "console_rx", 2048, (void *)(intptr_t)uart, 5, NULL) != pdPASS) {
        *why = "cannot start the console reader task";
        return -1;
    }
    return 0;
#else
    *why = "the console is not on a UART (CONFIG_ESP_CONSOLE_UART)";
    return -1;
#endif
}

int console_read_line(char *buf, size_t cap, unsigned long *lost)
{
    size_t len = 0;
    int overlong = 0;
    *lost = 0;
    for (;;) {
        *lost += take_gap();
        char c;
        /* a line whose end was among the lost bytes ends at the gap when nothing follows it */
        if (xStreamBufferReceive(s_stream, &c, 1, *lost ? 0 : portMAX_DELAY) != 1) {
            if (*lost) break;
            continue;
        }
        s_consumed++;
        if (c == '\r' || c == '\n') break;
        if (len + 1 < cap) buf[len++] = c;
        else overlong = 1;
    }
    buf[len] = '\0';
    return *lost ? CONSOLE_LOST : overlong ? CONSOLE_OVERLONG : (int)len;
}
