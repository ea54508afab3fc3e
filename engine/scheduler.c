/* Continuous-batching scheduler. See scheduler.h for the policy. */
#define DUET_LOG_COMPONENT "sched"

#include "engine/scheduler.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

enum { Q_NONE = 0, Q_WAITING, Q_RUNNING };

typedef struct {
    sched_req_t *head, *tail;
    int32_t      n;
} queue_t;

struct sched {
    sched_opts_t  opts;
    bm_t         *bm;
    queue_t       waiting, running;
    sched_req_t **buckets;          /* (n_buckets) id table */
    uint32_t      n_buckets;
    uint32_t      n_reqs;
    uint64_t      next_order;
    uint64_t      preemptions, steps;
    sched_req_t **snap;             /* (max_running) running snapshot */
};

const char *req_state_str(req_state_t s)
{
    switch (s) {
    case REQ_WAITING:   return "waiting";
    case REQ_RUNNING:   return "running";
    case REQ_PREEMPTED: return "preempted";
    case REQ_FINISHED:  return "finished";
    case REQ_ABORTED:   return "aborted";
    case REQ_RESERVED:  return "reserved";
    case REQ_PREFILLED: return "prefilled";
    }
    return "?";
}

/* --- queues ----------------------------------------------------------------- */

static queue_t *queue_of(sched_t *s, int q)
{
    return q == Q_WAITING ? &s->waiting : q == Q_RUNNING ? &s->running : NULL;
}

static void q_unlink(sched_t *s, sched_req_t *r)
{
    queue_t *q = queue_of(s, r->queue);

    if (q == NULL)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else
        q->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        q->tail = r->prev;
    r->prev = r->next = NULL;
    r->queue = Q_NONE;
    q->n--;
}

static void q_push_tail(sched_t *s, int qi, sched_req_t *r)
{
    queue_t *q = queue_of(s, qi);

    r->prev = q->tail;
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    r->queue = qi;
    q->n++;
}

static void q_push_head(sched_t *s, int qi, sched_req_t *r)
{
    queue_t *q = queue_of(s, qi);

    r->prev = NULL;
    r->next = q->head;
    if (q->head)
        q->head->prev = r;
    else
        q->tail = r;
    q->head = r;
    r->queue = qi;
    q->n++;
}

/* --- id table ---------------------------------------------------------------- */

static inline uint32_t id_bucket(const sched_t *s, uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdull;
    id ^= id >> 33;
    return (uint32_t)id & (s->n_buckets - 1);
}

static duet_status_t table_grow(sched_t *s)
{
    uint32_t old_n = s->n_buckets, i;
    sched_req_t **old = s->buckets, **nb;

    nb = calloc((size_t)old_n * 2, sizeof(*nb));
    if (nb == NULL)
        return DUET_ERR_NOMEM;
    s->buckets = nb;
    s->n_buckets = old_n * 2;
    for (i = 0; i < old_n; i++) {
        sched_req_t *r = old[i], *next;
        for (; r != NULL; r = next) {
            uint32_t b = id_bucket(s, r->id);
            next = r->hnext;
            r->hnext = nb[b];
            nb[b] = r;
        }
    }
    free(old);
    return DUET_OK;
}

sched_req_t *sched_find(const sched_t *s, uint64_t id)
{
    sched_req_t *r = s->buckets[id_bucket(s, id)];

    while (r != NULL && r->id != id)
        r = r->hnext;
    return r;
}

sched_req_t *sched_next_req(const sched_t *s, const sched_req_t *prev)
{
    uint32_t b = 0;

    if (prev != NULL) {
        if (prev->hnext != NULL)
            return prev->hnext;
        b = id_bucket(s, prev->id) + 1;
    }
    for (; b < s->n_buckets; b++) {
        if (s->buckets[b] != NULL)
            return s->buckets[b];
    }
    return NULL;
}

/* --- lifecycle ---------------------------------------------------------------- */

