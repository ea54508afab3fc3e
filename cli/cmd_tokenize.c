/* duet tokenize / duet detokenize: the model's tokenizer for people and
 * scripts, a chat-template renderer (--chat), and the tokenizer throughput
 * bench (--bench FILE). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli/cli.h"
#include "common/clock.h"
#include "common/flags.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define TARGET_MB_S   5.0

static int load(const char *path, gguf_t **g_p, tok_t **tok_p)
{
    char err[512] = "";
    gguf_t *g;
    tok_t *tok;

    if (gguf_open(path, &g, err, sizeof(err)) < 0) {
        fprintf(stderr, "duet: %s\n", err);
        return 1;
    }
    if (tok_load(g, &tok, err, sizeof(err)) < 0) {
        fprintf(stderr, "duet: %s: %s\n", path, err);
        gguf_close(g);
        return 1;
    }
    *g_p = g;
    *tok_p = tok;
    return 0;
}

/* Whole stream into a malloc'd buffer. */
static int read_all(FILE *f, const char *name, char **buf_p, size_t *len_p)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);

    while (buf != NULL) {
        size_t r = fread(buf + n, 1, cap - n, f);

        n += r;
        if (r == 0)
            break;
        if (n == cap) {
            char *p = realloc(buf, cap *= 2);

            if (p == NULL) {
                free(buf);
                buf = NULL;
            }
            buf = p;
        }
    }
    if (buf == NULL || ferror(f)) {
        fprintf(stderr, "duet: cannot read %s: %s\n", name, buf ? strerror(errno) : "no memory");
        free(buf);
        return 1;
    }
    *buf_p = buf;
    *len_p = n;
    return 0;
}

static json_t *ids_json(const tok_ids_t *ids)
{
    json_t *a = json_array();

    for (size_t i = 0; i < ids->n; i++)
        json_array_append_new(a, json_integer(ids->v[i]));
    return a;
}

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);

    if (s != NULL)
        puts(s);
    free(s);
}

static void print_ids(const tok_t *tok, const tok_ids_t *ids, bool pieces)
{
    for (size_t i = 0; i < ids->n; i++) {
        if (pieces) {
            char *txt;
            size_t len;
            json_t *js;
            char *s;

            if (tok_decode(tok, &ids->v[i], 1, TOK_DECODE_SPECIAL, &txt, &len, NULL, 0) < 0)
                continue;
            js = json_stringn(txt, len);
            s = js ? json_dumps(js, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
            printf("%d\t%s\n", ids->v[i], s ? s : "?");
            free(s);
            json_decref(js);
            free(txt);
        } else {
            printf(i ? " %d" : "%d", ids->v[i]);
        }
    }
    if (!pieces)
        printf("\n");
}

/* --lines: each stdin line is a JSON string; print {"ids": [...]} per line. */
static int tokenize_lines(const tok_t *tok, unsigned flags)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;

    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_error_t je;
        json_t *in = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je), *out;
        tok_ids_t ids = {0};

        if (in == NULL || !json_is_string(in)) {
            fprintf(stderr, "duet: --lines: a line is not a JSON string: %s\n", je.text);
            json_decref(in);
            rc = 1;
            break;
        }
        if (tok_encode(tok, json_string_value(in), json_string_length(in), flags, &ids) < 0) {
            fprintf(stderr, "duet: out of memory\n");
            json_decref(in);
            rc = 1;
            break;
        }
        out = json_pack("{s:o}", "ids", ids_json(&ids));
        print_json(out);
        json_decref(out);
        json_decref(in);
        tok_ids_free(&ids);
    }
    free(line);
    fflush(stdout);
    return rc;
}

