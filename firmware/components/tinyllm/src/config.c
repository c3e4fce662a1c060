#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cjson_compat.h"
#include "kernels.h"

/* Any dimension beyond this is surely a corrupt config (and keeps products in range). */
#define TL_MAX_DIM (1 << 24)

static const char *const tensor_base[TL_NT] = {
    "embed_tokens", "norm1", "q_proj", "k_proj", "v_proj", "o_proj", "norm2",
    "gate_proj",    "up_proj", "down_proj", "final_norm", "lm_head",
};

const char *tl_tensor_base(int id) { return tensor_base[id]; }

int tl_tensor_quantized(int id) { return id != TL_T_NORM1 && id != TL_T_NORM2 && id != TL_T_FINAL_NORM; }

tl_shape tl_tensor_shape(const tl_config *c, int id)
{
    int L = c->layers, H = c->hidden, qd = c->heads * c->head_dim, kvd = c->kv_heads * c->head_dim;
    tl_shape s = {1, 1, 1};
    switch (id) {
    case TL_T_EMBED: s = (tl_shape){1, c->vocab, H}; break;
    case TL_T_LM_HEAD: s = (tl_shape){1, c->vocab, H}; break;
    case TL_T_Q: s = (tl_shape){L, qd, H}; break;
    case TL_T_K:
    case TL_T_V: s = (tl_shape){L, kvd, H}; break;
    case TL_T_O: s = (tl_shape){L, H, qd}; break;
    case TL_T_GATE:
    case TL_T_UP: s = (tl_shape){L, c->inter, H}; break;
    case TL_T_DOWN: s = (tl_shape){L, H, c->inter}; break;
    case TL_T_NORM1:
    case TL_T_NORM2: s = (tl_shape){L, 1, H}; break; /* [L, H]: one "row" per layer */
    case TL_T_FINAL_NORM: s = (tl_shape){1, 1, H}; break;
    default: break;
    }
    return s;
}

void tl_file_name(char *out, size_t n, int id, int scales)
{
    snprintf(out, n, "%s%s.bin", tensor_base[id], scales ? "_scales" : "");
}

/* a * b with overflow check. */
static int mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a) return -1;
    *out = a * b;
    return 0;
}

static int expected_bytes(const tl_config *c, int id, int scales, uint64_t *bytes)
{
    tl_shape s = tl_tensor_shape(c, id);
    uint64_t n;
    if (mul_u64((uint64_t)s.layers, (uint64_t)s.rows, &n)) return -1;
    if (scales) return mul_u64(n, 4, bytes); /* one float32 per row */
    if (mul_u64(n, (uint64_t)s.cols, &n)) return -1;
    uint64_t elem = (c->quantized && tl_tensor_quantized(id)) ? 1u : 4u;
    return mul_u64(n, elem, bytes);
}

/* Expected "shape" array of a file, as in contracts.md (stacked tensors [L, out, in],
 * norms [L, H], final_norm [H], scales = shape without the last axis). */
static int expected_shape(const tl_config *c, int id, int scales, long dims[3])
{
    tl_shape s = tl_tensor_shape(c, id);
    int n = 0;
    int stacked = !(id == TL_T_EMBED || id == TL_T_LM_HEAD || id == TL_T_FINAL_NORM);
    int is_norm = !tl_tensor_quantized(id);
    if (stacked) dims[n++] = s.layers;
    if (!is_norm) dims[n++] = s.rows;
    if (!scales) dims[n++] = s.cols;
    return n;
}

static int get_int(const cJSON *obj, const char *key, int lo, int hi, int *out, tl_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(it))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: config.%s missing or not a number", key);
    double v = it->valuedouble;
    if (v != floor(v) || v < (double)lo || v > (double)hi)
        return tl_fail(err, TL_E_CONFIG, "model_config.json: config.%s = %.17g, expected an integer in [%d, %d]", key,
                       v, lo, hi);
    *out = (int)v;
    return TL_OK;
}

static int get_pos_float(const cJSON *obj, const char *key, float *out, tl_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(it))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: config.%s missing or not a number", key);
    double v = it->valuedouble;
    if (!(v > 0.0) || !isfinite(v) || (float)v <= 0.0f || !isfinite((float)v))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: config.%s = %.17g, expected a positive number", key, v);
    *out = (float)v;
    return TL_OK;
}

static int expect_string(const cJSON *obj, const char *where, const char *key, const char *want, tl_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(it))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: %s%s missing or not a string, expected \"%s\"", where, key,
                       want);
    if (strcmp(it->valuestring, want) != 0)
        return tl_fail(err, TL_E_CONFIG, "model_config.json: %s%s = \"%s\", expected \"%s\"", where, key,
                       it->valuestring, want);
    return TL_OK;
}

