/* POSIX storage for a tl_port (posix_card.h). */
#include "posix_card.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static int32_t open_error(int err)
{
    if (err == ENOENT || err == ENOTDIR) return TL_OPEN_NOT_FOUND;
    if (err == EACCES || err == EPERM) return TL_OPEN_DENIED;
    return TL_OPEN_FAILED;
}

static int32_t open_regular(posix_card *card, const char *full)
{
    /* stat first: opening a named pipe would block until a writer appears */
    struct stat st;
    if (stat(full, &st) != 0) return open_error(errno);
    if (!S_ISREG(st.st_mode)) return TL_OPEN_NOT_A_FILE;
    int fd = open(full, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* non-blocking: in case it changed since stat */
    if (fd < 0) return open_error(errno);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return TL_OPEN_NOT_A_FILE;
    }
    card->open_handles++;
    return (int32_t)fd;
}

static int32_t card_open(void *ctx, const char *path)
{
    posix_card *card = (posix_card *)ctx;
    char full[4096];
    int n = snprintf(full, sizeof full, "%s/%s", card->root, path);
    if (n < 0 || (size_t)n >= sizeof full) return TL_OPEN_NOT_FOUND;
    return open_regular(card, full);
}

/* The stand-in for the ESP32 app's weights partition: the same bytes, read like a file. */
static int32_t card_open_flash_tier(void *ctx)
{
    posix_card *card = (posix_card *)ctx;
    return card->flash_tier ? open_regular(card, card->flash_tier) : TL_OPEN_NOT_FOUND;
}

static int64_t card_size(void *ctx, int32_t h)
{
    (void)ctx;
    struct stat st;
    if (fstat(h, &st) != 0) return -1;
    return (int64_t)st.st_size;
}

static int64_t card_read_at(void *ctx, int32_t h, uint64_t offset, void *buf, size_t n)
{
    (void)ctx;
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(h, (char *)buf + done, n - done, (off_t)(offset + done));
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (got == 0) break; /* end of file */
        done += (size_t)got;
    }
    return (int64_t)done;
}

static void card_close(void *ctx, int32_t h)
{
    posix_card *card = (posix_card *)ctx;
    if (close(h) == 0) card->open_handles--;
}

void posix_card_storage(tl_port *port)
{
    port->open = card_open;
    port->size = card_size;
    port->read_at = card_read_at;
    port->close = card_close;
    port->open_flash_tier = card_open_flash_tier;
}
