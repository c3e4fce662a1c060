/*
 * The model: arena layout, weight residency and the forward pass (model.c, and
 * prune.c for the pruned lm_head; contracts.md §2); its files on the card are
 * storage.h's. One tl_model per engine; everything lives in the arena.
 */
#ifndef TINYLLM_MODEL_H
#define TINYLLM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "config.h"
#include "error.h"
#include "flash_tier.h"
#include "tinyllm/port.h"
#include "tinyllm/tinyllm.h"

#define TL_MAX_TOPK 8
/* The log tag of the loader's lines (storage and layout). */
#define TL_TAG_LOADER "weight_loader"
/* Pruned lm_head: a step with more candidate rows than this streams the full
 * float32 lm_head instead (each candidate is one random row read; past a few
 * hundred that costs more than the stream). */
#define TL_PRUNE_MAX_CANDIDATES 512

/* One tensor file on the card; `resident` is its arena copy, or NULL if it is
 * streamed through the chunk buffer at every use. */
typedef struct tl_tensor {
    char name[32];  /* file name, for messages */
    int32_t fh;     /* open handle, -1 if this file is not part of the set */
    uint64_t bytes; /* size on the card (checked against config and manifest) */
    tl_shape shape; /* [layers, rows, cols]; scales files: cols = 1 */
    int elem;       /* bytes per element: 1 (int8) or 4 (float32) */
    void *resident;    /* the arena copy of its first resident_rows rows, or NULL */
    long resident_rows; /* all rows (layers x rows) when resident, fewer for lm_head in spare arena */
} tl_tensor;

/* Running top-k of the logits, best first, ties to the lowest id. */
typedef struct tl_topk {
    int n, k;
    int32_t id[TL_MAX_TOPK];
    float logit[TL_MAX_TOPK];
} tl_topk;

/* Storage fault injection (test builds, TINYLLM_FAULT_INJECTION): the
 * countdown-th storage read from now fails (-1), comes back short (half), or
 * comes back with one bit flipped (flip: what `verify` must name). */
enum { TL_FAULT_NONE, TL_FAULT_FAIL, TL_FAULT_SHORT, TL_FAULT_FLIP };
typedef struct tl_fault {
    int kind;
    uint64_t countdown;
} tl_fault;

/* The activations of the current position and the KV cache: one per engine, in the arena
 * (llama2.c's RunState). */
typedef struct tl_activations {
    float *key_cache, *value_cache; /* [layers][context][kv_heads * head_dim] */
    float *x;        /* residual stream [hidden] */
    float *xb;       /* normed input / sublayer output [hidden] */
    float *q;        /* query [heads * head_dim] */
    float *att_out;  /* concatenated head outputs [heads * head_dim] */
    float *hb, *hb2; /* MLP [intermediate] */
    float *att;      /* attention scores of one head [context] */
    float *logits;   /* one lm_head chunk [chunk_rows] */
    float *norm_row; /* a streamed norm weight [hidden] */
    float *row_scales; /* streamed row scales [chunk_rows] */
    float *inv_freq, *rope_cos, *rope_sin; /* [head_dim / 2] */
    int8_t *qx;      /* quantized activation (int8 set) [max input width] */
} tl_activations;

/* Pruned lm_head (float32 sets with lm_head_proxy.bin, prune.c): the proxy is
 * streamed, its upper bounds kept, then only the candidate rows of the float32
 * lm_head are read. */
typedef struct tl_prune {
    int on;              /* 1: the tables below are laid out and pruning is on */
    int max_candidates;  /* a step with more candidate rows streams lm_head in full */
    float *upper;        /* upper bound of every row's float32 logit [vocab] */
    int32_t *candidates; /* rows that can reach the top-k [TL_PRUNE_MAX_CANDIDATES] */
    int last_candidates; /* of the last lm_head: candidate rows, -1 = full stream */
    int last_fallback;   /* 1: the last lm_head wanted pruning but streamed in full */
    int disproved;       /* 1: a candidate's logit broke its bound: in full until the next load */
} tl_prune;