static int parse_model(const cJSON *c, tl_config *cfg, tl_err *err)
{
    if (!cJSON_IsObject(c)) return tl_fail(err, TL_E_CONFIG, "model_config.json: \"config\" missing or not an object");
    if (expect_string(c, "config.", "model_type", "llama", err)) return err->code;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(c, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: config.hidden_act must be \"silu\"");
    /* What this forward pass does not do is refused, not ignored: biases, RoPE scaling. */
    static const char *const biases[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(c, biases[i]);
        if (b && !cJSON_IsFalse(b) && !cJSON_IsNull(b))
            return tl_fail(err, TL_E_CONFIG, "model_config.json: config.%s: biases are not supported", biases[i]);
    }
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(c, "rope_scaling");
    if (scaling && !cJSON_IsNull(scaling)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(scaling, "rope_type");
        if (!type) type = cJSON_GetObjectItemCaseSensitive(scaling, "type");
        if (!cJSON_IsObject(scaling) || cJSON_GetObjectItemCaseSensitive(scaling, "factor") ||
            (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "default") == 0)))
            return tl_fail(err, TL_E_CONFIG, "model_config.json: config.rope_scaling: RoPE scaling is not supported");
    }
    if (get_int(c, "vocab_size", 1, TL_MAX_DIM, &cfg->vocab, err) ||
        get_int(c, "hidden_size", 1, 65536, &cfg->hidden, err) ||
        get_int(c, "intermediate_size", 1, 65536, &cfg->inter, err) ||
        get_int(c, "num_hidden_layers", 1, 4096, &cfg->layers, err) ||
        get_int(c, "num_attention_heads", 1, 4096, &cfg->heads, err) ||
        get_int(c, "num_key_value_heads", 1, 4096, &cfg->kv_heads, err) ||
        get_int(c, "head_dim", 2, 65536, &cfg->head_dim, err) ||
        get_int(c, "max_position_embeddings", 1, TL_MAX_DIM, &cfg->max_pos, err) ||
        get_pos_float(c, "rms_norm_eps", &cfg->eps, err) || get_pos_float(c, "rope_theta", &cfg->theta, err))
        return err->code;
    if (cfg->heads % cfg->kv_heads != 0)
        return tl_fail(err, TL_E_CONFIG,
                       "model_config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       cfg->heads, cfg->kv_heads);
    if (cfg->head_dim % 2 != 0)
        return tl_fail(err, TL_E_CONFIG, "model_config.json: head_dim %d must be even (RoPE)", cfg->head_dim);
    if ((long)cfg->heads * cfg->head_dim > 65536)
        return tl_fail(err, TL_E_CONFIG, "model_config.json: num_attention_heads*head_dim = %ld too large",
                       (long)cfg->heads * cfg->head_dim);
    return TL_OK;
}

static int parse_quantization(const cJSON *root, tl_config *cfg, tl_err *err)
{
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization");
    if (!cfg->quantized) {
        if (q && !cJSON_IsNull(q))
            return tl_fail(err, TL_E_CONFIG, "model_config.json: quantization must be null for dtype float32");
        return TL_OK;
    }
    if (!cJSON_IsObject(q))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: dtype int8 needs a quantization object");
    if (expect_string(q, "quantization.", "scheme", "w8a8-rowwise-symmetric", err)) return err->code;
    const cJSON *qmax = cJSON_GetObjectItemCaseSensitive(q, "qmax");
    if (qmax && !(cJSON_IsNumber(qmax) && qmax->valuedouble == 127.0))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: quantization.qmax must be 127");
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(q, "scale_dtype");
    if (sd && expect_string(q, "quantization.", "scale_dtype", "float32", err)) return err->code;
    return TL_OK;
}

static int parse_crc(const char *s, uint32_t *out)
{
    if (strlen(s) != 8) return -1;
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        char ch = s[i];
        uint32_t d;
        if (ch >= '0' && ch <= '9') d = (uint32_t)(ch - '0');
        else if (ch >= 'a' && ch <= 'f') d = (uint32_t)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F') d = (uint32_t)(ch - 'A' + 10);
        else return -1;
        v = (v << 4) | d;
    }
    *out = v;
    return 0;
}