/* --chat FILE: a JSON array of {"role", "content"}; render and encode. */
static int render_chat(const gguf_t *g, const char *path, const char *tmpl_name, bool gen,
                       char **text_p, size_t *len_p)
{
    char err[512] = "";
    json_error_t je;
    json_t *arr = strcmp(path, "-") == 0 ? json_loadf(stdin, 0, &je) : json_load_file(path, 0, &je);
    chat_template_t *tmpl = NULL;
    chat_msg_t *msgs = NULL;
    size_t n;
    int rc = 1;

    if (arr == NULL || !json_is_array(arr)) {
        fprintf(stderr, "duet: --chat %s: not a JSON array of messages (%s)\n", path,
                arr ? "not an array" : je.text);
        goto out;
    }
    if (chat_template_from_gguf(g, tmpl_name, &tmpl, err, sizeof(err)) < 0) {
        fprintf(stderr, "duet: %s\n", err);
        goto out;
    }
    n = json_array_size(arr);
    msgs = calloc(n ? n : 1, sizeof(*msgs));
    if (msgs == NULL)
        goto out;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(arr, i);
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");

        if (!json_is_string(role) || !json_is_string(content)) {
            fprintf(stderr, "duet: --chat %s: message %zu needs string role and content\n",
                    path, i);
            goto out;
        }
        msgs[i].role = json_string_value(role);
        msgs[i].content = json_string_value(content);
        msgs[i].content_len = json_string_length(content);
    }
    if (chat_render(tmpl, msgs, n, gen, text_p, len_p, err, sizeof(err)) < 0) {
        fprintf(stderr, "duet: %s\n", err);
        goto out;
    }
    rc = 0;
out:
    free(msgs);
    chat_template_destroy(tmpl);
    json_decref(arr);
    return rc;
}

static double thread_cpu_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Encode (then decode) the file repeatedly for about `seconds`. */
static int bench(const tok_t *tok, const char *path, double seconds, bool json)
{
    char *buf, *txt;
    size_t len, tlen;
    FILE *f = fopen(path, "rb");
    tok_ids_t ids = {0};
    double t0, c0, wall, cpu, dwall;
    uint64_t iters = 0, diters = 0;
    int rc;

    if (f == NULL) {
        fprintf(stderr, "duet: --bench %s: %s\n", path, strerror(errno));
        return 1;
    }
    rc = read_all(f, path, &buf, &len);
    fclose(f);
    if (rc != 0)
        return rc;
    if (len == 0) {
        fprintf(stderr, "duet: --bench %s: empty file\n", path);
        free(buf);
        return 1;
    }
    tok_encode(tok, buf, len, 0, &ids);     /* warm up */
    t0 = clock_now_s();
    c0 = thread_cpu_s();
    do {
        ids.n = 0;
        if (tok_encode(tok, buf, len, 0, &ids) < 0) {
            fprintf(stderr, "duet: out of memory\n");
            rc = 1;
            goto out;
        }
        iters++;
    } while (clock_now_s() - t0 < seconds || iters < 3);
    wall = clock_now_s() - t0;
    cpu = thread_cpu_s() - c0;
    t0 = clock_now_s();
    do {
        if (tok_decode(tok, ids.v, ids.n, 0, &txt, &tlen, NULL, 0) < 0) {
            rc = 1;
            goto out;
        }
        free(txt);
        diters++;
    } while (clock_now_s() - t0 < seconds / 4 || diters < 3);
    dwall = clock_now_s() - t0;
    {
        double mbs = (double)len * (double)iters / wall / 1e6;
        double mbs_cpu = (double)len * (double)iters / cpu / 1e6;
        double tps = (double)ids.n * (double)iters / wall;
        double dmbs = (double)len * (double)diters / dwall / 1e6;

        if (json) {
            json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, "
                                  "s:f}",
                                  "bench", "tokenizer", "file", path, "pre", tok_pre_name(tok),
                                  "bytes", (json_int_t)len, "tokens", (json_int_t)ids.n,
                                  "iterations", (json_int_t)iters, "seconds", wall,
                                  "encode_mb_per_s", mbs, "encode_mb_per_cpu_s", mbs_cpu,
                                  "encode_tokens_per_s", tps, "decode_mb_per_s", dmbs,
                                  "target_mb_per_s", TARGET_MB_S,
                                  "ratio_to_target", mbs / TARGET_MB_S);
            print_json(j);
            json_decref(j);
        } else {
            printf("tokenizer bench: %s (%zu bytes, %zu tokens, pre-tokenizer %s)\n", path, len,
                   ids.n, tok_pre_name(tok));
            printf("encode: %.2f MB/s wall, %.2f MB/s per CPU second, %.0f tokens/s "
                   "(%" PRIu64 " runs in %.2f s)\n", mbs, mbs_cpu, tps, iters, wall);
            printf("decode: %.2f MB/s\n", dmbs);
            printf("target %.0f MB/s encode on one core: %.2fx\n", TARGET_MB_S,
                   mbs / TARGET_MB_S);
        }
    }
    rc = 0;
