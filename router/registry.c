/* Node registry queries and the routing policies. Load figures are the
 * node's last HEARTBEAT plus what the router itself sent since then, so a
 * burst of requests between two heartbeats still spreads out. */
#define DUET_LOG_COMPONENT "router"
#include "router_int.h"

#include <string.h>

#include "common/log.h"

#define PREFIX_BLOCK_DEFAULT 16

const char *node_role_str(node_role_t role)
{
    static const char *const names[NODE_NROLES] = {"prefill", "decode", "colocated"};

    return role < NODE_NROLES ? names[role] : "unknown";
}

duet_status_t policy_parse(const char *name, bool prefill, policy_t *p_p)
{
    if (strcmp(name, "round-robin") == 0)
        *p_p = POLICY_ROUND_ROBIN;
    else if (strcmp(name, "least-loaded") == 0)
        *p_p = POLICY_LEAST_LOADED;
    else if (prefill && strcmp(name, "prefix-aware") == 0)
        *p_p = POLICY_PREFIX_AWARE;
    else
        return DUET_ERR_INVALID;
    return DUET_OK;
}

const char *policy_str(policy_t p)
{
    switch (p) {
    case POLICY_ROUND_ROBIN:  return "round-robin";
    case POLICY_LEAST_LOADED: return "least-loaded";
    case POLICY_PREFIX_AWARE: return "prefix-aware";
    }
    return "unknown";
}

static bool node_usable(const node_t *n, node_role_t role, const node_t *exclude)
{
    return n->registered && !n->closing && !n->draining && n->role == role && n != exclude;
}

int registry_count(const router_t *r, node_role_t role)
{
    const node_t *n;
    int c = 0;

    TAILQ_FOREACH(n, &r->nodes, link)
        c += n->registered && !n->closing && n->role == role;
    return c;
}

bool registry_ready(const router_t *r)
{
    return (registry_count(r, NODE_PREFILL) > 0 && registry_count(r, NODE_DECODE) > 0) ||
           registry_count(r, NODE_COLOCATED) > 0;
}

/* Lower is less loaded. */
static double node_load(const node_t *n)
{
    switch (n->role) {
    case NODE_PREFILL:
        return (double)(n->queued_tokens + n->sent_tokens) + 1e-3 * n->inflight;
    case NODE_DECODE: {
        double free = (double)n->free_blocks - (double)n->sent_blocks;

        return -free + 1e-3 * (n->running + n->inflight);
    }
    default:
        return (double)(n->running + n->waiting + n->inflight) +
               1e-6 * (double)(n->queued_tokens + n->sent_tokens);
    }
}

static uint64_t prefix_mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return h ? h : 1;
}

static uint32_t prefix_block(const node_t *n)
{
    return n->block_size ? n->block_size : PREFIX_BLOCK_DEFAULT;
}

/* Leading full prompt blocks whose chained hash the node remembers. */
static size_t prefix_match(const node_t *n, const int32_t *ids, size_t nids)
{
    uint32_t bs = prefix_block(n);
    uint64_t h = 0;
    size_t blocks = 0;

    if (n->prefix == NULL)
        return 0;
    for (size_t b = 0; (b + 1) * bs <= nids; b++) {
        for (uint32_t i = 0; i < bs; i++)
            h = prefix_mix(h, (uint32_t)ids[b * bs + i]);
        if (n->prefix[h & (NODE_PREFIX_SLOTS - 1)] != h)
            break;
        blocks++;
    }
    return blocks;
}

void registry_note_prefix(node_t *n, const int32_t *ids, size_t nids)
{
    uint32_t bs = prefix_block(n);
    uint64_t h = 0;

    if (n->prefix == NULL)
        return;
    for (size_t b = 0; (b + 1) * bs <= nids; b++) {
        for (uint32_t i = 0; i < bs; i++)
            h = prefix_mix(h, (uint32_t)ids[b * bs + i]);
        n->prefix[h & (NODE_PREFIX_SLOTS - 1)] = h;
    }
}

node_t *registry_pick(router_t *r, node_role_t role, const rreq_t *req,
                      const node_t *exclude)
{
    policy_t policy = role == NODE_DECODE ? r->dpolicy : r->ppolicy;
    node_t *n, *best = NULL, *least = NULL;
    int count = 0;

    TAILQ_FOREACH(n, &r->nodes, link) {
        if (!node_usable(n, role, exclude))
            continue;
        count++;
        if (least == NULL || node_load(n) < node_load(least))
            least = n;
    }
    if (count == 0)
        return NULL;
    if (policy == POLICY_ROUND_ROBIN) {
        uint64_t k = r->rr[role]++ % (uint64_t)count;

        TAILQ_FOREACH(n, &r->nodes, link) {
            if (node_usable(n, role, exclude) && k-- == 0)
                return n;
        }
        return least;
    }
    if (policy == POLICY_PREFIX_AWARE && role != NODE_DECODE && req != NULL) {
        size_t best_match = 0;
        double slack = (double)(req->nprompt * 4 > 4096 ? req->nprompt * 4 : 4096);

        TAILQ_FOREACH(n, &r->nodes, link) {
            size_t m;

            if (!node_usable(n, role, exclude))
                continue;
            m = prefix_match(n, req->prompt, req->nprompt);
            if (m > best_match || (m == best_match && m > 0 && node_load(n) < node_load(best))) {
                best = n;
                best_match = m;
            }
        }
        /* the cached prefix is not worth a queue much longer than the
         * shortest one */
        if (best != NULL && node_load(best) <= node_load(least) + slack)
            return best;
    }
    return least;
}
