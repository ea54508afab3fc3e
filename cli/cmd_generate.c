/* duet generate: offline generation with the forward pass on one sequence.
 * The prompt is text (--prompt, optionally through the model's chat
 * template with --chat) or token ids (--tokens 1,2,3); tokens are sampled
 * with engine/sampler.h (greedy at --temp 0) and printed as text while they
 * come (as ids when the file has no tokenizer), then prompt and generation
 * speed go to stderr.
 *
 * Hidden test hooks: --dump-logits FILE writes the logits of the last token
 * of every prompt chunk (--chunk N tokens per forward call) and of every
 * generated token, for the numpy oracle (tests/oracle). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/clock.h"
#include "common/flags.h"
#include "common/log.h"
#include "engine/executor.h"
#include "engine/forward.h"
#include "kernels/cpu/cpu.h"
#include "engine/sampler.h"
#include "model/chat.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#define GEN_BLOCK 16

/* Parse "1,2,3" into a fresh array. */
static int parse_ids(const char *s, int32_t **ids_p, int32_t *n_p)
{
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof(int32_t));
    const char *p = s;

    if (ids == NULL)
        return -1;
    while (*p != '\0') {
        char *end;
        long v;

        errno = 0;
        v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || v > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(ids);
            return -1;
        }
        if (n == cap) {
            int32_t *t = realloc(ids, 2 * cap * sizeof(int32_t));

            if (t == NULL) {
                free(ids);
                return -1;
            }
            ids = t;
            cap *= 2;
        }
        ids[n++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
    }
    *ids_p = ids;
    *n_p = (int32_t)n;
    return 0;
}

/* The prompt's token ids: --tokens as given, or --prompt encoded (through
 * the chat template with --chat). Returns 0, or 2 with a message printed. */
static int prompt_ids(const gguf_t *g, const tok_t *tok, const char *prompt, bool chat,
                      int32_t **ids_p, int32_t *n_p)
{
    chat_template_t *tmpl = NULL;
    tok_ids_t ids = {0};
    char err[512], *text = NULL;
    size_t len = strlen(prompt);
    int rc = 2;

    if (chat) {
        chat_msg_t msg = {.role = "user", .content = prompt, .content_len = len};

        if (chat_template_from_gguf(g, NULL, &tmpl, err, sizeof(err)) < 0 ||
            chat_render(tmpl, &msg, 1, true, &text, &len, err, sizeof(err)) < 0) {
            fprintf(stderr, "duet generate: --chat: %s\n", err);
            goto out;
        }
        prompt = text;
    }
    if (tok_encode(tok, prompt, len, TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL, &ids) < 0) {
        fprintf(stderr, "duet generate: cannot tokenize the prompt\n");
        goto out;
    }
    *ids_p = ids.v;
    *n_p = (int32_t)ids.n;
    ids.v = NULL;
    rc = 0;
out:
    tok_ids_free(&ids);
    free(text);
    chat_template_destroy(tmpl);
    return rc;
}

/* Logits dump: "DLOG", u32 vocab, then per row: i32 position, vocab f32. */
static int dump_row(FILE *f, int32_t pos, const float *logits, int32_t vocab)
{
    return fwrite(&pos, sizeof(pos), 1, f) == 1 &&
           fwrite(logits, sizeof(float), (size_t)vocab, f) == (size_t)vocab ? 0 : -1;
}