out:
    tok_ids_free(&ids);
    free(buf);
    return rc;
}

static int tokenize_run(int argc, char **argv)
{
    const char *model = DEFAULT_MODEL, *bench_file = NULL, *chat = NULL, *tmpl = NULL;
    bool special = false, add_special = false, json = false, lines = false, pieces = false;
    bool gen = true;
    double seconds = 2.0;
    const flag_t flags[] = {
        {"model", 'm', FLAG_STRING, &model, "GGUF file whose tokenizer to use", "PATH",
         0, 0, 0, 0},
        {"special", 0, FLAG_BOOL, &special, "recognise special-token text such as "
         "<|im_start|>", NULL, 0, 0, 0, 0},
        {"add-special", 0, FLAG_BOOL, &add_special, "add BOS/EOS when the model asks for them",
         NULL, 0, 0, 0, 0},
        {"json", 0, FLAG_BOOL, &json, "print JSON", NULL, 0, 0, 0, 0},
        {"pieces", 0, FLAG_BOOL, &pieces, "print each id with its text", NULL, 0, 0, 0, 0},
        {"lines", 0, FLAG_BOOL, &lines, "read JSON strings, one per stdin line; print "
         "{\"ids\": [...]} per line", NULL, 0, 0, 0, 0},
        {"chat", 0, FLAG_STRING, &chat, "render a JSON array of {role, content} messages "
         "(file or -) with the chat template, then tokenize (implies --special "
         "--add-special)", "FILE", 0, 0, 0, 0},
        {"chat-template", 0, FLAG_STRING, &tmpl, "force a template family: chatml, smollm2, "
         "llama3, llama2, mistral, phi3, gemma", "NAME", 0, 0, 0, 0},
        {"generation-prompt", 0, FLAG_BOOL, &gen, "with --chat, end with the assistant "
         "prompt (default on)", NULL, 0, 0, 0, 0},
        {"bench", 0, FLAG_STRING, &bench_file, "measure encode/decode throughput on FILE",
         "FILE", 0, 0, 0, 0},
        {"seconds", 0, FLAG_DOUBLE, &seconds, "with --bench, how long to run", "S",
         0, 0, 0.01, 600},
    };
    const flags_usage_t u = {"duet tokenize", "[TEXT|-]",
                             "Print the token ids of TEXT (or of stdin with -)."};
    char *pos[1];
    int npos = 0, rc = 1;
    duet_status_t s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, pos, 1, &npos);
    gguf_t *g = NULL;
    tok_t *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    unsigned eflags;
    tok_ids_t ids = {0};

    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    if (npos == 0 && bench_file == NULL && chat == NULL && !lines) {
        fprintf(stderr, "duet tokenize: give TEXT, - (stdin), --lines, --chat or --bench\n");
        return 2;
    }
    if (load(model, &g, &tok) != 0)
        return 1;
    eflags = (special ? TOK_PARSE_SPECIAL : 0) | (add_special ? TOK_ADD_SPECIAL : 0);
    if (bench_file != NULL) {
        rc = bench(tok, bench_file, seconds, json);
        goto out;
    }
    if (lines) {
        rc = tokenize_lines(tok, eflags);
        goto out;
    }
    if (chat != NULL) {
        if (render_chat(g, chat, tmpl, gen, &text, &len) != 0)
            goto out;
        eflags = TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL;
    } else if (strcmp(pos[0], "-") == 0) {
        if (read_all(stdin, "stdin", &text, &len) != 0)
            goto out;
    } else {
        len = strlen(pos[0]);
        text = malloc(len + 1);
        if (text == NULL)
            goto out;
        memcpy(text, pos[0], len + 1);
    }
    if (tok_encode(tok, text, len, eflags, &ids) < 0) {
        fprintf(stderr, "duet: out of memory\n");
        goto out;
    }
    if (json) {
        json_t *j = json_pack("{s:o, s:I}", "ids", ids_json(&ids), "n_tokens",
                              (json_int_t)ids.n);

        if (chat != NULL)
            json_object_set_new(j, "text", json_stringn(text, len));
        print_json(j);
        json_decref(j);
    } else {
        print_ids(tok, &ids, pieces);
    }
    rc = 0;
