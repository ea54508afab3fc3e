/* Head routing between prefill TP p and decode TP d: every decode rank gets
 * every head it holds from exactly one prefill rank, and nothing else. */
#include "kvconnector/kvc.h"
#include "tests/tap.h"

static void check_pair(int32_t H, int p, int d)
{
    int bad = 0;

    for (int dr = 0; dr < d; dr++) {
        int32_t first, count, got[64] = {0};

        kvc_tp_heads(H, d, dr, &first, &count);
        for (int pr = 0; pr < p; pr++) {
            int32_t pf, pc, src, dst, cnt;

            kvc_tp_heads(H, p, pr, &pf, &pc);
            if (kvc_tp_route(H, p, pr, d, dr, &src, &dst, &cnt) != DUET_OK)
                bad++;
            for (int32_t k = 0; k < cnt; k++) {
                int32_t head = pf + src + k;

                if (head != first + dst + k || src + k >= pc || dst + k >= count)
                    bad++;
                got[head]++;
            }
        }
        for (int32_t h = 0; h < H; h++)
            if (got[h] != (h >= first && h < first + count ? 1 : 0))
                bad++;
    }
    is_int(bad, 0, "H=%d p=%d d=%d: each decode head from exactly one prefill rank", H, p, d);
}

int main(void)
{
    int32_t first, count;

    ok(kvc_tp_valid(3, 1) && kvc_tp_valid(3, 3) && !kvc_tp_valid(3, 2), "3 heads: TP 1, 3 only");
    ok(kvc_tp_valid(1, 3) && kvc_tp_valid(2, 4) && !kvc_tp_valid(2, 3), "replication needs tp %% heads == 0");
    ok(kvc_tp_heads(3, 2, 0, &first, &count) == DUET_ERR_INVALID, "invalid split is an error");
    kvc_tp_heads(2, 4, 3, &first, &count);
    ok(first == 1 && count == 1, "TP 4 over 2 heads: rank 3 holds head 1");
    for (int32_t H = 1; H <= 6; H++)
        for (int p = 1; p <= 3; p++)
            for (int d = 1; d <= 3; d++)
                if (kvc_tp_valid(H, p) && kvc_tp_valid(H, d))
                    check_pair(H, p, d);
    return tap_done();
}
