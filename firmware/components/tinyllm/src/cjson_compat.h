/* ESP-IDF ships <cJSON.h> (component "json"); Debian's libcjson-dev <cjson/cJSON.h>. */
#ifndef TINYLLM_CJSON_COMPAT_H
#define TINYLLM_CJSON_COMPAT_H
#if defined(TINYLLM_CJSON_HEADER)
#include TINYLLM_CJSON_HEADER
#elif defined(__has_include)
#if __has_include(<cJSON.h>)
#include <cJSON.h>
#else
#include <cjson/cJSON.h>
#endif
#else
#include <cJSON.h>
#endif
#endif