duet_status_t sched_create(const sched_opts_t *opts, bm_t *bm, sched_t **s_p)
{
    sched_t *s;

    if (opts->max_running <= 0 || opts->max_step_tokens <= 0) {
        log_error("max running requests (%d) and tokens per step (%d) must be >= 1",
                  opts->max_running, opts->max_step_tokens);
        return DUET_ERR_INVALID;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return DUET_ERR_NOMEM;
    s->opts = *opts;
    s->bm = bm;
    s->n_buckets = 64;
    s->buckets = calloc(s->n_buckets, sizeof(*s->buckets));
    s->snap = calloc((size_t)opts->max_running, sizeof(*s->snap));
    if (s->buckets == NULL || s->snap == NULL) {
        sched_destroy(s);
        return DUET_ERR_NOMEM;
    }
    *s_p = s;
    return DUET_OK;
}

void sched_destroy(sched_t *s)
{
    sched_req_t *r;

    if (s == NULL)
        return;
    if (s->buckets != NULL) {
        while ((r = sched_next_req(s, NULL)) != NULL)
            sched_remove(s, r);
    }
    free(s->buckets);
    free(s->snap);
    free(s);
}

static duet_status_t req_reserve(sched_req_t *r, int32_t n)
{
    int32_t cap = r->cap ? r->cap : 16, *t;

    if (n <= r->cap)
        return DUET_OK;
    while (cap < n)
        cap *= 2;
    t = realloc(r->tokens, sizeof(*t) * (size_t)cap);
    if (t == NULL)
        return DUET_ERR_NOMEM;
    r->tokens = t;
    r->cap = cap;
    return DUET_OK;
}

duet_status_t sched_req_new(sched_t *s, uint64_t id, const int32_t *prompt, int32_t n_prompt,
                            int32_t max_tokens, sched_req_t **req_p)
{
    duet_status_t status;
    sched_req_t *r;
    uint32_t b;

    if (sched_find(s, id) != NULL)
        return DUET_ERR_INVALID;
    if (s->n_reqs + 1 > s->n_buckets)
        CHECK(table_grow(s));
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return DUET_ERR_NOMEM;
    /* Room for the whole output up front when it is modest. */
    CHECK_GOTO(req_reserve(r, n_prompt + (max_tokens < 4096 ? max_tokens : 4096)), status,
               err_free);
    memcpy(r->tokens, prompt, sizeof(*prompt) * (size_t)n_prompt);
    r->id = id;
    r->state = REQ_WAITING;
    r->n_tokens = r->n_prompt = n_prompt;
    r->max_tokens = max_tokens;
    bm_seq_init(&r->seq);
    b = id_bucket(s, id);
    r->hnext = s->buckets[b];
    s->buckets[b] = r;
    s->n_reqs++;
    *req_p = r;
    return DUET_OK;

err_free:
    free(r);
    return status;
}

void sched_enqueue(sched_t *s, sched_req_t *req)
{
    req->state = REQ_WAITING;
    q_push_tail(s, Q_WAITING, req);
}

duet_status_t sched_reserve(sched_t *s, sched_req_t *req)
{
    duet_status_t status = bm_allocate(s->bm, &req->seq, req->n_prompt, true);

    if (status != DUET_OK)
        return status;
    req->state = REQ_RESERVED;
    return DUET_OK;
}

void sched_mark_prefilled_kv(sched_t *s, sched_req_t *req)
{
    req->n_computed = req->n_prompt;
    bm_commit(s->bm, &req->seq, req->tokens, req->n_computed);
    req->state = REQ_WAITING;
    q_push_head(s, Q_WAITING, req);
}

void sched_remove(sched_t *s, sched_req_t *req)
{
    sched_req_t **link = &s->buckets[id_bucket(s, req->id)];

    q_unlink(s, req);
    bm_free_seq(s->bm, &req->seq);
    while (*link != req)
        link = &(*link)->hnext;
    *link = req->hnext;
    s->n_reqs--;
    free(req->tokens);
    free(req);
}

/* --- scheduling ---------------------------------------------------------------- */

static void preempt(sched_t *s, sched_req_t *r, sched_item_t *items, int *n_items,
                    int32_t *budget)
{
    int i;

    for (i = 0; i < *n_items; i++) {
        if (items[i].req == r) {
            *budget += items[i].n_new;
            memmove(&items[i], &items[i + 1], sizeof(*items) * (size_t)(*n_items - i - 1));
            (*n_items)--;
            break;
        }
    }
    q_unlink(s, r);
    bm_free_seq(s->bm, &r->seq);
    r->n_computed = 0;
    r->state = REQ_PREEMPTED;
    r->n_preempted++;
    s->preemptions++;
    q_push_head(s, Q_WAITING, r);
    log_debug("preempted request %llu (%d tokens, %d times)", (unsigned long long)r->id,
              r->n_tokens, r->n_preempted);
    if (s->opts.on_preempt != NULL)
        s->opts.on_preempt(s->opts.cb_arg, r->id);
}

/* Schedule running request r for up to *budget tokens, preempting newer
 * requests when blocks run out. Returns false when r itself was preempted. */
static bool schedule_running(sched_t *s, sched_req_t *r, sched_item_t *items, int *n_items,
                             int32_t *budget, bool *preempted)
{
    int32_t n_new = r->n_tokens - r->n_computed;

    if (n_new > *budget)
        n_new = *budget;
    if (n_new <= 0)
        return true;
    while (bm_allocate(s->bm, &r->seq, r->n_computed + n_new, false) != DUET_OK) {
        sched_req_t *victim = s->running.tail;
        preempt(s, victim, items, n_items, budget);
        *preempted = true;
        if (victim == r)
            return false;
    }
    items[*n_items] = (sched_item_t){
        .req = r, .n_new = n_new, .want_logits = r->n_computed + n_new == r->n_tokens,
    };
    (*n_items)++;
    *budget -= n_new;
    return true;
}

void sched_schedule(sched_t *s, sched_item_t *items, int *n_items_p)
{
    int32_t budget = s->opts.max_step_tokens, n_snap = 0, pass, i;
    bool preempted = false;
    sched_req_t *r;
    int n_items = 0;

    s->steps++;
    for (r = s->running.head; r != NULL; r = r->next)
        s->snap[n_snap++] = r;

    /* 1: decodes, 2: prefill chunks; oldest first. A request preempted
     * meanwhile is no longer RUNNING and is skipped. */
    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < n_snap && budget > 0; i++) {
            bool decoding;
            r = s->snap[i];
            if (r->state != REQ_RUNNING)
                continue;
            decoding = r->n_tokens - r->n_computed == 1;
            if (decoding != (pass == 0))
                continue;
            schedule_running(s, r, items, &n_items, &budget, &preempted);
        }
    }

    /* 3: admit waiting requests. */
    while (!preempted && budget > 0 && s->running.n < s->opts.max_running &&
           (r = s->waiting.head) != NULL) {
        bool matched_now = false;
        int32_t n_new;

        if (r->seq.n == 0) {
            int32_t n_cached = 0;
            bm_match_prefix(s->bm, &r->seq, r->tokens, r->n_tokens, &n_cached);
            r->n_computed = n_cached;
            matched_now = true;
        }
        n_new = r->n_tokens - r->n_computed;
        if (n_new > budget) {
            if (!s->opts.chunked_prefill) {
                if (matched_now) {
                    bm_free_seq(s->bm, &r->seq);
                    r->n_computed = 0;
                }
                break;
            }
            n_new = budget;
        }
        if (bm_allocate(s->bm, &r->seq, r->n_computed + n_new, true) != DUET_OK) {
            if (matched_now) {
                bm_free_seq(s->bm, &r->seq);
                r->n_computed = 0;
            }
            break;
        }
        if (matched_now) {
            bm_note_query(s->bm, r->n_tokens, r->n_computed);
            if (r->n_preempted == 0)
                r->n_cached = r->n_computed;
        }
        q_unlink(s, r);
        r->state = REQ_RUNNING;
        r->order = ++s->next_order;
        q_push_tail(s, Q_RUNNING, r);
        items[n_items++] = (sched_item_t){
            .req = r, .n_new = n_new, .want_logits = r->n_computed + n_new == r->n_tokens,
        };
        budget -= n_new;
    }
    *n_items_p = n_items;
}

