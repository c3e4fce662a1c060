/* An error being carried up to the command that prints it (codes: tinyllm.h). */
#ifndef TINYLLM_ERROR_H
#define TINYLLM_ERROR_H

#include "tinyllm/tinyllm.h"

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
