#include "error.h"

#include <stdarg.h>
#include <stdio.h>

#include "tinyllm/port.h"

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
    static const char *const names[] = {"OK",   "E_CONFIG", "E_FILE_MISSING", "E_FILE_SIZE", "E_CHECKSUM",
                                        "E_IO", "E_OOM",    "E_PROMPT",       "E_COMMAND",   "E_NUMERIC",
                                        "E_CRASH"};
    _Static_assert(sizeof names / sizeof names[0] == TL_E_COUNT, "one name per error code");
    if (code < 0 || code >= (int)(sizeof names / sizeof names[0])) return "E_UNKNOWN";
    return names[code];
}

int tl_fail_open(tl_err *err, const char *path, int why)
{
    switch (why) {
    case TL_OPEN_NOT_FOUND: return tl_fail(err, TL_E_FILE_MISSING, "%s: file not found", path);
    case TL_OPEN_NOT_A_FILE:
        return tl_fail(err, TL_E_FILE_MISSING, "%s: not a regular file (a directory, device or pipe)", path);
    case TL_OPEN_DENIED: return tl_fail(err, TL_E_IO, "%s: permission denied", path);
    default: return tl_fail(err, TL_E_IO, "%s: cannot be opened (e.g. a symlink loop or an I/O error)", path);
    }
}
