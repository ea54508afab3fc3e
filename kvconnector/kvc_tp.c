/* Heads per rank and the route between prefill and decode ranks: the one
 * place that decides which rank holds (and sends) which KV heads. */
#define DUET_LOG_COMPONENT "kvc"

#include "common/log.h"
#include "kvconnector/kvc.h"

/* ---- heads per rank ------------------------------------------------------ */

int kvc_tp_valid(int32_t n_kv_heads, int tp)
{
    if (n_kv_heads <= 0 || tp <= 0)
        return 0;
    return tp <= n_kv_heads ? n_kv_heads % tp == 0 : tp % n_kv_heads == 0;
}

duet_status_t kvc_tp_heads(int32_t n_kv_heads, int tp, int rank,
                           int32_t *first_p, int32_t *count_p)
{
    if (!kvc_tp_valid(n_kv_heads, tp) || rank < 0 || rank >= tp)
        return DUET_ERR_INVALID;
    if (tp <= n_kv_heads) {
        *count_p = n_kv_heads / tp;
        *first_p = rank * *count_p;
    } else {
        *count_p = 1;
        *first_p = rank / (tp / n_kv_heads);
    }
    return DUET_OK;
}

duet_status_t kvc_tp_route(int32_t n_kv_heads, int p, int prank, int d, int drank,
                           int32_t *src_p, int32_t *dst_p, int32_t *count_p)
{
    int32_t a, n, b, m, lo, hi;

    CHECK(kvc_tp_heads(n_kv_heads, p, prank, &a, &n));
    CHECK(kvc_tp_heads(n_kv_heads, d, drank, &b, &m));
    lo = a > b ? a : b;
    hi = a + n < b + m ? a + n : b + m;
    if (hi <= lo || (p > n_kv_heads && prank % (p / n_kv_heads) !=
                                           drank % (p / n_kv_heads))) {
        *src_p = *dst_p = *count_p = 0;
        return DUET_OK;
    }
    *src_p = lo - a;
    *dst_p = lo - b;
    *count_p = hi - lo;
    return DUET_OK;
}
