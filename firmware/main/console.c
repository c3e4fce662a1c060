/*
 * Console input. A board's USB-serial bridge has no flow control: bytes that
 * arrive while the UART driver's buffer is full are dropped, and bytes left in
 * the UART's FIFO when that buffer filled wait there for the next byte to come
 * (a paste's last lines went unanswered until more input came). So a task
 * follows the driver's events and moves the bytes, as they arrive and also
 * while a command runs, into a stream buffer in PSRAM. Bytes that do not fit
 * there are counted, and where they went missing in the stream is noted; so is
 * a FIFO overflow the driver reports. The command loop then refuses the line
 * those bytes belonged to (E_IO) and runs every line before and after it.
 */
#include "console.h"

#include <stdint.h>

#include "driver/uart.h"
#include "driver/uart_vfs.h"
#include "esp_heap_caps.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/stream_buffer.h"
#include "freertos/task.h"
#include "sdkconfig.h"

#define DRIVER_RX_BYTES 512 /* the task empties it as bytes come: the stream buffer is the real one */
#define EVENTS 32           /* the driver's event queue: the task empties it as events come */
#define MAX_GAPS 16         /* places where bytes went missing that the reader has not reached */

/* A place in the stream where bytes went missing: `dropped` bytes after the first `offset`. */
typedef struct {
    uint32_t offset, dropped;
} gap_t;

static StreamBufferHandle_t s_stream;
static QueueHandle_t s_events;
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

/* Whether bytes went missing right where the reader is; adds how many (0 if unknown) to *lost.
 * A full buffer's gap at offset X is added before the reader gets to X (X - buffer bytes were
 * taken then). A FIFO overflow's may come while the reader waits at X: it is then seen with the
 * next byte, which belongs to the same damaged line, so that line is still the one refused. */
static int take_gap(unsigned long *lost)
{
    int here = 0;
    taskENTER_CRITICAL(&s_lock);
    while (s_count && s_gaps[s_first].offset == s_consumed) {
        *lost += s_gaps[s_first].dropped;
        s_first = (s_first + 1) % MAX_GAPS;
        s_count--;
        here = 1;
    }
    taskEXIT_CRITICAL(&s_lock);
    return here;
}

/* Moves n bytes into the stream buffer; what does not fit is a gap. */
static void accept(const uint8_t *bytes, size_t n, uint32_t *accepted)
{
    size_t sent = xStreamBufferSend(s_stream, bytes, n, 0);
    *accepted += (uint32_t)sent;
    if (sent < n) add_gap(*accepted, (uint32_t)(n - sent));
}

/* Follows the driver's events, as ESP-IDF's uart_events example does: each UART_DATA's bytes in
 * order, so a UART_FIFO_OVF (the driver reset the FIFO: bytes lost, how many unknown) marks the
 * right place in the stream. With no event left, whatever the driver still holds is taken too
 * (an event lost to a full queue must not leave bytes behind). */
static void reader_task(void *arg)
{
    const int uart = (int)(intptr_t)arg;
    uint32_t accepted = 0;
    uint8_t chunk[64];
    uart_event_t ev;
    for (;;) {
        if (xQueueReceive(s_events, &ev, portMAX_DELAY) != pdTRUE) continue;
        if (ev.type == UART_FIFO_OVF) add_gap(accepted, 0);
        size_t want = ev.type == UART_DATA ? ev.size : 0;
        if (uxQueueMessagesWaiting(s_events) == 0) uart_get_buffered_data_len(uart, &want);
        while (want) {
            int n = uart_read_bytes(uart, chunk, want < sizeof chunk ? want : sizeof chunk, 0);
            if (n <= 0) break;
            accept(chunk, (size_t)n, &accepted);
            want -= (size_t)n;
        }
    }
}

int console_start(size_t buffer_bytes, const char **why)
{
#if CONFIG_ESP_CONSOLE_UART
    const int uart = CONFIG_ESP_CONSOLE_UART_NUM;
    if (uart_is_driver_installed(uart)) uart_driver_delete(uart); /* ours: with the event queue */
    if (uart_driver_install(uart, DRIVER_RX_BYTES, 0, EVENTS, &s_events, 0) != ESP_OK) {
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
    int overlong = 0, damaged = 0;
    *lost = 0;
    for (;;) {
        if (take_gap(lost)) damaged = 1;
        char c;
        /* a line whose end was among the lost bytes ends at the gap when nothing follows it */
        if (xStreamBufferReceive(s_stream, &c, 1, damaged ? 0 : portMAX_DELAY) != 1) {
            if (damaged) break;
            continue;
        }
        s_consumed++;
        if (c == '\r' || c == '\n') break;
        if (len + 1 < cap) buf[len++] = c;
        else overlong = 1;
    }
    buf[len] = '\0';
    return damaged ? CONSOLE_LOST : overlong ? CONSOLE_OVERLONG : (int)len;
}