out:
    tok_ids_free(&ids);
    free(text);
    tok_destroy(tok);
    gguf_close(g);
    return rc;
}

/* Parse "12", "12,13" lists into ids. */
static int parse_ids(char **args, int n, tok_ids_t *ids)
{
    for (int i = 0; i < n; i++) {
        char *p = args[i];

        while (*p != '\0') {
            char *end;
            long long v;

            errno = 0;
            v = strtoll(p, &end, 10);
            if (end == p || errno != 0 || v < INT32_MIN || v > INT32_MAX ||
                (*end != '\0' && *end != ',')) {
                fprintf(stderr, "duet detokenize: '%s' is not a list of token ids\n", args[i]);
                return 1;
            }
            if (tok_ids_push(ids, (int32_t)v) < 0)
                return 1;
            p = *end == ',' ? end + 1 : end;
        }
    }
    return 0;
}

static int detokenize_run(int argc, char **argv)
{
    const char *model = DEFAULT_MODEL;
    bool special = false, json = false;
    const flag_t flags[] = {
        {"model", 'm', FLAG_STRING, &model, "GGUF file whose tokenizer to use", "PATH",
         0, 0, 0, 0},
        {"special", 0, FLAG_BOOL, &special, "render control tokens (e.g. <|im_end|>) as text",
         NULL, 0, 0, 0, 0},
        {"json", 0, FLAG_BOOL, &json, "print JSON: the text and the incremental pieces a "
         "streaming client would get, token by token", NULL, 0, 0, 0, 0},
    };
    const flags_usage_t u = {"duet detokenize", "IDS...",
                             "Print the text of token ids (separated by spaces or commas; "
                             "put -- before negative numbers)."};
    char **pos = calloc((size_t)argc + 1, sizeof(*pos));
    int npos = 0, rc = 1;
    duet_status_t s;
    gguf_t *g = NULL;
    tok_t *tok = NULL;
    tok_ids_t ids = {0};
    char err[256] = "", *text = NULL, *piece = NULL;
    size_t len;
    unsigned dflags;

    if (pos == NULL)
        return 1;
    s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, pos, argc, &npos);
    if (s == DUET_DONE) {
        free(pos);
        return 0;
    }
    if (s != DUET_OK || parse_ids(pos, npos, &ids) != 0) {
        free(pos);
        tok_ids_free(&ids);
        return 2;
    }
    if (load(model, &g, &tok) != 0)
        goto out;
    dflags = special ? TOK_DECODE_SPECIAL : 0;
    if (tok_decode(tok, ids.v, ids.n, dflags, &text, &len, err, sizeof(err)) < 0) {
        fprintf(stderr, "duet detokenize: %s\n", err);
        goto out;
    }
    if (json) {
        tok_detok_t d;
        size_t cap = tok_detok_max_out(tok), n;
        json_t *arr = json_array(), *j;

        piece = malloc(cap);
        if (piece == NULL)
            goto out;
        tok_detok_init(&d, tok, dflags);
        for (size_t i = 0; i < ids.n; i++) {
            tok_detok_feed(&d, ids.v[i], piece, cap, &n);
            json_array_append_new(arr, json_stringn(piece, n));
        }
        n = tok_detok_flush(&d, piece, cap);
        json_array_append_new(arr, json_stringn(piece, n));
        j = json_pack("{s:s%, s:o}", "text", text, len, "pieces", arr);
        print_json(j);
        json_decref(j);
    } else {
        fwrite(text, 1, len, stdout);
        fputc('\n', stdout);
    }
    rc = 0;
out:
    free(piece);
    free(text);
    tok_ids_free(&ids);
    tok_destroy(tok);
    gguf_close(g);
    free(pos);
    return rc;
}

const cli_cmd_t cli_cmd_tokenize = {"tokenize", "text to token ids with the model's tokenizer",
                                    tokenize_run};
const cli_cmd_t cli_cmd_detokenize = {"detokenize", "token ids to text", detokenize_run};
