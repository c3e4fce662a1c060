/*
 * Tiny-LLM on the AI-Thinker ESP32-CAM (ESP-IDF v5.4 or newer; built and tested with v5.5.4).
 *
 * Start-up: mount the micro-SD card (SD/MMC host, slot 1) at /sdcard, take the
 * arena from PSRAM once, start the core (it checks the card and prints
 * TINYLLM_INFO with the card id), run the card's prompt file, then serve
 * commands from the console UART (docs/contracts.md). Start-up errors print
 * one TINYLLM_ERROR line and TINYLLM_EXIT 2, then the firmware halts (no
 * reboot loop); it also halts after "quit".
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "driver/sdmmc_host.h"
#include "esp_err.h"
#include "esp_heap_caps.h"
#include "esp_system.h"
#include "esp_vfs_fat.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "console.h"
#include "port_esp32.h"
#include "sdkconfig.h"
#include "sdmmc_cmd.h"
#include "tinyllm/tinyllm.h"

#define MOUNT_POINT "/sdcard"
#define TAG "app_main"
/* The core keeps every tensor and scale file open (12 float32, 21 int8) plus
 * the prompt file and model_config.json while it is parsed. */
#define MAX_OPEN_FILES 32

static esp32_port s_ctx;
static tl_port s_port;
static char s_line[TL_LINE_BYTES]; /* a console command: "gen" + up to a whole context of ids */

/* Start-up failure: one error line, the exit line, then stay halted. */
static void halt(int code)
{
    tl_exit_line(&s_port, code);
    for (;;) vTaskDelay(pdMS_TO_TICKS(10000));
}

