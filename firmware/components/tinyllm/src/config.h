/* model_config.json: model shape, precision and the file manifest (contracts.md §1). */
#ifndef TINYLLM_CONFIG_H
#define TINYLLM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Tensor files of a set, in the order the forward pass first uses them. */
enum {
    TL_T_EMBED,
    TL_T_NORM1,
    TL_T_Q,
    TL_T_K,
    TL_T_V,
    TL_T_O,
    TL_T_NORM2,
    TL_T_GATE,
    TL_T_UP,
    TL_T_DOWN,
    TL_T_FINAL_NORM,
    TL_T_LM_HEAD,
    TL_NT
};

typedef struct tl_config {
    char model_name[48];
    char export_id[65]; /* "" when absent: the sets of one export share it (contracts.md §1) */
    int vocab, hidden, inter, layers, heads, kv_heads, head_dim, max_pos;
    float eps, theta;
    int quantized; /* 1: dtype "int8" (w8a8-rowwise-symmetric), 0: "float32" */
} tl_config;

/* The set's dtype as model_config.json names it: "int8" or "float32". */
static inline const char *tl_config_dtype(const tl_config *cfg) { return cfg->quantized ? "int8" : "float32"; }

/* Shape of one tensor file as [layers, rows, cols] (layers = 1 for unstacked ones). */
typedef struct tl_shape {
    int layers, rows, cols;
} tl_shape;

/* What the manifest says about each file: [0] = tensor, [1] = its scales (int8 only);
 * and the optional lm_head proxy of a float32 set (contracts.md §1, "lm_head proxy"). */
typedef struct tl_manifest {
    uint64_t bytes[2][TL_NT];
    uint32_t crc32[2][TL_NT];
    int has_proxy;
    uint64_t proxy_bytes;
    uint32_t proxy_crc32;
    uint32_t proxy_lm_head_crc32; /* lm_head.bin's crc32 the proxy was made from: must be this set's */
} tl_manifest;

/* lm_head_proxy.bin: one record per vocab row: float32 scale, uint8 error
 * code, then hidden int8 values; the row's quantization error is at most
 * code * |scale| * sqrt(hidden) / TL_PROXY_ERROR_DIVISOR (contracts.md §1). */
#define TL_PROXY_FILE "lm_head_proxy.bin"
#define TL_PROXY_DTYPE "int8-proxy"
#define TL_PROXY_HEADER_BYTES 5
#define TL_PROXY_ERROR_DIVISOR 500

const char *tl_tensor_base(int id);   /* "q_proj", "norm1", ... */
int tl_tensor_quantized(int id);      /* has a *_scales.bin in the int8 set */
tl_shape tl_tensor_shape(const tl_config *cfg, int id);
/* Writes "q_proj.bin" / "q_proj_scales.bin". */
void tl_file_name(char *out, size_t n, int id, int scales);

/* Parses and validates the JSON text; fills cfg and manifest (bytes checked
 * against the config). Uses cJSON's heap only while parsing. */
int tl_config_parse(const char *json, size_t len, const char *precision, tl_config *cfg, tl_manifest *man,
                    tl_err *err);

#endif
