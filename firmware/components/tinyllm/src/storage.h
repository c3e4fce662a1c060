/* Reads of the weight set's files, counted by the core (storage.c). */
#ifndef TINYLLM_STORAGE_H
#define TINYLLM_STORAGE_H

#include "model.h"

/* Reads model_config.json and checks the manifest and files; fills m->cfg and
 * opens every file. card_id receives the CRC-32 of the config bytes. */
int tl_model_open(tl_model *m, const tl_options *opt, uint32_t *card_id);
/* CRC-32 of every file against the manifest; prints per-file results and
 * returns the number of mismatches (E_CHECKSUM / E_IO printed for each). */
int tl_model_verify(tl_model *m);
/* Closes every file the model opened (safe after a failed tl_model_open). */
void tl_model_close(tl_model *m);
/* Bytes of every file in the set. */
uint64_t tl_model_total_file_bytes(const tl_model *m);

/* Reads n bytes at off into buf through the port; counts the read in
 * m->read_calls and m->bytes_read. A failed or short read is E_IO naming `what`. */
int tl_read_exact(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n);

/* Read-ahead (lm_head's chunks): tl_read_start hands a read to the port's
 * reader (the ESP32 app: a task on the other core) and returns; tl_read_wait
 * waits for it and counts it like tl_read_exact. A port without a reader runs
 * the read at wait: the same code path, in turn. At most one is in flight. */
void tl_read_start(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n);
int tl_read_wait(tl_model *m);
/* Leaving a stream early (an error, a fallback): waits out a read in flight, so
 * nothing still writes a buffer; returns code. */
int tl_read_drain(tl_model *m, int code);

/* The forward pass's short names for them. */
static inline int read_exact(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n)
{
    return tl_read_exact(m, fh, what, off, buf, n);
}
static inline void read_start(tl_model *m, int32_t fh, const char *what, uint64_t off, void *buf, size_t n)
{
    tl_read_start(m, fh, what, off, buf, n);
}
static inline int read_wait(tl_model *m) { return tl_read_wait(m); }
static inline int read_drain(tl_model *m, int code) { return tl_read_drain(m, code); }

#endif
