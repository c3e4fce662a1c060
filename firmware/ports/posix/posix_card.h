/*
 * A card folder as tl_port storage through POSIX calls (stat, open, pread):
 * the linux port's and the fuzz targets'. Fill a tl_port with
 * posix_card_storage(); its ctx must point to a struct whose first member is
 * a posix_card.
 */
#ifndef TINYLLM_POSIX_CARD_H
#define TINYLLM_POSIX_CARD_H

#include "tinyllm/port.h"

typedef struct posix_card {
    const char *root; /* the card folder: storage paths are relative to it */
    int open_handles; /* files the core holds open right now */
    const char *flash_tier; /* a file standing in for the flash tier (a host path), or NULL */
} posix_card;

/* Sets port->open, size, read_at and close, and open_flash_tier. */
void posix_card_storage(tl_port *port);

#endif
