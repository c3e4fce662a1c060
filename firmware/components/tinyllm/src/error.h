/* Error codes of the output protocol (contracts.md §5) and a message buffer. */
#ifndef TINYLLM_ERROR_H
#define TINYLLM_ERROR_H

enum {
    TL_OK = 0,
    TL_E_CONFIG,
    TL_E_FILE_MISSING,
    TL_E_FILE_SIZE,
    TL_E_CHECKSUM,
    TL_E_IO,
    TL_E_OOM,
    TL_E_PROMPT,
    TL_E_COMMAND,
    TL_E_NUMERIC, /* a NaN or infinity in an activation or logit (corrupt weights) */
    TL_E_COUNT
};

typedef struct tl_err {
    int code;
    char msg[240];
} tl_err;

/* Records the error (first one wins until cleared) and returns code. */
int tl_fail(tl_err *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
const char *tl_code_name(int code);
/* A port's open() failed with TL_OPEN_* code `why`: E_FILE_MISSING for a file
 * that is not there (or not a regular file), E_IO otherwise, naming which. */
int tl_fail_open(tl_err *err, const char *path, int why);

#endif