typedef struct tl_model {
    const tl_port *port;
    tl_arena *arena;
    tl_err *err;
    tl_config cfg;
    tl_manifest man;
    char dir[96];   /* weights directory on the card */
    uint32_t card_id; /* CRC-32 of the set's model_config.json */
    int context;    /* max positions held in the KV cache */
    int chunk_rows; /* rows per streamed chunk */

    tl_tensor w[TL_NT];     /* weights (and norms) */
    tl_tensor scale[TL_NT]; /* their row scales (int8 set, quantized tensors only) */
    tl_tensor proxy;        /* lm_head_proxy.bin (pruned lm_head); fh -1 if the set has none */
    uint64_t resident_bytes;

    tl_activations act;
    float attn_scale; /* 1/sqrt(head_dim) */
    int pos;          /* position of the forward pass in progress (for messages) */
    tl_prune prune;

    /* Streamed rows: the chunk buffer(s) and the read in flight. */
    uint8_t *stream; /* chunk buffer for streamed rows */
    size_t stream_bytes;
    int stream_in_port; /* the port's chunk buffer (fast, DMA-capable), not the arena */
    uint8_t *stream2;   /* a second one of the same size (lm_head: the next chunk is read while
                           this one is computed), or NULL: one buffer, read then compute */
    /* The read in flight (lm_head's next chunk): started, not yet waited for. */
    struct {
        int active, async; /* async: the port's read_start took it; else read_at runs at wait */
        int flash;         /* fh/off are the flash tier's (the range is one extent) */
        int mixed;         /* the range spans the card and the tier: split into reads at wait */
        int32_t fh;
        const char *what;
        uint64_t off, file_off; /* where it is read (the tier's offset when flash), and in the file */
        void *buf;
        size_t n;
    } pending;

    tl_tier tier; /* the flash tier: ranges of the set's files read from flash, not the card */

    /* Storage statistics, counted by the core around every port read: bytes_read and
     * read_calls count every tier; flash_bytes and flash_reads the flash tier's share. */
    uint64_t bytes_read, read_calls;
    uint64_t flash_bytes, flash_reads;
    tl_fault *fault; /* the engine's, or NULL */
} tl_model;

/* Lays out the arena. Weights are made resident only while `reserve_fixed +
 * reserve_per_position * (context + 1)` bytes stay free for what the caller
 * allocates afterwards (the engine's token buffer and step log; its prompt-file
 * line buffer is part of the engine's own state, laid out before every set). */
int tl_model_layout(tl_model *m, const tl_options *opt, size_t reserve_fixed, size_t reserve_per_position);
/* One forward pass of `token` at position `pos`. If top != NULL the logits are
 * computed (lm_head pruned through its proxy when m->prune.on and !full, else
 * streamed in full) and their top-k kept in *top. */
int tl_model_forward(tl_model *m, int token, int pos, tl_topk *top, int full);

/* ---- shared by model.c and prune.c ---- */

/* logits = lm_head xn through the proxy (prune.c), into *top. Sets *fallback (and
 * leaves *top empty) when the step must stream lm_head in full instead: too many
 * candidates, a NaN in the bounds, or a candidate that disproves them. */
int tl_lm_head_pruned(tl_model *m, const float *xn, tl_topk *top, int *fallback);
/* Bytes of one proxy read: about chunk_rows records, sector-aligned (model.c). */
uint64_t tl_proxy_block_bytes(int chunk_rows, int hidden);
/* Corrupt weights (a NaN, an infinity, a RoPE theta that overflows) must not turn into
 * silent garbage tokens: E_NUMERIC naming where the first non-finite value of v[0..n) is. */
int tl_check_finite(tl_model *m, const float *v, int n, const char *what, int layer);

/* Inserts (id, v) if it beats the current k-th; ids arrive in ascending order,
 * so an equal logit never displaces an earlier (lower) id. Inline: lm_head's
 * full stream calls it once per vocabulary row. */
static inline void tl_topk_push(tl_topk *t, int32_t id, float v)
{
    if (t->n == t->k && !(v > t->logit[t->n - 1])) return;
    int p = t->n < t->k ? t->n : t->k - 1;
    while (p > 0 && v > t->logit[p - 1]) {
        t->id[p] = t->id[p - 1];
        t->logit[p] = t->logit[p - 1];
        p--;
    }
    t->id[p] = id;
    t->logit[p] = v;
    if (t->n < t->k) t->n++;
}
#endif
