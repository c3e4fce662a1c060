/*
 * The engine's state (private to the core): shared by the command interpreter (engine.c)
 * and the console session and prompt-file runner (session.c).
 */
#ifndef TINYLLM_ENGINE_H
#define TINYLLM_ENGINE_H

#include <stdint.h>

#include "arena.h"
#include "config.h"
#include "error.h"
#include "model.h"
#include "output.h"
#include "tinyllm/tinyllm.h"

/* The log tag of the command lines' human lines. */
#define TL_TAG_INFER "tinyllm_inference"

/* What one forward pass cost, kept until the TINYLLM_RESULT line is printed
 * (printing during generation would put console time into the step times). */
typedef struct tl_step {
    int32_t token;
    int16_t ntop;       /* -1: logits not computed at this position */
    int16_t candidates; /* pruned lm_head: float32 rows read; TL_STEP_FULL / TL_STEP_FALLBACK */
    uint64_t us, cycles, bytes; /* bytes: from every tier */
    uint32_t reads, flash_bytes; /* flash_bytes: those the flash tier gave (a step reads < 4 GiB) */
    int32_t top_id[TL_MAX_TOPK];
    float top_logit[TL_MAX_TOPK];
} tl_step;

struct tl_engine {
    const tl_port *port;
    tl_arena arena;
    size_t base; /* arena bytes the engine itself takes: every weight set is laid out after them */
    tl_err err;
    tl_options boot;   /* the port's options; `load` starts from these */
    tl_options loaded; /* those of the set in the arena (its precision points to `precision`) */
    char precision[8]; /* "float32", "int8", or "" when no set is loaded (a failed load) */
    tl_model model;
    tl_writer out;
    uint32_t card_id;
    /* The export of the last set loaded: the other precision's set must come from it too,
     * or `load` would switch models without a word (a card left half-replaced). */
    char export_precision[8]; /* "" before the first load succeeds */
    char export_id[sizeof(((tl_config *)0)->export_id)];
    int32_t *tokens; /* prompt then generated ids [context + 1] */
    tl_step *steps;  /* [context] */
    tl_fault fault;  /* injected storage fault (test builds), kept across loads */
    char script_line[TL_LINE_BYTES]; /* the prompt file's current line */
};

/* Prints the error recorded in e->err (TINYLLM_ERROR) and clears it; returns TL_CMD_FAILED. */
int tl_engine_report(tl_engine *e);

#endif
