#include "error.h"

#include <stdarg.h>
#include <stdio.h>

int tl_fail(tl_err *err, int code, const char *fmt, ...)
{
    if (err->code == TL_OK) { /* keep the first, most specific cause */
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return err->code;
}

const char *tl_code_name(int code)
{
    static const char *const names[] = {"OK",         "E_CONFIG", "E_FILE_MISSING", "E_FILE_SIZE", "E_CHECKSUM",
                                        "E_IO",       "E_OOM",    "E_PROMPT",       "E_COMMAND"};
    if (code < 0 || code >= (int)(sizeof names / sizeof names[0])) return "E_UNKNOWN";
    return names[code];
}
