/*
 * fuzz_config: the input is a model_config.json, parsed by tl_config_parse for
 * both precisions. Findings: a crash or sanitizer report, or a contract break:
 *  - a failure that is not E_CONFIG, or whose return code and recorded error disagree;
 *  - its error line, as the core prints it (tl_emit_error), that is not exactly
 *    one line of printable ASCII "TINYLLM_ERROR E_CONFIG <message>" (the core
 *    escapes at that point, so the check is on what reaches the console);
 *  - a config that parses but breaks the invariants the rest of the core
 *    relies on (ranges, divisibility, a model name that is printed unescaped
 *    inside TINYLLM_INFO's JSON).
 * The input bytes are passed as they are (no NUL after them): a read past
 * `len` is an ASan report.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "fuzz_common.h"
#include "output.h"

typedef struct capture {
    char buf[1024];
    size_t len;
} capture;

static void capture_write(void *ctx, const char *text, size_t n)
{
    capture *c = (capture *)ctx;
    if (n > sizeof c->buf - c->len) fz_break("an error line longer than 1024 bytes", c->buf, c->len);
    memcpy(c->buf + c->len, text, n);
    c->len += n;
}

static uint64_t zero_clock(void *ctx)
{
    (void)ctx;
    return 0;
}

static void check_config(const tl_config *cfg, const tl_manifest *man, const char *precision, const char *in,
                         size_t len)
{
#define REQUIRE(cond, what)                                                                                            \
    do {                                                                                                               \
        if (!(cond)) fz_break("a config that parsed breaks an invariant: " what, in, len);                           \
    } while (0)
    REQUIRE(cfg->quantized == (strcmp(precision, "int8") == 0), "dtype vs the precision asked for");
    REQUIRE(cfg->vocab >= 1 && cfg->hidden >= 1 && cfg->inter >= 1 && cfg->layers >= 1, "positive dimensions");
    REQUIRE(cfg->heads >= 1 && cfg->kv_heads >= 1 && cfg->heads % cfg->kv_heads == 0, "heads / kv heads");
    REQUIRE(cfg->head_dim >= 2 && cfg->head_dim % 2 == 0, "an even head_dim");
    REQUIRE((long)cfg->heads * cfg->head_dim <= 65536, "heads * head_dim <= 65536");
    REQUIRE(cfg->max_pos >= 1, "max_position_embeddings >= 1");
    REQUIRE(isfinite(cfg->eps) && cfg->eps > 0.0f && isfinite(cfg->theta) && cfg->theta > 0.0f,
            "finite positive rms_norm_eps and rope_theta");
    REQUIRE(!cfg->quantized || (cfg->hidden <= 1040 && cfg->inter <= 1040 && cfg->heads * cfg->head_dim <= 1040),
            "int8 matrix inputs <= 1040 wide");
    REQUIRE(!(cfg->quantized && man->has_proxy), "no lm_head proxy in an int8 set");
    REQUIRE(memchr(cfg->model_name, '\0', sizeof cfg->model_name) != NULL, "a NUL-terminated model_name");
    for (const char *p = cfg->model_name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        /* printed raw inside TINYLLM_INFO's JSON string */
        REQUIRE(c >= 0x20 && c <= 0x7e && c != '"' && c != '\\',
                "model_name is printed unescaped in TINYLLM_INFO, so it must be printable ASCII without \" or \\");
    }
    for (int id = 0; id < TL_NT; id++) {
        REQUIRE(man->bytes[0][id] > 0, "every tensor has bytes");
        REQUIRE(!cfg->quantized || !tl_tensor_quantized(id) || man->bytes[1][id] > 0, "every int8 tensor has scales");
    }
#undef REQUIRE
}

static void parse_one(const uint8_t *data, size_t size, const char *precision)
{
    tl_config cfg;
    tl_manifest man;
    tl_err err = {TL_OK, ""};
    int rc = tl_config_parse((const char *)data, size, precision, &cfg, &man, &err);
    if (rc != err.code) fz_break("tl_config_parse returned a code other than the one it recorded", err.msg,
                                 strlen(err.msg));
    if (rc == TL_OK) {
        check_config(&cfg, &man, precision, (const char *)data, size);
        return;
    }
    if (rc != TL_E_CONFIG) fz_break("a bad model_config.json failed with a code other than E_CONFIG", err.msg,
                                    strlen(err.msg));
    if (!memchr(err.msg, '\0', sizeof err.msg)) fz_break("the error message is not NUL-terminated", err.msg, 0);
    /* The error line exactly as the firmware prints it. */
    capture cap = {.len = 0};
    tl_port port = {.ctx = &cap, .write = capture_write, .time_us = zero_clock, .cycles = zero_clock};
    tl_emit_error(&port, rc, err.msg);
    fz_check_lines(cap.buf, cap.len);
    static const char prefix[] = "TINYLLM_ERROR E_CONFIG model_config.json: ";
    if (cap.len < sizeof prefix || memcmp(cap.buf, prefix, sizeof prefix - 1) != 0)
        fz_break("a config error line that does not start 'TINYLLM_ERROR E_CONFIG model_config.json: '", cap.buf,
                 cap.len);
    if (memchr(cap.buf, '\n', cap.len) != cap.buf + cap.len - 1)
        fz_break("a config error that is not exactly one line", cap.buf, cap.len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_selftest_from_env();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse_one(data, size, "float32");
    parse_one(data, size, "int8");
    return 0;
}