static int parse_file_entry(const cJSON *files, const tl_config *cfg, int id, int scales, tl_manifest *man,
                            tl_err *err)
{
    char name[40];
    tl_file_name(name, sizeof name, id, scales);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(files, name);
    if (!cJSON_IsObject(f))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s missing from the manifest", name);

    uint64_t want;
    if (expected_bytes(cfg, id, scales, &want))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: size of %s overflows 64 bits", name);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(f, "bytes");
    if (!cJSON_IsNumber(b))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s.bytes missing or not a number", name);
    if (b->valuedouble != (double)want)
        return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s.bytes = %.17g, expected %llu from config", name,
                       b->valuedouble, (unsigned long long)want);

    const char *want_dtype = (!scales && cfg->quantized && tl_tensor_quantized(id)) ? "int8" : "float32";
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(f, "dtype");
    if (dt && !(cJSON_IsString(dt) && strcmp(dt->valuestring, want_dtype) == 0))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s.dtype = %s, expected %s", name,
                       cJSON_IsString(dt) ? dt->valuestring : "(not a string)", want_dtype);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(f, "shape");
    if (shape) { /* optional, but if present it must agree with the config */
        long dims[3];
        int n = expected_shape(cfg, id, scales, dims);
        int ok = cJSON_IsArray(shape) && cJSON_GetArraySize(shape) == n;
        for (int i = 0; ok && i < n; i++) {
            const cJSON *d = cJSON_GetArrayItem(shape, i);
            ok = cJSON_IsNumber(d) && d->valuedouble == (double)dims[i];
        }
        if (!ok) {
            char buf[64];
            if (n == 1) snprintf(buf, sizeof buf, "[%ld]", dims[0]);
            else if (n == 2) snprintf(buf, sizeof buf, "[%ld, %ld]", dims[0], dims[1]);
            else snprintf(buf, sizeof buf, "[%ld, %ld, %ld]", dims[0], dims[1], dims[2]);
            return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s.shape does not match config, expected %s",
                           name, buf);
        }
    }

    const cJSON *crc = cJSON_GetObjectItemCaseSensitive(f, "crc32");
    uint32_t crcv = 0;
    if (!cJSON_IsString(crc) || parse_crc(crc->valuestring, &crcv))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s.crc32 missing or not 8 hex digits", name);

    man->bytes[scales][id] = want;
    man->crc32[scales][id] = crcv;
    return TL_OK;
}

/* The optional lm_head proxy of a float32 set: absent is fine (lm_head is then
 * always streamed in full); present, it must be exactly what the contract says. */
static int parse_proxy_entry(const cJSON *files, const tl_config *cfg, tl_manifest *man, tl_err *err)
{
    const char *name = TL_PROXY_FILE;
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(files, name);
    if (!f) return TL_OK;
    if (cfg->quantized) return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s is for float32 sets only", name);
    if (!cJSON_IsObject(f)) return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s is not an object", name);
    uint64_t want = (uint64_t)cfg->vocab * ((uint64_t)cfg->hidden + TL_PROXY_HEADER_BYTES);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(f, "bytes");
    if (!cJSON_IsNumber(b) || b->valuedouble != (double)want)
        return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s.bytes = %.17g, expected %llu from config", name,
                       cJSON_IsNumber(b) ? b->valuedouble : -1.0, (unsigned long long)want);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(f, "dtype");
    if (!(cJSON_IsString(dt) && strcmp(dt->valuestring, TL_PROXY_DTYPE) == 0))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s.dtype = %s, expected %s", name,
                       cJSON_IsString(dt) ? dt->valuestring : "(missing)", TL_PROXY_DTYPE);
    const cJSON *crc = cJSON_GetObjectItemCaseSensitive(f, "crc32");
    if (!cJSON_IsString(crc) || parse_crc(crc->valuestring, &man->proxy_crc32))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: files.%s.crc32 missing or not 8 hex digits", name);
    /* Bound to the lm_head.bin it was made from: a proxy of another model, or an lm_head.bin
     * replaced under its old proxy, would prune away the true top-k (contracts.md §2). */
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(f, "lm_head_crc32");
    if (!cJSON_IsString(of) || parse_crc(of->valuestring, &man->proxy_lm_head_crc32))
        return tl_fail(err, TL_E_CONFIG,
                       "model_config.json: files.%s.lm_head_crc32 missing or not 8 hex digits (export the card again)",
                       name);
    if (man->proxy_lm_head_crc32 != man->crc32[0][TL_T_LM_HEAD])
        return tl_fail(err, TL_E_CONFIG,
                       "model_config.json: %s was made from an lm_head.bin with crc32 %08lx, this set's is %08lx "
                       "(not one export: export the card again)",
                       name, (unsigned long)man->proxy_lm_head_crc32, (unsigned long)man->crc32[0][TL_T_LM_HEAD]);
    man->proxy_bytes = want;
    man->has_proxy = 1;
    return TL_OK;
}