static int generate_run(int argc, char **argv)
{
    const char *model = "models/SmolLM2-135M-Instruct.Q4_1.gguf", *prompt = NULL;
    const char *tokens = NULL, *dump = NULL;
    int64_t n_gen = 64, threads = 0, top_k = 0, seed = 0, chunk = 512, tp = 1;
    double temp = 0.0, top_p = 1.0, min_p = 0.0;
    bool chat = false, ignore_eos = false, kv_f32 = false, act_q8 = false;
    const flag_t flags[] = {
        {"model", 'm', FLAG_STRING, &model, "GGUF model file", "FILE", 0, 0, 0, 0},
        {"prompt", 'p', FLAG_STRING, &prompt, "prompt text", "TEXT", 0, 0, 0, 0},
        {"tokens", 0, FLAG_STRING, &tokens, "prompt as token ids: 1,2,3", "IDS", 0, 0, 0, 0},
        {"chat", 0, FLAG_BOOL, &chat, "apply the model's chat template", NULL, 0, 0, 0, 0},
        {"n", 'n', FLAG_INT, &n_gen, "tokens to generate", "N", 0, 1 << 24, 0, 0},
        {"temp", 0, FLAG_DOUBLE, &temp, "temperature (0: greedy)", "T", 0, 0, 0.0, 100.0},
        {"top-p", 0, FLAG_DOUBLE, &top_p, "nucleus sampling mass", "P", 0, 0, 1e-9, 1.0},
        {"top-k", 0, FLAG_INT, &top_k, "keep the k most likely tokens (0: off)", "K",
         0, 1 << 24, 0, 0},
        {"min-p", 0, FLAG_DOUBLE, &min_p, "drop tokens below min-p * max prob", "P",
         0, 0, 0.0, 1.0},
        {"seed", 0, FLAG_INT, &seed, "sampling seed", "S", 0, INT64_MAX, 0, 0},
        {"threads", 't', FLAG_INT, &threads,
         "compute threads per rank (default: the cores divided by --tp)", "N", 1, 1024, 0, 0},
        {"tp", 0, FLAG_INT, &tp, "tensor parallel ranks (worker processes)", "N", 1, 64, 0, 0},
        {"ignore-eos", 0, FLAG_BOOL, &ignore_eos, "keep going past end-of-sequence",
         NULL, 0, 0, 0, 0},
        {"kv-f32", 0, FLAG_BOOL, &kv_f32, "keep the KV cache in f32 (default f16)",
         NULL, 0, 0, 0, 0},
        {"act-q8", 0, FLAG_BOOL, &act_q8, "8-bit activations (faster prefill, less exact)",
         NULL, 0, 0, 0, 0},
        {"chunk", 0, FLAG_INT, &chunk, "prompt tokens per forward call", "N", 1, 1 << 20, 0, 0},
        {"dump-logits", 0, FLAG_STRING, &dump, "(testing) write logits to FILE", "FILE",
         0, 0, 0, 0},
    };
    const flags_usage_t u = {"duet generate", NULL,
                             "Generate text offline with the CPU forward pass."};
    duet_status_t s;
    gguf_t *g = NULL;
    model_config_t cfg;
    exec_t *f = NULL;
    exec_opts_t xo = {0};
    fwd_opts_t fo = {0};
    int32_t *ids = NULL, *table = NULL, n_prompt = 0, n_blocks, eos = -1;
    float *logits = NULL;
    FILE *df = NULL;
    tok_t *tok = NULL;
    sampler_params_t sp;
    sampler_t *smp = NULL;
    sampler_ws_t *ws = NULL;
    tok_detok_t detok;
    char *piece = NULL;
    char err[512];
    int rc = 1;

    s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);
    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    if (prompt != NULL && tokens != NULL) {
        fprintf(stderr, "duet generate: give --prompt or --tokens, not both\n");
        return 2;
    }
    if (prompt == NULL && tokens == NULL) {
        fprintf(stderr, "duet generate: --prompt TEXT is required\n");
        return 2;
    }
    if (prompt != NULL && prompt[0] == '\0') {
        fprintf(stderr, "duet generate: the prompt is empty\n");
        return 2;
    }
    if (tokens != NULL && chat) {
        fprintf(stderr, "duet generate: --chat needs a text --prompt, not --tokens\n");
        return 2;
    }
    if (tokens != NULL && parse_ids(tokens, &ids, &n_prompt) != 0) {
        fprintf(stderr, "duet generate: --tokens '%s': expected comma-separated token ids\n",
                tokens);
        return 2;
    }
    if (tokens != NULL && n_prompt == 0) {
        fprintf(stderr, "duet generate: the prompt is empty\n");
        rc = 2;
        goto out;
    }

    s = gguf_open(model, &g, err, sizeof(err));
    if (s != DUET_OK) {
        fprintf(stderr, "duet generate: %s\n", err);
        goto out;
    }
    s = model_config_load(g, &cfg, err, sizeof(err));
    if (s != DUET_OK) {
        fprintf(stderr, "duet generate: %s\n", err);
        goto out;
    }
    s = tok_load(g, &tok, err, sizeof(err));
    if (s != DUET_OK && prompt != NULL) {
        fprintf(stderr, "duet generate: %s\n", err);
        goto out;
    }
    if (prompt != NULL) {
        rc = prompt_ids(g, tok, prompt, chat, &ids, &n_prompt);
        if (rc != 0)
            goto out;
        rc = 1;
        if (n_prompt == 0) {
            fprintf(stderr, "duet generate: the prompt has no tokens\n");
            rc = 2;
            goto out;
        }
    }
    sampler_params_default(&sp);
    sp.temperature = (float)temp;
    sp.top_k = (int32_t)top_k;
    sp.top_p = (float)top_p;
    sp.min_p = (float)min_p;
    sp.seed = (uint64_t)seed;
    sp.ignore_eos = ignore_eos;
    if (sampler_params_check(&sp, cfg.vocab, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "duet generate: %s\n", err);
        rc = 2;
        goto out;
    }
    for (int32_t i = 0; i < n_prompt; i++) {
        if (ids[i] >= cfg.vocab) {
            fprintf(stderr, "duet generate: token id %d is outside the vocabulary (%d)\n",
                    ids[i], cfg.vocab);
            rc = 2;
            goto out;
        }
    }
    if (n_prompt >= cfg.ctx_len) {
        fprintf(stderr, "duet generate: the prompt has %d tokens; the context holds %d\n",
                n_prompt, cfg.ctx_len);
        rc = 2;
        goto out;
    }
    if (n_prompt + n_gen > cfg.ctx_len) {
        n_gen = cfg.ctx_len - n_prompt;
        fprintf(stderr, "duet generate: generating at most %" PRId64 " tokens (context %d)\n",
                n_gen, cfg.ctx_len);
    }
    if (tok != NULL) {
        eos = tok_eos(tok);
    } else {
        uint32_t e;

        if (gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &e) == DUET_OK && e < (uint32_t)cfg.vocab)
            eos = (int32_t)e;
    }
    if (sampler_create(&sp, cfg.vocab, ids, n_prompt, &smp) != DUET_OK ||
        sampler_ws_create(cfg.vocab, &ws) != DUET_OK)
        goto out;
    if (tok != NULL) {
        tok_detok_init(&detok, tok, 0);
        piece = malloc(tok_detok_max_out(tok) + 1);
        if (piece == NULL)
            goto out;
    }

    n_blocks = (int32_t)((n_prompt + n_gen + GEN_BLOCK - 1) / GEN_BLOCK);
    fo = (fwd_opts_t){.n_threads = (int)threads, .n_blocks = n_blocks, .block_size = GEN_BLOCK,
                      .kv_dtype = kv_f32 ? DTYPE_F32 : DTYPE_F16, .tp_rank = 0, .tp_size = 1,
                      .act_q8 = act_q8};
    xo.tp_size = (int)tp;
    s = exec_create(g, &cfg, &fo, &xo, &f, err, sizeof(err));
    if (s != DUET_OK) {
        fprintf(stderr, "duet generate: cannot set up the forward pass: %s\n", err);
        rc = s == DUET_ERR_INVALID ? 2 : 1;
        goto out;
    }
    table = malloc(sizeof(int32_t) * (size_t)n_blocks);
    logits = malloc(sizeof(float) * (size_t)cfg.vocab);
    if (table == NULL || logits == NULL)
        goto out;
    for (int32_t b = 0; b < n_blocks; b++)
        table[b] = b;
    if (dump != NULL) {
        df = fopen(dump, "wb");
        if (df == NULL || fwrite("DLOG", 1, 4, df) != 4 ||
            fwrite(&cfg.vocab, sizeof(int32_t), 1, df) != 1) {
            fprintf(stderr, "duet generate: cannot write %s: %s\n", dump, strerror(errno));
            goto out;
        }
    }

    {
        double t0 = clock_now_s(), t1, t2;
        int32_t past = 0, next, n_out = 0;

        while (past < n_prompt) {
            int32_t n = n_prompt - past < chunk ? n_prompt - past : (int32_t)chunk;
            fwd_seq_t sq = {.tokens = ids + past, .n_new = n, .n_past = past,
                            .block_table = table, .n_blocks = n_blocks, .want_logits = true};

            s = exec_run(f, &sq, 1, logits);
            if (s != DUET_OK) {
                fprintf(stderr, "duet generate: forward pass failed: %s\n", duet_status_str(s));
                goto out;
            }
            past += n;
            if (df != NULL && dump_row(df, past - 1, logits, cfg.vocab) != 0)
                goto out;
        }
        t1 = clock_now_s();
        next = n_gen > 0 ? sampler_sample(smp, ws, logits) : -1;
        while (n_out < n_gen) {
            fwd_seq_t sq = {.tokens = &next, .n_new = 1, .n_past = past,
                            .block_table = table, .n_blocks = n_blocks, .want_logits = true};

            if (sampler_is_stop(smp, next, eos) ||
                (tok != NULL && !ignore_eos && tok_is_eog(tok, next)))
                break;
            if (sampler_accept(smp, next) != DUET_OK)
                goto out;
            if (tok != NULL) {
                size_t plen = 0;

                if (tok_detok_feed(&detok, next, piece, tok_detok_max_out(tok), &plen) == DUET_OK)
                    fwrite(piece, 1, plen, stdout);
            } else {
                printf("%s%d", n_out ? " " : "", next);
            }
            fflush(stdout);
            n_out++;
            if (n_out == n_gen || past + 1 >= cfg.ctx_len)
                break;
            s = exec_run(f, &sq, 1, logits);
            if (s != DUET_OK) {
                fprintf(stderr, "duet generate: forward pass failed: %s\n", duet_status_str(s));
                goto out;
            }
            past++;
            if (df != NULL && dump_row(df, past - 1, logits, cfg.vocab) != 0)
                goto out;
            next = sampler_sample(smp, ws, logits);
        }
        t2 = clock_now_s();
        if (tok != NULL)
            fwrite(piece, 1, tok_detok_flush(&detok, piece, tok_detok_max_out(tok)), stdout);
        printf("\n");
        fprintf(stderr, "prompt: %d tokens in %.3f s (%.1f tokens/s)\n", n_prompt, t1 - t0,
                n_prompt / (t1 - t0));
        fprintf(stderr, "generation: %d tokens in %.3f s (%.1f tokens/s)\n", n_out, t2 - t1,
                n_out > 1 ? (n_out - 1) / (t2 - t1) : 0.0);
    }
    rc = 0;

out:
    if (df != NULL && fclose(df) != 0)
        rc = 1;
    free(piece);
    sampler_ws_destroy(ws);
    sampler_destroy(smp);
    free(logits);
    free(table);
    exec_destroy(f);
    tok_destroy(tok);
    gguf_close(g);
    free(ids);
    return rc;
}

const cli_cmd_t cli_cmd_generate = {"generate", "generate text offline (CPU forward pass)",
                                    generate_run};