void sched_advance(sched_t *s, const sched_item_t *item)
{
    sched_req_t *r = item->req;

    r->n_computed += item->n_new;
    assert(r->n_computed <= r->n_tokens);
    bm_commit(s->bm, &r->seq, r->tokens, r->n_computed);
}

duet_status_t sched_append(sched_t *s, sched_req_t *req, int32_t token)
{
    CHECK(req_reserve(req, req->n_tokens + 1));
    req->tokens[req->n_tokens++] = token;
    return DUET_OK;
}

void sched_finish(sched_t *s, sched_req_t *req, req_state_t state)
{
    q_unlink(s, req);
    if (state != REQ_PREFILLED)
        bm_free_seq(s->bm, &req->seq);
    req->state = state;
}

void sched_stats(const sched_t *s, sched_stats_t *st)
{
    const sched_req_t *r = NULL;

    memset(st, 0, sizeof(*st));
    st->running = s->running.n;
    st->waiting = s->waiting.n;
    while ((r = sched_next_req(s, r)) != NULL) {
        if (r->state == REQ_RESERVED)
            st->reserved++;
        else if (r->state == REQ_PREFILLED)
            st->prefilled++;
    }
    st->preemptions = s->preemptions;
    st->steps = s->steps;
}

duet_status_t sched_check(const sched_t *s, char *err, size_t errlen)
{
    const bm_seq_t **seqs = calloc(s->n_reqs + 1, sizeof(*seqs));
    const sched_req_t *r = NULL;
    duet_status_t status;
    int n = 0;

    if (seqs == NULL)
        return DUET_ERR_NOMEM;
    while ((r = sched_next_req(s, r)) != NULL)
        seqs[n++] = &r->seq;
    status = bm_check(s->bm, seqs, n, err, errlen);
    free(seqs);
    return status;
}