/* Whether `name` is one of the files of a set with this config (the manifest may list nothing else). */
static int known_file(const tl_config *cfg, const char *name)
{
    char want[40];
    if (!cfg->quantized && strcmp(name, TL_PROXY_FILE) == 0) return 1;
    for (int id = 0; id < TL_NT; id++) {
        tl_file_name(want, sizeof want, id, 0);
        if (strcmp(name, want) == 0) return 1;
        if (cfg->quantized && tl_tensor_quantized(id)) {
            tl_file_name(want, sizeof want, id, 1);
            if (strcmp(name, want) == 0) return 1;
        }
    }
    return 0;
}

/* Length of the well-formed UTF-8 sequence at s (at most n bytes), or 0: no
 * overlong forms, surrogates or code points above U+10FFFF (RFC 3629). */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80) return 1;
    size_t len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 ? 2 : 0;
    if (len == 0 || len > n || s[0] > 0xF4) return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] > 0x9F) || (s[0] == 0xF0 && s[1] < 0x90) ||
        (s[0] == 0xF4 && s[1] > 0x8F))
        return 0;
    return len;
}

/* Bytes cJSON would read differently from Python's json module (the harness
 * reads the same file): a BOM, bytes that are not UTF-8 (Python refuses the
 * file, cJSON copies them), a NUL byte or a \u0000 escape (cJSON's strings end
 * there). Returns the offset of the first, or -1. */
static long unsafe_bytes(const char *json, size_t len, const char **what)
{
    if (len >= 3 && (unsigned char)json[0] == 0xEF && (unsigned char)json[1] == 0xBB && (unsigned char)json[2] == 0xBF) {
        *what = "a UTF-8 byte order mark";
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)json[i] >= 0x80) {
            size_t n = utf8_sequence((const unsigned char *)json + i, len - i);
            if (n == 0) {
                *what = "bytes that are not UTF-8";
                return (long)i;
            }
            i += n - 1;
            continue;
        }
        if (json[i] == '\0') {
            *what = "a NUL byte";
            return (long)i;
        }
        if (json[i] == '\\' && i + 1 < len) {
            if (json[i + 1] == 'u' && i + 5 < len && strncmp(json + i + 2, "0000", 4) == 0) {
                *what = "a \\u0000 escape (a NUL inside a string)";
                return (long)i;
            }
            i++; /* skip the escaped character (\\ included) */
        }
    }
    return -1;
}

/* cJSON keeps the first of two equal keys, Python the last: refuse them. */
static const cJSON *duplicate_key(const cJSON *item)
{
    for (const cJSON *a = item ? item->child : NULL; a; a = a->next) {
        if (cJSON_IsObject(item))
            for (const cJSON *b = a->next; b; b = b->next)
                if (a->string && b->string && strcmp(a->string, b->string) == 0) return a;
        const cJSON *inner = duplicate_key(a);
        if (inner) return inner;
    }
    return NULL;
}

/* Parses the file into a tree cJSON and Python's json module read alike: refuses
 * unsafe bytes, invalid JSON, data after the value, a top level that is not an
 * object and duplicate keys. Returns the root, or NULL with the error recorded. */
