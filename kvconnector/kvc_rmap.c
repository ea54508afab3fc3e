/* Requests by id (hash + creation-order list) and the tombstones of recently
 * finished prefill requests. */
#include <string.h>

#include "kvconnector/kvc_int.h"

/* ---- request map --------------------------------------------------------- */

void kvc_rmap_init(kvc_rmap_t *m)
{
    memset(m, 0, sizeof(*m));
    m->list.prev = m->list.next = &m->list;
}

static unsigned rmap_bucket(uint64_t id)
{
    return (unsigned)((id * 0x9e3779b97f4a7c15ull) >> 56) % KVC_NBUCKETS;
}

kvc_rhdr_t *kvc_rmap_get(kvc_rmap_t *m, uint64_t id)
{
    for (kvc_rhdr_t *h = m->buckets[rmap_bucket(id)]; h; h = h->hnext)
        if (h->id == id)
            return h;
    return NULL;
}

void kvc_rmap_add(kvc_rmap_t *m, kvc_rhdr_t *h)
{
    unsigned b = rmap_bucket(h->id);

    h->hnext = m->buckets[b];
    m->buckets[b] = h;
    h->prev = m->list.prev;
    h->next = &m->list;
    m->list.prev->next = h;
    m->list.prev = h;
    m->count++;
}

void kvc_rmap_del(kvc_rmap_t *m, kvc_rhdr_t *h)
{
    kvc_rhdr_t **pp = &m->buckets[rmap_bucket(h->id)];

    while (*pp != h)
        pp = &(*pp)->hnext;
    *pp = h->hnext;
    h->prev->next = h->next;
    h->next->prev = h->prev;
    m->count--;
}

/* ---- tombstones: recently finished prefill requests ---------------------- */

bool kvc_tomb_has(const kvc_t *kvc, uint64_t req)
{
    int n = kvc->ntomb < KVC_TOMBSTONES ? kvc->ntomb : KVC_TOMBSTONES;

    for (int i = 0; i < n; i++)
        if (kvc->tomb[i] == req)
            return true;
    return false;
}

void kvc_tomb_add(kvc_t *kvc, uint64_t req)
{
    kvc->tomb[kvc->ntomb % KVC_TOMBSTONES] = req;
    kvc->ntomb++;
}