/* A start-up failure (code TL_E_*): the core's error line, then halt. */
static void fatal(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fatal(int code, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tl_port_error(&s_port, code, "%s", msg);
    halt(2);
}

/* One attempt to bring the card up and mount its FAT at `khz`. */
static esp_err_t try_mount(int khz, sdmmc_card_t **card)
{
    sdmmc_host_t host = SDMMC_HOST_DEFAULT(); /* slot 1 = the ESP32-CAM's card slot */
    host.max_freq_khz = khz;

    /* On the ESP32, slot 1 is routed through the IO MUX to fixed pins
     * (CLK 14, CMD 15, D0 2, D1 4, D2 12, D3 13): the slot config has no pin
     * fields there, only the width and flags. */
    sdmmc_slot_config_t slot = SDMMC_SLOT_CONFIG_DEFAULT();
    slot.width = CONFIG_TINYLLM_SD_BUS_WIDTH;
#if CONFIG_TINYLLM_SD_INTERNAL_PULLUPS
    slot.flags |= SDMMC_SLOT_FLAG_INTERNAL_PULLUP;
#endif

    esp_vfs_fat_sdmmc_mount_config_t mount = {
        .format_if_mount_failed = false, /* never erase a card holding weights */
        .max_files = MAX_OPEN_FILES,
        .allocation_unit_size = 0,
    };
    tl_log(&s_port, TAG, "Mounting SD card at %s (SDMMC slot 1, %d-bit, %d kHz)", MOUNT_POINT,
           CONFIG_TINYLLM_SD_BUS_WIDTH, khz);
    return esp_vfs_fat_sdmmc_mount(MOUNT_POINT, &host, &slot, &mount, card);
}

/* Asking for high speed (40 MHz) is safe either way: a card without it stays at
 * 20 MHz (ESP-IDF's driver checks with CMD6 and falls back), and a card that
 * claims it but fails to come up at that clock on this board's wiring is tried
 * once more at 20 MHz. */
static sdmmc_card_t *mount_card(void)
{
    sdmmc_card_t *card = NULL;
    int khz = CONFIG_TINYLLM_SD_FREQ_KHZ;
    esp_err_t err = try_mount(khz, &card);
    if (err != ESP_OK && err != ESP_FAIL && khz > SDMMC_FREQ_DEFAULT) {
        tl_log(&s_port, TAG, "SD card init failed at %d kHz (%s): retrying at %d kHz", khz, esp_err_to_name(err),
               SDMMC_FREQ_DEFAULT);
        khz = SDMMC_FREQ_DEFAULT;
        err = try_mount(khz, &card);
    }
    if (err == ESP_FAIL)
        fatal(TL_E_IO, "SD card found but no FAT filesystem could be mounted at %s (write the image from "
              "`tinyllm-harness image` to the card)", MOUNT_POINT);
    if (err != ESP_OK)
        fatal(TL_E_IO, "SD card init failed at %s: %s (0x%x); check the card is inserted", MOUNT_POINT,
              esp_err_to_name(err), (unsigned)err);
    tl_log(&s_port, TAG, "SD card mounted successfully");
    /* the clock the driver settled on: the card's limit after its high-speed check */
    tl_log(&s_port, TAG, "SD bus: %d-bit at %ld kHz (asked %d kHz)", CONFIG_TINYLLM_SD_BUS_WIDTH,
           (long)card->max_freq_khz, khz);
    sdmmc_card_print_info(stdout, card);
    fflush(stdout);
    return card;
}

/* The arena: one PSRAM block for the whole run. */
static void *alloc_arena(size_t *got)
{
    const uint32_t caps = MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT;
    size_t want = (size_t)CONFIG_TINYLLM_ARENA_KB * 1024u;
    size_t reserve = (size_t)CONFIG_TINYLLM_HEAP_RESERVE_KB * 1024u;
    size_t largest = heap_caps_get_largest_free_block(caps);
    size_t avail = largest > reserve ? largest - reserve : 0;
    size_t size = want < avail ? want : avail;
    void *arena = size ? heap_caps_malloc(size, caps) : NULL;
    if (!arena)
        fatal(TL_E_OOM, "cannot allocate the arena in PSRAM: wanted %u bytes, largest free PSRAM block %u bytes "
              "(is PSRAM present? QEMU needs -m 4M)", (unsigned)want, (unsigned)largest);
    if (size < want)
        tl_log(&s_port, TAG, "Arena shrunk to %u bytes (wanted %u, largest free PSRAM block %u)", (unsigned)size,
               (unsigned)want, (unsigned)largest);
    *got = size;
    return arena;
}

/* The port: SD read buffer, chunk buffer and reader task. A chunk buffer or reader
 * task that could not be had only costs speed (said in a line); no SD read buffer is fatal. */
static void start_port(void)
{
    int bounce_failed = esp32_port_init(&s_ctx, &s_port, MOUNT_POINT, (size_t)CONFIG_TINYLLM_SD_BUFFER_KB * 1024u,
                                        (size_t)CONFIG_TINYLLM_CHUNK_BUFFER_KB * 1024u);
    tl_log(&s_port, TAG, "Tiny-LLM ESP32 Inference Engine Starting");
    if (!s_port.read_start) tl_log(&s_port, TAG, "No reader task: lm_head chunks are read, then computed");
    if (CONFIG_TINYLLM_CHUNK_BUFFER_KB && !s_port.chunk_buffer)
        tl_log(&s_port, TAG, "No %d KiB chunk buffer in internal RAM (largest free block %u bytes): chunks go to PSRAM",
               CONFIG_TINYLLM_CHUNK_BUFFER_KB,
               (unsigned)heap_caps_get_largest_free_block(MALLOC_CAP_DMA | MALLOC_CAP_INTERNAL));
    if (bounce_failed)
        fatal(TL_E_OOM, "cannot allocate the %d KiB SD read buffer in internal DMA-capable RAM (largest free "
              "block %u bytes): lower TINYLLM_SD_BUFFER_KB", CONFIG_TINYLLM_SD_BUFFER_KB,
              (unsigned)heap_caps_get_largest_free_block(MALLOC_CAP_DMA | MALLOC_CAP_INTERNAL));
    tl_log(&s_port, TAG, "Free heap: %u bytes (PSRAM free %u bytes)", (unsigned)esp_get_free_heap_size(),
           (unsigned)heap_caps_get_free_size(MALLOC_CAP_SPIRAM));
}

/* Serves console commands until "quit". A line that lost bytes on the way in is
 * refused, not run: what is left of it could be another, valid command. */
static void serve_console(tl_engine *e, tl_session *session)
{
    fflush(stdout);
    fsync(fileno(stdout)); /* let pending output leave before the UART driver takes over */
    const char *why = NULL;
    if (console_start((size_t)CONFIG_TINYLLM_CONSOLE_BUFFER_KB * 1024u, &why) != 0) fatal(TL_E_IO, "console: %s", why);
    while (!session->quit) {
        unsigned long lost = 0;
        int len = console_read_line(s_line, sizeof s_line, &lost);
        if (len == CONSOLE_LOST && lost)
            tl_session_refuse(e, session, TL_E_IO,
                              "console input overflowed: %lu bytes of this line were lost while a command ran "
                              "(the console buffer holds %d KiB; the serial line has no flow control): not run",
                              lost, CONFIG_TINYLLM_CONSOLE_BUFFER_KB);
        else if (len == CONSOLE_LOST)
            tl_session_refuse(e, session, TL_E_IO,
                              "console input overflowed: bytes of this line were lost in the UART's FIFO "
                              "(the serial line has no flow control): not run");
        else tl_session_line(e, session, len < 0 ? NULL : s_line, len < 0 ? 0 : (size_t)len);
    }
}

void app_main(void)
{
    start_port();
    mount_card();

    size_t arena_bytes = 0;
    void *arena = alloc_arena(&arena_bytes);
    s_port.arena = arena;
    s_port.arena_bytes = arena_bytes;
    tl_log(&s_port, TAG, "Arena: %u bytes in PSRAM at %p; precision %s, weights /sdcard/%s", (unsigned)arena_bytes,
           arena, CONFIG_TINYLLM_PRECISION, CONFIG_TINYLLM_WEIGHTS_DIR);

    tl_options opt = {
        .weights_dir = NULL, /* the precision's folder */
        .precision = CONFIG_TINYLLM_PRECISION,
        .context = CONFIG_TINYLLM_CONTEXT,
        .chunk_rows = CONFIG_TINYLLM_CHUNK_ROWS,
        .no_resident = 0,
    };
    /* Prints the loader lines, TINYLLM_INFO (with the card id) and TINYLLM_READY,
     * or TINYLLM_ERROR naming what is wrong with the card. */
    tl_engine *e = tl_engine_init(&s_port, &opt);
    if (!e) halt(2);
    tl_log(&s_port, TAG, "Free heap: %u bytes (internal %u, largest internal block %u; PSRAM %u)",
           (unsigned)esp_get_free_heap_size(), (unsigned)heap_caps_get_free_size(MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT),
           (unsigned)heap_caps_get_largest_free_block(MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT),
           (unsigned)heap_caps_get_free_size(MALLOC_CAP_SPIRAM));

    tl_session session = {0, 0};
    if (CONFIG_TINYLLM_PROMPT_FILE[0] != '\0') tl_engine_run_script(e, CONFIG_TINYLLM_PROMPT_FILE, &session);
    serve_console(e, &session);
    halt(tl_session_exit_code(&session));
}