static cJSON *parse_root(const char *json, size_t len, tl_err *err)
{
    const char *what = "";
    long unsafe_at = unsafe_bytes(json, len, &what);
    if (unsafe_at >= 0) {
        tl_fail(err, TL_E_CONFIG, "model_config.json: %s at byte %ld", what, unsafe_at);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = (at && at >= json && at <= json + len) ? (long)(at - json) : -1;
        tl_fail(err, TL_E_CONFIG, "model_config.json: invalid JSON near byte %ld", off);
        return NULL;
    }
    const cJSON *dup = NULL;
    while (end && end < json + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
    if (end && end < json + len) /* Python's json refuses what follows the value; cJSON would ignore it */
        tl_fail(err, TL_E_CONFIG, "model_config.json: data after the top-level value at byte %ld",
                (long)(end - json));
    else if (!cJSON_IsObject(root))
        tl_fail(err, TL_E_CONFIG, "model_config.json: top level is not an object");
    else if ((dup = duplicate_key(root)) != NULL)
        tl_fail(err, TL_E_CONFIG, "model_config.json: key \"%s\" appears twice in one object", dup->string);
    else
        return root;
    cJSON_Delete(root);
    return NULL;
}

/* The format tag, then the model's name and export id (both optional). */
static int parse_names(const cJSON *root, tl_config *cfg, tl_err *err)
{
    if (expect_string(root, "", "format", "tinyllm-sd/1", err)) return err->code;

    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "model_name");
    if (name && !cJSON_IsString(name)) /* absent: the default name; present: the harness reads it as text */
        return tl_fail(err, TL_E_CONFIG, "model_config.json: model_name is not a string");
    snprintf(cfg->model_name, sizeof cfg->model_name, "%s",
             cJSON_IsString(name) ? name->valuestring : "tiny-llm");
    /* The name goes into JSON output unescaped: keep it to safe characters. */
    for (char *p = cfg->model_name; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '_'; /* DEL too */

    const cJSON *export = cJSON_GetObjectItemCaseSensitive(root, "export_id");
    if (export && !(cJSON_IsString(export) && strlen(export->valuestring) < sizeof cfg->export_id))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: export_id is not a string of at most %d bytes",
                       (int)sizeof cfg->export_id - 1);
    snprintf(cfg->export_id, sizeof cfg->export_id, "%s", export ? export->valuestring : ""); /* compared as is */
    return TL_OK;
}

/* The set's dtype: float32 or int8, and the one this precision loads. */
static int parse_dtype(const cJSON *root, const char *precision, tl_config *cfg, tl_err *err)
{
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    if (!cJSON_IsString(dtype) ||
        (strcmp(dtype->valuestring, "float32") != 0 && strcmp(dtype->valuestring, "int8") != 0))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: dtype = %s, expected \"float32\" or \"int8\"",
                       cJSON_IsString(dtype) ? dtype->valuestring : "(missing)");
    if (strcmp(dtype->valuestring, precision) != 0)
        return tl_fail(err, TL_E_CONFIG, "model_config.json: dtype = %s, expected %s for this precision",
                       dtype->valuestring, precision);
    cfg->quantized = strcmp(dtype->valuestring, "int8") == 0;
    return TL_OK;
}

/* The int8 matvec's int32 accumulator must convert to float exactly
 * (|acc| <= 127*127*in_features < 2^24): the contract's bit-exactness needs it. */
static int check_int8_width(const tl_config *cfg, tl_err *err)
{
    if (!cfg->quantized) return TL_OK;
    int widest = cfg->hidden > cfg->inter ? cfg->hidden : cfg->inter;
    if (cfg->heads * cfg->head_dim > widest) widest = cfg->heads * cfg->head_dim;
    if (widest > TL_I8_MAX_COLS)
        return tl_fail(err, TL_E_CONFIG, "model_config.json: int8 needs every matrix input <= %d wide, got %d",
                       TL_I8_MAX_COLS, widest);
    return TL_OK;
}

/* The "files" manifest: every file of the set, the optional proxy, and nothing else. */
static int parse_files(const cJSON *root, const tl_config *cfg, tl_manifest *man, tl_err *err)
{
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
    if (!cJSON_IsObject(files))
        return tl_fail(err, TL_E_CONFIG, "model_config.json: \"files\" manifest missing or not an object");
    for (int id = 0; id < TL_NT; id++) {
        if (parse_file_entry(files, cfg, id, 0, man, err)) return err->code;
        if (cfg->quantized && tl_tensor_quantized(id) && parse_file_entry(files, cfg, id, 1, man, err))
            return err->code;
    }
    if (parse_proxy_entry(files, cfg, man, err)) return err->code;
    for (const cJSON *f = files->child; f; f = f->next) /* a file listed but not part of the set: */
        if (!known_file(cfg, f->string))                 /* the harness would load (or miss) it */
            return tl_fail(err, TL_E_CONFIG, "model_config.json: files lists \"%s\", not a file of a %s set",
                           f->string, cfg->quantized ? "int8" : "float32");
    return TL_OK;
}

int tl_config_parse(const char *json, size_t len, const char *precision, tl_config *cfg, tl_manifest *man,
                    tl_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    memset(man, 0, sizeof *man);
    cJSON *root = parse_root(json, len, err);
    if (!root) return err->code;
    int rc = TL_OK;
    if (parse_names(root, cfg, err) || parse_dtype(root, precision, cfg, err) ||
        parse_model(cJSON_GetObjectItemCaseSensitive(root, "config"), cfg, err) || check_int8_width(cfg, err) ||
        parse_quantization(root, cfg, err) || parse_files(root, cfg, man, err))
        rc = err->code;
    cJSON_Delete(root);
    return rc;
}
